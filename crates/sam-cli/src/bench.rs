//! `sam bench`: timings with random weights and no download — decoding the image file, model load from
//! safetensors, the image encoder, and `predict` for one prompt — reported as median and spread over several
//! runs, with peak memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use segment_anything::{
    checkpoint, load_image, ImageLoadOptions, PredictOptions, PromptSet, Sam, SamPredictor,
    SamVariant,
};

#[derive(Args)]
pub struct BenchArgs {
    /// Models to time (comma-separated): vit_b, vit_l, vit_h; empty for the decoding time alone.
    #[arg(long, default_value = "vit_b")]
    models: String,
    /// Image to encode (default: the bundled rocket photo if present, else a synthetic 1024×683 image).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Timed decodes of the image file (`load_image`, after one warm-up); 0 to skip. Needs an image file.
    #[arg(long, default_value_t = 5)]
    decode_runs: usize,
    /// Timed runs of the encoder (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    encoder_runs: usize,
    /// Timed runs of `predict` (after one warm-up run).
    #[arg(long, default_value_t = 20)]
    predict_runs: usize,
    /// Timed model loads from safetensors.
    #[arg(long, default_value_t = 3)]
    load_runs: usize,
    /// Skip the encoder timing (load and predict only; predict then uses a random embedding).
    #[arg(long)]
    skip_encoder: bool,
    /// Print one JSON object per model instead of a table.
    #[arg(long)]
    json: bool,
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let s = |d: Duration| d.as_secs_f64() * 1e3;
    Stats {
        median: s(v[v.len() / 2]),
        min: s(v[0]),
        max: s(v[v.len() - 1]),
    }
}

fn time<T>(runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<Stats> {
    f()?;
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    Ok(stats(v))
}

/// Reset the peak-RSS counter (`VmHWM`) so the next reading covers only what follows (Linux; best effort).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if available.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(a: BenchArgs) -> Result<()> {
    let device = Device::Cpu;
    let options = ImageLoadOptions::default();
    let default = PathBuf::from("assets/images/rocket.jpg");
    let file = match &a.image {
        Some(p) => Some(p.clone()),
        None => default.is_file().then_some(default),
    };
    let photo = match &file {
        Some(p) => load_image(p, &options)?,
        None => image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(1024, 683, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
        })),
    };
    if let (Some(p), true) = (&file, a.decode_runs > 0) {
        let decode = time(a.decode_runs, || Ok(load_image(p, &options)?))?;
        let (w, h) = (photo.width(), photo.height());
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "decode": {"median_ms": decode.median, "min_ms": decode.min, "max_ms": decode.max},
                    "file": p.display().to_string(), "image": [w, h],
                })
            );
        } else {
            println!(
                "decode {} ({w}×{h}) {:>9.1} ms (min {:.1}, max {:.1})",
                p.display(),
                decode.median,
                decode.min,
                decode.max
            );
        }
    }
    let tmp = tempdir()?;
    for name in a.models.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let variant = SamVariant::from_name(name)?;
        let cfg = variant.config();
        let path = tmp.join(format!("{name}.safetensors"));
        {
            let sd = Sam::random_state_dict(&cfg, 0, &device)?;
            checkpoint::save_safetensors(&sd, &path)?;
        }
        // The generated weights are not part of what is measured.
        segment_anything::memory::release_free_memory();
        reset_peak_rss();
        let load = time(a.load_runs, || Ok(Sam::load(&path, Some(&cfg), &device)?))?;
        let sam = Arc::new(Sam::load(&path, Some(&cfg), &device)?);
        let peak_load = peak_rss_mib();
        reset_peak_rss();
        std::fs::remove_file(&path).ok();
        let mut predictor = SamPredictor::new(sam.clone());
        let encoder = if a.skip_encoder {
            None
        } else {
            Some(time(a.encoder_runs, || {
                Ok(predictor.set_dynamic_image(&photo)?)
            })?)
        };
        if a.skip_encoder {
            let (h, w) = (photo.height() as usize, photo.width() as usize);
            let [gh, gw] = sam.grid_size();
            let emb = candle_core::Tensor::randn(0f32, 1.0, (1, cfg.embed_dim, gh, gw), &device)?;
            predictor.set_image_embedding(segment_anything::ImageEmbedding::for_model(
                &sam,
                emb,
                (h, w),
            )?)?;
        }
        let (w, h) = (photo.width() as f64, photo.height() as f64);
        let prompt = PromptSet::point(w * 0.5, h * 0.5);
        let predict = time(a.predict_runs, || {
            Ok(predictor.predict(&prompt, PredictOptions::multimask())?)
        })?;
        let peak = peak_rss_mib();
        if a.json {
            let j = |s: &Stats| serde_json::json!({"median_ms": s.median, "min_ms": s.min, "max_ms": s.max});
            println!(
                "{}",
                serde_json::json!({
                    "model": name, "threads": rayon_threads(),
                    "image": [photo.width(), photo.height()],
                    "load": j(&load), "encoder": encoder.as_ref().map(j), "predict": j(&predict),
                    "peak_rss_mib": peak, "peak_rss_load_mib": peak_load,
                })
            );
        } else {
            let f =
                |s: &Stats| format!("{:>9.1} ms (min {:.1}, max {:.1})", s.median, s.min, s.max);
            println!(
                "{name}: image {}×{}, {} threads",
                photo.width(),
                photo.height(),
                rayon_threads()
            );
            println!("  load (safetensors) {}", f(&load));
            if let Some(e) = &encoder {
                println!("  image encoder      {}", f(e));
            }
            println!("  predict (1 point)  {}", f(&predict));
            if let Some(p) = peak_load {
                println!("  peak memory, load  {p:>9.0} MiB");
            }
            if let Some(p) = peak {
                println!("  peak memory, model loaded + encoder + predict {p:.0} MiB");
            }
        }
    }
    std::fs::remove_dir_all(&tmp).ok();
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("sam-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    Ok(dir)
}
