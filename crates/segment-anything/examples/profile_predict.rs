use candle_core::{Device, Tensor};
use segment_anything::*;
use std::time::Instant;
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
    let mut s = times.clone();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "decode B={batch} {}: median {:.2} ms, min {:.2} ms ({} runs)",
        if generic { "generic" } else { "fast" },
        s[s.len() / 2],
        s[0],
        s.len()
    );
    Ok(())
}
