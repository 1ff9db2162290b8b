//! Vectorised element-wise kernels on f32 slices: exp, exact GELU, softmax rows and LayerNorm rows.
//!
//! With AVX2 + FMA (detected at run time) eight lanes are processed at once; exp and GELU use sixteen with
//! AVX-512F (the same operations per lane, sums accumulated in the same order: the same bits). `exp` is a
//! Cephes-style polynomial (≈1 ulp, like Sleef's `expf_u10` in PyTorch's CPU kernels); GELU is the exact form
//! `0.5·x·(1 + erf(x/√2))` with a rational `erf` (|error| ≤ 3.5e-7, as accurate as PyTorch's vectorised CPU
//! `erf`, at half its cost). Other machines use scalar code with the same formulas.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Whether the AVX2 + FMA kernels can run on this machine.
#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

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

/// Whether the AVX-512F kernels (which also use AVX2 and FMA) can run on this machine.
#[inline]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2() && std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// 16-lane versions of the AVX2 kernels: the same operations in the same order per lane, so the same bits.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;

    #[inline(always)]
    unsafe fn gelu16(x: __m512) -> __m512 {
        let v = _mm512_mul_ps(x, _mm512_set1_ps(SQRT1_2));
        let v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-4.0)), _mm512_set1_ps(4.0));
        let v2 = _mm512_mul_ps(v, v);
        let mut p = _mm512_fmadd_ps(
            v2,
            _mm512_set1_ps(ERF_ALPHA[0]),
            _mm512_set1_ps(ERF_ALPHA[1]),
        );
        for &c in &ERF_ALPHA[2..] {
            p = _mm512_fmadd_ps(v2, p, _mm512_set1_ps(c));
        }
        p = _mm512_mul_ps(v, p);
        let mut q = _mm512_fmadd_ps(v2, _mm512_set1_ps(ERF_BETA[0]), _mm512_set1_ps(ERF_BETA[1]));
        for &c in &ERF_BETA[2..] {
            q = _mm512_fmadd_ps(v2, q, _mm512_set1_ps(c));
        }
        let erf = _mm512_div_ps(p, q);
        _mm512_mul_ps(
            _mm512_mul_ps(x, _mm512_set1_ps(0.5)),
            _mm512_add_ps(_mm512_set1_ps(1.0), erf),
        )
    }

    #[inline(always)]
    unsafe fn exp16(x: __m512) -> __m512 {
        let x = _mm512_min_ps(x, _mm512_set1_ps(EXP_HI));
        let x = _mm512_max_ps(x, _mm512_set1_ps(EXP_LO));
        let fx = _mm512_fmadd_ps(x, _mm512_set1_ps(LOG2E), _mm512_set1_ps(0.5));
        // Round towards −∞ (1), exceptions suppressed (8): `floor`.
        let fx = _mm512_roundscale_ps::<0x09>(fx);
        let r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(EXP_C1), x);
        let r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(EXP_C2), r);
        let z = _mm512_mul_ps(r, r);
        let mut y = _mm512_set1_ps(EXP_P[0]);
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P[1]));
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P[2]));
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P[3]));
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P[4]));
        y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(EXP_P[5]));
        y = _mm512_fmadd_ps(y, z, r);
        y = _mm512_add_ps(y, _mm512_set1_ps(1.0));
        let e = _mm512_cvttps_epi32(fx);
        let e = _mm512_add_epi32(e, _mm512_set1_epi32(127));
        let e = _mm512_max_epi32(e, _mm512_setzero_si512());
        let e = _mm512_slli_epi32::<23>(e);
        _mm512_mul_ps(y, _mm512_castsi512_ps(e))
    }

    /// Mask of the first `n` (≤ 16) lanes.
    #[inline(always)]
    fn first(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn exp_inplace(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            let v = _mm512_loadu_ps(c.as_ptr());
            _mm512_storeu_ps(c.as_mut_ptr(), exp16(v));
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let m = first(rest.len());
            let v = _mm512_maskz_loadu_ps(m, rest.as_ptr());
            _mm512_mask_storeu_ps(rest.as_mut_ptr(), m, exp16(v));
        }
    }

    /// As the AVX2 `exp_sub_sum`, with the sum accumulated in the same 8 lanes in the same order.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
        let n = x.len();
        let mv = _mm512_set1_ps(m);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x.as_ptr().add(i)), mv));
            _mm512_storeu_ps(x.as_mut_ptr().add(i), e);
            let lo = _mm512_castps512_ps256(e);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e)));
            acc = _mm256_add_ps(_mm256_add_ps(acc, lo), hi);
            i += 16;
        }
        if i + 8 <= n {
            let e = super::avx::exp8(_mm256_sub_ps(
                _mm256_loadu_ps(x.as_ptr().add(i)),
                _mm256_set1_ps(m),
            ));
            _mm256_storeu_ps(x.as_mut_ptr().add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut sum = super::avx::hsum(acc);
        if i < n {
            let e = super::avx::exp8(_mm256_sub_ps(
                super::avx::load_partial(&x[i..], m),
                _mm256_set1_ps(m),
            ));
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

    #[target_feature(enable = "avx512f")]
    pub unsafe fn gelu_inplace(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(32);
        for c in &mut chunks {
            let v0 = _mm512_loadu_ps(c.as_ptr());
            let v1 = _mm512_loadu_ps(c.as_ptr().add(16));
            let (g0, g1) = (gelu16(v0), gelu16(v1));
            _mm512_storeu_ps(c.as_mut_ptr(), g0);
            _mm512_storeu_ps(c.as_mut_ptr().add(16), g1);
        }
        for c in chunks.into_remainder().chunks_mut(16) {
            let m = first(c.len());
            let v = _mm512_maskz_loadu_ps(m, c.as_ptr());
            _mm512_mask_storeu_ps(c.as_mut_ptr(), m, gelu16(v));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::*;

    #[inline(always)]
    pub unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(x, _mm256_set1_ps(EXP_HI));
        let x = _mm256_max_ps(x, _mm256_set1_ps(EXP_LO));
        let fx = _mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), _mm256_set1_ps(0.5));
        let fx = _mm256_floor_ps(fx);
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(EXP_C1), x);
        let r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(EXP_C2), r);
        let z = _mm256_mul_ps(r, r);
        let mut y = _mm256_set1_ps(EXP_P[0]);
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P[1]));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P[2]));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P[3]));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P[4]));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(EXP_P[5]));
        y = _mm256_fmadd_ps(y, z, r);
        y = _mm256_add_ps(y, _mm256_set1_ps(1.0));
        let e = _mm256_cvttps_epi32(fx);
        let e = _mm256_add_epi32(e, _mm256_set1_epi32(127));
        let e = _mm256_max_epi32(e, _mm256_setzero_si256());
        let e = _mm256_slli_epi32::<23>(e);
        _mm256_mul_ps(y, _mm256_castsi256_ps(e))
    }

    #[inline(always)]
    pub unsafe fn gelu8(x: __m256) -> __m256 {
        let v = _mm256_mul_ps(x, _mm256_set1_ps(SQRT1_2));
        let v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-4.0)), _mm256_set1_ps(4.0));
        let v2 = _mm256_mul_ps(v, v);
        let mut p = _mm256_fmadd_ps(
            v2,
            _mm256_set1_ps(ERF_ALPHA[0]),
            _mm256_set1_ps(ERF_ALPHA[1]),
        );
        for &c in &ERF_ALPHA[2..] {
            p = _mm256_fmadd_ps(v2, p, _mm256_set1_ps(c));
        }
        p = _mm256_mul_ps(v, p);
        let mut q = _mm256_fmadd_ps(v2, _mm256_set1_ps(ERF_BETA[0]), _mm256_set1_ps(ERF_BETA[1]));
        for &c in &ERF_BETA[2..] {
            q = _mm256_fmadd_ps(v2, q, _mm256_set1_ps(c));
        }
        let erf = _mm256_div_ps(p, q);
        _mm256_mul_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(0.5)),
            _mm256_add_ps(_mm256_set1_ps(1.0), erf),
        )
    }

    #[inline(always)]
    pub unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

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
    #[inline(always)]
    pub unsafe fn load_partial(x: &[f32], fill: f32) -> __m256 {
        let mut buf = [fill; 8];
        buf[..x.len()].copy_from_slice(x);
        _mm256_loadu_ps(buf.as_ptr())
    }

    #[inline(always)]
    pub unsafe fn store_partial(x: &mut [f32], v: __m256) {
        let mut buf = [0f32; 8];
        _mm256_storeu_ps(buf.as_mut_ptr(), v);
        let n = x.len();
        x.copy_from_slice(&buf[..n]);
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_inplace(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            let v = _mm256_loadu_ps(c.as_ptr());
            _mm256_storeu_ps(c.as_mut_ptr(), exp8(v));
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = load_partial(rest, 0.0);
            store_partial(rest, exp8(v));
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_inplace(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            let v0 = _mm256_loadu_ps(c.as_ptr());
            let v1 = _mm256_loadu_ps(c.as_ptr().add(8));
            let (g0, g1) = (gelu8(v0), gelu8(v1));
            _mm256_storeu_ps(c.as_mut_ptr(), g0);
            _mm256_storeu_ps(c.as_mut_ptr().add(8), g1);
        }
        let mut chunks = chunks.into_remainder().chunks_exact_mut(8);
        for c in &mut chunks {
            let v = _mm256_loadu_ps(c.as_ptr());
            _mm256_storeu_ps(c.as_mut_ptr(), gelu8(v));
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let v = load_partial(rest, 0.0);
            store_partial(rest, gelu8(v));
        }
    }

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

    /// `x = exp(x − m)` in place; returns Σ.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
        let n = x.len();
        let mv = _mm256_set1_ps(m);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), mv));
            _mm256_storeu_ps(x.as_mut_ptr().add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut sum = hsum(acc);
        if i < n {
            let e = exp8(_mm256_sub_ps(load_partial(&x[i..], m), mv));
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

    /// In-place LayerNorm of 8 rows of `c` values (c a multiple of 8) at once: the per-row reductions end in
    /// one transposed horizontal sum for all 8 rows.
    /// Means and reciprocal standard deviations of 8 rows of `c` values at `p` (row r at `p + r·c`), from their
    /// sums (8 lanes per row): two-pass variance, `1 / √(var + eps)`.
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
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F (with AVX2 and FMA) is available.
        return unsafe { avx512::exp_inplace(x) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are available.
        return unsafe { avx::exp_inplace(x) };
    }
    x.iter_mut().for_each(|v| *v = exp_scalar(*v));
}

/// [`exp_inplace`] and [`exp_sub_sum`] without the AVX-512 kernels (8 lanes, or scalar code without AVX2), for
/// checking that both give the same bits.
#[doc(hidden)]
pub fn exp_8_lanes(x: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are available.
        return unsafe { avx::exp_sub_sum(x, m) };
    }
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = exp_scalar(*v - m);
        sum += *v;
    }
    sum
}

/// `x = GELU(x)` (exact, erf form) element-wise.
pub fn gelu_inplace(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F is available.
        return unsafe { avx512::gelu_inplace(x) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are available.
        return unsafe { avx::gelu_inplace(x) };
    }
    x.iter_mut().for_each(|v| *v = gelu_scalar(*v));
}

/// `x[r, :] = GELU(x[r, :] + bias)` for every row of length `bias.len()`.
pub fn bias_gelu_rows(x: &mut [f32], bias: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are available.
        return unsafe { avx::bias_gelu_rows(x, bias) };
    }
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v = gelu_scalar(*v + b);
        }
    }
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
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are available; `b` is at least as long as `x`.
        return unsafe { avx::add_add_max(x, a, b, m) };
    }
    x.iter_mut().zip(b).fold(m, |m, (v, &bv)| {
        *v = (*v + a) + bv;
        m.max(*v)
    })
}

/// The largest element of `x` (−∞ for an empty slice).
pub fn row_max(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are available.
        return unsafe { avx::row_max(x) };
    }
    x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// `x = exp(x − m)` in place; returns the sum. With `m ≥ max(x)` every value is at most 1.
pub fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: AVX-512F (with AVX2 and FMA) is available.
        return unsafe { avx512::exp_sub_sum(x, m) };
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are available.
        return unsafe { avx::exp_sub_sum(x, m) };
    }
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
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are available; lengths checked above.
        return unsafe { avx::layer_norm_row(src, dst, w, b, eps) };
    }
    let mean = src.iter().sum::<f32>() / n as f32;
    let var = src.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
    let rstd = 1.0 / (var + eps).sqrt();
    for i in 0..n {
        dst[i] = (src[i] - mean) * rstd * w[i] + b[i];
    }
    (mean, rstd)
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
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && c.is_multiple_of(8) {
        while done + 8 <= n {
            let o = done * c;
            // SAFETY: AVX2 + FMA available; 8 rows of c values (c a multiple of 8) from row `done` are in bounds
            // of every slice (lengths checked above); `y`, `out` and `xpe` are distinct mutable borrows.
            unsafe {
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
                )
            };
            done += 8;
        }
    }
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
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let (mut rb, mut cb) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        (rb, cb) = (rows / 8 * 8, cols / 8 * 8);
        // SAFETY: AVX2 available; the 8×8 blocks stay inside the bounds checked above.
        unsafe {
            let (ap, ald) = add.map_or((std::ptr::null(), 0), |(a, ld)| (a.as_ptr(), ld));
            avx::transpose_blocks(src.as_ptr(), lds, dst.as_mut_ptr(), ldd, rb, cb, ap, ald)
        };
    }
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
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are available; lengths checked above.
        return unsafe { avx::head_scores8(q, r, dh, k, t, out) };
    }
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

/// `out[i·kn + k] = rows[i] · h[k]` for `n_rows` rows of length `c` and `kn` vectors `h` (kn × c).
pub fn row_dots(rows: &[f32], c: usize, h: &[f32], kn: usize, out: &mut [f32]) {
    let n_rows = rows.len() / c;
    assert!(h.len() >= kn * c && out.len() >= n_rows * kn);
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut i0 = 0;
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && c.is_multiple_of(8) {
        // SAFETY: AVX2 + FMA available; blocks of 8 full rows within the bounds checked above.
        unsafe { avx::row_dots8(rows, c, h, kn, out, n_rows / 8) };
        i0 = n_rows / 8 * 8;
    }
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
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are available; lengths checked above. The kernel reads every element of the
        // row before writing it back.
        unsafe {
            let p = x.as_mut_ptr();
            avx::layer_norm_row(
                std::slice::from_raw_parts(p, n),
                std::slice::from_raw_parts_mut(p, n),
                w,
                b,
                eps,
            );
        }
        return;
    }
    let src = x.to_vec();
    layer_norm_row(&src, x, w, b, eps);
}

/// Dot product (8 lanes, then a horizontal sum).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are available; lengths checked above.
        return unsafe { avx::dot(a, b) };
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Softmax over `t` values interleaved with stride `h`: for each j < h, over `row[i·h + j]`, i < t (one
/// group per attention head, the heads innermost).
pub fn softmax_interleaved(row: &mut [f32], t: usize, h: usize) {
    assert_eq!(row.len(), t * h);
    if t == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && h.is_multiple_of(8) {
        // SAFETY: AVX2 + FMA available; length checked above.
        return unsafe { avx::softmax_interleaved(row, t, h) };
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
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut rest: &mut [f32] = x;
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && c.is_multiple_of(8) {
        let mut blocks = rest.chunks_exact_mut(8 * c);
        for blk in &mut blocks {
            // SAFETY: AVX2 + FMA available; 8 rows of c values, c a multiple of 8, w and b of length c.
            unsafe { avx::layer_norm_rows8(blk, c, w, b, eps) };
        }
        rest = blocks.into_remainder();
    }
    for row in rest.chunks_exact_mut(c) {
        layer_norm_row_inplace(row, w, b, eps);
    }
}
