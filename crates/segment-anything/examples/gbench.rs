use segment_anything::kernels::math;
use std::time::Instant;
fn main() {
    let n = 1 << 20;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 20000) as f32 * 0.001 - 10.0)
        .collect();
    let mut y = x.clone();
    let mut best = f64::MAX;
    for _ in 0..20 {
        y.copy_from_slice(&x);
        let t = Instant::now();
        math::gelu_inplace(&mut y);
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("gelu: {:.3} ns/elem", best / n as f64 * 1e9);
    let mut best = f64::MAX;
    for _ in 0..20 {
        y.copy_from_slice(&x);
        let t = Instant::now();
        math::exp_inplace(&mut y);
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("exp: {:.3} ns/elem", best / n as f64 * 1e9);
}
