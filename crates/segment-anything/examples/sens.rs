use candle_core::{Device, Tensor};
use segment_anything::*;
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let m = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / m
}
fn main() -> Result<()> {
    let dev = Device::Cpu;
    let mut cfg = SamConfig::vit_b();
    cfg.input_size = [320, 320];
    cfg.fixed_input_size = false;
    cfg.encoder_embed_dim = 64;
    cfg.encoder_nb_blocks = 2;
    cfg.encoder_nb_heads = 4;
    cfg.encoder_global_attn_indices = vec![1];
    cfg.encoder_window_size = 6;
    let sam = Sam::random(&cfg, 4, &dev)?;
    let sc: f64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(1.0);
    let emb = (Tensor::randn(0f32, 1.0, (1, 256, 20, 20), &dev)? * sc)?;
    let emb2 = (&emb * (1.0 + 1e-7))?;
    let prompts = Prompts {
        points: Some(Tensor::new(&[[[100f32, 200.0]]], &dev)?),
        labels: Some(Tensor::new(&[[1f32]], &dev)?),
        ..Default::default()
    };
    let (sparse, dense) = sam
        .prompt_encoder()
        .forward(&prompts, (320, 320), (20, 20), &dev)?;
    let pe = sam.prompt_encoder().dense_pe(20, 20, &dev)?;
    let dec = sam.mask_decoder();
    let (g1, i1) = dec.forward_generic(&emb, &pe, &sparse, &dense, true)?;
    let (g2, i2) = dec.forward_generic(&emb2, &pe, &sparse, &dense, true)?;
    let (f1, fi1) = dec.forward(&emb, &pe, &sparse, &dense, true)?;
    println!(
        "generic perturbation: masks {:.2e} iou {:.2e}",
        rel(&g2, &g1),
        rel(&i2, &i1)
    );
    println!(
        "fast vs generic: masks {:.2e} iou {:.2e}",
        rel(&f1, &g1),
        rel(&fi1, &i1)
    );
    println!("iou {:?}", i1.to_vec2::<f32>()?);
    Ok(())
}
#[allow(dead_code)]
fn unused() {}
