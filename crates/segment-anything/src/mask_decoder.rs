//! The mask decoder (the official `segment_anything/modeling/mask_decoder.py`): the output tokens (IoU token and
//! mask tokens) and the prompt tokens go through the two-way transformer (`transformer.rs`) with the image
//! embedding; the image side is upscaled 4× (two transposed convolutions), each mask token's hypernetwork MLP gives
//! the weights that turn the upscaled embedding into that mask's logits, and the IoU head predicts each mask's
//! quality from the IoU token.
//!
//! On the CPU the decoder runs through the fused kernels of `kernels::decoder`; [`DecoderCache`] holds
//! their prompt-independent work for one image embedding.

use std::sync::Arc;

use candle_core::{DType, IndexOp, Tensor};

use crate::config::SamConfig;
use crate::error::{Error, Result};
use crate::kernels::decoder::{DecoderInputs, Dense, HostDecoder, Layer0, Layer0Key};
use crate::kernels::direct::PackedB;
use crate::kernels::F32Read;
use crate::layers::{ConvTranspose2x2, LayerNorm, Mlp};
use crate::transformer::TwoWayTransformer;
use crate::weights::Weights;

/// The mask decoder's prompt-independent work for one image embedding: the image side of the first two-way layer
/// (its keys, token-to-image keys and values, image-to-token queries) and the embedding's part of the first output
/// upscaling, ≈ 14 MB for the official models. Made by [`crate::Sam::prepare_decoder`], owned by whoever holds the
/// embedding (the predictor keeps it with the image that was set and drops it with it), and passed to
/// [`crate::Sam::decode`]; decodes given it skip that work and give the same results.
///
/// Empty (and unused) where the fast path does not apply: devices other than the CPU, and embeddings that are
/// candle variables (their contents can change). Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct DecoderCache {
    layer0: Option<Arc<Layer0>>,
}

impl DecoderCache {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.layer0.as_ref().map_or(0, |l| l.bytes())
    }

    /// Whether it holds nothing (decodes then do all the work).
    pub fn is_empty(&self) -> bool {
        self.layer0.is_none()
    }

    pub(crate) fn layer0(&self) -> Option<&Layer0> {
        self.layer0.as_deref()
    }
}

impl std::fmt::Debug for DecoderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderCache")
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// Upscaling LayerNorm2d epsilon.
const NORM2D_EPS: f64 = 1e-6;

/// The SAM mask decoder.
#[derive(Debug, Clone)]
pub struct MaskDecoder {
    transformer: TwoWayTransformer,
    /// IoU token then mask tokens: (1 + num_mask_tokens, D).
    output_tokens: Tensor,
    upscale1: ConvTranspose2x2,
    upscale_norm: LayerNorm,
    upscale2: ConvTranspose2x2,
    hypernetworks: Vec<Mlp>,
    iou_head: Mlp,
    num_mask_tokens: usize,
    embed_dim: usize,
    /// Host copy of the weights for the CPU kernels (CPU models only).
    host: Option<Arc<HostDecoder>>,
}

impl MaskDecoder {
    /// Load from weights under `mask_decoder.`.
    pub(crate) fn load(cfg: &SamConfig, w: &Weights) -> Result<Self> {
        let d = cfg.embed_dim;
        let n = cfg.nb_mask_tokens();
        let iou_token = w.get("iou_token.weight", &[1, d])?;
        let mask_tokens = w.get("mask_tokens.weight", &[n, d])?;
        let hypernetworks = (0..n)
            .map(|i| {
                Mlp::load(
                    &w.pp(format!("output_hypernetworks_mlps.{i}")),
                    d,
                    d,
                    d / 8,
                    3,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let mut dec = Self {
            transformer: TwoWayTransformer::load(&w.pp("transformer"), cfg)?,
            output_tokens: Tensor::cat(&[&iou_token, &mask_tokens], 0)?,
            upscale1: ConvTranspose2x2::load(&w.pp("output_upscaling.0"), d, d / 4)?,
            upscale_norm: LayerNorm::load(&w.pp("output_upscaling.1"), d / 4, NORM2D_EPS)?,
            upscale2: ConvTranspose2x2::load(&w.pp("output_upscaling.3"), d / 4, d / 8)?,
            hypernetworks,
            iou_head: Mlp::load(
                &w.pp("iou_prediction_head"),
                d,
                cfg.decoder_iou_hidden_dim,
                n,
                cfg.decoder_iou_head_depth,
            )?,
            num_mask_tokens: n,
            embed_dim: d,
            host: None,
        };
        if w.device().is_cpu() {
            dec.host = Some(Arc::new(dec.build_host()?));
        }
        Ok(dec)
    }

    fn build_host(&self) -> Result<HostDecoder> {
        let (up1_w, up1_b) = self.upscale1.host_subpixel_major()?;
        let (up2_w, up2_b) = self.upscale2.host_subpixel_major()?;
        let (c1, c2) = (self.upscale1.out_channels(), self.upscale2.out_channels());
        let d = self.embed_dim;
        let up1_w = PackedB::new(&up1_w, d, 4 * c1, 4 * c1, 1);
        let (layers, final_attn, norm_final) = self.transformer.host()?;

        let host_mlp =
            |m: &Mlp| -> Result<Vec<_>> { m.layers().iter().map(|l| l.host()).collect() };
        Ok(HostDecoder {
            dim: self.embed_dim,
            output_tokens: crate::kernels::to_vec(&self.output_tokens)?,
            n_masks: self.num_mask_tokens,
            layers,
            final_attn,
            norm_final,
            up1_w,
            up1_b,
            up_norm: self.upscale_norm.host(),
            up2_w,
            up2_b,
            c1,
            c2,
            hyper: self
                .hypernetworks
                .iter()
                .map(host_mlp)
                .collect::<Result<Vec<_>>>()?,
            iou_head: host_mlp(&self.iou_head)?,
            pool: Default::default(),
        })
    }

    /// Predict masks for B prompt sets.
    ///
    /// * `image_embeddings`: (1 or B, D, gh, gw) — a single embedding is shared by all prompt sets;
    /// * `image_pe`: (gh, gw, D) dense positional encoding, channels last;
    /// * `sparse`: (B, T, D); `dense`: (B, gh, gw, D), channels last.
    ///
    /// Returns low-resolution mask logits (B, K, 4gh, 4gw) and IoU predictions (B, K), with K = the number of
    /// multimask outputs (tokens 1..) when `multimask_output`, else 1 (token 0).
    pub fn forward(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        multimask_output: bool,
        cache: Option<&DecoderCache>,
    ) -> Result<(Tensor, Tensor)> {
        if self.host.is_some() && image_embeddings.device().is_cpu() {
            let tokens: Vec<usize> = if multimask_output {
                (1..self.num_mask_tokens).collect()
            } else {
                vec![0]
            };
            let layer0 = cache.and_then(DecoderCache::layer0);
            return self.forward_host(image_embeddings, image_pe, sparse, dense, &tokens, layer0);
        }
        self.forward_generic(image_embeddings, image_pe, sparse, dense, multimask_output)
    }

    /// [`MaskDecoder::forward`] with plain candle operations on any device (the reference for the CPU kernels).
    #[doc(hidden)]
    pub fn forward_generic(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        multimask_output: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (masks, iou) = self.predict_masks_generic(image_embeddings, image_pe, sparse, dense)?;
        let (start, len) = if multimask_output {
            (1, self.num_mask_tokens - 1)
        } else {
            (0, 1)
        };
        Ok((
            masks.narrow(1, start, len)?.contiguous()?,
            iou.narrow(1, start, len)?.contiguous()?,
        ))
    }

    /// All mask tokens: (B, num_mask_tokens, 4gh, 4gw) logits and (B, num_mask_tokens) IoU predictions.
    pub fn predict_masks(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        if self.host.is_some() && image_embeddings.device().is_cpu() {
            let tokens: Vec<usize> = (0..self.num_mask_tokens).collect();
            return self.forward_host(image_embeddings, image_pe, sparse, dense, &tokens, None);
        }
        self.predict_masks_generic(image_embeddings, image_pe, sparse, dense)
    }

    /// Check the input shapes; returns (B, E, gh, gw).
    fn check_inputs(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
    ) -> Result<(usize, usize, usize, usize)> {
        let d = self.embed_dim;
        let (b, _, sd) = sparse.dims3()?;
        let (eb, ed, gh, gw) = image_embeddings.dims4()?;
        if ed != d || (eb != 1 && eb != b) {
            return Err(Error::arg(
                "image_embeddings",
                format!(
                    "expected (1 or {b}, {d}, H, W), got {:?}",
                    image_embeddings.dims()
                ),
            ));
        }
        if sd != d {
            return Err(Error::arg(
                "sparse",
                format!("expected ({b}, T, {d}), got {:?}", sparse.dims()),
            ));
        }
        if dense.dims() != [b, gh, gw, d] {
            return Err(Error::arg(
                "dense",
                format!("expected ({b}, {gh}, {gw}, {d}), got {:?}", dense.dims()),
            ));
        }
        if image_pe.dims() != [gh, gw, d] && image_pe.dims() != [1, gh, gw, d] {
            return Err(Error::arg(
                "image_pe",
                format!("expected ({gh}, {gw}, {d}), got {:?}", image_pe.dims()),
            ));
        }
        Ok((b, eb, gh, gw))
    }

    /// The CPU kernels: logits (B, K, 4gh, 4gw) and IoU predictions (B, K) for the mask tokens `tokens`.
    fn forward_host(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        tokens: &[usize],
        layer0: Option<&Layer0>,
    ) -> Result<(Tensor, Tensor)> {
        let Some(host) = self.host.as_ref() else {
            return Err(Error::arg(
                "mask_decoder",
                "no host weights for the CPU path",
            ));
        };
        let (b, _, gh, gw) = self.check_inputs(image_embeddings, image_pe, sparse, dense)?;
        let out = self.with_host_inputs(image_embeddings, image_pe, sparse, dense, |inputs| {
            host.forward(inputs, tokens, layer0)
        })?;
        let k = tokens.len();
        let device = image_embeddings.device();
        Ok((
            Tensor::from_vec(out.masks, (b, k, 4 * gh, 4 * gw), device)?,
            Tensor::from_vec(out.iou, (b, k), device)?,
        ))
    }

    /// Compute what later decodes of this embedding can reuse (the prompt-independent image side of the first
    /// two-way layer, for prompts without a mask).
    ///
    /// * `image_embeddings`: (1, D, gh, gw); `image_pe`: (gh, gw, D); `dense`: (1, gh, gw, D), the no-mask
    ///   dense embedding (a broadcast vector).
    ///
    /// Empty on devices other than the CPU and for candle variables. Decodes use it only with the same
    /// `image_embeddings` and `image_pe` tensors and the same dense vector.
    pub(crate) fn prepare(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        dense: &Tensor,
    ) -> Result<DecoderCache> {
        let Some(host) = self.host.as_ref() else {
            return Ok(DecoderCache::default());
        };
        if !image_embeddings.device().is_cpu() {
            return Ok(DecoderCache::default());
        }
        let sparse = Tensor::zeros(
            (1, 0, self.embed_dim),
            DType::F32,
            image_embeddings.device(),
        )?;
        self.check_inputs(image_embeddings, image_pe, &sparse, dense)?;
        let layer0 =
            self.with_host_inputs(image_embeddings, image_pe, &sparse, dense, |inputs| {
                host.prepare(inputs)
            })?;
        Ok(DecoderCache {
            layer0: layer0.map(Arc::new),
        })
    }

    /// Host views of checked decoder inputs, passed to `f`.
    fn with_host_inputs<R>(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
        f: impl FnOnce(&DecoderInputs<'_>) -> R,
    ) -> Result<R> {
        let d = self.embed_dim;
        let (b, eb, gh, gw) = self.check_inputs(image_embeddings, image_pe, sparse, dense)?;
        let emb = image_embeddings.to_dtype(DType::F32)?.contiguous()?;
        let pe = image_pe.to_dtype(DType::F32)?.contiguous()?;
        let sparse = sparse.to_dtype(DType::F32)?.contiguous()?;
        let dense = dense.to_dtype(DType::F32)?;
        let st = dense.stride().to_vec();
        let uniform = st[1] == 0 && st[2] == 0;
        let dense_vec = if uniform {
            if st[0] == 0 || b == 1 {
                crate::kernels::to_vec(&dense.i((0, 0, 0))?)?
            } else {
                crate::kernels::to_vec(&dense.i((.., 0, 0))?)?
            }
        } else {
            Vec::new()
        };
        let dense_full = if uniform {
            None
        } else {
            Some(dense.contiguous()?)
        };
        let dense_read = dense_full.as_ref().map(F32Read::new).transpose()?;
        let dense_kind = match &dense_read {
            Some(r) => Dense::Full(r.as_slice()),
            None if dense_vec.len() == d => Dense::Shared(&dense_vec),
            None => Dense::PerSet(&dense_vec),
        };
        // One embedding and one dense vector for all sets: the first layer's image side can be reused. Variables
        // can change in place, so they are never cached.
        let layer0_key = (eb == 1
            && dense_vec.len() == d
            && !image_embeddings.is_variable()
            && !image_pe.is_variable())
        .then(|| Layer0Key {
            embedding: image_embeddings.id(),
            pe: image_pe.id(),
            dense: dense_vec.iter().map(|v| v.to_bits()).collect(),
            grid: (gh, gw),
        });
        let emb_r = F32Read::new(&emb)?;
        let pe_r = F32Read::new(&pe)?;
        let sparse_r = F32Read::new(&sparse)?;
        let inputs = DecoderInputs {
            embeddings: emb_r.as_slice(),
            n_embeddings: eb,
            grid: (gh, gw),
            pe: pe_r.as_slice(),
            sparse: sparse_r.as_slice(),
            batch: b,
            n_sparse: sparse.dim(1)?,
            dense: dense_kind,
            layer0_key,
        };
        Ok(f(&inputs))
    }

    /// [`MaskDecoder::predict_masks`] with plain candle operations.
    #[doc(hidden)]
    pub fn predict_masks_generic(
        &self,
        image_embeddings: &Tensor,
        image_pe: &Tensor,
        sparse: &Tensor,
        dense: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let d = self.embed_dim;
        let (b, _, gh, gw) = self.check_inputs(image_embeddings, image_pe, sparse, dense)?;
        let n_out = 1 + self.num_mask_tokens;
        let out_tokens = self
            .output_tokens
            .unsqueeze(0)?
            .broadcast_as((b, n_out, d))?;
        let tokens = Tensor::cat(&[&out_tokens, sparse], 1)?.contiguous()?;

        let src = image_embeddings
            .permute((0, 2, 3, 1))?
            .broadcast_add(dense)?
            .reshape((b, gh * gw, d))?;
        let pos = image_pe.reshape((1, gh * gw, d))?;
        let (hs, src) = self.transformer.forward(&src, &pos, &tokens)?;
        let iou_token_out = hs.narrow(1, 0, 1)?.squeeze(1)?;

        let src = src.reshape((b, gh, gw, d))?;
        let up = self.upscale1.forward(&src)?;
        let up = self.upscale_norm.forward(&up)?.gelu_erf()?;
        let up = self.upscale2.forward(&up)?.gelu_erf()?; // (B, 4gh, 4gw, D/8)
        let (mh, mw) = (4 * gh, 4 * gw);

        let hyper = (0..self.num_mask_tokens)
            .map(|i| self.hypernetworks[i].forward(&hs.narrow(1, 1 + i, 1)?))
            .collect::<Result<Vec<_>>>()?;
        let hyper = Tensor::cat(&hyper, 1)?; // (B, n, D/8)
        let up = up.reshape((b, mh * mw, d / 8))?;
        let masks = hyper
            .matmul(&up.t()?)?
            .reshape((b, self.num_mask_tokens, mh, mw))?;
        let iou = self.iou_head.forward(&iou_token_out)?;
        Ok((masks, iou))
    }
}
