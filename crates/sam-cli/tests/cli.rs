//! End-to-end tests of the `sam` binary with the small random-weight checkpoint written by the official code
//! (`crates/segment-anything/tests/fixtures/model/tiny`).

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../segment-anything/tests/fixtures/model/tiny")
        .join(file)
}

fn photo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/images/chelsea.png")
}

fn sam() -> Command {
    let mut c = Command::cargo_bin("sam").unwrap();
    c.env(
        "SAM_CACHE_DIR",
        std::env::temp_dir().join("sam-cli-test-empty-cache"),
    );
    c.env("SAM_WEIGHTS_BASE_URL", "http://127.0.0.1:9/");
    c
}

fn tiny(c: &mut Command) -> &mut Command {
    c.arg("--checkpoint")
        .arg(fixture("model.pth"))
        .arg("--config")
        .arg(fixture("config.json"))
}

fn run_json(c: &mut Command) -> serde_json::Value {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

fn read_npy(path: &Path) -> (Vec<f32>, Vec<u64>) {
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    (npy.into_vec::<f32>().unwrap(), shape)
}

fn no_temporary_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.contains(".tmp") && !name.ends_with(".part"),
            "left behind: {name}"
        );
    }
}

#[test]
fn segment_writes_masks_overlay_logits_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = sam();
    tiny(c.arg("segment").arg("--image").arg(photo()))
        .args([
            "--point",
            "200,150",
            "--point",
            "50,50,0",
            "--box",
            "100,50,400,280",
            "--multimask",
            "--save-logits",
        ])
        .arg("--output-dir")
        .arg(dir.path());
    let doc = run_json(&mut c);
    assert_eq!(doc["width"], 451);
    assert_eq!(doc["height"], 300);
    assert_eq!(doc["model"], "tiny");
    let masks = doc["masks"].as_array().unwrap();
    assert_eq!(masks.len(), 3);
    for (i, m) in masks.iter().enumerate() {
        let file = dir.path().join(m["file"].as_str().unwrap());
        let img = image::open(&file).unwrap().to_luma8();
        assert_eq!(img.dimensions(), (451, 300));
        assert!(img.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
        let area = img.pixels().filter(|p| p.0[0] == 255).count() as u64;
        assert_eq!(m["area"].as_u64().unwrap(), area, "mask {i} area");
        assert!(m["score"].as_f64().is_some());
    }
    let overlay = image::open(dir.path().join("overlay.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (451, 300));
    let (logits, shape) = read_npy(&dir.path().join("logits.npy"));
    assert_eq!(shape, vec![3, 300, 451]);
    let mask0 = image::open(dir.path().join("mask_0.png"))
        .unwrap()
        .to_luma8();
    for (l, p) in logits.iter().zip(mask0.pixels()) {
        assert_eq!(*l > 0.0, p.0[0] == 255);
    }
    let (_, shape) = read_npy(&dir.path().join("lowres_logits.npy"));
    assert_eq!(shape, vec![3, 64, 64]);
    no_temporary_files(dir.path());
}

#[test]
fn mask_input_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = sam();
    tiny(c.arg("segment").arg("--image").arg(photo()))
        .args(["--point", "200,150", "--save-logits", "--quiet"])
        .arg("--output-dir")
        .arg(dir.path());
    run_json(&mut c);
    let second = dir.path().join("second");
    let mut c = sam();
    tiny(c.arg("segment").arg("--image").arg(photo()))
        .args(["--point", "200,150", "--quiet", "--mask-input"])
        .arg(dir.path().join("lowres_logits.npy"))
        .arg("--output-dir")
        .arg(&second);
    let doc = run_json(&mut c);
    assert_eq!(doc["masks"].as_array().unwrap().len(), 1);
    // The mask prompt changes the result.
    let a = std::fs::read(dir.path().join("mask_0.png")).unwrap();
    let b = std::fs::read(second.join("mask_0.png")).unwrap();
    assert_ne!(a, b);
}

#[test]
fn stored_embedding_gives_the_same_masks() {
    let dir = tempfile::tempdir().unwrap();
    for out in ["emb.safetensors", "emb.npy"] {
        let mut c = sam();
        tiny(
            c.arg("embed")
                .arg("--image")
                .arg(photo())
                .arg("--output")
                .arg(dir.path().join(out)),
        )
        .assert()
        .success();
    }
    let (data, shape) = read_npy(&dir.path().join("emb.npy"));
    assert_eq!(shape, vec![64, 16, 16]);
    assert!(data.iter().all(|v| v.is_finite()));

    let mut results = Vec::new();
    for emb in [None, Some("emb.safetensors"), Some("emb.npy")] {
        let out = dir.path().join(format!("out-{}", emb.unwrap_or("none")));
        let mut c = sam();
        tiny(c.arg("segment").arg("--image").arg(photo()))
            .args(["--box", "100,50,400,280", "--quiet", "--save-logits"])
            .arg("--output-dir")
            .arg(&out);
        if let Some(e) = emb {
            c.arg("--embedding").arg(dir.path().join(e));
        }
        run_json(&mut c);
        results.push(read_npy(&out.join("logits.npy")).0);
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}

#[test]
fn convert_then_segment_from_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("tiny.safetensors");
    sam()
        .arg("convert")
        .arg(fixture("model.pth"))
        .arg(&st)
        .assert()
        .success();
    let mut logits = Vec::new();
    for ckpt in [fixture("model.pth"), st.clone()] {
        let out = dir.path().join(format!("out{}", logits.len()));
        let mut c = sam();
        c.arg("segment")
            .arg("--image")
            .arg(photo())
            .arg("--checkpoint")
            .arg(&ckpt);
        c.arg("--config").arg(fixture("config.json"));
        c.args(["--point", "100,100", "--quiet", "--save-logits"])
            .arg("--output-dir")
            .arg(&out);
        run_json(&mut c);
        logits.push(read_npy(&out.join("logits.npy")).0);
    }
    assert_eq!(logits[0], logits[1]);
}

fn fails_with(c: &mut Command, needle: &str) {
    let out = c.output().unwrap();
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "stderr lacks `{needle}`: {err}");
    assert!(
        err.trim().lines().count() == 1,
        "error is not one line: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let seg = |extra: &[&str]| {
        let mut c = sam();
        tiny(c.arg("segment").arg("--image").arg(photo()))
            .args(extra)
            .arg("--output-dir")
            .arg(&out);
        c
    };
    fails_with(&mut seg(&["--point", "12;4"]), "bad point `12;4`");
    fails_with(&mut seg(&["--point", "1,2,5"]), "LABEL");
    fails_with(&mut seg(&["--point", "500,10"]), "outside the image");
    fails_with(&mut seg(&["--point", "-1,10"]), "outside the image");
    fails_with(&mut seg(&["--box", "300,10,100,50"]), "bad box");
    fails_with(&mut seg(&[]), "no prompt");
    fails_with(
        &mut seg(&["--point", "1,1", "--mask-input", "/nonexistent.npy"]),
        "/nonexistent.npy",
    );
    assert!(
        !out.exists(),
        "no output directory is created for a bad request"
    );

    let mut c = sam();
    c.arg("segment")
        .arg("--image")
        .arg("/no/such/image.png")
        .args(["--point", "1,1"]);
    fails_with(tiny(&mut c), "/no/such/image.png");

    let mut c = sam();
    c.arg("segment").arg("--image").arg(photo()).args([
        "--point",
        "1,1",
        "--model",
        "vit_b",
        "--checkpoint",
    ]);
    c.arg(fixture("model.pth"));
    fails_with(&mut c, "but the model vit_b was requested");

    let mut c = sam();
    c.arg("segment")
        .arg("--image")
        .arg(photo())
        .args(["--point", "1,1", "--checkpoint"])
        .arg(fixture("config.json"));
    fails_with(&mut c, "config.json");

    let mut c = sam();
    c.arg("segment")
        .arg("--image")
        .arg(photo())
        .args(["--point", "1,1", "--model", "vit_x"]);
    fails_with(&mut c, "unknown model `vit_x`");
}

#[test]
fn offline_without_checkpoint_explains_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = sam();
    c.env("SAM_CACHE_DIR", dir.path());
    c.arg("segment")
        .arg("--image")
        .arg(photo())
        .args(["--point", "1,1", "--quiet"]);
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "--checkpoint PATH",
    ] {
        assert!(err.contains(needle), "stderr lacks `{needle}`: {err}");
    }
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
}

#[test]
fn models_lists_the_official_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let out = sam()
        .env("SAM_CACHE_DIR", dir.path())
        .arg("models")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "vit_b",
        "vit_l",
        "vit_h",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        "no",
    ] {
        assert!(text.contains(needle), "{text}");
    }
    assert!(text.contains(&dir.path().display().to_string()));
}

/// `sam download` against a local server that answers 404: a one-line error naming the URL, an empty cache.
#[test]
fn download_reports_http_errors_and_leaves_the_cache_empty() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        if let Ok((mut s, _)) = listener.accept() {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let out = sam()
        .env("SAM_CACHE_DIR", cache.path())
        .env("SAM_WEIGHTS_BASE_URL", format!("http://{addr}/mirror/"))
        .args(["download", "vit_b", "--quiet"])
        .output()
        .unwrap();
    server.join().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("404") && err.contains(&format!("http://{addr}/mirror/sam_vit_b_01ec64.pth")),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(cache.path()).unwrap().count(),
        0,
        "nothing lands in the cache"
    );
}

/// The official outputs for the 4:2:0 JPEG photo `assets/images/coffee.jpg` (decoded by Pillow, encoded by
/// the official `SamPredictor`; `tests/fixtures/model/tiny`).
fn official_tensors() -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(fixture("expected.safetensors"), &candle_core::Device::Cpu)
        .unwrap()
}

fn jpeg_photo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/images/coffee.jpg")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn segment_on_a_jpeg_matches_the_official_predictor() {
    // Case coffee_jpeg/one_point: one positive point at (310, 170), multimask.
    let t = official_tensors();
    let dir = tempfile::tempdir().unwrap();
    let mut c = sam();
    tiny(c.arg("segment").arg("--image").arg(jpeg_photo()))
        .args([
            "--point",
            "310,170",
            "--multimask",
            "--save-logits",
            "--quiet",
        ])
        .arg("--output-dir")
        .arg(dir.path());
    let doc = run_json(&mut c);
    assert_eq!(
        (doc["width"].as_u64(), doc["height"].as_u64()),
        (Some(600), Some(400))
    );
    let (low, shape) = read_npy(&dir.path().join("lowres_logits.npy"));
    assert_eq!(shape, vec![3, 64, 64]);
    let want = t["coffee_jpeg/one_point/low_res_logits"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let d = max_abs_diff(&low, &want);
    assert!(d <= 1e-3, "low-res logits max|Δ| {d}");
    let scores: Vec<f32> = doc["masks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["score"].as_f64().unwrap() as f32)
        .collect();
    let want = t["coffee_jpeg/one_point/iou_predictions"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let d = max_abs_diff(&scores, &want);
    assert!(d <= 1e-4, "scores max|Δ| {d}");
    // The binary masks at the original size against the official ones (numpy packbits, big-endian).
    let bits = t["coffee_jpeg/one_point/masks_bits"]
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap();
    let plane = 600 * 400;
    for k in 0..3 {
        let mask = image::open(dir.path().join(format!("mask_{k}.png")))
            .unwrap()
            .to_luma8();
        let (mut inter, mut union) = (0usize, 0usize);
        for (i, p) in mask.pixels().enumerate() {
            let j = k * plane + i;
            let official = bits[j / 8] >> (7 - j % 8) & 1 == 1;
            let ours = p.0[0] == 255;
            inter += usize::from(ours && official);
            union += usize::from(ours || official);
        }
        let iou = inter as f64 / union.max(1) as f64;
        assert!(iou >= 0.999, "mask {k}: IoU {iou} with the official mask");
    }
}

#[test]
fn embed_on_a_jpeg_matches_the_official_embedding() {
    let t = official_tensors();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("coffee.npy");
    let mut c = sam();
    tiny(
        c.arg("embed")
            .arg("--image")
            .arg(jpeg_photo())
            .arg("--output")
            .arg(&out)
            .arg("--quiet"),
    );
    let status = c.output().unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let (ours, shape) = read_npy(&out);
    assert_eq!(shape, vec![64, 16, 16]);
    let want = t["coffee_jpeg/embedding"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let max_ref = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(&ours, &want);
    assert!(
        d <= 1e-4 * max_ref,
        "embedding max|Δ| {d} (max|ref| {max_ref})"
    );
}

#[test]
fn exif_orientation_is_applied_unless_ignored() {
    // A 61×37 photo stored with EXIF orientation 6 (rotate 90° clockwise to view): 37×61 as seen.
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../segment-anything/tests/fixtures/decode/files/jpeg_exif_orientation_6.jpg");
    for (extra, size) in [(None, (37, 61)), (Some("--ignore-exif"), (61, 37))] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = sam();
        tiny(c.arg("segment").arg("--image").arg(&file))
            .args(["--point", "10,10", "--quiet"])
            .args(extra)
            .arg("--output-dir")
            .arg(dir.path());
        let doc = run_json(&mut c);
        assert_eq!(
            (
                doc["width"].as_u64().unwrap(),
                doc["height"].as_u64().unwrap()
            ),
            size,
            "{extra:?}"
        );
        let mask = image::open(dir.path().join("mask_0.png")).unwrap();
        assert_eq!((mask.width() as u64, mask.height() as u64), size);
    }
}

#[test]
fn unreadable_images_are_clear_errors() {
    let decode = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../segment-anything/tests/fixtures/decode/files");
    for (file, words) in [
        ("err_jpeg_truncated.jpg", "truncated"),
        ("err_not_an_image.jpg", "not an image"),
        ("err_jpeg_12bit.jpg", "not supported"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = sam();
        tiny(c.arg("segment").arg("--image").arg(decode.join(file)))
            .args(["--point", "10,10"])
            .arg("--output-dir")
            .arg(dir.path());
        let out = c.output().unwrap();
        assert!(!out.status.success(), "{file} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(file) && err.contains(words), "{file}: {err}");
        assert!(!err.contains("panicked"), "{file}: {err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{file}: output written"
        );
    }
    // The pixel limit is a flag.
    let dir = tempfile::tempdir().unwrap();
    let mut c = sam();
    tiny(c.arg("segment").arg("--image").arg(jpeg_photo()))
        .args(["--point", "10,10", "--max-image-pixels", "1000"])
        .arg("--output-dir")
        .arg(dir.path());
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exceeds the limit of 1000 pixels"), "{err}");
}
