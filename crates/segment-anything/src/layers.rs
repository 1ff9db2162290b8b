//! Building blocks shared by the encoder, prompt encoder and decoder: linear layers, LayerNorm,
//! patch convolutions (kernel = stride) and 2×2 transposed convolutions, all in channels-last layout.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::error::Result;
use crate::kernels::decoder::HostNorm;
use crate::kernels::HostLinear;
use crate::weights::Weights;

/// The transpose of a matrix, contiguous (a blocked transpose for CPU f32 tensors, much faster than a strided
/// copy for the large weights transposed at load time).
pub fn transpose_2d(m: &Tensor) -> Result<Tensor> {
    let (r, c) = m.dims2()?;
    if m.device().is_cpu() && m.dtype() == candle_core::DType::F32 && m.is_contiguous() {
        use rayon::prelude::*;
        let src = crate::kernels::F32Read::new(m)?;
        let src = src.as_slice();
        let mut dst = vec![0f32; r * c];
        // Blocks of destination rows (source columns) in parallel: the copy, and the page faults of the fresh
        // destination, are shared by all cores (this is most of a model load).
        const ROWS: usize = 64;
        dst.par_chunks_mut(ROWS * r.max(1))
            .enumerate()
            .for_each(|(bi, chunk)| {
                let j0 = bi * ROWS;
                let cols = chunk.len() / r.max(1);
                crate::kernels::math::transpose(&src[j0..], c, chunk, r, r, cols);
            });
        return Ok(Tensor::from_vec(dst, (c, r), m.device())?);
    }
    Ok(m.t()?.contiguous()?)
}

/// `y = x Wᵀ + b` over the last dimension; `x` (..., in) → (..., out).
#[derive(Debug, Clone)]
pub struct Linear {
    /// Transposed weight (in, out), contiguous, so the matmul needs no copy.
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Load `name.weight` (out, in) and, if `bias`, `name.bias` (out).
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = w.get("weight", &[out_dim, in_dim])?;
        let bias = if bias {
            Some(w.get("bias", &[out_dim])?)
        } else {
            None
        };
        Self::from_weights(weight, bias)
    }

    /// From a weight (out, in) and optional bias (out).
    pub fn from_weights(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            weight_t: transpose_2d(&weight)?,
            bias,
        })
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.weight_t.dim(1).unwrap_or(0)
    }

    /// The transposed weight (in, out).
    pub fn weight_t(&self) -> &Tensor {
        &self.weight_t
    }

    /// The bias (out), if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// A copy on host memory (for the CPU kernels).
    pub fn host(&self) -> Result<HostLinear> {
        HostLinear::from_transposed(&self.weight_t, self.bias.as_ref())
    }

    /// Apply to `x` (..., in).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let mut y = x2.matmul(&self.weight_t)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.weight_t.dim(1)?;
        Ok(y.reshape(out_dims)?)
    }
}

/// LayerNorm over the last dimension (two-pass mean/variance, like PyTorch).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    weight_cpu: Vec<f32>,
    bias_cpu: Vec<f32>,
    eps: f64,
}

impl LayerNorm {
    /// Load `weight` and `bias` of size `dim`.
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        let weight = w.get("weight", &[dim])?;
        let bias = w.get("bias", &[dim])?;
        Ok(Self {
            weight_cpu: weight.to_vec1::<f32>()?,
            bias_cpu: bias.to_vec1::<f32>()?,
            weight,
            bias,
            eps,
        })
    }

    /// A copy on host memory (for the CPU kernels).
    pub fn host(&self) -> HostNorm {
        HostNorm {
            w: self.weight_cpu.clone(),
            b: self.bias_cpu.clone(),
            eps: self.eps as f32,
        }
    }

    /// Normalise `x` (..., dim) over its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
            let op = LayerNormCpu {
                weight: &self.weight_cpu,
                bias: &self.bias_cpu,
                eps: self.eps as f32,
            };
            return Ok(x.contiguous()?.apply_op1_no_bwd(&op)?);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let y = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(y.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

struct LayerNormCpu<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    eps: f32,
}

impl CustomOp1 for LayerNormCpu<'_> {
    fn name(&self) -> &'static str {
        "sam-layer-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = match storage {
            CpuStorage::F32(s) => s,
            _ => candle_core::bail!("sam-layer-norm: f32 only"),
        };
        let (o1, o2) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("sam-layer-norm: input must be contiguous".into())
        })?;
        let src = &src[o1..o2];
        let dim = self.weight.len();
        if layout.dims().last() != Some(&dim) {
            candle_core::bail!("sam-layer-norm: last dim {:?} != {dim}", layout.dims());
        }
        let mut dst = vec![0f32; src.len()];
        let chunk_rows = (4096 / dim).max(1);
        dst.par_chunks_mut(dim * chunk_rows)
            .zip(src.par_chunks(dim * chunk_rows))
            .for_each(|(d, s)| {
                for (d, s) in d.chunks_mut(dim).zip(s.chunks(dim)) {
                    layer_norm_row(s, d, self.weight, self.bias, self.eps);
                }
            });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// Normalise one row: two passes (mean, then variance of the centred values).
pub(crate) fn layer_norm_row(src: &[f32], dst: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let n = src.len() as f32;
    let mean = src.iter().sum::<f32>() / n;
    let var = src.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for i in 0..src.len() {
        dst[i] = (src[i] - mean) * rstd * weight[i] + bias[i];
    }
}

/// MLP block `lin2(act(lin1(x)))` with exact GELU (encoder) or ReLU (decoder transformer).
#[derive(Debug, Clone)]
pub struct MlpBlock {
    lin1: Linear,
    lin2: Linear,
    relu: bool,
}

impl MlpBlock {
    /// Load `lin1` (dim → hidden) and `lin2` (hidden → dim).
    pub fn load(w: &Weights, dim: usize, hidden: usize, relu: bool) -> Result<Self> {
        Ok(Self {
            lin1: Linear::load(&w.pp("lin1"), dim, hidden, true)?,
            lin2: Linear::load(&w.pp("lin2"), hidden, dim, true)?,
            relu,
        })
    }

    /// First layer (dim → hidden).
    pub fn lin1(&self) -> &Linear {
        &self.lin1
    }

    /// Second layer (hidden → dim).
    pub fn lin2(&self) -> &Linear {
        &self.lin2
    }

    /// Apply to `x` (..., dim).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.lin1.forward(x)?;
        let h = if self.relu { h.relu()? } else { h.gelu_erf()? };
        self.lin2.forward(&h)
    }
}

/// The decoder's `MLP`: a chain of linear layers with ReLU between them (none after the last).
#[derive(Debug, Clone)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    /// Load `layers.{i}` for `num_layers` layers: in → hidden → … → out.
    pub fn load(
        w: &Weights,
        input: usize,
        hidden: usize,
        output: usize,
        num_layers: usize,
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let n_in = if i == 0 { input } else { hidden };
            let n_out = if i + 1 == num_layers { output } else { hidden };
            layers.push(Linear::load(
                &w.pp(format!("layers.{i}")),
                n_in,
                n_out,
                true,
            )?);
        }
        Ok(Self { layers })
    }

    /// The linear layers.
    pub fn layers(&self) -> &[Linear] {
        &self.layers
    }

    /// Apply to `x` (..., input) → (..., output).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x)?;
            if i + 1 < self.layers.len() {
                x = x.relu()?;
            }
        }
        Ok(x)
    }
}

/// A convolution whose kernel equals its stride and has no padding (patch embedding, mask downscaling),
/// computed as one matrix multiply. Input NCHW (B, C, H, W) → output channels-last (B, H/k, W/k, out).
#[derive(Debug, Clone)]
pub struct PatchConv {
    /// (C·k·k, out)
    weight_t: Tensor,
    bias: Option<Tensor>,
    kernel: usize,
}

impl PatchConv {
    /// From a PyTorch conv weight (out, in, k, k) and optional bias (out).
    pub fn from_weights(weight: &Tensor, bias: Option<Tensor>) -> Result<Self> {
        let (out, cin, k, _) = weight.dims4()?;
        Ok(Self {
            weight_t: weight.reshape((out, cin * k * k))?.t()?.contiguous()?,
            bias,
            kernel: k,
        })
    }

    /// Load `weight` (out, in, k, k) and `bias` (out).
    pub fn load(w: &Weights, cin: usize, out: usize, k: usize, bias: bool) -> Result<Self> {
        let weight = w.get("weight", &[out, cin, k, k])?;
        let bias = if bias {
            Some(w.get("bias", &[out])?)
        } else {
            None
        };
        Self::from_weights(&weight, bias)
    }

    /// The weight as a matrix (C·k·k, out), rows ordered (channel, ky, kx).
    pub fn weight_t(&self) -> &Tensor {
        &self.weight_t
    }

    /// The bias (out), if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Apply to NCHW `x` (H, W multiples of the kernel) → (B, H/k, W/k, out).
    pub fn forward_nchw(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let k = self.kernel;
        let (gh, gw) = (h / k, w / k);
        let patches = x
            .reshape((b, c, gh, k, gw, k))?
            .permute([0, 2, 4, 1, 3, 5])?
            .contiguous()?
            .reshape((b * gh * gw, c * k * k))?;
        let mut y = patches.matmul(&self.weight_t)?;
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(bias)?;
        }
        Ok(y.reshape((b, gh, gw, ()))?)
    }

    /// Apply to channels-last `x` (B, H, W, C) → (B, H/k, W/k, out).
    pub fn forward_nhwc(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let k = self.kernel;
        let (gh, gw) = (h / k, w / k);
        let patches = x
            .reshape((b, gh, k, gw, k, c))?
            .permute([0, 1, 3, 5, 2, 4])?
            .contiguous()?
            .reshape((b * gh * gw, c * k * k))?;
        let mut y = patches.matmul(&self.weight_t)?;
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(bias)?;
        }
        Ok(y.reshape((b, gh, gw, ()))?)
    }
}

/// `ConvTranspose2d(in, out, kernel=2, stride=2)` in channels-last layout: (B, H, W, in) → (B, 2H, 2W, out).
#[derive(Debug, Clone)]
pub struct ConvTranspose2x2 {
    /// (in, out·2·2) with column order (out, a, b)
    weight: Tensor,
    bias: Tensor,
    out: usize,
}

impl ConvTranspose2x2 {
    /// Load `weight` (in, out, 2, 2) and `bias` (out).
    pub fn load(w: &Weights, cin: usize, out: usize) -> Result<Self> {
        let weight = w
            .get("weight", &[cin, out, 2, 2])?
            .reshape((cin, out * 4))?;
        let bias = w.get("bias", &[out])?;
        Ok(Self { weight, bias, out })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out
    }

    /// The weight as a host matrix (in, 4·out) with columns ordered (a, b, out), and the bias repeated for
    /// the four sub-pixels (4·out).
    pub fn host_subpixel_major(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let (cin, cols) = self.weight.dims2()?;
        let out = self.out;
        let w = crate::kernels::to_vec(&self.weight)?;
        let mut r = vec![0f32; cin * cols];
        for c in 0..cin {
            for o in 0..out {
                for s in 0..4 {
                    r[c * cols + s * out + o] = w[c * cols + o * 4 + s];
                }
            }
        }
        let b = crate::kernels::to_vec(&self.bias)?;
        let rep = (0..4).flat_map(|_| b.iter().copied()).collect();
        Ok((r, rep))
    }

    /// Apply: `out[2i+a, 2j+b, o] = Σ_c x[i, j, c]·W[c, o, a, b] + bias[o]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let y = x.reshape((b * h * w, c))?.matmul(&self.weight)?; // (bhw, out*4)
        let y = y
            .reshape((b, h, w, self.out, 2, 2))?
            .permute([0, 1, 4, 2, 5, 3])?
            .contiguous()?
            .reshape((b, 2 * h, 2 * w, self.out))?;
        Ok(y.broadcast_add(&self.bias)?)
    }
}
