//! The mask decoder on host memory (CPU fast path).
//!
//! The image side of the two-way transformer (4096 image tokens × 256 channels for the official models) is
//! where the time goes; it is computed in row-parallel passes over the image tokens, with the attention
//! algebra rearranged so that nothing of size (image tokens × internal dim) is ever projected:
//!
//! * token → image attention: the scores `q_h · (W_k,h (x + pe) + b_k,h)` are `(x + pe) · (W_k,hᵀ q_h) +
//!   q_h · b_k,h`, one product of the image tokens with a (heads·T × D) matrix; the values `Σ_i p_i (W_v x_i +
//!   b_v)` are `W_v (Σ_i p_i x_i) + b_v`, so only the probability-weighted sums of the keys are needed. The
//!   softmax over the image tokens runs online over row chunks (flash-attention style);
//! * image → token attention: the scores are `(x + pe) · (W_q,hᵀ k_h)` as above, and the output projection is
//!   folded into the (heads·T × D) matrix `U_(h,t) = W_o,h v_h[t]`, so the output is one product with the
//!   probabilities; as each head's probabilities sum to 1, the last token's rows are subtracted from the others
//!   and their sum moved into the bias, leaving a product with heads·(T − 1) columns;
//! * the image-to-token attention of one layer, the residual and LayerNorm, and the token-to-image scores of
//!   the next layer run in one pass per row chunk, while the rows are in cache;
//! * the final token-to-image attention is computed only for the tokens that are read afterwards (the IoU
//!   token and the requested mask tokens);
//! * the output upscaling (two 2×2 transposed convolutions with LayerNorm and GELU) and the hypernetwork
//!   products run fused per chunk of rows, only for the requested mask tokens.
//!
//! Image-side work is shared by all prompt sets where the keys are shared (first layer, one image embedding,
//! no mask prompt): the products for all sets are then single matrix products.
//!
//! The first layer's image side does not depend on the prompts at all (keys = embedding + the no-mask vector):
//! its token-to-image keys and values and its image-to-token queries can be projected once per embedding
//! ([`HostDecoder::prepare`] returns them as a [`Layer0`]), and decodes given that value score the prompt tokens
//! against them directly (dh values per head instead of D). The value belongs to the caller (the predictor keeps
//! it with the image that was set); the decoder itself keeps nothing per embedding.
//!
//! With that cache, the first output upscaling is folded through the image-to-token attentions ([`Fold`]): the
//! final keys are the cached embedding plus low-rank attention updates under two LayerNorms, so the transposed
//! convolution of the embedding part is cached too and only a product with ~100 per-token coefficients (instead
//! of D = 256 channels) remains per decode.
//!
//! Products whose left-hand side is read column-major (weighted key sums `pᵀx`) or whose right-hand side is a
//! per-decode matrix go through the `gemm` crate (packed, AVX-512 where available); products with a right-hand
//! side packed once per decode (the score matrices) use [`super::direct`].

use rayon::prelude::*;

use super::direct::{gemm_direct, gemm_packed, gemm_packed_bias, PackedB};
use super::math::{
    exp_inplace, gelu_inplace, residual_norm_rows, row_dots, softmax_interleaved, softmax_row,
    transpose_add,
};
use super::{with_scratch, HostLinear, Par};

/// Image-token rows per chunk of a pass.
const CHUNK_ROWS: usize = 256;

/// `C (m×n) = A·B` (or `+=`) with the `gemm` crate: `A` element (i, l) at `a[i·ars + l·acs]`, `B` element (l, j) at
/// `b[l·brs + j·bcs]`, `C` row-major (`ldc`).
#[allow(clippy::too_many_arguments)]
fn gemm_seq(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ars: usize,
    acs: usize,
    b: &[f32],
    brs: usize,
    bcs: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    super::gemm(
        m,
        n,
        k,
        super::MatMut::rows(c, ldc),
        super::Mat::strided(a, ars, acs),
        super::Mat::strided(b, brs, bcs),
        accumulate,
        Par::Seq,
    )
}
/// Rows of `c` (row length `bias.len()`, stride `ldc`) set to `bias`.
fn fill_rows(c: &mut [f32], m: usize, ldc: usize, bias: &[f32]) {
    for i in 0..m {
        c[i * ldc..i * ldc + bias.len()].copy_from_slice(bias);
    }
}

/// LayerNorm parameters on host memory.
#[derive(Debug, Clone)]
pub struct HostNorm {
    /// Scale.
    pub w: Vec<f32>,
    /// Shift.
    pub b: Vec<f32>,
    /// Epsilon.
    pub eps: f32,
}

impl HostNorm {
    fn rows_inplace(&self, x: &mut [f32]) {
        super::math::layer_norm_rows_inplace(x, &self.w, &self.b, self.eps)
    }
}

/// One attention layer (q/k/v/out projections).
#[derive(Debug, Clone)]
pub struct HostAttention {
    /// Query projection (internal, D).
    pub q: HostLinear,
    /// Key projection.
    pub k: HostLinear,
    /// Value projection.
    pub v: HostLinear,
    /// Output projection (D, internal).
    pub o: HostLinear,
    /// Number of heads.
    pub heads: usize,
}

impl HostAttention {
    fn internal(&self) -> usize {
        self.q.n_out
    }

    fn head_dim(&self) -> usize {
        self.internal() / self.heads
    }

    /// Plain attention among a few tokens: q_in (nq × D), k_in, v_in (nk × D) → (nq × D).
    fn forward_tokens(
        &self,
        q_in: &[f32],
        k_in: &[f32],
        v_in: &[f32],
        nq: usize,
        nk: usize,
    ) -> Vec<f32> {
        let di = self.internal();
        let dh = self.head_dim();
        let q = self.q.forward(q_in, nq, Par::Auto);
        let k = self.k.forward(k_in, nk, Par::Auto);
        let v = self.v.forward(v_in, nk, Par::Auto);
        let scale = (dh as f32).sqrt();
        let mut o = vec![0f32; nq * di];
        let mut s = vec![0f32; nk];
        for h in 0..self.heads {
            for i in 0..nq {
                let qi = &q[i * di + h * dh..i * di + (h + 1) * dh];
                for (j, sj) in s.iter_mut().enumerate() {
                    let kj = &k[j * di + h * dh..j * di + (h + 1) * dh];
                    *sj = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() / scale;
                }
                softmax_row(&mut s);
                let oi = &mut o[i * di + h * dh..i * di + (h + 1) * dh];
                for (j, &p) in s.iter().enumerate() {
                    let vj = &v[j * di + h * dh..j * di + (h + 1) * dh];
                    for (a, b) in oi.iter_mut().zip(vj) {
                        *a += p * b;
                    }
                }
            }
        }
        self.o.forward(&o, nq, Par::Auto)
    }
}

/// One two-way attention block.
#[derive(Debug, Clone)]
pub struct HostTwoWayBlock {
    /// Self-attention of the tokens.
    pub self_attn: HostAttention,
    /// After self-attention.
    pub norm1: HostNorm,
    /// Tokens attending to the image.
    pub t2i: HostAttention,
    /// After token-to-image attention.
    pub norm2: HostNorm,
    /// MLP (ReLU) first layer.
    pub mlp1: HostLinear,
    /// MLP second layer.
    pub mlp2: HostLinear,
    /// After the MLP.
    pub norm3: HostNorm,
    /// After image-to-token attention (on the image tokens).
    pub norm4: HostNorm,
    /// Image tokens attending to the prompt tokens.
    pub i2t: HostAttention,
    /// Layer 0: no positional encoding and no residual in the self-attention.
    pub skip_first_layer_pe: bool,
}

/// The mask decoder's weights on host memory.
#[derive(Debug, Clone)]
pub struct HostDecoder {
    /// Embedding dim D.
    pub dim: usize,
    /// IoU token and mask tokens (1 + n_masks, D).
    pub output_tokens: Vec<f32>,
    /// Number of mask tokens.
    pub n_masks: usize,
    /// Two-way blocks.
    pub layers: Vec<HostTwoWayBlock>,
    /// Final token-to-image attention.
    pub final_attn: HostAttention,
    /// Final norm of the tokens.
    pub norm_final: HostNorm,
    /// First transposed conv as a matrix (D, 4·C1), columns ordered (a, b, out).
    pub up1_w: PackedB,
    /// Its bias repeated for the 4 sub-pixels (4·C1).
    pub up1_b: Vec<f32>,
    /// LayerNorm2d over C1.
    pub up_norm: HostNorm,
    /// Second transposed conv (C1, 4·C2) row-major, columns ordered (a, b, out).
    pub up2_w: Vec<f32>,
    /// Its bias repeated (4·C2).
    pub up2_b: Vec<f32>,
    /// Channels after the first upscaling.
    pub c1: usize,
    /// Channels after the second upscaling.
    pub c2: usize,
    /// Hypernetwork MLPs, one per mask token.
    pub hyper: Vec<Vec<HostLinear>>,
    /// IoU prediction head.
    pub iou_head: Vec<HostLinear>,
    /// Reused key buffers.
    pub pool: BufferPool,
}

/// Inputs of [`HostDecoder::forward`].
pub struct DecoderInputs<'a> {
    /// Image embeddings (E, D, gh, gw) with E = 1 (shared) or B, NCHW.
    pub embeddings: &'a [f32],
    /// E.
    pub n_embeddings: usize,
    /// Grid (gh, gw).
    pub grid: (usize, usize),
    /// Dense positional encoding (gh·gw, D).
    pub pe: &'a [f32],
    /// Sparse prompt tokens (B, S, D).
    pub sparse: &'a [f32],
    /// B.
    pub batch: usize,
    /// S.
    pub n_sparse: usize,
    /// Dense prompt embeddings.
    pub dense: Dense<'a>,
    /// Identity of the embedding, positional encoding and dense vector, when one embedding and one dense vector
    /// are shared by all sets: the first layer's image side is then computed once and reused by later decodes.
    pub layer0_key: Option<Layer0Key>,
}

/// Dense prompt embeddings.
pub enum Dense<'a> {
    /// One vector (D) for every pixel of every prompt set.
    Shared(&'a [f32]),
    /// One vector (D) per prompt set (B, D).
    PerSet(&'a [f32]),
    /// Full (B, gh·gw, D).
    Full(&'a [f32]),
}

/// Outputs of [`HostDecoder::forward`]: mask logits (B, K, 4gh, 4gw) and IoU predictions (B, K).
pub struct DecoderOutputs {
    /// Mask logits.
    pub masks: Vec<f32>,
    /// IoU predictions.
    pub iou: Vec<f32>,
}

/// Token-to-image attention, prepared from the tokens: scores = (x + pe)·gᵀ + c.
struct T2i {
    /// (heads·T × D)
    g: Vec<f32>,
    /// gᵀ packed.
    gt: PackedB,
    c: Vec<f32>,
}

/// Image-to-token attention, prepared from the tokens: scores = (x + pe)·gᵀ + c, output = softmax · u.
struct I2t {
    g: Vec<f32>,
    gt: PackedB,
    c: Vec<f32>,
    /// The output matrix relative to the last token: rows (token, head) for the first T − 1 tokens,
    /// `U_(h,t) − U_(h,T−1)` ((heads·(T − 1)) × D, `U_(h,t) = W_o,h v_h[t]`). Each head's probabilities sum to 1,
    /// so the output is the product of the first heads·(T − 1) probabilities with this matrix plus
    /// `Σ_h U_(h,T−1)` (in `bias`).
    u: Vec<f32>,
    /// Output bias of the attention plus `Σ_h U_(h,T−1)` (D).
    bias: Vec<f32>,
    /// With the first layer's image-side queries cached: the token keys per head, scaled by 1/√dh, (heads, dh,
    /// `kt_ld`) with the tokens zero-padded to `kt_ld`; the scores are then the cached queries times these.
    kt: Option<Vec<f32>>,
    /// Row length of `kt`: 8 where the 8-head kernel applies (8 heads, T ≤ 8), else T.
    kt_ld: usize,
    /// Heads, head dim, tokens.
    shape: (usize, usize, usize),
}

impl I2t {
    /// Columns of the scores (heads·T).
    fn cols(&self) -> usize {
        self.shape.0 * self.shape.2
    }

    /// Scores (r × heads·T, columns (token, head)) of image-token queries `q` (r × heads·dh) from the cache.
    fn scores_from_queries(&self, q: &[f32], r: usize, s: &mut [f32]) {
        let (nh, dh, t) = self.shape;
        let kt = self.kt.as_deref().expect("cached token keys");
        let ld = self.kt_ld;
        let ht = nh * t;
        if nh == 8 && ld == 8 {
            return super::math::head_scores8(q, r, dh, kt, t, s);
        }
        with_scratch([r * t], |[tmp]| {
            for h in 0..nh {
                gemm_direct(
                    r,
                    t,
                    dh,
                    &q[h * dh..],
                    nh * dh,
                    1,
                    &kt[h * dh * ld..(h + 1) * dh * ld],
                    ld,
                    tmp,
                    t,
                    false,
                );
                for (srow, trow) in s.chunks_exact_mut(ht).zip(tmp.chunks_exact(t)) {
                    for (ti, &v) in trow.iter().enumerate() {
                        srow[ti * nh + h] = v;
                    }
                }
            }
        })
    }
}

/// What the first layer's image-side projections depend on: the embedding, the positional encoding, the dense
/// prompt vector shared by every pixel, and the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer0Key {
    /// The image-embedding tensor (tensors are immutable; ids are never reused).
    pub embedding: candle_core::TensorId,
    /// The dense positional-encoding tensor.
    pub pe: candle_core::TensorId,
    /// Bits of the dense prompt vector (D).
    pub dense: Vec<u32>,
    /// Grid (gh, gw).
    pub grid: (usize, usize),
}

/// The image side of the first two-way layer, which does not depend on the prompts: its keys, the
/// token-to-image keys and values, and the image-to-token queries (≈ 14 MB for D = 256 and a 64×64 grid, with the
/// folded upscaling's image part).
pub struct Layer0 {
    key: Layer0Key,
    /// Keys: embedding + dense prompt vector (n × D).
    x0: Vec<f32>,
    /// Token-to-image keys `W_k (x0 + pe) + b_k`, per head transposed and packed (head dim × n).
    k0t: Vec<PackedB>,
    /// Token-to-image values `W_v x0 + b_v`, head-major (heads, n, head dim).
    v0: Vec<f32>,
    /// Image-to-token queries `W_q (x0 + pe) + b_q` (n × internal).
    q0: Vec<f32>,
    /// The prompt-independent part of the first output upscaling, `(x0 ⊙ Γ₀) · W_up1` (n × 4·C1); see [`Fold`].
    xt: Vec<f32>,
}

impl Layer0 {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let floats = self.x0.len()
            + self.v0.len()
            + self.q0.len()
            + self.xt.len()
            + self.k0t.iter().map(PackedB::len).sum::<usize>();
        floats * std::mem::size_of::<f32>() + self.key.dense.len() * 4
    }
}

/// Online-softmax partial sums of one chunk (columns = heads·tokens).
struct Partial {
    m: Vec<f32>,
    l: Vec<f32>,
    z: Vec<f32>,
}

/// Reusable large buffers (image-token keys), so that repeated decodes do not page-fault fresh memory.
#[derive(Default)]
pub struct BufferPool(std::sync::Mutex<Vec<Vec<f32>>>);

impl BufferPool {
    /// A buffer of `len` values with unspecified contents.
    fn take(&self, len: usize) -> Vec<f32> {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let pick = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        let mut v = match pick {
            Some(i) => pool.swap_remove(i),
            None => Vec::new(),
        };
        v.resize(len, 0.0);
        v
    }

    /// Give buffers back (at most a few are kept).
    fn give(&self, bufs: impl IntoIterator<Item = Vec<f32>>) {
        let mut pool = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for b in bufs {
            if pool.len() < 8 {
                pool.push(b);
            }
        }
    }
}

impl Clone for BufferPool {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BufferPool")
    }
}

fn add_into(dst: &mut [f32], a: &[f32], b: &[f32]) {
    for ((d, x), y) in dst.iter_mut().zip(a).zip(b) {
        *d = x + y;
    }
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// Scores s (r × cols) → column-wise online-softmax partial with values x (r × d).
fn column_partial(s: &mut [f32], r: usize, cols: usize, x: &[f32], d: usize) -> Partial {
    let mut m = vec![f32::NEG_INFINITY; cols];
    for row in s.chunks_exact(cols) {
        for (mj, &v) in m.iter_mut().zip(row) {
            *mj = if v > *mj { v } else { *mj };
        }
    }
    let mut l = vec![0f32; cols];
    for row in s.chunks_exact_mut(cols) {
        for (v, mj) in row.iter_mut().zip(&m) {
            *v -= mj;
        }
        exp_inplace(row);
        for (lj, &v) in l.iter_mut().zip(row.iter()) {
            *lj += v;
        }
    }
    let mut z = vec![0f32; cols * d];
    // sᵀ·x (`s` read column-major): the `gemm` crate's packed kernels are faster for this orientation.
    gemm_seq(cols, d, r, s, 1, cols, x, d, 1, &mut z, d, false);
    Partial { m, l, z }
}

/// `s (r × cols) = xpe (r × d) · gᵀ + c` with `gᵀ` packed (d × cols).
fn scores(s: &mut [f32], xpe: &[f32], gt: &PackedB, c: &[f32], r: usize) {
    gemm_packed_bias(r, xpe, gt.k(), 1, gt, Some(c), s, gt.n(), false);
}

/// The image-to-token attention of a pass: per-set preparations, the attention (for its output bias), the
/// norm after the residual, and the number of tokens per set.
type I2tArgs<'a> = (&'a [I2t], &'a HostAttention, &'a HostNorm, usize);

/// Per-pass constants of the chunk computations.
struct PassCtx<'a> {
    d: usize,
    i2t: Option<I2tArgs<'a>>,
    /// Where the image-to-token attention is recorded for the folded upscaling: (first column, row stride).
    rec: (usize, usize),
}

/// Per set, the rows (n × stride) where a pass records, for each image token, what the folded first upscaling
/// needs from this layer's image-to-token attention (see [`Fold`]), from column `col`.
struct Record<'a> {
    bufs: Vec<&'a mut [f32]>,
    col: usize,
    stride: usize,
}

/// The first output upscaling folded through the image-to-token attentions (used when the first layer's image
/// side is cached). The final keys are `k_L`, with `k_0 = x0` and `k_(l+1) = LN_l(k_l + P_l·U_l + b_o,l)` (`P_l`
/// the attention probabilities of each image token for the first T − 1 tokens, `U_l` the (heads·(T − 1) × D)
/// output matrix relative to the last token and `b_o,l` the output bias plus the last token's rows; see
/// `I2t::u`). With each
/// LayerNorm written `γ_l ⊙ (y − μ_l)·r_l + β_l`, `Γ_l = γ_l ⊙ … ⊙ γ_(L−1)` and `R_l = r_l ⋯ r_(L−1)` (per token),
///
/// `k_L·W = R_0·(x0 ⊙ Γ_0)·W + Σ_l [R_l·P_l·(U_l ⊙ Γ_l)·W + R_l·(b_o,l ⊙ Γ_l)·W − R_l·μ_l·Γ_l·W + R_(l+1)·(β_l ⊙ Γ_(l+1))·W]`,
///
/// so the first transposed convolution is `R_0·xt` (cached per embedding) plus one product of per-token
/// coefficients (Σ_l (heads·(T − 1) + 3) + 1 columns instead of D) with a per-set matrix.
struct Fold<'a> {
    /// `(x0 ⊙ Γ_0)·W` (n × 4·C1).
    xt: &'a [f32],
    /// Per set, the recorded coefficients (n × `k`): per layer `P_l`, 1, −μ_l, r_l (scaled by `R` when used).
    coef: &'a [Vec<f32>],
    /// Per set, the matrix (`k` × 4·C1), row-major.
    m: Vec<Vec<f32>>,
    /// Per layer: first column and heads·(T − 1).
    layers: Vec<(usize, usize)>,
    /// Columns of the coefficients (the last one is the constant 1 of the bias row).
    k: usize,
}

impl Fold<'_> {
    /// The coefficients of tokens `p0..p0 + r` of set `b`, scaled, into `cs` (r × k); `R_0·xt` into `u1`.
    fn coefficients(&self, b: usize, p0: usize, r: usize, cs: &mut [f32], u1: &mut [f32]) {
        let k = self.k;
        let w = self.xt.len() / (self.coef[b].len() / k);
        cs.copy_from_slice(&self.coef[b][p0 * k..(p0 + r) * k]);
        for (i, (row, u1row)) in cs
            .chunks_exact_mut(k)
            .zip(u1.chunks_exact_mut(w))
            .enumerate()
        {
            let mut big_r = 1f32;
            for &(col, ht) in self.layers.iter().rev() {
                let rl = row[col + ht + 2];
                row[col + ht + 2] = big_r;
                big_r *= rl;
                row[col..col + ht + 2].iter_mut().for_each(|v| *v *= big_r);
            }
            row[k - 1] = 1.0;
            let xt = &self.xt[(p0 + i) * w..(p0 + i + 1) * w];
            u1row.iter_mut().zip(xt).for_each(|(u, x)| *u = big_r * x);
        }
    }
}

impl PassCtx<'_> {
    /// Token-to-image scores of keys `x` (r × d, with `pe_c` their positional encodings) → online-softmax partial.
    fn t2i_partial(&self, x: &[f32], pe_c: &[f32], r: usize, p: &T2i) -> Partial {
        with_scratch([r * self.d], |[xpe]| {
            add_into(xpe, x, pe_c);
            self.t2i_partial_xpe(x, xpe, r, p)
        })
    }

    /// As [`PassCtx::t2i_partial`] with `xpe = x + pe` given.
    fn t2i_partial_xpe(&self, x: &[f32], xpe: &[f32], r: usize, p: &T2i) -> Partial {
        let d = self.d;
        let cols = p.gt.n();
        with_scratch([r * cols], |[s]| {
            scores(s, xpe, &p.gt, &p.c, r);
            column_partial(s, r, cols, x, d)
        })
    }

    /// Image-to-token attention of one set on keys `x` (r × d): scores are columns `col0..col0 + ht` of `s`
    /// (r × `stride`, bias included); the new keys `LN(x + attn)` go to `out`, and `out + pe_c` to `xpe`. With
    /// `rec` (this chunk's rows of a [`Record`] buffer), each row's probabilities, 1, −mean and rstd of the
    /// LayerNorm are written there.
    #[allow(clippy::too_many_arguments)]
    fn i2t_apply(
        &self,
        x: &[f32],
        s: &[f32],
        stride: usize,
        col0: usize,
        r: usize,
        p: &I2t,
        out: &mut [f32],
        pe_c: &[f32],
        xpe: &mut [f32],
        rec: Option<&mut [f32]>,
    ) {
        let d = self.d;
        let (_, _, norm, t) = self.i2t.unwrap();
        let (rec_col, rec_stride) = self.rec;
        let ht = p.gt.n();
        let hu = p.u.len() / d;
        with_scratch([r * ht, r * d], |[pr, o]| {
            for (dst, src) in pr.chunks_exact_mut(ht).zip(s.chunks_exact(stride)) {
                dst.copy_from_slice(&src[col0..col0 + ht]);
                softmax_interleaved(dst, t, ht / t);
            }
            // The first heads·(T − 1) probabilities of each row (see `I2t::u`).
            gemm_seq(r, d, hu, pr, ht, 1, &p.u, d, 1, o, d, false);
            let mut stats = [(0f32, 0f32); CHUNK_ROWS];
            let stats = &mut stats[..r];
            residual_norm_rows(
                o, x, &p.bias, &norm.w, &norm.b, norm.eps, out, pe_c, xpe, stats,
            );
            if let Some(rec) = rec {
                for (i, &(mean, rstd)) in stats.iter().enumerate() {
                    let row = &mut rec[i * rec_stride + rec_col..][..hu + 3];
                    row[..hu].copy_from_slice(&pr[i * ht..i * ht + hu]);
                    row[hu] = 1.0;
                    row[hu + 1] = -mean;
                    row[hu + 2] = rstd;
                }
            }
        })
    }
}

/// Merge chunk partials (in order) into normalised weighted sums (cols × d).
fn merge_partials(parts: &[&Partial], cols: usize, d: usize) -> Vec<f32> {
    let mut mx = vec![f32::NEG_INFINITY; cols];
    for p in parts {
        for (a, &b) in mx.iter_mut().zip(&p.m) {
            *a = a.max(b);
        }
    }
    let mut l = vec![0f32; cols];
    let mut z = vec![0f32; cols * d];
    for p in parts {
        for j in 0..cols {
            let f = super::math::exp_scalar(p.m[j] - mx[j]);
            l[j] += p.l[j] * f;
            let zr = &mut z[j * d..(j + 1) * d];
            for (a, &b) in zr.iter_mut().zip(&p.z[j * d..(j + 1) * d]) {
                *a += b * f;
            }
        }
    }
    for j in 0..cols {
        let inv = 1.0 / l[j];
        z[j * d..(j + 1) * d].iter_mut().for_each(|v| *v *= inv);
    }
    z
}

/// Keys (n × d, channels last) into `x` from an NCHW embedding (d × n) plus the dense embeddings: one vector
/// (d) for every pixel (`dense_ld = 0`) or a full (n × d) matrix (`dense_ld = d`).
fn keys_from_nchw(x: &mut [f32], e: &[f32], n: usize, d: usize, dense: &[f32], dense_ld: usize) {
    x.par_chunks_mut(CHUNK_ROWS * d)
        .enumerate()
        .for_each(|(ci, xc)| {
            let r0 = ci * CHUNK_ROWS;
            let r = xc.len() / d;
            transpose_add(
                &e[r0..],
                n,
                xc,
                d,
                d,
                r,
                Some((&dense[r0 * dense_ld..], dense_ld)),
            );
        });
}

/// The dense prompt vector shared by every pixel of every set, if there is one.
fn shared_dense<'a>(inp: &DecoderInputs<'a>) -> Option<&'a [f32]> {
    match inp.dense {
        Dense::Shared(v) => Some(v),
        Dense::PerSet(v) if inp.batch == 1 => Some(v),
        _ => None,
    }
}

impl HostDecoder {
    fn t2i_prep(&self, attn: &HostAttention, q_in: &[f32], t: usize) -> T2i {
        let d = self.dim;
        let di = attn.internal();
        let dh = attn.head_dim();
        let scale = (dh as f32).sqrt();
        let q = attn.q.forward(q_in, t, Par::Auto);
        let mut g = vec![0f32; attn.heads * t * d];
        let mut c = vec![0f32; attn.heads * t];
        for h in 0..attn.heads {
            gemm_direct(
                t,
                d,
                dh,
                &q[h * dh..],
                di,
                1,
                &attn.k.w[h * dh * d..],
                d,
                &mut g[h * t * d..(h + 1) * t * d],
                d,
                false,
            );
            for ti in 0..t {
                let qh = &q[ti * di + h * dh..ti * di + (h + 1) * dh];
                let bk = &attn.k.b[h * dh..(h + 1) * dh];
                c[h * t + ti] = qh.iter().zip(bk).map(|(a, b)| a * b).sum::<f32>() / scale;
            }
        }
        g.iter_mut().for_each(|v| *v /= scale);
        let gt = PackedB::new(&g, d, attn.heads * t, 1, d);
        T2i { g, gt, c }
    }

    /// Weighted key sums z (heads·T × D) → attention output (T × D) of the token-to-image attention.
    fn t2i_finish(&self, attn: &HostAttention, z: &[f32], t: usize) -> Vec<f32> {
        let d = self.dim;
        let di = attn.internal();
        let dh = attn.head_dim();
        let mut o = vec![0f32; t * di];
        for h in 0..attn.heads {
            gemm_direct(
                t,
                dh,
                d,
                &z[h * t * d..],
                d,
                1,
                &attn.v.w_t[h * dh..],
                di,
                &mut o[h * dh..],
                di,
                false,
            );
        }
        for row in o.chunks_exact_mut(di) {
            for (v, b) in row.iter_mut().zip(&attn.v.b) {
                *v += b;
            }
        }
        attn.o.forward(&o, t, Par::Auto)
    }

    /// Image-to-token attention prepared from the tokens; columns ordered (token, head), heads innermost. With
    /// `cached`, also the scaled token keys for scores from cached image-side queries.
    fn i2t_prep(
        &self,
        attn: &HostAttention,
        queries: &[f32],
        tokens: &[f32],
        t: usize,
        cached: bool,
    ) -> I2t {
        let d = self.dim;
        let di = attn.internal();
        let dh = attn.head_dim();
        let nh = attn.heads;
        let scale = (dh as f32).sqrt();
        let k = attn.k.forward(&add(queries, tokens), t, Par::Auto);
        let v = attn.v.forward(queries, t, Par::Auto);
        let mut g = vec![0f32; nh * t * d];
        let mut c = vec![0f32; nh * t];
        let mut u = vec![0f32; nh * t * d];
        for h in 0..nh {
            // Row (ti, h) of g is at (ti·nh + h)·d.
            gemm_direct(
                t,
                d,
                dh,
                &k[h * dh..],
                di,
                1,
                &attn.q.w[h * dh * d..],
                d,
                &mut g[h * d..],
                nh * d,
                false,
            );
            gemm_direct(
                t,
                d,
                dh,
                &v[h * dh..],
                di,
                1,
                &attn.o.w_t[h * dh * d..],
                d,
                &mut u[h * d..],
                nh * d,
                false,
            );
            for ti in 0..t {
                let kh = &k[ti * di + h * dh..ti * di + (h + 1) * dh];
                let bq = &attn.q.b[h * dh..(h + 1) * dh];
                c[ti * nh + h] = kh.iter().zip(bq).map(|(a, b)| a * b).sum::<f32>() / scale;
            }
        }
        g.iter_mut().for_each(|v| *v /= scale);
        let gt = PackedB::new(&g, d, nh * t, 1, d);
        // Relative to the last token (see `I2t::u`).
        let (u_rows, last) = u.split_at_mut((t - 1) * nh * d);
        for row in u_rows.chunks_exact_mut(nh * d) {
            row.iter_mut().zip(&*last).for_each(|(a, b)| *a -= b);
        }
        let mut bias = attn.o.b.clone();
        for lh in last.chunks_exact(d) {
            bias.iter_mut().zip(lh).for_each(|(a, b)| *a += b);
        }
        u.truncate((t - 1) * nh * d);
        let kt_ld = if nh == 8 && t <= 8 { 8 } else { t };
        let kt = cached.then(|| {
            let mut kt = vec![0f32; nh * dh * kt_ld];
            for h in 0..nh {
                for c in 0..dh {
                    for ti in 0..t {
                        kt[(h * dh + c) * kt_ld + ti] = k[ti * di + h * dh + c] / scale;
                    }
                }
            }
            kt
        });
        I2t {
            g,
            gt,
            c,
            u,
            bias,
            kt,
            kt_ld,
            shape: (nh, dh, t),
        }
    }

    /// The first layer's token-to-image attention from cached keys and values, for every set: `q_in` per set
    /// (T × D, queries + their positional encodings) → attention output per set (T × D).
    fn t2i_cached(
        &self,
        attn: &HostAttention,
        q_in: &[Vec<f32>],
        t: usize,
        l0: &Layer0,
    ) -> Vec<Vec<f32>> {
        let di = attn.internal();
        let dh = attn.head_dim();
        let nh = attn.heads;
        let n = l0.v0.len() / di;
        let scale = (dh as f32).sqrt();
        let qs: Vec<Vec<f32>> = q_in
            .iter()
            .map(|q| attn.q.forward(q, t, Par::Auto))
            .collect();
        // One task per (set, head): scores against all image tokens, softmax, weighted values.
        let heads: Vec<Vec<f32>> = (0..qs.len() * nh)
            .into_par_iter()
            .map(|task| {
                let (b, h) = (task / nh, task % nh);
                with_scratch([t * n], |[s]| {
                    gemm_packed(t, &qs[b][h * dh..], di, 1, &l0.k0t[h], s, n, false);
                    for row in s.chunks_exact_mut(n) {
                        row.iter_mut().for_each(|v| *v /= scale);
                        softmax_row(row);
                    }
                    let mut oh = vec![0f32; t * dh];
                    let vh = &l0.v0[h * n * dh..(h + 1) * n * dh];
                    gemm_direct(t, dh, n, s, n, 1, vh, dh, &mut oh, dh, false);
                    oh
                })
            })
            .collect();
        (0..qs.len())
            .map(|b| {
                let mut o = vec![0f32; t * di];
                for h in 0..nh {
                    for (ti, src) in heads[b * nh + h].chunks_exact(dh).enumerate() {
                        o[ti * di + h * dh..ti * di + (h + 1) * dh].copy_from_slice(src);
                    }
                }
                attn.o.forward(&o, t, Par::Auto)
            })
            .collect()
    }

    /// The cached first-layer image side for `key`: reused when it is the cached one, computed when `key` was
    /// seen before (a second decode of the same embedding) or `build` is set, else `None` (and `key` is noted).
    fn build_layer0(&self, key: Layer0Key, inp: &DecoderInputs<'_>, dense: &[f32]) -> Layer0 {
        let d = self.dim;
        let (gh, gw) = inp.grid;
        let n = gh * gw;
        let mut x0 = vec![0f32; n * d];
        keys_from_nchw(&mut x0, &inp.embeddings[..d * n], n, d, dense, 0);
        let mut xpe = vec![0f32; n * d];
        xpe.par_chunks_mut(CHUNK_ROWS * d)
            .zip(x0.par_chunks(CHUNK_ROWS * d))
            .zip(inp.pe.par_chunks(CHUNK_ROWS * d))
            .for_each(|((o, x), p)| add_into(o, x, p));
        let blk = &self.layers[0];
        let k0 = blk.t2i.k.forward(&xpe, n, Par::Auto);
        let v0_rows = blk.t2i.v.forward(&x0, n, Par::Auto);
        // Head-major (heads, n, dh): each head's values are contiguous.
        let (nh, dh) = (blk.t2i.heads, blk.t2i.head_dim());
        let mut v0 = vec![0f32; v0_rows.len()];
        for (h, vh) in v0.chunks_exact_mut(n * dh).enumerate() {
            for (dst, src) in vh.chunks_exact_mut(dh).zip(v0_rows.chunks_exact(nh * dh)) {
                dst.copy_from_slice(&src[h * dh..(h + 1) * dh]);
            }
        }
        let q0 = blk.i2t.q.forward(&xpe, n, Par::Auto);
        let di = blk.t2i.internal();
        let dh = blk.t2i.head_dim();
        let k0t: Vec<PackedB> = (0..blk.t2i.heads)
            .map(|h| PackedB::new(&k0[h * dh..], dh, n, 1, di))
            .collect();
        // The folded upscaling's image part (x0 ⊙ Γ_0)·W_up1.
        let g0 = &self.norm4_chain()[0];
        let w = 4 * self.c1;
        let mut xt = vec![0f32; n * w];
        xt.par_chunks_mut(CHUNK_ROWS * w)
            .zip(x0.par_chunks(CHUNK_ROWS * d))
            .for_each(|(o, x)| {
                let r = x.len() / d;
                with_scratch([r * d], |[xs]| {
                    for (dst, src) in xs.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                        for ((a, b), g) in dst.iter_mut().zip(src).zip(g0) {
                            *a = b * g;
                        }
                    }
                    gemm_packed(r, xs, d, 1, &self.up1_w, o, w, false);
                })
            });
        Layer0 {
            key,
            x0,
            k0t,
            v0,
            q0,
            xt,
        }
    }

    /// `Γ_l = γ_l ⊙ … ⊙ γ_(L−1)` of the image-side norms (norm4) for l = 0..=L (`Γ_L` = 1); see [`Fold`].
    fn norm4_chain(&self) -> Vec<Vec<f32>> {
        let n_layers = self.layers.len();
        let mut g = vec![vec![1f32; self.dim]; n_layers + 1];
        for l in (0..n_layers).rev() {
            g[l] = g[l + 1]
                .iter()
                .zip(&self.layers[l].norm4.w)
                .map(|(a, b)| a * b)
                .collect();
        }
        g
    }

    /// The matrix of the folded upscaling of one set ([`Fold`]) from each layer's output matrix and output bias
    /// `us[l]` ((heads·(T − 1) × D), (D)), row-major: per layer the rows `(U_l ⊙ Γ_l)·W`, `(b_o,l ⊙ Γ_l)·W`,
    /// `Γ_l·W`, `(β_l ⊙ Γ_(l+1))·W`, then the bias of the convolution.
    fn fold_matrix(&self, us: &[(&[f32], &[f32])], gammas: &[Vec<f32>]) -> Vec<f32> {
        let (d, w) = (self.dim, 4 * self.c1);
        let mut a: Vec<f32> = Vec::new();
        let ones = vec![1f32; d];
        let mut push_scaled = |rows: &[f32], scale: &[f32]| {
            for row in rows.chunks_exact(d) {
                a.extend(row.iter().zip(scale).map(|(x, g)| x * g));
            }
        };
        for (l, blk) in self.layers.iter().enumerate() {
            push_scaled(us[l].0, &gammas[l]);
            push_scaled(us[l].1, &gammas[l]);
            push_scaled(&gammas[l], &ones);
            push_scaled(&blk.norm4.b, &gammas[l + 1]);
        }
        let rows = a.len() / d;
        let mut m = vec![0f32; (rows + 1) * w];
        // Two row blocks in parallel (the product is ~8 MFLOP for the official models).
        let half = rows.div_ceil(2).max(1);
        m[..rows * w]
            .par_chunks_mut(half * w)
            .zip(a.par_chunks(half * d))
            .for_each(|(o, x)| gemm_packed(x.len() / d, x, d, 1, &self.up1_w, o, w, false));
        m[rows * w..].copy_from_slice(&self.up1_b);
        m
    }

    /// Compute the first layer's image side for these inputs (when they allow it: one embedding and one dense
    /// vector shared by all sets), for later decodes of the same embedding to start from.
    pub fn prepare(&self, inp: &DecoderInputs<'_>) -> Option<Layer0> {
        match (&inp.layer0_key, shared_dense(inp)) {
            (Some(key), Some(dense)) if inp.n_embeddings == 1 && !self.layers.is_empty() => {
                Some(self.build_layer0(key.clone(), inp, dense))
            }
            _ => None,
        }
    }

    /// The token-side part of a block before its token-to-image attention: self-attention and norm1.
    fn self_attention(&self, blk: &HostTwoWayBlock, queries: &mut [f32], tokens: &[f32], t: usize) {
        if blk.skip_first_layer_pe {
            let out = blk
                .self_attn
                .forward_tokens(queries, queries, queries, t, t);
            queries.copy_from_slice(&out);
        } else {
            let q = add(queries, tokens);
            let out = blk.self_attn.forward_tokens(&q, &q, queries, t, t);
            queries.iter_mut().zip(&out).for_each(|(a, b)| *a += b);
        }
        blk.norm1.rows_inplace(queries);
    }

    /// After the token-to-image attention output: residual, norm2, MLP, norm3.
    fn after_t2i(&self, blk: &HostTwoWayBlock, queries: &mut [f32], attn_out: &[f32], t: usize) {
        queries.iter_mut().zip(attn_out).for_each(|(a, b)| *a += b);
        blk.norm2.rows_inplace(queries);
        let mut h = blk.mlp1.forward(queries, t, Par::Auto);
        h.iter_mut().for_each(|v| *v = v.max(0.0));
        let m = blk.mlp2.forward(&h, t, Par::Auto);
        queries.iter_mut().zip(&m).for_each(|(a, b)| *a += b);
        blk.norm3.rows_inplace(queries);
    }

    /// One row-parallel pass over the image tokens.
    ///
    /// * `shared`: keys shared by all sets (then `sets` are outputs when `i2t` is given, unused otherwise);
    ///   without it, `sets` hold each set's keys and are updated in place;
    /// * `i2t`: image-to-token attention (+ residual + norm) applied to the keys first;
    /// * `t2i`: token-to-image attention scores on the (new) keys; returns the weighted key sums per set
    ///   (heads·tokens × D);
    /// * `rec`: where the image-to-token attention is recorded for the folded upscaling;
    /// * `keep_keys`: whether the keys after the image-to-token attention are stored back into `sets` (without
    ///   shared keys), or only used within the pass (the last pass when the upscaling is folded).
    #[allow(clippy::too_many_arguments)]
    fn pass(
        &self,
        n: usize,
        pe: &[f32],
        shared: Option<&[f32]>,
        q0: Option<&[f32]>,
        mut sets: Vec<&mut [f32]>,
        i2t: Option<I2tArgs<'_>>,
        t2i: &[T2i],
        rec: Option<Record<'_>>,
        keep_keys: bool,
    ) -> Vec<Vec<f32>> {
        let d = self.dim;
        let b = t2i.len();
        let n_chunks = n.div_ceil(CHUNK_ROWS);
        // Per chunk: the chunk of every set's key buffer (and of its record rows).
        let mut chunked: Vec<Vec<&mut [f32]>> = (0..n_chunks).map(|_| Vec::new()).collect();
        for s in sets.iter_mut() {
            for (c, part) in s.chunks_mut(CHUNK_ROWS * d).enumerate() {
                chunked[c].push(part);
            }
        }
        let (rec_col, rec_stride) = rec.as_ref().map_or((0, 0), |r| (r.col, r.stride));
        let mut rec_chunked: Vec<Vec<&mut [f32]>> = (0..n_chunks).map(|_| Vec::new()).collect();
        if let Some(rec) = rec {
            for s in rec.bufs {
                for (c, part) in s.chunks_mut(CHUNK_ROWS * rec_stride).enumerate() {
                    rec_chunked[c].push(part);
                }
            }
        }
        // With shared keys, the first scores of all sets are one product: stack their matrices.
        // (With cached image-side queries `q0`, the image-to-token scores come from those instead.)
        let q0 = q0.filter(|_| i2t.is_some());
        let g_all: Option<(PackedB, Vec<f32>)> = shared.filter(|_| q0.is_none()).map(|_| {
            let gs: Vec<(&[f32], &[f32])> = match i2t {
                Some((p, ..)) => p.iter().map(|p| (&p.g[..], &p.c[..])).collect(),
                None => t2i.iter().map(|p| (&p.g[..], &p.c[..])).collect(),
            };
            let g: Vec<f32> = gs.iter().flat_map(|(g, _)| g.iter().copied()).collect();
            let c: Vec<f32> = gs.iter().flat_map(|(_, c)| c.iter().copied()).collect();
            (PackedB::new(&g, d, c.len(), 1, d), c)
        });
        let ctx = PassCtx {
            d,
            i2t,
            rec: (rec_col, rec_stride),
        };
        let results: Vec<Vec<Partial>> = chunked
            .into_par_iter()
            .zip(rec_chunked)
            .enumerate()
            .map(|(ci, (mut bufs, mut recs))| {
                let r0 = ci * CHUNK_ROWS;
                let r = CHUNK_ROWS.min(n - r0);
                let pe_c = &pe[r0 * d..(r0 + r) * d];
                match shared {
                    Some(xs) if q0.is_some() => {
                        let x = &xs[r0 * d..(r0 + r) * d];
                        let (ps, ..) = i2t.expect("image-to-token attention");
                        let q0 = q0.expect("cached queries");
                        let dq = q0.len() / n;
                        let q0c = &q0[r0 * dq..(r0 + r) * dq];
                        let max_cols = ps.iter().map(I2t::cols).max().unwrap_or(0);
                        with_scratch([r * d, r * max_cols], |[xpe2, s]| {
                            (0..b)
                                .map(|si| {
                                    let p = &ps[si];
                                    let ht = p.cols();
                                    let s = &mut s[..r * ht];
                                    p.scores_from_queries(q0c, r, s);
                                    let out = &mut *bufs[si];
                                    let rec = recs.get_mut(si).map(|v| &mut **v);
                                    ctx.i2t_apply(x, s, ht, 0, r, p, out, pe_c, xpe2, rec);
                                    ctx.t2i_partial_xpe(out, xpe2, r, &t2i[si])
                                })
                                .collect()
                        })
                    }
                    Some(xs) => {
                        let x = &xs[r0 * d..(r0 + r) * d];
                        let (ga, ca) = g_all.as_ref().unwrap();
                        let cols = ca.len();
                        with_scratch([r * d, r * cols], |[xpe, s]| {
                            add_into(xpe, x, pe_c);
                            scores(s, xpe, ga, ca, r);
                            match i2t {
                                None => {
                                    let p = column_partial(s, r, cols, x, d);
                                    let mut off = 0;
                                    t2i.iter()
                                        .map(|q| {
                                            let w = q.gt.n();
                                            let part = Partial {
                                                m: p.m[off..off + w].to_vec(),
                                                l: p.l[off..off + w].to_vec(),
                                                z: p.z[off * d..(off + w) * d].to_vec(),
                                            };
                                            off += w;
                                            part
                                        })
                                        .collect()
                                }
                                Some((ps, ..)) => {
                                    let mut off = 0;
                                    with_scratch([r * d], |[xpe2]| {
                                        (0..b)
                                            .map(|si| {
                                                let out = &mut *bufs[si];
                                                let rec = recs.get_mut(si).map(|v| &mut **v);
                                                ctx.i2t_apply(
                                                    x, s, cols, off, r, &ps[si], out, pe_c, xpe2,
                                                    rec,
                                                );
                                                off += ps[si].gt.n();
                                                ctx.t2i_partial_xpe(out, xpe2, r, &t2i[si])
                                            })
                                            .collect()
                                    })
                                }
                            }
                        })
                    }
                    None => (0..b)
                        .map(|si| {
                            let buf = &mut *bufs[si];
                            match i2t {
                                Some((ps, ..)) => {
                                    let ht = ps[si].gt.n();
                                    with_scratch([r * d, r * d, r * ht], |[tmp, xpe, s]| {
                                        // The old keys are read from `buf`; the new ones go back there when
                                        // they are kept, else to `tmp`.
                                        let (x, out): (&[f32], &mut [f32]) = if keep_keys {
                                            tmp.copy_from_slice(buf);
                                            (tmp, buf)
                                        } else {
                                            (buf, tmp)
                                        };
                                        add_into(xpe, x, pe_c);
                                        scores(s, xpe, &ps[si].gt, &ps[si].c, r);
                                        let rec = recs.get_mut(si).map(|v| &mut **v);
                                        ctx.i2t_apply(x, s, ht, 0, r, &ps[si], out, pe_c, xpe, rec);
                                        ctx.t2i_partial_xpe(out, xpe, r, &t2i[si])
                                    })
                                }
                                None => ctx.t2i_partial(buf, pe_c, r, &t2i[si]),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        (0..b)
            .map(|si| {
                let parts: Vec<&Partial> = results.iter().map(|c| &c[si]).collect();
                merge_partials(&parts, t2i[si].gt.n(), d)
            })
            .collect()
    }

    /// Run the decoder. `mask_tokens` selects the mask tokens to output (e.g. 1..=3 for multimask). `layer0` is
    /// used when it was prepared for these inputs (same embedding, positional encoding and dense vector).
    pub fn forward(
        &self,
        inp: &DecoderInputs<'_>,
        mask_tokens: &[usize],
        layer0: Option<&Layer0>,
    ) -> DecoderOutputs {
        let d = self.dim;
        let (gh, gw) = inp.grid;
        let n = gh * gw;
        let bsz = inp.batch;
        let n_out = 1 + self.n_masks;
        let t = n_out + inp.n_sparse;

        // Prompt tokens per set: [iou, masks..., sparse...].
        let tokens: Vec<Vec<f32>> = (0..bsz)
            .map(|b| {
                let mut v = self.output_tokens.clone();
                v.extend_from_slice(&inp.sparse[b * inp.n_sparse * d..(b + 1) * inp.n_sparse * d]);
                v
            })
            .collect();
        let mut queries = tokens.clone();

        // Initial keys: embedding (channels last) + dense prompt embedding; shared by all sets when possible.
        let emb = |e: usize| &inp.embeddings[e * d * n..(e + 1) * d * n];
        let shared_dense = shared_dense(inp);
        let l0 = match (&inp.layer0_key, layer0) {
            (Some(key), Some(l0)) if inp.n_embeddings == 1 && l0.key == *key => Some(l0),
            _ => None,
        };
        let mut shared_keys: Option<Vec<f32>> = match shared_dense {
            Some(dv) if inp.n_embeddings == 1 && l0.is_none() => {
                let mut x = self.pool.take(n * d);
                keys_from_nchw(&mut x, emb(0), n, d, dv, 0);
                Some(x)
            }
            _ => None,
        };
        let mut keys: Vec<Vec<f32>> = if shared_keys.is_some() || l0.is_some() {
            Vec::new()
        } else {
            (0..bsz)
                .map(|b| {
                    let e = emb(if inp.n_embeddings == 1 { 0 } else { b });
                    let mut x = self.pool.take(n * d);
                    match inp.dense {
                        Dense::Shared(v) => keys_from_nchw(&mut x, e, n, d, v, 0),
                        Dense::PerSet(v) => {
                            keys_from_nchw(&mut x, e, n, d, &v[b * d..(b + 1) * d], 0)
                        }
                        Dense::Full(v) => {
                            keys_from_nchw(&mut x, e, n, d, &v[b * n * d..(b + 1) * n * d], d)
                        }
                    }
                    x
                })
                .collect()
        };

        // The final attention only matters for the IoU token and the selected mask tokens.
        let final_rows: Vec<usize> = std::iter::once(0)
            .chain(mask_tokens.iter().map(|&i| 1 + i))
            .collect();
        let n_layers = self.layers.len();
        // With the first layer's image side cached, the first upscaling is folded through the image-to-token
        // attentions ([`Fold`]): their probabilities and norm statistics are recorded per set.
        let fold_layout: Option<(Vec<(usize, usize)>, usize)> =
            l0.as_ref().filter(|_| n_layers > 0).map(|_| {
                let mut cols = Vec::with_capacity(n_layers);
                let mut k = 0;
                for blk in &self.layers {
                    // The probabilities of the first T − 1 tokens (see `I2t::u`).
                    let ht = blk.i2t.heads * (t - 1);
                    cols.push((k, ht));
                    k += ht + 3;
                }
                (cols, k + 1)
            });
        let mut coef: Vec<Vec<f32>> = match &fold_layout {
            Some((_, k)) => (0..bsz).map(|_| self.pool.take(n * k)).collect(),
            None => Vec::new(),
        };
        // Per layer, per set: the image-to-token output matrix relative to the last token (heads·(T − 1) × D) and
        // the output bias (D).
        let mut fold_us: Vec<Vec<(Vec<f32>, Vec<f32>)>> = vec![Vec::new(); n_layers];
        // Whether the keys are still the shared initial keys (before the first image-to-token attention).
        let mut shared_live = shared_keys.is_some() || l0.is_some();
        let mut pending_i2t: Option<(Vec<I2t>, usize)> = None;
        for li in 0..=n_layers {
            // Token side up to the token-to-image attention of layer li (or the final attention).
            let (attn, blk) = if li < n_layers {
                (&self.layers[li].t2i, Some(&self.layers[li]))
            } else {
                (&self.final_attn, None)
            };
            let rows: Vec<usize> = match blk {
                Some(_) => (0..t).collect(),
                None => final_rows.clone(),
            };
            let q_ins: Vec<Vec<f32>> = (0..bsz)
                .map(|b| {
                    if let Some(blk) = blk {
                        self.self_attention(blk, &mut queries[b], &tokens[b], t);
                    }
                    let (qb, tb) = (&queries[b], &tokens[b]);
                    let mut q_in = Vec::with_capacity(rows.len() * d);
                    for &r in &rows {
                        q_in.extend((0..d).map(|c| qb[r * d + c] + tb[r * d + c]));
                    }
                    q_in
                })
                .collect();
            let outs: Vec<Vec<f32>> = match (&l0, li) {
                // The first layer's keys and values are cached: no pass over the image tokens.
                (Some(l0), 0) => self.t2i_cached(attn, &q_ins, t, l0),
                _ => {
                    let t2i: Vec<T2i> = q_ins
                        .iter()
                        .map(|q_in| self.t2i_prep(attn, q_in, rows.len()))
                        .collect();
                    let i2t_info = pending_i2t.take();
                    let i2t_args = i2t_info.as_ref().map(|(ps, pli)| {
                        let blk = &self.layers[*pli];
                        (&ps[..], &blk.i2t, &blk.norm4, t)
                    });
                    // Shared keys: the cached first-layer keys, or the pooled initial keys.
                    let shared: Option<&[f32]> = match (&shared_keys, &l0) {
                        (Some(k), _) => Some(&k[..]),
                        (None, Some(c)) if shared_live => Some(&c.x0[..]),
                        _ => None,
                    };
                    let q0 = l0.as_ref().filter(|_| shared_live).map(|c| &c.q0[..]);
                    let rec = match (&fold_layout, &i2t_info) {
                        (Some((cols, k)), Some((_, pli))) => Some(Record {
                            bufs: coef.iter_mut().map(|c| &mut c[..]).collect(),
                            col: cols[*pli].0,
                            stride: *k,
                        }),
                        _ => None,
                    };
                    let z = match (i2t_args, shared) {
                        (None, Some(_)) => {
                            self.pass(n, inp.pe, shared, None, Vec::new(), None, &t2i, rec, true)
                        }
                        (Some(args), Some(_)) => {
                            keys = (0..bsz).map(|_| self.pool.take(n * d)).collect();
                            let bufs: Vec<&mut [f32]> =
                                keys.iter_mut().map(|k| &mut k[..]).collect();
                            let z =
                                self.pass(n, inp.pe, shared, q0, bufs, Some(args), &t2i, rec, true);
                            shared_live = false;
                            z
                        }
                        (args, None) => {
                            let bufs: Vec<&mut [f32]> =
                                keys.iter_mut().map(|k| &mut k[..]).collect();
                            // After the last layer the keys only feed the upscaling, which the fold
                            // computes from the recorded coefficients.
                            let keep = !(fold_layout.is_some() && li == n_layers);
                            self.pass(n, inp.pe, None, None, bufs, args, &t2i, rec, keep)
                        }
                    };
                    if let (Some(_), Some((ps, pli))) = (&fold_layout, i2t_info) {
                        fold_us[pli] = ps.into_iter().map(|p| (p.u, p.bias)).collect();
                    }
                    if !shared_live {
                        self.pool.give(shared_keys.take());
                    }
                    z.iter()
                        .map(|z| self.t2i_finish(attn, z, rows.len()))
                        .collect()
                }
            };
            for (b, out) in outs.iter().enumerate() {
                match blk {
                    Some(blk) => self.after_t2i(blk, &mut queries[b], out, t),
                    None => {
                        for (i, &r) in rows.iter().enumerate() {
                            let q = &mut queries[b][r * d..(r + 1) * d];
                            q.iter_mut()
                                .zip(&out[i * d..(i + 1) * d])
                                .for_each(|(a, o)| *a += o);
                            self.norm_final.rows_inplace(q);
                        }
                    }
                }
            }
            if let Some(blk) = blk {
                let ps = (0..bsz)
                    .map(|b| {
                        let cached = li == 0 && l0.is_some();
                        self.i2t_prep(&blk.i2t, &queries[b], &tokens[b], t, cached)
                    })
                    .collect();
                pending_i2t = Some((ps, li));
            }
        }
        // With no layers, the keys are still the shared initial keys.
        if let Some(k) = shared_keys.take() {
            keys = (0..bsz).map(|_| k.clone()).collect();
            self.pool.give([k]);
        }

        // Heads: hypernetworks and IoU prediction.
        let k_out = mask_tokens.len();
        let mlp = |layers: &[HostLinear], x: &[f32]| -> Vec<f32> {
            let mut x = x.to_vec();
            for (i, l) in layers.iter().enumerate() {
                x = l.forward(&x, 1, Par::Auto);
                if i + 1 < layers.len() {
                    x.iter_mut().for_each(|v| *v = v.max(0.0));
                }
            }
            x
        };
        let mut iou = Vec::with_capacity(bsz * k_out);
        let mut hyper = Vec::with_capacity(bsz);
        for q in &queries {
            let all = mlp(&self.iou_head, &q[..d]);
            iou.extend(mask_tokens.iter().map(|&i| all[i]));
            let h: Vec<f32> = mask_tokens
                .iter()
                .flat_map(|&i| mlp(&self.hyper[i], &q[(1 + i) * d..(2 + i) * d]))
                .collect();
            hyper.push(h);
        }

        let masks = {
            let fold = match (&fold_layout, &l0) {
                (Some((cols, k)), Some(c)) => {
                    let gammas = self.norm4_chain();
                    let m = (0..bsz)
                        .map(|b| {
                            let us: Vec<(&[f32], &[f32])> =
                                fold_us.iter().map(|u| (&u[b].0[..], &u[b].1[..])).collect();
                            self.fold_matrix(&us, &gammas)
                        })
                        .collect();
                    Some(Fold {
                        xt: &c.xt,
                        coef: &coef,
                        m,
                        layers: cols.clone(),
                        k: *k,
                    })
                }
                _ => None,
            };
            let m = self.upscale(&keys, &hyper, (gh, gw), k_out, fold.as_ref());
            m
        };
        self.pool.give(keys);
        self.pool.give(coef);
        DecoderOutputs { masks, iou }
    }

    /// Output upscaling (two 2×2 transposed convolutions with LayerNorm2d and GELU) fused with the products with
    /// the hypernetwork outputs: keys (B × (gh·gw × D)) → mask logits (B, K, 4gh, 4gw). With `fold`, the first
    /// convolution comes from the recorded attention coefficients instead of the keys.
    fn upscale(
        &self,
        keys: &[Vec<f32>],
        hyper: &[Vec<f32>],
        grid: (usize, usize),
        k_out: usize,
        fold: Option<&Fold<'_>>,
    ) -> Vec<f32> {
        let d = self.dim;
        let (gh, gw) = grid;
        let (mh, mw) = (4 * gh, 4 * gw);
        let plane = mh * mw;
        let mut masks = vec![0f32; keys.len() * k_out * plane];
        let grid_rows = (CHUNK_ROWS / gw).max(1);
        let chunk_out = grid_rows * 4 * mw;
        // Tasks: (set, chunk of grid rows), each with its rows of every output plane.
        let mut tasks: Vec<(usize, usize, Vec<&mut [f32]>)> = Vec::new();
        for (b, set_masks) in masks.chunks_mut(k_out * plane).enumerate() {
            let mut per_chunk: Vec<Vec<&mut [f32]>> = Vec::new();
            for pl in set_masks.chunks_mut(plane) {
                for (ci, part) in pl.chunks_mut(chunk_out).enumerate() {
                    if per_chunk.len() <= ci {
                        per_chunk.push(Vec::new());
                    }
                    per_chunk[ci].push(part);
                }
            }
            for (ci, parts) in per_chunk.into_iter().enumerate() {
                tasks.push((b, ci, parts));
            }
        }
        let (c1, c2) = (self.c1, self.c2);
        tasks.into_par_iter().for_each(|(b, ci, mut outs)| {
            let y0 = ci * grid_rows;
            let rows = grid_rows.min(gh - y0);
            let r = rows * gw;
            // Second-stage rows are processed in sub-blocks that stay in L1/L2.
            const SUB: usize = 48;
            let kf = fold.map_or(0, |f| f.k);
            let scratch = [r * 4 * c1, SUB * 4 * c2, SUB * 4 * k_out, r * kf];
            with_scratch(scratch, |[u1, u2, m, cs]| {
                // ConvTranspose 1 (+ bias) → LayerNorm2d → GELU; rows (pixel, sub-pixel) of c1 channels.
                match fold {
                    Some(f) => {
                        f.coefficients(b, y0 * gw, r, cs, u1);
                        gemm_seq(
                            r,
                            4 * c1,
                            kf,
                            cs,
                            kf,
                            1,
                            &f.m[b],
                            4 * c1,
                            1,
                            u1,
                            4 * c1,
                            true,
                        );
                    }
                    None => gemm_packed_bias(
                        r,
                        &keys[b][y0 * gw * d..(y0 * gw + r) * d],
                        d,
                        1,
                        &self.up1_w,
                        Some(&self.up1_b),
                        u1,
                        4 * c1,
                        false,
                    ),
                }
                self.up_norm.rows_inplace(u1);
                gelu_inplace(u1);
                // ConvTranspose 2 (+ bias) → GELU; rows (pixel, sub-pixel, sub-sub-pixel) of c2 channels; then
                // the hypernetwork products. Row ((p·4 + s1)·4 + s2) with p = (y, x), s1 = (a, b1),
                // s2 = (a2, b2) is output pixel (4y + 2a + a2, 4x + 2b1 + b2), y relative to the chunk.
                let rows1 = 4 * r;
                let mut i0 = 0;
                while i0 < rows1 {
                    let nb = SUB.min(rows1 - i0);
                    let u2b = &mut u2[..nb * 4 * c2];
                    fill_rows(u2b, nb, 4 * c2, &self.up2_b);
                    gemm_seq(
                        nb,
                        4 * c2,
                        c1,
                        &u1[i0 * c1..],
                        c1,
                        1,
                        &self.up2_w,
                        4 * c2,
                        1,
                        u2b,
                        4 * c2,
                        true,
                    );
                    gelu_inplace(u2b);
                    let mb = &mut m[..nb * 4 * k_out];
                    row_dots(u2b, c2, &hyper[b], k_out, mb);
                    // Output offset of row ((p·4 + s1)·4 + s2): base of pixel p plus a fixed offset per (s1, s2).
                    let sub_off =
                        |s: usize| (2 * (s / 8) + (s / 2) % 2) * mw + 2 * ((s / 4) % 2) + s % 2;
                    let offs: [usize; 16] = std::array::from_fn(sub_off);
                    let row0 = i0 * 4;
                    for (j, v) in mb.chunks_exact(k_out).enumerate() {
                        let row = row0 + j;
                        let p = row / 16;
                        let (yy, xx) = (p / gw, p % gw);
                        let o = 4 * yy * mw + 4 * xx + offs[row % 16];
                        for (out, &val) in outs.iter_mut().zip(v) {
                            out[o] = val;
                        }
                    }
                    i0 += nb;
                }
            });
        });
        masks
    }
}
