//! Image and mask resizing, exactly as the official pipeline does it.
//!
//! * [`resized_size`]: `ResizeLongestSide.get_preprocess_shape` (long side to 1024, `int(x + 0.5)`).
//! * [`resize_bilinear_u8`]: Pillow's `Image.resize(size, Image.BILINEAR)` on 8-bit images, bit for bit (the
//!   resampler behind `ResizeLongestSide.apply_image`): antialiased triangle filter, 22-bit fixed point,
//!   two separable passes through a `u8` intermediate.
//! * [`interpolate_bilinear`]: PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` (no antialias) on a
//!   stack of `f32` planes, bit-identical to the generic CPU kernel (`f32` indices and weights, FMA).
//! * [`postprocess_masks`]: `Sam.postprocess_masks` (upsample to the padded input, crop, resize to the original).
//! * [`ImageResizer`]: the bookkeeping between an original image, its resized copy and the padded model input.
//!
//! Layouts: images are interleaved `(H, W, C)` row-major `u8`; planes are `(P, H, W)` row-major `f32`.

use rayon::prelude::*;

use crate::error::{Error, Result};

/// The official `ResizeLongestSide.get_preprocess_shape(h, w, long_side)`: the size `(new_h, new_w)` whose longer
/// side is `long_side`, each side rounded half up (`scale = long_side / max(h, w)` in `f64`, `int(x * scale + 0.5)`).
///
/// `(1500, 2250, 1024)` gives `(683, 1024)`; `(375, 500, 1024)` gives `(768, 1024)`. A zero side gives 0 on that side
/// (and `(0, 0)` for an empty size).
pub fn resized_size(h: usize, w: usize, long_side: usize) -> (usize, usize) {
    let longest = h.max(w);
    if longest == 0 {
        return (0, 0);
    }
    let scale = long_side as f64 * 1.0 / longest as f64;
    let (new_h, new_w) = (h as f64 * scale, w as f64 * scale);
    // Python's `int()` truncates; the values are non-negative so `as usize` (which truncates) matches.
    ((new_h + 0.5) as usize, (new_w + 0.5) as usize)
}

// ---------------------------------------------------------------------------------------------------------------
// Pillow bilinear (libImaging/Resample.c)
// ---------------------------------------------------------------------------------------------------------------

/// Fractional bits of Pillow's 8-bit fixed-point coefficients (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Integer filter coefficients of one separable pass (Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`).
struct PillowCoeffs {
    /// Maximum number of taps per output sample (`ksize`); row `i` of `weights` is `weights[i * ksize..]`.
    ksize: usize,
    /// `(first input index, number of taps)` per output sample.
    bounds: Vec<(usize, usize)>,
    /// Fixed-point weights, `out_size × ksize`, zero beyond each sample's tap count.
    weights: Vec<i32>,
}

impl PillowCoeffs {
    /// Coefficients of the bilinear (triangle, support 1) filter resampling `in_size` samples to `out_size`,
    /// for the default box `(0, in_size)`. Both sizes must be non-zero.
    fn bilinear(in_size: usize, out_size: usize) -> Self {
        // `filterscale = scale = (double)(in1 - in0) / outSize` with `in0 = 0.0f`, `in1 = (float)inSize`.
        let scale = (in_size as f32) as f64 / out_size as f64;
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = 1.0 * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = 0.0 + (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero, as `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let xmax = xmax.clamp(0, ksize as i64) as usize;
            let xmin = xmin as usize;
            let mut ww = 0.0f64;
            for (x, kx) in k.iter_mut().enumerate().take(xmax) {
                let w = triangle(((x + xmin) as f64 - center + 0.5) * inv_filterscale);
                *kx = w;
                ww += w;
            }
            if ww != 0.0 {
                for kx in k.iter_mut().take(xmax) {
                    *kx /= ww;
                }
            }
            let row = &mut weights[xx * ksize..(xx + 1) * ksize];
            for (dst, &kx) in row.iter_mut().zip(k.iter()).take(xmax) {
                *dst = if kx < 0.0 {
                    (-0.5 + kx * (1i64 << PRECISION_BITS) as f64) as i32
                } else {
                    (0.5 + kx * (1i64 << PRECISION_BITS) as f64) as i32
                };
            }
            bounds.push((xmin, xmax));
        }
        Self {
            ksize,
            bounds,
            weights,
        }
    }

    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[i];
        (start, &self.weights[i * self.ksize..i * self.ksize + n])
    }
}

/// Pillow's `bilinear_filter`.
#[inline]
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `clip8`: fixed-point accumulator to `u8` (shift, then saturate).
#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass on `rows` rows of `src` (width `in_w`, starting at row `row0`) into `dst` (width `out_w`).
fn pillow_horizontal(
    src: &[u8],
    in_w: usize,
    row0: usize,
    channels: usize,
    coeffs: &PillowCoeffs,
    dst: &mut [u8],
) {
    let out_w = coeffs.bounds.len();
    let in_row = in_w * channels;
    let out_row = out_w * channels;
    if out_row == 0 {
        return;
    }
    dst.par_chunks_mut(out_row)
        .enumerate()
        .for_each(|(y, out)| {
            let line = &src[(row0 + y) * in_row..(row0 + y + 1) * in_row];
            match channels {
                1 => horizontal_line::<1>(line, coeffs, out),
                2 => horizontal_line::<2>(line, coeffs, out),
                3 => horizontal_line::<3>(line, coeffs, out),
                4 => horizontal_line::<4>(line, coeffs, out),
                _ => horizontal_line_dyn(line, channels, coeffs, out),
            }
        });
}

#[inline(always)]
fn horizontal_line<const C: usize>(line: &[u8], coeffs: &PillowCoeffs, out: &mut [u8]) {
    for (xx, px) in out.chunks_exact_mut(C).enumerate() {
        let (start, k) = coeffs.taps(xx);
        let taps = &line[start * C..(start + k.len()) * C];
        let mut acc = [ROUNDING; C];
        for (p, &w) in taps.chunks_exact(C).zip(k) {
            for c in 0..C {
                // Wrapping as C's int does (it cannot overflow for realistic sizes).
                acc[c] = acc[c].wrapping_add(p[c] as i32 * w);
            }
        }
        for c in 0..C {
            px[c] = clip8(acc[c]);
        }
    }
}

fn horizontal_line_dyn(line: &[u8], channels: usize, coeffs: &PillowCoeffs, out: &mut [u8]) {
    let mut acc = vec![0i32; channels];
    for (xx, px) in out.chunks_exact_mut(channels).enumerate() {
        let (start, k) = coeffs.taps(xx);
        acc.fill(ROUNDING);
        let taps = &line[start * channels..(start + k.len()) * channels];
        for (p, &w) in taps.chunks_exact(channels).zip(k) {
            for (a, &v) in acc.iter_mut().zip(p) {
                *a = a.wrapping_add(v as i32 * w);
            }
        }
        for (o, &a) in px.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
}

/// Vertical pass: `dst` row `yy` mixes rows `bounds[yy].0 - row_shift ..` of `src` (row length `row_len` bytes).
fn pillow_vertical(
    src: &[u8],
    row_len: usize,
    row_shift: usize,
    coeffs: &PillowCoeffs,
    dst: &mut [u8],
) {
    if row_len == 0 {
        return;
    }
    dst.par_chunks_mut(row_len).enumerate().for_each_init(
        || vec![0i32; row_len],
        |acc, (yy, out)| {
            let (start, k) = coeffs.taps(yy);
            let start = start - row_shift;
            acc.fill(ROUNDING);
            // Integer sums are exact, so accumulating tap by tap gives Pillow's per-pixel sums.
            for (t, &w) in k.iter().enumerate() {
                let line = &src[(start + t) * row_len..(start + t + 1) * row_len];
                for (a, &v) in acc.iter_mut().zip(line) {
                    *a = a.wrapping_add(v as i32 * w);
                }
            }
            for (o, &a) in out.iter_mut().zip(acc.iter()) {
                *o = clip8(a);
            }
        },
    );
}

/// Resize an interleaved 8-bit image `(h, w, channels)` to `(out_h, out_w, channels)` exactly as Pillow's
/// `Image.resize((out_w, out_h), Image.BILINEAR)` does for modes `L`, `La`, `RGB`, `RGBa`/`RGBX`/`CMYK` (every
/// channel is filtered independently; no alpha premultiplication, so pass premultiplied data for RGBA).
///
/// Mirrors `libImaging/Resample.c`: antialiased triangle filter (support scaled by `max(in/out, 1)`), per-output
/// coefficients normalised then converted to 22-bit fixed point, a horizontal pass over only the rows the vertical
/// pass needs into a `u8` intermediate, then the vertical pass; the vertical pass runs first when the height shrinks
/// by more than twice as many pixels as the width; a pass whose size is unchanged is skipped.
///
/// Errors if a size or `channels` is zero or `src.len() != h * w * channels`.
pub fn resize_bilinear_u8(
    src: &[u8],
    h: usize,
    w: usize,
    channels: usize,
    out_h: usize,
    out_w: usize,
) -> Result<Vec<u8>> {
    if h == 0 || w == 0 {
        return Err(Error::arg("src", format!("empty image ({h}×{w})")));
    }
    if out_h == 0 || out_w == 0 {
        return Err(Error::arg(
            "out_size",
            format!("empty output size ({out_h}×{out_w})"),
        ));
    }
    if channels == 0 {
        return Err(Error::arg("channels", "must be at least 1"));
    }
    let expected = h.checked_mul(w).and_then(|n| n.checked_mul(channels));
    if expected != Some(src.len()) {
        return Err(Error::arg(
            "src",
            format!("{} bytes for a {h}×{w}×{channels} image", src.len()),
        ));
    }
    // Output and intermediate buffers (out_h × w and h × out_w) must be addressable.
    let fits = |a: usize, b: usize| {
        a.checked_mul(b)
            .and_then(|n| n.checked_mul(channels))
            .is_some()
    };
    if !fits(out_h, out_w) || !fits(out_h, w) || !fits(h, out_w) || h.max(w) > i32::MAX as usize {
        return Err(Error::arg(
            "out_size",
            format!("output size {out_h}×{out_w}×{channels} is too large"),
        ));
    }
    let need_horizontal = out_w != w;
    let need_vertical = out_h != h;
    // ImagingResampleInner's signed size differences.
    let (dh, dw) = (h as i64 - out_h as i64, w as i64 - out_w as i64);
    let horizontal_first = !(dh > 0 && dh > dw * 2);

    if !need_horizontal && !need_vertical {
        return Ok(src.to_vec());
    }
    let vert = ((need_horizontal && horizontal_first) || need_vertical)
        .then(|| PillowCoeffs::bilinear(h, out_h));
    let horiz = need_horizontal.then(|| PillowCoeffs::bilinear(w, out_w));

    match (horiz, vert) {
        (Some(horiz), vert) if horizontal_first => {
            // Rows of the source the vertical pass reads (all of them when there is no vertical pass).
            let vert = vert.unwrap_or_else(|| PillowCoeffs::bilinear(h, out_h));
            let first = vert.bounds[0].0;
            let (last_start, last_n) = vert.bounds[out_h - 1];
            let last = last_start + last_n;
            let mut tmp = vec![0u8; (last - first) * out_w * channels];
            pillow_horizontal(src, w, first, channels, &horiz, &mut tmp);
            if !need_vertical {
                return Ok(tmp);
            }
            let mut out = vec![0u8; out_h * out_w * channels];
            pillow_vertical(&tmp, out_w * channels, first, &vert, &mut out);
            Ok(out)
        }
        (horiz, Some(vert)) => {
            // Vertical first (or vertical only).
            let mut tmp = vec![0u8; out_h * w * channels];
            pillow_vertical(src, w * channels, 0, &vert, &mut tmp);
            match horiz {
                None => Ok(tmp),
                Some(horiz) => {
                    let mut out = vec![0u8; out_h * out_w * channels];
                    pillow_horizontal(&tmp, w, 0, channels, &horiz, &mut out);
                    Ok(out)
                }
            }
        }
        // need_horizontal && !horizontal_first implies a vertical pass, and (None, None) returned above.
        (_, None) => Ok(src.to_vec()),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// PyTorch bilinear (aten/src/ATen/native/cpu/UpSampleKernel.cpp, align_corners=False, no antialias)
// ---------------------------------------------------------------------------------------------------------------

/// Source indices and weights of one axis: output `i` reads `(i0, i1)` with weights `(w0, w1)`.
#[derive(Debug, Clone)]
struct AxisTaps {
    i0: Vec<usize>,
    i1: Vec<usize>,
    w0: Vec<f32>,
    w1: Vec<f32>,
    /// `i0` and `i1` as `i32` (for vector permutes), when every index fits.
    i32s: Option<(Vec<i32>, Vec<i32>)>,
}

impl AxisTaps {
    /// PyTorch's `compute_source_index_and_lambda` for the first `count` outputs of an `in_size → out_size` resize
    /// (`count <= out_size`; computing a prefix is how a crop of the output is produced without the rest).
    fn torch(in_size: usize, out_size: usize, count: usize) -> Self {
        // area_pixel_compute_scale<float>: static_cast<float>(input_size) / output_size, in f32.
        let scale = in_size as f32 / out_size as f32;
        let mut t = Self {
            i0: Vec::with_capacity(count),
            i1: Vec::with_capacity(count),
            w0: Vec::with_capacity(count),
            w1: Vec::with_capacity(count),
            i32s: None,
        };
        for dst in 0..count {
            if in_size == out_size {
                t.i0.push(dst);
                t.i1.push(dst);
                t.w0.push(1.0);
                t.w1.push(0.0);
                continue;
            }
            // area_pixel_compute_source_index (align_corners=False, not cubic): clamp negatives to 0.
            let real = scale * (dst as f32 + 0.5) - 0.5;
            let real = if real < 0.0 { 0.0 } else { real };
            // guard_index_and_lambda.
            let i0 = (real.floor() as usize).min(in_size - 1);
            let lambda1 = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            t.i0.push(i0);
            t.i1.push(i1);
            t.w0.push(1.0 - lambda1);
            t.w1.push(lambda1);
        }
        if i32::try_from(in_size).is_ok() {
            let narrow = |v: &[usize]| v.iter().map(|&i| i as i32).collect();
            t.i32s = Some((narrow(&t.i0), narrow(&t.i1)));
        }
        t
    }

    fn len(&self) -> usize {
        self.i0.len()
    }

    /// One past the largest source index read.
    fn extent(&self) -> usize {
        self.i1.iter().copied().max().map_or(0, |m| m + 1)
    }
}

/// Separable bilinear on `planes` planes of `in_h × in_w`: output `(planes, rows.len(), cols.len())`.
///
/// Each output is `fma(t0, h0, t1 * h1)` with `t = fma(x[i0], w0, x[i1] * w1)` along the width, exactly the
/// arithmetic of PyTorch's generic CPU kernel (`upsample_generic_Nd_kernel_impl`, built with FMA contraction); the
/// width-interpolated rows are computed once and shared, which changes no value.
fn interpolate_taps(
    src: &[f32],
    planes: usize,
    in_h: usize,
    in_w: usize,
    rows: &AxisTaps,
    cols: &AxisTaps,
) -> Vec<f32> {
    let mut out = vec![0f32; planes * rows.len() * cols.len()];
    interpolate_taps_into(src, planes, in_h, in_w, rows, cols, &mut out, lerp_rows);
    out
}

/// The separable bilinear of [`interpolate_taps`] into `out` (planes × rows × cols); `emit(fma, t0, t1, h0, h1,
/// out_row)` writes one output row from its two width-interpolated source rows.
#[allow(clippy::too_many_arguments)]
fn interpolate_taps_into<T: Send>(
    src: &[f32],
    planes: usize,
    in_h: usize,
    in_w: usize,
    rows: &AxisTaps,
    cols: &AxisTaps,
    out: &mut [T],
    emit: impl Fn(bool, &[f32], &[f32], f32, f32, &mut [T]) + Sync,
) {
    let (out_h, out_w) = (rows.len(), cols.len());
    if out.is_empty() {
        return;
    }
    // Rows of each input plane that are read.
    let used_h = rows.extent();
    let fma = has_hardware_fma();
    crate::kernels::with_scratch([planes * used_h * out_w], |[tmp]| {
        tmp.par_chunks_mut(out_w).enumerate().for_each(|(r, t)| {
            let (p, y) = (r / used_h, r % used_h);
            let line = &src[(p * in_h + y) * in_w..(p * in_h + y + 1) * in_w];
            lerp_gather(fma, line, cols, t);
        });
        let tmp = &*tmp;
        out.par_chunks_mut(out_w).enumerate().for_each(|(r, o)| {
            let (p, i) = (r / out_h, r % out_h);
            let base = p * used_h;
            let t0 = &tmp[(base + rows.i0[i]) * out_w..(base + rows.i0[i] + 1) * out_w];
            let t1 = &tmp[(base + rows.i1[i]) * out_w..(base + rows.i1[i] + 1) * out_w];
            emit(fma, t0, t1, rows.w0[i], rows.w1[i], o);
        });
    })
}

// PyTorch's kernel is compiled with FMA contraction: `a * w0 + b * w1` is evaluated as `fma(a, w0, b * w1)`.
// `f32::mul_add` is exact (one rounding) everywhere, but without the `fma` target feature it is a libm call; the
// row kernels below are therefore also compiled with the feature enabled and chosen at run time. Both give the
// same bits.

fn has_hardware_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[j] = fma(line[i0[j]], w0[j], line[i1[j]] * w1[j])`.
#[inline(always)]
fn lerp_gather_impl(line: &[f32], cols: &AxisTaps, out: &mut [f32]) {
    for ((((v, &i0), &i1), &w0), &w1) in out
        .iter_mut()
        .zip(&cols.i0)
        .zip(&cols.i1)
        .zip(&cols.w0)
        .zip(&cols.w1)
    {
        *v = line[i0].mul_add(w0, line[i1] * w1);
    }
}

/// `out[j] = fma(t0[j], h0, t1[j] * h1)`.
#[inline(always)]
fn lerp_rows_impl(t0: &[f32], t1: &[f32], h0: f32, h1: f32, out: &mut [f32]) {
    for ((v, &a), &b) in out.iter_mut().zip(t0).zip(t1) {
        *v = a.mul_add(h0, b * h1);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn lerp_gather_fma(line: &[f32], cols: &AxisTaps, out: &mut [f32]) {
    lerp_gather_impl(line, cols, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn lerp_rows_fma(t0: &[f32], t1: &[f32], h0: f32, h1: f32, out: &mut [f32]) {
    lerp_rows_impl(t0, t1, h0, h1, out)
}

/// [`lerp_gather_impl`] with AVX-512: each block of 16 outputs whose taps lie within 32 consecutive inputs takes
/// them from two loaded vectors by a permute (the same `fma(a, w0, b·w1)` per element, so the same bits); other
/// blocks and the tail are computed one by one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn lerp_gather_avx512(line: &[f32], cols: &AxisTaps, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len().min(cols.len());
    let Some((k0, k1)) = cols.i32s.as_ref() else {
        return lerp_gather_impl(line, cols, out);
    };
    let one = |j: usize| line[cols.i0[j]].mul_add(cols.w0[j], line[cols.i1[j]] * cols.w1[j]);
    let lanes = |k: usize| -> __mmask16 { ((1u32 << k.min(16)) - 1) as __mmask16 };
    let mut j = 0;
    while j + 16 <= n {
        let (base, top) = (cols.i0[j], cols.i1[j + 15]);
        if top - base < 32 && top < line.len() {
            let avail = line.len() - base;
            let p = line.as_ptr().wrapping_add(base);
            // Masked loads read nothing past the end of `line`.
            let lo = _mm512_maskz_loadu_ps(lanes(avail), p);
            let hi = _mm512_maskz_loadu_ps(lanes(avail.saturating_sub(16)), p.wrapping_add(16));
            let b = _mm512_set1_epi32(base as i32);
            let ia = _mm512_sub_epi32(_mm512_loadu_epi32(k0.as_ptr().add(j)), b);
            let ib = _mm512_sub_epi32(_mm512_loadu_epi32(k1.as_ptr().add(j)), b);
            let a = _mm512_permutex2var_ps(lo, ia, hi);
            let c = _mm512_permutex2var_ps(lo, ib, hi);
            let w0 = _mm512_loadu_ps(cols.w0.as_ptr().add(j));
            let w1 = _mm512_loadu_ps(cols.w1.as_ptr().add(j));
            let v = _mm512_fmadd_ps(a, w0, _mm512_mul_ps(c, w1));
            _mm512_storeu_ps(out.as_mut_ptr().add(j), v);
        } else {
            for (jj, o) in out[j..j + 16].iter_mut().enumerate() {
                *o = one(j + jj);
            }
        }
        j += 16;
    }
    for (jj, o) in out.iter_mut().enumerate().take(n).skip(j) {
        *o = one(jj);
    }
}

fn lerp_gather(fma: bool, line: &[f32], cols: &AxisTaps, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if fma && crate::kernels::math::has_avx512() {
        // SAFETY: AVX-512F, AVX2 and FMA are available.
        return unsafe { lerp_gather_avx512(line, cols, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if fma {
        // SAFETY: `fma` is true only when the CPU supports the `fma` target feature.
        return unsafe { lerp_gather_fma(line, cols, out) };
    }
    let _ = fma;
    lerp_gather_impl(line, cols, out)
}

fn lerp_rows(fma: bool, t0: &[f32], t1: &[f32], h0: f32, h1: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if fma {
        // SAFETY: `fma` is true only when the CPU supports the `fma` target feature.
        return unsafe { lerp_rows_fma(t0, t1, h0, h1, out) };
    }
    let _ = fma;
    lerp_rows_impl(t0, t1, h0, h1, out)
}

/// `a * b * c`, or an error naming `what` when it overflows.
fn volume(what: &'static str, a: usize, b: usize, c: usize) -> Result<usize> {
    a.checked_mul(b)
        .and_then(|n| n.checked_mul(c))
        .ok_or_else(|| Error::arg(what, format!("size {a}×{b}×{c} is too large")))
}

fn check_planes(src: &[f32], planes: usize, in_h: usize, in_w: usize) -> Result<()> {
    let expected = planes.checked_mul(in_h).and_then(|n| n.checked_mul(in_w));
    if expected != Some(src.len()) {
        return Err(Error::arg(
            "src",
            format!("{} values for {planes} planes of {in_h}×{in_w}", src.len()),
        ));
    }
    Ok(())
}

/// Resize a stack of planes `(planes, in_h, in_w)` to `(planes, out_h, out_w)` as PyTorch's
/// `F.interpolate(x, (out_h, out_w), mode="bilinear", align_corners=False)` (no antialias, also when downsampling)
/// does on the CPU in `f32`: `scale = in / out` (f32), `src = max((dst + 0.5) * scale - 0.5, 0)`, `i0 = floor(src)`,
/// `i1 = min(i0 + 1, in - 1)`, `λ = src - i0`; an unchanged side is copied; each output is
/// `fma(t0, 1 - λh, t1 * λh)` with `t = fma(x0, 1 - λw, x1 * λw)`.
///
/// Bit-identical to PyTorch's generic CPU kernel, which serves every `mode="linear"` call (with `in_h = out_h = 1`,
/// e.g. `get_rel_pos`) and every bilinear call on NCHW input except two cases that take its vectorised
/// channels-last kernel: outputs with `out_h + out_w <= 128`, and 3 channels with a single torch thread. That
/// kernel rounds differently (its source index and four-term sum; differences up to ~1e-5 on values ~10).
///
/// Errors if `src.len() != planes * in_h * in_w`, or if an input side is zero while the output is not empty.
pub fn interpolate_bilinear(
    src: &[f32],
    planes: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Result<Vec<f32>> {
    check_planes(src, planes, in_h, in_w)?;
    if volume("out_size", planes, out_h, out_w)? == 0 {
        return Ok(Vec::new());
    }
    if in_h == 0 || in_w == 0 {
        return Err(Error::arg(
            "src",
            format!("cannot resize empty {in_h}×{in_w} planes to {out_h}×{out_w}"),
        ));
    }
    // Intermediate buffer: the width-interpolated input rows.
    volume("out_size", planes, in_h, out_w)?;
    let rows = AxisTaps::torch(in_h, out_h, out_h);
    let cols = AxisTaps::torch(in_w, out_w, out_w);
    Ok(interpolate_taps(src, planes, in_h, in_w, &rows, &cols))
}

/// The official `Sam.postprocess_masks`: bilinearly upsample mask logits `(planes, mask_h, mask_w)` to the padded
/// model input `input_size` (e.g. 1024×1024), crop to the unpadded `resized_size` (e.g. 683×1024), and bilinearly
/// resize to `original_size` `(h0, w0)`. Returns `(planes, h0, w0)` logits (threshold with `> 0.0` for masks).
///
/// Only the kept part of the first upsampling is computed; the values are identical to upsample-then-crop.
/// Errors if `low_res.len() != planes * mask_h * mask_w`, if a size is zero, or if `resized_size` is larger than
/// `input_size`.
pub fn postprocess_masks(
    low_res: &[f32],
    planes: usize,
    mask_h: usize,
    mask_w: usize,
    input_size: (usize, usize),
    resized_size: (usize, usize),
    original_size: (usize, usize),
) -> Result<Vec<f32>> {
    let sizes = PostprocessSizes {
        mask: (mask_h, mask_w),
        input: input_size,
        resized: resized_size,
        original: original_size,
    };
    sizes.run(low_res, planes, |row, o| o.copy_from_slice(row))
}

/// [`postprocess_masks`] thresholded at `threshold` (`> threshold` is 1, else 0): binary masks
/// `(planes, h0, w0)` computed without keeping the logits at the original size. Same validation and errors.
#[allow(clippy::too_many_arguments)]
pub fn postprocess_masks_binary(
    low_res: &[f32],
    planes: usize,
    mask_h: usize,
    mask_w: usize,
    input_size: (usize, usize),
    resized_size: (usize, usize),
    original_size: (usize, usize),
    threshold: f32,
) -> Result<Vec<u8>> {
    let sizes = PostprocessSizes {
        mask: (mask_h, mask_w),
        input: input_size,
        resized: resized_size,
        original: original_size,
    };
    sizes.run(low_res, planes, |row, o| {
        for (b, &v) in o.iter_mut().zip(row) {
            *b = u8::from(v > threshold);
        }
    })
}

/// The sizes of the official mask post-processing: low-res masks → padded input (cropped to the resized image)
/// → original image.
struct PostprocessSizes {
    mask: (usize, usize),
    input: (usize, usize),
    resized: (usize, usize),
    original: (usize, usize),
}

impl PostprocessSizes {
    /// Check the sizes, then compute every output row with the official arithmetic; `emit(row, out_row)` turns
    /// a row of logits at the original size into the output's element type.
    fn run<T: Copy + Default + Send>(
        &self,
        low_res: &[f32],
        planes: usize,
        emit: impl Fn(&[f32], &mut [T]) + Sync,
    ) -> Result<Vec<T>> {
        let ((mask_h, mask_w), (ph, pw), (rh, rw), (h0, w0)) =
            (self.mask, self.input, self.resized, self.original);
        check_planes(low_res, planes, mask_h, mask_w)?;
        if mask_h == 0 || mask_w == 0 || ph == 0 || pw == 0 || rh == 0 || rw == 0 {
            return Err(Error::arg(
                "size",
                format!("empty size: masks {mask_h}×{mask_w}, input {ph}×{pw}, resized {rh}×{rw}"),
            ));
        }
        if rh > ph || rw > pw {
            return Err(Error::arg(
                "resized_size",
                format!("resized size {rh}×{rw} is larger than the input size {ph}×{pw}"),
            ));
        }
        if volume("original_size", planes, h0, w0)? == 0 {
            return Ok(Vec::new());
        }
        // Intermediate buffer: the width-interpolated low-res rows.
        volume("resized_size", planes, mask_h, rw)?;
        let mut out = vec![T::default(); planes * h0 * w0];
        // Upsampling to (ph, pw) then cropping to (rh, rw) equals computing the first rh rows / rw columns only.
        let rows = AxisTaps::torch(mask_h, ph, rh);
        let cols = AxisTaps::torch(mask_w, pw, rw);
        if (rh, rw) == (h0, w0) {
            // PyTorch copies a resize to the same size: one resize.
            interpolate_taps_into(
                low_res,
                planes,
                mask_h,
                mask_w,
                &rows,
                &cols,
                &mut out,
                |fma, t0, t1, h0, h1, o| {
                    crate::kernels::with_scratch([t0.len()], |[row]| {
                        lerp_rows(fma, t0, t1, h0, h1, row);
                        emit(row, o);
                    })
                },
            );
        } else {
            let rows2 = AxisTaps::torch(rh, h0, h0);
            let cols2 = AxisTaps::torch(rw, w0, w0);
            let stages = TwoStages {
                rows1: &rows,
                cols1: &cols,
                rows2: &rows2,
                cols2: &cols2,
            };
            stages.run(low_res, planes, mask_h, mask_w, &mut out, emit);
        }
        Ok(out)
    }
}

/// Two chained separable bilinear resizes — `rows1`/`cols1` from the source planes, then `rows2`/`cols2` from
/// that result — computed row by row without storing the intermediate image. Every value is computed with the
/// same operations as [`interpolate_taps`] applied twice (intermediate rows read by two output rows are
/// recomputed, which changes no bit).
struct TwoStages<'a> {
    rows1: &'a AxisTaps,
    cols1: &'a AxisTaps,
    rows2: &'a AxisTaps,
    cols2: &'a AxisTaps,
}

impl TwoStages<'_> {
    /// `src` (planes, in_h, in_w) → `out` (planes, rows2, cols2); `emit(row, out_row)` writes each final row.
    fn run<T: Send>(
        &self,
        src: &[f32],
        planes: usize,
        in_h: usize,
        in_w: usize,
        out: &mut [T],
        emit: impl Fn(&[f32], &mut [T]) + Sync,
    ) {
        let (mid_w, out_h, out_w) = (self.cols1.len(), self.rows2.len(), self.cols2.len());
        if out.is_empty() {
            return;
        }
        let used_h = self.rows1.extent();
        let fma = has_hardware_fma();
        let (rows1, cols2, rows2) = (self.rows1, self.cols2, self.rows2);
        crate::kernels::with_scratch([planes * used_h * mid_w], |[tmp]| {
            // The source rows interpolated along the width once.
            tmp.par_chunks_mut(mid_w).enumerate().for_each(|(r, t)| {
                let (p, y) = (r / used_h, r % used_h);
                let line = &src[(p * in_h + y) * in_w..(p * in_h + y + 1) * in_w];
                lerp_gather(fma, line, self.cols1, t);
            });
            let tmp = &*tmp;
            // Blocks of output rows; a block reuses the column-interpolated intermediate row shared by two
            // consecutive output rows (the same values, computed once).
            const BLOCK: usize = 16;
            out.par_chunks_mut(BLOCK * out_w)
                .enumerate()
                .for_each(|(blk, ob)| {
                    let mid_row = |base: usize, y: usize, dst: &mut [f32]| {
                        let t0 =
                            &tmp[(base + rows1.i0[y]) * mid_w..(base + rows1.i0[y] + 1) * mid_w];
                        let t1 =
                            &tmp[(base + rows1.i1[y]) * mid_w..(base + rows1.i1[y] + 1) * mid_w];
                        lerp_rows(fma, t0, t1, rows1.w0[y], rows1.w1[y], dst);
                    };
                    crate::kernels::with_scratch(
                        [mid_w, out_w, out_w, out_w],
                        |[mid, g0, g1, row]| {
                            // (plane, intermediate row) held in `g1`.
                            let mut held: Option<(usize, usize)> = None;
                            for (k, o) in ob.chunks_mut(out_w).enumerate() {
                                let r = blk * BLOCK + k;
                                let (p, i) = (r / out_h, r % out_h);
                                let base = p * used_h;
                                let (y0, y1) = (rows2.i0[i], rows2.i1[i]);
                                if held == Some((p, y0)) {
                                    g0.copy_from_slice(g1);
                                } else {
                                    mid_row(base, y0, mid);
                                    lerp_gather(fma, mid, cols2, g0);
                                }
                                if y1 == y0 {
                                    g1.copy_from_slice(g0);
                                } else {
                                    mid_row(base, y1, mid);
                                    lerp_gather(fma, mid, cols2, g1);
                                }
                                held = Some((p, y1));
                                lerp_rows(fma, g0, g1, rows2.w0[i], rows2.w1[i], row);
                                emit(row, o);
                            }
                        },
                    )
                });
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Area (box) resampling
// ---------------------------------------------------------------------------------------------------------------

/// Overlap weights of an area resize along one axis: output `i` covers `[i * s, (i + 1) * s)` with `s = in / out`.
fn area_taps(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    (0..out_size)
        .map(|i| {
            let (lo, hi) = (
                i as f64 * scale,
                ((i + 1) as f64 * scale).min(in_size as f64),
            );
            let first = (lo.floor() as usize).min(in_size - 1);
            let last = (hi.ceil() as usize).clamp(first + 1, in_size);
            let weights = (first..last)
                .map(|j| ((j + 1) as f64).min(hi) - (j as f64).max(lo))
                .map(|w| w.max(0.0) / scale)
                .collect();
            (first, weights)
        })
        .collect()
}

/// Resize planes `(planes, in_h, in_w)` to `(planes, out_h, out_w)` by area averaging (box filter over the exact
/// footprint of each output pixel, as `tf.image.resize(method="area")`); accumulates in `f64`.
///
/// Errors if `src.len() != planes * in_h * in_w` or the input is empty while the output is not.
pub fn resize_area(
    src: &[f32],
    planes: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
) -> Result<Vec<f32>> {
    check_planes(src, planes, in_h, in_w)?;
    if volume("out_size", planes, out_h, out_w)? == 0 {
        return Ok(Vec::new());
    }
    if in_h == 0 || in_w == 0 {
        return Err(Error::arg(
            "src",
            format!("cannot resize empty {in_h}×{in_w} planes to {out_h}×{out_w}"),
        ));
    }
    if (in_h, in_w) == (out_h, out_w) {
        return Ok(src.to_vec());
    }
    let rows = area_taps(in_h, out_h);
    let cols = area_taps(in_w, out_w);
    let mut out = vec![0f32; planes * out_h * out_w];
    out.par_chunks_mut(out_w).enumerate().for_each_init(
        || vec![0f64; in_w],
        |acc, (r, o)| {
            let (p, i) = (r / out_h, r % out_h);
            let (first, wy) = &rows[i];
            acc.fill(0.0);
            for (t, &w) in wy.iter().enumerate() {
                let line = &src[(p * in_h + first + t) * in_w..(p * in_h + first + t + 1) * in_w];
                for (a, &v) in acc.iter_mut().zip(line) {
                    *a += w * v as f64;
                }
            }
            for (v, (x0, wx)) in o.iter_mut().zip(&cols) {
                *v = wx.iter().zip(&acc[*x0..]).map(|(w, a)| w * a).sum::<f64>() as f32;
            }
        },
    );
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------------
// ImageResizer
// ---------------------------------------------------------------------------------------------------------------

/// Where the channel axis of a padded image or mask lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `(H, W, C)`, interleaved (images).
    #[default]
    ChannelsLast,
    /// `(C, H, W)`, planar (tensors, masks).
    ChannelsFirst,
}

/// The geometry between an original image (`src_size`), its resized copy (`rescaled_size`) and the zero-padded
/// model input (`dst_size`), all `(h, w)`, with the official resizing semantics:
///
/// * [`ImageResizer::new`]: the largest size that fits in `dst_size` keeping the aspect ratio
///   (`scale = min(H / h, W / w)`, each side `int(x * scale + 0.5)`, clamped to `dst_size`); for a square `dst_size`
///   this is exactly [`resized_size`] (`ResizeLongestSide`).
/// * [`ImageResizer::pad_only`]: no resize (`rescaled_size == src_size`), only padding to `dst_size`.
///
/// Per-axis coordinate factors are `scale_h = rescaled_h / src_h`, `scale_w = rescaled_w / src_w`, as
/// `ResizeLongestSide.apply_coords` uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageResizer {
    src_size: (usize, usize),
    dst_size: (usize, usize),
    rescaled_size: (usize, usize),
    scale_h: f64,
    scale_w: f64,
    pad_only: bool,
}

impl ImageResizer {
    /// Resize `src_size` to fit `dst_size` (long side to the target for a square target), then pad.
    pub fn new(src_size: (usize, usize), dst_size: (usize, usize)) -> Self {
        let (h, w) = src_size;
        let (dh, dw) = dst_size;
        let rescaled = if dh == dw {
            resized_size(h, w, dh)
        } else if h == 0 || w == 0 {
            (0, 0)
        } else {
            let scale = (dh as f64 / h as f64).min(dw as f64 / w as f64);
            (
                ((h as f64 * scale + 0.5) as usize).min(dh),
                ((w as f64 * scale + 0.5) as usize).min(dw),
            )
        };
        Self::with_rescaled(src_size, dst_size, rescaled, false)
    }

    /// No resize: the image keeps `src_size` and is only zero-padded to `dst_size` (the caller rounds `src_size` up,
    /// e.g. to a multiple of the patch size). A `dst_size` smaller than `src_size` is raised to `src_size`.
    pub fn pad_only(src_size: (usize, usize), dst_size: (usize, usize)) -> Self {
        let dst = (dst_size.0.max(src_size.0), dst_size.1.max(src_size.1));
        Self::with_rescaled(src_size, dst, src_size, true)
    }

    fn with_rescaled(
        src: (usize, usize),
        dst: (usize, usize),
        rescaled: (usize, usize),
        pad_only: bool,
    ) -> Self {
        let ratio = |new: usize, old: usize| {
            if old == 0 {
                1.0
            } else {
                new as f64 / old as f64
            }
        };
        Self {
            src_size: src,
            dst_size: dst,
            rescaled_size: rescaled,
            scale_h: ratio(rescaled.0, src.0),
            scale_w: ratio(rescaled.1, src.1),
            pad_only,
        }
    }

    /// Original image size `(h, w)`.
    pub fn src_size(&self) -> (usize, usize) {
        self.src_size
    }

    /// Padded model-input size `(H, W)`.
    pub fn dst_size(&self) -> (usize, usize) {
        self.dst_size
    }

    /// Size `(h', w')` of the resized, not yet padded image.
    pub fn rescaled_size(&self) -> (usize, usize) {
        self.rescaled_size
    }

    /// Vertical coordinate factor `h' / h`.
    pub fn scale_h(&self) -> f64 {
        self.scale_h
    }

    /// Horizontal coordinate factor `w' / w`.
    pub fn scale_w(&self) -> f64 {
        self.scale_w
    }

    /// Whether this resizer only pads (built with [`ImageResizer::pad_only`]).
    pub fn is_pad_only(&self) -> bool {
        self.pad_only
    }

    /// Resize an interleaved image `(h, w, channels)` at `src_size` to `rescaled_size` with Pillow's bilinear
    /// ([`resize_bilinear_u8`]); a copy when the sizes are equal.
    pub fn scale_image(&self, src: &[u8], channels: usize) -> Result<Vec<u8>> {
        resize_u8_or_copy(src, self.src_size, channels, self.rescaled_size)
    }

    /// Resize an interleaved image `(h', w', channels)` at `rescaled_size` back to `src_size` (Pillow bilinear).
    pub fn unscale_image(&self, src: &[u8], channels: usize) -> Result<Vec<u8>> {
        resize_u8_or_copy(src, self.rescaled_size, channels, self.src_size)
    }

    /// Resize planes `(planes, h', w')` at `rescaled_size` back to `(planes, h, w)` at `src_size` (PyTorch bilinear).
    pub fn unscale_planes(&self, src: &[f32], planes: usize) -> Result<Vec<f32>> {
        let (rh, rw) = self.rescaled_size;
        let (h, w) = self.src_size;
        interpolate_bilinear(src, planes, rh, rw, h, w)
    }

    /// Zero-pad an image at `rescaled_size` (bottom and right) to `dst_size`; `channels` interleaved
    /// ([`Layout::ChannelsLast`], `(h', w', C)` → `(H, W, C)`) or planar ([`Layout::ChannelsFirst`],
    /// `(C, h', w')` → `(C, H, W)`). Errors if `src` has the wrong length.
    pub fn pad_image<T: Copy + Default>(
        &self,
        src: &[T],
        channels: usize,
        layout: Layout,
    ) -> Result<Vec<T>> {
        let (h, w) = self.rescaled_size;
        let (ph, pw) = self.dst_size;
        if Some(src.len()) != h.checked_mul(w).and_then(|n| n.checked_mul(channels)) {
            return Err(Error::arg(
                "src",
                format!(
                    "{} values for a {h}×{w} image with {channels} channels",
                    src.len()
                ),
            ));
        }
        let mut out = vec![T::default(); volume("dst_size", ph, pw, channels)?];
        if src.is_empty() {
            return Ok(out);
        }
        match layout {
            Layout::ChannelsLast => {
                for (dst, row) in out
                    .chunks_exact_mut(pw * channels)
                    .zip(src.chunks_exact(w * channels))
                {
                    dst[..w * channels].copy_from_slice(row);
                }
            }
            Layout::ChannelsFirst => {
                for (dst, plane) in out.chunks_exact_mut(ph * pw).zip(src.chunks_exact(h * w)) {
                    for (d, row) in dst.chunks_exact_mut(pw).zip(plane.chunks_exact(w)) {
                        d[..w].copy_from_slice(row);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Mask logits `(planes, mask_h, mask_w)` to the original image: low-resolution logits (e.g. 256×256) or
    /// logits at `dst_size` are bilinearly resized to `dst_size`, cropped to `rescaled_size` and bilinearly resized to
    /// `src_size` (the official `postprocess_masks`). With `Some(t)`, values become `1.0` where `> t`, else `0.0`.
    /// Returns `(planes, h, w)`.
    pub fn postprocess_mask(
        &self,
        masks: &[f32],
        planes: usize,
        mask_size: (usize, usize),
        threshold: Option<f32>,
    ) -> Result<Vec<f32>> {
        let mut out = postprocess_masks(
            masks,
            planes,
            mask_size.0,
            mask_size.1,
            self.dst_size,
            self.rescaled_size,
            self.src_size,
        )?;
        if let Some(t) = threshold {
            out.par_iter_mut()
                .for_each(|v| *v = if *v > t { 1.0 } else { 0.0 });
        }
        Ok(out)
    }

    /// Full-resolution mask logits `(planes, h, w)` at `src_size` to the mask-prompt space `(planes, mh, mw)`:
    /// area-resize to `rescaled_size`, zero-pad to `dst_size`, area-resize to `mask_size`. There is no official
    /// counterpart (tfimm's `preprocess_masks` does the same with AREA). Errors on invalid input.
    pub fn mask_to_prompt(
        &self,
        masks: &[f32],
        planes: usize,
        mask_size: (usize, usize),
    ) -> Result<Vec<f32>> {
        let (h, w) = self.src_size;
        let (rh, rw) = self.rescaled_size;
        let scaled = resize_area(masks, planes, h, w, rh, rw)?;
        let padded = self.pad_image(&scaled, planes, Layout::ChannelsFirst)?;
        Self::scale_to_size(&padded, planes, self.dst_size, mask_size)
    }

    /// Area-resize planes `(planes, size.0, size.1)` to `(planes, to.0, to.1)` ([`resize_area`]).
    pub fn scale_to_size(
        src: &[f32],
        planes: usize,
        size: (usize, usize),
        to: (usize, usize),
    ) -> Result<Vec<f32>> {
        resize_area(src, planes, size.0, size.1, to.0, to.1)
    }

    /// A point `(x, y)` in original-image pixels to the resized frame: `x * w'/w`, `y * h'/h` in `f64` (numpy's
    /// `apply_coords`), then rounded to `f32` (`torch.as_tensor(..., dtype=torch.float)`).
    pub fn scale_point(&self, p: [f64; 2]) -> [f32; 2] {
        let [x, y] = self.scale_point_f64(p);
        [x as f32, y as f32]
    }

    /// [`ImageResizer::scale_point`] without the final rounding to `f32`.
    pub fn scale_point_f64(&self, p: [f64; 2]) -> [f64; 2] {
        [p[0] * self.scale_w, p[1] * self.scale_h]
    }

    /// [`ImageResizer::scale_point`] for many points `(N, 2)`.
    pub fn scale_points(&self, points: &[[f64; 2]]) -> Vec<[f32; 2]> {
        points.iter().map(|&p| self.scale_point(p)).collect()
    }

    /// A box `(x0, y0, x1, y1)` to the resized frame, corner by corner (`apply_boxes`), rounded to `f32`.
    pub fn scale_box(&self, b: [f64; 4]) -> [f32; 4] {
        let [x0, y0] = self.scale_point([b[0], b[1]]);
        let [x1, y1] = self.scale_point([b[2], b[3]]);
        [x0, y0, x1, y1]
    }

    /// [`ImageResizer::scale_box`] for many boxes `(N, 4)`.
    pub fn scale_boxes(&self, boxes: &[[f64; 4]]) -> Vec<[f32; 4]> {
        boxes.iter().map(|&b| self.scale_box(b)).collect()
    }

    /// Flat `f32` coordinates `[x, y, x, y, ...]` (points, or boxes as corner pairs) scaled in place, each product
    /// computed in `f64`. Errors if the length is odd.
    pub fn scale_coords_in_place(&self, coords: &mut [f32]) -> Result<()> {
        if !coords.len().is_multiple_of(2) {
            return Err(Error::arg(
                "coords",
                format!("odd length {} (expected x, y pairs)", coords.len()),
            ));
        }
        for xy in coords.chunks_exact_mut(2) {
            let [x, y] = self.scale_point([xy[0] as f64, xy[1] as f64]);
            xy[0] = x;
            xy[1] = y;
        }
        Ok(())
    }
}

fn resize_u8_or_copy(
    src: &[u8],
    from: (usize, usize),
    channels: usize,
    to: (usize, usize),
) -> Result<Vec<u8>> {
    if from == to {
        if Some(src.len())
            != from
                .0
                .checked_mul(from.1)
                .and_then(|n| n.checked_mul(channels))
        {
            return Err(Error::arg(
                "src",
                format!(
                    "{} bytes for a {}×{}×{channels} image",
                    src.len(),
                    from.0,
                    from.1
                ),
            ));
        }
        return Ok(src.to_vec());
    }
    resize_bilinear_u8(src, from.0, from.1, channels, to.0, to.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 gather-interpolation gives the same bits as the element-by-element one, for up- and
    /// downsampling, crops (prefixes), blocks that fall back, and lines of any length.
    #[test]
    fn lerp_gather_vector_path_is_bit_identical() {
        let sizes = [
            (256, 1024, 1024),
            (256, 1024, 683),
            (1024, 640, 640),
            (683, 427, 427),
            (64, 256, 256),
            (37, 21, 21),
            (5, 300, 300),
            (300, 5, 5),
            (1000, 17, 17),
            (16, 16, 16),
            (33, 70, 41),
        ];
        for (in_size, out_size, count) in sizes {
            let taps = AxisTaps::torch(in_size, out_size, count);
            let line: Vec<f32> = (0..in_size)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.013)
                .collect();
            // `mul_add` is fused with or without the `fma` target feature: the plain loop is the reference.
            let mut want = vec![0f32; count];
            lerp_gather_impl(&line, &taps, &mut want);
            let mut got = vec![f32::NAN; count];
            lerp_gather(has_hardware_fma(), &line, &taps, &mut got);
            for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    a.to_bits(),
                    b.to_bits(),
                    "{in_size}→{out_size} (first {count}), output {j}"
                );
            }
        }
    }

    #[test]
    fn resized_size_matches_official_examples() {
        assert_eq!(resized_size(1500, 2250, 1024), (683, 1024));
        assert_eq!(resized_size(375, 500, 1024), (768, 1024));
        assert_eq!(resized_size(0, 0, 1024), (0, 0));
    }

    #[test]
    fn interpolate_crop_prefix_equals_full_then_crop() {
        let src: Vec<f32> = (0..2 * 16 * 16)
            .map(|i| ((i * 7919) % 97) as f32 / 13.0 - 3.0)
            .collect();
        let full = interpolate_bilinear(&src, 2, 16, 16, 64, 64).unwrap();
        let rows = AxisTaps::torch(16, 64, 40);
        let cols = AxisTaps::torch(16, 64, 51);
        let cropped = interpolate_taps(&src, 2, 16, 16, &rows, &cols);
        for p in 0..2 {
            for y in 0..40 {
                for x in 0..51 {
                    assert_eq!(
                        cropped[(p * 40 + y) * 51 + x].to_bits(),
                        full[(p * 64 + y) * 64 + x].to_bits()
                    );
                }
            }
        }
    }

    #[test]
    fn area_preserves_constants_and_averages_blocks() {
        let src = vec![2.5f32; 3 * 10 * 7];
        let out = resize_area(&src, 3, 10, 7, 4, 3).unwrap();
        assert!(out.iter().all(|&v| (v - 2.5).abs() < 1e-6));
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let out = resize_area(&src, 1, 4, 4, 2, 2).unwrap();
        assert_eq!(out, vec![2.5, 4.5, 10.5, 12.5]);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(resize_bilinear_u8(&[0; 5], 2, 2, 1, 4, 4).is_err());
        assert!(resize_bilinear_u8(&[], 0, 2, 1, 4, 4).is_err());
        assert!(resize_bilinear_u8(&[0; 4], 2, 2, 1, 0, 4).is_err());
        assert!(interpolate_bilinear(&[0.0; 3], 1, 2, 2, 4, 4).is_err());
        assert!(interpolate_bilinear(&[], 1, 0, 2, 4, 4).is_err());
        assert!(interpolate_bilinear(&[], 1, 0, 2, 0, 4).unwrap().is_empty());
        assert!(postprocess_masks(&[0.0; 4], 1, 2, 2, (8, 8), (9, 8), (5, 5)).is_err());
        let r = ImageResizer::new((0, 0), (1024, 1024));
        assert_eq!(r.rescaled_size(), (0, 0));
    }
}
