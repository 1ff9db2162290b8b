//! "Segment everything": the official `SamAutomaticMaskGenerator`, step for step.
//!
//! A grid of single-point prompts is run over the image (and optionally over overlapping crops of it); masks are
//! filtered by predicted IoU and stability score, de-duplicated by box NMS (within each crop, then across crops),
//! optionally cleaned of small holes and islands, and returned as records in the official order.
//!
//! Every step mirrors `segment_anything/automatic_mask_generator.py` and `segment_anything/utils/amg.py`,
//! including the arithmetic that decides ties and thresholds:
//!
//! * thresholds are compared in `f32` (a Python float compared with a float32 tensor is cast to float32);
//! * the stability score counts logits `> mask_threshold ± offset` on the crop-resolution logits with the official
//!   `int16` row sums, divides in `f32`, and gives NaN for an empty union (then dropped by the `>=` filter);
//! * boxes are inclusive `XYXY` (`batched_mask_to_box`), NMS is torchvision's (areas without `+1`, IoU in `f32`,
//!   strict `>`, a stable descending score sort, so equal scores — `1 / crop area` across crops, 0 or 1 in the
//!   small-region NMS — keep their order);
//! * above 1000 boxes torchvision's `batched_nms` takes its "vanilla" path, which re-sorts the kept indices with
//!   `torch.sort(descending=True)`: an *unstable* introsort (libstdc++ `std::sort`) that reorders equal scores;
//!   that sort is reproduced exactly;
//! * connected components are 8-connected and labelled in OpenCV's order (first 2×2 block in raster order), which
//!   decides which island is kept when all are too small.
//!
//! Unlike the official code, the masks of a batch are upsampled only after the IoU filter, one at a time and in
//! parallel, and each is reduced to its RLE at once: full-resolution logits of a whole batch are never held.

use std::str::FromStr;
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

// ---------------------------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------------------------

/// How [`MaskRecord::segmentation`] is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    /// A row-major boolean mask ([`Segmentation::BinaryMask`]).
    #[default]
    BinaryMask,
    /// An uncompressed RLE ([`Segmentation::UncompressedRle`]).
    UncompressedRle,
    /// A compressed COCO RLE ([`Segmentation::CocoRle`]).
    CocoRle,
}

impl OutputMode {
    /// The official name: `binary_mask`, `uncompressed_rle` or `coco_rle`.
    pub fn as_str(&self) -> &'static str {
        match self {
            OutputMode::BinaryMask => "binary_mask",
            OutputMode::UncompressedRle => "uncompressed_rle",
            OutputMode::CocoRle => "coco_rle",
        }
    }
}

impl std::fmt::Display for OutputMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutputMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "binary_mask" => Ok(OutputMode::BinaryMask),
            "uncompressed_rle" => Ok(OutputMode::UncompressedRle),
            "coco_rle" => Ok(OutputMode::CocoRle),
            _ => Err(Error::arg(
                "output_mode",
                format!("unknown output mode `{s}` (expected binary_mask, uncompressed_rle or coco_rle)"),
            )),
        }
    }
}

/// The parameters of the official `SamAutomaticMaskGenerator`, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AmgParams {
    /// Points per side of the grid (n × n points); exclusive with `point_grids`. Default `Some(32)`.
    pub points_per_side: Option<usize>,
    /// Points run through the decoder at once. Default 64.
    pub points_per_batch: usize,
    /// Keep masks with predicted IoU `>` this (skipped when `<= 0`). Default 0.88.
    pub pred_iou_thresh: f64,
    /// Keep masks with stability score `>=` this (skipped when `<= 0`). Default 0.95.
    pub stability_score_thresh: f64,
    /// Logit offset of the stability score. Default 1.0.
    pub stability_score_offset: f64,
    /// Box IoU above which NMS removes a mask within a crop. Default 0.7.
    pub box_nms_thresh: f64,
    /// Extra crop layers; layer i has (2^i)² crops. Default 0.
    pub crop_n_layers: usize,
    /// Box IoU above which NMS removes a mask across crops. Default 0.7.
    pub crop_nms_thresh: f64,
    /// Overlap of the layer-1 crops as a fraction of the short image side (halved at each further layer).
    /// Default 512 / 1500.
    pub crop_overlap_ratio: f64,
    /// Points per side in layer i = `points_per_side / factor^i` (truncated). Default 1.
    pub crop_n_points_downscale_factor: usize,
    /// Explicit point grids normalised to [0, 1], one per crop layer; exclusive with `points_per_side`.
    pub point_grids: Option<Vec<Vec<[f64; 2]>>>,
    /// If > 0, holes and islands smaller than this many pixels are removed, then NMS runs again. Default 0.
    pub min_mask_region_area: usize,
    /// Form of the returned segmentations. Default binary masks.
    pub output_mode: OutputMode,
}

impl Default for AmgParams {
    fn default() -> Self {
        Self {
            points_per_side: Some(32),
            points_per_batch: 64,
            pred_iou_thresh: 0.88,
            stability_score_thresh: 0.95,
            stability_score_offset: 1.0,
            box_nms_thresh: 0.7,
            crop_n_layers: 0,
            crop_nms_thresh: 0.7,
            crop_overlap_ratio: 512.0 / 1500.0,
            crop_n_points_downscale_factor: 1,
            point_grids: None,
            min_mask_region_area: 0,
            output_mode: OutputMode::BinaryMask,
        }
    }
}

impl AmgParams {
    /// Check the parameters and return the point grid of every crop layer (`crop_n_layers + 1` grids).
    ///
    /// Errors (the official code asserts or crashes later on most of these): both or neither of
    /// `points_per_side` / `point_grids`; a layer with 0 points per side; fewer grids than layers or an empty grid;
    /// non-finite grid points; `points_per_batch` or `crop_n_points_downscale_factor` 0; non-finite thresholds;
    /// a negative NMS threshold or stability offset; `crop_overlap_ratio` outside [0, 1] (crop boxes would start
    /// at negative coordinates).
    pub fn layer_point_grids(&self) -> Result<Vec<Vec<[f64; 2]>>> {
        fn arg(name: &'static str, message: impl Into<String>) -> Error {
            Error::arg(name, message)
        }
        if self.points_per_batch == 0 {
            return Err(arg("points_per_batch", "must be at least 1"));
        }
        for (name, v) in [
            ("pred_iou_thresh", self.pred_iou_thresh),
            ("stability_score_thresh", self.stability_score_thresh),
            ("stability_score_offset", self.stability_score_offset),
            ("box_nms_thresh", self.box_nms_thresh),
            ("crop_nms_thresh", self.crop_nms_thresh),
            ("crop_overlap_ratio", self.crop_overlap_ratio),
        ] {
            if !v.is_finite() {
                return Err(arg(name, format!("must be a finite number, got {v}")));
            }
        }
        for (name, v) in [
            ("box_nms_thresh", self.box_nms_thresh),
            ("crop_nms_thresh", self.crop_nms_thresh),
            ("stability_score_offset", self.stability_score_offset),
        ] {
            if v < 0.0 {
                return Err(arg(name, format!("must be >= 0, got {v}")));
            }
        }
        if !(0.0..=1.0).contains(&self.crop_overlap_ratio) {
            return Err(arg(
                "crop_overlap_ratio",
                format!(
                    "must be a fraction in [0, 1] of the short image side, got {}",
                    self.crop_overlap_ratio
                ),
            ));
        }
        if self.crop_n_points_downscale_factor == 0 {
            return Err(arg("crop_n_points_downscale_factor", "must be at least 1"));
        }
        if self.crop_n_layers > 16 {
            return Err(arg(
                "crop_n_layers",
                format!(
                    "{} layers would make more than 4^16 crops",
                    self.crop_n_layers
                ),
            ));
        }
        match (&self.points_per_side, &self.point_grids) {
            (Some(_), Some(_)) | (None, None) => Err(arg(
                "points_per_side",
                "exactly one of points_per_side or point_grids must be given",
            )),
            (Some(n), None) => {
                for i in 0..=self.crop_n_layers {
                    if layer_points_per_side(*n, self.crop_n_points_downscale_factor, i) == 0 {
                        return Err(arg(
                            "points_per_side",
                            format!(
                                "{n} points per side downscaled by {}^{i} leaves no point in crop layer {i}",
                                self.crop_n_points_downscale_factor
                            ),
                        ));
                    }
                }
                Ok(build_all_layer_point_grids(
                    *n,
                    self.crop_n_layers,
                    self.crop_n_points_downscale_factor,
                ))
            }
            (None, Some(grids)) => {
                if grids.len() < self.crop_n_layers + 1 {
                    return Err(arg(
                        "point_grids",
                        format!(
                            "{} grid(s) for {} crop layer(s) (one grid per layer, layer 0 included)",
                            grids.len(),
                            self.crop_n_layers + 1
                        ),
                    ));
                }
                for (i, g) in grids.iter().enumerate() {
                    if g.is_empty() {
                        return Err(arg("point_grids", format!("grid {i} is empty")));
                    }
                    if let Some(p) = g.iter().find(|p| !p.iter().all(|v| v.is_finite())) {
                        return Err(arg(
                            "point_grids",
                            format!("grid {i} has a non-finite point {p:?}"),
                        ));
                    }
                }
                Ok(grids.clone())
            }
        }
    }

    /// [`AmgParams::layer_point_grids`], discarding the grids.
    pub fn validate(&self) -> Result<()> {
        self.layer_point_grids().map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------------------------

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

/// `(count(> hi), count(> lo))` of a row-major plane with the official int16 row sums and int32 total.
fn stability_counts(plane: &[f32], width: usize, hi: f32, lo: f32) -> (i32, i32) {
    let (mut inter, mut union) = (0i64, 0i64);
    for row in plane.chunks_exact(width.max(1)) {
        let (mut a, mut b) = (0u32, 0u32);
        for &v in row {
            a += u32::from(v > hi);
            b += u32::from(v > lo);
        }
        // `.sum(-1, dtype=torch.int16)`: the row count wraps modulo 2^16.
        inter += (a as u16 as i16) as i64;
        union += (b as u16 as i16) as i64;
    }
    // `.sum(-1, dtype=torch.int32)`.
    (inter as i32, union as i32)
}

fn stability_score_from_counts((inter, union): (i32, i32)) -> f32 {
    // int32 / int32 true division → float32.
    inter as f32 / union as f32
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
// utils/amg.py
// ---------------------------------------------------------------------------------------------------------------

/// `numpy.linspace(start, stop, num)` (endpoint included), with numpy's arithmetic: `i * step + start`, the last
/// value set to `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    let div = num - 1;
    let delta = stop - start;
    let mut y: Vec<f64> = if div > 0 {
        let step = delta / div as f64;
        if step == 0.0 {
            (0..num)
                .map(|i| i as f64 / div as f64 * delta + start)
                .collect()
        } else {
            (0..num).map(|i| i as f64 * step + start).collect()
        }
    } else {
        (0..num).map(|i| i as f64 * delta + start).collect()
    };
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// The official `build_point_grid(n)`: `n × n` points evenly spaced in [0, 1]², in row-major order (y outer,
/// x inner), as `[x, y]`.
pub fn build_point_grid(n_per_side: usize) -> Vec<[f64; 2]> {
    if n_per_side == 0 {
        return Vec::new();
    }
    let offset = 1.0 / (2 * n_per_side) as f64;
    let p = linspace(offset, 1.0 - offset, n_per_side);
    let mut out = Vec::with_capacity(n_per_side * n_per_side);
    for &y in &p {
        for &x in &p {
            out.push([x, y]);
        }
    }
    out
}

fn layer_points_per_side(n_per_side: usize, scale_per_layer: usize, layer: usize) -> usize {
    // int(n_per_side / (scale_per_layer ** i)) with a float division.
    let denom = (scale_per_layer as f64).powi(layer as i32);
    (n_per_side as f64 / denom) as usize
}

/// The official `build_all_layer_point_grids`: layer i has `int(n_per_side / scale_per_layer^i)` points per side.
pub fn build_all_layer_point_grids(
    n_per_side: usize,
    n_layers: usize,
    scale_per_layer: usize,
) -> Vec<Vec<[f64; 2]>> {
    (0..=n_layers)
        .map(|i| build_point_grid(layer_points_per_side(n_per_side, scale_per_layer, i)))
        .collect()
}

/// The official `generate_crop_boxes((h, w), n_layers, overlap_ratio)`: crop boxes `[x0, y0, x1, y1]` (exclusive
/// ends) and their layer indices. Layer 0 is the whole image; layer i has `(2^i)²` crops in x-major order.
pub fn generate_crop_boxes(
    im_size: (usize, usize),
    n_layers: usize,
    overlap_ratio: f64,
) -> (Vec<[i64; 4]>, Vec<usize>) {
    let (im_h, im_w) = (im_size.0 as i64, im_size.1 as i64);
    let short_side = im_h.min(im_w);
    let mut boxes = vec![[0, 0, im_w, im_h]];
    let mut layers = vec![0];
    let crop_len = |orig_len: i64, n_crops: i64, overlap: i64| -> i64 {
        ((overlap * (n_crops - 1) + orig_len) as f64 / n_crops as f64).ceil() as i64
    };
    for i_layer in 0..n_layers {
        let n_crops = 1i64 << (i_layer + 1);
        let overlap = (overlap_ratio * short_side as f64 * (2.0 / n_crops as f64)) as i64;
        let crop_w = crop_len(im_w, n_crops, overlap);
        let crop_h = crop_len(im_h, n_crops, overlap);
        let x0s: Vec<i64> = (0..n_crops).map(|k| (crop_w - overlap) * k).collect();
        let y0s: Vec<i64> = (0..n_crops).map(|k| (crop_h - overlap) * k).collect();
        for &x0 in &x0s {
            for &y0 in &y0s {
                boxes.push([x0, y0, (x0 + crop_w).min(im_w), (y0 + crop_h).min(im_h)]);
                layers.push(i_layer + 1);
            }
        }
    }
    (boxes, layers)
}

/// The official `calculate_stability_score` for one mask of `height × width` logits (row-major):
/// `count(logits > t + offset) / count(logits > t - offset)` with the thresholds cast to `f32`, the official
/// int16 row sums, and an `f32` division (NaN when both counts are 0).
pub fn calculate_stability_score(
    logits: &[f32],
    width: usize,
    mask_threshold: f64,
    offset: f64,
) -> f32 {
    let hi = (mask_threshold + offset) as f32;
    let lo = (mask_threshold - offset) as f32;
    stability_score_from_counts(stability_counts(logits, width, hi, lo))
}

/// The official `batched_mask_to_box` for one row-major mask: inclusive `[x0, y0, x1, y1]`, `[0, 0, 0, 0]` if empty.
pub fn mask_to_box(mask: &[bool], height: usize, width: usize) -> [i64; 4] {
    let bytes: Vec<u8> = mask.iter().map(|&v| u8::from(v)).collect();
    rle::mask_bbox_xyxy(&bytes, height, width)
        .map(|b| b.map(|v| v as i64))
        .unwrap_or([0; 4])
}

/// The official `is_box_near_crop_edge` for one box in the crop frame: uncropped, it is within `atol` of a crop edge
/// that is not also within `atol` of the image edge.
pub fn is_box_near_crop_edge(
    bbox: &[i64; 4],
    crop_box: &[i64; 4],
    orig_box: &[i64; 4],
    atol: f32,
) -> bool {
    let b = [
        bbox[0] + crop_box[0],
        bbox[1] + crop_box[1],
        bbox[2] + crop_box[0],
        bbox[3] + crop_box[1],
    ];
    (0..4).any(|i| {
        let v = b[i] as f32;
        let near_crop = (v - crop_box[i] as f32).abs() <= atol;
        let near_image = (v - orig_box[i] as f32).abs() <= atol;
        near_crop && !near_image
    })
}

// ---------------------------------------------------------------------------------------------------------------
// NMS (torchvision) and torch's CPU sort
// ---------------------------------------------------------------------------------------------------------------

/// The indices that sort `scores` in descending order exactly as `torch.sort(scores, descending=True)` does on the
/// CPU (not stable: libstdc++'s `std::sort` introsort with torch's comparator, NaN first).
pub fn torch_argsort_descending(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let less = |a: &usize, b: &usize| {
        let (x, y) = (scores[*a], scores[*b]);
        (x.is_nan() && !y.is_nan()) || x > y
    };
    libstdcxx_sort(&mut idx, &less);
    idx
}

/// The indices that sort `scores` in descending order with a stable sort (`torch.sort(stable=True,
/// descending=True)`: NaN first, equal scores in index order).
pub fn stable_argsort_descending(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (scores[a], scores[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            _ => y.partial_cmp(&x).expect("not NaN"),
        }
    });
    idx
}

/// torchvision `nms` (CPU kernel): indices kept, in descending score order (the kernel sorts with
/// `stable=true`, so equal scores keep their index order). Boxes `[x1, y1, x2, y2]`; areas and IoU in `f32`; a box
/// is suppressed when its IoU with a kept box is `> iou_threshold`.
pub fn nms(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f64) -> Vec<usize> {
    let n = boxes.len();
    if n == 0 {
        return Vec::new();
    }
    let areas: Vec<f32> = boxes
        .iter()
        .map(|b| (b[2] - b[0]) * (b[3] - b[1]))
        .collect();
    let order = stable_argsort_descending(scores);
    let mut suppressed = vec![false; n];
    let mut keep = Vec::new();
    for (oi, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let [ix1, iy1, ix2, iy2] = boxes[i];
        let iarea = areas[i];
        for &j in &order[oi + 1..] {
            if suppressed[j] {
                continue;
            }
            let b = &boxes[j];
            let xx1 = ix1.max(b[0]);
            let yy1 = iy1.max(b[1]);
            let xx2 = ix2.min(b[2]);
            let yy2 = iy2.min(b[3]);
            let w = (xx2 - xx1).max(0.0);
            let h = (yy2 - yy1).max(0.0);
            let inter = w * h;
            let ovr = inter / (iarea + areas[j] - inter);
            if ovr as f64 > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// torchvision `batched_nms` with every box in one category (as the generator calls it). Above 1000 boxes
/// torchvision runs its "vanilla" path: the kept indices in ascending order, re-sorted by
/// `scores[keep].sort(descending=True)` — torch's default, *unstable* CPU sort ([`torch_argsort_descending`]), which
/// reorders equal scores.
pub fn batched_nms(boxes: &[[f32; 4]], scores: &[f32], iou_threshold: f64) -> Vec<usize> {
    if boxes.len() * 4 > 4000 {
        let kept = nms(boxes, scores, iou_threshold);
        let mut mask = vec![false; boxes.len()];
        for &i in &kept {
            mask[i] = true;
        }
        let keep_indices: Vec<usize> = (0..boxes.len()).filter(|&i| mask[i]).collect();
        let kept_scores: Vec<f32> = keep_indices.iter().map(|&i| scores[i]).collect();
        torch_argsort_descending(&kept_scores)
            .into_iter()
            .map(|j| keep_indices[j])
            .collect()
    } else {
        nms(boxes, scores, iou_threshold)
    }
}

/// libstdc++ `std::sort` (introsort: median-of-three quicksort down to 16 elements, heapsort past `2·log2(n)`
/// levels, then insertion sort), transcribed so that the order of equivalent elements is the same.
fn libstdcxx_sort<T: Copy>(v: &mut [T], less: &impl Fn(&T, &T) -> bool) {
    let n = v.len();
    if n == 0 {
        return;
    }
    let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
    introsort_loop(v, 0, n, depth, less);
    final_insertion_sort(v, 0, n, less);
}

const SORT_THRESHOLD: usize = 16;

fn introsort_loop<T: Copy>(
    v: &mut [T],
    first: usize,
    mut last: usize,
    mut depth: usize,
    less: &impl Fn(&T, &T) -> bool,
) {
    while last - first > SORT_THRESHOLD {
        if depth == 0 {
            heap_sort(v, first, last, less);
            return;
        }
        depth -= 1;
        let mid = first + (last - first) / 2;
        move_median_to_first(v, first, first + 1, mid, last - 1, less);
        let cut = unguarded_partition(v, first + 1, last, first, less);
        introsort_loop(v, cut, last, depth, less);
        last = cut;
    }
}

fn move_median_to_first<T: Copy>(
    v: &mut [T],
    result: usize,
    a: usize,
    b: usize,
    c: usize,
    less: &impl Fn(&T, &T) -> bool,
) {
    if less(&v[a], &v[b]) {
        if less(&v[b], &v[c]) {
            v.swap(result, b);
        } else if less(&v[a], &v[c]) {
            v.swap(result, c);
        } else {
            v.swap(result, a);
        }
    } else if less(&v[a], &v[c]) {
        v.swap(result, a);
    } else if less(&v[b], &v[c]) {
        v.swap(result, c);
    } else {
        v.swap(result, b);
    }
}

fn unguarded_partition<T: Copy>(
    v: &mut [T],
    mut first: usize,
    mut last: usize,
    pivot: usize,
    less: &impl Fn(&T, &T) -> bool,
) -> usize {
    loop {
        while less(&v[first], &v[pivot]) {
            first += 1;
        }
        last -= 1;
        while less(&v[pivot], &v[last]) {
            last -= 1;
        }
        if first >= last {
            return first;
        }
        v.swap(first, last);
        first += 1;
    }
}

fn insertion_sort<T: Copy>(v: &mut [T], first: usize, last: usize, less: &impl Fn(&T, &T) -> bool) {
    if first == last {
        return;
    }
    for i in first + 1..last {
        if less(&v[i], &v[first]) {
            let val = v[i];
            v.copy_within(first..i, first + 1);
            v[first] = val;
        } else {
            unguarded_linear_insert(v, i, less);
        }
    }
}

fn unguarded_linear_insert<T: Copy>(v: &mut [T], mut last: usize, less: &impl Fn(&T, &T) -> bool) {
    let val = v[last];
    let mut next = last - 1;
    while less(&val, &v[next]) {
        v[last] = v[next];
        last = next;
        next -= 1;
    }
    v[last] = val;
}

fn final_insertion_sort<T: Copy>(
    v: &mut [T],
    first: usize,
    last: usize,
    less: &impl Fn(&T, &T) -> bool,
) {
    if last - first > SORT_THRESHOLD {
        insertion_sort(v, first, first + SORT_THRESHOLD, less);
        for i in first + SORT_THRESHOLD..last {
            unguarded_linear_insert(v, i, less);
        }
    } else {
        insertion_sort(v, first, last, less);
    }
}

fn adjust_heap<T: Copy>(
    v: &mut [T],
    first: usize,
    mut hole: usize,
    len: usize,
    value: T,
    less: &impl Fn(&T, &T) -> bool,
) {
    let top = hole;
    let mut second = hole;
    while second < (len - 1) / 2 {
        second = 2 * (second + 1);
        if less(&v[first + second], &v[first + second - 1]) {
            second -= 1;
        }
        v[first + hole] = v[first + second];
        hole = second;
    }
    if len & 1 == 0 && second == (len - 2) / 2 {
        second = 2 * (second + 1);
        v[first + hole] = v[first + second - 1];
        hole = second - 1;
    }
    // __push_heap
    while hole > top {
        let parent = (hole - 1) / 2;
        if !less(&v[first + parent], &value) {
            break;
        }
        v[first + hole] = v[first + parent];
        hole = parent;
    }
    v[first + hole] = value;
}

/// `std::__partial_sort(first, last, last)`: make_heap then sort_heap.
fn heap_sort<T: Copy>(v: &mut [T], first: usize, last: usize, less: &impl Fn(&T, &T) -> bool) {
    let len = last - first;
    if len >= 2 {
        let mut parent = (len - 2) / 2;
        loop {
            let value = v[first + parent];
            adjust_heap(v, first, parent, len, value, less);
            if parent == 0 {
                break;
            }
            parent -= 1;
        }
    }
    let mut last = last;
    while last - first > 1 {
        last -= 1;
        let value = v[last];
        v[last] = v[first];
        adjust_heap(v, first, 0, last - first, value, less);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Small regions (cv2.connectedComponentsWithStats, 8-connectivity)
// ---------------------------------------------------------------------------------------------------------------

/// What [`remove_small_regions`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionMode {
    /// Fill background components smaller than the threshold (including ones touching the border).
    Holes,
    /// Remove foreground components smaller than the threshold (the largest is kept if all are small).
    Islands,
}

/// The official `remove_small_regions(mask, area_thresh, mode)` on a row-major mask: returns the new mask and
/// whether any region was smaller than `area_thresh` (then the mask counts as modified, even if unchanged).
pub fn remove_small_regions(
    mask: &[bool],
    height: usize,
    width: usize,
    area_thresh: f64,
    mode: RegionMode,
) -> (Vec<bool>, bool) {
    let bytes: Vec<u8> = mask.iter().map(|&v| u8::from(v)).collect();
    let (out, changed) = remove_small_regions_u8(&bytes, height, width, area_thresh, mode);
    (out.into_iter().map(|v| v != 0).collect(), changed)
}

#[derive(Clone, Copy)]
struct Run {
    y: u32,
    xs: u32,
    /// Inclusive end.
    xe: u32,
}

fn find(parent: &mut [u32], mut i: u32) -> u32 {
    let mut root = i;
    while parent[root as usize] != root {
        root = parent[root as usize];
    }
    while parent[i as usize] != root {
        let next = parent[i as usize];
        parent[i as usize] = root;
        i = next;
    }
    root
}

fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[hi as usize] = lo;
    }
}

/// 8-connected components of the non-zero pixels: the runs, each run's component id (components numbered in
/// OpenCV's label order), and each component's size.
fn connected_components(
    mask: &[u8],
    height: usize,
    width: usize,
) -> (Vec<Run>, Vec<u32>, Vec<u64>) {
    let mut runs: Vec<Run> = Vec::new();
    let mut parent: Vec<u32> = Vec::new();
    let mut prev_start = 0;
    for y in 0..height {
        let row = &mask[y * width..(y + 1) * width];
        let cur_start = runs.len();
        let mut x = 0;
        while x < width {
            if row[x] == 0 {
                x += 1;
                continue;
            }
            let xs = x;
            while x < width && row[x] != 0 {
                x += 1;
            }
            let id = runs.len() as u32;
            runs.push(Run {
                y: y as u32,
                xs: xs as u32,
                xe: (x - 1) as u32,
            });
            parent.push(id);
        }
        // Union with the runs of the previous row that touch (8-connectivity: ranges within one column).
        let cur_end = runs.len();
        let mut j = prev_start;
        for c in cur_start..cur_end {
            let (xs, xe) = (runs[c].xs, runs[c].xe);
            while j < cur_start && runs[j].xe + 1 < xs {
                j += 1;
            }
            let mut k = j;
            while k < cur_start && runs[k].xs <= xe + 1 {
                union(&mut parent, c as u32, k as u32);
                k += 1;
            }
        }
        prev_start = cur_start;
    }
    // Component order: OpenCV labels components by their first 2×2 block in raster order.
    let n = runs.len();
    let mut key = vec![u64::MAX; n];
    let mut size = vec![0u64; n];
    for (r, run) in runs.iter().enumerate() {
        let root = find(&mut parent, r as u32) as usize;
        let k = ((run.y / 2) as u64) << 32 | (run.xs / 2) as u64;
        key[root] = key[root].min(k);
        size[root] += (run.xe - run.xs + 1) as u64;
    }
    let mut roots: Vec<usize> = (0..n).filter(|&r| parent[r] as usize == r).collect();
    roots.sort_by_key(|&r| key[r]);
    let mut comp_of_root = vec![u32::MAX; n];
    for (c, &r) in roots.iter().enumerate() {
        comp_of_root[r] = c as u32;
    }
    let comp: Vec<u32> = (0..n)
        .map(|r| comp_of_root[find(&mut parent, r as u32) as usize])
        .collect();
    let sizes: Vec<u64> = roots.iter().map(|&r| size[r]).collect();
    (runs, comp, sizes)
}

pub(crate) fn remove_small_regions_u8(
    mask: &[u8],
    height: usize,
    width: usize,
    area_thresh: f64,
    mode: RegionMode,
) -> (Vec<u8>, bool) {
    let holes = mode == RegionMode::Holes;
    let working: Vec<u8> = mask.iter().map(|&v| u8::from((v != 0) != holes)).collect();
    let (runs, comp, sizes) = connected_components(&working, height, width);
    let small: Vec<bool> = sizes.iter().map(|&s| (s as f64) < area_thresh).collect();
    if !small.iter().any(|&s| s) {
        return (mask.to_vec(), false);
    }
    if holes {
        let mut out: Vec<u8> = mask.iter().map(|&v| u8::from(v != 0)).collect();
        for (r, run) in runs.iter().enumerate() {
            if small[comp[r] as usize] {
                let o = run.y as usize * width;
                out[o + run.xs as usize..=o + run.xe as usize].fill(1);
            }
        }
        (out, true)
    } else {
        let mut fill: Vec<bool> = small.iter().map(|&s| !s).collect();
        if !fill.iter().any(|&f| f) {
            // Every region is below the threshold: keep the largest (the first in label order on ties).
            let mut best = 0;
            for (i, &s) in sizes.iter().enumerate() {
                if s > sizes[best] {
                    best = i;
                }
            }
            fill[best] = true;
        }
        let mut out = vec![0u8; height * width];
        for (r, run) in runs.iter().enumerate() {
            if fill[comp[r] as usize] {
                let o = run.y as usize * width;
                out[o + run.xs as usize..=o + run.xe as usize].fill(1);
            }
        }
        (out, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_official() {
        let p = AmgParams::default();
        assert_eq!(p.points_per_side, Some(32));
        assert_eq!(p.points_per_batch, 64);
        assert_eq!(p.pred_iou_thresh, 0.88);
        assert_eq!(p.stability_score_thresh, 0.95);
        assert_eq!(p.stability_score_offset, 1.0);
        assert_eq!(p.box_nms_thresh, 0.7);
        assert_eq!(p.crop_n_layers, 0);
        assert_eq!(p.crop_nms_thresh, 0.7);
        assert_eq!(p.crop_overlap_ratio, 512.0 / 1500.0);
        assert_eq!(p.crop_n_points_downscale_factor, 1);
        assert_eq!(p.point_grids, None);
        assert_eq!(p.min_mask_region_area, 0);
        assert_eq!(p.output_mode, OutputMode::BinaryMask);
        assert_eq!(p.layer_point_grids().unwrap()[0].len(), 1024);
    }

    #[test]
    fn validation_errors() {
        let bad = |f: &dyn Fn(&mut AmgParams)| {
            let mut p = AmgParams::default();
            f(&mut p);
            p.validate().unwrap_err().to_string()
        };
        assert!(bad(&|p| p.point_grids = Some(vec![vec![[0.5, 0.5]]])).contains("exactly one"));
        assert!(bad(&|p| p.points_per_side = None).contains("exactly one"));
        assert!(bad(&|p| p.points_per_batch = 0).contains("points_per_batch"));
        assert!(bad(&|p| p.pred_iou_thresh = f64::NAN).contains("finite"));
        assert!(bad(&|p| p.crop_overlap_ratio = 1.5).contains("[0, 1]"));
        assert!(bad(&|p| p.box_nms_thresh = -0.1).contains(">= 0"));
        assert!(bad(&|p| p.crop_n_points_downscale_factor = 0).contains("at least 1"));
        assert!(bad(&|p| {
            p.points_per_side = Some(3);
            p.crop_n_layers = 2;
            p.crop_n_points_downscale_factor = 2;
        })
        .contains("no point in crop layer 2"));
        assert!(bad(&|p| {
            p.points_per_side = None;
            p.crop_n_layers = 1;
            p.point_grids = Some(vec![vec![[0.5, 0.5]]]);
        })
        .contains("1 grid(s) for 2 crop layer(s)"));
        assert_eq!(
            "coco_rle".parse::<OutputMode>().unwrap(),
            OutputMode::CocoRle
        );
        assert!("rle".parse::<OutputMode>().is_err());
    }

    #[test]
    fn sort_matches_stable_order_for_small_inputs_and_is_sorted() {
        // With at most 16 elements std::sort is an insertion sort, hence stable.
        let s = [0.5f32, 0.7, 0.5, 0.9, 0.7, 0.5];
        assert_eq!(torch_argsort_descending(&s), vec![3, 1, 4, 0, 2, 5]);
        let mut seed = 1u64;
        for n in [17usize, 100, 1000, 5000] {
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ((seed >> 40) % 7) as f32
                })
                .collect();
            let o = torch_argsort_descending(&v);
            let mut seen = o.clone();
            seen.sort();
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
            assert!(o.windows(2).all(|w| v[w[0]] >= v[w[1]]));
        }
        // Heap sort fallback sorts too.
        let mut v: Vec<u32> = (0..200).rev().collect();
        heap_sort(&mut v, 0, 200, &|a: &u32, b: &u32| a < b);
        assert_eq!(v, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn nms_basics() {
        let boxes = [
            [0.0, 0.0, 10.0, 10.0],
            [1.0, 1.0, 11.0, 11.0],
            [20.0, 20.0, 30.0, 30.0],
            [5.0, 5.0, 5.0, 5.0],
            [5.0, 5.0, 5.0, 5.0],
        ];
        let scores = [0.8, 0.9, 0.5, 0.3, 0.3];
        // Zero-area boxes never suppress each other (0 / 0 is NaN, not > thresh).
        assert_eq!(nms(&boxes, &scores, 0.5), vec![1, 2, 3, 4]);
        assert_eq!(nms(&boxes, &scores, 0.7), vec![1, 0, 2, 3, 4]);
        assert!(nms(&[], &[], 0.5).is_empty());
    }

    #[test]
    fn regions() {
        // 6×6: a 2×2 island (4 px), a 1-px island, and a ring with a 1-px hole.
        #[rustfmt::skip]
        let m: Vec<bool> = [
            1, 1, 0, 0, 0, 0,
            1, 1, 0, 0, 0, 1,
            0, 0, 0, 0, 0, 0,
            0, 0, 1, 1, 1, 0,
            0, 0, 1, 0, 1, 0,
            0, 0, 1, 1, 1, 0,
        ].iter().map(|&v| v == 1).collect();
        let (islands, changed) = remove_small_regions(&m, 6, 6, 2.0, RegionMode::Islands);
        assert!(changed);
        assert!(!islands[5 + 6] && islands[0] && islands[2 * 6 + 6 + 2]);
        let (holes, changed) = remove_small_regions(&m, 6, 6, 2.0, RegionMode::Holes);
        assert!(changed);
        assert!(holes[4 * 6 + 3]);
        assert_eq!(holes.iter().filter(|&&v| v).count(), 14);
        let (same, changed) = remove_small_regions(&m, 6, 6, 1.0, RegionMode::Islands);
        assert!(!changed);
        assert_eq!(same, m);
        // All islands small: keep the largest.
        let (largest, _) = remove_small_regions(&m, 6, 6, 100.0, RegionMode::Islands);
        assert_eq!(largest.iter().filter(|&&v| v).count(), 8);
    }
}
