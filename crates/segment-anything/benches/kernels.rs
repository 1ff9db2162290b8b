//! Kernel benchmarks: the decoder's and encoder's matrix-product shapes through the `gemm` crate, the direct
//! kernels and the packed-B kernels, and the element-wise kernels, as GFLOP/s or GB/s medians.
//!
//! The kernels are crate-private; this benchmark reaches them through the `bench-internals` feature:
//! `cargo bench -p segment-anything --features bench-internals --bench kernels`.

use std::time::Instant;

use segment_anything::kernels::{
    self,
    direct::{gemm_direct, gemm_packed, PackedB},
    math, Mat, MatMut, Par,
};

/// Median seconds per call of `f` over 9 rounds of `reps` calls.
fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |e, (x, y)| e.max((x - y).abs()))
}

fn products() {
    // (m, n, k, A column-major): the mask decoder's token and image-side products, and encoder-like tiles.
    let shapes = [
        (7, 2048, 256, false),
        (7, 256, 2048, false),
        (7, 128, 256, false),
        (256, 56, 256, false),
        (48, 128, 64, false),
        (96, 128, 64, false),
        (256, 256, 102, false),
        (256, 32, 256, false),
        (256, 256, 48, false),
        (56, 256, 256, true),
        (32, 256, 256, true),
        (48, 256, 256, true),
        (256, 256, 56, false),
        (256, 256, 256, false),
        (1024, 128, 64, false),
        (256, 64, 256, false),
    ];
    println!("matrix products, GFLOP/s (median of 9 rounds, one thread)");
    println!(
        "{:>16} {:>5} {:>10} {:>10} {:>10}",
        "m×n×k", "A col", "gemm", "direct", "packed"
    );
    for &(m, n, k, a_col) in &shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let (ars, acs) = if a_col { (1, m) } else { (k, 1) };
        let reps = (20_000_000 / (m * n * k)).max(3);
        let flop = 2.0 * (m * n * k) as f64 / 1e9;
        let mut c_gemm = vec![0f32; m * n];
        let t_gemm = median_secs(reps, || {
            kernels::gemm(
                m,
                n,
                k,
                MatMut::rows(&mut c_gemm, n),
                Mat::strided(&a, ars, acs),
                Mat::rows(&b, n),
                false,
                Par::Seq,
            )
        });
        let mut c_direct = vec![0f32; m * n];
        let t_direct = median_secs(reps, || {
            gemm_direct(m, n, k, &a, ars, acs, &b, n, &mut c_direct, n, false)
        });
        let packed = PackedB::new(&b, k, n, n, 1);
        let mut c_packed = vec![0f32; m * n];
        let t_packed = median_secs(reps, || {
            gemm_packed(m, &a, ars, acs, &packed, &mut c_packed, n, false)
        });
        let err = max_abs_diff(&c_gemm, &c_direct).max(max_abs_diff(&c_gemm, &c_packed));
        assert!(err < 1e-2, "{m}×{n}×{k}: kernels disagree by {err}");
        println!(
            "{:>16} {:>5} {:>10.1} {:>10.1} {:>10.1}",
            format!("{m}×{n}×{k}"),
            a_col,
            flop / t_gemm,
            flop / t_direct,
            flop / t_packed
        );
    }
}

fn element_wise() {
    let n = 1 << 20;
    let src: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32 - 500.0) * 0.01).collect();
    let gb = (2 * n * 4) as f64 / 1e9;
    println!("element-wise kernels on {n} values, GB/s read + written (median of 9 rounds)");
    let mut x = src.clone();
    let t = median_secs(20, || {
        x.copy_from_slice(&src);
        math::exp_inplace(&mut x)
    });
    println!("{:>24} {:>8.2}", "exp", gb / t);
    let t = median_secs(20, || {
        x.copy_from_slice(&src);
        math::gelu_inplace(&mut x)
    });
    println!("{:>24} {:>8.2}", "gelu", gb / t);
    let c = 768;
    let (w, b) = (vec![1.1f32; c], vec![0.1f32; c]);
    let t = median_secs(20, || {
        x.copy_from_slice(&src);
        math::layer_norm_rows_inplace(&mut x, &w, &b, 1e-6)
    });
    println!("{:>24} {:>8.2}", "layer norm (rows of 768)", gb / t);
    let t = median_secs(20, || {
        x.copy_from_slice(&src);
        for row in x.chunks_exact_mut(4096) {
            math::softmax_row(row);
        }
    });
    println!("{:>24} {:>8.2}", "softmax (rows of 4096)", gb / t);
}

fn main() {
    products();
    element_wise();
}
