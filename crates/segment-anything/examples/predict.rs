//! The README's library example: one click, then a refinement with a mask prompt, a background point and a box.
//!
//! Usage: cargo run --release --example predict -- CHECKPOINT [IMAGE] [CONFIG.json]

use candle_core::Device;
use segment_anything::{
    load_image, ImageLoadOptions, PredictOptions, PromptSet, Sam, SamConfig, SamPredictor,
};

fn main() -> segment_anything::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let checkpoint = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("sam_vit_b_01ec64.pth");
    let image_path = args
        .get(2)
        .map(String::as_str)
        .unwrap_or("assets/images/chelsea.png");
    let config = args.get(3).map(SamConfig::from_json_file).transpose()?;

    // .pth or .safetensors, official or Hugging Face key layout; the variant is detected.
    let sam = Sam::load(checkpoint, config.as_ref(), &Device::Cpu)?;
    let mut predictor = SamPredictor::new(sam);
    // Decoded exactly as Pillow / OpenCV decode it (JPEG, PNG, WebP, TIFF, BMP, GIF), EXIF orientation applied.
    let photo = load_image(image_path, &ImageLoadOptions::default())?;
    predictor.set_dynamic_image(&photo)?; // the image encoder: once per image

    // Then any number of prompts (original-image pixels): the light decoder.
    let click = PromptSet {
        points: vec![[220.0, 140.0]],
        labels: vec![1],
        ..Default::default()
    };
    let out = predictor.predict(&click, PredictOptions::default())?; // 3 masks (u8 0/1), scores, low-res logits
    println!(
        "masks {:?}, scores {:?}",
        out.masks.dims(),
        out.scores.to_vec1::<f32>()?
    );

    // Refine with the best mask as a mask prompt, plus a background point and a box.
    let best = out.scores.argmax(0)?.to_scalar::<u32>()? as usize;
    let refine = PromptSet {
        points: vec![[220.0, 140.0], [30.0, 30.0]],
        labels: vec![1, 0],
        boxes: vec![[100.0, 40.0, 400.0, 290.0]],
        mask_input: Some(out.low_res_logits.narrow(0, best, 1)?),
    };
    let refined = predictor.predict(&refine, PredictOptions::single_mask().with_logits())?;
    println!(
        "refined score: {}, logits {:?}",
        refined.scores.get(0)?.to_scalar::<f32>()?,
        refined.mask_logits.as_ref().map(|l| l.dims().to_vec())
    );
    Ok(())
}
