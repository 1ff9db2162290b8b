//! End-to-end tests of `sam auto` (the automatic mask generator) with the small random-weight checkpoint written by
//! the official code (`crates/segment-anything/tests/fixtures/model/tiny`).

use std::path::{Path, PathBuf};
use std::process::Command as Std;

use assert_cmd::Command;
use segment_anything::rle::CocoRle;

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../segment-anything/tests/fixtures/model/tiny")
        .join(file)
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
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

/// `sam auto` on `image` with the tiny model and loosened thresholds (every grid mask is kept).
fn auto(image: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = sam();
    c.arg("auto")
        .arg("--image")
        .arg(image)
        .arg("--output-dir")
        .arg(out)
        .arg("--checkpoint")
        .arg(fixture("model.pth"))
        .arg("--config")
        .arg(fixture("config.json"))
        .args([
            "--points-per-side",
            "3",
            "--pred-iou-thresh",
            "0",
            "--stability-score-thresh",
            "0",
            "--box-nms-thresh",
            "1.0",
        ])
        .args(extra);
    c
}

fn run_ok(c: &mut Command) -> (serde_json::Value, String) {
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "failed: {stderr}");
    (
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document"),
        stderr,
    )
}

fn run_err(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(!out.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one-line error: {stderr}"
    );
    stderr
}

fn no_temporary_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp"), "left behind: {name}");
    }
}

const HEADER: &str = "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h";

fn read_png_mask(path: &Path) -> (u32, u32, Vec<bool>) {
    let img = image::open(path).unwrap();
    assert!(
        matches!(img, image::DynamicImage::ImageLuma8(_)),
        "{}: 8-bit gray expected",
        path.display()
    );
    let g = img.to_luma8();
    assert!(g.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    (
        g.width(),
        g.height(),
        g.pixels().map(|p| p.0[0] == 255).collect(),
    )
}

#[test]
fn binary_and_coco_outputs_agree() {
    let dir = tempfile::tempdir().unwrap();
    let photo = repo("assets/images/chelsea.png");

    // binary_mask: a folder with {i}.png and metadata.csv.
    let (doc, _) = run_ok(&mut auto(&photo, dir.path(), &[]));
    assert_eq!(doc["output_mode"], "binary_mask");
    let n = doc["images"][0]["masks"].as_u64().unwrap() as usize;
    assert_eq!(n, 27);
    let folder = dir.path().join("chelsea");
    let csv = std::fs::read_to_string(folder.join("metadata.csv")).unwrap();
    let lines: Vec<&str> = csv.split('\n').collect();
    assert_eq!(lines[0], HEADER);
    assert_eq!(lines.len(), n + 1, "no trailing newline, one row per mask");
    let mut masks = Vec::new();
    for (i, line) in lines[1..].iter().enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 14, "{line}");
        assert_eq!(f[0], i.to_string());
        let (w, h, m) = read_png_mask(&folder.join(format!("{i}.png")));
        assert_eq!((w, h), (451, 300));
        let area = m.iter().filter(|&&v| v).count();
        assert_eq!(f[1], area.to_string());
        // Inclusive box: width = last column - first column.
        let xs: Vec<usize> = (0..m.len()).filter(|&k| m[k]).map(|k| k % 451).collect();
        let ys: Vec<usize> = (0..m.len()).filter(|&k| m[k]).map(|k| k / 451).collect();
        let (x0, x1) = (*xs.iter().min().unwrap(), *xs.iter().max().unwrap());
        let (y0, y1) = (*ys.iter().min().unwrap(), *ys.iter().max().unwrap());
        assert_eq!(
            &f[2..6],
            &[x0, y0, x1 - x0, y1 - y0].map(|v| v.to_string())[..]
        );
        // Python float formatting (e.g. 75.16666666666667, never an exponent-free integer like "75").
        for v in &f[6..10] {
            assert!(v.contains('.') || v.contains('e'), "{v}");
            v.parse::<f64>().unwrap();
        }
        assert_eq!(&f[10..14], &["0", "0", "451", "300"]);
        masks.push(m);
    }
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), n + 1);
    no_temporary_files(dir.path());
    no_temporary_files(&folder);

    // coco_rle: one JSON per image, the same masks.
    let (doc, _) = run_ok(&mut auto(
        &photo,
        dir.path(),
        &["--output-mode", "coco_rle"],
    ));
    assert_eq!(doc["images"][0]["masks"], n);
    let json_path = dir.path().join("chelsea.json");
    let text = std::fs::read_to_string(&json_path).unwrap();
    assert!(text.starts_with("[{\"segmentation\": {\"size\": [300, 451], \"counts\": \""));
    let records: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(records.len(), n);
    for (i, r) in records.iter().enumerate() {
        let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 7);
        let coco: CocoRle = serde_json::from_value(r["segmentation"].clone()).unwrap();
        let m = coco.to_mask().unwrap();
        assert_eq!((m.height, m.width), (300, 451));
        assert_eq!(m.data, masks[i], "record {i}: RLE decodes to the PNG mask");
        assert_eq!(r["area"].as_u64().unwrap(), m.area());
        assert_eq!(r["point_coords"].as_array().unwrap().len(), 1);
        let row: Vec<&str> = lines[i + 1].split(',').collect();
        // Same f32 score in both files (serde_json's default float parsing may be off by one f64 ulp).
        assert_eq!(
            r["predicted_iou"].as_f64().unwrap() as f32,
            row[8].parse::<f64>().unwrap() as f32
        );
    }

    // uncompressed_rle: integer counts.
    let (_, _) = run_ok(&mut auto(
        &photo,
        dir.path(),
        &["--output-mode", "uncompressed_rle", "--overwrite"],
    ));
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert!(records[0]["segmentation"]["counts"].is_array());
    no_temporary_files(dir.path());

    // The official-format check with pycocotools, when it is installed.
    let (_, _) = run_ok(&mut auto(
        &photo,
        dir.path(),
        &["--output-mode", "coco_rle", "--overwrite"],
    ));
    let have_pycocotools = Std::new("python3")
        .args(["-c", "import pycocotools, PIL, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if have_pycocotools {
        let out = Std::new("python3")
            .arg(repo("tools/reference/check_coco_rle.py"))
            .arg(&json_path)
            .arg(&photo)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("check_coco_rle.py: {stdout}");
        assert!(
            out.status.success(),
            "check_coco_rle.py failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("{n} record(s), 0 problem(s)")));
    } else {
        println!("note: pycocotools is not installed; skipping tools/reference/check_coco_rle.py");
    }
}

#[test]
fn directories_crops_and_small_regions() {
    let input = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::copy(repo("assets/images/coffee.png"), input.path().join("a.png")).unwrap();
    std::fs::copy(
        repo("assets/images/chelsea.png"),
        input.path().join("b.png"),
    )
    .unwrap();
    std::fs::write(input.path().join("notes.txt"), "not an image").unwrap();
    std::fs::create_dir(input.path().join("sub")).unwrap();
    let (doc, stderr) = run_ok(&mut auto(
        input.path(),
        out.path(),
        &[
            "--output-mode",
            "coco_rle",
            "--crop-n-layers",
            "1",
            "--crop-overlap-ratio",
            "0.25",
            "--crop-nms-thresh",
            "1.0",
            "--min-mask-region-area",
            "50",
        ],
    ));
    assert!(stderr.contains("warning: skipping"), "{stderr}");
    assert!(stderr.contains("notes.txt"), "{stderr}");
    assert_eq!(doc["images"].as_array().unwrap().len(), 2);
    assert_eq!(doc["skipped"].as_array().unwrap().len(), 1);
    for stem in ["a", "b"] {
        let recs: Vec<serde_json::Value> = serde_json::from_str(
            &std::fs::read_to_string(out.path().join(format!("{stem}.json"))).unwrap(),
        )
        .unwrap();
        assert!(!recs.is_empty());
    }
    let mut names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.json", "b.json"]);

    // --quiet: nothing but the JSON result.
    let (_, stderr) = run_ok(
        auto(
            input.path(),
            out.path(),
            &["--output-mode", "coco_rle", "--overwrite"],
        )
        .arg("--quiet"),
    );
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn errors_are_one_line() {
    let out = tempfile::tempdir().unwrap();
    let photo = repo("assets/images/chelsea.png");
    let e = run_err(&mut auto(&repo("assets/images/nope.png"), out.path(), &[]));
    assert!(e.contains("nope.png"), "{e}");
    let e = run_err(&mut auto(
        &photo,
        out.path(),
        &["--crop-overlap-ratio", "1.5"],
    ));
    assert!(e.contains("crop_overlap_ratio"), "{e}");
    let e = run_err(&mut auto(&photo, out.path(), &["--points-per-batch", "0"]));
    assert!(e.contains("points_per_batch"), "{e}");
    let e = run_err(&mut auto(
        &repo("assets/images/LICENSES.md"),
        out.path(),
        &[],
    ));
    assert!(e.contains("LICENSES.md"), "{e}");
    // An existing output is kept unless --overwrite.
    run_ok(&mut auto(
        &photo,
        out.path(),
        &["--output-mode", "coco_rle"],
    ));
    let e = run_err(&mut auto(
        &photo,
        out.path(),
        &["--output-mode", "coco_rle"],
    ));
    assert!(e.contains("--overwrite"), "{e}");
    // Two inputs with the same stem would write the same output.
    let input = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo("assets/images/chelsea.png"),
        input.path().join("x.png"),
    )
    .unwrap();
    std::fs::copy(repo("assets/images/rocket.jpg"), input.path().join("x.jpg")).unwrap();
    let out2 = tempfile::tempdir().unwrap();
    let e = run_err(&mut auto(
        input.path(),
        out2.path(),
        &["--output-mode", "coco_rle", "--quiet"],
    ));
    assert!(e.contains("would both be written"), "{e}");
    // Clap's own usage errors (several lines) for an unknown output mode.
    let o = sam()
        .args(["auto", "--image"])
        .arg(&photo)
        .arg("--output-dir")
        .arg(out.path())
        .args(["--output-mode", "png"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("coco_rle"));
    no_temporary_files(out.path());
}

/// `sam auto` on a 4:2:0 JPEG, end to end from the file, against the official `SamAutomaticMaskGenerator` run
/// on the same file decoded by Pillow (`tests/fixtures/amg/cases.json`, case `loose/coffee_jpeg`): the same
/// records in the same order, the same points and scores, and the same COCO strings.
#[test]
fn auto_on_a_jpeg_matches_the_official_generator() {
    use sha2::Digest;
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../segment-anything/tests/fixtures/amg/cases.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let case = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "loose/coffee_jpeg")
        .expect("loose/coffee_jpeg in the AMG fixtures");
    assert_eq!(case["image"], "assets/images/coffee.jpg");
    assert_eq!(case["params"]["points_per_side"], 8);
    let dir = tempfile::tempdir().unwrap();
    let mut c = sam();
    c.arg("auto")
        .arg("--image")
        .arg(repo("assets/images/coffee.jpg"))
        .arg("--output-dir")
        .arg(dir.path())
        .arg("--checkpoint")
        .arg(fixture("model.pth"))
        .arg("--config")
        .arg(fixture("config.json"))
        .args(["--output-mode", "coco_rle", "--points-per-side", "8"])
        .args(["--pred-iou-thresh", "0", "--stability-score-thresh", "0"])
        .args(["--box-nms-thresh", "1.0"]);
    run_ok(&mut c);
    let ours: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("coffee.json")).unwrap())
            .unwrap();
    let want = case["records"].as_array().unwrap();
    assert_eq!(ours.len(), want.len(), "record count");
    assert_eq!(ours.len(), 192);
    let mut identical = 0;
    for (i, (o, w)) in ours.iter().zip(want).enumerate() {
        assert_eq!(
            o["point_coords"][0], w["point_coords"],
            "record {i}: point (order)"
        );
        let d = (o["predicted_iou"].as_f64().unwrap() - w["predicted_iou"].as_f64().unwrap()).abs();
        assert!(d <= 1e-4, "record {i}: predicted_iou differs by {d}");
        // As in the library's AMG parity test: areas within 1 % (pixels whose logit is within float rounding of
        // the threshold may fall either way).
        let (ao, aw) = (o["area"].as_f64().unwrap(), w["area"].as_f64().unwrap());
        assert!(
            ao.min(aw) / ao.max(aw).max(1.0) >= 0.99,
            "record {i}: area {ao} vs {aw}"
        );
        let counts = o["segmentation"]["counts"].as_str().unwrap();
        let sha: String = sha2::Sha256::digest(counts.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        identical += usize::from(sha[..16] == *w["counts_sha256"].as_str().unwrap());
    }
    // The tiny random model's masks are noise-like, so a few logits sit within float rounding of the threshold.
    assert!(
        identical * 100 >= ours.len() * 90,
        "only {identical} of {} COCO strings identical to the official ones",
        ours.len()
    );
}
