//! Parity report against a fixture directory written by the reference tools (e.g. the full-size models from
//! `tools/reference/full_size_reference.py`): prints the error figures of the embedding, the low-res logits,
//! the scores, the upscaled logits and the binary masks (IoU), through the public predictor API.
//!
//! Usage: cargo run --release -p segment-anything --example parity_report -- DIR [DIR...]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use common::{bool_iou, get, max_abs_diff, repo_root, unpack_bits, Fixture};
use segment_anything::{
    PredictOptions, Prediction, PromptSet, Prompts, Sam, SamConfig, SamPredictor,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    if dirs.is_empty() {
        return Err("usage: parity_report DIR [DIR...]".into());
    }
    for dir in dirs {
        report(Path::new(&dir))?;
    }
    Ok(())
}

/// The upscaled logits of a prediction made with `return_logits`.
fn logits_of(p: &Prediction) -> Result<candle_core::Tensor, Box<dyn std::error::Error>> {
    p.mask_logits
        .clone()
        .ok_or_else(|| "the prediction has no logits".into())
}

fn report(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(dir.join("cases.json"))?;
    let mut f: Fixture = serde_json::from_str(&text)?;
    f.dir = dir.to_path_buf();
    let t = f.tensors();
    let cfg = SamConfig::from_json_file(f.path(&f.config))?;
    let start = Instant::now();
    let sam = Arc::new(Sam::load(f.path(&f.checkpoint), Some(&cfg), &Device::Cpu)?);
    println!(
        "## {} ({}), loaded in {:.2?}",
        cfg.name,
        dir.display(),
        start.elapsed()
    );
    for img in &f.images {
        let file = img.file.as_ref().ok_or("fixture image without a file")?;
        let path = if Path::new(file).is_absolute() {
            file.into()
        } else {
            repo_root().join(file)
        };
        let mut p = SamPredictor::new(sam.clone());
        let start = Instant::now();
        p.set_dynamic_image(&segment_anything::load_image(path, &Default::default())?)?;
        let (d, m) = max_abs_diff(&p.image_embedding()?.embedding, get(&t, &img.embedding));
        println!(
            "{}: image embedding max|Δ| = {d:.3e} = {:.2e}·max|ref| (max|ref| {m:.2}); encoder {:.2?}",
            img.name,
            d / m,
            start.elapsed()
        );
        for case in f.cases.iter().filter(|c| c.image == img.name) {
            let opts = PredictOptions {
                multimask_output: case.multimask,
                return_logits: true,
            };
            let (low, scores, logits, binary) = match case.kind.as_str() {
                "predict" => {
                    let prompt = PromptSet {
                        points: case.point_coords.clone().unwrap_or_default(),
                        labels: case.point_labels.clone().unwrap_or_default(),
                        boxes: case.box_.map(|b| vec![b]).unwrap_or_default(),
                        mask_input: case.mask_input.as_ref().map(|n| get(&t, n).clone()),
                    };
                    let a = p.predict(&prompt, opts)?;
                    (
                        a.low_res_logits.unsqueeze(0)?,
                        a.scores.unsqueeze(0)?,
                        logits_of(&a)?.unsqueeze(0)?,
                        a.masks.unsqueeze(0)?,
                    )
                }
                _ => {
                    let opt = |n: &Option<String>| n.as_ref().map(|n| get(&t, n).clone());
                    let prompts = Prompts {
                        points: opt(&case.model_points),
                        labels: opt(&case.model_labels),
                        boxes: opt(&case.model_boxes),
                        masks: opt(&case.model_masks),
                    };
                    let a = p.predict_transformed(&prompts, opts)?;
                    let logits = logits_of(&a)?;
                    (a.low_res_logits, a.scores, logits, a.masks)
                }
            };
            let (dl, ml) = max_abs_diff(&low, get(&t, &case.low_res_logits));
            let (ds, _) = max_abs_diff(&scores, get(&t, &case.iou_predictions));
            let mut line = format!(
                "{}: low-res logits max|Δ| = {dl:.3e} (max|ref| {ml:.2}), scores max|Δ| = {ds:.3e}",
                case.name
            );
            if let Some(n) = &case.masks_logits {
                let (du, _) = max_abs_diff(&logits, get(&t, n));
                line.push_str(&format!(", upscaled logits max|Δ| = {du:.3e}"));
            }
            if let Some(n) = &case.masks_bits {
                let count = binary.elem_count();
                let reference = unpack_bits(get(&t, n), count);
                let ours: Vec<bool> = binary
                    .flatten_all()?
                    .to_vec1::<u8>()?
                    .iter()
                    .map(|v| *v == 1)
                    .collect();
                let plane = binary.dims()[2] * binary.dims()[3];
                let min_iou = ours
                    .chunks(plane)
                    .zip(reference.chunks(plane))
                    .map(|(a, b)| bool_iou(a, b))
                    .fold(1.0f64, f64::min);
                let differing = ours.iter().zip(&reference).filter(|(a, b)| a != b).count();
                line.push_str(&format!(
                    ", min mask IoU = {min_iou:.6} ({differing} of {count} pixels differ)"
                ));
            }
            println!("{line}");
        }
    }
    Ok(())
}
