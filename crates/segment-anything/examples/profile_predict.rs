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
    let iters: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(20);
    let batch: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(1);
    let generic = args.get(3).map(|s| s == "generic").unwrap_or(false);
    let dev = Device::Cpu;
    let cfg = SamConfig::vit_b();
    let sam = Sam::random(&cfg, 0, &dev)?;
    let emb = Tensor::randn(0f32, 1.0, (1, 256, 64, 64), &dev)?;
    let pts: Vec<f32> = (0..batch).flat_map(|i| [500.0 + i as f32, 300.0]).collect();
    let prompts = Prompts {
        points: Some(Tensor::from_vec(pts, (batch, 1, 2), &dev)?),
        labels: Some(Tensor::ones((batch, 1), candle_core::DType::F32, &dev)?),
        boxes: None,
        masks: None,
    };
    let mut times = vec![];
    let c0 = cpu_seconds();
    for _ in 0..iters {
        let t = Instant::now();
        let (low, _iou) = if generic {
            let (sparse, dense) =
                sam.prompt_encoder()
                    .forward(&prompts, (1024, 1024), (64, 64), &dev)?;
            let pe = sam.prompt_encoder().dense_pe(64, 64, &dev)?;
            sam.mask_decoder()
                .forward_generic(&emb, &pe, &sparse, &dense, true)?
        } else {
            sam.decode(&emb, &prompts, true)?
        };
        times.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(low);
    }
    let cpu = (cpu_seconds() - c0) / iters as f64 * 1e3;
    let mut s = times.clone();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "decode B={batch} {}: median {:.2} ms, min {:.2} ms ({} runs), CPU {:.1} ms per run",
        if generic { "generic" } else { "fast" },
        s[s.len() / 2],
        s[0],
        s.len(),
        cpu
    );
    Ok(())
}
