//! Vectorised element-wise kernels on f32 slices: exp, exact GELU, softmax rows and LayerNorm rows.
//!
//! With AVX2 + FMA (detected at run time) eight lanes are processed at once; exp and GELU use sixteen with
//! AVX-512F (the same operations per lane, sums accumulated in the same order: the same bits). `exp` is a
//! Cephes-style polynomial (≈1 ulp, like Sleef's `expf_u10` in PyTorch's CPU kernels); GELU is the exact form
//! `0.5·x·(1 + erf(x/√2))` with a rational `erf` (|error| ≤ 3.5e-7, as accurate as PyTorch's vectorised CPU
//! `erf`, at half its cost). Other machines use scalar code with the same formulas.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::cpu::dispatch;
pub use super::cpu::has_avx512;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const EXP_HI: f32 = 88.376_26;
const EXP_LO: f32 = -88.376_26;
const EXP_C1: f32 = 0.693_359_4;
const EXP_C2: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];
const SQRT1_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const ERF_ALPHA: [f32; 7] = [
    -2.726_142_3e-10,
    2.770_681_4e-8,
    -2.101_024e-6,
    -5.692_506_4e-5,
    -7.349_906_3e-4,
    -2.954_6e-3,
    -1.609_603_3e-2,
];
const ERF_BETA: [f32; 5] = [
    -1.456_607_2e-5,
    -2.133_740_6e-4,
    -1.682_827e-3,
    -7.373_329_3e-3,
    -1.426_473_9e-2,
];

/// Scalar `exp` with the same polynomial as the vector kernel.
#[inline]
pub fn exp_scalar(x: f32) -> f32 {
    let x = x.clamp(EXP_LO, EXP_HI);
    let fx = (x * LOG2E + 0.5).floor();
    let r = x - fx * EXP_C1 - fx * EXP_C2;
    let z = r * r;
    let mut y = EXP_P[0];
    for &p in &EXP_P[1..] {
        y = y * r + p;
    }
    let y = y * z + r + 1.0;
    let e = ((fx as i32 + 127).max(0) as u32) << 23;
    y * f32::from_bits(e)
}

/// `erf` as a rational function (the odd/even minimax approximation used by Eigen and XLA for f32), with
/// |error| ≤ 3.5e-7, like PyTorch's vectorised CPU `erf` (Abramowitz–Stegun 7.1.26, ≤ 1.5e-7 before rounding).
#[inline]
pub fn erf_scalar(v: f32) -> f32 {
    let v = v.clamp(-4.0, 4.0);
    let v2 = v * v;
    let mut p = v2 * ERF_ALPHA[0] + ERF_ALPHA[1];
    for &c in &ERF_ALPHA[2..] {
        p = v2 * p + c;
    }
    let mut q = v2 * ERF_BETA[0] + ERF_BETA[1];
    for &c in &ERF_BETA[2..] {
        q = v2 * q + c;
    }
    v * p / q
}

/// Scalar exact GELU, `0.5·x·(1 + erf(x/√2))`.
#[inline]
pub fn gelu_scalar(x: f32) -> f32 {
    x * 0.5 * (1.0 + erf_scalar(x * SQRT1_2))
}

/// The vector kernels written once over their lane width: one [`Lanes`] implementation per instruction set
/// (8 lanes with AVX2 + FMA, 16 with AVX-512F), the same operations in the same order per lane in both, so
/// both widths give the same bits (sums included: they are accumulated in 8 lanes at either width).
#[cfg(target_arch = "x86_64")]
pub(crate) mod lanes {
    use super::*;

    /// One vector of `f32` lanes and the operations the element-wise kernels use.
    ///
    /// # Safety
    ///
    /// Every method runs instructions of the implementing instruction set: the CPU must support it (the
    /// kernels below are only reached through [`dispatch!`](crate::kernels::cpu::dispatch) and functions
    /// compiled with the matching `target_feature`). Pointer arguments must be valid for `N` reads or writes.
    pub(crate) unsafe trait Lanes {
        /// The vector register type.
        type V: Copy;
        /// Lanes per vector.
        const N: usize;
        /// `v` in every lane.
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn splat(v: f32) -> Self::V;
        /// `N` values from `p` (unaligned).
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn load(p: *const f32) -> Self::V;
        /// `v` to `N` values at `p` (unaligned).
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn store(p: *mut f32, v: Self::V);
        /// The values of `x` (fewer than `N`), the other lanes `fill`.
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn load_partial(x: &[f32], fill: f32) -> Self::V;
        /// The first `x.len()` (fewer than `N`) lanes of `v` into `x`.
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn store_partial(x: &mut [f32], v: Self::V);
        /// `a + b`.
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
        /// `a − b`.
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
        /// `a·b`.
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
        /// `a / b`.
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
        /// Lane-wise minimum (`b` where either is NaN, as `minps`).
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn min(a: Self::V, b: Self::V) -> Self::V;
        /// Lane-wise maximum (`b` where either is NaN, as `maxps`).
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
        /// `a·b + c`, one rounding.
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
        /// `c − a·b`, one rounding.
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn fnmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
        /// Rounded towards −∞.
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn floor(a: Self::V) -> Self::V;
        /// `2^k` for integral `k` (truncated to `i32`), 0 below the normal range.
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn pow2i(k: Self::V) -> Self::V;
        /// `acc + v` in 8 lanes: `v` added 8 lanes at a time, lowest first.
        ///
        /// # Safety
        ///
        /// The CPU supports the implementing instruction set; pointers are valid for `N` values.
        unsafe fn add_to_8(acc: __m256, v: Self::V) -> __m256;
    }

    /// AVX2 + FMA: 8 lanes.
    pub(crate) struct Avx2;
    /// AVX-512F: 16 lanes.
    pub(crate) struct Avx512;

    // SAFETY: every method uses only AVX/AVX2/FMA instructions, and callers guarantee the CPU has them.
    unsafe impl Lanes for Avx2 {
        type V = __m256;
        const N: usize = 8;
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m256 {
            _mm256_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        /// # Safety
        ///
        /// The CPU supports AVX2 and FMA. `x` holds at most 8 values.
        #[inline(always)]
        unsafe fn load_partial(x: &[f32], fill: f32) -> __m256 {
            super::avx::load_partial(x, fill)
        }
        /// The first `x.len()` lanes of `v` into `x`.
        ///
        /// # Safety
        ///
        /// The CPU supports AVX2 and FMA. `x` holds at most 8 values.
        #[inline(always)]
        unsafe fn store_partial(x: &mut [f32], v: __m256) {
            super::avx::store_partial(x, v)
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            _mm256_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m256, b: __m256) -> __m256 {
            _mm256_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m256, b: __m256) -> __m256 {
            _mm256_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m256, b: __m256) -> __m256 {
            _mm256_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn fnmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fnmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn floor(a: __m256) -> __m256 {
            _mm256_floor_ps(a)
        }
        #[inline(always)]
        unsafe fn pow2i(k: __m256) -> __m256 {
            let e = _mm256_add_epi32(_mm256_cvttps_epi32(k), _mm256_set1_epi32(127));
            let e = _mm256_max_epi32(e, _mm256_setzero_si256());
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
        }
        #[inline(always)]
        unsafe fn add_to_8(acc: __m256, v: __m256) -> __m256 {
            _mm256_add_ps(acc, v)
        }
    }

    // SAFETY: every method uses only AVX-512F (and AVX) instructions, and callers guarantee the CPU has them.
    unsafe impl Lanes for Avx512 {
        type V = __m512;
        const N: usize = 16;
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m512 {
            _mm512_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        /// # Safety
        ///
        /// The CPU supports AVX2 and FMA. `x` holds at most 8 values.
        #[inline(always)]
        unsafe fn load_partial(x: &[f32], fill: f32) -> __m512 {
            _mm512_mask_loadu_ps(_mm512_set1_ps(fill), first(x.len()), x.as_ptr())
        }
        /// The first `x.len()` lanes of `v` into `x`.
        ///
        /// # Safety
        ///
        /// The CPU supports AVX2 and FMA. `x` holds at most 8 values.
        #[inline(always)]
        unsafe fn store_partial(x: &mut [f32], v: __m512) {
            _mm512_mask_storeu_ps(x.as_mut_ptr(), first(x.len()), v)
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            _mm512_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512, b: __m512) -> __m512 {
            _mm512_mul_ps(a, b)
        }
        #[inline(always)]
        unsafe fn div(a: __m512, b: __m512) -> __m512 {
            _mm512_div_ps(a, b)
        }
        #[inline(always)]
        unsafe fn min(a: __m512, b: __m512) -> __m512 {
            _mm512_min_ps(a, b)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn fnmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fnmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn floor(a: __m512) -> __m512 {
            // Round towards −∞ (1), exceptions suppressed (8).
            _mm512_roundscale_ps::<0x09>(a)
        }
        #[inline(always)]
        unsafe fn pow2i(k: __m512) -> __m512 {
            let e = _mm512_add_epi32(_mm512_cvttps_epi32(k), _mm512_set1_epi32(127));
            let e = _mm512_max_epi32(e, _mm512_setzero_si512());
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e))
        }
        #[inline(always)]
        unsafe fn add_to_8(acc: __m256, v: __m512) -> __m256 {
            let lo = _mm512_castps512_ps256(v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            _mm256_add_ps(_mm256_add_ps(acc, lo), hi)
        }
    }

    /// Mask of the first `n` (< 16) lanes.
    #[inline(always)]
    fn first(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// `exp` per lane ([`exp_scalar`]'s polynomial, with FMAs).
    ///
    /// # Safety
    ///
    /// The CPU supports `L`'s instruction set.
    #[inline(always)]
    pub(crate) unsafe fn exp<L: Lanes>(x: L::V) -> L::V {
        let x = L::max(L::min(x, L::splat(EXP_HI)), L::splat(EXP_LO));
        let fx = L::floor(L::fmadd(x, L::splat(LOG2E), L::splat(0.5)));
        let r = L::fnmadd(fx, L::splat(EXP_C1), x);
        let r = L::fnmadd(fx, L::splat(EXP_C2), r);
        let z = L::mul(r, r);
        let mut y = L::splat(EXP_P[0]);
        for &p in &EXP_P[1..] {
            y = L::fmadd(y, r, L::splat(p));
        }
        let y = L::add(L::fmadd(y, z, r), L::splat(1.0));
        L::mul(y, L::pow2i(fx))
    }

    /// Exact GELU per lane, `0.5·x·(1 + erf(x/√2))` ([`erf_scalar`]'s rational function, with FMAs).
    ///
    /// # Safety
    ///
    /// The CPU supports `L`'s instruction set.
    #[inline(always)]
    pub(crate) unsafe fn gelu<L: Lanes>(x: L::V) -> L::V {
        let v = L::mul(x, L::splat(SQRT1_2));
        let v = L::min(L::max(v, L::splat(-4.0)), L::splat(4.0));
        let v2 = L::mul(v, v);
        let mut p = L::fmadd(v2, L::splat(ERF_ALPHA[0]), L::splat(ERF_ALPHA[1]));
        for &c in &ERF_ALPHA[2..] {
            p = L::fmadd(v2, p, L::splat(c));
        }
        p = L::mul(v, p);
        let mut q = L::fmadd(v2, L::splat(ERF_BETA[0]), L::splat(ERF_BETA[1]));
        for &c in &ERF_BETA[2..] {
            q = L::fmadd(v2, q, L::splat(c));
        }
        let erf = L::div(p, q);
        L::mul(L::mul(x, L::splat(0.5)), L::add(L::splat(1.0), erf))
    }

    /// `x = exp(x)` element-wise.
    ///
    /// # Safety
    ///
    /// The CPU supports `L`'s instruction set.
    #[inline(always)]
    pub(crate) unsafe fn exp_inplace<L: Lanes>(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(L::N);
        for c in &mut chunks {
            L::store(c.as_mut_ptr(), exp::<L>(L::load(c.as_ptr())));
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = exp::<L>(L::load_partial(rest, 0.0));
            L::store_partial(rest, v);
        }
    }

    /// `x = GELU(x)` element-wise (two vectors per step).
    ///
    /// # Safety
    ///
    /// The CPU supports `L`'s instruction set.
    #[inline(always)]
    pub(crate) unsafe fn gelu_inplace<L: Lanes>(x: &mut [f32]) {
        let mut pairs = x.chunks_exact_mut(2 * L::N);
        for c in &mut pairs {
            let (v0, v1) = (L::load(c.as_ptr()), L::load(c.as_ptr().add(L::N)));
            let (g0, g1) = (gelu::<L>(v0), gelu::<L>(v1));
            L::store(c.as_mut_ptr(), g0);
            L::store(c.as_mut_ptr().add(L::N), g1);
        }
        let mut chunks = pairs.into_remainder().chunks_exact_mut(L::N);
        for c in &mut chunks {
            L::store(c.as_mut_ptr(), gelu::<L>(L::load(c.as_ptr())));
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = gelu::<L>(L::load_partial(rest, 0.0));
            L::store_partial(rest, v);
        }
    }

    /// `x = exp(x − m)` in place; returns Σ, accumulated in 8 lanes (the same bits at either width).
    ///
    /// # Safety
    ///
    /// The CPU supports `L`'s instruction set and AVX2 + FMA.
    #[inline(always)]
    pub(crate) unsafe fn exp_sub_sum<L: Lanes>(x: &mut [f32], m: f32) -> f32 {
        let n = x.len();
        let p = x.as_mut_ptr();
        let mv = L::splat(m);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + L::N <= n {
            let e = exp::<L>(L::sub(L::load(p.add(i)), mv));
            L::store(p.add(i), e);
            acc = L::add_to_8(acc, e);
            i += L::N;
        }
        // The tail in 8 lanes at either width.
        let m8 = _mm256_set1_ps(m);
        if i + 8 <= n {
            let e = exp::<Avx2>(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m8));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut sum = super::avx::hsum(acc);
        if i < n {
            let e = exp::<Avx2>(_mm256_sub_ps(super::avx::load_partial(&x[i..], m), m8));
            let mut buf = [0f32; 8];
            _mm256_storeu_ps(buf.as_mut_ptr(), e);
            let k = n - i;
            x[i..].copy_from_slice(&buf[..k]);
            for v in &buf[..k] {
                sum += v;
            }
        }
        sum
    }

    /// The kernels above compiled for each instruction set.
    macro_rules! builds {
        ($name:ident, $features:literal, $lanes:ty) => {
            pub(crate) mod $name {
                use super::*;

                /// `x = exp(x)` element-wise.
                ///
                /// # Safety
                ///
                /// The CPU supports the instruction sets this module is compiled for.
                #[target_feature(enable = $features)]
                pub(crate) unsafe fn exp_inplace(x: &mut [f32]) {
                    super::exp_inplace::<$lanes>(x)
                }

                /// `x = GELU(x)` element-wise.
                ///
                /// # Safety
                ///
                /// The CPU supports the instruction sets this module is compiled for.
                #[target_feature(enable = $features)]
                pub(crate) unsafe fn gelu_inplace(x: &mut [f32]) {
                    super::gelu_inplace::<$lanes>(x)
                }

                /// `x = exp(x − m)` in place; returns Σ.
                ///
                /// # Safety
                ///
                /// The CPU supports the instruction sets this module is compiled for.
                #[target_feature(enable = $features)]
                pub(crate) unsafe fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
                    super::exp_sub_sum::<$lanes>(x, m)
                }
            }
        };
    }
    builds!(avx2, "avx2,fma", Avx2);
    builds!(avx512, "avx512f,avx2,fma", Avx512);
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::*;

    use super::lanes::{self, Avx2};

    /// `exp` on 8 lanes.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA.
    #[inline(always)]
    pub unsafe fn exp8(x: __m256) -> __m256 {
        lanes::exp::<Avx2>(x)
    }

    /// Exact GELU on 8 lanes.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA.
    #[inline(always)]
    pub unsafe fn gelu8(x: __m256) -> __m256 {
        lanes::gelu::<Avx2>(x)
    }

    /// Sum of the 8 lanes.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA.
    #[inline(always)]
    pub unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// Largest of the 8 lanes.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA.
    #[inline(always)]
    pub unsafe fn hmax(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_max_ps(lo, hi);
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// Load up to 8 values (the rest filled with `fill`).
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `x` holds at most 8 values.
    #[inline(always)]
    pub unsafe fn load_partial(x: &[f32], fill: f32) -> __m256 {
        let mut buf = [fill; 8];
        buf[..x.len()].copy_from_slice(x);
        _mm256_loadu_ps(buf.as_ptr())
    }

    /// The first `x.len()` lanes of `v` into `x`.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `x` holds at most 8 values.
    #[inline(always)]
    pub unsafe fn store_partial(x: &mut [f32], v: __m256) {
        let mut buf = [0f32; 8];
        _mm256_storeu_ps(buf.as_mut_ptr(), v);
        let n = x.len();
        x.copy_from_slice(&buf[..n]);
    }

    /// `x[r, :] = GELU(x[r, :] + bias)` for every row of length `bias.len()`.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `bias` is not empty.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn bias_gelu_rows(x: &mut [f32], bias: &[f32]) {
        let n = bias.len();
        for row in x.chunks_exact_mut(n) {
            let mut i = 0;
            while i + 16 <= n {
                let v0 = _mm256_add_ps(
                    _mm256_loadu_ps(row.as_ptr().add(i)),
                    _mm256_loadu_ps(bias.as_ptr().add(i)),
                );
                let v1 = _mm256_add_ps(
                    _mm256_loadu_ps(row.as_ptr().add(i + 8)),
                    _mm256_loadu_ps(bias.as_ptr().add(i + 8)),
                );
                let (g0, g1) = (gelu8(v0), gelu8(v1));
                _mm256_storeu_ps(row.as_mut_ptr().add(i), g0);
                _mm256_storeu_ps(row.as_mut_ptr().add(i + 8), g1);
                i += 16;
            }
            while i + 8 <= n {
                let v = _mm256_add_ps(
                    _mm256_loadu_ps(row.as_ptr().add(i)),
                    _mm256_loadu_ps(bias.as_ptr().add(i)),
                );
                _mm256_storeu_ps(row.as_mut_ptr().add(i), gelu8(v));
                i += 8;
            }
            if i < n {
                let v = _mm256_add_ps(load_partial(&row[i..], 0.0), load_partial(&bias[i..], 0.0));
                store_partial(&mut row[i..], gelu8(v));
            }
        }
    }

    /// `x[i] = (x[i] + a) + b[i]`; returns the largest of `m` and the new values.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `b` is at least as long as `x`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn add_add_max(x: &mut [f32], a: f32, b: &[f32], m: f32) -> f32 {
        let n = x.len();
        let av = _mm256_set1_ps(a);
        let mut mv = _mm256_set1_ps(m);
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_add_ps(
                _mm256_add_ps(_mm256_loadu_ps(x.as_ptr().add(i)), av),
                _mm256_loadu_ps(b.as_ptr().add(i)),
            );
            _mm256_storeu_ps(x.as_mut_ptr().add(i), v);
            mv = _mm256_max_ps(mv, v);
            i += 8;
        }
        let mut m = hmax(mv);
        for (v, &bv) in x[i..].iter_mut().zip(&b[i..n]) {
            *v = (*v + a) + bv;
            m = m.max(*v);
        }
        m
    }

    /// The largest element (−∞ for an empty row).
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_max(x: &[f32]) -> f32 {
        let n = x.len();
        let mut mx = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i + 8 <= n {
            mx = _mm256_max_ps(mx, _mm256_loadu_ps(x.as_ptr().add(i)));
            i += 8;
        }
        let mut m = hmax(mx);
        for &v in &x[i..] {
            m = m.max(v);
        }
        m
    }

    /// Dot product: two 8-lane accumulators, then a horizontal sum.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `a` and `b` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            a0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                a0,
            );
            a1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                a1,
            );
            i += 16;
        }
        if i + 8 <= n {
            a0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                a0,
            );
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        for j in i..n {
            s += a[j] * b[j];
        }
        s
    }

    /// 8×8 transpose: `out[j]` lane `i` = `v[i]` lane `j`.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA.
    #[inline(always)]
    unsafe fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(v[0], v[1]);
        let t1 = _mm256_unpackhi_ps(v[0], v[1]);
        let t2 = _mm256_unpacklo_ps(v[2], v[3]);
        let t3 = _mm256_unpackhi_ps(v[2], v[3]);
        let t4 = _mm256_unpacklo_ps(v[4], v[5]);
        let t5 = _mm256_unpackhi_ps(v[4], v[5]);
        let t6 = _mm256_unpacklo_ps(v[6], v[7]);
        let t7 = _mm256_unpackhi_ps(v[6], v[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// 8×8 transposes over `rows` × `cols` (multiples of 8).
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `rows` and `cols` are multiples of 8; `src` is readable at `i·lds + j` and `dst` writable at `j·ldd + i` for i < rows, j < cols; `add` is null or readable at `j·add_ld + i`; `dst` overlaps neither input.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn transpose_blocks(
        src: *const f32,
        lds: usize,
        dst: *mut f32,
        ldd: usize,
        rows: usize,
        cols: usize,
        add: *const f32,
        add_ld: usize,
    ) {
        let mut i0 = 0;
        while i0 < rows {
            let mut j0 = 0;
            while j0 < cols {
                let s = src.add(i0 * lds + j0);
                let r: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(s.add(k * lds)));
                let o = transpose8(r);
                let d = dst.add(j0 * ldd + i0);
                for (k, v) in o.iter().enumerate() {
                    let v = if add.is_null() {
                        *v
                    } else {
                        _mm256_add_ps(*v, _mm256_loadu_ps(add.add((j0 + k) * add_ld + i0)))
                    };
                    _mm256_storeu_ps(d.add(k * ldd), v);
                }
                j0 += 8;
            }
            i0 += 8;
        }
    }

    /// Sums of 8 vectors: lane i of the result is the horizontal sum of `a[i]`.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA.
    #[inline(always)]
    unsafe fn hsum8(a: &[__m256; 8]) -> __m256 {
        let s01 = _mm256_hadd_ps(a[0], a[1]);
        let s23 = _mm256_hadd_ps(a[2], a[3]);
        let s45 = _mm256_hadd_ps(a[4], a[5]);
        let s67 = _mm256_hadd_ps(a[6], a[7]);
        let s0123 = _mm256_hadd_ps(s01, s23);
        let s4567 = _mm256_hadd_ps(s45, s67);
        let lo = _mm256_permute2f128_ps::<0x20>(s0123, s4567);
        let hi = _mm256_permute2f128_ps::<0x31>(s0123, s4567);
        _mm256_add_ps(lo, hi)
    }

    /// See [`super::head_scores8`].
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `t ≤ 8`, `q` holds r × 8·dh values, `k` 8·dh × 8 and `out` r × t × 8.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn head_scores8(
        q: &[f32],
        r: usize,
        dh: usize,
        k: &[f32],
        t: usize,
        out: &mut [f32],
    ) {
        let (qp, kp, op) = (q.as_ptr(), k.as_ptr(), out.as_mut_ptr());
        for i in 0..r {
            let qi = qp.add(i * 8 * dh);
            let mut acc = [_mm256_setzero_ps(); 8];
            for (h, a) in acc.iter_mut().enumerate() {
                let (qh, kh) = (qi.add(h * dh), kp.add(h * dh * 8));
                let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let mut d = 0;
                while d + 2 <= dh {
                    a0 = _mm256_fmadd_ps(
                        _mm256_broadcast_ss(&*qh.add(d)),
                        _mm256_loadu_ps(kh.add(d * 8)),
                        a0,
                    );
                    a1 = _mm256_fmadd_ps(
                        _mm256_broadcast_ss(&*qh.add(d + 1)),
                        _mm256_loadu_ps(kh.add(d * 8 + 8)),
                        a1,
                    );
                    d += 2;
                }
                if d < dh {
                    a0 = _mm256_fmadd_ps(
                        _mm256_broadcast_ss(&*qh.add(d)),
                        _mm256_loadu_ps(kh.add(d * 8)),
                        a0,
                    );
                }
                *a = _mm256_add_ps(a0, a1);
            }
            let rows = transpose8(acc);
            for (ti, v) in rows.iter().take(t).enumerate() {
                _mm256_storeu_ps(op.add(i * 8 * t + ti * 8), *v);
            }
        }
    }

    /// `row_dots` for `blocks` blocks of 8 rows (c a multiple of 8).
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `c` is a multiple of 8, `rows` holds `blocks`·8 rows of `c` values, `h` holds `kn` × `c` and `out` `blocks`·8 × `kn`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_dots8(
        rows: &[f32],
        c: usize,
        h: &[f32],
        kn: usize,
        out: &mut [f32],
        blocks: usize,
    ) {
        let rp = rows.as_ptr();
        for blk in 0..blocks {
            let base = rp.add(blk * 8 * c);
            for k in 0..kn {
                let hp = h.as_ptr().add(k * c);
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut j = 0;
                while j < c {
                    let hv = _mm256_loadu_ps(hp.add(j));
                    for (r, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(_mm256_loadu_ps(base.add(r * c + j)), hv, *a);
                    }
                    j += 8;
                }
                let mut buf = [0f32; 8];
                _mm256_storeu_ps(buf.as_mut_ptr(), hsum8(&acc));
                for (r, v) in buf.iter().enumerate() {
                    out[(blk * 8 + r) * kn + k] = *v;
                }
            }
        }
    }

    /// Softmax over `t` values interleaved with stride `h`, 8 groups at a time.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `h` is a multiple of 8 and `row` holds t × h values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax_interleaved(row: &mut [f32], t: usize, h: usize) {
        let p = row.as_mut_ptr();
        let mut j = 0;
        while j < h {
            let mut m = _mm256_loadu_ps(p.add(j));
            for i in 1..t {
                m = _mm256_max_ps(m, _mm256_loadu_ps(p.add(i * h + j)));
            }
            let mut sum = _mm256_setzero_ps();
            for i in 0..t {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i * h + j)), m));
                _mm256_storeu_ps(p.add(i * h + j), e);
                sum = _mm256_add_ps(sum, e);
            }
            let inv = _mm256_div_ps(_mm256_set1_ps(1.0), sum);
            for i in 0..t {
                let q = p.add(i * h + j);
                _mm256_storeu_ps(q, _mm256_mul_ps(_mm256_loadu_ps(q), inv));
            }
            j += 8;
        }
    }

    /// Sum of `x` (two 8-lane accumulators).
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA.
    #[inline(always)]
    unsafe fn sum_slice(x: &[f32]) -> f32 {
        let n = x.len();
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x.as_ptr().add(i)));
            a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x.as_ptr().add(i + 8)));
            i += 16;
        }
        if i + 8 <= n {
            a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x.as_ptr().add(i)));
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        for &v in &x[i..] {
            s += v;
        }
        s
    }

    /// Σ (x − mean)² (two 8-lane accumulators).
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA.
    #[inline(always)]
    unsafe fn sq_dev_sum(x: &[f32], mean: f32) -> f32 {
        let n = x.len();
        let mv = _mm256_set1_ps(mean);
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), mv);
            let d1 = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i + 8)), mv);
            a0 = _mm256_fmadd_ps(d0, d0, a0);
            a1 = _mm256_fmadd_ps(d1, d1, a1);
            i += 16;
        }
        if i + 8 <= n {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), mv);
            a0 = _mm256_fmadd_ps(d0, d0, a0);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        for &v in &x[i..] {
            s += (v - mean) * (v - mean);
        }
        s
    }

    /// Means and reciprocal standard deviations of 8 rows of `c` values at `p` (row r at `p + r·c`), from their
    /// sums (8 lanes per row): two-pass variance, `1 / √(var + eps)`.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `p` is readable for 8 rows of `c` values, `c` a multiple of 8.
    #[inline(always)]
    unsafe fn mean_rstd8(
        sums: &[__m256; 8],
        p: *const f32,
        c: usize,
        eps: f32,
    ) -> ([f32; 8], [f32; 8]) {
        let inv_n = _mm256_set1_ps(1.0 / c as f32);
        let mean = _mm256_mul_ps(hsum8(sums), inv_n);
        let mut mb = [0f32; 8];
        _mm256_storeu_ps(mb.as_mut_ptr(), mean);
        let mut acc = [_mm256_setzero_ps(); 8];
        for (r, a) in acc.iter_mut().enumerate() {
            let mv = _mm256_set1_ps(mb[r]);
            let mut j = 0;
            while j < c {
                let d = _mm256_sub_ps(_mm256_loadu_ps(p.add(r * c + j)), mv);
                *a = _mm256_fmadd_ps(d, d, *a);
                j += 8;
            }
        }
        let var = _mm256_mul_ps(hsum8(&acc), inv_n);
        let rstd = _mm256_div_ps(
            _mm256_set1_ps(1.0),
            _mm256_sqrt_ps(_mm256_add_ps(var, _mm256_set1_ps(eps))),
        );
        let mut rb = [0f32; 8];
        _mm256_storeu_ps(rb.as_mut_ptr(), rstd);
        (mb, rb)
    }

    /// In-place LayerNorm of 8 rows of `c` values at once: the per-row reductions end in one transposed
    /// horizontal sum for all 8 rows.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `c` is a multiple of 8, `x` holds 8 rows of `c` values, `w` and `b` hold `c` values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn layer_norm_rows8(x: &mut [f32], c: usize, w: &[f32], b: &[f32], eps: f32) {
        let p = x.as_mut_ptr();
        let mut acc = [_mm256_setzero_ps(); 8];
        for (r, a) in acc.iter_mut().enumerate() {
            let mut j = 0;
            while j < c {
                *a = _mm256_add_ps(*a, _mm256_loadu_ps(p.add(r * c + j)));
                j += 8;
            }
        }
        let (mb, rb) = mean_rstd8(&acc, p, c, eps);
        for r in 0..8 {
            let (mv, rv) = (_mm256_set1_ps(mb[r]), _mm256_set1_ps(rb[r]));
            let mut j = 0;
            while j < c {
                let q = p.add(r * c + j);
                let y = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(q), mv), rv);
                let y = _mm256_fmadd_ps(
                    y,
                    _mm256_loadu_ps(w.as_ptr().add(j)),
                    _mm256_loadu_ps(b.as_ptr().add(j)),
                );
                _mm256_storeu_ps(q, y);
                j += 8;
            }
        }
    }

    /// See [`super::residual_norm_rows`]: 8 rows of `c` values (c a multiple of 8) at once, the per-row
    /// reductions ending in one transposed horizontal sum for all 8 rows.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `c = bias.len()` is a multiple of 8; `y`, `x`, `out`, `pe` and `xpe` are valid for 8 rows of `c` values (reads, and writes for `y`, `out`, `xpe`, which overlap nothing else); `w` and `b` hold `c` values and `stats` 8 entries.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn residual_norm_rows8(
        y: *mut f32,
        x: *const f32,
        bias: &[f32],
        w: &[f32],
        b: &[f32],
        eps: f32,
        out: *mut f32,
        pe: *const f32,
        xpe: *mut f32,
        stats: &mut [(f32, f32)],
    ) {
        let c = bias.len();
        let mut acc = [_mm256_setzero_ps(); 8];
        for (r, a) in acc.iter_mut().enumerate() {
            let mut j = 0;
            while j < c {
                let q = y.add(r * c + j);
                let v = _mm256_add_ps(
                    _mm256_loadu_ps(x.add(r * c + j)),
                    _mm256_add_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(bias.as_ptr().add(j))),
                );
                _mm256_storeu_ps(q, v);
                *a = _mm256_add_ps(*a, v);
                j += 8;
            }
        }
        let (mb, rb) = mean_rstd8(&acc, y, c, eps);
        for r in 0..8 {
            stats[r] = (mb[r], rb[r]);
            let (mv, rv) = (_mm256_set1_ps(mb[r]), _mm256_set1_ps(rb[r]));
            let mut j = 0;
            while j < c {
                let o = r * c + j;
                let v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(y.add(o)), mv), rv);
                let v = _mm256_fmadd_ps(
                    v,
                    _mm256_loadu_ps(w.as_ptr().add(j)),
                    _mm256_loadu_ps(b.as_ptr().add(j)),
                );
                _mm256_storeu_ps(out.add(o), v);
                _mm256_storeu_ps(xpe.add(o), _mm256_add_ps(v, _mm256_loadu_ps(pe.add(o))));
                j += 8;
            }
        }
    }

    /// LayerNorm of one row: `(x − mean)·rstd·w + b`, two-pass mean and (biased) variance.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `src`, `dst`, `w` and `b` have the same length (`dst` may be `src`'s memory: every element is read before it is written).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn layer_norm_row(
        src: &[f32],
        dst: &mut [f32],
        w: &[f32],
        b: &[f32],
        eps: f32,
    ) -> (f32, f32) {
        let n = src.len();
        let mean = sum_slice(src) / n as f32;
        let var = sq_dev_sum(src, mean) / n as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        let mv = _mm256_set1_ps(mean);
        let rv = _mm256_set1_ps(rstd);
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_loadu_ps(src.as_ptr().add(i));
            let y = _mm256_mul_ps(_mm256_sub_ps(x, mv), rv);
            let y = _mm256_fmadd_ps(
                y,
                _mm256_loadu_ps(w.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
            );
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), y);
            i += 8;
        }
        for j in i..n {
            dst[j] = (src[j] - mean) * rstd * w[j] + b[j];
        }
        (mean, rstd)
    }
}

/// `x = exp(x)` element-wise.
pub fn exp_inplace(x: &mut [f32]) {
    dispatch!(
        Avx512 => lanes::avx512::exp_inplace(x),
        Avx2 => lanes::avx2::exp_inplace(x);
        else x.iter_mut().for_each(|v| *v = exp_scalar(*v))
    )
}

/// `x = GELU(x)` (exact, erf form) element-wise.
pub fn gelu_inplace(x: &mut [f32]) {
    dispatch!(
        Avx512 => lanes::avx512::gelu_inplace(x),
        Avx2 => lanes::avx2::gelu_inplace(x);
        else x.iter_mut().for_each(|v| *v = gelu_scalar(*v))
    )
}

/// `x[r, :] = GELU(x[r, :] + bias)` for every row of length `bias.len()`.
pub fn bias_gelu_rows(x: &mut [f32], bias: &[f32]) {
    dispatch!(
        Avx2 => avx::bias_gelu_rows(x, bias);
        else {
            for row in x.chunks_exact_mut(bias.len()) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v = gelu_scalar(*v + b);
                }
            }
        }
    )
}

/// Softmax of one row in place (`exp(x − max)`, then multiplied by the reciprocal of the sum).
pub fn softmax_row(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    // The exponentials and their sum by the widest kernel available, then one product per value.
    let inv = 1.0 / softmax_unnormalized(x);
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `x = exp(x − max(x))` in place (a softmax without the final normalisation); returns the sum.
pub fn softmax_unnormalized(x: &mut [f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    exp_sub_sum(x, row_max(x))
}

/// `x[i] = (x[i] + a) + b[i]` (in that order); returns the largest of `m` and the new values.
pub fn add_add_max(x: &mut [f32], a: f32, b: &[f32], m: f32) -> f32 {
    assert!(b.len() >= x.len(), "add_add_max: lengths");
    dispatch!(
        Avx2 => avx::add_add_max(x, a, b, m);
        else x.iter_mut().zip(b).fold(m, |m, (v, &bv)| {
            *v = (*v + a) + bv;
            m.max(*v)
        })
    )
}

/// The largest element of `x` (−∞ for an empty slice).
pub fn row_max(x: &[f32]) -> f32 {
    dispatch!(
        Avx2 => avx::row_max(x);
        else x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
    )
}

/// `x = exp(x − m)` in place; returns the sum. With `m ≥ max(x)` every value is at most 1.
pub fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    dispatch!(
        Avx512 => lanes::avx512::exp_sub_sum(x, m),
        Avx2 => lanes::avx2::exp_sub_sum(x, m);
        else exp_sub_sum_scalar(x, m)
    )
}

fn exp_sub_sum_scalar(x: &mut [f32], m: f32) -> f32 {
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = exp_scalar(*v - m);
        sum += *v;
    }
    sum
}

/// LayerNorm of one row: two passes (mean, then variance of the centred values), `(x − mean)·rstd·w + b`;
/// returns `(mean, rstd)`.
pub fn layer_norm_row(src: &[f32], dst: &mut [f32], w: &[f32], b: &[f32], eps: f32) -> (f32, f32) {
    let n = src.len();
    assert!(dst.len() == n && w.len() == n && b.len() == n);
    dispatch!(
        Avx2 => avx::layer_norm_row(src, dst, w, b, eps);
        else {
            let mean = src.iter().sum::<f32>() / n as f32;
            let var = src.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let rstd = 1.0 / (var + eps).sqrt();
            for i in 0..n {
                dst[i] = (src[i] - mean) * rstd * w[i] + b[i];
            }
            (mean, rstd)
        }
    )
}

/// Residual, LayerNorm and positional encoding over rows of `c = bias.len()` values: `y ← x + (y + bias)`,
/// `out = LayerNorm(y)` (weights `w`, `b`), `xpe = out + pe`; `stats[i]` = (mean, rstd) of row i. All slices
/// hold the same number of rows (`stats` one entry per row).
#[allow(clippy::too_many_arguments)]
pub fn residual_norm_rows(
    y: &mut [f32],
    x: &[f32],
    bias: &[f32],
    w: &[f32],
    b: &[f32],
    eps: f32,
    out: &mut [f32],
    pe: &[f32],
    xpe: &mut [f32],
    stats: &mut [(f32, f32)],
) {
    let c = bias.len();
    let n = stats.len();
    assert!(w.len() == c && b.len() == c);
    assert!(y.len() == n * c && x.len() == n * c && out.len() == n * c);
    assert!(pe.len() == n * c && xpe.len() == n * c);
    // Blocks of 8 rows by the vector build (8 rows of c values, c a multiple of 8, from row `done` are in bounds
    // of every slice: lengths checked above; `y`, `out` and `xpe` are distinct mutable borrows), the rest here.
    let done = dispatch!(
        Avx2 if c.is_multiple_of(8) => {
            let mut done = 0;
            while done + 8 <= n {
                let o = done * c;
                avx::residual_norm_rows8(
                    y.as_mut_ptr().add(o),
                    x.as_ptr().add(o),
                    bias,
                    w,
                    b,
                    eps,
                    out.as_mut_ptr().add(o),
                    pe.as_ptr().add(o),
                    xpe.as_mut_ptr().add(o),
                    &mut stats[done..done + 8],
                );
                done += 8;
            }
            done
        };
        else 0
    );
    for (i, st) in stats.iter_mut().enumerate().skip(done) {
        let row = i * c..(i + 1) * c;
        let yr = &mut y[row.clone()];
        for ((v, xv), bv) in yr.iter_mut().zip(&x[row.clone()]).zip(bias) {
            *v = xv + (*v + bv);
        }
        *st = layer_norm_row(yr, &mut out[row.clone()], w, b, eps);
        for ((q, o), p) in xpe[row.clone()]
            .iter_mut()
            .zip(&out[row.clone()])
            .zip(&pe[row])
        {
            *q = o + p;
        }
    }
}

/// Transpose: `dst[j·ldd + i] = src[i·lds + j]` for i < rows, j < cols.
pub fn transpose(src: &[f32], lds: usize, dst: &mut [f32], ldd: usize, rows: usize, cols: usize) {
    transpose_add(src, lds, dst, ldd, rows, cols, None)
}

/// Transpose and add: `dst[j·ldd + i] = src[i·lds + j] + add[j·add_ld + i]` (`add = (values, add_ld)`;
/// `add_ld = 0` adds the same row to every output row).
pub fn transpose_add(
    src: &[f32],
    lds: usize,
    dst: &mut [f32],
    ldd: usize,
    rows: usize,
    cols: usize,
    add: Option<(&[f32], usize)>,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!((rows - 1) * lds + cols <= src.len() && (cols - 1) * ldd + rows <= dst.len());
    if let Some((a, ld)) = add {
        assert!((cols - 1) * ld + rows <= a.len());
    }
    let addv = |j: usize, i: usize| add.map_or(0.0, |(a, ld)| a[j * ld + i]);
    // The 8×8 blocks by the vector build (inside the bounds checked above), the remainders here.
    let (rb, cb) = dispatch!(
        Avx2 => {
            let (rb, cb) = (rows / 8 * 8, cols / 8 * 8);
            let (ap, ald) = add.map_or((std::ptr::null(), 0), |(a, ld)| (a.as_ptr(), ld));
            avx::transpose_blocks(src.as_ptr(), lds, dst.as_mut_ptr(), ldd, rb, cb, ap, ald);
            (rb, cb)
        };
        else (0, 0)
    );
    // Remainders: the last rows for all columns, the last columns of the block rows.
    for i in rb..rows {
        for j in 0..cols {
            dst[j * ldd + i] = src[i * lds + j] + addv(j, i);
        }
    }
    for i in 0..rb {
        for j in cb..cols {
            dst[j * ldd + i] = src[i * lds + j] + addv(j, i);
        }
    }
}

/// Attention scores of 8 heads against up to 8 tokens: for rows `i < r`, `out[i·8t + ti·8 + h] = Σ_d q[i·8dh +
/// h·dh + d] · k[(h·dh + d)·8 + ti]` (`q`: r × 8·dh queries, heads side by side; `k`: per (head, dim) 8 token
/// values, the unused ones zero; `out`: r × (t × 8), interleaved by token then head).
pub fn head_scores8(q: &[f32], r: usize, dh: usize, k: &[f32], t: usize, out: &mut [f32]) {
    assert!(t <= 8 && q.len() >= r * 8 * dh && k.len() >= 8 * dh * 8 && out.len() >= r * t * 8);
    dispatch!(
        Avx2 => avx::head_scores8(q, r, dh, k, t, out);
        else {
            for i in 0..r {
                for ti in 0..t {
                    for h in 0..8 {
                        let qh = &q[i * 8 * dh + h * dh..i * 8 * dh + (h + 1) * dh];
                        out[i * 8 * t + ti * 8 + h] = qh
                            .iter()
                            .enumerate()
                            .map(|(d, &v)| v * k[(h * dh + d) * 8 + ti])
                            .sum();
                    }
                }
            }
        }
    )
}

/// `out[i·kn + k] = rows[i] · h[k]` for `n_rows` rows of length `c` and `kn` vectors `h` (kn × c).
pub fn row_dots(rows: &[f32], c: usize, h: &[f32], kn: usize, out: &mut [f32]) {
    let n_rows = rows.len() / c;
    assert!(h.len() >= kn * c && out.len() >= n_rows * kn);
    // Blocks of 8 full rows (within the bounds checked above) by the vector build, the rest here.
    let i0 = dispatch!(
        Avx2 if c.is_multiple_of(8) => {
            avx::row_dots8(rows, c, h, kn, out, n_rows / 8);
            n_rows / 8 * 8
        };
        else 0
    );
    for i in i0..n_rows {
        let r = &rows[i * c..(i + 1) * c];
        for k in 0..kn {
            out[i * kn + k] = dot(r, &h[k * c..(k + 1) * c]);
        }
    }
}

/// In-place LayerNorm of one row.
pub fn layer_norm_row_inplace(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = x.len();
    assert!(w.len() == n && b.len() == n);
    // The vector build reads every element of the row before writing it back, so it may run in place.
    dispatch!(
        Avx2 => {
            let p = x.as_mut_ptr();
            avx::layer_norm_row(
                std::slice::from_raw_parts(p, n),
                std::slice::from_raw_parts_mut(p, n),
                w,
                b,
                eps,
            );
        };
        else {
            let src = x.to_vec();
            layer_norm_row(&src, x, w, b, eps);
        }
    )
}

/// Dot product (8 lanes, then a horizontal sum).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    dispatch!(
        Avx2 => avx::dot(a, b);
        else a.iter().zip(b).map(|(x, y)| x * y).sum()
    )
}

/// Softmax over `t` values interleaved with stride `h`: for each j < h, over `row[i·h + j]`, i < t (one
/// group per attention head, the heads innermost).
pub fn softmax_interleaved(row: &mut [f32], t: usize, h: usize) {
    assert_eq!(row.len(), t * h);
    if t == 0 {
        return;
    }
    if dispatch!(
        Avx2 if h.is_multiple_of(8) => {
            avx::softmax_interleaved(row, t, h);
            true
        };
        else false
    ) {
        return;
    }
    for j in 0..h {
        let m = (0..t).fold(f32::NEG_INFINITY, |a, i| a.max(row[i * h + j]));
        let mut sum = 0.0;
        for i in 0..t {
            let e = exp_scalar(row[i * h + j] - m);
            row[i * h + j] = e;
            sum += e;
        }
        let inv = 1.0 / sum;
        for i in 0..t {
            row[i * h + j] *= inv;
        }
    }
}

/// In-place LayerNorm of every row of length `w.len()`.
pub fn layer_norm_rows_inplace(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let c = w.len();
    assert!(b.len() == c);
    // Blocks of 8 rows of c values (c a multiple of 8, w and b of length c) by the vector build, the rest here.
    let rest: &mut [f32] = dispatch!(
        Avx2 if c.is_multiple_of(8) => {
            let mut blocks = x.chunks_exact_mut(8 * c);
            for blk in &mut blocks {
                avx::layer_norm_rows8(blk, c, w, b, eps);
            }
            blocks.into_remainder()
        };
        else x
    );
    for row in rest.chunks_exact_mut(c) {
        layer_norm_row_inplace(row, w, b, eps);
    }
}

/// The builds of the width-generic kernels at one level (capped at the CPU's), for checking that every width
/// gives the same bits.
#[cfg(test)]
pub(crate) mod at_level {
    use super::super::cpu::{isa, Isa};
    use super::*;

    fn level(want: Isa) -> Isa {
        want.min(isa())
    }

    /// [`exp_inplace`](super::exp_inplace) at `want`.
    pub(crate) fn exp_inplace(want: Isa, x: &mut [f32]) {
        match level(want) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level is at most the CPU's.
            Isa::Avx512 => unsafe { lanes::avx512::exp_inplace(x) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level is at most the CPU's.
            Isa::Avx2 => unsafe { lanes::avx2::exp_inplace(x) },
            _ => x.iter_mut().for_each(|v| *v = exp_scalar(*v)),
        }
    }

    /// [`gelu_inplace`](super::gelu_inplace) at `want`.
    pub(crate) fn gelu_inplace(want: Isa, x: &mut [f32]) {
        match level(want) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level is at most the CPU's.
            Isa::Avx512 => unsafe { lanes::avx512::gelu_inplace(x) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level is at most the CPU's.
            Isa::Avx2 => unsafe { lanes::avx2::gelu_inplace(x) },
            _ => x.iter_mut().for_each(|v| *v = gelu_scalar(*v)),
        }
    }

    /// [`exp_sub_sum`](super::exp_sub_sum) at `want`.
    pub(crate) fn exp_sub_sum(want: Isa, x: &mut [f32], m: f32) -> f32 {
        match level(want) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level is at most the CPU's.
            Isa::Avx512 => unsafe { lanes::avx512::exp_sub_sum(x, m) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the level is at most the CPU's.
            Isa::Avx2 => unsafe { lanes::avx2::exp_sub_sum(x, m) },
            _ => super::exp_sub_sum_scalar(x, m),
        }
    }
}
