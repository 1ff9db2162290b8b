//! `sam auto`: "segment everything" with the automatic mask generator, writing what the official
//! `scripts/amg.py` writes.
//!
//! * `binary_mask` (default): a folder per image, named by the file stem, with `{i}.png` (8-bit gray, 0/255) and
//!   `metadata.csv` (the official header; values printed like Python's `str()`, lines joined by `\n`).
//! * `coco_rle` / `uncompressed_rle`: one `<stem>.json` per image, the list of records as the official
//!   `json.dump` writes it (same key order and separators, Python float formatting, `NaN` for a NaN score).
//!
//! Outputs are written atomically (a folder is filled under a temporary name and renamed); an existing output is an
//! error unless `--overwrite` is given.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use segment_anything::amg::{
    AmgOutput, AmgParams, AmgProgress, AutomaticMaskGenerator, MaskRecord, OutputMode, Segmentation,
};

use super::{load_model, open_image, ImageReadArgs, Log, ModelArgs};

/// Arguments of `sam auto`.
#[derive(Args)]
pub struct AutoArgs {
    /// Input image, or a directory whose files are all tried as images (not recursive; unreadable files are
    /// skipped with a warning).
    #[arg(long)]
    image: PathBuf,
    #[command(flatten)]
    read: ImageReadArgs,
    /// Output directory (created if missing).
    #[arg(long)]
    output_dir: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Output form: binary_mask (PNG masks + metadata.csv per image), coco_rle (one JSON per image, compressed
    /// RLE) or uncompressed_rle (one JSON per image, integer run lengths).
    #[arg(long, default_value = "binary_mask", value_parser = ["binary_mask", "coco_rle", "uncompressed_rle"])]
    output_mode: String,
    /// Replace existing outputs instead of failing.
    #[arg(long)]
    overwrite: bool,
    /// Points sampled along one side of the image (n × n grid) [default: 32].
    #[arg(long, value_name = "N")]
    points_per_side: Option<usize>,
    /// Points run through the mask decoder at once [default: 64].
    #[arg(long, value_name = "N")]
    points_per_batch: Option<usize>,
    /// Keep masks whose predicted IoU is above this (0 disables) [default: 0.88].
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    pred_iou_thresh: Option<f64>,
    /// Keep masks whose stability score is at least this (0 disables) [default: 0.95].
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    stability_score_thresh: Option<f64>,
    /// Logit offset used by the stability score [default: 1.0].
    #[arg(long, value_name = "X")]
    stability_score_offset: Option<f64>,
    /// Box IoU above which NMS drops a duplicate mask within a crop [default: 0.7].
    #[arg(long, value_name = "X")]
    box_nms_thresh: Option<f64>,
    /// Extra layers of image crops; layer i has (2^i)² crops [default: 0].
    #[arg(long, value_name = "N")]
    crop_n_layers: Option<usize>,
    /// Box IoU above which NMS drops a duplicate mask across crops [default: 0.7].
    #[arg(long, value_name = "X")]
    crop_nms_thresh: Option<f64>,
    /// Overlap of the first-layer crops as a fraction of the short image side, e.g. 0.34 [default: 512/1500].
    #[arg(long, value_name = "X")]
    crop_overlap_ratio: Option<f64>,
    /// Points per side in crop layer i are divided by this to the power i [default: 1].
    #[arg(long, value_name = "N")]
    crop_n_points_downscale_factor: Option<usize>,
    /// Remove holes and islands smaller than this many pixels, then run NMS again (0 disables) [default: 0].
    #[arg(long, value_name = "PIXELS")]
    min_mask_region_area: Option<usize>,
}

/// The official metadata.csv header.
pub const CSV_HEADER: &str = "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h";

impl AutoArgs {
    fn params(&self) -> Result<AmgParams> {
        let mut p = AmgParams {
            output_mode: self.output_mode.parse()?,
            ..Default::default()
        };
        if let Some(v) = self.points_per_side {
            p.points_per_side = Some(v);
        }
        if let Some(v) = self.points_per_batch {
            p.points_per_batch = v;
        }
        if let Some(v) = self.pred_iou_thresh {
            p.pred_iou_thresh = v;
        }
        if let Some(v) = self.stability_score_thresh {
            p.stability_score_thresh = v;
        }
        if let Some(v) = self.stability_score_offset {
            p.stability_score_offset = v;
        }
        if let Some(v) = self.box_nms_thresh {
            p.box_nms_thresh = v;
        }
        if let Some(v) = self.crop_n_layers {
            p.crop_n_layers = v;
        }
        if let Some(v) = self.crop_nms_thresh {
            p.crop_nms_thresh = v;
        }
        if let Some(v) = self.crop_overlap_ratio {
            p.crop_overlap_ratio = v;
        }
        if let Some(v) = self.crop_n_points_downscale_factor {
            p.crop_n_points_downscale_factor = v;
        }
        if let Some(v) = self.min_mask_region_area {
            p.min_mask_region_area = v;
        }
        p.validate()?;
        Ok(p)
    }
}

/// Run `sam auto`.
pub fn run(args: AutoArgs, log: &Log) -> Result<()> {
    let params = args.params()?;
    let is_dir = args.image.is_dir();
    let targets: Vec<PathBuf> = if is_dir {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&args.image)
            .with_context(|| format!("cannot list {}", args.image.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !p.is_dir())
            .collect();
        v.sort();
        v
    } else if args.image.exists() {
        vec![args.image.clone()]
    } else {
        bail!("{}: no such file or directory", args.image.display());
    };
    if targets.is_empty() {
        bail!("{}: no files to segment", args.image.display());
    }
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("cannot create {}", args.output_dir.display()))?;

    let sam = Arc::new(load_model(&args.model, log)?);
    let generator = AutomaticMaskGenerator::new(sam.clone(), params.clone())?;
    let mode = params.output_mode;

    let bars = MultiProgress::with_draw_target(if log.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let images_bar = (targets.len() > 1).then(|| {
        let b = bars.add(ProgressBar::new(targets.len() as u64));
        b.set_style(
            ProgressStyle::with_template("images {bar:30} {pos}/{len} [{elapsed_precise}] {msg}")
                .expect("template"),
        );
        b
    });

    let mut done = Vec::new();
    let mut skipped = Vec::new();
    let mut stems: std::collections::HashMap<String, PathBuf> = Default::default();
    for path in &targets {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".to_string());
        if let Some(b) = &images_bar {
            b.set_message(stem.clone());
        }
        let photo = match open_image(path, &args.read) {
            Ok(p) => p,
            Err(e) if is_dir => {
                let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
                bars.suspend(|| {
                    if !log.quiet {
                        eprintln!("warning: skipping {}: {}", path.display(), chain.join(": "))
                    }
                });
                skipped.push(path.display().to_string());
                if let Some(b) = &images_bar {
                    b.inc(1);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let out_path = match mode {
            OutputMode::BinaryMask => args.output_dir.join(&stem),
            _ => args.output_dir.join(format!("{stem}.json")),
        };
        if let Some(other) = stems.insert(stem.clone(), path.clone()) {
            bail!(
                "{} and {} would both be written to {}",
                other.display(),
                path.display(),
                out_path.display()
            );
        }
        if out_path.exists() && !args.overwrite {
            bail!(
                "{} already exists (use --overwrite to replace it)",
                out_path.display()
            );
        }

        let crop_bar = bars.add(ProgressBar::new(0));
        crop_bar.set_style(
            ProgressStyle::with_template(
                "{msg:>20} {bar:30} {pos}/{len} batches [{elapsed_precise}]",
            )
            .expect("template"),
        );
        crop_bar.set_message(stem.clone());
        let t = Instant::now();
        let mut on_progress = |p: AmgProgress| {
            if p.batch == 1 {
                crop_bar.set_length(p.batches as u64);
                crop_bar.set_position(0);
                if p.crops > 1 {
                    crop_bar.set_message(format!("{stem} crop {}/{}", p.crop + 1, p.crops));
                }
            }
            crop_bar.set_position(p.batch as u64);
        };
        let output = generator
            .generate_dynamic_image_detailed(&photo, Some(&mut on_progress))
            .with_context(|| format!("{}", path.display()))?;
        crop_bar.finish_and_clear();
        bars.remove(&crop_bar);
        let secs = t.elapsed().as_secs_f64();

        match mode {
            OutputMode::BinaryMask => write_masks_to_folder(&output, &out_path, args.overwrite)?,
            _ => {
                let json = records_to_python_json(&output);
                if out_path.is_dir() {
                    bail!("{} is a directory", out_path.display());
                }
                segment_anything::io::atomic_write(&out_path, json.as_bytes())?;
            }
        }
        bars.suspend(|| {
            log.info(format!(
                "{}: {} mask(s) in {secs:.2}s → {}",
                path.display(),
                output.records.len(),
                out_path.display()
            ));
            log.debug(format!("  stages: {:?}", output.stats));
        });
        done.push(serde_json::json!({
            "image": path.display().to_string(),
            "output": out_path.display().to_string(),
            "masks": output.records.len(),
            "seconds": (secs * 1000.0).round() / 1000.0,
        }));
        if let Some(b) = &images_bar {
            b.inc(1);
        }
    }
    if let Some(b) = &images_bar {
        b.finish_and_clear();
    }
    if done.is_empty() {
        bail!(
            "{}: none of the {} file(s) could be read as an image",
            args.image.display(),
            targets.len()
        );
    }
    let doc = serde_json::json!({
        "model": sam.config().name,
        "output_mode": mode.as_str(),
        "output_dir": args.output_dir.display().to_string(),
        "images": done,
        "skipped": skipped,
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

/// The official `write_masks_to_folder`: `{i}.png` (mask × 255) and `metadata.csv`, into a temporary folder that is
/// renamed to `dir` once complete.
fn write_masks_to_folder(output: &AmgOutput, dir: &Path, overwrite: bool) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = (|| -> Result<()> {
        for (i, r) in output.records.iter().enumerate() {
            let mask = r.segmentation.to_mask()?;
            let img = image::GrayImage::from_raw(
                mask.width as u32,
                mask.height as u32,
                mask.to_bytes(255),
            )
            .expect("mask size");
            let path = tmp.join(format!("{i}.png"));
            let mut buf = std::io::Cursor::new(Vec::new());
            image::DynamicImage::ImageLuma8(img)
                .write_to(&mut buf, image::ImageFormat::Png)
                .with_context(|| format!("cannot encode {}", path.display()))?;
            std::fs::write(&path, buf.get_ref())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        std::fs::write(tmp.join("metadata.csv"), metadata_csv(output))
            .with_context(|| format!("cannot write {}", tmp.join("metadata.csv").display()))?;
        if dir.exists() {
            if !overwrite {
                bail!(
                    "{} already exists (use --overwrite to replace it)",
                    dir.display()
                );
            }
            if dir.is_dir() {
                std::fs::remove_dir_all(dir)
            } else {
                std::fs::remove_file(dir)
            }
            .with_context(|| format!("cannot replace {}", dir.display()))?;
        }
        std::fs::rename(&tmp, dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn int_or_float(v: u32, float: bool) -> String {
    if float {
        py_float(v as f64)
    } else {
        v.to_string()
    }
}

/// The official metadata.csv: header and one row per mask, values as Python's `str()`, joined by `\n` (no final
/// newline, as the official script writes it).
pub fn metadata_csv(output: &AmgOutput) -> String {
    let mut lines = vec![CSV_HEADER.to_string()];
    for (i, r) in output.records.iter().enumerate() {
        let mut row = vec![i.to_string(), r.area.to_string()];
        row.extend(r.bbox.iter().map(|&v| int_or_float(v, output.float_bbox)));
        row.extend(r.point_coords.iter().map(|&v| py_float(v)));
        row.push(py_float(r.predicted_iou as f64));
        row.push(py_float(r.stability_score as f64));
        row.extend(
            r.crop_box
                .iter()
                .map(|&v| int_or_float(v, output.float_crop_box)),
        );
        lines.push(row.join(","));
    }
    lines.join("\n")
}

fn json_float(v: f64) -> String {
    // json.dumps: float.__repr__, with NaN / Infinity / -Infinity for the non-finite values.
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        py_float(v)
    }
}

fn json_list(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

fn json_int_or_float(v: u32, float: bool) -> String {
    if float {
        json_float(v as f64)
    } else {
        v.to_string()
    }
}

fn record_to_python_json(r: &MaskRecord, float_bbox: bool, float_crop_box: bool) -> String {
    let seg = match &r.segmentation {
        Segmentation::CocoRle(c) => format!(
            "{{\"size\": [{}, {}], \"counts\": {}}}",
            c.size[0],
            c.size[1],
            serde_json::to_string(&c.counts).expect("string")
        ),
        Segmentation::UncompressedRle(u) => format!(
            "{{\"size\": [{}, {}], \"counts\": {}}}",
            u.size[0],
            u.size[1],
            json_list(u.counts.iter().map(|c| c.to_string()))
        ),
        Segmentation::BinaryMask(m) => json_list((0..m.height).map(|y| {
            json_list(
                m.data[y * m.width..(y + 1) * m.width]
                    .iter()
                    .map(|&v| if v { "true" } else { "false" }.to_string()),
            )
        })),
    };
    format!(
        "{{\"segmentation\": {seg}, \"area\": {}, \"bbox\": {}, \"predicted_iou\": {}, \"point_coords\": [{}], \
         \"stability_score\": {}, \"crop_box\": {}}}",
        r.area,
        json_list(r.bbox.iter().map(|&v| json_int_or_float(v, float_bbox))),
        json_float(r.predicted_iou as f64),
        json_list(r.point_coords.iter().map(|&v| json_float(v))),
        json_float(r.stability_score as f64),
        json_list(r.crop_box.iter().map(|&v| json_int_or_float(v, float_crop_box))),
    )
}

/// The records as the official script's `json.dump(masks, f)` writes them.
pub fn records_to_python_json(output: &AmgOutput) -> String {
    json_list(
        output
            .records
            .iter()
            .map(|r| record_to_python_json(r, output.float_bbox, output.float_crop_box)),
    )
}

/// Python's `repr(float)` / `str(float)`: the shortest round-trip digits, fixed notation for decimal exponents
/// -4..=15 (with `.0` for integral values), else `d.ddde±XX`; `nan`, `inf`, `-inf`.
pub fn py_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sci = format!("{:e}", v); // shortest round-trip digits, e.g. "-1.2345e-5"
    let (mantissa, exp) = sci.split_once('e').expect("exponent");
    let exp: i32 = exp.parse().expect("exponent");
    let (neg, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.push_str(&"0".repeat(int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.push_str(&"0".repeat((-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exp.abs()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (v, s) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (28.1875, "28.1875"),
            (0.8912345170974731, "0.8912345170974731"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456.0, "123456.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345678901234568e17, "1.2345678901234568e+17"),
            (-2.5, "-2.5"),
            (1e300, "1e+300"),
            (f64::NAN, "nan"),
            (f64::INFINITY, "inf"),
            (0.30000001192092896, "0.30000001192092896"),
        ] {
            assert_eq!(py_float(v), s, "{v:e}");
        }
        assert_eq!(py_float(0.7f32 as f64), "0.699999988079071");
    }
}
