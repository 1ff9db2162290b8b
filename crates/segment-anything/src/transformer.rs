//! The two-way transformer of the mask decoder (the official `segment_anything/modeling/transformer.py`):
//! [`TwoWayTransformer`] runs `depth` [`TwoWayAttentionBlock`]s, each a self-attention over the prompt tokens, a
//! token-to-image cross-attention, an MLP on the tokens ([`MlpBlock`], the official `MLPBlock` of `common.py`) and
//! an image-to-token cross-attention, then a final token-to-image [`Attention`]. The cross-attentions downsample
//! their internal dimension by 2, as the official `attention_downsample_rate`.
//!
//! These are the plain candle operations (any device, and the reference for the CPU kernels); on the CPU the mask
//! decoder runs the same layers through [`crate::kernels::decoder`], from host copies made by the `host` methods.

use candle_core::Tensor;

use crate::config::SamConfig;
use crate::error::Result;
use crate::kernels::decoder::{HostAttention, HostNorm, HostTwoWayBlock};
use crate::layers::{LayerNorm, Linear, MlpBlock};
use crate::weights::Weights;

/// Decoder LayerNorm epsilon (PyTorch default).
const DECODER_NORM_EPS: f64 = 1e-5;

/// Attention with an optional down-projection of the internal dimension (the official `Attention`).
#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
}

impl Attention {
    /// Load `q_proj`, `k_proj`, `v_proj` (dim → dim / downsample) and `out_proj` (back to dim).
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

    /// Host copy of the weights for the CPU kernels.
    fn host(&self) -> Result<HostAttention> {
        Ok(HostAttention {
            q: self.q_proj.host()?,
            k: self.k_proj.host()?,
            v: self.v_proj.host()?,
            o: self.out_proj.host()?,
            heads: self.num_heads,
        })
    }

    /// (B, N, C) → (B, heads, N, C / heads).
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

/// One layer of the two-way transformer (the official `TwoWayAttentionBlock`): self-attention of the tokens,
/// token-to-image cross-attention, MLP on the tokens, image-to-token cross-attention, each followed by a LayerNorm.
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
    /// Load one layer; the first layer skips the positional encoding in its self-attention
    /// (`skip_first_layer_pe`).
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

    /// Host copy of the weights for the CPU kernels.
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

    /// queries (B, T, D), keys (B, HW, D), query_pe (B, T, D), key_pe (1, HW, D) → updated (queries, keys).
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

/// The official `TwoWayTransformer`: the decoder's transformer between the prompt tokens (queries) and the image
/// embedding (keys).
#[derive(Debug, Clone)]
pub(crate) struct TwoWayTransformer {
    layers: Vec<TwoWayAttentionBlock>,
    final_attn_token_to_image: Attention,
    norm_final_attn: LayerNorm,
}

impl TwoWayTransformer {
    /// Load from weights under `mask_decoder.transformer.`.
    pub(crate) fn load(w: &Weights, cfg: &SamConfig) -> Result<Self> {
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

    /// Host copies of the weights for the CPU kernels: the two-way layers, the final token-to-image attention and
    /// the final norm.
    pub(crate) fn host(&self) -> Result<(Vec<HostTwoWayBlock>, HostAttention, HostNorm)> {
        Ok((
            self.layers
                .iter()
                .map(|l| l.host())
                .collect::<Result<Vec<_>>>()?,
            self.final_attn_token_to_image.host()?,
            self.norm_final_attn.host(),
        ))
    }

    /// image (B, HW, D), image_pe (1, HW, D), tokens (B, T, D) → (queries (B, T, D), keys (B, HW, D)).
    pub(crate) fn forward(
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
