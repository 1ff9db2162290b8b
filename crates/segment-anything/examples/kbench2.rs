use segment_anything::kernels::{self, Mat, MatMut, Par};
use std::time::Instant;
fn med(mut v: Vec<f64>) -> f64 { v.sort_by(|a, b| a.partial_cmp(b).unwrap()); v[v.len() / 2] }
fn main() {
    let shapes = [(4096, 2304, 768), (4096, 768, 768), (4096, 3072, 768), (4096, 768, 3072)];
    for &(m, n, k) in &shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c = vec![0f32; m * n];
        let (mut ta, mut tb, mut ts) = (vec![], vec![], vec![]);
        for _ in 0..5 {
            let t = Instant::now();
            kernels::gemm(m, n, k, MatMut::rows(&mut c, n), Mat::rows(&a, k), Mat::rows(&b, n), false, Par::Auto);
            ta.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let (c0, c1) = c.split_at_mut(m / 2 * n);
            rayon::join(
                || kernels::gemm(m / 2, n, k, MatMut::rows(c0, n), Mat::rows(&a, k), Mat::rows(&b, n), false, Par::Seq),
                || kernels::gemm(m - m / 2, n, k, MatMut::rows(c1, n), Mat::rows(&a[m / 2 * k..], k), Mat::rows(&b, n), false, Par::Seq),
            );
            tb.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            kernels::gemm(m, n, k, MatMut::rows(&mut c, n), Mat::rows(&a, k), Mat::rows(&b, n), false, Par::Seq);
            ts.push(t.elapsed().as_secs_f64());
        }
        let f = 2.0 * (m * n * k) as f64 / 1e9;
        println!("{m}x{n}x{k}: rayon(2) {:.1} GFLOP/s, split+join {:.1}, single {:.1}", f / med(ta), f / med(tb), f / med(ts));
    }
}
