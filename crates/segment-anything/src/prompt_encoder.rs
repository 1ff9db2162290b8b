//! The prompt encoder: random Fourier position encoding of points and box corners, learned point-type
//! embeddings, and the mask-prompt downscaling network.

use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};

use crate::config::SamConfig;
use crate::error::{Error, Result};
use crate::layers::{LayerNorm, Linear, PatchConv};
use crate::weights::Weights;

/// LayerNorm2d epsilon (fixed in the official code).
const NORM2D_EPS: f64 = 1e-6;

/// Prompts for a batch of B prompt sets, all in the model-input frame (pixels of the padded input).
///
/// Any field may be `None` (or have a zero-sized prompt dimension). Point labels: 1 foreground, 0 background,
/// −1 ignored (padding), 2 / 3 box top-left / bottom-right corner (as in the official ONNX model).
#[derive(Debug, Clone, Default)]
pub struct Prompts {
    /// Points (B, M1, 2) as (x, y).
    pub points: Option<Tensor>,
    /// Labels (B, M1); any numeric dtype.
    pub labels: Option<Tensor>,
    /// Boxes (B, M2, 4) as (x0, y0, x1, y1); M2 > 1 gives several boxes in one prompt set.
    pub boxes: Option<Tensor>,
    /// Mask prompts (B, M3, H′, W′) as logits at the low-resolution mask size; M3 > 1 embeddings are summed.
    pub masks: Option<Tensor>,
}

fn non_empty(t: &Option<Tensor>, dim: usize) -> Result<Option<&Tensor>> {
    match t {
        Some(t) if t.rank() > dim && t.dim(dim)? > 0 => Ok(Some(t)),
        _ => Ok(None),
    }
}

impl Prompts {
    /// Number of prompt sets B implied by the given prompts (1 if none are given).
    pub fn batch_size(&self) -> Result<usize> {
        let mut b = None;
        for (name, t) in [
            ("points", &self.points),
            ("labels", &self.labels),
            ("boxes", &self.boxes),
            ("masks", &self.masks),
        ] {
            if let Some(t) = t {
                if t.rank() == 0 {
                    return Err(Error::arg(name, "must have a batch dimension"));
                }
                let n = t.dim(0)?;
                match b {
                    None => b = Some(n),
                    Some(prev) if prev != n => {
                        return Err(Error::arg(
                            name,
                            format!(
                                "batch size {n} differs from the other prompts' batch size {prev}"
                            ),
                        ))
                    }
                    _ => {}
                }
            }
        }
        Ok(b.unwrap_or(1))
    }
}

/// Random Fourier features of 2-D coordinates (`PositionEmbeddingRandom`).
#[derive(Debug, Clone)]
pub struct PositionEmbeddingRandom {
    /// Gaussian matrix (2, F), row 0 multiplies x, row 1 multiplies y.
    gaussian: Vec<f32>,
    num_feats: usize,
}

impl PositionEmbeddingRandom {
    fn load(w: &Weights, num_feats: usize) -> Result<Self> {
        let g = w.get("positional_encoding_gaussian_matrix", &[2, num_feats])?;
        Ok(Self {
            gaussian: g.flatten_all()?.to_vec1::<f32>()?,
            num_feats,
        })
    }

    /// Encode normalised coordinates (x, y) in [0, 1] into `out` (2F values: sin then cos).
    fn encode(&self, x: f32, y: f32, out: &mut [f32]) {
        let f = self.num_feats;
        let x = 2.0 * x - 1.0;
        let y = 2.0 * y - 1.0;
        let two_pi = (2.0 * std::f64::consts::PI) as f32;
        for i in 0..f {
            let v = two_pi * (x * self.gaussian[i] + y * self.gaussian[f + i]);
            out[i] = v.sin();
            out[f + i] = v.cos();
        }
    }

    /// Dense encoding of a (gh, gw) grid of cell centres, channels last: (gh, gw, 2F).
    pub fn dense(&self, gh: usize, gw: usize, device: &Device) -> Result<Tensor> {
        let d = 2 * self.num_feats;
        let mut out = vec![0f32; gh * gw * d];
        for i in 0..gh {
            for j in 0..gw {
                let y = (i as f32 + 0.5) / gh as f32;
                let x = (j as f32 + 0.5) / gw as f32;
                let o = (i * gw + j) * d;
                self.encode(x, y, &mut out[o..o + d]);
            }
        }
        Ok(Tensor::from_vec(out, (gh, gw, d), device)?)
    }

    /// Encode pixel coordinates (already shifted to pixel centres) of an input of size (h, w).
    fn encode_pixel(&self, x: f32, y: f32, input_hw: (usize, usize), out: &mut [f32]) {
        self.encode(x / input_hw.1 as f32, y / input_hw.0 as f32, out)
    }
}

/// Dense positional encodings computed so far, by grid size (they depend only on the weights).
#[derive(Debug, Clone, Default)]
struct DensePeCache(Arc<Mutex<Vec<DensePeEntry>>>);

/// A grid size (gh, gw) and its encoding.
type DensePeEntry = ((usize, usize), Tensor);

/// The SAM prompt encoder.
#[derive(Debug, Clone)]
pub struct PromptEncoder {
    pe: PositionEmbeddingRandom,
    /// Point-type embeddings: 0 negative, 1 positive, 2 box top-left, 3 box bottom-right.
    point_embeddings: Vec<Vec<f32>>,
    not_a_point: Vec<f32>,
    no_mask: Vec<f32>,
    mask_conv1: PatchConv,
    mask_norm1: LayerNorm,
    mask_conv2: PatchConv,
    mask_norm2: LayerNorm,
    mask_conv3: Linear,
    embed_dim: usize,
    dense_pe_cache: DensePeCache,
}

impl PromptEncoder {
    /// Load from weights under `prompt_encoder.`.
    pub fn load(cfg: &SamConfig, w: &Weights) -> Result<Self> {
        let d = cfg.embed_dim;
        let hidden = cfg.prompt_mask_hidden_dim;
        let vec1 = |key: String| -> Result<Vec<f32>> {
            Ok(w.get(&key, &[1, d])?.flatten_all()?.to_vec1::<f32>()?)
        };
        let point_embeddings = (0..4)
            .map(|i| vec1(format!("point_embeddings.{i}.weight")))
            .collect::<Result<Vec<_>>>()?;
        let m = w.pp("mask_downscaling");
        let conv3_w = m
            .get("6.weight", &[d, hidden, 1, 1])?
            .reshape((d, hidden))?;
        Ok(Self {
            pe: PositionEmbeddingRandom::load(&w.pp("pe_layer"), d / 2)?,
            point_embeddings,
            not_a_point: vec1("not_a_point_embed.weight".into())?,
            mask_conv1: PatchConv::load(&m.pp("0"), 1, hidden / 4, 2, true)?,
            mask_norm1: LayerNorm::load(&m.pp("1"), hidden / 4, NORM2D_EPS)?,
            mask_conv2: PatchConv::load(&m.pp("3"), hidden / 4, hidden, 2, true)?,
            mask_norm2: LayerNorm::load(&m.pp("4"), hidden, NORM2D_EPS)?,
            mask_conv3: Linear::from_weights(conv3_w, Some(m.get("6.bias", &[d])?))?,
            no_mask: vec1("no_mask_embed.weight".into())?,
            embed_dim: d,
            dense_pe_cache: DensePeCache::default(),
        })
    }

    /// Dense positional encoding of the embedding grid, channels last: (gh, gw, embed_dim).
    ///
    /// Computed once per grid size and device, then shared.
    pub fn dense_pe(&self, gh: usize, gw: usize, device: &Device) -> Result<Tensor> {
        let mut cache = self
            .dense_pe_cache
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((_, t)) = cache
            .iter()
            .find(|(hw, t)| *hw == (gh, gw) && t.device().same_device(device))
        {
            return Ok(t.clone());
        }
        let t = self.pe.dense(gh, gw, device)?;
        cache.push(((gh, gw), t.clone()));
        Ok(t)
    }

    /// Encode prompts for an input of size `input_hw` (padded model input) and an embedding grid `grid`.
    ///
    /// Returns sparse tokens (B, T, embed_dim) in the order [points…, (padding point), box corners…] and dense
    /// embeddings channels-last (B, gh, gw, embed_dim); without mask prompts the dense embeddings are a
    /// broadcast view of `no_mask_embed` (call `contiguous()` for a dense copy).
    pub fn forward(
        &self,
        prompts: &Prompts,
        input_hw: (usize, usize),
        grid: (usize, usize),
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let b = prompts.batch_size()?;
        let d = self.embed_dim;
        let points = non_empty(&prompts.points, 1)?;
        let boxes = non_empty(&prompts.boxes, 1)?;
        if prompts.labels.is_some() != prompts.points.is_some() {
            return Err(Error::arg(
                "labels",
                "points and labels must be given together",
            ));
        }

        let mut sparse: Vec<f32> = Vec::new();
        let mut tokens_per_set = 0;
        // Per prompt set, tokens are appended in this order: points, pad, boxes.
        let pts = match points {
            Some(p) => {
                let (pb, n, two) = p.dims3().map_err(|_| {
                    Error::arg("points", format!("expected (B, N, 2), got {:?}", p.dims()))
                })?;
                if two != 2 || pb != b {
                    return Err(Error::arg(
                        "points",
                        format!("expected ({b}, N, 2), got {:?}", p.dims()),
                    ));
                }
                let labels = prompts.labels.as_ref().unwrap();
                if labels.dims() != [b, n] {
                    return Err(Error::arg(
                        "labels",
                        format!(
                            "expected shape ({b}, {n}) to match the points, got {:?}",
                            labels.dims()
                        ),
                    ));
                }
                let coords = p
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let labels = labels
                    .to_dtype(candle_core::DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()?;
                if let Some(c) = coords.iter().find(|c| !c.is_finite()) {
                    return Err(Error::arg(
                        "points",
                        format!("coordinates must be finite, got {c}"),
                    ));
                }
                for &l in &labels {
                    if !(l == -1.0 || l == 0.0 || l == 1.0 || l == 2.0 || l == 3.0) {
                        return Err(Error::arg(
                            "labels",
                            format!("labels must be -1, 0, 1, 2 or 3, got {l}"),
                        ));
                    }
                }
                Some((coords, labels, n))
            }
            None => {
                if non_empty(&prompts.labels, 1)?.is_some() {
                    return Err(Error::arg("labels", "labels given without points"));
                }
                None
            }
        };
        let bxs = match boxes {
            Some(t) => {
                let dims = t.dims();
                if dims.len() != 3 || dims[0] != b || dims[2] != 4 {
                    return Err(Error::arg(
                        "boxes",
                        format!("expected ({b}, M, 4), got {dims:?}"),
                    ));
                }
                let v = t
                    .to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                if let Some(c) = v.iter().find(|c| !c.is_finite()) {
                    return Err(Error::arg(
                        "boxes",
                        format!("coordinates must be finite, got {c}"),
                    ));
                }
                Some((v, dims[1]))
            }
            None => None,
        };
        let pad = pts.is_some() && bxs.is_none();
        if let Some((_, _, n)) = &pts {
            tokens_per_set += n + usize::from(pad);
        }
        if let Some((_, m)) = &bxs {
            tokens_per_set += 2 * m;
        }
        sparse.resize(b * tokens_per_set * d, 0.0);
        for bi in 0..b {
            let mut t = 0;
            let mut tok = |f: &mut dyn FnMut(&mut [f32])| {
                let o = (bi * tokens_per_set + t) * d;
                f(&mut sparse[o..o + d]);
                t += 1;
            };
            if let Some((coords, labels, n)) = &pts {
                for j in 0..*n {
                    let x = coords[(bi * n + j) * 2] + 0.5;
                    let y = coords[(bi * n + j) * 2 + 1] + 0.5;
                    let label = labels[bi * n + j] as i64;
                    tok(&mut |out| {
                        if label == -1 {
                            out.copy_from_slice(&self.not_a_point);
                        } else {
                            self.pe.encode_pixel(x, y, input_hw, out);
                            let e = &self.point_embeddings[label as usize];
                            out.iter_mut().zip(e).for_each(|(o, e)| *o += e);
                        }
                    });
                }
                if pad {
                    tok(&mut |out| out.copy_from_slice(&self.not_a_point));
                }
            }
            if let Some((v, m)) = &bxs {
                for j in 0..*m {
                    let o = (bi * m + j) * 4;
                    for (corner, kind) in [(0usize, 2usize), (2, 3)] {
                        let x = v[o + corner] + 0.5;
                        let y = v[o + corner + 1] + 0.5;
                        tok(&mut |out| {
                            self.pe.encode_pixel(x, y, input_hw, out);
                            let e = &self.point_embeddings[kind];
                            out.iter_mut().zip(e).for_each(|(o, e)| *o += e);
                        });
                    }
                }
            }
        }
        let sparse = Tensor::from_vec(sparse, (b, tokens_per_set, d), device)?;

        let (gh, gw) = grid;
        let dense = match non_empty(&prompts.masks, 1)? {
            Some(masks) => {
                let dims = masks.dims();
                let (mh, mw) = (4 * gh, 4 * gw);
                if dims.len() != 4 || dims[0] != b || dims[2] != mh || dims[3] != mw {
                    return Err(Error::arg(
                        "masks",
                        format!("expected ({b}, M, {mh}, {mw}), got {dims:?}"),
                    ));
                }
                let m3 = dims[1];
                let x = masks
                    .to_dtype(candle_core::DType::F32)?
                    .to_device(device)?
                    .reshape((b * m3, 1, mh, mw))?;
                let emb = self.embed_masks(&x)?; // (b*m3, gh, gw, d)
                emb.reshape((b, m3, gh, gw, d))?.sum(1)?
            }
            // A broadcast view (no copy): the decoder reads it as one vector.
            None => Tensor::from_slice(&self.no_mask, d, device)?
                .reshape((1, 1, 1, d))?
                .broadcast_as((b, gh, gw, d))?,
        };
        Ok((sparse, dense))
    }

    /// `mask_downscaling`: (N, 1, 4gh, 4gw) logits → (N, gh, gw, embed_dim), channels last.
    pub fn embed_masks(&self, masks: &Tensor) -> Result<Tensor> {
        let x = self.mask_conv1.forward_nchw(masks)?;
        let x = self.mask_norm1.forward(&x)?.gelu_erf()?;
        let x = self.mask_conv2.forward_nhwc(&x)?;
        let x = self.mask_norm2.forward(&x)?.gelu_erf()?;
        self.mask_conv3.forward(&x)
    }
}
