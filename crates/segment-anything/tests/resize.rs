//! Parity of `segment_anything::resize` with Pillow, PyTorch and the official `segment_anything` helpers.
//!
//! Fixtures: `tests/fixtures/resize/{cases.json,tensors.safetensors}`, written by
//! `tools/reference/gen_resize_fixtures.py` (its docstring documents the format).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use segment_anything::resize::{
    interpolate_bilinear, postprocess_masks, postprocess_masks_binary, resize_bilinear_u8,
    resized_size, ImageResizer, Layout,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture_dir() -> PathBuf {
    manifest_dir().join("tests/fixtures/resize")
}

fn images_dir() -> PathBuf {
    manifest_dir().join("../../assets/images")
}

/// The fixture tensors, decoded once per test.
struct Fixtures {
    cases: Value,
    tensors: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
}

impl Fixtures {
    fn load() -> Self {
        let cases: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture_dir().join("cases.json")).unwrap(),
        )
        .unwrap();
        let bytes = std::fs::read(fixture_dir().join("tensors.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                (
                    name,
                    (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
                )
            })
            .collect();
        Self { cases, tensors }
    }

    fn raw(&self, name: &str, dtype: Dtype) -> (&[usize], &[u8]) {
        let (dt, shape, data) = self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("missing fixture tensor {name}"));
        assert_eq!(*dt, dtype, "{name}");
        (shape, data)
    }

    fn u8(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let (shape, data) = self.raw(name, Dtype::U8);
        (shape.to_vec(), data.to_vec())
    }

    fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, data) = self.raw(name, Dtype::F32);
        (
            shape.to_vec(),
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        )
    }

    fn f64(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let (shape, data) = self.raw(name, Dtype::F64);
        (
            shape.to_vec(),
            data.chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        )
    }

    fn i64(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        let (shape, data) = self.raw(name, Dtype::I64);
        (
            shape.to_vec(),
            data.chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        )
    }

    /// f32 planes from u8 codes: `(code - 128) / divisor`, in f32 arithmetic as the generator does.
    fn planes(&self, name: &str) -> Vec<f32> {
        let divisor = self.cases["code_divisor"].as_f64().unwrap() as f32;
        self.u8(name)
            .1
            .iter()
            .map(|&c| (c as f32 - 128.0) / divisor)
            .collect()
    }
}

fn usize2(v: &Value) -> (usize, usize) {
    (
        v[0].as_u64().unwrap() as usize,
        v[1].as_u64().unwrap() as usize,
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Decode a PNG of assets/images as (H, W, C) bytes with C = 1 (gray) or 3 (RGB).
fn decode_photo(name: &str, channels: usize) -> (usize, usize, Vec<u8>) {
    let img = segment_anything::load_image(images_dir().join(name), &Default::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data = match channels {
        1 => img.into_luma8().into_raw(),
        3 => img.into_rgb8().into_raw(),
        c => panic!("{name}: unsupported channel count {c}"),
    };
    (h, w, data)
}

fn crop(
    src: &[u8],
    w: usize,
    c: usize,
    (y0, x0): (usize, usize),
    (h, cw): (usize, usize),
) -> Vec<u8> {
    (y0..y0 + h)
        .flat_map(|y| src[(y * w + x0) * c..(y * w + x0 + cw) * c].iter().copied())
        .collect()
}

/// Compare a resize output with a hashed reference; returns a description of the mismatch, if any.
fn check_hashed(
    fx: &Fixtures,
    out: &[u8],
    out_w: usize,
    c: usize,
    sha: &str,
    row_sha: &str,
) -> Option<String> {
    if sha256_hex(out) == sha {
        return None;
    }
    let (shape, rows) = fx.u8(row_sha);
    let bad_rows = out
        .chunks_exact(out_w * c)
        .zip(rows.chunks_exact(8))
        .filter(|(row, expected)| &Sha256::digest(row)[..8] != *expected)
        .count();
    Some(format!(
        "SHA-256 differs: {bad_rows} of {} rows differ",
        shape[0]
    ))
}

#[test]
fn pillow_bilinear_photos_at_official_size() {
    let fx = Fixtures::load();
    for case in fx.cases["photos"].as_array().unwrap() {
        let name = case["photo"].as_str().unwrap();
        let c = case["channels"].as_u64().unwrap() as usize;
        let (h, w, src) = decode_photo(name, c);
        assert_eq!((h, w), usize2(&case["in_size"]), "{name}");
        assert_eq!(
            sha256_hex(&src),
            case["input_sha256"].as_str().unwrap(),
            "{name}: PNG decodes differently"
        );
        let (oh, ow) = usize2(&case["out_size"]);
        assert_eq!(resized_size(h, w, 1024), (oh, ow), "{name}");
        let resizer = ImageResizer::new((h, w), (1024, 1024));
        let out = resizer.scale_image(&src, c).unwrap();
        assert_eq!(out.len(), oh * ow * c);
        let bad = check_hashed(
            &fx,
            &out,
            ow,
            c,
            case["sha256"].as_str().unwrap(),
            case["row_sha"].as_str().unwrap(),
        );
        println!(
            "photo {name} {h}×{w}×{c} → {oh}×{ow}: {}",
            bad.as_deref().unwrap_or("bit-identical to Pillow")
        );
        assert!(bad.is_none(), "{name}: {}", bad.unwrap());
    }
}

#[test]
fn pillow_bilinear_synthetic_cases() {
    let fx = Fixtures::load();
    let mut failures = Vec::new();
    let cases = fx.cases["pillow"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let c = case["channels"].as_u64().unwrap() as usize;
        let (h, w) = usize2(&case["in_size"]);
        let (oh, ow) = usize2(&case["out_size"]);
        let src = if let Some(input) = case["input"].as_str() {
            let (shape, data) = fx.u8(input);
            assert_eq!(shape, [h, w, c], "{name}");
            data
        } else {
            let photo = case["photo"].as_str().unwrap();
            let (_, pw, full) = decode_photo(photo, c);
            crop(&full, pw, c, usize2(&case["crop"]), (h, w))
        };
        let out = resize_bilinear_u8(&src, h, w, c, oh, ow).unwrap();
        assert_eq!(out.len(), oh * ow * c, "{name}");
        let verdict = if let Some(expected) = case["expected"].as_str() {
            let (shape, expected) = fx.u8(expected);
            assert_eq!(shape, [oh, ow, c], "{name}");
            let differing = out.iter().zip(&expected).filter(|(a, b)| a != b).count();
            let max = out
                .iter()
                .zip(&expected)
                .map(|(&a, &b)| (a as i32 - b as i32).abs())
                .max()
                .unwrap_or(0);
            (differing > 0).then(|| {
                format!(
                    "{differing} of {} bytes differ (max |diff| {max})",
                    expected.len()
                )
            })
        } else {
            check_hashed(
                &fx,
                &out,
                ow,
                c,
                case["sha256"].as_str().unwrap(),
                case["row_sha"].as_str().unwrap(),
            )
        };
        println!(
            "pillow {name}: {h}×{w}×{c} → {oh}×{ow}: {}",
            verdict.as_deref().unwrap_or("0 differing bytes")
        );
        if let Some(v) = verdict {
            failures.push(format!("{name}: {v}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Max absolute and relative differences of `out` against the stored (full or sampled) expected values.
struct Diff {
    max_abs: f64,
    max_rel: f64,
    compared: usize,
    exact: usize,
}

fn compare_f32(
    fx: &Fixtures,
    key: &str,
    case: &Value,
    out: &[f32],
    planes: usize,
    oh: usize,
    ow: usize,
) -> Diff {
    let mut d = Diff {
        max_abs: 0.0,
        max_rel: 0.0,
        compared: 0,
        exact: 0,
    };
    let mut add = |a: f32, b: f32| {
        let diff = (a as f64 - b as f64).abs();
        d.max_abs = d.max_abs.max(diff);
        // Relative to the value, or absolute below 1 (where cancellation makes ratios meaningless).
        d.max_rel = d.max_rel.max(diff / (b as f64).abs().max(1.0));
        d.compared += 1;
        d.exact += usize::from(a.to_bits() == b.to_bits());
    };
    match case["stored"].as_str().unwrap() {
        "full" => {
            let (shape, expected) = fx.f32(&format!("{key}/expected"));
            assert_eq!(shape, [planes, oh, ow], "{key}");
            out.iter().zip(&expected).for_each(|(&a, &b)| add(a, b));
        }
        _ => {
            let (_, row_sel) = fx.i64(&format!("{key}/row_sel"));
            let (_, rows) = fx.f32(&format!("{key}/rows"));
            for (sel, expected) in row_sel.chunks_exact(2).zip(rows.chunks_exact(ow)) {
                let (p, y) = (sel[0] as usize, sel[1] as usize);
                out[(p * oh + y) * ow..(p * oh + y + 1) * ow]
                    .iter()
                    .zip(expected)
                    .for_each(|(&a, &b)| add(a, b));
            }
            let (_, col_sel) = fx.i64(&format!("{key}/col_sel"));
            let (_, cols) = fx.f32(&format!("{key}/cols"));
            for (sel, expected) in col_sel.chunks_exact(2).zip(cols.chunks_exact(oh)) {
                let (p, x) = (sel[0] as usize, sel[1] as usize);
                for (y, &b) in expected.iter().enumerate() {
                    add(out[(p * oh + y) * ow + x], b);
                }
            }
        }
    }
    // Whole-output checksums.
    let sum: f64 = out.iter().map(|&v| v as f64).sum();
    let sum_sq: f64 = out.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let (es, esq) = (
        case["sum"].as_f64().unwrap(),
        case["sum_sq"].as_f64().unwrap(),
    );
    assert!(
        (sum - es).abs() <= 1e-6 * esq.max(1.0),
        "{key}: sum {sum} vs {es}"
    );
    assert!(
        (sum_sq - esq).abs() <= 1e-6 * esq.max(1.0),
        "{key}: sum of squares {sum_sq} vs {esq}"
    );
    d
}

/// PyTorch's generic CPU kernel (bilinear outputs with H + W > 128, and every `mode="linear"` call) is matched bit
/// for bit; its vectorised channels-last kernel (small bilinear outputs) rounds the source index differently.
fn assert_bit_exact_for_generic_kernel(case: &Value, d: &Diff, name: &str) {
    if case["torch_kernel"].as_str().unwrap() == "generic" {
        assert_eq!(
            d.exact, d.compared,
            "{name}: not bit-identical to the generic kernel"
        );
    }
}

#[test]
fn torch_bilinear_interpolate() {
    let fx = Fixtures::load();
    for case in fx.cases["interp"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let planes = case["planes"].as_u64().unwrap() as usize;
        let (ih, iw) = usize2(&case["in_size"]);
        let (oh, ow) = usize2(&case["out_size"]);
        let src = fx.planes(case["codes"].as_str().unwrap());
        assert_eq!(src.len(), planes * ih * iw, "{name}");
        let out = interpolate_bilinear(&src, planes, ih, iw, oh, ow).unwrap();
        assert_eq!(out.len(), planes * oh * ow, "{name}");
        let d = compare_f32(&fx, &format!("interp/{name}"), case, &out, planes, oh, ow);
        println!(
            "interp {name}: {planes}×{ih}×{iw} → {oh}×{ow}: max |diff| {:.3e}, max rel {:.3e}, {}/{} bit-exact ({} {} kernel)",
            d.max_abs,
            d.max_rel,
            d.exact,
            d.compared,
            case["mode"].as_str().unwrap(),
            case["torch_kernel"].as_str().unwrap()
        );
        assert!(d.max_abs <= 1e-5, "{name}: max abs diff {}", d.max_abs);
        assert_bit_exact_for_generic_kernel(case, &d, name);
    }
}

#[test]
fn postprocess_masks_at_the_resized_size() {
    // An image whose long side is the input size: the second resize is an identity (PyTorch copies it).
    let (mh, mw, planes) = (256, 256, 3);
    let logits: Vec<f32> = (0..planes * mh * mw)
        .map(|i| ((i * 7919) % 1013) as f32 / 101.3 - 5.0)
        .collect();
    for (h0, w0) in [(683, 1024), (1024, 1024), (1024, 7)] {
        let input = (1024, 1024);
        let resized = resized_size(h0, w0, 1024);
        assert_eq!(resized, (h0, w0));
        let out = postprocess_masks(&logits, planes, mh, mw, input, resized, (h0, w0)).unwrap();
        let full = interpolate_bilinear(&logits, planes, mh, mw, 1024, 1024).unwrap();
        for p in 0..planes {
            for y in 0..h0 {
                let a = &full[(p * 1024 + y) * 1024..(p * 1024 + y) * 1024 + w0];
                let b = &out[(p * h0 + y) * w0..(p * h0 + y + 1) * w0];
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{h0}×{w0}"
                );
            }
        }
        let bin = postprocess_masks_binary(&logits, planes, mh, mw, input, resized, (h0, w0), 0.0)
            .unwrap();
        assert!(bin.iter().zip(&out).all(|(&b, &v)| b == u8::from(v > 0.0)));
        assert!(bin.contains(&1) && bin.contains(&0));
    }
    // Invalid sizes are errors, as for the logits.
    assert!(postprocess_masks_binary(
        &logits,
        planes,
        mh,
        mw,
        (1024, 1024),
        (1025, 10),
        (5, 5),
        0.0
    )
    .is_err());
    assert!(postprocess_masks_binary(
        &logits[1..],
        planes,
        mh,
        mw,
        (1024, 1024),
        (683, 1024),
        (683, 1024),
        0.0
    )
    .is_err());
}

#[test]
fn official_postprocess_masks() {
    let fx = Fixtures::load();
    let logits = fx.planes("postprocess/codes");
    for case in fx.cases["postprocess"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let planes = case["planes"].as_u64().unwrap() as usize;
        let (mh, mw) = usize2(&case["mask_size"]);
        let input = usize2(&case["input_size"]);
        let resized = usize2(&case["resized_size"]);
        let (h0, w0) = usize2(&case["original_size"]);
        assert_eq!(resized_size(h0, w0, input.0), resized, "{name}");
        let out = postprocess_masks(&logits, planes, mh, mw, input, resized, (h0, w0)).unwrap();
        assert_eq!(out.len(), planes * h0 * w0, "{name}");
        let d = compare_f32(&fx, name, case, &out, planes, h0, w0);

        // The unoptimised path (full upsampling, crop, resize) gives the very same values.
        let full = interpolate_bilinear(&logits, planes, mh, mw, input.0, input.1).unwrap();
        let mut cropped = Vec::with_capacity(planes * resized.0 * resized.1);
        for p in 0..planes {
            for y in 0..resized.0 {
                let row = (p * input.0 + y) * input.1;
                cropped.extend_from_slice(&full[row..row + resized.1]);
            }
        }
        let slow = interpolate_bilinear(&cropped, planes, resized.0, resized.1, h0, w0).unwrap();
        assert!(
            slow.iter()
                .zip(&out)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: crop shortcut differs"
        );

        // ImageResizer::postprocess_mask is the same computation, optionally thresholded.
        let resizer = ImageResizer::new((h0, w0), input);
        let via = resizer
            .postprocess_mask(&logits, planes, (mh, mw), None)
            .unwrap();
        assert!(
            via.iter()
                .zip(&out)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}"
        );
        let bin = resizer
            .postprocess_mask(&logits, planes, (mh, mw), Some(0.0))
            .unwrap();
        let positives = bin.iter().filter(|&&v| v == 1.0).count();
        assert!(bin
            .iter()
            .zip(&out)
            .all(|(&b, &v)| b == if v > 0.0 { 1.0 } else { 0.0 }));
        // The thresholded post-processing gives the same masks without the full-size logits.
        for t in [0.0f32, 0.5] {
            let direct =
                postprocess_masks_binary(&logits, planes, mh, mw, input, resized, (h0, w0), t)
                    .unwrap();
            assert!(
                direct.iter().zip(&out).all(|(&b, &v)| b == u8::from(v > t)),
                "{name}: binary post-processing at {t}"
            );
        }
        let expected_pos = case["positives"].as_u64().unwrap() as usize;
        println!(
            "postprocess {name}: resized {resized:?}: max |diff| {:.3e}, max rel {:.3e}, {}/{} bit-exact, \
             positives {positives} vs {expected_pos}",
            d.max_abs, d.max_rel, d.exact, d.compared
        );
        assert!(d.max_abs <= 1e-4, "{name}: max abs diff {}", d.max_abs);
        assert_bit_exact_for_generic_kernel(case, &d, name);
        assert!(
            positives.abs_diff(expected_pos) <= 4,
            "{name}: {positives} positives vs {expected_pos}"
        );
    }
}

#[test]
fn official_resized_size() {
    let fx = Fixtures::load();
    let rows = fx.cases["resized_size"].as_array().unwrap();
    assert!(rows.len() > 400);
    for row in rows {
        let v: Vec<usize> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let (h, w, long_side) = (v[0], v[1], v[2]);
        assert_eq!(
            resized_size(h, w, long_side),
            (v[3], v[4]),
            "{h}×{w} → long side {long_side}"
        );
        let r = ImageResizer::new((h, w), (long_side, long_side));
        assert_eq!(r.rescaled_size(), (v[3], v[4]));
        assert_eq!(r.scale_h(), v[3] as f64 / h as f64);
        assert_eq!(r.scale_w(), v[4] as f64 / w as f64);
    }
    assert_eq!(resized_size(1500, 2250, 1024), (683, 1024));
    assert_eq!(resized_size(375, 500, 1024), (768, 1024));
}

#[test]
fn official_apply_coords_and_boxes() {
    let fx = Fixtures::load();
    for case in fx.cases["coords"].as_array().unwrap() {
        let key = case["key"].as_str().unwrap();
        let r = ImageResizer::new(usize2(&case["original_size"]), (1024, 1024));
        let (_, pts) = fx.f64(&format!("{key}/points"));
        let (_, pts_out) = fx.f64(&format!("{key}/points_out"));
        let points: Vec<[f64; 2]> = pts.chunks_exact(2).map(|p| [p[0], p[1]]).collect();
        let scaled = r.scale_points(&points);
        for ((p, s), e) in points.iter().zip(&scaled).zip(pts_out.chunks_exact(2)) {
            let exact = r.scale_point_f64(*p);
            assert_eq!(
                [exact[0].to_bits(), exact[1].to_bits()],
                [e[0].to_bits(), e[1].to_bits()],
                "{key} {p:?}"
            );
            assert_eq!(*s, [e[0] as f32, e[1] as f32], "{key} {p:?}");
        }
        let mut flat: Vec<f32> = points
            .iter()
            .flat_map(|p| [p[0] as f32, p[1] as f32])
            .collect();
        r.scale_coords_in_place(&mut flat).unwrap();
        for (v, p) in flat.chunks_exact(2).zip(&points) {
            assert_eq!(*v, r.scale_point([p[0] as f32 as f64, p[1] as f32 as f64]));
        }
        let (_, bx) = fx.f64(&format!("{key}/boxes"));
        let (_, bx_out) = fx.f64(&format!("{key}/boxes_out"));
        let boxes: Vec<[f64; 4]> = bx
            .chunks_exact(4)
            .map(|b| [b[0], b[1], b[2], b[3]])
            .collect();
        for (s, e) in r.scale_boxes(&boxes).iter().zip(bx_out.chunks_exact(4)) {
            assert_eq!(
                *s,
                [e[0] as f32, e[1] as f32, e[2] as f32, e[3] as f32],
                "{key}"
            );
        }
    }
    assert!(ImageResizer::new((10, 10), (20, 20))
        .scale_coords_in_place(&mut [1.0; 3])
        .is_err());
}

#[test]
fn image_resizer_geometry() {
    // Non-square targets: the largest rounded size that fits.
    let cases = [
        ((20, 10), (30, 40), (30, 15)),
        ((10, 20), (30, 40), (20, 40)),
        ((10, 20), (20, 10), (5, 10)),
        ((20, 10), (4, 4), (4, 2)),
        ((1500, 2250), (1024, 1024), (683, 1024)),
        ((333, 517), (768, 1024), (660, 1024)),
        ((517, 333), (768, 1024), (768, 495)),
    ];
    for (src, dst, rescaled) in cases {
        let r = ImageResizer::new(src, dst);
        assert_eq!(r.rescaled_size(), rescaled, "{src:?} → {dst:?}");
        assert_eq!(r.dst_size(), dst);
        assert_eq!(r.src_size(), src);
        assert!(!r.is_pad_only());
    }
    // Pad only: no rescale, factor 1.
    let r = ImageResizer::pad_only((300, 451), (304, 464));
    assert_eq!(r.rescaled_size(), (300, 451));
    assert_eq!((r.scale_h(), r.scale_w()), (1.0, 1.0));
    assert_eq!(r.scale_point([12.5, 7.25]), [12.5, 7.25]);
    assert!(r.is_pad_only());
    let img: Vec<u8> = (0..300 * 451 * 3).map(|i| (i % 251) as u8).collect();
    assert_eq!(r.scale_image(&img, 3).unwrap(), img);
}

#[test]
fn pad_image_layouts() {
    let r = ImageResizer::pad_only((2, 3), (3, 4));
    // Channels last (H, W, C) with C = 2.
    let src: Vec<u8> = (1..=12).collect();
    let out = r.pad_image(&src, 2, Layout::ChannelsLast).unwrap();
    #[rustfmt::skip]
    assert_eq!(out, [
        1, 2, 3, 4, 5, 6, 0, 0,
        7, 8, 9, 10, 11, 12, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    // Channels first (C, H, W) with C = 2, f32.
    let src: Vec<f32> = (1..=12).map(|v| v as f32).collect();
    let out = r.pad_image(&src, 2, Layout::ChannelsFirst).unwrap();
    #[rustfmt::skip]
    assert_eq!(out, [
        1.0, 2.0, 3.0, 0.0, 4.0, 5.0, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        7.0, 8.0, 9.0, 0.0, 10.0, 11.0, 12.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ]);
    assert!(r.pad_image(&src[..11], 2, Layout::ChannelsFirst).is_err());
}

#[test]
fn unscale_and_mask_to_prompt_shapes() {
    let r = ImageResizer::new((300, 451), (1024, 1024));
    let (h, w) = r.rescaled_size();
    let img: Vec<u8> = (0..h * w * 3).map(|i| (i * 7 % 256) as u8).collect();
    let back = r.unscale_image(&img, 3).unwrap();
    assert_eq!(back.len(), 300 * 451 * 3);
    let planes: Vec<f32> = (0..2 * h * w).map(|i| (i % 13) as f32).collect();
    assert_eq!(r.unscale_planes(&planes, 2).unwrap().len(), 2 * 300 * 451);
    // A constant mask stays constant inside the image and becomes 0 in the padding.
    let mask = vec![3.0f32; 300 * 451];
    let prompt = r.mask_to_prompt(&mask, 1, (256, 256)).unwrap();
    assert_eq!(prompt.len(), 256 * 256);
    assert!((prompt[0] - 3.0).abs() < 1e-5);
    assert_eq!(prompt[256 * 256 - 1], 0.0);
    assert!(r.mask_to_prompt(&mask[1..], 1, (256, 256)).is_err());
    assert!(interpolate_bilinear(&mask[1..], 1, 300, 451, 10, 10).is_err());
}

/// Timing (informational): `cargo test --release -p segment-anything --test resize -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_resize_640x427() {
    let (h, w, src) = decode_photo_any(&images_dir().join("rocket.jpg"));
    let (oh, ow) = resized_size(h, w, 1024);
    let _ = resize_bilinear_u8(&src, h, w, 3, oh, ow).unwrap();
    let n = 50;
    let t = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(resize_bilinear_u8(&src, h, w, 3, oh, ow).unwrap());
    }
    println!(
        "resize_bilinear_u8 {h}×{w}×3 → {oh}×{ow}: {:.3} ms per call ({} rayon threads)",
        t.elapsed().as_secs_f64() * 1e3 / n as f64,
        rayon::current_num_threads()
    );
}

fn decode_photo_any(path: &Path) -> (usize, usize, Vec<u8>) {
    let img = segment_anything::load_image(path, &Default::default())
        .unwrap()
        .into_rgb8();
    (img.height() as usize, img.width() as usize, img.into_raw())
}
