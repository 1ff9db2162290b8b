//! `sam`: the Segment Anything command line, a thin layer over the `segment-anything` library.

mod auto;
mod bench;
mod npy;
mod overlay;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, Parser, Subcommand};
use segment_anything::rle::BinaryMask;
use segment_anything::{checkpoint, download, ImageLoadOptions, Sam, SamConfig, SamVariant};
use segment_anything::{ImageEmbedding, PredictOptions, PromptSet, SamPredictor};

/// Segment Anything (SAM) in Rust: masks from points, boxes and mask prompts.
#[derive(Parser)]
#[command(name = "sam", version, about)]
struct Cli {
    /// Print nothing but errors (and the JSON result) on the terminal.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// More detail on stderr (timings, paths).
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Segment an image from point, box and mask prompts; writes mask PNGs and an overlay, prints JSON.
    Segment(SegmentArgs),
    /// Compute and save an image embedding (`.npy`: plain D×H×W f32 array; otherwise the library's file format).
    Embed(EmbedArgs),
    /// List the official models, their checkpoints and whether they are cached.
    Models,
    /// Download an official checkpoint into the cache (resumable, SHA-256 verified).
    Download {
        /// vit_b, vit_l or vit_h.
        variant: String,
    },
    /// Time model load, the image encoder and predict with random weights (no download needed).
    Bench(bench::BenchArgs),
    /// Segment everything: the automatic mask generator over a point grid (masks as PNGs + metadata.csv, or COCO RLE JSON).
    Auto(auto::AutoArgs),
    /// Convert a PyTorch `.pth` checkpoint to `.safetensors`.
    Convert {
        /// Input `.pth` file.
        input: PathBuf,
        /// Output `.safetensors` file.
        output: PathBuf,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// Model variant: vit_b, vit_l or vit_h (default vit_b; with --checkpoint, default: detected from the file).
    #[arg(long)]
    model: Option<String>,
    /// Checkpoint file (.pth or .safetensors); without it the cached official checkpoint is used (downloaded on first use).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Model configuration JSON (the library's SamConfig), for checkpoints of a custom architecture.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// How image files are read (shared by every command that takes images).
#[derive(Args, Clone)]
struct ImageReadArgs {
    /// Ignore the EXIF orientation tag (by default the image is rotated/flipped as the tag says, like
    /// `cv2.imread` and Hugging Face's `load_image`; prompts are in the frame of the oriented picture).
    #[arg(long)]
    ignore_exif: bool,
    /// Refuse images with more pixels than this (decompression-bomb guard); 0 for no limit.
    #[arg(long, value_name = "N", default_value_t = segment_anything::image_io::DEFAULT_MAX_PIXELS)]
    max_image_pixels: u64,
}

impl ImageReadArgs {
    fn options(&self) -> ImageLoadOptions {
        ImageLoadOptions {
            apply_exif_orientation: !self.ignore_exif,
            max_pixels: (self.max_image_pixels > 0).then_some(self.max_image_pixels),
        }
    }
}

#[derive(Args)]
struct SegmentArgs {
    /// Input image (JPEG, PNG, WebP, TIFF, BMP or GIF).
    #[arg(long)]
    image: PathBuf,
    #[command(flatten)]
    read: ImageReadArgs,
    #[command(flatten)]
    model: ModelArgs,
    /// A point `X,Y` or `X,Y,LABEL` in image pixels (LABEL 1 = foreground, default; 0 = background). Repeatable.
    #[arg(long = "point", value_name = "X,Y[,LABEL]", allow_hyphen_values = true)]
    points: Vec<String>,
    /// A box `X0,Y0,X1,Y1` in image pixels. Repeatable: several boxes form one prompt set.
    #[arg(long = "box", value_name = "X0,Y0,X1,Y1")]
    boxes: Vec<String>,
    /// Mask prompt: a `.npy` f32 array of low-res logits (H′×W′, 1×H′×W′ or K×H′×W′ with the first used),
    /// e.g. `lowres_logits.npy` from a previous run.
    #[arg(long)]
    mask_input: Option<PathBuf>,
    /// Use a stored embedding (from `sam embed`) instead of running the image encoder.
    #[arg(long)]
    embedding: Option<PathBuf>,
    /// Return three candidate masks instead of one.
    #[arg(long)]
    multimask: bool,
    /// Output directory (created if missing).
    #[arg(long, default_value = "sam-output")]
    output_dir: PathBuf,
    /// Also write `logits.npy` (K×H×W upscaled logits) and `lowres_logits.npy` (K×H′×W′).
    #[arg(long)]
    save_logits: bool,
}

#[derive(Args)]
struct EmbedArgs {
    /// Input image (JPEG, PNG, WebP, TIFF, BMP or GIF).
    #[arg(long)]
    image: PathBuf,
    #[command(flatten)]
    read: ImageReadArgs,
    /// Output file: `.npy` for a plain array, anything else for the library's embedding file.
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

struct Log {
    quiet: bool,
    verbose: bool,
}

impl Log {
    fn info(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }
    fn debug(&self, msg: impl AsRef<str>) {
        if self.verbose && !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let log = Log {
        quiet: cli.quiet,
        verbose: cli.verbose,
    };
    let result = match cli.command {
        Command::Segment(a) => segment(a, &log),
        Command::Embed(a) => embed(a, &log),
        Command::Models => models(),
        Command::Download { variant } => download_cmd(&variant, &log),
        Command::Convert { input, output } => convert(&input, &output, &log),
        Command::Bench(a) => bench::run(a),
        Command::Auto(a) => auto::run(a, &log),
    };
    if let Err(e) = result {
        let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("error: {}", chain.join(": "));
        std::process::exit(1);
    }
}

fn load_model(args: &ModelArgs, log: &Log) -> Result<Sam> {
    let device = Device::Cpu;
    let config = match (&args.config, &args.model) {
        (Some(path), _) => Some(SamConfig::from_json_file(path)?),
        (None, Some(name)) => Some(SamVariant::from_name(name)?.config()),
        (None, None) => None,
    };
    let path = match &args.checkpoint {
        Some(p) => p.clone(),
        None => {
            let variant = match &config {
                Some(c) => c.variant().ok_or_else(|| {
                    anyhow!("the config `{}` is not an official model: pass its weights with --checkpoint", c.name)
                })?,
                None => SamVariant::VitB,
            };
            download::ensure_checkpoint(
                variant,
                &download::DownloadOptions {
                    progress: !log.quiet,
                    ..Default::default()
                },
            )?
        }
    };
    let t = std::time::Instant::now();
    let sam = Sam::load(&path, config.as_ref(), &device)?;
    log.debug(format!(
        "loaded {} ({}) in {:.2?}",
        path.display(),
        sam.config().name,
        t.elapsed()
    ));
    Ok(sam)
}

fn parse_numbers<const N: usize>(text: &str, what: &str) -> Result<[f64; N]> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if parts.len() != N {
        bail!("bad {what} `{text}`: expected {N} comma-separated numbers");
    }
    let mut out = [0.0; N];
    for (o, p) in out.iter_mut().zip(parts) {
        *o = p
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| anyhow!("bad {what} `{text}`: `{p}` is not a finite number"))?;
    }
    Ok(out)
}

fn parse_point(text: &str) -> Result<([f64; 2], i64)> {
    let n = text.split(',').count();
    if n == 3 {
        let [x, y, l] = parse_numbers::<3>(text, "point")?;
        if l != 0.0 && l != 1.0 {
            bail!("bad point `{text}`: LABEL must be 1 (foreground) or 0 (background)");
        }
        Ok(([x, y], l as i64))
    } else {
        let [x, y] = parse_numbers::<2>(text, "point")
            .map_err(|_| anyhow!("bad point `{text}`: expected X,Y or X,Y,LABEL"))?;
        Ok(([x, y], 1))
    }
}

fn open_image(path: &Path, read: &ImageReadArgs) -> Result<image::DynamicImage> {
    Ok(segment_anything::load_image(path, &read.options())?)
}

fn segment(a: SegmentArgs, log: &Log) -> Result<()> {
    let photo = open_image(&a.image, &a.read)?;
    let (w, h) = (photo.width() as f64, photo.height() as f64);
    let mut prompt = PromptSet::default();
    for p in &a.points {
        let (xy, label) = parse_point(p)?;
        if xy[0] < 0.0 || xy[1] < 0.0 || xy[0] >= w || xy[1] >= h {
            bail!("point `{p}` is outside the image ({}×{} pixels)", w, h);
        }
        prompt.points.push(xy);
        prompt.labels.push(label);
    }
    for b in &a.boxes {
        let bx = parse_numbers::<4>(b, "box")?;
        if bx[2] < bx[0] || bx[3] < bx[1] {
            bail!("bad box `{b}`: expected X0,Y0,X1,Y1 with X1 >= X0 and Y1 >= Y0");
        }
        if bx[0] < 0.0 || bx[1] < 0.0 || bx[2] > w || bx[3] > h {
            bail!("box `{b}` is outside the image ({}×{} pixels)", w, h);
        }
        prompt.boxes.push(bx);
    }
    if let Some(path) = &a.mask_input {
        let (data, shape) = npy::read_f32(path)?;
        let (mh, mw) = match shape[..] {
            [h, w] | [_, h, w] => (h, w),
            _ => bail!(
                "{}: expected an H′×W′ or K×H′×W′ array, got shape {shape:?}",
                path.display()
            ),
        };
        let first = data[..mh * mw].to_vec();
        prompt.mask_input = Some(Tensor::from_vec(first, (1, mh, mw), &Device::Cpu)?);
    }
    if prompt.points.is_empty() && prompt.boxes.is_empty() && prompt.mask_input.is_none() {
        bail!("no prompt: give at least one --point, --box or --mask-input");
    }

    let sam = Arc::new(load_model(&a.model, log)?);
    let mut predictor = SamPredictor::new(sam.clone());
    match &a.embedding {
        Some(path) => {
            let emb = if path.extension().is_some_and(|e| e == "npy") {
                let (data, shape) = npy::read_f32(path)?;
                ImageEmbedding::for_model(
                    &sam,
                    Tensor::from_vec(data, shape, &Device::Cpu)?,
                    (h as usize, w as usize),
                )
                .with_context(|| format!("{}", path.display()))?
            } else {
                ImageEmbedding::load(path)?
            };
            if emb.original_size != (h as usize, w as usize) {
                bail!(
                    "{}: the embedding is for a {}×{} image, but {} is {}×{}",
                    path.display(),
                    emb.original_size.1,
                    emb.original_size.0,
                    a.image.display(),
                    w,
                    h
                );
            }
            predictor
                .set_image_embedding(emb)
                .with_context(|| format!("{}", path.display()))?;
        }
        None => {
            encode_image(&mut predictor, &photo, &a.image, log)?;
        }
    }
    let t = std::time::Instant::now();
    let options = PredictOptions {
        multimask_output: a.multimask,
        return_logits: a.save_logits,
    };
    let prediction = predictor.predict(&prompt, options)?;
    log.debug(format!(
        "prompt encoder + decoder + upscaling: {:.2?}",
        t.elapsed()
    ));
    let (k, mh, mw) = prediction.masks.dims3()?;
    let masks = prediction.masks.flatten_all()?.to_vec1::<u8>()?;
    let scores = prediction.scores.to_vec1::<f32>()?;

    std::fs::create_dir_all(&a.output_dir)
        .with_context(|| format!("cannot create {}", a.output_dir.display()))?;
    let mut records = Vec::new();
    let mut binaries = Vec::new();
    for i in 0..k {
        let plane = &masks[i * mh * mw..(i + 1) * mh * mw];
        let mask = BinaryMask::new(mh, mw, plane.iter().map(|&v| v != 0).collect())?;
        let file = format!("mask_{i}.png");
        let img = image::GrayImage::from_raw(mw as u32, mh as u32, mask.to_bytes(255))
            .context("mask size")?;
        overlay::save_png(
            &image::DynamicImage::ImageLuma8(img),
            &a.output_dir.join(&file),
        )?;
        // (x, y, w, h) with w, h the number of columns / rows covered; null for an empty mask.
        let bbox = mask
            .bbox_xyxy()
            .map(|[x0, y0, x1, y1]| vec![x0, y0, x1 - x0 + 1, y1 - y0 + 1]);
        records.push(serde_json::json!({
            "index": i, "score": scores[i], "area": mask.area(), "bbox": bbox, "file": file,
        }));
        binaries.push(plane.iter().map(|&v| v != 0).collect::<Vec<bool>>());
    }
    let over = overlay::draw(&photo, &binaries, &prompt);
    overlay::save_png(&over, &a.output_dir.join("overlay.png"))?;
    if let Some(logits) = &prediction.mask_logits {
        let up = logits.flatten_all()?.to_vec1::<f32>()?;
        npy::write_f32(&a.output_dir.join("logits.npy"), &up, &[k, mh, mw])?;
        let (_, lh, lw) = prediction.low_res_logits.dims3()?;
        npy::write_f32(
            &a.output_dir.join("lowres_logits.npy"),
            &prediction.low_res_logits.flatten_all()?.to_vec1::<f32>()?,
            &[k, lh, lw],
        )?;
    }
    let doc = serde_json::json!({
        "image": a.image.display().to_string(),
        "width": w as usize, "height": h as usize,
        "model": sam.config().name,
        "output_dir": a.output_dir.display().to_string(),
        "masks": records,
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    log.info(format!(
        "wrote {k} mask(s) and overlay.png to {}",
        a.output_dir.display()
    ));
    Ok(())
}

/// Run the image encoder with a spinner on stderr (unless `--quiet`).
fn encode_image(
    predictor: &mut SamPredictor,
    photo: &image::DynamicImage,
    path: &Path,
    log: &Log,
) -> Result<()> {
    let t = std::time::Instant::now();
    let name = predictor.model().config().name.clone();
    let spinner = (!log.quiet).then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .expect("valid template"),
        );
        pb.set_message(format!("encoding {} with {name}", path.display()));
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        pb
    });
    let result = predictor.set_dynamic_image(photo);
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    result?;
    log.info(format!(
        "encoded {} with {name} in {:.2?}",
        path.display(),
        t.elapsed()
    ));
    Ok(())
}

fn embed(a: EmbedArgs, log: &Log) -> Result<()> {
    let photo = open_image(&a.image, &a.read)?;
    let sam = Arc::new(load_model(&a.model, log)?);
    let mut predictor = SamPredictor::new(sam.clone());
    encode_image(&mut predictor, &photo, &a.image, log)?;
    let emb = predictor.image_embedding()?;
    if a.output.extension().is_some_and(|e| e == "npy") {
        let dims = emb.embedding.dims()[1..].to_vec();
        npy::write_f32(
            &a.output,
            &emb.embedding.flatten_all()?.to_vec1::<f32>()?,
            &dims,
        )?;
    } else {
        emb.save(&a.output)?;
    }
    log.info(format!("wrote {}", a.output.display()));
    Ok(())
}

fn models() -> Result<()> {
    let cache = download::cache_dir()?;
    println!("cache directory: {}", cache.display());
    println!(
        "{:<7} {:>12} {:<10} {:<64}  url",
        "model", "size", "cached", "sha256"
    );
    for v in SamVariant::ALL {
        let cached = download::cached_checkpoint(v)?;
        println!(
            "{:<7} {:>9.1} MB {:<10} {:<64}  {}",
            v.name(),
            v.checkpoint_size() as f64 / 1e6,
            if cached.is_some() { "yes" } else { "no" },
            v.checkpoint_sha256(),
            v.checkpoint_url()
        );
        if let Some(p) = cached {
            println!("        at {}", p.display());
        }
    }
    Ok(())
}

fn download_cmd(variant: &str, log: &Log) -> Result<()> {
    let v = SamVariant::from_name(variant)?;
    let path = download::download_checkpoint(
        v,
        &download::DownloadOptions {
            progress: !log.quiet,
            ..Default::default()
        },
    )?;
    log.info(format!("{} is at {}", v, path.display()));
    println!("{}", path.display());
    Ok(())
}

fn convert(input: &Path, output: &Path, log: &Log) -> Result<()> {
    let n = checkpoint::convert_pth_to_safetensors(input, output)?;
    log.info(format!("wrote {n} tensors to {}", output.display()));
    Ok(())
}
