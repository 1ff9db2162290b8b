use segment_anything::kernels::{
    self,
    direct::{gemm_direct, gemm_packed, PackedB},
    Mat, MatMut, Par,
};
use std::time::Instant;
fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
fn main() {
    // (m, n, k, a_colmajor)
    let shapes = [
        (7, 2048, 256, false),
        (7, 256, 2048, false),
        (7, 128, 256, false),
        (256, 56, 256, false),
        (48, 128, 64, false),
        (96, 128, 64, false),
        (256, 256, 102, false),
        (256, 56, 256, false),
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
    for &(m, n, k, acol) in &shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut c1 = vec![0f32; m * n];
        let mut c2 = vec![0f32; m * n];
        let (ars, acs) = if acol { (1, m) } else { (k, 1) };
        let reps = (20_000_000 / (m * n * k)).max(3);
        let mut t1 = vec![];
        let mut t2 = vec![];
        for _ in 0..9 {
            let t = Instant::now();
            for _ in 0..reps {
                kernels::gemm(
                    m,
                    n,
                    k,
                    MatMut::rows(&mut c1, n),
                    Mat::strided(&a, ars, acs),
                    Mat::rows(&b, n),
                    false,
                    Par::Seq,
                );
            }
            t1.push(t.elapsed().as_secs_f64() / reps as f64);
            let t = Instant::now();
            for _ in 0..reps {
                gemm_direct(m, n, k, &a, ars, acs, &b, n, &mut c2, n, false);
            }
            t2.push(t.elapsed().as_secs_f64() / reps as f64);
        }
        let pb = PackedB::new(&b, k, n, n, 1);
        let mut c3 = vec![0f32; m * n];
        let mut t3 = vec![];
        for _ in 0..9 {
            let t = Instant::now();
            for _ in 0..reps {
                gemm_packed(m, &a, ars, acs, &pb, &mut c3, n, false);
            }
            t3.push(t.elapsed().as_secs_f64() / reps as f64);
        }
        let err3 = c1
            .iter()
            .zip(&c3)
            .fold(0f32, |e, (x, y)| e.max((x - y).abs()));
        println!(
            "   packed {:.1} GFLOP/s (err {err3:.1e})",
            2.0 * (m * n * k) as f64 / 1e9 / med(t3)
        );
        let err = c1
            .iter()
            .zip(&c2)
            .fold(0f32, |e, (x, y)| e.max((x - y).abs()));
        let f = 2.0 * (m * n * k) as f64 / 1e9;
        println!("{m}x{n}x{k} acol={acol}: gemm crate {:.1} GFLOP/s, direct {:.1} GFLOP/s (err {err:.1e})", f / med(t1), f / med(t2));
    }
}
