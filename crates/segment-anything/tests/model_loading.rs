//! Strict loading: missing keys, unexpected keys, shape mismatches, another model's checkpoint, files that are
//! not checkpoints, truncated files — each a clear error naming the problem.

mod common;

use candle_core::{Device, Tensor};
use common::fixture_dir;
use segment_anything::{checkpoint, Error, Sam, SamConfig, StateDict};

fn tiny() -> (SamConfig, StateDict) {
    let dir = fixture_dir("tiny");
    let cfg = SamConfig::from_json_file(dir.join("config.json")).unwrap();
    let sd = checkpoint::load_checkpoint(&dir.join("model.pth"), &Device::Cpu).unwrap();
    (cfg, sd)
}

#[test]
fn missing_key_is_named_with_its_shape() {
    let (cfg, mut sd) = tiny();
    sd.remove("mask_decoder.iou_token.weight").unwrap();
    let err = Sam::from_state_dict(&cfg, &sd, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::MissingKey { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("mask_decoder.iou_token.weight") && msg.contains("[1, 64]"),
        "{msg}"
    );
}

#[test]
fn unexpected_keys_are_listed() {
    let (cfg, mut sd) = tiny();
    sd.insert(
        "image_encoder.blocks.9.norm1.weight",
        Tensor::zeros(64, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let msg = Sam::from_state_dict(&cfg, &sd, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unexpected key") && msg.contains("image_encoder.blocks.9.norm1.weight"),
        "{msg}"
    );
}

#[test]
fn shape_mismatch_names_both_shapes() {
    let (cfg, mut sd) = tiny();
    sd.insert(
        "prompt_encoder.no_mask_embed.weight",
        Tensor::zeros((1, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let msg = Sam::from_state_dict(&cfg, &sd, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("prompt_encoder.no_mask_embed.weight")
            && msg.contains("[1, 32]")
            && msg.contains("[1, 64]"),
        "{msg}"
    );
}

#[test]
fn checkpoint_of_another_model_is_refused() {
    let path = fixture_dir("tiny").join("model.pth");
    for cfg in [SamConfig::vit_b(), SamConfig::vit_h()] {
        let msg = Sam::load(&path, Some(&cfg), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&format!("the model {} was requested", cfg.name)),
            "{msg}"
        );
        assert!(msg.contains("model.pth"), "{msg}");
    }
    // Without a config, a custom architecture needs one (its head count is not in the weights).
    let msg = Sam::load(&path, None, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("config"), "{msg}");
}

#[test]
fn not_a_checkpoint_and_truncated_files_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("sam-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = tiny().0;
    let text = dir.join("notes.txt");
    std::fs::write(&text, "hello, not weights").unwrap();
    let msg = Sam::load(&text, Some(&cfg), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("notes.txt")
            && msg.contains("not a PyTorch")
            && msg.contains("safetensors checkpoint"),
        "{msg}"
    );

    let bytes = std::fs::read(fixture_dir("tiny").join("model.pth")).unwrap();
    let cut = dir.join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let msg = Sam::load(&cut, Some(&cfg), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("cut.pth"), "{msg}");

    let missing = dir.join("absent.pth");
    let msg = Sam::load(&missing, Some(&cfg), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("absent.pth"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn random_state_dict_round_trips_through_safetensors() {
    let cfg = tiny().0;
    let dev = Device::Cpu;
    let sd = Sam::random_state_dict(&cfg, 7, &dev).unwrap();
    assert_eq!(
        sd.len(),
        202,
        "the tiny model has 202 tensors, like the official one"
    );
    let dir = std::env::temp_dir().join(format!("sam-rand-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("random.safetensors");
    checkpoint::save_safetensors(&sd, &path).unwrap();
    let loaded = Sam::load(&path, Some(&cfg), &dev).unwrap();
    let direct = Sam::random(&cfg, 7, &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 3, 256, 256), &dev).unwrap();
    let a = loaded.encode_images(&x).unwrap();
    let b = direct.encode_images(&x).unwrap();
    assert_eq!(common::max_abs_diff(&a, &b).0, 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}
