//! Parity of the model with the official PyTorch implementation, on fixtures written by
//! `tools/reference/gen_model_fixtures.py` (random weights, every parameter randomised, real photos).

mod common;

use candle_core::{Device, Tensor};
use common::{get, max_abs_diff, Fixture};
use segment_anything::{PredictOptions, Prompts, Sam, SamConfig, SamInputs};

fn load_model(f: &Fixture) -> Sam {
    let cfg = SamConfig::from_json_file(f.path(&f.config)).expect("config");
    Sam::load(f.path(&f.checkpoint), Some(&cfg), &Device::Cpu).expect("load model")
}

fn prompts(
    f: &Fixture,
    t: &std::collections::HashMap<String, Tensor>,
    case: &common::PromptCase,
) -> Prompts {
    let opt = |n: &Option<String>| n.as_ref().map(|n| get(t, n).clone());
    let _ = f;
    Prompts {
        points: opt(&case.model_points),
        labels: opt(&case.model_labels),
        boxes: opt(&case.model_boxes),
        masks: opt(&case.model_masks),
    }
}

/// Embeddings: max |Δ| ≤ 1e-4 · max |ref|.
fn check_embeddings(name: &str) {
    let f = Fixture::load(name);
    let t = f.tensors();
    let sam = load_model(&f);
    for img in &f.images {
        let emb = sam.encode_images(get(&t, &img.input)).unwrap();
        let (d, m) = max_abs_diff(&emb, get(&t, &img.embedding));
        println!(
            "{name}/{}: embedding max|Δ| = {d:.3e}, max|ref| = {m:.3e}",
            img.name
        );
        assert!(
            d <= 1e-4 * m,
            "{name}/{}: embedding max|Δ| {d} > 1e-4 · {m}",
            img.name
        );
    }
}

/// Prompt cases: low-res logits max |Δ| ≤ 1e-3, scores |Δ| ≤ 1e-4, both from the official embedding (decoder
/// alone) and from our own embedding (whole model).
fn check_cases(name: &str) {
    let f = Fixture::load(name);
    let t = f.tensors();
    let sam = load_model(&f);
    let mut checked = 0;
    for img in &f.images {
        let ours = sam.encode_images(get(&t, &img.input)).unwrap();
        let reference = get(&t, &img.embedding);
        for case in f.cases.iter().filter(|c| c.image == img.name) {
            let p = prompts(&f, &t, case);
            for (which, emb) in [("official embedding", reference), ("our embedding", &ours)] {
                let (low, iou) = sam.decode(emb, &p, case.multimask, None).unwrap();
                let (dl, ml) = max_abs_diff(&low, get(&t, &case.low_res_logits));
                let (di, _) = max_abs_diff(&iou, get(&t, &case.iou_predictions));
                println!(
                    "{}: [{which}] low-res logits max|Δ| = {dl:.3e} (max|ref| {ml:.2}), scores max|Δ| = {di:.3e}",
                    case.name
                );
                assert!(
                    dl <= 1e-3,
                    "{} [{which}]: low-res logits max|Δ| {dl}",
                    case.name
                );
                assert!(di <= 1e-4, "{} [{which}]: scores max|Δ| {di}", case.name);
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "no cases in fixture {name}");
}

#[test]
fn tiny_embeddings_match_official() {
    check_embeddings("tiny");
}

#[test]
fn tiny_prompt_cases_match_official() {
    check_cases("tiny");
}

#[test]
fn grayscale_and_four_channel_models_match_official_adapted_weights() {
    check_embeddings("tiny_gray");
    check_cases("tiny_gray");
    check_embeddings("tiny_4ch");
}

#[test]
fn flexible_input_size_matches_official_with_interpolated_weights() {
    check_embeddings("tiny_flex");
    check_cases("tiny_flex");
}

/// The seed's end-to-end call (channels-last images, one prompt set per image) gives the same logits and
/// scores, and masks at the padded input size.
#[test]
fn end_to_end_call_matches_official() {
    let f = Fixture::load("tiny");
    let t = f.tensors();
    let sam = load_model(&f);
    let case = f
        .cases
        .iter()
        .find(|c| c.kind == "predict" && c.model_masks.is_none())
        .expect("a predict case");
    let img = f.image(&case.image);
    let images = get(&t, &img.input)
        .permute((0, 2, 3, 1))
        .unwrap()
        .contiguous()
        .unwrap();
    let inputs = SamInputs {
        images,
        prompts: prompts(&f, &t, case),
    };
    let options = PredictOptions {
        multimask_output: case.multimask,
        return_logits: true,
    };
    let out = sam.forward(&inputs, options).unwrap();
    let (dl, _) = max_abs_diff(&out.low_res_logits, get(&t, &case.low_res_logits));
    let (di, _) = max_abs_diff(&out.scores, get(&t, &case.iou_predictions));
    assert!(dl <= 1e-3 && di <= 1e-4, "logits {dl}, scores {di}");
    let [h, w] = sam.config().input_size;
    let k = if case.multimask { 3 } else { 1 };
    let mask_logits = out.mask_logits.as_ref().expect("logits were asked for");
    assert_eq!(mask_logits.dims(), &[1, k, h, w]);
    assert_eq!(out.masks.dims(), &[1, k, h, w]);
    // The masks' type does not change with the option; without it there are no logits.
    let binary = sam
        .forward(
            &inputs,
            PredictOptions {
                return_logits: false,
                ..options
            },
        )
        .unwrap();
    assert!(binary.mask_logits.is_none());
    assert_eq!(out.masks.dtype(), candle_core::DType::U8);
    assert_eq!(binary.masks.dtype(), candle_core::DType::U8);
    let logits = mask_logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let bits = binary.masks.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let bits_with = out.masks.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    assert_eq!(bits, bits_with);
    assert!(logits
        .iter()
        .zip(&bits)
        .all(|(l, b)| (*l > 0.0) == (*b == 1)));
    assert!(bits.contains(&1) && bits.contains(&0), "degenerate masks");
}
