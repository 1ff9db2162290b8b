//! Parity of the automatic mask generator with the official `SamAutomaticMaskGenerator`, on fixtures written by
//! `tools/reference/gen_amg_fixtures.py`:
//!
//! * `fixtures/amg/cases.json`: the official generator run with the tiny random-weight model (`../model/tiny`) on
//!   two photos with several parameter sets; every record with its predicted IoU and stability score (as f32 bits),
//!   grid point (f64 bits), area, box, crop box, the SHA-256 of its COCO RLE string, 1024 sampled mask pixels, and
//!   the full string for the first three records of each case.
//! * `fixtures/amg/utils.json`: the official `utils/amg.py` helpers, torchvision's `batched_nms`, `torch.sort`,
//!   OpenCV-based `remove_small_regions` and pycocotools strings on crafted inputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use segment_anything::amg::{
    batched_nms, build_all_layer_point_grids, build_point_grid, calculate_stability_score,
    generate_crop_boxes, mask_to_box, remove_small_regions, torch_argsort_descending, AmgParams,
    AutomaticMaskGenerator, OutputMode, RegionMode, Segmentation,
};
use segment_anything::rle::{decode_counts, encode_counts, CocoRle, Rle};
use segment_anything::{ImageView, Sam, SamConfig};
use serde::Deserialize;
use sha2::{Digest, Sha256};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/amg")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_json<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------------------------
// Generator parity
// ---------------------------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct CasesFile {
    model: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    image: String,
    size: [usize; 2],
    params: serde_json::Value,
    official_error: Option<String>,
    float_bbox: bool,
    float_crop_box: bool,
    seconds: f64,
    records: Vec<Rec>,
}

#[derive(Deserialize)]
struct Rec {
    area: u64,
    bbox: [u32; 4],
    predicted_iou_bits: u32,
    stability_score_bits: u32,
    point_coords_bits: [u64; 2],
    crop_box: [u32; 4],
    counts_sha256: String,
    samples: String,
    counts: Option<String>,
}

fn load_tiny(dir: &Path) -> Arc<Sam> {
    let cfg = SamConfig::from_json_file(dir.join("config.json")).expect("config");
    Arc::new(Sam::load(dir.join("model.pth"), Some(&cfg), &Device::Cpu).expect("tiny model"))
}

fn mask_iou(a: &[bool], b: &[bool]) -> f64 {
    let (mut inter, mut union) = (0u64, 0u64);
    for (&x, &y) in a.iter().zip(b) {
        inter += u64::from(x && y);
        union += u64::from(x || y);
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

fn sample_bits(mask: &[bool], n: usize) -> Vec<bool> {
    let hw = mask.len();
    (0..n).map(|k| mask[(2 * k + 1) * hw / (2 * n)]).collect()
}

fn hex_bits(hex: &str) -> Vec<bool> {
    (0..hex.len() / 2)
        .flat_map(|i| {
            let byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
            (0..8).rev().map(move |b| (byte >> b) & 1 == 1)
        })
        .collect()
}

#[derive(Default, Debug)]
struct Summary {
    records: usize,
    exact_masks: usize,
    full_iou_checked: usize,
    min_full_iou: f64,
    sampled_checked: usize,
    min_sampled_iou: f64,
    max_iou_diff: f64,
    max_stability_diff: f64,
    stability_over_1e6: usize,
    exact_iou_bits: usize,
    exact_stability_bits: usize,
    area_diffs: usize,
    max_area_abs_diff: u64,
    max_area_rel_diff: f64,
    bbox_diffs: usize,
    max_bbox_diff: i64,
}

#[test]
fn generator_matches_official_records() {
    let doc: CasesFile = read_json("cases.json");
    let sam = load_tiny(&fixtures().join(&doc.model));
    let mut total = Summary {
        min_full_iou: 1.0,
        min_sampled_iou: 1.0,
        ..Default::default()
    };
    let mut failures: Vec<String> = Vec::new();
    for case in &doc.cases {
        let mut params: AmgParams = serde_json::from_value(case.params.clone()).expect("params");
        params.output_mode = OutputMode::CocoRle;
        let img = segment_anything::load_image(repo_root().join(&case.image), &Default::default())
            .expect("photo");
        assert_eq!(
            [img.height() as usize, img.width() as usize],
            case.size,
            "{}",
            case.name
        );
        let gen = AutomaticMaskGenerator::new(sam.clone(), params).expect("params");
        let t = std::time::Instant::now();
        let out = gen
            .generate_dynamic_image_detailed(&img, None)
            .expect("generate");
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{}: {} records (official {}{}), {:.2}s here vs {:.2}s official; stats {:?}",
            case.name,
            out.records.len(),
            case.records.len(),
            case.official_error
                .as_ref()
                .map(|e| format!(", official raised {e}"))
                .unwrap_or_default(),
            secs,
            case.seconds,
            out.stats
        );
        if out.records.len() != case.records.len() {
            failures.push(format!(
                "{}: {} records, official {}",
                case.name,
                out.records.len(),
                case.records.len()
            ));
            continue;
        }
        if !case.records.is_empty()
            && (out.float_bbox != case.float_bbox || out.float_crop_box != case.float_crop_box)
        {
            failures.push(format!(
                "{}: float flags bbox {} crop_box {}, official {} {}",
                case.name, out.float_bbox, out.float_crop_box, case.float_bbox, case.float_crop_box
            ));
        }
        let mut s = Summary {
            min_full_iou: 1.0,
            min_sampled_iou: 1.0,
            ..Default::default()
        };
        for (i, (ours, want)) in out.records.iter().zip(&case.records).enumerate() {
            let tag = format!("{} record {i}", case.name);
            s.records += 1;
            let want_iou = f32::from_bits(want.predicted_iou_bits);
            let want_stab = f32::from_bits(want.stability_score_bits);
            let d_iou = (ours.predicted_iou - want_iou).abs() as f64;
            s.max_iou_diff = s.max_iou_diff.max(d_iou);
            s.exact_iou_bits +=
                usize::from(ours.predicted_iou.to_bits() == want.predicted_iou_bits);
            let d_stab = if want_stab.is_nan() && ours.stability_score.is_nan() {
                0.0
            } else {
                (ours.stability_score - want_stab).abs() as f64
            };
            s.max_stability_diff = s.max_stability_diff.max(d_stab);
            s.stability_over_1e6 += usize::from(d_stab > 1e-6);
            s.exact_stability_bits +=
                usize::from(ours.stability_score.to_bits() == want.stability_score_bits);
            if d_iou.is_nan() || d_iou > 1e-4 {
                failures.push(format!(
                    "{tag}: predicted_iou {} vs {want_iou}",
                    ours.predicted_iou
                ));
            }
            if d_stab.is_nan() || d_stab > 1e-4 {
                failures.push(format!(
                    "{tag}: stability_score {} vs {want_stab}",
                    ours.stability_score
                ));
            }
            let want_point = want.point_coords_bits.map(f64::from_bits);
            if ours.point_coords != want_point {
                failures.push(format!(
                    "{tag}: point {:?} vs {want_point:?}",
                    ours.point_coords
                ));
            }
            if ours.crop_box != want.crop_box {
                failures.push(format!(
                    "{tag}: crop_box {:?} vs {:?}",
                    ours.crop_box, want.crop_box
                ));
            }
            if ours.area != want.area {
                s.area_diffs += 1;
                s.max_area_abs_diff = s.max_area_abs_diff.max(ours.area.abs_diff(want.area));
                let rel = (ours.area as f64 - want.area as f64).abs() / want.area.max(1) as f64;
                s.max_area_rel_diff = s.max_area_rel_diff.max(rel);
            }
            let bd = ours
                .bbox
                .iter()
                .zip(&want.bbox)
                .map(|(a, b)| (*a as i64 - *b as i64).abs())
                .max()
                .unwrap();
            if bd > 0 {
                s.bbox_diffs += 1;
                s.max_bbox_diff = s.max_bbox_diff.max(bd);
            }
            let Segmentation::CocoRle(coco) = &ours.segmentation else {
                panic!("coco_rle output expected")
            };
            assert_eq!(coco.size, case.size);
            let sha = hex_lower(&Sha256::digest(coco.counts.as_bytes()));
            let exact = sha[..16] == want.counts_sha256[..];
            s.exact_masks += usize::from(exact);
            let mask = coco.to_mask().expect("decode").data;
            if let Some(want_counts) = &want.counts {
                let want_mask = CocoRle {
                    size: coco.size,
                    counts: want_counts.clone(),
                }
                .to_mask()
                .expect("official string")
                .data;
                let iou = mask_iou(&mask, &want_mask);
                s.full_iou_checked += 1;
                s.min_full_iou = s.min_full_iou.min(iou);
                if iou < 0.99 {
                    failures.push(format!("{tag}: mask IoU {iou:.4}"));
                }
                assert_eq!(exact, &coco.counts == want_counts);
            } else if !exact {
                let ours_s = sample_bits(&mask, 1024);
                let want_s = hex_bits(&want.samples);
                let iou = mask_iou(&ours_s, &want_s);
                s.sampled_checked += 1;
                s.min_sampled_iou = s.min_sampled_iou.min(iou);
                let area_ratio =
                    ours.area.min(want.area) as f64 / ours.area.max(want.area).max(1) as f64;
                if iou < 0.98 || area_ratio < 0.99 {
                    failures.push(format!(
                        "{tag}: sampled mask IoU {iou:.4}, area ratio {area_ratio:.4}"
                    ));
                }
            }
            if bd > 2 {
                failures.push(format!("{tag}: bbox {:?} vs {:?}", ours.bbox, want.bbox));
            }
        }
        println!("  {s:?}");
        total.records += s.records;
        total.exact_masks += s.exact_masks;
        total.full_iou_checked += s.full_iou_checked;
        total.min_full_iou = total.min_full_iou.min(s.min_full_iou);
        total.sampled_checked += s.sampled_checked;
        total.min_sampled_iou = total.min_sampled_iou.min(s.min_sampled_iou);
        total.max_iou_diff = total.max_iou_diff.max(s.max_iou_diff);
        total.max_stability_diff = total.max_stability_diff.max(s.max_stability_diff);
        total.stability_over_1e6 += s.stability_over_1e6;
        total.exact_iou_bits += s.exact_iou_bits;
        total.exact_stability_bits += s.exact_stability_bits;
        total.area_diffs += s.area_diffs;
        total.max_area_abs_diff = total.max_area_abs_diff.max(s.max_area_abs_diff);
        total.max_area_rel_diff = total.max_area_rel_diff.max(s.max_area_rel_diff);
        total.bbox_diffs += s.bbox_diffs;
        total.max_bbox_diff = total.max_bbox_diff.max(s.max_bbox_diff);
    }
    println!("total: {total:?}");
    assert!(total.records > 500, "too few records compared");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The three output modes are encodings of the same masks.
#[test]
fn output_modes_agree() {
    let doc: CasesFile = read_json("cases.json");
    let sam = load_tiny(&fixtures().join(&doc.model));
    let img = segment_anything::load_image(
        repo_root().join("assets/images/chelsea.png"),
        &Default::default(),
    )
    .unwrap();
    let run = |mode: OutputMode| {
        let params = AmgParams {
            points_per_side: Some(3),
            pred_iou_thresh: 0.0,
            stability_score_thresh: 0.0,
            box_nms_thresh: 1.0,
            output_mode: mode,
            ..Default::default()
        };
        AutomaticMaskGenerator::new(sam.clone(), params)
            .unwrap()
            .generate_dynamic_image(&img)
            .unwrap()
    };
    let (a, b, c) = (
        run(OutputMode::BinaryMask),
        run(OutputMode::UncompressedRle),
        run(OutputMode::CocoRle),
    );
    assert_eq!(a.len(), 27);
    for ((x, y), z) in a.iter().zip(&b).zip(&c) {
        let (
            Segmentation::BinaryMask(m),
            Segmentation::UncompressedRle(r),
            Segmentation::CocoRle(s),
        ) = (&x.segmentation, &y.segmentation, &z.segmentation)
        else {
            panic!("wrong segmentation kinds")
        };
        assert_eq!((m.height, m.width), (300, 451));
        assert_eq!(&m.to_rle().unwrap(), r);
        assert_eq!(&r.to_coco(), s);
        assert_eq!(m.area(), x.area);
        let b = m.bbox_xyxy().unwrap();
        assert_eq!(x.bbox, [b[0], b[1], b[2] - b[0], b[3] - b[1]]);
        assert_eq!(
            (x.predicted_iou, x.stability_score),
            (z.predicted_iou, z.stability_score)
        );
    }
    // Records serialise like the official ones (point_coords as [[x, y]]).
    let v = serde_json::to_value(&c[0]).unwrap();
    assert!(v["segmentation"]["counts"].is_string());
    assert_eq!(v["point_coords"].as_array().unwrap().len(), 1);
    let back: segment_anything::amg::MaskRecord = serde_json::from_value(v).unwrap();
    assert_eq!(back, c[0]);
}

// ---------------------------------------------------------------------------------------------------------------
// utils/amg.py and friends
// ---------------------------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Utils {
    point_grids: Vec<GridCase>,
    layer_grids: Vec<LayerGridCase>,
    crop_boxes: Vec<CropCase>,
    stability: Vec<StabilityCase>,
    stability_wide: Vec<WideCase>,
    mask_boxes: Vec<BoxCase>,
    sorts: Vec<SortCase>,
    nms: Vec<NmsGroup>,
    regions: Vec<RegionCase>,
    rles: Vec<RleCase>,
}

#[derive(Deserialize)]
struct GridCase {
    n: usize,
    axis_bits: Vec<u64>,
    grid: Option<Vec<[f64; 2]>>,
}

#[derive(Deserialize)]
struct LayerGridCase {
    n: usize,
    layers: usize,
    scale: usize,
    sizes: Vec<usize>,
}

#[derive(Deserialize)]
struct CropCase {
    size: [usize; 2],
    layers: usize,
    ratio_bits: u64,
    boxes: Vec<[i64; 4]>,
    layer_idxs: Vec<usize>,
}

#[derive(Deserialize)]
struct StabilityCase {
    h: usize,
    w: usize,
    logits_bits: Vec<u32>,
    offset: f64,
    score_bits: u32,
}

#[derive(Deserialize)]
struct WideCase {
    w: usize,
    a: usize,
    b: usize,
    score_bits: u32,
}

#[derive(Deserialize)]
struct BoxCase {
    h: usize,
    w: usize,
    rows: Vec<String>,
    #[serde(rename = "box")]
    bbox: [i64; 4],
}

#[derive(Deserialize)]
struct SortCase {
    values: Vec<f32>,
    order: Vec<usize>,
    heap_hits: Option<usize>,
}

#[derive(Deserialize)]
struct NmsGroup {
    label: String,
    boxes: Vec<[f32; 4]>,
    cases: Vec<NmsCase>,
}

#[derive(Deserialize)]
struct NmsCase {
    score_bits: Vec<u32>,
    thresh: f64,
    keep: Vec<usize>,
}

#[derive(Deserialize)]
struct RegionCase {
    label: String,
    rows: Vec<String>,
    results: Vec<RegionResult>,
}

#[derive(Deserialize)]
struct RegionResult {
    area: f64,
    mode: String,
    changed: bool,
    expected_counts: Vec<u32>,
}

#[derive(Deserialize)]
struct RleCase {
    size: [usize; 2],
    counts: Vec<u32>,
    coco: String,
    area: Option<u64>,
    coco_bbox: Option<[f64; 4]>,
}

fn parse_rows(rows: &[String]) -> (Vec<bool>, usize, usize) {
    let h = rows.len();
    let w = rows.first().map_or(0, |r| r.len());
    let m = rows
        .iter()
        .flat_map(|r| r.bytes().map(|b| b == b'1'))
        .collect();
    (m, h, w)
}

fn utils() -> Utils {
    read_json("utils.json")
}

#[test]
fn point_grids_match_official() {
    let u = utils();
    for c in &u.point_grids {
        let axis: Vec<f64> = c.axis_bits.iter().map(|&b| f64::from_bits(b)).collect();
        let g = build_point_grid(c.n);
        assert_eq!(g.len(), c.n * c.n);
        for (k, p) in g.iter().enumerate() {
            assert_eq!(
                [p[0].to_bits(), p[1].to_bits()],
                [axis[k % c.n].to_bits(), axis[k / c.n].to_bits()],
                "n = {} point {k}",
                c.n
            );
        }
        if let Some(grid) = &c.grid {
            assert_eq!(&g, grid, "n = {}", c.n);
        }
    }
    for c in &u.layer_grids {
        let sizes: Vec<usize> = build_all_layer_point_grids(c.n, c.layers, c.scale)
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(
            sizes, c.sizes,
            "n {} layers {} scale {}",
            c.n, c.layers, c.scale
        );
    }
}

#[test]
fn crop_boxes_match_official() {
    let u = utils();
    for c in &u.crop_boxes {
        let ratio = f64::from_bits(c.ratio_bits);
        let (boxes, idx) = generate_crop_boxes((c.size[0], c.size[1]), c.layers, ratio);
        assert_eq!(
            boxes, c.boxes,
            "{:?} layers {} ratio {ratio}",
            c.size, c.layers
        );
        assert_eq!(idx, c.layer_idxs);
    }
    println!("{} crop box cases", u.crop_boxes.len());
}

#[test]
fn stability_scores_match_official() {
    let u = utils();
    for (i, c) in u.stability.iter().enumerate() {
        let logits: Vec<f32> = c.logits_bits.iter().map(|&b| f32::from_bits(b)).collect();
        assert_eq!(logits.len(), c.h * c.w);
        let s = calculate_stability_score(&logits, c.w, 0.0, c.offset);
        let want = f32::from_bits(c.score_bits);
        assert!(
            s.to_bits() == c.score_bits || (s.is_nan() && want.is_nan()),
            "case {i}: {s} vs {want}"
        );
    }
    // The official int16 row sums wrap for rows wider than 32767 pixels.
    for c in &u.stability_wide {
        let mut row = vec![-2.0f32; c.w];
        row[..c.a].fill(2.0);
        row[c.a..c.a + c.b].fill(0.5);
        let s = calculate_stability_score(&row, c.w, 0.0, 1.0);
        assert_eq!(
            s.to_bits(),
            c.score_bits,
            "w {} a {} b {}: {s}",
            c.w,
            c.a,
            c.b
        );
    }
}

#[test]
fn mask_boxes_match_official() {
    for c in &utils().mask_boxes {
        let (m, h, w) = parse_rows(&c.rows);
        assert_eq!((h, w), (c.h, c.w));
        assert_eq!(mask_to_box(&m, h, w), c.bbox, "{:?}", c.rows);
    }
}

#[test]
fn torch_sort_order_matches_official() {
    let mut heap = 0;
    for c in &utils().sorts {
        assert_eq!(
            torch_argsort_descending(&c.values),
            c.order,
            "n = {}",
            c.values.len()
        );
        heap += c.heap_hits.unwrap_or(0);
    }
    assert!(heap > 0, "the heapsort fallback is exercised");
}

#[test]
fn nms_matches_torchvision() {
    let mut n = 0;
    for g in &utils().nms {
        for c in &g.cases {
            let scores: Vec<f32> = c.score_bits.iter().map(|&b| f32::from_bits(b)).collect();
            let keep = batched_nms(&g.boxes, &scores, c.thresh);
            assert_eq!(keep, c.keep, "{} thresh {}", g.label, c.thresh);
            n += 1;
        }
    }
    println!("{n} NMS cases");
}

#[test]
fn small_regions_match_opencv() {
    let mut n = 0;
    for c in &utils().regions {
        let (m, h, w) = parse_rows(&c.rows);
        for r in &c.results {
            let mode = match r.mode.as_str() {
                "holes" => RegionMode::Holes,
                _ => RegionMode::Islands,
            };
            let (out, changed) = remove_small_regions(&m, h, w, r.area, mode);
            assert_eq!(changed, r.changed, "{} {} {}", c.label, r.mode, r.area);
            let counts = Rle::from_mask(&out, h, w).unwrap().counts;
            assert_eq!(
                counts, r.expected_counts,
                "{} {} {}",
                c.label, r.mode, r.area
            );
            n += 1;
        }
    }
    println!("{n} region cases");
}

#[test]
fn rle_and_coco_strings_match_pycocotools() {
    for c in &utils().rles {
        let [h, w] = c.size;
        assert_eq!(encode_counts(&c.counts), c.coco, "{:?}", c.size);
        assert_eq!(decode_counts(&c.coco).unwrap(), c.counts);
        let rle = Rle {
            size: c.size,
            counts: c.counts.clone(),
        };
        let coco = CocoRle {
            size: c.size,
            counts: c.coco.clone(),
        };
        assert_eq!(coco.to_rle().unwrap(), rle);
        if let Some(area) = c.area {
            // A mask-derived RLE (official mask_to_rle_pytorch): decode, re-encode, area and box.
            let mask = rle.to_mask().unwrap();
            assert_eq!(mask.data.len(), h * w);
            assert_eq!(Rle::from_mask(&mask.data, h, w).unwrap(), rle);
            assert_eq!(rle.area(), area);
            assert_eq!(mask.area(), area);
            assert_eq!(rle.to_coco(), coco);
            let want = c.coco_bbox.unwrap();
            let ours = match rle.bbox_xyxy() {
                Some(b) => [
                    b[0] as f64,
                    b[1] as f64,
                    (b[2] - b[0] + 1) as f64,
                    (b[3] - b[1] + 1) as f64,
                ],
                None => [0.0; 4],
            };
            assert_eq!(ours, want, "{:?}", c.size);
        }
    }
}

#[test]
fn generator_input_errors_and_tiny_images() {
    let doc: CasesFile = read_json("cases.json");
    let sam = load_tiny(&fixtures().join(&doc.model));
    let loose = AmgParams {
        points_per_side: Some(2),
        pred_iou_thresh: 0.0,
        stability_score_thresh: 0.0,
        box_nms_thresh: 1.0,
        ..Default::default()
    };
    let gen = AutomaticMaskGenerator::new(sam.clone(), loose.clone()).unwrap();
    // Bad pixel buffers are refused by the one image view every entry point takes.
    let e = ImageView::new(&[0; 10], 2, 2, 3).unwrap_err().to_string();
    assert!(e.contains("do not make"), "{e}");
    let e = ImageView::new(&[], 0, 0, 3).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    // A 1×1 image: every mask is the single pixel or empty (NaN stability when the union is empty).
    let pixel = ImageView::new(&[10, 200, 30], 1, 1, 3).unwrap();
    let recs = gen.generate(pixel).unwrap();
    assert_eq!(recs.len(), 12);
    for r in &recs {
        assert_eq!(r.crop_box, [0, 0, 1, 1]);
        assert_eq!(r.bbox, [0, 0, 0, 0]);
        assert!(r.area <= 1);
    }
    // Crop layers need crops of at least one pixel.
    let crops = AutomaticMaskGenerator::new(
        sam,
        AmgParams {
            crop_n_layers: 1,
            ..loose
        },
    )
    .unwrap();
    let e = crops.generate(pixel).unwrap_err().to_string();
    assert!(e.contains("too small"), "{e}");
}
