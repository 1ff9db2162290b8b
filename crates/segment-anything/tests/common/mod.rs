//! Shared helpers for the parity tests: the fixture format written by `tools/reference/gen_model_fixtures.py`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;

/// `cases.json` of one fixture directory.
#[derive(Debug, Deserialize)]
pub struct Fixture {
    pub config: String,
    pub checkpoint: String,
    pub tensors: String,
    pub images: Vec<ImageCase>,
    pub cases: Vec<PromptCase>,
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Deserialize)]
pub struct ImageCase {
    pub name: String,
    pub file: Option<String>,
    pub original_size: [usize; 2],
    pub resized_size: [usize; 2],
    pub input: String,
    pub embedding: String,
}

#[derive(Debug, Deserialize)]
pub struct PromptCase {
    pub name: String,
    pub image: String,
    pub kind: String,
    pub multimask: bool,
    pub point_coords: Option<Vec<[f64; 2]>>,
    pub point_labels: Option<Vec<i64>>,
    #[serde(rename = "box")]
    pub box_: Option<[f64; 4]>,
    pub mask_input: Option<String>,
    pub model_points: Option<String>,
    pub model_labels: Option<String>,
    pub model_boxes: Option<String>,
    pub model_masks: Option<String>,
    pub low_res_logits: String,
    pub iou_predictions: String,
    pub masks_logits: Option<String>,
    /// Binary masks B×K×H0×W0 packed with numpy `packbits` (big-endian bit order).
    pub masks_bits: Option<String>,
}

/// Root of the repository (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Directory of a model fixture.
pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/model")
        .join(name)
}

impl Fixture {
    pub fn load(name: &str) -> Self {
        let dir = fixture_dir(name);
        let text = std::fs::read_to_string(dir.join("cases.json")).expect("cases.json");
        let mut f: Fixture = serde_json::from_str(&text).expect("parse cases.json");
        f.dir = dir;
        f
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn tensors(&self) -> HashMap<String, Tensor> {
        candle_core::safetensors::load(self.path(&self.tensors), &Device::Cpu)
            .expect("expected.safetensors")
    }

    pub fn image(&self, name: &str) -> &ImageCase {
        self.images
            .iter()
            .find(|i| i.name == name)
            .expect("image in cases.json")
    }
}

pub fn get<'a>(t: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    t.get(name)
        .unwrap_or_else(|| panic!("tensor {name} missing from fixture"))
}

/// Maximum absolute difference and maximum absolute reference value.
pub fn max_abs_diff(ours: &Tensor, reference: &Tensor) -> (f32, f32) {
    assert_eq!(ours.dims(), reference.dims(), "shape mismatch");
    let a = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut diff = 0f32;
    let mut max_ref = 0f32;
    for (x, y) in a.iter().zip(&b) {
        assert!(x.is_finite(), "non-finite output");
        diff = diff.max((x - y).abs());
        max_ref = max_ref.max(y.abs());
    }
    (diff, max_ref)
}

/// Unpack numpy `packbits` output (big-endian bit order) into `n` booleans.
pub fn unpack_bits(t: &Tensor, n: usize) -> Vec<bool> {
    let bytes = t.to_vec1::<u8>().unwrap();
    assert!(bytes.len() * 8 >= n, "packed mask too short");
    (0..n)
        .map(|i| bytes[i / 8] >> (7 - i % 8) & 1 == 1)
        .collect()
}

/// IoU of two binary masks.
pub fn bool_iou(a: &[bool], b: &[bool]) -> f64 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// IoU of two binary masks given as logits thresholded at 0.
pub fn mask_iou(a: &[f32], b: &[f32]) -> f64 {
    let mut inter = 0usize;
    let mut union = 0usize;
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x > 0.0, *y > 0.0);
        inter += usize::from(x && y);
        union += usize::from(x || y);
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}
