//! The predictor: set an image once (the heavy encoder), then ask for masks many times (the light decoder),
//! with exactly the official `SamPredictor` pre- and post-processing.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::image_view::ImageView;
use crate::mask_decoder::DecoderCache;
use crate::prompt_encoder::Prompts;
use crate::resize::{self, ImageResizer};
use crate::sam::Sam;

/// How a prediction is made: the official `multimask_output` and `return_logits` arguments, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PredictOptions {
    /// Three masks from the multimask tokens (for ambiguous prompts such as one point) instead of one. Official
    /// default: true.
    pub multimask_output: bool,
    /// Also return the upsampled logits the masks are thresholded from ([`Prediction::mask_logits`]). Official
    /// default: false.
    pub return_logits: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        Self {
            multimask_output: true,
            return_logits: false,
        }
    }
}

impl PredictOptions {
    /// One mask per prompt set (`multimask_output = false`).
    pub fn single_mask() -> Self {
        Self {
            multimask_output: false,
            ..Self::default()
        }
    }

    /// Three masks per prompt set (the official default).
    pub fn multimask() -> Self {
        Self::default()
    }

    /// The same options, also returning the upsampled logits.
    pub fn with_logits(self) -> Self {
        Self {
            return_logits: true,
            ..self
        }
    }
}

/// One prompt set in original-image pixel coordinates.
#[derive(Debug, Clone, Default)]
pub struct PromptSet {
    /// Points (x, y) in original-image pixels.
    pub points: Vec<[f64; 2]>,
    /// One label per point: 1 foreground, 0 background, −1 ignored.
    pub labels: Vec<i64>,
    /// Boxes (x0, y0, x1, y1) in original-image pixels; several boxes form one prompt set.
    pub boxes: Vec<[f64; 4]>,
    /// Mask prompts (M3, H′, W′) or (H′, W′): low-resolution logits, e.g. a previous prediction's `low_res_logits`.
    pub mask_input: Option<Tensor>,
}

impl PromptSet {
    /// A single foreground point.
    pub fn point(x: f64, y: f64) -> Self {
        Self {
            points: vec![[x, y]],
            labels: vec![1],
            ..Default::default()
        }
    }

    /// A single box.
    pub fn boxed(b: [f64; 4]) -> Self {
        Self {
            boxes: vec![b],
            ..Default::default()
        }
    }
}

/// Output of a prediction. Single predictions have shapes (K, …); batched ones (N, K, …). K = 3 with
/// [`PredictOptions::multimask_output`], else 1.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Masks at the original image size, u8 0/1 (K, H0, W0): logits above the model's mask threshold.
    pub masks: Tensor,
    /// The upsampled logits (K, H0, W0) f32 the masks were thresholded from, when
    /// [`PredictOptions::return_logits`] was set.
    pub mask_logits: Option<Tensor>,
    /// Predicted IoU scores (K).
    pub scores: Tensor,
    /// Low-resolution logits (K, H′, W′), usable as the next `mask_input`.
    pub low_res_logits: Tensor,
}

/// An image embedding together with the sizes it belongs to; can be stored and restored without the encoder.
#[derive(Debug, Clone)]
pub struct ImageEmbedding {
    /// Name of the model that produced it (e.g. `vit_b`).
    pub model_name: String,
    /// The embedding (1, D, gh, gw).
    pub embedding: Tensor,
    /// Original image size (h0, w0).
    pub original_size: (usize, usize),
    /// Resized, unpadded image size (h, w) fed to the encoder.
    pub input_size: (usize, usize),
}

impl ImageEmbedding {
    /// An embedding (1, D, gh, gw) or (D, gh, gw) computed by `model` for an image of (H0, W0) =
    /// `original_size` (e.g. read from a `.npy` file the official `get_image_embedding()` wrote); its input size is
    /// derived as the predictor derives it, and its shape checked against the model.
    pub fn for_model(
        model: &Sam,
        embedding: Tensor,
        original_size: (usize, usize),
    ) -> Result<Self> {
        let embedding = if embedding.rank() == 3 {
            embedding.unsqueeze(0)?
        } else {
            embedding
        };
        let e = Self {
            model_name: model.config().name.clone(),
            embedding,
            original_size,
            input_size: resizer_for(model, original_size).rescaled_size(),
        };
        e.check_for(model)?;
        Ok(e)
    }

    /// Check that `model` can decode this embedding: its name, shape and input size.
    fn check_for(&self, model: &Sam) -> Result<()> {
        let cfg = model.config();
        if self.model_name != cfg.name {
            return Err(Error::arg(
                "embedding",
                format!(
                    "it was computed by model `{}`, this predictor uses `{}`",
                    self.model_name, cfg.name
                ),
            ));
        }
        if self.original_size.0 == 0 || self.original_size.1 == 0 {
            return Err(Error::arg(
                "embedding",
                format!("original size {:?} is empty", self.original_size),
            ));
        }
        let resizer = resizer_for(model, self.original_size);
        let (ph, pw) = resizer.dst_size();
        let p = cfg.encoder_patch_size;
        let expected = [1, cfg.embed_dim, ph / p, pw / p];
        if self.embedding.dims() != expected {
            return Err(Error::arg(
                "embedding",
                format!(
                    "shape {:?} does not match the model's {expected:?}",
                    self.embedding.dims()
                ),
            ));
        }
        if self.input_size != resizer.rescaled_size() {
            return Err(Error::arg(
                "embedding",
                format!(
                    "input size {:?} is not the resized size {:?} of an image of size {:?}",
                    self.input_size,
                    resizer.rescaled_size(),
                    self.original_size
                ),
            ));
        }
        Ok(())
    }
}

/// The resizer from an image of (H0, W0) to `model`'s input: ResizeLongestSide + padding, or padding to a
/// multiple of the patch size for models without a fixed input size.
fn resizer_for(model: &Sam, original: (usize, usize)) -> ImageResizer {
    let cfg = model.config();
    if cfg.fixed_input_size {
        ImageResizer::new(original, (cfg.input_size[0], cfg.input_size[1]))
    } else {
        let p = cfg.encoder_patch_size;
        ImageResizer::pad_only(
            original,
            (original.0.div_ceil(p) * p, original.1.div_ceil(p) * p),
        )
    }
}

const EMBEDDING_FORMAT: &str = "segment-anything-rs/image-embedding";
const EMBEDDING_VERSION: &str = "1";

impl ImageEmbedding {
    /// Save as a safetensors file: tensor `image_embedding` (1, D, gh, gw) f32, metadata `format`
    /// (`segment-anything-rs/image-embedding`), `version` (`1`), `model`, `original_size` and `input_size` (`h,w`).
    /// Written to a temporary file and renamed, so no partial file is left behind.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let data = self
            .embedding
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            self.embedding.dims().to_vec(),
            &bytes,
        )
        .map_err(|e| Error::arg("embedding", e.to_string()))?;
        let meta: std::collections::HashMap<String, String> = [
            ("format", EMBEDDING_FORMAT.to_string()),
            ("version", EMBEDDING_VERSION.to_string()),
            ("model", self.model_name.clone()),
            (
                "original_size",
                format!("{},{}", self.original_size.0, self.original_size.1),
            ),
            (
                "input_size",
                format!("{},{}", self.input_size.0, self.input_size.1),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let out = safetensors::serialize([("image_embedding", view)], Some(meta))
            .map_err(|e| Error::arg("embedding", e.to_string()))?;
        crate::io::atomic_write(path, &out)
    }

    /// Load a file written by [`ImageEmbedding::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |m: String| Error::Checkpoint {
            path: path.to_path_buf(),
            message: m,
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not an image embedding file: {e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(EMBEDDING_FORMAT) {
            return Err(bad(format!(
                "not an image embedding file (metadata `format` is not `{EMBEDDING_FORMAT}`)"
            )));
        }
        let field = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| bad(format!("metadata `{k}` missing")))
        };
        let size = |k: &str| -> Result<(usize, usize)> {
            let v = field(k)?;
            let parts: Vec<usize> = v.split(',').filter_map(|s| s.trim().parse().ok()).collect();
            match parts[..] {
                [h, w] => Ok((h, w)),
                _ => Err(bad(format!("metadata `{k}` = `{v}` is not `h,w`"))),
            }
        };
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let view = st
            .tensor("image_embedding")
            .map_err(|_| bad("tensor `image_embedding` missing".into()))?;
        if view.dtype() != safetensors::Dtype::F32 || view.shape().len() != 4 {
            return Err(bad(format!(
                "tensor `image_embedding` must be f32 (1, D, H, W), got {:?} {:?}",
                view.dtype(),
                view.shape()
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self {
            model_name: field("model")?,
            embedding: Tensor::from_vec(data, view.shape(), &candle_core::Device::Cpu)?,
            original_size: size("original_size")?,
            input_size: size("input_size")?,
        })
    }
}

/// Everything the predictor keeps for the image that is set: its embedding with its sizes, and the decoder's
/// prompt-independent work for that embedding (owned here and dropped with the image).
#[derive(Debug, Clone)]
struct ImageState {
    embedding: ImageEmbedding,
    decoder_cache: DecoderCache,
}

/// Wraps a [`Sam`] model: `set_image` once, then `predict` many times.
///
/// One predictor is one image session: it holds the image's embedding and the decoder's cached work for it.
/// Predictions take `&self`, and the predictor is `Send + Sync`, so a server can share one per image across
/// threads while all of them share one model (`Arc<Sam>`); cloning it shares the image's state.
#[derive(Debug, Clone)]
pub struct SamPredictor {
    model: Arc<Sam>,
    state: Option<ImageState>,
}

impl SamPredictor {
    /// A predictor over `model`.
    pub fn new(model: impl Into<Arc<Sam>>) -> Self {
        Self {
            model: model.into(),
            state: None,
        }
    }

    /// The model.
    pub fn model(&self) -> &Sam {
        &self.model
    }

    /// Whether an image (or embedding) is set.
    pub fn is_image_set(&self) -> bool {
        self.state.is_some()
    }

    /// Forget the current image.
    pub fn clear_image(&mut self) {
        self.state = None;
    }

    /// The model, shared.
    pub fn model_arc(&self) -> &Arc<Sam> {
        &self.model
    }

    /// The resizer from the current image to the model input (error if no image is set).
    pub fn resizer(&self) -> Result<ImageResizer> {
        let s = self.state()?;
        Ok(self.resizer_for(s.original_size))
    }

    /// The current image's (H0, W0), the official `original_size` (error if no image is set).
    pub fn original_size(&self) -> Result<(usize, usize)> {
        Ok(self.state()?.original_size)
    }

    /// The resized, unpadded (H, W) the encoder saw, the official `input_size` (error if no image is set).
    pub fn input_size(&self) -> Result<(usize, usize)> {
        Ok(self.state()?.input_size)
    }

    /// Bytes held for the current image: its embedding and the decoder's cached work (0 when none is set).
    pub fn image_bytes(&self) -> usize {
        self.state.as_ref().map_or(0, |s| {
            s.embedding.embedding.elem_count() * s.embedding.embedding.dtype().size_in_bytes()
                + s.decoder_cache.bytes()
        })
    }

    fn resizer_for(&self, original: (usize, usize)) -> ImageResizer {
        resizer_for(&self.model, original)
    }

    fn state(&self) -> Result<&ImageEmbedding> {
        Ok(&self.image_state()?.embedding)
    }

    fn image_state(&self) -> Result<&ImageState> {
        self.state.as_ref().ok_or_else(|| {
            Error::arg(
                "image",
                "no image is set: call set_image (or set_image_embedding) before predicting",
            )
        })
    }

    /// Set an image (H0, W0, C): C = the model's channels, or for RGB models 1-channel gray and 4-channel RGBA
    /// (converted); BGR views are flipped. Runs the image encoder.
    pub fn set_image(&mut self, image: ImageView<'_>) -> Result<()> {
        self.state = None;
        let pixels = image.to_model_pixels(self.model.config().in_channels)?;
        let resizer = self.resizer_for(image.size());
        let input = self.preprocess(&pixels, &resizer)?;
        let embedding = self.model.encode_images(&input)?;
        let decoder_cache = self.model.prepare_decoder(&embedding)?;
        self.state = Some(ImageState {
            embedding: ImageEmbedding {
                model_name: self.model.config().name.clone(),
                embedding,
                original_size: image.size(),
                input_size: resizer.rescaled_size(),
            },
            decoder_cache,
        });
        Ok(())
    }

    /// Set an image from the `image` crate (converted to RGB, or for 1-channel models to 8-bit gray as Pillow's
    /// `convert("L")` computes it). Read files with [`crate::load_image`] to get the official loaders' pixels.
    pub fn set_dynamic_image(&mut self, image: &image::DynamicImage) -> Result<()> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        let channels = self.model.config().in_channels;
        let pixels = crate::image_io::model_pixels(image, channels, "set_image")?;
        self.set_image(ImageView::new(&pixels, h, w, channels)?)
    }

    /// The official preprocessing of pixels in the model's channels: resize (Pillow bilinear), normalise with
    /// mean/std, zero-pad bottom/right. Returns (1, C, H, W) f32.
    fn preprocess(&self, pixels: &[u8], resizer: &ImageResizer) -> Result<Tensor> {
        let cfg = self.model.config();
        let c = cfg.in_channels;
        let (h0, w0) = resizer.src_size();
        let (h, w) = resizer.rescaled_size();
        let (ph, pw) = resizer.dst_size();
        let resized = if (h, w) == (h0, w0) {
            pixels.to_vec()
        } else {
            resize::resize_bilinear_u8(pixels, h0, w0, c, h, w)?
        };
        let mut out = vec![0f32; c * ph * pw];
        for ch in 0..c {
            let (m, s) = (cfg.mean[ch], cfg.std[ch]);
            let plane = &mut out[ch * ph * pw..(ch + 1) * ph * pw];
            for y in 0..h {
                let row = &mut plane[y * pw..y * pw + w];
                for (x, v) in row.iter_mut().enumerate() {
                    *v = (resized[(y * w + x) * c + ch] as f32 - m) / s;
                }
            }
        }
        Ok(Tensor::from_vec(out, (1, c, ph, pw), self.model.device())?)
    }

    /// The current image embedding with its sizes (error if no image is set).
    pub fn image_embedding(&self) -> Result<&ImageEmbedding> {
        self.state()
    }

    /// The decoder's cached work for the current image (error if no image is set).
    pub fn decoder_cache(&self) -> Result<&DecoderCache> {
        Ok(&self.image_state()?.decoder_cache)
    }

    /// Use a stored embedding instead of running the encoder. Its model name and shape must match the model.
    pub fn set_image_embedding(&mut self, embedding: ImageEmbedding) -> Result<()> {
        embedding.check_for(&self.model)?;
        let embedding = ImageEmbedding {
            embedding: embedding.embedding.to_device(self.model.device())?,
            ..embedding
        };
        self.state = None;
        let decoder_cache = self.model.prepare_decoder(&embedding.embedding)?;
        self.state = Some(ImageState {
            embedding,
            decoder_cache,
        });
        Ok(())
    }

    /// Predict masks for one prompt set (original-image pixel coordinates).
    ///
    /// Returns masks (K, H0, W0), scores (K) and low-res logits (K, H′, W′), K = 3 with `multimask_output`, else 1.
    pub fn predict(&self, prompt: &PromptSet, options: PredictOptions) -> Result<Prediction> {
        let p = self.predict_batch(std::slice::from_ref(prompt), options)?;
        Ok(Prediction {
            masks: p.masks.squeeze(0)?,
            mask_logits: p.mask_logits.map(|t| t.squeeze(0)).transpose()?,
            scores: p.scores.squeeze(0)?,
            low_res_logits: p.low_res_logits.squeeze(0)?,
        })
    }

    /// Predict masks for N prompt sets sharing the image embedding. All sets must have the same number of points,
    /// of boxes and of mask prompts. Returns masks (N, K, H0, W0), scores (N, K), low-res logits (N, K, H′, W′).
    pub fn predict_batch(
        &self,
        prompts: &[PromptSet],
        options: PredictOptions,
    ) -> Result<Prediction> {
        let state = self.state()?;
        if prompts.is_empty() {
            return Err(Error::arg("prompts", "at least one prompt set is needed"));
        }
        let resizer = self.resizer_for(state.original_size);
        let n = prompts.len();
        let (m1, m2) = (prompts[0].points.len(), prompts[0].boxes.len());
        let mask_count = |p: &PromptSet| {
            p.mask_input
                .as_ref()
                .map(|m| {
                    if m.rank() == 2 {
                        1
                    } else {
                        m.dim(0).unwrap_or(0)
                    }
                })
                .unwrap_or(0)
        };
        let m3 = mask_count(&prompts[0]);
        let [mh, mw] = self.mask_size_for(&resizer);
        let mut points = Vec::with_capacity(n * m1 * 2);
        let mut labels = Vec::with_capacity(n * m1);
        let mut boxes = Vec::with_capacity(n * m2 * 4);
        let mut masks = Vec::with_capacity(n * m3);
        for (i, p) in prompts.iter().enumerate() {
            if p.points.len() != m1 || p.boxes.len() != m2 || mask_count(p) != m3 {
                return Err(Error::arg(
                    "prompts",
                    format!("prompt set {i} has a different number of points, boxes or masks than prompt set 0"),
                ));
            }
            if p.labels.len() != p.points.len() {
                return Err(Error::arg(
                    "labels",
                    format!(
                        "{} labels for {} points (prompt set {i})",
                        p.labels.len(),
                        p.points.len()
                    ),
                ));
            }
            if let Some(l) = p.labels.iter().find(|l| !matches!(l, -1..=1)) {
                return Err(Error::arg(
                    "labels",
                    format!("label {l} is not 1 (foreground), 0 (background) or -1 (ignore)"),
                ));
            }
            for pt in &p.points {
                if !pt.iter().all(|v| v.is_finite()) {
                    return Err(Error::arg("points", format!("point {pt:?} is not finite")));
                }
                let [x, y] = resizer.scale_point(*pt);
                points.extend([x, y]);
            }
            labels.extend(p.labels.iter().map(|&l| l as f32));
            for b in &p.boxes {
                if !b.iter().all(|v| v.is_finite()) {
                    return Err(Error::arg("boxes", format!("box {b:?} is not finite")));
                }
                if b[2] < b[0] || b[3] < b[1] {
                    return Err(Error::arg(
                        "boxes",
                        format!("box {b:?} has x1 < x0 or y1 < y0 (expected x0, y0, x1, y1)"),
                    ));
                }
                let [x0, y0] = resizer.scale_point([b[0], b[1]]);
                let [x1, y1] = resizer.scale_point([b[2], b[3]]);
                boxes.extend([x0, y0, x1, y1]);
            }
            if let Some(m) = &p.mask_input {
                let m = if m.rank() == 2 {
                    m.unsqueeze(0)?
                } else {
                    m.clone()
                };
                if m.rank() != 3 || m.dim(1)? != mh || m.dim(2)? != mw {
                    return Err(Error::arg(
                        "mask_input",
                        format!(
                            "expected (M, {mh}, {mw}) or ({mh}, {mw}) low-res logits, got {:?}",
                            m.dims()
                        ),
                    ));
                }
                masks.push(m.to_dtype(DType::F32)?.to_device(self.model.device())?);
            }
        }
        let dev = self.model.device();
        let prompts = Prompts {
            points: (m1 > 0)
                .then(|| Tensor::from_vec(points, (n, m1, 2), dev))
                .transpose()?,
            labels: (m1 > 0)
                .then(|| Tensor::from_vec(labels, (n, m1), dev))
                .transpose()?,
            boxes: (m2 > 0)
                .then(|| Tensor::from_vec(boxes, (n, m2, 4), dev))
                .transpose()?,
            masks: if m3 > 0 {
                Some(Tensor::stack(&masks, 0)?)
            } else {
                None
            },
        };
        self.predict_transformed(&prompts, options)
    }

    /// Like the official `predict_torch`: prompts already in the model-input frame, batch N.
    /// Returns masks (N, K, H0, W0), scores (N, K), low-res logits (N, K, H′, W′).
    pub fn predict_transformed(
        &self,
        prompts: &Prompts,
        options: PredictOptions,
    ) -> Result<Prediction> {
        let (low, scores) = self.decode_transformed(prompts, options.multimask_output)?;
        let (masks, mask_logits) = self.postprocess(&low, self.state()?, options.return_logits)?;
        Ok(Prediction {
            masks,
            mask_logits,
            scores,
            low_res_logits: low,
        })
    }

    /// Low-res logits (N, K, H′, W′) and scores (N, K) for prompts in the model-input frame, with the image's
    /// decoder cache.
    pub(crate) fn decode_transformed(
        &self,
        prompts: &Prompts,
        multimask_output: bool,
    ) -> Result<(Tensor, Tensor)> {
        let state = self.image_state()?;
        self.model.decode(
            &state.embedding.embedding,
            prompts,
            multimask_output,
            Some(&state.decoder_cache),
        )
    }

    fn mask_size_for(&self, resizer: &ImageResizer) -> [usize; 2] {
        let p = self.model.config().encoder_patch_size;
        let (ph, pw) = resizer.dst_size();
        [4 * ph / p, 4 * pw / p]
    }

    /// Upscale low-res logits (N, K, H′, W′) to the original size as the official `postprocess_masks` does and
    /// threshold them: masks (N, K, H0, W0) u8, and the logits when `return_logits`.
    fn postprocess(
        &self,
        low: &Tensor,
        state: &ImageEmbedding,
        return_logits: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (n, k, mh, mw) = low.dims4()?;
        let resizer = self.resizer_for(state.original_size);
        let (h0, w0) = state.original_size;
        let low = low.to_dtype(DType::F32)?.flatten_all()?;
        // Read host logits in place; copy them from other devices.
        let reader = if low.device().is_cpu() {
            Some(crate::kernels::F32Read::new(&low)?)
        } else {
            None
        };
        let owned = match reader {
            Some(_) => Vec::new(),
            None => low.to_vec1::<f32>()?,
        };
        let low = reader.as_ref().map_or(&owned[..], |r| r.as_slice());
        let dev = self.model.device();
        let shape = (n, k, h0, w0);
        Ok(if return_logits {
            let up = resize::postprocess_masks(
                low,
                n * k,
                mh,
                mw,
                resizer.dst_size(),
                state.input_size,
                state.original_size,
            )?;
            let threshold = self.model.mask_threshold();
            let masks: Vec<u8> = up.iter().map(|&v| u8::from(v > threshold)).collect();
            (
                Tensor::from_vec(masks, shape, dev)?,
                Some(Tensor::from_vec(up, shape, dev)?),
            )
        } else {
            let up = resize::postprocess_masks_binary(
                low,
                n * k,
                mh,
                mw,
                resizer.dst_size(),
                state.input_size,
                state.original_size,
                self.model.mask_threshold(),
            )?;
            (Tensor::from_vec(up, shape, dev)?, None)
        })
    }

    /// Map full-resolution mask logits (M, H0, W0) or (N, M, H0, W0) of the current image to the mask-prompt size
    /// (…, H′, W′): area-resize to the resized image size, zero-pad, area-resize to H′×W′.
    pub fn preprocess_masks(&self, masks: &Tensor) -> Result<Tensor> {
        let state = self.state()?;
        let resizer = self.resizer_for(state.original_size);
        let (h0, w0) = state.original_size;
        let dims = masks.dims().to_vec();
        if dims.len() < 3 || dims[dims.len() - 2..] != [h0, w0] {
            return Err(Error::arg(
                "masks",
                format!("expected (…, {h0}, {w0}) logits, got {dims:?}"),
            ));
        }
        let planes: usize = dims[..dims.len() - 2].iter().product();
        let [mh, mw] = self.mask_size_for(&resizer);
        let out = resizer.mask_to_prompt(
            &masks
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
            planes,
            (mh, mw),
        )?;
        let mut out_dims = dims[..dims.len() - 2].to_vec();
        out_dims.extend([mh, mw]);
        Ok(Tensor::from_vec(out, out_dims, self.model.device())?)
    }
}
