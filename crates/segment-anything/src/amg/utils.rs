//! The functions of the official `utils/amg.py`: point grids, crop boxes, stability score, mask boxes.

use crate::rle;

/// `numpy.linspace(start, stop, num)` (endpoint included), with numpy's arithmetic: `i * step + start`, the last
/// value set to `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    let div = num - 1;
    let delta = stop - start;
    let mut y: Vec<f64> = if div > 0 {
        let step = delta / div as f64;
        if step == 0.0 {
            (0..num)
                .map(|i| i as f64 / div as f64 * delta + start)
                .collect()
        } else {
            (0..num).map(|i| i as f64 * step + start).collect()
        }
    } else {
        (0..num).map(|i| i as f64 * delta + start).collect()
    };
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// The official `build_point_grid(n)`: `n × n` points evenly spaced in [0, 1]², in row-major order (y outer,
/// x inner), as `[x, y]`.
pub fn build_point_grid(n_per_side: usize) -> Vec<[f64; 2]> {
    if n_per_side == 0 {
        return Vec::new();
    }
    let offset = 1.0 / (2 * n_per_side) as f64;
    let p = linspace(offset, 1.0 - offset, n_per_side);
    let mut out = Vec::with_capacity(n_per_side * n_per_side);
    for &y in &p {
        for &x in &p {
            out.push([x, y]);
        }
    }
    out
}

pub(super) fn layer_points_per_side(
    n_per_side: usize,
    scale_per_layer: usize,
    layer: usize,
) -> usize {
    // int(n_per_side / (scale_per_layer ** i)) with a float division.
    let denom = (scale_per_layer as f64).powi(layer as i32);
    (n_per_side as f64 / denom) as usize
}

/// The official `build_all_layer_point_grids`: layer i has `int(n_per_side / scale_per_layer^i)` points per side.
pub fn build_all_layer_point_grids(
    n_per_side: usize,
    n_layers: usize,
    scale_per_layer: usize,
) -> Vec<Vec<[f64; 2]>> {
    (0..=n_layers)
        .map(|i| build_point_grid(layer_points_per_side(n_per_side, scale_per_layer, i)))
        .collect()
}

/// The official `generate_crop_boxes((h, w), n_layers, overlap_ratio)`: crop boxes `[x0, y0, x1, y1]` (exclusive
/// ends) and their layer indices. Layer 0 is the whole image; layer i has `(2^i)²` crops in x-major order.
pub fn generate_crop_boxes(
    im_size: (usize, usize),
    n_layers: usize,
    overlap_ratio: f64,
) -> (Vec<[i64; 4]>, Vec<usize>) {
    let (im_h, im_w) = (im_size.0 as i64, im_size.1 as i64);
    let short_side = im_h.min(im_w);
    let mut boxes = vec![[0, 0, im_w, im_h]];
    let mut layers = vec![0];
    let crop_len = |orig_len: i64, n_crops: i64, overlap: i64| -> i64 {
        ((overlap * (n_crops - 1) + orig_len) as f64 / n_crops as f64).ceil() as i64
    };
    for i_layer in 0..n_layers {
        let n_crops = 1i64 << (i_layer + 1);
        let overlap = (overlap_ratio * short_side as f64 * (2.0 / n_crops as f64)) as i64;
        let crop_w = crop_len(im_w, n_crops, overlap);
        let crop_h = crop_len(im_h, n_crops, overlap);
        let x0s: Vec<i64> = (0..n_crops).map(|k| (crop_w - overlap) * k).collect();
        let y0s: Vec<i64> = (0..n_crops).map(|k| (crop_h - overlap) * k).collect();
        for &x0 in &x0s {
            for &y0 in &y0s {
                boxes.push([x0, y0, (x0 + crop_w).min(im_w), (y0 + crop_h).min(im_h)]);
                layers.push(i_layer + 1);
            }
        }
    }
    (boxes, layers)
}

/// The official `calculate_stability_score` for one mask of `height × width` logits (row-major):
/// `count(logits > t + offset) / count(logits > t - offset)` with the thresholds cast to `f32`, the official
/// int16 row sums, and an `f32` division (NaN when both counts are 0).
pub fn calculate_stability_score(
    logits: &[f32],
    width: usize,
    mask_threshold: f64,
    offset: f64,
) -> f32 {
    let hi = (mask_threshold + offset) as f32;
    let lo = (mask_threshold - offset) as f32;
    stability_score_from_counts(stability_counts(logits, width, hi, lo))
}

/// The official `batched_mask_to_box` for one row-major mask: inclusive `[x0, y0, x1, y1]`, `[0, 0, 0, 0]` if empty.
pub fn mask_to_box(mask: &[bool], height: usize, width: usize) -> [i64; 4] {
    let bytes: Vec<u8> = mask.iter().map(|&v| u8::from(v)).collect();
    rle::mask_bbox_xyxy(&bytes, height, width)
        .map(|b| b.map(|v| v as i64))
        .unwrap_or([0; 4])
}

/// The official `is_box_near_crop_edge` for one box in the crop frame: uncropped, it is within `atol` of a crop edge
/// that is not also within `atol` of the image edge.
pub(super) fn is_box_near_crop_edge(
    bbox: &[i64; 4],
    crop_box: &[i64; 4],
    orig_box: &[i64; 4],
    atol: f32,
) -> bool {
    let b = [
        bbox[0] + crop_box[0],
        bbox[1] + crop_box[1],
        bbox[2] + crop_box[0],
        bbox[3] + crop_box[1],
    ];
    (0..4).any(|i| {
        let v = b[i] as f32;
        let near_crop = (v - crop_box[i] as f32).abs() <= atol;
        let near_image = (v - orig_box[i] as f32).abs() <= atol;
        near_crop && !near_image
    })
}

// ---------------------------------------------------------------------------------------------------------------

/// `(count(> hi), count(> lo))` of a row-major plane with the official int16 row sums and int32 total.
pub(super) fn stability_counts(plane: &[f32], width: usize, hi: f32, lo: f32) -> (i32, i32) {
    let (mut inter, mut union) = (0i64, 0i64);
    for row in plane.chunks_exact(width.max(1)) {
        let (mut a, mut b) = (0u32, 0u32);
        for &v in row {
            a += u32::from(v > hi);
            b += u32::from(v > lo);
        }
        // `.sum(-1, dtype=torch.int16)`: the row count wraps modulo 2^16.
        inter += (a as u16 as i16) as i64;
        union += (b as u16 as i16) as i64;
    }
    // `.sum(-1, dtype=torch.int32)`.
    (inter as i32, union as i32)
}

pub(super) fn stability_score_from_counts((inter, union): (i32, i32)) -> f32 {
    // int32 / int32 true division → float32.
    inter as f32 / union as f32
}
