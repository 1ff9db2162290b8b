//! A matrix product without packing, for small and medium shapes whose right-hand side is row-major (weights
//! stored (in, out), or activations): `C (m×n) = A (m×k) · B (k×n)`, with any strides for `A`.
//!
//! AVX2 + FMA micro-kernel of 6 rows × 16 columns (12 accumulators): per step of `k`, two loads of `B`, six
//! broadcasts of `A`, twelve FMAs. Row blocks are the inner loop, so a panel of `B` (k × 16) stays in L1/L2
//! while all rows of `A` stream past it. Without AVX2 the `gemm` crate is used.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::cpu::dispatch;
use super::{Mat, MatMut, Par};

/// A right-hand side (k × n) packed in panels of 16 columns (the last one zero-padded): panel `j` holds columns
/// `16j..16j + 16` as k contiguous rows of 16.
#[derive(Debug, Clone)]
pub struct PackedB {
    data: Vec<f32>,
    k: usize,
    n: usize,
}

impl PackedB {
    /// Number of stored values (with the panel padding).
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Pack `B` (k × n), element (l, j) at `b[l·rs + j·cs]`.
    pub fn new(b: &[f32], k: usize, n: usize, rs: usize, cs: usize) -> Self {
        if cs == 1 {
            return Self::from_rows(k, n, b, rs, Some, None);
        }
        if rs == 1 {
            return Self::from_cols(k, n, b, cs, Some, None);
        }
        let panels = n.div_ceil(16);
        let mut data = vec![0f32; panels * k * 16];
        for p in 0..panels {
            for l in 0..k {
                for jj in 0..16.min(n - 16 * p) {
                    data[(p * k + l) * 16 + jj] = b[l * rs + (16 * p + jj) * cs];
                }
            }
        }
        Self { data, k, n }
    }

    /// Pack the (k × n) matrix with elements `f(l, j)`.
    pub fn from_fn(k: usize, n: usize, f: impl Fn(usize, usize) -> f32) -> Self {
        let panels = n.div_ceil(16);
        let mut data = vec![0f32; panels * k * 16];
        for p in 0..panels {
            let jn = 16.min(n - 16 * p);
            for l in 0..k {
                let row = &mut data[(p * k + l) * 16..(p * k + l) * 16 + jn];
                for (jj, v) in row.iter_mut().enumerate() {
                    *v = f(l, 16 * p + jj);
                }
            }
        }
        Self { data, k, n }
    }

    /// Pack rows of a row-major matrix: element (l, j) = `src[row(l)·ld + j] + add[j]` (`row(l) = None`: `add[j]`
    /// alone, e.g. the bias of padding tokens), for l < k, j < n.
    pub fn from_rows(
        k: usize,
        n: usize,
        src: &[f32],
        ld: usize,
        row: impl Fn(usize) -> Option<usize>,
        add: Option<&[f32]>,
    ) -> Self {
        let panels = n.div_ceil(16);
        let mut data = vec![0f32; panels * k * 16];
        for l in 0..k {
            let r = row(l);
            for p in 0..panels {
                let jn = 16.min(n - 16 * p);
                let dst = &mut data[(p * k + l) * 16..(p * k + l) * 16 + jn];
                match (r, add) {
                    (Some(r), None) => {
                        dst.copy_from_slice(&src[r * ld + 16 * p..r * ld + 16 * p + jn])
                    }
                    (Some(r), Some(a)) => {
                        let s = &src[r * ld + 16 * p..r * ld + 16 * p + jn];
                        for ((d, x), y) in dst.iter_mut().zip(s).zip(&a[16 * p..16 * p + jn]) {
                            *d = x + y;
                        }
                    }
                    (None, Some(a)) => dst.copy_from_slice(&a[16 * p..16 * p + jn]),
                    (None, None) => dst.iter_mut().for_each(|d| *d = 0.0),
                }
            }
        }
        Self { data, k, n }
    }

    /// Pack the transpose of rows of a row-major matrix: element (l, j) = `src[row(j)·ld + l] + add[l]`
    /// (`row(j) = None`: `add[l]` alone), for l < k, j < n. E.g. keys (n × k) → Kᵀ.
    pub fn from_cols(
        k: usize,
        n: usize,
        src: &[f32],
        ld: usize,
        row: impl Fn(usize) -> Option<usize>,
        add: Option<&[f32]>,
    ) -> Self {
        let panels = n.div_ceil(16);
        let mut data = vec![0f32; panels * k * 16];
        for p in 0..panels {
            let panel = &mut data[p * k * 16..(p + 1) * k * 16];
            for jj in 0..16.min(n - 16 * p) {
                match (row(16 * p + jj), add) {
                    (Some(r), None) => {
                        for (l, &v) in src[r * ld..r * ld + k].iter().enumerate() {
                            panel[l * 16 + jj] = v;
                        }
                    }
                    (Some(r), Some(a)) => {
                        for (l, (&v, &b)) in src[r * ld..r * ld + k].iter().zip(a).enumerate() {
                            panel[l * 16 + jj] = v + b;
                        }
                    }
                    (None, Some(a)) => {
                        for (l, &b) in a[..k].iter().enumerate() {
                            panel[l * 16 + jj] = b;
                        }
                    }
                    (None, None) => {}
                }
            }
        }
        Self { data, k, n }
    }

    /// Rows (k).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns (n).
    pub fn n(&self) -> usize {
        self.n
    }
}

/// `C (m×n) = A·B` (or `+=`) with a packed `B`; `A` element (i, l) at `a[i·ars + l·acs]`, `C` row-major (`ldc`).
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed(
    m: usize,
    a: &[f32],
    ars: usize,
    acs: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    gemm_packed_bias(m, a, ars, acs, b, None, c, ldc, accumulate)
}

/// [`gemm_packed`] plus a bias row (n) added to every row of the product.
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed_bias(
    m: usize,
    a: &[f32],
    ars: usize,
    acs: usize,
    b: &PackedB,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    packed_impl(
        m,
        a,
        ars,
        acs,
        &b.data,
        b.k,
        b.k * 16,
        b.n,
        bias,
        c,
        ldc,
        accumulate,
    )
}

/// `C (m×n) = A·B[l0..l0 + kc, :]` (or `+=`): the product with a block of `kc` rows of a packed `B`, `A` being
/// m × kc (element (i, l) at `a[i·ars + l·acs]`). E.g. attention weights of a block of keys times their values.
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed_rows(
    m: usize,
    a: &[f32],
    ars: usize,
    acs: usize,
    b: &PackedB,
    l0: usize,
    kc: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!(
        l0 + kc <= b.k,
        "gemm_packed_rows: rows {l0}..{} of {}",
        l0 + kc,
        b.k
    );
    let panels = b.n.div_ceil(16);
    let data = if panels == 0 {
        &b.data[..]
    } else {
        &b.data[l0 * 16..(panels - 1) * b.k * 16 + (l0 + kc) * 16]
    };
    packed_impl(
        m,
        a,
        ars,
        acs,
        data,
        kc,
        b.k * 16,
        b.n,
        None,
        c,
        ldc,
        accumulate,
    )
}

/// `C (m × width) = A·B[:, j0..j0 + width] (+ bias[j0..])` for the panels of `B` starting at column `j0` (a
/// multiple of 16): a block of columns, e.g. one thread's share of a wide product.
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed_cols(
    m: usize,
    a: &[f32],
    ars: usize,
    acs: usize,
    b: &PackedB,
    j0: usize,
    width: usize,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(
        j0.is_multiple_of(16) && j0 + width <= b.n,
        "gemm_packed_cols: columns"
    );
    let p0 = j0 / 16;
    let p1 = (j0 + width).div_ceil(16);
    packed_impl(
        m,
        a,
        ars,
        acs,
        &b.data[p0 * b.k * 16..p1 * b.k * 16],
        b.k,
        b.k * 16,
        width,
        bias.map(|bb| &bb[j0..]),
        c,
        ldc,
        false,
    )
}

#[allow(clippy::too_many_arguments)]
fn packed_impl(
    m: usize,
    a: &[f32],
    ars: usize,
    acs: usize,
    data: &[f32],
    k: usize,
    panel_stride: usize,
    n: usize,
    bias: Option<&[f32]>,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if k > 0 && n > 0 {
        assert!(
            (n.div_ceil(16) - 1) * panel_stride + k * 16 <= data.len(),
            "gemm_packed: panels"
        );
    }
    if let Some(bias) = bias {
        assert!(bias.len() >= n, "gemm_packed: bias");
    }
    if m == 0 || n == 0 {
        return;
    }
    if k > 0 {
        assert!((m - 1) * ars + (k - 1) * acs < a.len(), "gemm_packed: lhs");
    }
    assert!((m - 1) * ldc + n - 1 < c.len(), "gemm_packed: destination");
    // The vector build: `A` and `C` bounds checked above, packed panels are k × 16 each.
    if dispatch!(
        Avx2 => {
            avx::gemm(
                m,
                n,
                k,
                a,
                ars,
                acs,
                data,
                16,
                panel_stride,
                true,
                bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                c,
                ldc,
                accumulate,
            );
            true
        };
        else false
    ) {
        return;
    }
    if let Some(bias) = bias {
        for i in 0..m {
            for (cv, bv) in c[i * ldc..i * ldc + n].iter_mut().zip(bias) {
                if accumulate {
                    *cv += bv;
                } else {
                    *cv = *bv;
                }
            }
        }
    }
    let accumulate = accumulate || bias.is_some();
    // Fallback: unpack panel by panel.
    for p in 0..n.div_ceil(16) {
        let nb = 16.min(n - 16 * p);
        super::gemm(
            m,
            nb,
            k,
            MatMut::rows(&mut c[16 * p..], ldc),
            Mat::strided(a, ars, acs),
            Mat::rows(&data[p * panel_stride..p * panel_stride + k * 16], 16),
            accumulate,
            Par::Seq,
        );
    }
}

/// `C (m×n) = A·B` (or `C += A·B` when `accumulate`): `A` element (i, l) at `a[i·ars + l·acs]`, `B` row-major
/// with row stride `ldb`, `C` row-major with row stride `ldc`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_direct(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ars: usize,
    acs: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k > 0 {
        assert!((m - 1) * ars + (k - 1) * acs < a.len(), "gemm_direct: lhs");
        assert!((k - 1) * ldb + n - 1 < b.len(), "gemm_direct: rhs");
    }
    assert!((m - 1) * ldc + n - 1 < c.len(), "gemm_direct: destination");
    // The vector build: all accesses are within the bounds checked above.
    if dispatch!(
        Avx2 => {
            avx::gemm(
                m,
                n,
                k,
                a,
                ars,
                acs,
                b,
                ldb,
                16,
                false,
                std::ptr::null(),
                c,
                ldc,
                accumulate,
            );
            true
        };
        else false
    ) {
        return;
    }
    super::gemm(
        m,
        n,
        k,
        MatMut::rows(c, ldc),
        Mat::strided(a, ars, acs),
        Mat::rows(b, ldb),
        accumulate,
        Par::Seq,
    );
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::*;

    /// Lane mask of the first `nb` (≤ 8) lanes.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA.
    #[inline(always)]
    unsafe fn mask(nb: usize) -> __m256i {
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(nb as i32), idx)
    }

    /// The k-loop of one tile of `MR` rows × 16 columns (`B` readable for all 16 columns).
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `a` is readable at `i·ars + l·acs` for i < MR, l < k, and `b` at `l·ldb + j` for l < k, j < 16.
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    unsafe fn kloop<const MR: usize>(
        k: usize,
        a: *const f32,
        ars: usize,
        acs: usize,
        b: *const f32,
        ldb: usize,
        acc: &mut [[__m256; 2]; MR],
    ) {
        let mut acc0 = [_mm256_setzero_ps(); MR];
        let mut acc1 = [_mm256_setzero_ps(); MR];
        let mut ap = a;
        let mut bp = b;
        for _ in 0..k {
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            for i in 0..MR {
                let av = _mm256_broadcast_ss(&*ap.add(i * ars));
                acc0[i] = _mm256_fmadd_ps(av, b0, acc0[i]);
                acc1[i] = _mm256_fmadd_ps(av, b1, acc1[i]);
            }
            ap = ap.add(acs);
            bp = bp.add(ldb);
        }
        for i in 0..MR {
            acc[i] = [acc0[i], acc1[i]];
        }
    }

    /// As [`kloop`] for a partial panel of `nb` < 16 columns (masked loads).
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `nb` < 16; `a` is readable at `i·ars + l·acs` for i < MR, l < k, and `b` at `l·ldb + j` for l < k, j < nb.
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kloop_masked<const MR: usize>(
        k: usize,
        a: *const f32,
        ars: usize,
        acs: usize,
        b: *const f32,
        ldb: usize,
        nb: usize,
        acc: &mut [[__m256; 2]; MR],
    ) {
        let m0 = mask(nb);
        let m1 = mask(nb.saturating_sub(8));
        let mut acc0 = [_mm256_setzero_ps(); MR];
        let mut acc1 = [_mm256_setzero_ps(); MR];
        for l in 0..k {
            let bp = b.add(l * ldb);
            let b0 = _mm256_maskload_ps(bp, m0);
            let b1 = _mm256_maskload_ps(bp.add(8), m1);
            let ap = a.add(l * acs);
            for i in 0..MR {
                let av = _mm256_broadcast_ss(&*ap.add(i * ars));
                acc0[i] = _mm256_fmadd_ps(av, b0, acc0[i]);
                acc1[i] = _mm256_fmadd_ps(av, b1, acc1[i]);
            }
        }
        for i in 0..MR {
            acc[i] = [acc0[i], acc1[i]];
        }
    }

    /// The k-loop of a full 6 × 16 tile in assembly (the register allocation of the intrinsics version is
    /// fragile: 12 accumulators + 2 B vectors + broadcasts fill all 16 registers). Writes the 6 × 16 sums to
    /// `out` (row-major).
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. As [`kloop`] with MR = 6; `out` is writable for 6 × 16 values.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn kloop6(
        k: usize,
        a: *const f32,
        ars: usize,
        acs: usize,
        b: *const f32,
        ldb: usize,
        out: *mut f32,
    ) {
        kloop6_store(k, a, ars, acs, b, ldb, out, 16)
    }

    /// [`kloop6`] storing row i of the tile at `out + i·ldo`.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. As [`kloop`] with MR = 6; `out` is writable at `i·ldo + j` for i < 6, j < 16.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kloop6_store(
        k: usize,
        a: *const f32,
        ars: usize,
        acs: usize,
        b: *const f32,
        ldb: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        std::arch::asm!(
            "vxorps ymm4, ymm4, ymm4",
            "vxorps ymm5, ymm5, ymm5",
            "vxorps ymm6, ymm6, ymm6",
            "vxorps ymm7, ymm7, ymm7",
            "vxorps ymm8, ymm8, ymm8",
            "vxorps ymm9, ymm9, ymm9",
            "vxorps ymm10, ymm10, ymm10",
            "vxorps ymm11, ymm11, ymm11",
            "vxorps ymm12, ymm12, ymm12",
            "vxorps ymm13, ymm13, ymm13",
            "vxorps ymm14, ymm14, ymm14",
            "vxorps ymm15, ymm15, ymm15",
            "test {k}, {k}",
            "jz 3f",
            "2:",
            "vmovups ymm0, [{b}]",
            "vmovups ymm1, [{b} + 32]",
            "vbroadcastss ymm2, [{a}]",
            "vfmadd231ps ymm4, ymm2, ymm0",
            "vfmadd231ps ymm5, ymm2, ymm1",
            "vbroadcastss ymm3, [{a} + {ars}]",
            "vfmadd231ps ymm6, ymm3, ymm0",
            "vfmadd231ps ymm7, ymm3, ymm1",
            "vbroadcastss ymm2, [{a} + {ars}*2]",
            "vfmadd231ps ymm8, ymm2, ymm0",
            "vfmadd231ps ymm9, ymm2, ymm1",
            "vbroadcastss ymm3, [{a3}]",
            "vfmadd231ps ymm10, ymm3, ymm0",
            "vfmadd231ps ymm11, ymm3, ymm1",
            "vbroadcastss ymm2, [{a3} + {ars}]",
            "vfmadd231ps ymm12, ymm2, ymm0",
            "vfmadd231ps ymm13, ymm2, ymm1",
            "vbroadcastss ymm3, [{a3} + {ars}*2]",
            "vfmadd231ps ymm14, ymm3, ymm0",
            "vfmadd231ps ymm15, ymm3, ymm1",
            "add {a}, {acs}",
            "add {a3}, {acs}",
            "add {b}, {ldb}",
            "dec {k}",
            "jnz 2b",
            "3:",
            "vmovups [{out}], ymm4",
            "vmovups [{out} + 32], ymm5",
            "add {out}, {ldo}",
            "vmovups [{out}], ymm6",
            "vmovups [{out} + 32], ymm7",
            "add {out}, {ldo}",
            "vmovups [{out}], ymm8",
            "vmovups [{out} + 32], ymm9",
            "add {out}, {ldo}",
            "vmovups [{out}], ymm10",
            "vmovups [{out} + 32], ymm11",
            "add {out}, {ldo}",
            "vmovups [{out}], ymm12",
            "vmovups [{out} + 32], ymm13",
            "add {out}, {ldo}",
            "vmovups [{out}], ymm14",
            "vmovups [{out} + 32], ymm15",
            k = inout(reg) k => _,
            a = inout(reg) a => _,
            a3 = inout(reg) a.wrapping_add(3 * ars) => _,
            b = inout(reg) b => _,
            ars = in(reg) ars * 4,
            acs = in(reg) acs * 4,
            ldb = in(reg) ldb * 4,
            out = inout(reg) out => _,
            ldo = in(reg) ldo * 4,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack),
        );
    }

    /// The k-loop of one tile of `MR` rows × 8 columns (one vector; masked when `nb` < 8 and not padded).
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. As [`kloop`] for MR rows, with `b` readable at `l·ldb + j` for j < 8.
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kloop8<const MR: usize>(
        k: usize,
        a: *const f32,
        ars: usize,
        acs: usize,
        b: *const f32,
        ldb: usize,
        nb: usize,
        acc: &mut [[__m256; 2]; MR],
    ) {
        let m0 = mask(nb);
        let mut acc0 = [_mm256_setzero_ps(); MR];
        for l in 0..k {
            let b0 = _mm256_maskload_ps(b.add(l * ldb), m0);
            let ap = a.add(l * acs);
            for (i, a0) in acc0.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(i * ars));
                *a0 = _mm256_fmadd_ps(av, b0, *a0);
            }
        }
        for (dst, a0) in acc.iter_mut().zip(acc0) {
            *dst = [a0, _mm256_setzero_ps()];
        }
    }

    /// One tile of `MR` rows × up to 16 columns (`nb`).
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `a` is readable at `i·ars + l·acs` for i < MR, l < k; `b` at `l·ldb + j` for l < k and j < 16 when `padded` (else j < nb); `bias` is null or readable for `nb` values; `c` is writable at `i·ldc + j` for i < MR, j < nb; `nb` ≤ 16.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const MR: usize>(
        k: usize,
        a: *const f32,
        ars: usize,
        acs: usize,
        b: *const f32,
        ldb: usize,
        bias: *const f32,
        c: *mut f32,
        ldc: usize,
        nb: usize,
        padded: bool,
        accumulate: bool,
    ) {
        if MR == 6 && nb == 16 && bias.is_null() && !accumulate {
            kloop6_store(k, a, ars, acs, b, ldb, c, ldc);
            return;
        }
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        if nb <= 8 {
            kloop8::<MR>(
                k,
                a,
                ars,
                acs,
                b,
                ldb,
                if padded { 8 } else { nb },
                &mut acc,
            );
        } else if MR == 6 && (nb == 16 || padded) {
            let mut buf = [0f32; 96];
            kloop6(k, a, ars, acs, b, ldb, buf.as_mut_ptr());
            for (i, v) in acc.iter_mut().enumerate() {
                *v = [
                    _mm256_loadu_ps(buf.as_ptr().add(16 * i)),
                    _mm256_loadu_ps(buf.as_ptr().add(16 * i + 8)),
                ];
            }
        } else if nb == 16 || padded {
            kloop::<MR>(k, a, ars, acs, b, ldb, &mut acc);
        } else {
            kloop_masked::<MR>(k, a, ars, acs, b, ldb, nb, &mut acc);
        }
        let mut bb = [0f32; 16];
        if !bias.is_null() {
            for (j, v) in bb[..nb].iter_mut().enumerate() {
                *v = *bias.add(j);
            }
        }
        let (bv0, bv1) = (
            _mm256_loadu_ps(bb.as_ptr()),
            _mm256_loadu_ps(bb.as_ptr().add(8)),
        );
        for (i, [v0, v1]) in acc.iter().enumerate() {
            let cp = c.add(i * ldc);
            let (v0, v1) = (_mm256_add_ps(*v0, bv0), _mm256_add_ps(*v1, bv1));
            if nb == 16 {
                let (mut v0, mut v1) = (v0, v1);
                if accumulate {
                    v0 = _mm256_add_ps(_mm256_loadu_ps(cp), v0);
                    v1 = _mm256_add_ps(_mm256_loadu_ps(cp.add(8)), v1);
                }
                _mm256_storeu_ps(cp, v0);
                _mm256_storeu_ps(cp.add(8), v1);
            } else {
                let mut buf = [0f32; 16];
                _mm256_storeu_ps(buf.as_mut_ptr(), v0);
                _mm256_storeu_ps(buf.as_mut_ptr().add(8), v1);
                for (j, v) in buf[..nb].iter().enumerate() {
                    if accumulate {
                        *cp.add(j) += v;
                    } else {
                        *cp.add(j) = *v;
                    }
                }
            }
        }
    }

    /// `C = A·B` (or `C += A·B`, plus `bias` when not null) in tiles of 6 rows × 16 columns.
    ///
    /// # Safety
    ///
    /// The CPU supports AVX2 and FMA. `a` is readable at `i·ars + l·acs` for i < m, l < k; `b` holds the panels of 16 columns (panel p at `p·panel_stride`, row stride `ldb`; all 16 columns readable when `padded`); `bias` is null or readable for `n` values; `c` is writable at `i·ldc + j` for i < m, j < n and overlaps no input.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        ars: usize,
        acs: usize,
        b: &[f32],
        ldb: usize,
        panel_stride: usize,
        padded: bool,
        bias: *const f32,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        let mut j0 = 0;
        while j0 < n {
            let nb = 16.min(n - j0);
            let bj = b.add(j0 / 16 * panel_stride);
            let bjb = if bias.is_null() { bias } else { bias.add(j0) };
            let mut i0 = 0;
            while i0 < m {
                let mb = 6.min(m - i0);
                let ai = a.add(i0 * ars);
                let ci = c.add(i0 * ldc + j0);
                match mb {
                    6 => tile::<6>(
                        k, ai, ars, acs, bj, ldb, bjb, ci, ldc, nb, padded, accumulate,
                    ),
                    5 => tile::<5>(
                        k, ai, ars, acs, bj, ldb, bjb, ci, ldc, nb, padded, accumulate,
                    ),
                    4 => tile::<4>(
                        k, ai, ars, acs, bj, ldb, bjb, ci, ldc, nb, padded, accumulate,
                    ),
                    3 => tile::<3>(
                        k, ai, ars, acs, bj, ldb, bjb, ci, ldc, nb, padded, accumulate,
                    ),
                    2 => tile::<2>(
                        k, ai, ars, acs, bj, ldb, bjb, ci, ldc, nb, padded, accumulate,
                    ),
                    _ => tile::<1>(
                        k, ai, ars, acs, bj, ldb, bjb, ci, ldc, nb, padded, accumulate,
                    ),
                }
                i0 += mb;
            }
            j0 += nb;
        }
    }
}
