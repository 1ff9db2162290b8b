//! The mask decoder: a two-way transformer between prompt tokens and image embeddings, output upscaling,
//! hypernetwork MLPs and the IoU prediction head.

use std::sync::Arc;

use candle_core::{DType, IndexOp, Tensor};

use crate::config::SamConfig;
use crate::error::{Error, Result};
use crate::kernels::decoder::{
    DecoderInputs, Dense, HostAttention, HostDecoder, HostTwoWayBlock, Layer0, Layer0Key,
};
use crate::kernels::direct::PackedB;
use crate::kernels::F32Read;
use crate::layers::{ConvTranspose2x2, LayerNorm, Linear, Mlp, MlpBlock};
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

/// Decoder LayerNorm epsilon (PyTorch default).
const DECODER_NORM_EPS: f64 = 1e-5;
/// Upscaling LayerNorm2d epsilon.
const NORM2D_EPS: f64 = 1e-6;

/// Attention with an optional down-projection of the internal dimension.
#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
}

impl Attention {
    fn load(w: &Weights, dim: usize, num_heads: usize, downsample: usize) -> Result<Self> {
        let internal = dim / downsample;
        Ok(Self {
            q_proj: Linear::load(&w.pp("q_proj"), dim, internal, true)?,
            k_proj: Linear::load(&w.pp("k_proj"), dim, internal, true)?,
            v_proj: Linear::load(&w.pp("v_proj"), dim, internal, true)?,
            out_proj: Linear::load(&w.pp("out_proj"), internal, dim, true)?,
            num_heads,
        })
    }

    fn host(&self) -> Result<HostAttention> {
        Ok(HostAttention {
            q: self.q_proj.host()?,
            k: self.k_proj.host()?,
            v: self.v_proj.host()?,
            o: self.out_proj.host()?,
            heads: self.num_heads,
        })
    }

    fn separate_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, c) = x.dims3()?;
        Ok(x.reshape((b, n, self.num_heads, c / self.num_heads))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// q (B, Nq, D), k (B, Nk, D), v (B, Nk, D) → (B, Nq, D).
    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let q = self.separate_heads(&self.q_proj.forward(q)?)?;
        let k = self.separate_heads(&self.k_proj.forward(k)?)?;
        let v = self.separate_heads(&self.v_proj.forward(v)?)?;
        let (b, h, n, c) = q.dims4()?;
        let attn = (q.matmul(&k.t()?)? / (c as f64).sqrt())?;
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        let out = attn
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, h * c))?;
        self.out_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct TwoWayAttentionBlock {
    self_attn: Attention,
    norm1: LayerNorm,
    cross_attn_token_to_image: Attention,
    norm2: LayerNorm,
    mlp: MlpBlock,
    norm3: LayerNorm,
    norm4: LayerNorm,
    cross_attn_image_to_token: Attention,
    skip_first_layer_pe: bool,
}

impl TwoWayAttentionBlock {
    fn load(
        w: &Weights,
        dim: usize,
        heads: usize,
        mlp_dim: usize,
        skip_first_layer_pe: bool,
    ) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::load(&w.pp("self_attn"), dim, heads, 1)?,
            norm1: LayerNorm::load(&w.pp("norm1"), dim, DECODER_NORM_EPS)?,
            cross_attn_token_to_image: Attention::load(
                &w.pp("cross_attn_token_to_image"),
                dim,
                heads,
                2,
            )?,
            norm2: LayerNorm::load(&w.pp("norm2"), dim, DECODER_NORM_EPS)?,
            mlp: MlpBlock::load(&w.pp("mlp"), dim, mlp_dim, true)?,
            norm3: LayerNorm::load(&w.pp("norm3"), dim, DECODER_NORM_EPS)?,
            norm4: LayerNorm::load(&w.pp("norm4"), dim, DECODER_NORM_EPS)?,
            cross_attn_image_to_token: Attention::load(
                &w.pp("cross_attn_image_to_token"),
                dim,
                heads,
                2,
            )?,
            skip_first_layer_pe,
        })
    }

    fn host(&self) -> Result<HostTwoWayBlock> {
        Ok(HostTwoWayBlock {
            self_attn: self.self_attn.host()?,
            norm1: self.norm1.host(),
            t2i: self.cross_attn_token_to_image.host()?,
            norm2: self.norm2.host(),
            mlp1: self.mlp.lin1().host()?,
            mlp2: self.mlp.lin2().host()?,
            norm3: self.norm3.host(),
            norm4: self.norm4.host(),
            i2t: self.cross_attn_image_to_token.host()?,
            skip_first_layer_pe: self.skip_first_layer_pe,
        })
    }

    fn forward(
        &self,
        queries: &Tensor,
        keys: &Tensor,
        query_pe: &Tensor,
        key_pe: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let queries = if self.skip_first_layer_pe {
            self.self_attn.forward(queries, queries, queries)?
        } else {
            let q = (queries + query_pe)?;
            (queries + self.self_attn.forward(&q, &q, queries)?)?
        };
        let queries = self.norm1.forward(&queries)?;

        let q = (&queries + query_pe)?;
        let k = keys.broadcast_add(key_pe)?;
        let attn = self.cross_attn_token_to_image.forward(&q, &k, keys)?;
        let queries = self.norm2.forward(&(queries + attn)?)?;

        let mlp = self.mlp.forward(&queries)?;
        let queries = self.norm3.forward(&(queries + mlp)?)?;

        let q = (&queries + query_pe)?;
        let attn = self.cross_attn_image_to_token.forward(&k, &q, &queries)?;
        let keys = self.norm4.forward(&(keys + attn)?)?;
        Ok((queries, keys))
    }
}

#[derive(Debug, Clone)]
struct TwoWayTransformer {
    layers: Vec<TwoWayAttentionBlock>,
    final_attn_token_to_image: Attention,
    norm_final_attn: LayerNorm,
}

impl TwoWayTransformer {
    fn load(w: &Weights, cfg: &SamConfig) -> Result<Self> {
        let d = cfg.embed_dim;
        let layers = (0..cfg.decoder_nb_blocks)
            .map(|i| {
                TwoWayAttentionBlock::load(
                    &w.pp(format!("layers.{i}")),
                    d,
                    cfg.decoder_nb_heads,
                    cfg.decoder_mlp_channels,
                    i == 0,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            final_attn_token_to_image: Attention::load(
                &w.pp("final_attn_token_to_image"),
                d,
                cfg.decoder_nb_heads,
                2,
            )?,
            norm_final_attn: LayerNorm::load(&w.pp("norm_final_attn"), d, DECODER_NORM_EPS)?,
        })
    }

    /// image (B, HW, D), image_pe (1, HW, D), tokens (B, T, D) → (queries (B, T, D), keys (B, HW, D)).
    fn forward(
        &self,
        image: &Tensor,
        image_pe: &Tensor,
        tokens: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let mut queries = tokens.clone();
        let mut keys = image.clone();
        for layer in &self.layers {
            (queries, keys) = layer.forward(&queries, &keys, tokens, image_pe)?;
        }
        let q = (&queries + tokens)?;
        let k = keys.broadcast_add(image_pe)?;
        let attn = self.final_attn_token_to_image.forward(&q, &k, &keys)?;
        let queries = self.norm_final_attn.forward(&(queries + attn)?)?;
        Ok((queries, keys))
    }
}

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
    pub fn load(cfg: &SamConfig, w: &Weights) -> Result<Self> {
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
        let t = &self.transformer;
        let (up1_w, up1_b) = self.upscale1.host_subpixel_major()?;
        let (up2_w, up2_b) = self.upscale2.host_subpixel_major()?;
        let (c1, c2) = (self.upscale1.out_channels(), self.upscale2.out_channels());
        let d = self.embed_dim;
        let up1_w = PackedB::new(&up1_w, d, 4 * c1, 4 * c1, 1);

        let host_mlp =
            |m: &Mlp| -> Result<Vec<_>> { m.layers().iter().map(|l| l.host()).collect() };
        Ok(HostDecoder {
            dim: self.embed_dim,
            output_tokens: crate::kernels::to_vec(&self.output_tokens)?,
            n_masks: self.num_mask_tokens,
            layers: t
                .layers
                .iter()
                .map(|l| l.host())
                .collect::<Result<Vec<_>>>()?,
            final_attn: t.final_attn_token_to_image.host()?,
            norm_final: t.norm_final_attn.host(),
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
    pub fn prepare(
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
