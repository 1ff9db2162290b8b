//! CPU kernels: matrix multiplication on strided f32 buffers (through the `gemm` crate), vectorised
//! element-wise math (exp, GELU, softmax, LayerNorm) and the fused CPU paths of the image encoder and the
//! mask decoder.
//!
//! The model modules use these kernels when their tensors live on the CPU; the plain candle code stays the
//! path for other devices and the oracle the kernels are tested against.

pub mod cpu;
pub mod decoder;
pub mod direct;
pub mod encoder;
pub mod math;

use candle_core::{CpuStorage, DType, Storage, Tensor};

use crate::error::{Error, Result};

/// Read access to the f32 data of a contiguous CPU tensor, without copying.
pub struct F32Read<'a> {
    guard: candle_core::StorageRef<'a>,
    start: usize,
    len: usize,
}

impl<'a> F32Read<'a> {
    /// Borrow the data of `t` (must be f32, on the CPU and contiguous).
    pub fn new(t: &'a Tensor) -> Result<Self> {
        if t.dtype() != DType::F32 {
            return Err(Error::arg("tensor", "expected an f32 tensor"));
        }
        let (guard, layout) = t.storage_and_layout();
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| Error::arg("tensor", "expected a contiguous tensor"))?;
        match &*guard {
            Storage::Cpu(CpuStorage::F32(_)) => {}
            _ => return Err(Error::arg("tensor", "expected a CPU f32 tensor")),
        }
        Ok(Self {
            guard,
            start,
            len: end - start,
        })
    }

    /// The tensor's elements in row-major order.
    pub fn as_slice(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.start + self.len],
            _ => unreachable!(),
        }
    }
}

/// Copy a tensor's elements (any layout) into a vector.
pub fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` with `N` per-thread scratch buffers of the given lengths. Their contents are unspecified (stale
/// values from earlier use), so `f` must write before it reads. Reusing the buffers avoids allocation and
/// page-fault costs in hot loops.
pub fn with_scratch<const N: usize, R>(
    lens: [usize; N],
    f: impl FnOnce([&mut [f32]; N]) -> R,
) -> R {
    // Best fit: for each request, the smallest free buffer that is large enough (else the largest).
    let mut bufs: [Vec<f32>; N] = SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        std::array::from_fn(|i| {
            let len = lens[i];
            let pick = s
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len() >= len)
                .min_by_key(|(_, b)| b.len())
                .or_else(|| s.iter().enumerate().max_by_key(|(_, b)| b.len()))
                .map(|(j, _)| j);
            pick.map(|j| s.swap_remove(j)).unwrap_or_default()
        })
    });
    for (b, &len) in bufs.iter_mut().zip(&lens) {
        if b.len() < len {
            b.resize(len, 0.0);
        }
    }
    let r = {
        let mut it = bufs.iter_mut().zip(&lens);
        let slices: [&mut [f32]; N] = std::array::from_fn(|_| {
            let (b, &len) = it.next().unwrap();
            &mut b[..len]
        });
        f(slices)
    };
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        for b in bufs {
            s.push(b);
        }
    });
    r
}

/// A read-only strided matrix view: element (i, j) at `i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major with row stride `rs` (unit column stride).
    pub fn rows(data: &'a [f32], rs: usize) -> Self {
        Self { data, rs, cs: 1 }
    }

    /// Arbitrary strides.
    pub fn strided(data: &'a [f32], rs: usize, cs: usize) -> Self {
        Self { data, rs, cs }
    }

    /// The transposed view (no copy).
    #[cfg_attr(not(test), allow(dead_code))] // the unit tests' transposed operands
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }

    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "gemm: {what} view ({rows}×{cols}, strides {}, {}) exceeds its buffer of {}",
                self.rs,
                self.cs,
                self.data.len()
            );
        }
    }
}

/// A mutable strided matrix view: element (i, j) at `i·rs + j·cs`.
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rs: usize,
    cs: usize,
}

impl<'a> MatMut<'a> {
    /// Row-major with row stride `rs`.
    pub fn rows(data: &'a mut [f32], rs: usize) -> Self {
        Self { data, rs, cs: 1 }
    }
}

/// Threading of one matrix product.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Par {
    /// On the calling thread (use inside parallel loops).
    Seq,
    /// Over the rayon pool when the product is large enough and we are not already on a pool thread.
    Auto,
}

/// Products below this many multiply-adds run on one thread.
const PAR_MIN_WORK: usize = 1 << 21;

/// `C (m×n) = A (m×k) · B (k×n)`, or `C += A·B` when `accumulate`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    c: MatMut<'_>,
    a: Mat<'_>,
    b: Mat<'_>,
    accumulate: bool,
    par: Par,
) {
    if m == 0 || n == 0 {
        return;
    }
    a.check(m, k, "lhs");
    b.check(k, n, "rhs");
    if m > 0 && n > 0 {
        let last = (m - 1) * c.rs + (n - 1) * c.cs;
        assert!(
            last < c.data.len(),
            "gemm: destination view exceeds its buffer"
        );
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c.data[i * c.rs + j * c.cs] = 0.0;
                }
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallel = par == Par::Auto
        && threads > 1
        && rayon::current_thread_index().is_none()
        && m.saturating_mul(n).saturating_mul(k) >= PAR_MIN_WORK;
    // Large products: split the rows of C into one block per thread, each an independent single-threaded
    // product (faster than the crate's own threading: no synchronisation inside the product).
    if parallel && m >= 2 * threads * 16 && c.cs <= c.rs && (n - 1) * c.cs < c.rs {
        let per = m.div_ceil(threads);
        let mut parts = Vec::with_capacity(threads);
        let mut rest = c.data;
        let mut r0 = 0;
        while r0 < m {
            let rows = per.min(m - r0);
            let take = if r0 + rows < m {
                rows * c.rs
            } else {
                rest.len()
            };
            let (head, tail) = rest.split_at_mut(take);
            parts.push((r0, rows, head));
            rest = tail;
            r0 += rows;
        }
        use rayon::prelude::*;
        parts.into_par_iter().for_each(|(r0, rows, data)| {
            let a_sub = Mat {
                data: &a.data[r0 * a.rs..],
                rs: a.rs,
                cs: a.cs,
            };
            gemm(
                rows,
                n,
                k,
                MatMut {
                    data,
                    rs: c.rs,
                    cs: c.cs,
                },
                a_sub,
                b,
                accumulate,
                Par::Seq,
            );
        });
        return;
    }
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index touched is inside the checked views; `c` is exclusively borrowed and does not
    // overlap `a` or `b` (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.data.as_mut_ptr(),
            c.cs as isize,
            c.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `C = A·B` for row-major contiguous `A` (m×k), `B` (k×n) and `C` (m×n).
pub fn matmul(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, par: Par) {
    gemm(
        m,
        n,
        k,
        MatMut::rows(c, n),
        Mat::rows(a, k),
        Mat::rows(b, n),
        false,
        par,
    )
}

/// A linear layer on host memory: `y = x·Wᵀ + b` with `W` stored both as (out, in) and transposed (in, out).
#[derive(Debug, Clone)]
pub struct HostLinear {
    /// (out, in), PyTorch layout.
    pub w: Vec<f32>,
    /// (in, out).
    pub w_t: Vec<f32>,
    /// (out); zeros when the layer has no bias.
    pub b: Vec<f32>,
    /// `w_t` packed for [`direct::gemm_packed`] (few rows).
    pub packed: direct::PackedB,
    /// Input features.
    pub n_in: usize,
    /// Output features.
    pub n_out: usize,
}

impl HostLinear {
    /// From a weight (out, in) and an optional bias (out).
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        Self::from_transposed(&weight.t()?.contiguous()?, bias)
    }

    /// From a transposed weight (in, out) and an optional bias (out).
    pub fn from_transposed(weight_t: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let (n_in, n_out) = weight_t.dims2()?;
        let w_t = to_vec(weight_t)?;
        let mut w = vec![0f32; n_in * n_out];
        math::transpose(&w_t, n_out, &mut w, n_in, n_in, n_out);
        let b = match bias {
            Some(b) => to_vec(b)?,
            None => vec![0f32; n_out],
        };
        let packed = direct::PackedB::new(&w_t, n_in, n_out, n_out, 1);
        Ok(Self {
            w,
            w_t,
            b,
            packed,
            n_in,
            n_out,
        })
    }

    /// `y (rows × out) = x (rows × in) · Wᵀ + b`.
    pub fn forward(&self, x: &[f32], rows: usize, par: Par) -> Vec<f32> {
        let mut y = vec![0f32; rows * self.n_out];
        self.forward_into(x, rows, &mut y, par);
        y
    }

    /// As [`HostLinear::forward`], into `y`.
    pub fn forward_into(&self, x: &[f32], rows: usize, y: &mut [f32], par: Par) {
        let threads = rayon::current_num_threads();
        if rows <= 64
            && par == Par::Auto
            && threads > 1
            && rayon::current_thread_index().is_none()
            && self.n_in * self.n_out >= 1 << 17
            && self.n_out >= 32 * threads
        {
            // Few rows and a large weight: the product streams the weight, so give each thread its own block of
            // columns (panels), computed into a separate buffer.
            use rayon::prelude::*;
            let per = self.n_out.div_ceil(threads).div_ceil(16) * 16;
            let blocks: Vec<(usize, Vec<f32>)> = (0..self.n_out.div_ceil(per))
                .into_par_iter()
                .map(|bi| {
                    let j0 = bi * per;
                    let width = per.min(self.n_out - j0);
                    let mut out = vec![0f32; rows * width];
                    direct::gemm_packed_cols(
                        rows,
                        x,
                        self.n_in,
                        1,
                        &self.packed,
                        j0,
                        width,
                        Some(&self.b),
                        &mut out,
                        width,
                    );
                    (j0, out)
                })
                .collect();
            for (j0, out) in blocks {
                let width = out.len() / rows.max(1);
                for (r, src) in out.chunks_exact(width).enumerate() {
                    y[r * self.n_out + j0..r * self.n_out + j0 + width].copy_from_slice(src);
                }
            }
        } else if rows <= 64 {
            direct::gemm_packed_bias(
                rows,
                x,
                self.n_in,
                1,
                &self.packed,
                Some(&self.b),
                y,
                self.n_out,
                false,
            );
        } else {
            matmul(y, x, &self.w_t, rows, self.n_out, self.n_in, par);
            for row in y.chunks_exact_mut(self.n_out) {
                for (v, b) in row.iter_mut().zip(&self.b) {
                    *v += b;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
