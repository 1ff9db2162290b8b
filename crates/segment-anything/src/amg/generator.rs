//! The generator (`automatic_mask_generator.py`): the crop / batch loop, mask filtering and the output records.

use std::sync::Arc;

use candle_core::{DType, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image_view::ImageView;
use crate::predictor::SamPredictor;
use crate::prompt_encoder::Prompts;
use crate::resize;
use crate::rle::{self, BinaryMask, CocoRle, Rle};
use crate::sam::Sam;

use super::nms::batched_nms;
use super::params::{AmgParams, OutputMode};
use super::regions::{remove_small_regions_u8, RegionMode};
use super::utils::{generate_crop_boxes, is_box_near_crop_edge};
use super::utils::{stability_counts, stability_score_from_counts};

/// A mask in the generator's [`OutputMode`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Segmentation {
    /// Row-major boolean mask.
    BinaryMask(BinaryMask),
    /// Uncompressed RLE (integer counts).
    UncompressedRle(Rle),
    /// COCO RLE (counts string).
    CocoRle(CocoRle),
}

impl Segmentation {
    /// The mask as an uncompressed RLE, whatever the form.
    pub fn to_rle(&self) -> Result<Rle> {
        match self {
            Segmentation::BinaryMask(m) => m.to_rle(),
            Segmentation::UncompressedRle(r) => Ok(r.clone()),
            Segmentation::CocoRle(c) => c.to_rle(),
        }
    }

    /// The mask as a row-major binary mask, whatever the form.
    pub fn to_mask(&self) -> Result<BinaryMask> {
        match self {
            Segmentation::BinaryMask(m) => Ok(m.clone()),
            Segmentation::UncompressedRle(r) => r.to_mask(),
            Segmentation::CocoRle(c) => c.to_mask(),
        }
    }
}

/// One generated mask, with the fields of an official record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskRecord {
    /// The mask, in the generator's output mode.
    pub segmentation: Segmentation,
    /// Number of mask pixels.
    pub area: u64,
    /// Box `[x, y, w, h]` from the inclusive XYXY box: `w = x1 - x0` (one less than the pixel width), as the
    /// official `box_xyxy_to_xywh(batched_mask_to_box(...))`; `[0, 0, 0, 0]` for an empty mask.
    pub bbox: [u32; 4],
    /// The model's predicted IoU.
    pub predicted_iou: f32,
    /// The grid point `[x, y]` (image pixels) that produced the mask; serialised as `[[x, y]]` like the official
    /// record.
    #[serde(with = "point_list")]
    pub point_coords: [f64; 2],
    /// Stability score (NaN for an empty mask when the stability filter is off).
    pub stability_score: f32,
    /// The crop `[x, y, w, h]` the mask was generated in.
    pub crop_box: [u32; 4],
}

mod point_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(p: &[f64; 2], s: S) -> Result<S::Ok, S::Error> {
        [*p].serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[f64; 2], D::Error> {
        let v: Vec<[f64; 2]> = Vec::deserialize(d)?;
        v.first()
            .copied()
            .ok_or_else(|| serde::de::Error::custom("point_coords is empty"))
    }
}

/// Counts of masks after each stage of one [`AutomaticMaskGenerator::generate_detailed`] run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmgStats {
    /// Crops processed (1 + crops of the extra layers).
    pub crops: usize,
    /// Grid points run through the decoder (over all crops).
    pub points: usize,
    /// Masks predicted (points × multimask outputs).
    pub masks: usize,
    /// Left after the predicted-IoU filter.
    pub after_iou_filter: usize,
    /// Left after the stability filter.
    pub after_stability_filter: usize,
    /// Left after dropping masks near a crop edge.
    pub after_edge_filter: usize,
    /// Left after NMS within each crop.
    pub after_crop_nms: usize,
    /// Left after NMS across crops (equal to `after_crop_nms` with one crop).
    pub after_cross_crop_nms: usize,
    /// Records returned (after small-region removal and its NMS, if enabled).
    pub records: usize,
}

/// The result of [`AutomaticMaskGenerator::generate_detailed`].
#[derive(Debug, Clone)]
pub struct AmgOutput {
    /// The records, in the official order.
    pub records: Vec<MaskRecord>,
    /// Counts per stage.
    pub stats: AmgStats,
    /// Whether the official code would return `bbox` values as Python floats (e.g. `12.0`): it does when any
    /// point batch had no mask left after the IoU and stability filters (an empty `batched_mask_to_box` result is a
    /// float tensor, and `torch.cat` promotes the integer boxes). Only affects how values are printed.
    pub float_bbox: bool,
    /// Whether the official code would return `crop_box` values as floats: it does when any crop ends with no
    /// mask (`torch.tensor([])` is a float tensor).
    pub float_crop_box: bool,
}

/// Progress of a generation, reported after every point batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmgProgress {
    /// Index of the current crop.
    pub crop: usize,
    /// Number of crops.
    pub crops: usize,
    /// Batches done in the current crop.
    pub batch: usize,
    /// Batches in the current crop.
    pub batches: usize,
}

// ---------------------------------------------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------------------------------------------

/// The automatic ("segment everything") mask generator.
#[derive(Debug, Clone)]
pub struct AutomaticMaskGenerator {
    model: Arc<Sam>,
    params: AmgParams,
    point_grids: Vec<Vec<[f64; 2]>>,
}

/// A mask kept so far: its RLE in the full image and its metadata.
#[derive(Debug, Clone)]
struct Candidate {
    rle: Rle,
    /// Inclusive XYXY box (crop frame until uncropped).
    bbox: [i64; 4],
    iou: f32,
    /// Grid point (crop frame until uncropped).
    point: [f64; 2],
    stability: f32,
    crop_box: [i64; 4],
}

enum MaskOutcome {
    Unstable,
    NearCropEdge,
    Kept(Candidate),
}

#[derive(Default)]
struct RunState {
    stats: AmgStats,
    float_bbox: bool,
    float_crop_box: bool,
}

impl AutomaticMaskGenerator {
    /// A generator over `model` with `params` (validated).
    ///
    /// Generation takes `&self` and keeps nothing between images (each call sets its crops on a predictor of its
    /// own), so one generator can serve many threads.
    pub fn new(model: impl Into<Arc<Sam>>, params: AmgParams) -> Result<Self> {
        let point_grids = params.layer_point_grids()?;
        Ok(Self {
            model: model.into(),
            params,
            point_grids,
        })
    }

    /// The parameters.
    pub fn params(&self) -> &AmgParams {
        &self.params
    }

    /// The normalised point grid of each crop layer.
    pub fn point_grids(&self) -> &[Vec<[f64; 2]>] {
        &self.point_grids
    }

    /// The model.
    pub fn model(&self) -> &Sam {
        &self.model
    }

    /// Generate masks for an image (H, W, C): the official `generate(image)`. The channels are read as
    /// [`SamPredictor::set_image`] reads them.
    pub fn generate(&self, image: ImageView<'_>) -> Result<Vec<MaskRecord>> {
        Ok(self.generate_detailed(image, None)?.records)
    }

    /// Generate masks for an image from the `image` crate (converted as [`SamPredictor::set_dynamic_image`] does;
    /// read files with [`crate::load_image`]).
    pub fn generate_dynamic_image(&self, image: &image::DynamicImage) -> Result<Vec<MaskRecord>> {
        Ok(self.generate_dynamic_image_detailed(image, None)?.records)
    }

    /// [`AutomaticMaskGenerator::generate_dynamic_image`] with the details of
    /// [`AutomaticMaskGenerator::generate_detailed`].
    pub fn generate_dynamic_image_detailed(
        &self,
        image: &image::DynamicImage,
        progress: Option<&mut dyn FnMut(AmgProgress)>,
    ) -> Result<AmgOutput> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let channels = self.model.config().in_channels;
        let pixels = crate::image_io::model_pixels(image, channels, "generate")?;
        self.generate_detailed(ImageView::new(&pixels, h, w, channels)?, progress)
    }

    /// [`AutomaticMaskGenerator::generate`] with stage counts and the official float quirks; `progress` is called
    /// after every point batch.
    pub fn generate_detailed(
        &self,
        image: ImageView<'_>,
        mut progress: Option<&mut dyn FnMut(AmgProgress)>,
    ) -> Result<AmgOutput> {
        let (height, width) = image.size();
        let mut predictor = SamPredictor::new(self.model.clone());
        let (crop_boxes, layer_idxs) = generate_crop_boxes(
            (height, width),
            self.params.crop_n_layers,
            self.params.crop_overlap_ratio,
        );
        for b in &crop_boxes {
            if b[0] < 0
                || b[1] < 0
                || b[2] <= b[0]
                || b[3] <= b[1]
                || b[2] > width as i64
                || b[3] > height as i64
            {
                return Err(Error::arg(
                    "crop_n_layers",
                    format!(
                        "the {width}×{height} image is too small for {} crop layer(s): crop box {b:?} is empty",
                        self.params.crop_n_layers
                    ),
                ));
            }
        }

        let mut run = RunState::default();
        run.stats.crops = crop_boxes.len();
        let mut data: Vec<Candidate> = Vec::new();
        for (ci, (crop_box, layer)) in crop_boxes.iter().zip(&layer_idxs).enumerate() {
            let crop_data = self.process_crop(
                &mut predictor,
                image,
                *crop_box,
                *layer,
                &mut run,
                &mut |batch, batches| {
                    if let Some(p) = progress.as_mut() {
                        p(AmgProgress {
                            crop: ci,
                            crops: crop_boxes.len(),
                            batch,
                            batches,
                        })
                    }
                },
            );
            let crop_data = crop_data?;
            if crop_data.is_empty() {
                run.float_crop_box = true;
            }
            data.extend(crop_data);
        }
        run.stats.after_crop_nms = data.len();

        // Remove duplicate masks between crops, preferring masks from smaller crops.
        if crop_boxes.len() > 1 {
            let boxes: Vec<[f32; 4]> = data.iter().map(|d| box_f32(&d.bbox)).collect();
            let scores: Vec<f32> = data
                .iter()
                .map(|d| {
                    let c = &d.crop_box;
                    1.0f32 / (((c[2] - c[0]) * (c[3] - c[1])) as f32)
                })
                .collect();
            let keep = batched_nms(&boxes, &scores, self.params.crop_nms_thresh);
            data = take(data, &keep);
        }
        run.stats.after_cross_crop_nms = data.len();

        if self.params.min_mask_region_area > 0 {
            data = postprocess_small_regions(
                data,
                self.params.min_mask_region_area as f64,
                self.params.box_nms_thresh.max(self.params.crop_nms_thresh),
            )?;
        }
        run.stats.records = data.len();

        let mode = self.params.output_mode;
        let records = data
            .into_par_iter()
            .map(|d| {
                let area = d.rle.area();
                let segmentation = match mode {
                    OutputMode::BinaryMask => Segmentation::BinaryMask(d.rle.to_mask()?),
                    OutputMode::UncompressedRle => Segmentation::UncompressedRle(d.rle),
                    OutputMode::CocoRle => Segmentation::CocoRle(d.rle.to_coco()),
                };
                Ok(MaskRecord {
                    segmentation,
                    area,
                    bbox: xyxy_to_xywh(&d.bbox),
                    predicted_iou: d.iou,
                    point_coords: d.point,
                    stability_score: d.stability,
                    crop_box: xyxy_to_xywh(&d.crop_box),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AmgOutput {
            records,
            stats: run.stats,
            float_bbox: run.float_bbox,
            float_crop_box: run.float_crop_box,
        })
    }

    fn process_crop(
        &self,
        predictor: &mut SamPredictor,
        image: ImageView<'_>,
        crop_box: [i64; 4],
        layer: usize,
        run: &mut RunState,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Candidate>> {
        let (height, width) = image.size();
        let [x0, y0, x1, y1] = crop_box.map(|v| v as usize);
        let (ch, cw) = (y1 - y0, x1 - x0);
        if (x0, y0, x1, y1) == (0, 0, width, height) {
            predictor.set_image(image)?;
        } else {
            let cropped = image.crop([x0, y0, x1, y1]);
            predictor.set_image(
                ImageView::new(&cropped, ch, cw, image.channels())?.with_format(image.format()),
            )?;
        }

        // Points of this crop, in crop pixels (float64, as `grid * [crop_w, crop_h]`).
        let points: Vec<[f64; 2]> = self.point_grids[layer]
            .iter()
            .map(|p| [p[0] * cw as f64, p[1] * ch as f64])
            .collect();
        let batch_size = self.params.points_per_batch;
        let batches = points.len().div_ceil(batch_size);
        let mut data: Vec<Candidate> = Vec::new();
        for (bi, batch) in points.chunks(batch_size).enumerate() {
            let kept =
                self.process_batch(predictor, batch, (ch, cw), crop_box, (height, width), run)?;
            data.extend(kept);
            progress(bi + 1, batches);
        }
        predictor.clear_image();

        // Remove duplicates within this crop.
        let boxes: Vec<[f32; 4]> = data.iter().map(|d| box_f32(&d.bbox)).collect();
        let scores: Vec<f32> = data.iter().map(|d| d.iou).collect();
        let keep = batched_nms(&boxes, &scores, self.params.box_nms_thresh);
        let mut data = take(data, &keep);

        // Return to the original image frame.
        for d in &mut data {
            d.bbox = [
                d.bbox[0] + crop_box[0],
                d.bbox[1] + crop_box[1],
                d.bbox[2] + crop_box[0],
                d.bbox[3] + crop_box[1],
            ];
            d.point = [
                d.point[0] + crop_box[0] as f64,
                d.point[1] + crop_box[1] as f64,
            ];
            d.crop_box = crop_box;
        }
        Ok(data)
    }

    fn process_batch(
        &self,
        predictor: &SamPredictor,
        points: &[[f64; 2]],
        crop_size: (usize, usize),
        crop_box: [i64; 4],
        orig_size: (usize, usize),
        run: &mut RunState,
    ) -> Result<Vec<Candidate>> {
        let state = predictor.image_embedding()?;
        let resizer = predictor.resizer()?;
        let model = predictor.model();
        let dev = model.device();
        let n = points.len();

        // `apply_coords` in float64. The official code keeps these float64 coordinates through the prompt encoder,
        // which adds 0.5 and normalises in float64 before casting to float32; our encoder adds 0.5 in float32. Passing
        // `f32(x + 0.5) - 0.5` (exact in f32) makes its `x + 0.5` the official rounded value.
        let mut coords = Vec::with_capacity(2 * n);
        for p in points {
            let [x, y] = resizer.scale_point_f64(*p);
            coords.push(((x + 0.5) as f32) - 0.5);
            coords.push(((y + 0.5) as f32) - 0.5);
        }
        let prompts = Prompts {
            points: Some(Tensor::from_vec(coords, (n, 1, 2), dev)?),
            labels: Some(Tensor::ones((n, 1), DType::F32, dev)?),
            boxes: None,
            masks: None,
        };
        let (low, iou) = predictor.decode_transformed(&prompts, true)?;
        let (_, k, mh, mw) = low.dims4()?;
        let low = low.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let iou = iou.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        run.stats.points += n;
        run.stats.masks += n * k;

        // Filter by predicted IoU (strict, in f32), before any upsampling.
        let p = &self.params;
        let iou_thr = p.pred_iou_thresh as f32;
        let selected: Vec<usize> = (0..n * k)
            .filter(|&i| p.pred_iou_thresh <= 0.0 || iou[i] > iou_thr)
            .collect();
        run.stats.after_iou_filter += selected.len();

        let mt = model.mask_threshold();
        let params = MaskParams {
            mask_threshold: mt,
            hi: (mt as f64 + p.stability_score_offset) as f32,
            lo: (mt as f64 - p.stability_score_offset) as f32,
            stability_thresh: p.stability_score_thresh,
            low_size: (mh, mw),
            input_size: resizer.dst_size(),
            resized_size: state.input_size,
            crop_size,
            crop_box,
            orig_size,
        };
        let outcomes: Vec<MaskOutcome> = selected
            .par_iter()
            .map(|&i| {
                let plane = &low[i * mh * mw..(i + 1) * mh * mw];
                process_mask(plane, iou[i], points[i / k], &params)
            })
            .collect::<Result<_>>()?;
        let stable = outcomes
            .iter()
            .filter(|o| !matches!(o, MaskOutcome::Unstable))
            .count();
        run.stats.after_stability_filter += stable;
        if stable == 0 {
            // batched_mask_to_box of an empty tensor is a float tensor (see AmgOutput::float_bbox).
            run.float_bbox = true;
        }
        let kept: Vec<Candidate> = outcomes
            .into_iter()
            .filter_map(|o| match o {
                MaskOutcome::Kept(c) => Some(c),
                _ => None,
            })
            .collect();
        run.stats.after_edge_filter += kept.len();
        Ok(kept)
    }
}

struct MaskParams {
    mask_threshold: f32,
    hi: f32,
    lo: f32,
    stability_thresh: f64,
    low_size: (usize, usize),
    input_size: (usize, usize),
    resized_size: (usize, usize),
    crop_size: (usize, usize),
    crop_box: [i64; 4],
    orig_size: (usize, usize),
}

/// Upsample one mask, score its stability, binarise, box, edge-filter and run-length encode it.
fn process_mask(low: &[f32], iou: f32, point: [f64; 2], p: &MaskParams) -> Result<MaskOutcome> {
    let (ch, cw) = p.crop_size;
    let up = resize::postprocess_masks(
        low,
        1,
        p.low_size.0,
        p.low_size.1,
        p.input_size,
        p.resized_size,
        p.crop_size,
    )?;
    let stability = stability_score_from_counts(stability_counts(&up, cw, p.hi, p.lo));
    // `>=` in f32; NaN (empty union) fails it.
    let stable = stability >= p.stability_thresh as f32;
    if p.stability_thresh > 0.0 && !stable {
        return Ok(MaskOutcome::Unstable);
    }
    let t = p.mask_threshold;
    let bin: Vec<u8> = up.iter().map(|&v| u8::from(v > t)).collect();
    drop(up);
    let bbox = rle::mask_bbox_xyxy(&bin, ch, cw)
        .map(|b| b.map(|v| v as i64))
        .unwrap_or([0; 4]);
    let (oh, ow) = p.orig_size;
    let orig_box = [0, 0, ow as i64, oh as i64];
    if is_box_near_crop_edge(&bbox, &p.crop_box, &orig_box, 20.0) {
        return Ok(MaskOutcome::NearCropEdge);
    }
    let rle = rle::rle_from_crop(
        &bin,
        ch,
        cw,
        (p.crop_box[0] as usize, p.crop_box[1] as usize),
        p.orig_size,
    );
    Ok(MaskOutcome::Kept(Candidate {
        rle,
        bbox,
        iou,
        point,
        stability,
        crop_box: p.crop_box,
    }))
}

fn box_f32(b: &[i64; 4]) -> [f32; 4] {
    b.map(|v| v as f32)
}

fn xyxy_to_xywh(b: &[i64; 4]) -> [u32; 4] {
    [
        b[0] as u32,
        b[1] as u32,
        (b[2] - b[0]) as u32,
        (b[3] - b[1]) as u32,
    ]
}

fn take<T>(data: Vec<T>, keep: &[usize]) -> Vec<T> {
    let mut slots: Vec<Option<T>> = data.into_iter().map(Some).collect();
    keep.iter()
        .map(|&i| slots[i].take().expect("NMS keeps each index once"))
        .collect()
}

/// The official `postprocess_small_regions`: holes then islands smaller than `min_area` are removed from every
/// mask; unchanged masks score 1 and changed ones 0 in a box NMS at `nms_thresh`; kept changed masks get their new
/// RLE and box. The result is in NMS order (unchanged masks first).
fn postprocess_small_regions(
    data: Vec<Candidate>,
    min_area: f64,
    nms_thresh: f64,
) -> Result<Vec<Candidate>> {
    if data.is_empty() {
        return Ok(data);
    }
    struct Cleaned {
        changed: bool,
        bbox: [i64; 4],
        rle: Option<Rle>,
    }
    let cleaned: Vec<Cleaned> = data
        .par_iter()
        .map(|d| {
            let (h, w) = (d.rle.height(), d.rle.width());
            let mask = d.rle.to_mask_u8()?;
            let (mask, c1) = remove_small_regions_u8(&mask, h, w, min_area, RegionMode::Holes);
            let (mask, c2) = remove_small_regions_u8(&mask, h, w, min_area, RegionMode::Islands);
            let changed = c1 || c2;
            let bbox = rle::mask_bbox_xyxy(&mask, h, w)
                .map(|b| b.map(|v| v as i64))
                .unwrap_or([0; 4]);
            let rle = changed.then(|| rle::rle_from_crop(&mask, h, w, (0, 0), (h, w)));
            Ok(Cleaned { changed, bbox, rle })
        })
        .collect::<Result<Vec<_>>>()?;
    let boxes: Vec<[f32; 4]> = cleaned.iter().map(|c| box_f32(&c.bbox)).collect();
    let scores: Vec<f32> = cleaned
        .iter()
        .map(|c| if c.changed { 0.0 } else { 1.0 })
        .collect();
    let keep = batched_nms(&boxes, &scores, nms_thresh);
    let mut data = data;
    let mut cleaned = cleaned;
    for &i in &keep {
        if cleaned[i].changed {
            data[i].rle = cleaned[i].rle.take().expect("changed masks have an RLE");
            data[i].bbox = cleaned[i].bbox;
        }
    }
    Ok(take(data, &keep))
}

// ---------------------------------------------------------------------------------------------------------------
