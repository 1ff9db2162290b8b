use candle_core::{Device, Tensor};
use segment_anything::*;
use std::time::Instant;
fn main() -> Result<()> {
    let dev = Device::Cpu;
    let cfg = SamConfig::vit_b();
    let sam = Sam::random(&cfg, 0, &dev)?;
    let emb = Tensor::randn(0f32, 1.0, (1, 256, 64, 64), &dev)?;
    let prompts = Prompts {
        points: Some(Tensor::new(&[[[500f32, 300.0]]], &dev)?),
        labels: Some(Tensor::new(&[[1f32]], &dev)?),
        boxes: None,
        masks: None,
    };
    for _ in 0..20 {
        let t = Instant::now();
        let (low, _iou) = sam.decode(&emb, &prompts, true)?;
        let t1 = t.elapsed();
        let v = low.flatten_all()?.to_vec1::<f32>()?;
        let t = Instant::now();
        let up = resize::postprocess_masks(&v, 3, 256, 256, (1024, 1024), (683, 1024), (427, 640));
        let t2 = t.elapsed();
        let t = Instant::now();
        let _bin: Vec<u8> = up.iter().map(|&x| u8::from(x > 0.0)).collect();
        println!(
            "decode {:?} postprocess {:?} threshold {:?}",
            t1,
            t2,
            t.elapsed()
        );
    }
    Ok(())
}
