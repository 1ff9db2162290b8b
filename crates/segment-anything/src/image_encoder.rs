//! The ViT image encoder (ViTDet-style): patch embedding, absolute position embedding, windowed and global
//! attention blocks with decomposed relative positions, and the convolutional neck.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::config::SamConfig;
use crate::error::{Error, Result};
use crate::kernels::encoder::BlockWeights;
use crate::kernels::F32Read;
use crate::layers::{LayerNorm, Linear, MlpBlock, PatchConv};
use crate::resize::interpolate_bilinear;
use crate::weights::Weights;

/// Epsilon of the neck's LayerNorm2d (fixed in the official code).
const NECK_NORM_EPS: f64 = 1e-6;

/// Resize a stack of planes (P, H, W) stored in a tensor with bilinear interpolation (half-pixel, no antialias).
fn resize_planes(planes: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (p, h, w) = planes.dims3()?;
    if (h, w) == (out_h, out_w) {
        return Ok(planes.clone());
    }
    let data = planes.flatten_all()?.to_vec1::<f32>()?;
    let out = interpolate_bilinear(&data, p, h, w, out_h, out_w)?;
    Ok(Tensor::from_vec(out, (p, out_h, out_w), planes.device())?)
}

/// Resize an absolute position embedding (1, H, W, C) to (1, gh, gw, C), bilinear as `F.interpolate`.
fn resize_pos_embed(pos: &Tensor, gh: usize, gw: usize) -> Result<Tensor> {
    let (_, h, w, c) = pos.dims4()?;
    if (h, w) == (gh, gw) {
        return Ok(pos.clone());
    }
    let planes = pos.reshape((h, w, c))?.permute((2, 0, 1))?.contiguous()?;
    let resized = resize_planes(&planes, gh, gw)?;
    Ok(resized
        .permute((1, 2, 0))?
        .contiguous()?
        .reshape((1, gh, gw, c))?)
}

/// The official `get_rel_pos`: relative position embeddings (q_size, k_size, head_dim), with 1-D linear
/// interpolation of `rel_pos` (L, head_dim) when L ≠ 2·max(q, k) − 1.
pub fn get_rel_pos(q_size: usize, k_size: usize, rel_pos: &Tensor) -> Result<Tensor> {
    let max_rel_dist = 2 * q_size.max(k_size) - 1;
    let (len, hd) = rel_pos.dims2()?;
    let rel_pos = if len != max_rel_dist {
        let planes = rel_pos.t()?.contiguous()?.reshape((hd, 1, len))?;
        resize_planes(&planes, 1, max_rel_dist)?
            .reshape((hd, max_rel_dist))?
            .t()?
            .contiguous()?
    } else {
        rel_pos.clone()
    };
    // Same float32 arithmetic as the official code (exact integers when q_size == k_size).
    let q_scale = (k_size as f32 / q_size as f32).max(1.0);
    let k_scale = (q_size as f32 / k_size as f32).max(1.0);
    let mut idx = Vec::with_capacity(q_size * k_size);
    for i in 0..q_size {
        for j in 0..k_size {
            let rel = (i as f32 * q_scale - j as f32 * k_scale) + (k_size as f32 - 1.0) * k_scale;
            idx.push(rel as u32);
        }
    }
    let idx = Tensor::from_vec(idx, q_size * k_size, rel_pos.device())?;
    Ok(rel_pos
        .index_select(&idx, 0)?
        .reshape((q_size, k_size, hd))?)
}

/// The relative position table for a grid of `size` tokens, (2·size − 1, head_dim), interpolated like
/// [`get_rel_pos`] when `rel_pos` has another length: row `i − j + size − 1` holds the embedding of offset i − j.
pub fn rel_pos_table(size: usize, rel_pos: &Tensor) -> Result<Vec<f32>> {
    let max_rel_dist = 2 * size - 1;
    let (len, hd) = rel_pos.dims2()?;
    let table = if len != max_rel_dist {
        let planes = rel_pos.t()?.contiguous()?.reshape((hd, 1, len))?;
        resize_planes(&planes, 1, max_rel_dist)?
            .reshape((hd, max_rel_dist))?
            .t()?
            .contiguous()?
    } else {
        rel_pos.clone()
    };
    crate::kernels::to_vec(&table)
}

/// Multi-head attention with decomposed relative position terms.
#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    proj: Linear,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    num_heads: usize,
    scale: f64,
}

impl Attention {
    fn load(
        w: &Weights,
        dim: usize,
        num_heads: usize,
        qkv_bias: bool,
        rel_size: (usize, usize),
    ) -> Result<Self> {
        let hd = dim / num_heads;
        let accept_rel = |s: &[usize]| s.len() == 2 && s[1] == hd && s[0] >= 1;
        Ok(Self {
            qkv: Linear::load(&w.pp("qkv"), dim, 3 * dim, qkv_bias)?,
            proj: Linear::load(&w.pp("proj"), dim, dim, true)?,
            rel_pos_h: w.get_with("rel_pos_h", &[2 * rel_size.0 - 1, hd], accept_rel)?,
            rel_pos_w: w.get_with("rel_pos_w", &[2 * rel_size.1 - 1, hd], accept_rel)?,
            num_heads,
            scale: (hd as f64).powf(-0.5),
        })
    }

    /// `x` (B, H, W, C) → (B, H, W, C).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let nh = self.num_heads;
        let hd = c / nh;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, h * w, 3, nh, hd))?
            .permute([2, 0, 3, 1, 4])?
            .contiguous()?
            .reshape((3, b * nh, h * w, hd))?;
        let q = qkv.get(0)?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        let attn = (&q * self.scale)?.matmul(&k.t()?)?; // (BH, hw, hw)

        // Decomposed relative positions, computed with the unscaled q.
        let rh = get_rel_pos(h, h, &self.rel_pos_h)?; // (h, kh, hd)
        let rw = get_rel_pos(w, w, &self.rel_pos_w)?; // (w, kw, hd)
        let bh = b * nh;
        let r_q = q.reshape((bh, h, w, hd))?;
        // rel_h[b, y, x, ky] = Σ_c r_q[b, y, x, c] · rh[y, ky, c]
        let rel_h = r_q
            .permute((1, 0, 2, 3))?
            .contiguous()?
            .reshape((h, bh * w, hd))?
            .matmul(&rh.permute((0, 2, 1))?.contiguous()?)? // (h, bh*w, kh)
            .reshape((h, bh, w, h))?
            .permute((1, 0, 2, 3))?; // (bh, h, w, kh)
                                     // rel_w[b, y, x, kx] = Σ_c r_q[b, y, x, c] · rw[x, kx, c]
        let rel_w = r_q
            .permute((2, 0, 1, 3))?
            .contiguous()?
            .reshape((w, bh * h, hd))?
            .matmul(&rw.permute((0, 2, 1))?.contiguous()?)? // (w, bh*h, kw)
            .reshape((w, bh, h, w))?
            .permute((1, 2, 0, 3))?; // (bh, h, w, kw)
        let attn = attn
            .reshape((bh, h, w, h, w))?
            .broadcast_add(&rel_h.unsqueeze(4)?)?
            .broadcast_add(&rel_w.unsqueeze(3)?)?
            .reshape((bh, h * w, h * w))?;
        let attn = candle_nn::ops::softmax_last_dim(&attn)?;
        let out = attn
            .matmul(&v)?
            .reshape((b, nh, h, w, hd))?
            .permute([0, 2, 3, 1, 4])?
            .contiguous()?
            .reshape((b, h, w, c))?;
        self.proj.forward(&out)
    }
}

/// Pad (B, H, W, C) with zeros to multiples of `ws` and split into windows (B·nH·nW, ws, ws, C).
pub fn window_partition(x: &Tensor, ws: usize) -> Result<(Tensor, (usize, usize))> {
    let (b, h, w, c) = x.dims4()?;
    let pad_h = (ws - h % ws) % ws;
    let pad_w = (ws - w % ws) % ws;
    let mut x = x.clone();
    if pad_h > 0 {
        x = x.pad_with_zeros(1, 0, pad_h)?;
    }
    if pad_w > 0 {
        x = x.pad_with_zeros(2, 0, pad_w)?;
    }
    let (hp, wp) = (h + pad_h, w + pad_w);
    let windows = x
        .reshape((b, hp / ws, ws, wp / ws, ws, c))?
        .permute([0, 1, 3, 2, 4, 5])?
        .contiguous()?
        .reshape((b * (hp / ws) * (wp / ws), ws, ws, c))?;
    Ok((windows, (hp, wp)))
}

/// Inverse of [`window_partition`]: (B·nH·nW, ws, ws, C) → (B, H, W, C), dropping the padding.
pub fn window_unpartition(
    windows: &Tensor,
    ws: usize,
    padded: (usize, usize),
    hw: (usize, usize),
) -> Result<Tensor> {
    let (hp, wp) = padded;
    let (h, w) = hw;
    let (nw, _, _, c) = windows.dims4()?;
    let b = nw / ((hp / ws) * (wp / ws));
    let mut x = windows
        .reshape((b, hp / ws, wp / ws, ws, ws, c))?
        .permute([0, 1, 3, 2, 4, 5])?
        .contiguous()?
        .reshape((b, hp, wp, c))?;
    if hp > h || wp > w {
        x = x.narrow(1, 0, h)?.narrow(2, 0, w)?.contiguous()?;
    }
    Ok(x)
}

#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: MlpBlock,
    window_size: usize,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, h, w, _) = x.dims4()?;
        let shortcut = x;
        let y = self.norm1.forward(x)?;
        let y = if self.window_size > 0 {
            let (win, padded) = window_partition(&y, self.window_size)?;
            let out = self.attn.forward(&win)?;
            window_unpartition(&out, self.window_size, padded, (h, w))?
        } else {
            self.attn.forward(&y)?
        };
        let x = (shortcut + y)?;
        let m = self.mlp.forward(&self.norm2.forward(&x)?)?;
        Ok((x + m)?)
    }
}

/// The SAM image encoder. Input NCHW (B, in_channels, H, W), preprocessed; output (B, embed_dim, H/16, W/16).
#[derive(Debug, Clone)]
pub struct ImageEncoder {
    /// The neck's 3×3 conv as a host matrix (9·out, out), rows ordered (ky, kx, in) (CPU models only).
    neck_conv2_host: Option<Arc<Vec<f32>>>,
    patch_embed: PatchConv,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    neck_conv1: Linear,
    neck_norm1: LayerNorm,
    neck_conv2: Tensor,
    neck_norm2: LayerNorm,
    patch_size: usize,
    in_channels: usize,
    fixed_input_size: bool,
    grid: [usize; 2],
}

/// Adapt 3-channel patch-embedding weights (out, 3, p, p) to `in_channels` input channels:
/// 1 channel sums over the RGB weights; more repeat them cyclically and rescale by 3/in_channels.
pub fn adapt_input_conv(weight: &Tensor, in_channels: usize) -> Result<Tensor> {
    let cin = weight.dim(1)?;
    if cin == in_channels {
        return Ok(weight.clone());
    }
    if cin != 3 {
        return Err(Error::Config(format!(
            "cannot adapt a patch embedding with {cin} input channels to {in_channels}"
        )));
    }
    if in_channels == 1 {
        return Ok(weight.sum_keepdim(1)?);
    }
    let repeat = in_channels.div_ceil(3);
    let w = weight
        .repeat((1, repeat, 1, 1))?
        .narrow(1, 0, in_channels)?;
    Ok((w * (3.0 / in_channels as f64))?.contiguous()?)
}

impl ImageEncoder {
    /// Load from weights under `image_encoder.`.
    pub fn load(cfg: &SamConfig, w: &Weights) -> Result<Self> {
        let dim = cfg.encoder_embed_dim;
        let p = cfg.encoder_patch_size;
        let grid = cfg.grid_size();
        let eps = cfg.encoder_norm_eps()?;
        let in_ch = cfg.in_channels;

        let pw = w.pp("patch_embed.proj");
        let weight = pw.get_with("weight", &[dim, in_ch, p, p], |s| {
            s.len() == 4 && s[0] == dim && s[2] == p && s[3] == p && (s[1] == in_ch || s[1] == 3)
        })?;
        let weight = adapt_input_conv(&weight, in_ch)?;
        let patch_embed = PatchConv::from_weights(&weight, Some(pw.get("bias", &[dim])?))?;

        let pos_embed = w.get_with("pos_embed", &[1, grid[0], grid[1], dim], |s| {
            s.len() == 4 && s[0] == 1 && s[3] == dim && s[1] > 0 && s[2] > 0
        })?;
        let pos_embed = if cfg.fixed_input_size {
            resize_pos_embed(&pos_embed, grid[0], grid[1])?
        } else {
            pos_embed
        };

        let mut blocks = Vec::with_capacity(cfg.encoder_nb_blocks);
        for i in 0..cfg.encoder_nb_blocks {
            let bw = w.pp(format!("blocks.{i}"));
            let global = cfg.is_global_block(i);
            let ws = if global { 0 } else { cfg.encoder_window_size };
            let rel_size = if global { (grid[0], grid[1]) } else { (ws, ws) };
            blocks.push(Block {
                norm1: LayerNorm::load(&bw.pp("norm1"), dim, eps)?,
                attn: Attention::load(
                    &bw.pp("attn"),
                    dim,
                    cfg.encoder_nb_heads,
                    cfg.encoder_qkv_bias,
                    rel_size,
                )?,
                norm2: LayerNorm::load(&bw.pp("norm2"), dim, eps)?,
                mlp: MlpBlock::load(&bw.pp("mlp"), dim, cfg.encoder_mlp_dim(), false)?,
                window_size: ws,
            });
        }
        let out = cfg.embed_dim;
        let neck_w1 = w
            .get("neck.0.weight", &[out, dim, 1, 1])?
            .reshape((out, dim))?;
        let neck_conv2 = w.get("neck.2.weight", &[out, out, 3, 3])?;
        let neck_conv2_host = if w.device().is_cpu() {
            let v = crate::kernels::to_vec(&neck_conv2)?;
            let mut m = vec![0f32; 9 * out * out];
            for o in 0..out {
                for i in 0..out {
                    for k in 0..9 {
                        m[(k * out + i) * out + o] = v[(o * out + i) * 9 + k];
                    }
                }
            }
            Some(Arc::new(m))
        } else {
            None
        };
        Ok(Self {
            neck_conv2_host,
            patch_embed,
            pos_embed,
            blocks,
            neck_conv1: Linear::from_weights(neck_w1, None)?,
            neck_norm1: LayerNorm::load(&w.pp("neck.1"), out, NECK_NORM_EPS)?,
            neck_conv2,
            neck_norm2: LayerNorm::load(&w.pp("neck.3"), out, NECK_NORM_EPS)?,
            patch_size: p,
            in_channels: in_ch,
            fixed_input_size: cfg.fixed_input_size,
            grid,
        })
    }

    /// Device of the weights.
    pub fn device(&self) -> &Device {
        self.pos_embed.device()
    }

    /// Encode preprocessed images NCHW (B, in_channels, H, W) → embeddings (B, embed_dim, H/16, W/16).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.neck_conv2_host.is_some() && x.device().is_cpu() {
            self.check_input(x)?;
            return self.forward_host(x);
        }
        self.forward_generic(x)
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let (_, c, h, w) = x.dims4()?;
        let p = self.patch_size;
        if c != self.in_channels {
            return Err(Error::arg(
                "images",
                format!("expected {} channels, got {c}", self.in_channels),
            ));
        }
        if h == 0 || w == 0 || h % p != 0 || w % p != 0 {
            return Err(Error::arg(
                "images",
                format!("size {h}×{w} is not a non-zero multiple of the patch size {p}"),
            ));
        }
        let (gh, gw) = (h / p, w / p);
        if self.fixed_input_size && [gh, gw] != self.grid {
            return Err(Error::arg(
                "images",
                format!(
                    "size {h}×{w} differs from the model input size {}×{} (fixed_input_size = true)",
                    self.grid[0] * p,
                    self.grid[1] * p
                ),
            ));
        }
        Ok(())
    }

    /// The CPU kernels (see [`crate::kernels::encoder`]).
    fn forward_host(&self, x: &Tensor) -> Result<Tensor> {
        let (b, cin, h, w) = x.dims4()?;
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let n = gh * gw;
        let c = self.pos_embed.dim(3)?;
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let xr = F32Read::new(&x)?;
        let pos = resize_pos_embed(&self.pos_embed, gh, gw)?.contiguous()?;
        let pos_r = F32Read::new(&pos)?;
        let pe_w = F32Read::new(self.patch_embed.weight_t())?;
        let pe_b = self.patch_embed.bias().map(F32Read::new).transpose()?;
        // Weights of every block, borrowed for the whole call.
        struct Guards<'a> {
            qkv_w: F32Read<'a>,
            qkv_b: Option<F32Read<'a>>,
            proj_w: F32Read<'a>,
            proj_b: F32Read<'a>,
            mlp1_w: F32Read<'a>,
            mlp1_b: F32Read<'a>,
            mlp2_w: F32Read<'a>,
            mlp2_b: F32Read<'a>,
        }
        fn bias(l: &Linear) -> Result<F32Read<'_>> {
            F32Read::new(
                l.bias()
                    .ok_or_else(|| Error::arg("encoder", "missing bias"))?,
            )
        }
        let guards = self
            .blocks
            .iter()
            .map(|blk| {
                Ok(Guards {
                    qkv_w: F32Read::new(blk.attn.qkv.weight_t())?,
                    qkv_b: blk.attn.qkv.bias().map(F32Read::new).transpose()?,
                    proj_w: F32Read::new(blk.attn.proj.weight_t())?,
                    proj_b: bias(&blk.attn.proj)?,
                    mlp1_w: F32Read::new(blk.mlp.lin1().weight_t())?,
                    mlp1_b: bias(blk.mlp.lin1())?,
                    mlp2_w: F32Read::new(blk.mlp.lin2().weight_t())?,
                    mlp2_b: bias(blk.mlp.lin2())?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norms: Vec<_> = self
            .blocks
            .iter()
            .map(|blk| (blk.norm1.host(), blk.norm2.host()))
            .collect();
        let weights = self
            .blocks
            .iter()
            .zip(&guards)
            .zip(&norms)
            .map(|((blk, g), (n1, n2))| {
                let (sh, sw) = if blk.window_size > 0 {
                    (blk.window_size, blk.window_size)
                } else {
                    (gh, gw)
                };
                Ok(BlockWeights {
                    norm1: (&n1.w, &n1.b),
                    norm2: (&n2.w, &n2.b),
                    eps: n1.eps,
                    qkv_w: g.qkv_w.as_slice(),
                    qkv_b: g.qkv_b.as_ref().map(|b| b.as_slice()),
                    proj_w: g.proj_w.as_slice(),
                    proj_b: g.proj_b.as_slice(),
                    mlp1_w: g.mlp1_w.as_slice(),
                    mlp1_b: g.mlp1_b.as_slice(),
                    mlp2_w: g.mlp2_w.as_slice(),
                    mlp2_b: g.mlp2_b.as_slice(),
                    rel_h: rel_pos_table(sh, &blk.attn.rel_pos_h)?,
                    rel_w: rel_pos_table(sw, &blk.attn.rel_pos_w)?,
                    heads: blk.attn.num_heads,
                    window: blk.window_size,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let neck1 = F32Read::new(self.neck_conv1.weight_t())?;
        let (nn1, nn2) = (self.neck_norm1.host(), self.neck_norm2.host());
        let conv2 = self.neck_conv2_host.as_ref().expect("host neck weights");
        let out_c = nn1.w.len();
        let img_len = cin * h * w;
        let mut out = Vec::with_capacity(b * out_c * n);
        for bi in 0..b {
            let img = &xr.as_slice()[bi * img_len..(bi + 1) * img_len];
            let mut tokens = crate::kernels::encoder::patch_embed(
                img,
                (cin, h, w),
                p,
                pe_w.as_slice(),
                pe_b.as_ref().map(|r| r.as_slice()),
                pos_r.as_slice(),
                c,
            );
            crate::kernels::encoder::run_blocks(&mut tokens, (gh, gw), c, &weights);
            out.extend(crate::kernels::encoder::neck(
                &tokens,
                (gh, gw),
                c,
                neck1.as_slice(),
                (&nn1.w, &nn1.b),
                conv2,
                (&nn2.w, &nn2.b),
                nn1.eps,
            ));
        }
        Ok(Tensor::from_vec(out, (b, out_c, gh, gw), x.device())?)
    }

    /// [`ImageEncoder::forward`] with plain candle operations on any device (the reference for the CPU kernels).
    #[doc(hidden)]
    pub fn forward_generic(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let (_, _, h, w) = x.dims4()?;
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let mut x = self.patch_embed.forward_nchw(x)?; // (B, gh, gw, C)
        let pos = resize_pos_embed(&self.pos_embed, gh, gw)?;
        x = x.broadcast_add(&pos)?;
        for blk in &self.blocks {
            x = blk.forward(&x)?;
        }
        let x = self.neck_norm1.forward(&self.neck_conv1.forward(&x)?)?;
        let x = x.permute((0, 3, 1, 2))?.contiguous()?;
        let x = x.conv2d(&self.neck_conv2, 1, 1, 1, 1)?;
        let x = x.permute((0, 2, 3, 1))?.contiguous()?;
        let x = self.neck_norm2.forward(&x)?;
        Ok(x.permute((0, 3, 1, 2))?.contiguous()?)
    }
}
