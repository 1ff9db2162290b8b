use std::time::Instant;
fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (m, n, k, par) = (args[0], args[1], args[2], args[3]);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0f32; m * n];
    let mut times = vec![];
    for _ in 0..7 {
        let t = Instant::now();
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                if par > 1 {
                    gemm::Parallelism::Rayon(par)
                } else {
                    gemm::Parallelism::None
                },
            );
        }
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = times[times.len() / 2];
    println!(
        "{m}x{n}x{k} par {par}: median {:.3} ms, {:.1} GFLOP/s (best {:.1})",
        med * 1e3,
        2.0 * (m * n * k) as f64 / med / 1e9,
        2.0 * (m * n * k) as f64 / times[0] / 1e9
    );
}
