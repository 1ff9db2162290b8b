//! Scratch: time `SamPredictor::predict` (1 point, 3 masks) on a photo with random vit_b weights.
use candle_core::Device;
use segment_anything::*;
use std::time::Instant;
fn main() -> Result<()> {
    let iters: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(40);
    let dev = Device::Cpu;
    let sam = Sam::random(&SamConfig::vit_b(), 0, &dev)?;
    let img =
        segment_anything::load_image("assets/images/rocket.jpg", &Default::default()).unwrap();
    let mut p = SamPredictor::new(sam);
    let t = Instant::now();
    p.set_dynamic_image(&img)?;
    eprintln!("set_image {:.2} s", t.elapsed().as_secs_f64());
    let prompt = PromptSet::point(320.0, 213.5);
    let mut times = vec![];
    for _ in 0..iters {
        let t = Instant::now();
        let r = p.predict(&prompt, true, false)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(r);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "predict median {:.2} ms min {:.2} ms",
        times[times.len() / 2],
        times[0]
    );
    Ok(())
}
