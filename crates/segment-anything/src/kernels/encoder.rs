//! The image encoder on host memory (CPU fast path).
//!
//! * The big projections (qkv, proj, MLP, neck) are single matrix products over all image tokens (the `gemm`
//!   crate over the rayon pool), with bias, GELU, residual and LayerNorm fused into row-parallel passes.
//! * Attention runs per window (windowed blocks) or per block of query rows (global blocks), all heads in one
//!   task, with the decomposed relative positions added to the scores as they are computed; the full
//!   (heads × tokens × tokens) score tensor is never built (global blocks hold 32 × 4096 scores per task).
//! * Windowed blocks work in window order: the LayerNorm pass writes the tokens window by window (padding
//!   tokens are not stored: as keys their q/k/v are the qkv bias, and their queries are cropped anyway), so
//!   each window is a contiguous block of rows for the qkv and output projections, and the residual pass maps
//!   the rows back to image order.

use rayon::prelude::*;

use super::direct::{gemm_packed, gemm_packed_cols, gemm_packed_rows, PackedB};
use super::math::{add_add_max, bias_gelu_rows, exp_scalar, exp_sub_sum, layer_norm_row};
use super::{gemm, with_scratch, Mat, MatMut, Par};

/// Rows per task of the row-parallel element-wise passes.
const ROWS_PER_TASK: usize = 64;
/// Query rows per task of global attention.
const QUERY_BLOCK: usize = 128;
/// Keys per step of global attention's online softmax (a multiple of 16).
const KEY_BLOCK: usize = 256;

/// One encoder block's weights, borrowed from host memory.
pub struct BlockWeights<'a> {
    /// LayerNorm before attention: scale, shift.
    pub norm1: (&'a [f32], &'a [f32]),
    /// LayerNorm before the MLP.
    pub norm2: (&'a [f32], &'a [f32]),
    /// LayerNorm epsilon.
    pub eps: f32,
    /// qkv projection (C, 3C), (in, out) layout.
    pub qkv_w: &'a [f32],
    /// qkv bias (3C).
    pub qkv_b: Option<&'a [f32]>,
    /// Output projection (C, C).
    pub proj_w: &'a [f32],
    /// Its bias.
    pub proj_b: &'a [f32],
    /// MLP first layer (C, hidden).
    pub mlp1_w: &'a [f32],
    /// Its bias.
    pub mlp1_b: &'a [f32],
    /// MLP second layer (hidden, C).
    pub mlp2_w: &'a [f32],
    /// Its bias.
    pub mlp2_b: &'a [f32],
    /// Relative positions along the height of the attention grid: (2·h − 1, head_dim).
    pub rel_h: Vec<f32>,
    /// Relative positions along the width: (2·w − 1, head_dim).
    pub rel_w: Vec<f32>,
    /// Attention heads.
    pub heads: usize,
    /// Window size; 0 for global attention.
    pub window: usize,
}

/// A window: its position in windows, its valid (unpadded) size and its first row in window order.
#[derive(Clone, Copy, Debug)]
struct Window {
    vh: usize,
    vw: usize,
    off: usize,
}

/// Token order of a windowed block.
struct WindowOrder {
    /// Row (window order) → pixel.
    perm: Vec<usize>,
    /// Pixel → row.
    inv: Vec<usize>,
    windows: Vec<Window>,
}

impl WindowOrder {
    fn new(gh: usize, gw: usize, ws: usize) -> Self {
        let mut perm = Vec::with_capacity(gh * gw);
        let mut windows = Vec::new();
        for wy in 0..gh.div_ceil(ws) {
            for wx in 0..gw.div_ceil(ws) {
                let vh = ws.min(gh - wy * ws);
                let vw = ws.min(gw - wx * ws);
                windows.push(Window {
                    vh,
                    vw,
                    off: perm.len(),
                });
                for ty in 0..vh {
                    for tx in 0..vw {
                        perm.push((wy * ws + ty) * gw + wx * ws + tx);
                    }
                }
            }
        }
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        Self { perm, inv, windows }
    }
}

/// `dst[i] = LN(src[perm[i]])` (or `LN(src[i])`) for rows of `c` values, in parallel.
fn layer_norm_rows(
    src: &[f32],
    dst: &mut [f32],
    c: usize,
    (w, b): (&[f32], &[f32]),
    eps: f32,
    perm: Option<&[usize]>,
) {
    dst.par_chunks_mut(ROWS_PER_TASK * c)
        .enumerate()
        .for_each(|(ci, chunk)| {
            for (k, row) in chunk.chunks_exact_mut(c).enumerate() {
                let i = ci * ROWS_PER_TASK + k;
                let p = perm.map_or(i, |perm| perm[i]);
                layer_norm_row(&src[p * c..(p + 1) * c], row, w, b, eps);
            }
        });
}

/// Relative-position terms of one head for `nq` query rows: `th = q · Rhᵀ` (nq × (2·gh − 1)), `tw = q · Rwᵀ`,
/// and [`add_rel_tables`] over all keys (score rows gh·gw apart); returns each score row's maximum in `maxes`.
#[allow(clippy::too_many_arguments)]
fn add_rel_pos(
    s: &mut [f32],
    q: &[f32],
    ldq: usize,
    nq: usize,
    rh_t: &PackedB,
    rw_t: &PackedB,
    grid: (usize, usize),
    coords: impl Fn(usize) -> (usize, usize),
    maxes: &mut [f32],
) {
    let (lh, lw) = (rh_t.n(), rw_t.n());
    with_scratch([nq * lh, nq * lw, nq * grid.1], |[th, tw, twr]| {
        gemm_packed(nq, q, ldq, 1, rh_t, th, lh, false);
        gemm_packed(nq, q, ldq, 1, rw_t, tw, lw, false);
        reverse_width_terms(tw, twr, nq, grid.1, &coords);
        let nk = grid.0 * grid.1;
        add_rel_tables(s, nk, nq, (th, twr), grid, 0, nk, coords, maxes);
    });
}

/// `twr[q, kx] = tw[q, qx − kx + gw − 1]`: the width terms of each query row in key order.
fn reverse_width_terms(
    tw: &[f32],
    twr: &mut [f32],
    nq: usize,
    gw: usize,
    coords: impl Fn(usize) -> (usize, usize),
) {
    let lw = 2 * gw - 1;
    for (qi, row) in twr.chunks_exact_mut(gw).take(nq).enumerate() {
        let qx = coords(qi).1;
        let src = &tw[qi * lw..(qi + 1) * lw];
        for (kx, v) in row.iter_mut().enumerate() {
            *v = src[qx + gw - 1 - kx];
        }
    }
}

/// Add the relative-position terms to the scores of the keys `k0..k0 + kn` (image order in the key grid
/// gh × gw; `s` column `j` is key `k0 + j`): `s[q, key(ky, kx)] = (s + th[q, qy − ky + gh − 1]) + twr[q, kx]`,
/// the order of the official `(attn + rel_h) + rel_w`. `th` (nq × (2·gh − 1)) holds the query rows' products
/// with the height table, `twr` (nq × gw) the width terms in key order ([`reverse_width_terms`]); `coords(q)`
/// gives the query's (qy, qx). Each row's maximum over these keys goes to `maxes`.
#[allow(clippy::too_many_arguments)]
fn add_rel_tables(
    s: &mut [f32],
    lds: usize,
    nq: usize,
    (th, twr): (&[f32], &[f32]),
    (gh, gw): (usize, usize),
    k0: usize,
    kn: usize,
    coords: impl Fn(usize) -> (usize, usize),
    maxes: &mut [f32],
) {
    let lh = 2 * gh - 1;
    let (ky0, kx0) = (k0 / gw, k0 % gw);
    for (qi, (row, mx)) in s.chunks_mut(lds).zip(maxes.iter_mut()).take(nq).enumerate() {
        let qy = coords(qi).0;
        let thr = &th[qi * lh..(qi + 1) * lh];
        let rw = &twr[qi * gw..(qi + 1) * gw];
        let (mut ky, mut kx, mut j) = (ky0, kx0, 0);
        let mut m = f32::NEG_INFINITY;
        while j < kn {
            let len = (gw - kx).min(kn - j);
            m = add_add_max(&mut row[j..j + len], thr[qy + gh - 1 - ky], &rw[kx..], m);
            j += len;
            kx = 0;
            ky += 1;
        }
        *mx = m;
    }
}

/// Attention of `nq` query rows (q with bias, unscaled, row stride `ldq`) over packed keys and values:
/// `out (nq × hd, row stride ldo) = softmax((q·scale)·Kᵀ + rel) · V`.
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &[f32],
    ldq: usize,
    nq: usize,
    scale: f32,
    kt: &PackedB,
    v: &PackedB,
    rel: (&PackedB, &PackedB, (usize, usize)),
    coords: impl Fn(usize) -> (usize, usize),
    out: &mut [f32],
    ldo: usize,
) {
    let hd = kt.k();
    let nk = kt.n();
    with_scratch([nq * hd, nq * nk], |[qs, s]| {
        for (i, row) in qs.chunks_exact_mut(hd).enumerate() {
            for (d, &x) in row.iter_mut().zip(&q[i * ldq..i * ldq + hd]) {
                *d = x * scale;
            }
        }
        gemm_packed(nq, qs, hd, 1, kt, s, nk, false);
        // Softmax with its normalisation applied to the (head_dim-wide) output rows instead of the scores.
        // `inv` holds the rows' maxima, then 1 / Σ.
        with_scratch([nq], |[inv]| {
            add_rel_pos(s, q, ldq, nq, rel.0, rel.1, rel.2, coords, inv);
            for (f, row) in inv.iter_mut().zip(s.chunks_exact_mut(nk)) {
                *f = 1.0 / exp_sub_sum(&mut row[..nk], *f);
            }
            gemm_packed(nq, s, nk, 1, v, out, ldo, false);
            for (i, &f) in inv.iter().enumerate() {
                out[i * ldo..i * ldo + hd].iter_mut().for_each(|x| *x *= f);
            }
        });
    });
}

/// Packed transposes of the relative-position tables (head_dim × (2·size − 1)).
fn rel_tables(w: &BlockWeights<'_>, hd: usize) -> (PackedB, PackedB) {
    let lh = w.rel_h.len() / hd;
    let lw = w.rel_w.len() / hd;
    (
        PackedB::new(&w.rel_h, hd, lh, 1, hd),
        PackedB::new(&w.rel_w, hd, lw, 1, hd),
    )
}

/// Global attention over the whole grid: `qkv` (n × 3C, image order, no bias) → `o` (n × C).
///
/// Flash-attention style: per task a block of `QUERY_BLOCK` query rows, per head the keys in blocks of
/// `KEY_BLOCK` with an online softmax (running row maxima and sums; the output rows rescaled when a maximum
/// grows), so that the scores, keys and values in use stay in the core's L2 cache.
fn global_attention(
    qkv: &[f32],
    o: &mut [f32],
    w: &BlockWeights<'_>,
    (gh, gw): (usize, usize),
    c: usize,
) {
    let n = gh * gw;
    let heads = w.heads;
    let hd = c / heads;
    let scale = (hd as f64).powf(-0.5) as f32;
    let bias = |off: usize| w.qkv_b.map(|b| &b[off..off + hd]);
    // Keys (transposed) and values of every head, packed once.
    let kv: Vec<(PackedB, PackedB)> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let ko = c + h * hd;
            let vo = 2 * c + h * hd;
            (
                PackedB::from_cols(hd, n, &qkv[ko..], 3 * c, Some, bias(ko)),
                PackedB::from_rows(n, hd, &qkv[vo..], 3 * c, Some, bias(vo)),
            )
        })
        .collect();
    let (rh_t, rw_t) = rel_tables(w, hd);
    let (lh, lw) = (rh_t.n(), rw_t.n());
    let kb = KEY_BLOCK.min(n);
    o.par_chunks_mut(QUERY_BLOCK * c)
        .enumerate()
        .for_each(|(bi, ob)| {
            let r0 = bi * QUERY_BLOCK;
            let nq = ob.len() / c;
            let coords = |i: usize| ((r0 + i) / gw, (r0 + i) % gw);
            with_scratch(
                [
                    nq * hd,
                    nq * hd,
                    nq * lh,
                    nq * lw,
                    nq * gw,
                    nq * kb,
                    nq,
                    nq,
                    nq,
                ],
                |[q, qs, th, tw, twr, s, mx, sum, cmax]| {
                    for h in 0..heads {
                        for (i, (row, rs)) in q
                            .chunks_exact_mut(hd)
                            .zip(qs.chunks_exact_mut(hd))
                            .enumerate()
                        {
                            let src = &qkv[(r0 + i) * 3 * c + h * hd..][..hd];
                            match bias(h * hd) {
                                Some(b) => row
                                    .iter_mut()
                                    .zip(src.iter().zip(b))
                                    .for_each(|(d, (x, y))| *d = x + y),
                                None => row.copy_from_slice(src),
                            }
                            rs.iter_mut()
                                .zip(row.iter())
                                .for_each(|(d, &x)| *d = x * scale);
                        }
                        gemm_packed(nq, q, hd, 1, &rh_t, th, lh, false);
                        gemm_packed(nq, q, hd, 1, &rw_t, tw, lw, false);
                        reverse_width_terms(tw, twr, nq, gw, coords);
                        let out = &mut ob[h * hd..];
                        for k0 in (0..n).step_by(kb) {
                            let kn = kb.min(n - k0);
                            gemm_packed_cols(nq, qs, hd, 1, &kv[h].0, k0, kn, None, s, kb);
                            add_rel_tables(s, kb, nq, (th, twr), (gh, gw), k0, kn, coords, cmax);
                            for (i, row) in s.chunks_mut(kb).take(nq).enumerate() {
                                let row = &mut row[..kn];
                                let m = cmax[i];
                                if k0 == 0 {
                                    mx[i] = m;
                                    sum[i] = exp_sub_sum(row, m);
                                } else if m > mx[i] {
                                    let f = exp_scalar(mx[i] - m);
                                    out[i * c..i * c + hd].iter_mut().for_each(|x| *x *= f);
                                    mx[i] = m;
                                    sum[i] = sum[i] * f + exp_sub_sum(row, m);
                                } else {
                                    sum[i] += exp_sub_sum(row, mx[i]);
                                }
                            }
                            gemm_packed_rows(nq, s, kb, 1, &kv[h].1, k0, kn, out, c, k0 > 0);
                        }
                        for (i, &t) in sum.iter().enumerate() {
                            let f = 1.0 / t;
                            out[i * c..i * c + hd].iter_mut().for_each(|x| *x *= f);
                        }
                    }
                },
            );
        });
}

/// Windowed attention: `qkv` (n × 3C, window order, no bias) → `o` (n × C, window order).
fn window_attention(
    qkv: &[f32],
    o: &mut [f32],
    w: &BlockWeights<'_>,
    order: &WindowOrder,
    c: usize,
) {
    let ws = w.window;
    let heads = w.heads;
    let hd = c / heads;
    let scale = (hd as f64).powf(-0.5) as f32;
    let bias = |off: usize| w.qkv_b.map(|b| &b[off..off + hd]);
    let (rh_t, rw_t) = rel_tables(w, hd);
    // Split the output into the windows' row blocks.
    let mut parts: Vec<(Window, &mut [f32])> = Vec::with_capacity(order.windows.len());
    let mut rest = o;
    for win in &order.windows {
        let (a, b) = rest.split_at_mut(win.vh * win.vw * c);
        parts.push((*win, a));
        rest = b;
    }
    parts.into_par_iter().for_each(|(win, ob)| {
        let nq = win.vh * win.vw;
        // Key token j = ky·ws + kx: its row, or None for a padding token.
        let key_row = |j: usize| {
            let (ky, kx) = (j / ws, j % ws);
            (ky < win.vh && kx < win.vw).then(|| win.off + ky * win.vw + kx)
        };
        with_scratch([nq * hd], |[q]| {
            for h in 0..heads {
                let (qo, ko, vo) = (h * hd, c + h * hd, 2 * c + h * hd);
                let kt = PackedB::from_cols(hd, ws * ws, &qkv[ko..], 3 * c, key_row, bias(ko));
                let v = PackedB::from_rows(ws * ws, hd, &qkv[vo..], 3 * c, key_row, bias(vo));
                for (i, row) in q.chunks_exact_mut(hd).enumerate() {
                    let src = &qkv[(win.off + i) * 3 * c + qo..(win.off + i) * 3 * c + qo + hd];
                    match bias(qo) {
                        Some(b) => row
                            .iter_mut()
                            .zip(src.iter().zip(b))
                            .for_each(|(d, (x, y))| *d = x + y),
                        None => row.copy_from_slice(src),
                    }
                }
                attend(
                    q,
                    hd,
                    nq,
                    scale,
                    &kt,
                    &v,
                    (&rh_t, &rw_t, (ws, ws)),
                    |i| (i / win.vw, i % win.vw),
                    &mut ob[qo..],
                    c,
                );
            }
        });
    });
}

/// Working buffers of the encoder blocks.
struct Buffers {
    y: Vec<f32>,
    o: Vec<f32>,
    t: Vec<f32>,
    big: Vec<f32>,
}

/// Run the blocks on `x` (n × C, image order, the patch embeddings plus position embedding), in place.
pub fn run_blocks(x: &mut [f32], (gh, gw): (usize, usize), c: usize, blocks: &[BlockWeights<'_>]) {
    let n = gh * gw;
    let hidden = blocks.iter().map(|b| b.mlp1_b.len()).max().unwrap_or(0);
    let mut buf = Buffers {
        y: vec![0f32; n * c],
        o: vec![0f32; n * c],
        t: vec![0f32; n * c],
        big: vec![0f32; n * (3 * c).max(hidden)],
    };
    let mut orders: Vec<(usize, WindowOrder)> = Vec::new();
    for w in blocks {
        if w.window > 0 && !orders.iter().any(|(ws, _)| *ws == w.window) {
            orders.push((w.window, WindowOrder::new(gh, gw, w.window)));
        }
    }
    for w in blocks {
        let order = orders
            .iter()
            .find(|(ws, _)| *ws == w.window)
            .map(|(_, o)| o);
        block(x, &mut buf, w, (gh, gw), c, order);
    }
}

fn block(
    x: &mut [f32],
    buf: &mut Buffers,
    w: &BlockWeights<'_>,
    grid: (usize, usize),
    c: usize,
    order: Option<&WindowOrder>,
) {
    let n = grid.0 * grid.1;
    let hidden = w.mlp1_b.len();
    let perm = order.map(|o| &o.perm[..]);
    // norm1, in the block's token order.
    layer_norm_rows(x, &mut buf.y, c, w.norm1, w.eps, perm);
    // qkv (bias added where q, k, v are read).
    let qkv = &mut buf.big[..n * 3 * c];
    gemm(
        n,
        3 * c,
        c,
        MatMut::rows(qkv, 3 * c),
        Mat::rows(&buf.y, c),
        Mat::rows(w.qkv_w, 3 * c),
        false,
        Par::Auto,
    );
    match order {
        Some(order) => window_attention(qkv, &mut buf.o, w, order, c),
        None => global_attention(qkv, &mut buf.o, w, grid, c),
    }
    gemm(
        n,
        c,
        c,
        MatMut::rows(&mut buf.t, c),
        Mat::rows(&buf.o, c),
        Mat::rows(w.proj_w, c),
        false,
        Par::Auto,
    );
    // x = x + (attn + b); y = norm2(x), in image order.
    let inv = order.map(|o| &o.inv[..]);
    let t = &buf.t;
    x.par_chunks_mut(ROWS_PER_TASK * c)
        .zip(buf.y.par_chunks_mut(ROWS_PER_TASK * c))
        .enumerate()
        .for_each(|(ci, (xc, yc))| {
            for (k, (xr, yr)) in xc
                .chunks_exact_mut(c)
                .zip(yc.chunks_exact_mut(c))
                .enumerate()
            {
                let p = ci * ROWS_PER_TASK + k;
                let r = inv.map_or(p, |inv| inv[p]);
                for ((xv, tv), bv) in xr.iter_mut().zip(&t[r * c..(r + 1) * c]).zip(w.proj_b) {
                    *xv += *tv + bv;
                }
                layer_norm_row(xr, yr, w.norm2.0, w.norm2.1, w.eps);
            }
        });
    // MLP: x = x + (lin2(GELU(lin1(y) + b1)) + b2).
    let h = &mut buf.big[..n * hidden];
    gemm(
        n,
        hidden,
        c,
        MatMut::rows(h, hidden),
        Mat::rows(&buf.y, c),
        Mat::rows(w.mlp1_w, hidden),
        false,
        Par::Auto,
    );
    h.par_chunks_mut(ROWS_PER_TASK * hidden)
        .for_each(|hc| bias_gelu_rows(hc, w.mlp1_b));
    gemm(
        n,
        c,
        hidden,
        MatMut::rows(&mut buf.t, c),
        Mat::rows(h, hidden),
        Mat::rows(w.mlp2_w, c),
        false,
        Par::Auto,
    );
    let t = &buf.t;
    x.par_chunks_mut(ROWS_PER_TASK * c)
        .zip(t.par_chunks(ROWS_PER_TASK * c))
        .for_each(|(xc, tc)| {
            for (xr, tr) in xc.chunks_exact_mut(c).zip(tc.chunks_exact(c)) {
                for ((xv, tv), bv) in xr.iter_mut().zip(tr).zip(w.mlp2_b) {
                    *xv += *tv + bv;
                }
            }
        });
}

/// Patch embedding of one image (cin × H × W, NCHW plane order) with patch size `p`: `weight_t` (cin·p·p, C)
/// with rows ordered (channel, ky, kx), plus bias and the position embedding (gh·gw × C) → (gh·gw × C).
pub fn patch_embed(
    img: &[f32],
    (cin, h, w): (usize, usize, usize),
    p: usize,
    weight_t: &[f32],
    bias: Option<&[f32]>,
    pos: &[f32],
    c: usize,
) -> Vec<f32> {
    let (gh, gw) = (h / p, w / p);
    let n = gh * gw;
    let kdim = cin * p * p;
    let mut patches = vec![0f32; n * kdim];
    patches
        .par_chunks_mut(gw * kdim)
        .enumerate()
        .for_each(|(py, rowp)| {
            for (px, dst) in rowp.chunks_exact_mut(kdim).enumerate() {
                for ci in 0..cin {
                    for ky in 0..p {
                        let src = &img[(ci * h + py * p + ky) * w + px * p..][..p];
                        dst[(ci * p + ky) * p..(ci * p + ky + 1) * p].copy_from_slice(src);
                    }
                }
            }
        });
    let mut x = vec![0f32; n * c];
    gemm(
        n,
        c,
        kdim,
        MatMut::rows(&mut x, c),
        Mat::rows(&patches, kdim),
        Mat::rows(weight_t, c),
        false,
        Par::Auto,
    );
    x.par_chunks_mut(ROWS_PER_TASK * c)
        .zip(pos.par_chunks(ROWS_PER_TASK * c))
        .for_each(|(xc, pc)| {
            for (xr, pr) in xc.chunks_exact_mut(c).zip(pc.chunks_exact(c)) {
                match bias {
                    Some(b) => {
                        for ((xv, bv), pv) in xr.iter_mut().zip(b).zip(pr) {
                            *xv = (*xv + bv) + pv;
                        }
                    }
                    None => xr.iter_mut().zip(pr).for_each(|(xv, pv)| *xv += pv),
                }
            }
        });
    x
}

/// The neck: 1×1 conv (`conv1_t`, (C, out)) → LayerNorm2d → 3×3 conv (`conv2`, (9·out, out), rows ordered
/// (ky, kx, in)) → LayerNorm2d, on `x` (n × C, image order) → NCHW (out × n).
#[allow(clippy::too_many_arguments)]
pub fn neck(
    x: &[f32],
    (gh, gw): (usize, usize),
    c: usize,
    conv1_t: &[f32],
    norm1: (&[f32], &[f32]),
    conv2: &[f32],
    norm2: (&[f32], &[f32]),
    eps: f32,
) -> Vec<f32> {
    let n = gh * gw;
    let oc = norm1.0.len();
    let mut a = vec![0f32; n * oc];
    gemm(
        n,
        oc,
        c,
        MatMut::rows(&mut a, oc),
        Mat::rows(x, c),
        Mat::rows(conv1_t, oc),
        false,
        Par::Auto,
    );
    let mut an = vec![0f32; n * oc];
    layer_norm_rows(&a, &mut an, oc, norm1, eps, None);
    // im2col with zero padding: row (y, x), columns (ky, kx, in).
    let k9 = 9 * oc;
    let mut cols = vec![0f32; n * k9];
    cols.par_chunks_mut(gw * k9)
        .enumerate()
        .for_each(|(yy, rowc)| {
            for (xx, dst) in rowc.chunks_exact_mut(k9).enumerate() {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let d = &mut dst[(ky * 3 + kx) * oc..(ky * 3 + kx + 1) * oc];
                        let (sy, sx) = (yy + ky, xx + kx);
                        if sy >= 1 && sy <= gh && sx >= 1 && sx <= gw {
                            let p = (sy - 1) * gw + (sx - 1);
                            d.copy_from_slice(&an[p * oc..(p + 1) * oc]);
                        } else {
                            d.iter_mut().for_each(|v| *v = 0.0);
                        }
                    }
                }
            }
        });
    gemm(
        n,
        oc,
        k9,
        MatMut::rows(&mut a, oc),
        Mat::rows(&cols, k9),
        Mat::rows(conv2, oc),
        false,
        Par::Auto,
    );
    layer_norm_rows(&a, &mut an, oc, norm2, eps, None);
    let mut out = vec![0f32; oc * n];
    out.par_chunks_mut(oc.div_ceil(8).max(1) * n)
        .enumerate()
        .for_each(|(ci, oc_chunk)| {
            let c0 = ci * oc.div_ceil(8).max(1);
            let cc = oc_chunk.len() / n;
            super::math::transpose(&an[c0..], oc, oc_chunk, n, n, cc);
        });
    out
}
