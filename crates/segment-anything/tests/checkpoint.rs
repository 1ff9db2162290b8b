//! Checkpoint loading tests. Fixtures come from tools/reference/checkpoint_fixtures/make_checkpoint_fixtures.py.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use segment_anything::checkpoint::{
    convert_pth_to_safetensors, detect_format, hf_to_official, infer_config,
    infer_config_from_shapes, is_hf_layout, load_checkpoint, load_pth, load_safetensors,
    save_safetensors, CheckpointFormat,
};
use segment_anything::{Error, SamConfig, StateDict};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/checkpoints")
        .join(name)
}

fn json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A fresh, empty scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sam-ckpt-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Little-endian bytes of a tensor, for bit-exact comparisons.
fn raw(t: &Tensor) -> Vec<u8> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec1::<half::f16>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::F64 => t
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::I64 => t
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::I32 => t
            .to_vec1::<i32>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::I16 => t
            .to_vec1::<i16>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::U32 => t
            .to_vec1::<u32>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::U8 => t.to_vec1::<u8>().unwrap(),
        other => panic!("unexpected dtype {other:?}"),
    }
}

fn assert_same(a: &StateDict, b: &StateDict) {
    let ka: Vec<_> = a.keys().collect();
    let kb: Vec<_> = b.keys().collect();
    assert_eq!(ka, kb, "key sets differ");
    for (k, ta) in a.iter() {
        let tb = b.get(k).unwrap();
        assert_eq!(ta.dtype(), tb.dtype(), "dtype of `{k}`");
        assert_eq!(ta.dims(), tb.dims(), "shape of `{k}`");
        assert_eq!(raw(ta), raw(tb), "values of `{k}`");
    }
}

/// Compare a state dict with tensors_expected.json (bit-exact).
fn check_against_expected(sd: &StateDict, keys: Option<&[&str]>) {
    let expected = json("tensors_expected.json");
    let expected = expected.as_object().unwrap();
    let wanted: Vec<&str> = match keys {
        Some(k) => k.to_vec(),
        None => expected.keys().map(String::as_str).collect(),
    };
    assert_eq!(
        sd.len(),
        wanted.len(),
        "keys: {:?}",
        sd.keys().collect::<Vec<_>>()
    );
    for key in wanted {
        let e = &expected[key];
        let t = sd.get(key).unwrap_or_else(|| panic!("missing `{key}`"));
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.dims(), shape.as_slice(), "shape of `{key}`");
        let dtype = match e["dtype"].as_str().unwrap() {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            "f64" => DType::F64,
            "i64" => DType::I64,
            "i32" => DType::I32,
            "i16" | "i8" => DType::I16, // int8 is widened
            "u8" | "bool" => DType::U8, // bool is stored as 0/1
            other => panic!("dtype {other}"),
        };
        assert_eq!(t.dtype(), dtype, "dtype of `{key}`");
        let flat = t.flatten_all().unwrap();
        if let Some(bits) = e.get("f64_bits") {
            let want: Vec<u64> = bits
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap())
                .collect();
            let got: Vec<u64> = flat
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            assert_eq!(got, want, "values of `{key}`");
        } else {
            let want: Vec<i64> = e["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_i64().unwrap())
                .collect();
            let got: Vec<i64> = match t.dtype() {
                DType::I64 => flat.to_vec1::<i64>().unwrap(),
                DType::I32 => flat
                    .to_vec1::<i32>()
                    .unwrap()
                    .into_iter()
                    .map(i64::from)
                    .collect(),
                DType::I16 => flat
                    .to_vec1::<i16>()
                    .unwrap()
                    .into_iter()
                    .map(i64::from)
                    .collect(),
                DType::U8 => flat
                    .to_vec1::<u8>()
                    .unwrap()
                    .into_iter()
                    .map(i64::from)
                    .collect(),
                other => panic!("dtype {other:?}"),
            };
            assert_eq!(got, want, "values of `{key}`");
        }
    }
}

fn checkpoint_error(r: segment_anything::Result<StateDict>, file: &str) -> String {
    match r {
        Err(Error::Checkpoint { path, message }) => {
            assert!(
                path.ends_with(file),
                "error names {path:?}, expected {file}"
            );
            let shown = Error::Checkpoint {
                path: path.clone(),
                message: message.clone(),
            }
            .to_string();
            assert!(shown.contains(file), "{shown}");
            message
        }
        Err(other) => panic!("expected a checkpoint error for {file}, got {other:?}"),
        Ok(sd) => panic!(
            "{file} loaded ({} tensors) but should have failed",
            sd.len()
        ),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// .pth reading
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn pth_tensors_are_read_exactly() {
    let sd = load_pth(&fixture("tensors.pth"), &Device::Cpu).unwrap();
    check_against_expected(&sd, None);
    assert!(sd.source_name().ends_with("tensors.pth"));
}

#[test]
fn pth_views_of_shared_storage() {
    let sd = load_pth(&fixture("tensors.pth"), &Device::Cpu).unwrap();
    let base = sd.get("shared_base").unwrap().to_vec1::<f32>().unwrap();
    let off = sd
        .get("shared_offset")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(off, base[5..11].to_vec());
    let strided = sd.get("shared_strided").unwrap().to_vec1::<f32>().unwrap();
    let want: Vec<f32> = base.iter().skip(1).step_by(3).copied().collect();
    assert_eq!(strided, want);
    let t = sd.get("transposed").unwrap();
    assert_eq!(t.dims(), &[5, 3]);
    assert!(t.is_contiguous());
    let e = sd.get("expanded").unwrap().to_vec2::<f32>().unwrap();
    for row in e {
        assert!(row.iter().all(|&x| x == row[0]));
    }
    let s = sd.get("scalar").unwrap();
    assert_eq!(s.rank(), 0);
    assert_eq!(s.to_scalar::<f32>().unwrap(), 3.5);
    assert_eq!(sd.get("empty").unwrap().dims(), &[0, 4]);
}

#[test]
fn pth_nested_dicts_are_unwrapped() {
    let keys = ["weight", "bias", "f32", "transposed"];
    for file in ["nested_model.pth", "nested_state_dict.pth"] {
        let sd = load_pth(&fixture(file), &Device::Cpu).unwrap();
        check_against_expected(&sd, Some(&keys));
    }
}

#[test]
fn pth_big_endian_storages() {
    let sd = load_pth(&fixture("bigendian.pth"), &Device::Cpu).unwrap();
    check_against_expected(
        &sd,
        Some(&[
            "weight",
            "bias",
            "f32",
            "transposed",
            "shared_base",
            "shared_offset",
        ]),
    );
}

#[test]
fn pth_malicious_globals_are_refused() {
    for (file, global) in [
        ("malicious.pth", "`os.system`"),
        ("malicious_stack_global.pth", "`builtins.eval`"),
    ] {
        let msg = checkpoint_error(load_pth(&fixture(file), &Device::Cpu), file);
        assert!(msg.contains("refusing to load"), "{msg}");
        assert!(msg.contains(global), "{msg}");
        assert!(msg.contains("only tensor rebuilding is allowed"), "{msg}");
        let msg = checkpoint_error(load_checkpoint(&fixture(file), &Device::Cpu), file);
        assert!(msg.contains(global), "{msg}");
    }
}

#[test]
fn pth_truncated_file() {
    let msg = checkpoint_error(
        load_pth(&fixture("truncated.pth"), &Device::Cpu),
        "truncated.pth",
    );
    assert!(msg.contains("truncated or corrupt"), "{msg}");
}

#[test]
fn pth_missing_storage_entry() {
    let file = "missing_storage.pth";
    let msg = checkpoint_error(load_pth(&fixture(file), &Device::Cpu), file);
    assert!(msg.contains("tensors/data/2"), "{msg}");
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn pth_storage_too_small() {
    let file = "storage_too_small.pth";
    let msg = checkpoint_error(load_pth(&fixture(file), &Device::Cpu), file);
    assert!(msg.contains("tensors/data/2"), "{msg}");
    assert!(msg.contains("truncated or corrupt"), "{msg}");
}

#[test]
fn pth_legacy_format_is_explained() {
    let file = "legacy.pth";
    let msg = checkpoint_error(load_pth(&fixture(file), &Device::Cpu), file);
    assert!(msg.contains("legacy"), "{msg}");
    assert!(msg.contains("re-save"), "{msg}");
    let msg = checkpoint_error(load_checkpoint(&fixture(file), &Device::Cpu), file);
    assert!(msg.contains("legacy"), "{msg}");
}

#[test]
fn not_a_checkpoint() {
    let file = "not_a_checkpoint.png";
    let msg = checkpoint_error(load_checkpoint(&fixture(file), &Device::Cpu), file);
    assert!(
        msg.contains("not a PyTorch (torch.save zip) or safetensors checkpoint"),
        "{msg}"
    );
    let msg = checkpoint_error(load_pth(&fixture(file), &Device::Cpu), file);
    assert!(msg.contains("not a zip archive"), "{msg}");
    let msg = checkpoint_error(load_safetensors(&fixture(file), &Device::Cpu), file);
    assert!(msg.contains("safetensors"), "{msg}");
    // A missing file is an I/O error naming the path.
    match load_checkpoint(&fixture("does_not_exist.pth"), &Device::Cpu) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("does_not_exist.pth")),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// safetensors
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn safetensors_tensors_are_read_exactly() {
    let sd = load_safetensors(&fixture("tensors.safetensors"), &Device::Cpu).unwrap();
    check_against_expected(&sd, None);
}

#[test]
fn format_detection_uses_content() {
    assert_eq!(
        detect_format(&fixture("tensors.pth")).unwrap(),
        CheckpointFormat::Pth
    );
    assert_eq!(
        detect_format(&fixture("tensors.safetensors")).unwrap(),
        CheckpointFormat::Safetensors
    );
    let a = load_checkpoint(&fixture("tensors.pth"), &Device::Cpu).unwrap();
    let b = load_checkpoint(&fixture("tensors.safetensors"), &Device::Cpu).unwrap();
    assert_same(&a, &b);
    // Extension does not matter.
    let dir = scratch("detect");
    let renamed = dir.join("weights.bin");
    std::fs::copy(fixture("tensors.safetensors"), &renamed).unwrap();
    assert_same(&load_checkpoint(&renamed, &Device::Cpu).unwrap(), &b);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn pth_to_safetensors_round_trip() {
    let dir = scratch("convert");
    let out = dir.join("tensors.safetensors");
    let n = convert_pth_to_safetensors(&fixture("tensors.pth"), &out).unwrap();
    let original = load_pth(&fixture("tensors.pth"), &Device::Cpu).unwrap();
    assert_eq!(n, original.len());
    let back = load_safetensors(&out, &Device::Cpu).unwrap();
    assert_same(&original, &back);
    // Only the output is left in the directory (the temporary file was renamed).
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("tensors.safetensors")]);
    // Overwriting works too.
    save_safetensors(&back, &out).unwrap();
    assert_same(&original, &load_safetensors(&out, &Device::Cpu).unwrap());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn save_safetensors_writes_views_and_fails_cleanly() {
    let dir = scratch("save");
    let t = Tensor::arange(0f32, 12., &Device::Cpu)
        .unwrap()
        .reshape((3, 4))
        .unwrap();
    let mut sd = StateDict::new("mem");
    sd.insert("t", t.t().unwrap()); // non-contiguous
    sd.insert("h", t.to_dtype(DType::F16).unwrap());
    sd.insert("s", Tensor::new(2.5f64, &Device::Cpu).unwrap());
    let out = dir.join("x.safetensors");
    save_safetensors(&sd, &out).unwrap();
    let back = load_safetensors(&out, &Device::Cpu).unwrap();
    assert_same(&sd, &back);
    // A directory that does not exist: error naming the temporary path, nothing written.
    let bad = dir.join("missing/y.safetensors");
    assert!(matches!(save_safetensors(&sd, &bad), Err(Error::Io { .. })));
    assert!(!bad.exists());
    std::fs::remove_dir_all(dir).unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// Hugging Face layout
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn hf_checkpoint_maps_to_official() {
    let official = load_checkpoint(&fixture("tiny_official.pth"), &Device::Cpu).unwrap();
    assert!(!is_hf_layout(&official));
    for file in ["tiny_hf.safetensors", "tiny_hf_tied.safetensors"] {
        let raw_hf = load_safetensors(&fixture(file), &Device::Cpu).unwrap();
        assert!(is_hf_layout(&raw_hf), "{file}");
        let mapped = load_checkpoint(&fixture(file), &Device::Cpu).unwrap();
        assert_same(&official, &mapped);
    }
}

#[test]
fn hf_mapping_of_deeper_mlps_and_tied_embeddings() {
    let dev = Device::Cpu;
    let t = |v: f32| Tensor::new(&[v, v + 1.0], &dev).unwrap();
    let mut sd = StateDict::new("mem");
    for (k, v) in [
        ("mask_decoder.iou_prediction_head.proj_in.weight", 0.0),
        ("mask_decoder.iou_prediction_head.layers.0.weight", 1.0),
        ("mask_decoder.iou_prediction_head.layers.1.weight", 2.0),
        ("mask_decoder.iou_prediction_head.proj_out.weight", 3.0),
        ("mask_decoder.output_hypernetworks_mlps.2.proj_in.bias", 4.0),
        (
            "mask_decoder.output_hypernetworks_mlps.2.proj_out.bias",
            5.0,
        ),
        ("vision_encoder.layers.3.layer_norm2.bias", 6.0),
        ("vision_encoder.neck.layer_norm2.weight", 7.0),
        ("mask_decoder.transformer.layers.1.layer_norm4.weight", 8.0),
        ("shared_image_embedding.positional_embedding", 9.0),
        ("prompt_encoder.shared_embedding.positional_embedding", 9.0),
        ("something.unknown", 10.0),
    ] {
        sd.insert(k, t(v));
    }
    let out = hf_to_official(sd.clone()).unwrap();
    let got: BTreeMap<String, f32> = out
        .iter()
        .map(|(k, v)| (k.clone(), v.to_vec1::<f32>().unwrap()[0]))
        .collect();
    let want: BTreeMap<String, f32> = [
        ("mask_decoder.iou_prediction_head.layers.0.weight", 0.0),
        ("mask_decoder.iou_prediction_head.layers.1.weight", 1.0),
        ("mask_decoder.iou_prediction_head.layers.2.weight", 2.0),
        ("mask_decoder.iou_prediction_head.layers.3.weight", 3.0),
        (
            "mask_decoder.output_hypernetworks_mlps.2.layers.0.bias",
            4.0,
        ),
        (
            "mask_decoder.output_hypernetworks_mlps.2.layers.1.bias",
            5.0,
        ),
        ("image_encoder.blocks.3.norm2.bias", 6.0),
        ("image_encoder.neck.3.weight", 7.0),
        ("mask_decoder.transformer.layers.1.norm4.weight", 8.0),
        (
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
            9.0,
        ),
        ("something.unknown", 10.0),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, want);

    // Tied copies that differ are an error naming both keys.
    sd.insert(
        "prompt_encoder.shared_embedding.positional_embedding",
        t(99.0),
    );
    let msg = hf_to_official(sd).unwrap_err().to_string();
    assert!(
        msg.contains("shared_image_embedding.positional_embedding"),
        "{msg}"
    );
    assert!(
        msg.contains("prompt_encoder.shared_embedding.positional_embedding"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Architecture inference
// ---------------------------------------------------------------------------------------------------------------

fn official_shapes(variant: &str) -> BTreeMap<String, Vec<usize>> {
    json("official_shapes.json")[variant]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            let k = kv[0].as_str().unwrap().to_string();
            let s = kv[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            (k, s)
        })
        .collect()
}

#[test]
fn infer_official_presets() {
    for (name, preset) in [
        ("vit_b", SamConfig::vit_b()),
        ("vit_l", SamConfig::vit_l()),
        ("vit_h", SamConfig::vit_h()),
    ] {
        let shapes = official_shapes(name);
        let cfg = infer_config_from_shapes(&shapes).unwrap();
        assert_eq!(cfg, preset, "{name}");
        assert!(cfg.url.is_some() && cfg.sha256.is_some());
    }
    assert_eq!(official_shapes("vit_b").len(), 314);
    assert_eq!(official_shapes("vit_l").len(), 482);
    assert_eq!(official_shapes("vit_h").len(), 594);
}

#[test]
fn infer_custom_input_size() {
    // vit_b at 512×512: grid 32, global rel-pos length 63, windowed still 27.
    let mut shapes = official_shapes("vit_b");
    for (k, s) in shapes.iter_mut() {
        if k == "image_encoder.pos_embed" {
            *s = vec![1, 32, 32, 768];
        } else if (k.ends_with("rel_pos_h") || k.ends_with("rel_pos_w")) && s[0] == 127 {
            s[0] = 63;
        }
    }
    let cfg = infer_config_from_shapes(&shapes).unwrap();
    assert_eq!(cfg.name, "custom");
    assert_eq!(cfg.url, None);
    assert_eq!(cfg.input_size, [512, 512]);
    assert_eq!(cfg.encoder_global_attn_indices, vec![2, 5, 8, 11]);
    assert_eq!(cfg.encoder_window_size, 14);
    let mut expected = SamConfig::vit_b();
    expected.name = "custom".into();
    expected.url = None;
    expected.sha256 = None;
    expected.file_size = None;
    expected.input_size = [512, 512];
    assert_eq!(cfg, expected);
}

#[test]
fn infer_tiny_model_from_checkpoint() {
    let sd = load_checkpoint(&fixture("tiny_official.pth"), &Device::Cpu).unwrap();
    let cfg = infer_config(&sd).unwrap();
    let e = json("tiny_official_config.json");
    let us = |k: &str| e[k].as_u64().unwrap() as usize;
    assert_eq!(cfg.name, e["name"].as_str().unwrap());
    assert_eq!(cfg.in_channels, us("in_channels"));
    let input_size = [0, 1].map(|i| e["input_size"][i].as_u64().unwrap() as usize);
    assert_eq!(cfg.input_size, input_size);
    assert_eq!(cfg.embed_dim, us("embed_dim"));
    assert_eq!(cfg.nb_multimask_outputs, us("nb_multimask_outputs"));
    assert_eq!(cfg.encoder_patch_size, us("encoder_patch_size"));
    assert_eq!(cfg.encoder_embed_dim, us("encoder_embed_dim"));
    assert_eq!(cfg.encoder_nb_blocks, us("encoder_nb_blocks"));
    assert_eq!(cfg.encoder_nb_heads, us("encoder_nb_heads"));
    assert_eq!(
        cfg.encoder_mlp_ratio,
        e["encoder_mlp_ratio"].as_f64().unwrap()
    );
    assert_eq!(
        cfg.encoder_qkv_bias,
        e["encoder_qkv_bias"].as_bool().unwrap()
    );
    let global: Vec<usize> = e["encoder_global_attn_indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(cfg.encoder_global_attn_indices, global);
    assert_eq!(cfg.encoder_window_size, us("encoder_window_size"));
    assert_eq!(cfg.prompt_mask_hidden_dim, us("prompt_mask_hidden_dim"));
    assert_eq!(cfg.decoder_nb_blocks, us("decoder_nb_blocks"));
    assert_eq!(cfg.decoder_mlp_channels, us("decoder_mlp_channels"));
    assert_eq!(cfg.decoder_iou_head_depth, us("decoder_iou_head_depth"));
    assert_eq!(cfg.decoder_iou_hidden_dim, us("decoder_iou_hidden_dim"));
    // The decoder head count cannot be read from shapes: the official 8 is assumed (the tiny model really has 2).
    assert_eq!(cfg.decoder_nb_heads, 8);
    assert_ne!(cfg.decoder_nb_heads, us("decoder_nb_heads"));
    // The HF copy infers the same architecture.
    let hf = load_checkpoint(&fixture("tiny_hf.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(infer_config(&hf).unwrap(), cfg);
    let raw_hf = load_safetensors(&fixture("tiny_hf.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(infer_config(&raw_hf).unwrap(), cfg);
}

#[test]
fn infer_errors_name_the_key() {
    let sd = load_pth(&fixture("tensors.pth"), &Device::Cpu).unwrap();
    let msg = infer_config(&sd).unwrap_err().to_string();
    assert!(msg.contains("`image_encoder.pos_embed`"), "{msg}");
    assert!(msg.contains("tensors.pth"), "{msg}");

    let mut shapes = official_shapes("vit_b");
    shapes.remove("mask_decoder.mask_tokens.weight");
    let msg = infer_config_from_shapes(&shapes).unwrap_err().to_string();
    assert!(msg.contains("`mask_decoder.mask_tokens.weight`"), "{msg}");

    let mut shapes = official_shapes("vit_b");
    shapes.insert("image_encoder.blocks.4.attn.rel_pos_h".into(), vec![31, 64]);
    let msg = infer_config_from_shapes(&shapes).unwrap_err().to_string();
    assert!(
        msg.contains("image_encoder.blocks.4.attn.rel_pos_h"),
        "{msg}"
    );
}

/// Load a real checkpoint given by `SAM_CHECKPOINT` (e.g. sam_vit_b_01ec64.pth), infer its preset and round-trip it
/// through safetensors. Run with `SAM_CHECKPOINT=... cargo test --release --test checkpoint -- --ignored`.
#[test]
#[ignore]
fn real_checkpoint_from_env() {
    let Some(path) = std::env::var_os("SAM_CHECKPOINT") else {
        eprintln!("SAM_CHECKPOINT not set; skipping");
        return;
    };
    let path = PathBuf::from(path);
    let start = std::time::Instant::now();
    let sd = load_checkpoint(&path, &Device::Cpu).unwrap();
    eprintln!("loaded {} tensors in {:.2?}", sd.len(), start.elapsed());
    let cfg = infer_config(&sd).unwrap();
    eprintln!("inferred `{}`", cfg.name);
    assert!(
        cfg.variant().is_some(),
        "not an official architecture: {cfg:?}"
    );
    assert!(sd.iter().all(|(_, t)| t.dtype() == DType::F32));
    let dir = scratch("real");
    let out = dir.join("model.safetensors");
    let start = std::time::Instant::now();
    assert_eq!(convert_pth_to_safetensors(&path, &out).unwrap(), sd.len());
    eprintln!("converted in {:.2?}", start.elapsed());
    assert_same(&sd, &load_safetensors(&out, &Device::Cpu).unwrap());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Corrupted pickles (random byte flips and truncations of tensors.pth's data.pkl) must give errors, never panics.
#[test]
fn corrupted_pickles_never_panic() {
    use std::io::{Read, Write};
    let mut archive =
        zip::ZipArchive::new(std::fs::File::open(fixture("tensors.pth")).unwrap()).unwrap();
    let mut entries = Vec::new();
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).unwrap();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        entries.push((f.name().to_string(), data));
    }
    let pkl_index = entries
        .iter()
        .position(|(n, _)| n.ends_with("/data.pkl"))
        .unwrap();
    let dir = scratch("fuzz");
    let path = dir.join("fuzz.pth");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut ok, mut failed) = (0, 0);
    for round in 0..400 {
        let mut files = entries.clone();
        let pkl = &mut files[pkl_index].1;
        if round % 10 == 9 {
            let n = (next() as usize) % pkl.len();
            pkl.truncate(n);
        } else {
            for _ in 0..1 + next() % 3 {
                let i = (next() as usize) % pkl.len();
                pkl[i] = next() as u8;
            }
        }
        let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, data) in &files {
            w.start_file(name.as_str(), opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
        match load_pth(&path, &Device::Cpu) {
            Ok(_) => ok += 1,
            Err(Error::Checkpoint { .. }) => failed += 1,
            Err(other) => panic!("unexpected error kind: {other:?}"),
        }
    }
    eprintln!("corrupted pickles: {ok} loaded, {failed} rejected");
    assert!(failed > 100, "ok {ok}, failed {failed}");
    std::fs::remove_dir_all(dir).unwrap();
}
