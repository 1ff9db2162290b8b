//! Parity of `SamPredictor` with the official `SamPredictor` (fixtures from `tools/reference/gen_model_fixtures.py`):
//! Pillow-exact resize, normalisation and padding, per-axis prompt scaling, and the official mask upscaling.

mod common;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::{bool_iou, get, max_abs_diff, repo_root, unpack_bits, Fixture};
use segment_anything::{
    ImageEmbedding, ImageView, PredictOptions, Prediction, PromptSet, Prompts, Sam, SamConfig,
    SamPredictor,
};

fn model(f: &Fixture) -> Arc<Sam> {
    let cfg = SamConfig::from_json_file(f.path(&f.config)).unwrap();
    Arc::new(Sam::load(f.path(&f.checkpoint), Some(&cfg), &Device::Cpu).unwrap())
}

fn predictor_for(f: &Fixture, sam: &Arc<Sam>, image: &str) -> SamPredictor {
    let img = f.image(image);
    let path = repo_root().join(img.file.as_ref().expect("photo file"));
    let photo = segment_anything::load_image(&path, &Default::default()).unwrap();
    let mut p = SamPredictor::new(sam.clone());
    p.set_dynamic_image(&photo).unwrap();
    p
}

/// With and without `return_logits` the masks are the same u8 tensor, and only the first has logits (whose
/// signs are the masks).
fn same_masks(with: &Prediction, without: &Prediction, name: &str) {
    assert!(without.mask_logits.is_none(), "{name}");
    assert_eq!(with.masks.dtype(), DType::U8, "{name}");
    assert_eq!(without.masks.dtype(), DType::U8, "{name}");
    let a = with.masks.flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let b = without
        .masks
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    assert_eq!(a, b, "{name}: masks change with return_logits");
    let logits = with.mask_logits.as_ref().expect("logits");
    assert_eq!(logits.dims(), with.masks.dims(), "{name}");
    let l = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(
        l.iter().zip(&a).all(|(l, m)| (*l > 0.0) == (*m == 1)),
        "{name}: masks are not the logits' signs"
    );
}

fn check_masks(
    name: &str,
    t: &std::collections::HashMap<String, Tensor>,
    logits: &Tensor,
    binary: &Tensor,
    case: &common::PromptCase,
) {
    if let Some(ref_name) = &case.masks_logits {
        let (d, m) = max_abs_diff(logits, get(t, ref_name));
        println!("{name}: upscaled logits max|Δ| = {d:.3e} (max|ref| {m:.2})");
        assert!(d <= 1e-3, "{name}: upscaled logits max|Δ| {d}");
    }
    if let Some(bits_name) = &case.masks_bits {
        let dims = binary.dims().to_vec();
        let n: usize = dims.iter().product();
        let reference = unpack_bits(get(t, bits_name), n);
        let ours: Vec<bool> = binary
            .flatten_all()
            .unwrap()
            .to_vec1::<u8>()
            .unwrap()
            .iter()
            .map(|v| *v == 1)
            .collect();
        let plane = dims[dims.len() - 2] * dims[dims.len() - 1];
        for (k, (a, b)) in ours.chunks(plane).zip(reference.chunks(plane)).enumerate() {
            let iou = bool_iou(a, b);
            let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
            println!("{name}: mask {k} IoU = {iou:.6} ({differing} pixels differ)");
            assert!(iou >= 0.999, "{name}: mask {k} IoU {iou}");
        }
    }
}

#[test]
fn predictor_embeddings_match_official_set_image() {
    let f = Fixture::load("tiny");
    let t = f.tensors();
    let sam = model(&f);
    for img in &f.images {
        let p = predictor_for(&f, &sam, &img.name);
        let e = p.image_embedding().unwrap();
        assert_eq!(
            e.original_size,
            (img.original_size[0], img.original_size[1])
        );
        assert_eq!(e.input_size, (img.resized_size[0], img.resized_size[1]));
        let (d, m) = max_abs_diff(&e.embedding, get(&t, &img.embedding));
        println!(
            "{}: predictor embedding max|Δ| = {d:.3e} (max|ref| {m:.2})",
            img.name
        );
        assert!(d <= 1e-4 * m, "{}: embedding max|Δ| {d}", img.name);
    }
}

#[test]
fn predictor_cases_match_official() {
    let f = Fixture::load("tiny");
    let t = f.tensors();
    let sam = model(&f);
    let mut checked = 0;
    for img in &f.images {
        let mut p = predictor_for(&f, &sam, &img.name);
        // Use the official embedding so each case isolates the predictor's prompt and mask handling; the
        // embedding itself is checked in `predictor_embeddings_match_official_set_image`.
        let mut e = p.image_embedding().unwrap().clone();
        e.embedding = get(&t, &img.embedding).clone();
        p.set_image_embedding(e).unwrap();
        for case in f.cases.iter().filter(|c| c.image == img.name) {
            let options = PredictOptions {
                multimask_output: case.multimask,
                return_logits: false,
            };
            let (low, scores, logits, binary) = match case.kind.as_str() {
                "predict" => {
                    let prompt = PromptSet {
                        points: case.point_coords.clone().unwrap_or_default(),
                        labels: case.point_labels.clone().unwrap_or_default(),
                        boxes: case.box_.map(|b| vec![b]).unwrap_or_default(),
                        mask_input: case.mask_input.as_ref().map(|n| get(&t, n).clone()),
                    };
                    let a = p.predict(&prompt, options.with_logits()).unwrap();
                    let b = p.predict(&prompt, options).unwrap();
                    same_masks(&a, &b, &case.name);
                    (
                        a.low_res_logits.unsqueeze(0).unwrap(),
                        a.scores.unsqueeze(0).unwrap(),
                        a.mask_logits.unwrap().unsqueeze(0).unwrap(),
                        b.masks.unsqueeze(0).unwrap(),
                    )
                }
                "predict_torch" => {
                    let opt = |n: &Option<String>| n.as_ref().map(|n| get(&t, n).clone());
                    let prompts = Prompts {
                        points: opt(&case.model_points),
                        labels: opt(&case.model_labels),
                        boxes: opt(&case.model_boxes),
                        masks: opt(&case.model_masks),
                    };
                    let a = p
                        .predict_transformed(&prompts, options.with_logits())
                        .unwrap();
                    let b = p.predict_transformed(&prompts, options).unwrap();
                    same_masks(&a, &b, &case.name);
                    (a.low_res_logits, a.scores, a.mask_logits.unwrap(), b.masks)
                }
                _ => continue,
            };
            let (dl, _) = max_abs_diff(&low, get(&t, &case.low_res_logits));
            let (ds, _) = max_abs_diff(&scores, get(&t, &case.iou_predictions));
            println!(
                "{}: low-res max|Δ| = {dl:.3e}, scores max|Δ| = {ds:.3e}",
                case.name
            );
            assert!(dl <= 1e-3, "{}: low-res logits max|Δ| {dl}", case.name);
            assert!(ds <= 1e-4, "{}: scores max|Δ| {ds}", case.name);
            let (h0, w0) = (img.original_size[0], img.original_size[1]);
            assert_eq!(&logits.dims()[2..], &[h0, w0]);
            check_masks(&case.name, &t, &logits, &binary, case);
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} predictor cases checked");
}

#[test]
fn embedding_file_round_trip_and_model_check() {
    let f = Fixture::load("tiny");
    let sam = model(&f);
    let p = predictor_for(&f, &sam, "chelsea");
    let dir = std::env::temp_dir().join(format!("sam-emb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("chelsea.emb");
    p.image_embedding().unwrap().save(&path).unwrap();
    let loaded = ImageEmbedding::load(&path).unwrap();
    assert_eq!(loaded.model_name, "tiny");
    let mut q = SamPredictor::new(sam.clone());
    q.set_image_embedding(loaded.clone()).unwrap();
    let prompt = PromptSet::point(200.0, 150.0);
    let logits = PredictOptions::multimask().with_logits();
    let a = p.predict(&prompt, logits).unwrap();
    let b = q.predict(&prompt, logits).unwrap();
    assert_eq!(
        max_abs_diff(
            a.mask_logits.as_ref().unwrap(),
            b.mask_logits.as_ref().unwrap()
        )
        .0,
        0.0
    );

    let mut wrong = loaded;
    wrong.model_name = "vit_b".into();
    let err = q.set_image_embedding(wrong).unwrap_err().to_string();
    assert!(err.contains("vit_b") && err.contains("tiny"), "{err}");
    let err = ImageEmbedding::load(f.path("config.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let f = Fixture::load("tiny");
    let sam = model(&f);
    let mut p = SamPredictor::new(sam.clone());
    let err = p
        .predict(&PromptSet::point(1.0, 1.0), PredictOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("set_image"), "{err}");
    assert!(ImageView::new(&[], 0, 0, 3)
        .unwrap_err()
        .to_string()
        .contains("empty"));
    assert!(ImageView::new(&[0; 10], 2, 2, 3).is_err());
    let gray = vec![100u8; 40 * 30 * 3];
    p.set_image(ImageView::new(&gray, 30, 40, 3).unwrap())
        .unwrap();

    let bad = |prompt: PromptSet, word: &str| {
        let err = p
            .predict(&prompt, PredictOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(word), "expected `{word}` in: {err}");
    };
    bad(
        PromptSet {
            points: vec![[1.0, 2.0]],
            labels: vec![],
            ..Default::default()
        },
        "labels",
    );
    bad(
        PromptSet {
            points: vec![],
            labels: vec![1],
            ..Default::default()
        },
        "labels",
    );
    bad(
        PromptSet {
            points: vec![[f64::NAN, 2.0]],
            labels: vec![1],
            ..Default::default()
        },
        "points",
    );
    bad(
        PromptSet {
            points: vec![[f64::INFINITY, 2.0]],
            labels: vec![1],
            ..Default::default()
        },
        "points",
    );
    bad(
        PromptSet {
            points: vec![[1.0, 2.0]],
            labels: vec![7],
            ..Default::default()
        },
        "label",
    );
    bad(PromptSet::boxed([10.0, 5.0, 2.0, 8.0]), "x1 < x0");
    bad(
        PromptSet {
            mask_input: Some(
                Tensor::zeros((1, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
            ),
            ..PromptSet::point(1.0, 1.0)
        },
        "mask_input",
    );
    let err = p
        .predict_batch(
            &[
                PromptSet::point(1.0, 1.0),
                PromptSet::boxed([0.0, 0.0, 5.0, 5.0]),
            ],
            PredictOptions::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("prompt set 1"), "{err}");
}

#[test]
fn batch_of_prompt_sets_equals_separate_calls() {
    let f = Fixture::load("tiny");
    let sam = model(&f);
    let p = predictor_for(&f, &sam, "coffee");
    let sets = vec![
        PromptSet {
            points: vec![[100.0, 120.0], [400.0, 300.0]],
            labels: vec![1, 0],
            boxes: vec![[50.0, 60.0, 500.0, 380.0]],
            mask_input: None,
        },
        PromptSet {
            points: vec![[300.0, 200.0], [10.0, 10.0]],
            labels: vec![1, 1],
            boxes: vec![[0.0, 0.0, 599.0, 399.0]],
            mask_input: None,
        },
    ];
    let options = PredictOptions::multimask().with_logits();
    let batch = p.predict_batch(&sets, options).unwrap();
    assert_eq!(batch.masks.dims(), &[2, 3, 400, 600]);
    for (i, s) in sets.iter().enumerate() {
        let one = p.predict(s, options).unwrap();
        let (d, _) = max_abs_diff(&batch.low_res_logits.get(i).unwrap(), &one.low_res_logits);
        assert!(d < 1e-5, "set {i}: {d}");
    }
}

/// A server shares one model across threads and one predictor per image: these types must be `Send + Sync`.
#[test]
fn shared_types_are_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Sam>();
    shared::<Arc<Sam>>();
    shared::<SamPredictor>();
    shared::<segment_anything::AutomaticMaskGenerator>();
    shared::<segment_anything::DecoderCache>();
    shared::<ImageEmbedding>();
    shared::<Prediction>();
    shared::<PredictOptions>();
}

/// The decoder's cached work belongs to the image that was set: made by `set_image`, counted in `image_bytes`,
/// shared by clones, replaced with the next image and dropped with `clear_image`; predictions from many threads on
/// one predictor equal the single-threaded one.
#[test]
fn image_session_owns_its_decoder_cache() {
    let f = Fixture::load("tiny");
    let sam = model(&f);
    let mut p = SamPredictor::new(sam.clone());
    assert_eq!(p.image_bytes(), 0);
    assert!(p.decoder_cache().is_err());
    let photo = |name: &str| {
        let img = f.image(name);
        let path = repo_root().join(img.file.as_ref().expect("photo file"));
        segment_anything::load_image(&path, &Default::default()).unwrap()
    };
    p.set_dynamic_image(&photo("chelsea")).unwrap();
    let emb = p.image_embedding().unwrap().embedding.clone();
    let cache = p.decoder_cache().unwrap().clone();
    assert!(!cache.is_empty());
    assert_eq!(
        p.image_bytes(),
        emb.elem_count() * 4 + cache.bytes(),
        "image_bytes counts the embedding and the cache"
    );
    let prompt = PromptSet::point(200.0, 150.0);
    let options = PredictOptions::multimask().with_logits();
    let first = p.predict(&prompt, options).unwrap();
    // The same decode without the cache, straight through the model: the cache changes nothing.
    let resizer = p.resizer().unwrap();
    let [[x, y]] = resizer.scale_points(&[[200.0, 150.0]])[..] else {
        panic!("one point")
    };
    let prompts = Prompts {
        points: Some(Tensor::from_vec(vec![x, y], (1, 1, 2), &Device::Cpu).unwrap()),
        labels: Some(Tensor::from_vec(vec![1f32], (1, 1), &Device::Cpu).unwrap()),
        ..Default::default()
    };
    let (low, iou) = sam.decode(&emb, &prompts, true, None).unwrap();
    let (dl, _) = max_abs_diff(&low.squeeze(0).unwrap(), &first.low_res_logits);
    let (di, _) = max_abs_diff(&iou.squeeze(0).unwrap(), &first.scores);
    assert!(dl <= 2e-5 && di <= 2e-5, "cached vs uncached: {dl}, {di}");
    // Clones share the session; threads predicting on it agree with the first answer.
    let q = p.clone();
    assert_eq!(q.image_bytes(), p.image_bytes());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| q.predict(&prompt, options).unwrap()))
            .collect();
        for h in handles {
            let out = h.join().unwrap();
            assert_eq!(
                max_abs_diff(&out.low_res_logits, &first.low_res_logits).0,
                0.0
            );
        }
    });
    // A new image replaces the state; clearing drops it.
    p.set_dynamic_image(&photo("coffee")).unwrap();
    assert_ne!(p.original_size().unwrap(), q.original_size().unwrap());
    assert!(p.image_bytes() > 0);
    p.clear_image();
    assert_eq!(p.image_bytes(), 0);
    assert!(p.predict(&prompt, options).is_err());
    // The clone keeps its own image.
    assert_eq!(q.predict(&prompt, options).unwrap().scores.dims(), &[3]);
}
