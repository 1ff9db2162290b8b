//! Scratch: time the image encoder (random vit_b weights, random 1024×1024 input).
use candle_core::{Device, Tensor};
use segment_anything::*;
use std::time::Instant;
/// User + system CPU time of this process (seconds), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = 100.0;
    (f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        / tick
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let iters: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(2);
    let generic = args.get(2).map(|s| s == "generic").unwrap_or(false);
    let dev = Device::Cpu;
    let cfg = SamConfig::vit_b();
    let sam = Sam::random(&cfg, 0, &dev)?;
    let img = Tensor::randn(0f32, 1.0, (1, 3, 1024, 1024), &dev)?;
    let mut times = vec![];
    let c0 = cpu_seconds();
    for _ in 0..iters {
        let t = Instant::now();
        let e = if generic {
            sam.image_encoder().forward_generic(&img)?
        } else {
            sam.image_encoder().forward(&img)?
        };
        times.push(t.elapsed().as_secs_f64());
        std::hint::black_box(e);
    }
    let cpu = (cpu_seconds() - c0) / iters as f64;
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "encoder {}: median {:.3} s, min {:.3} s, CPU {:.2} s per run",
        if generic { "generic" } else { "fast" },
        times[times.len() / 2],
        times[0],
        cpu
    );
    Ok(())
}
