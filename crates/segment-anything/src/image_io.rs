//! Reading image files exactly as the official pipeline's loaders do.
//!
//! The official tools read photos with Pillow (`np.array(Image.open(path).convert("RGB"))`, Hugging Face's
//! `load_image`) or OpenCV (`cv2.imread`, the official `scripts/amg.py`). Both decode JPEG with libjpeg-turbo, so
//! [`load_image`] decodes JPEG with libjpeg-turbo's decoder too (through MozJPEG, a libjpeg-turbo fork whose
//! decoder is libjpeg-turbo's, built from vendored C source): same integer IDCT, same chroma upsampling, same
//! colour conversion, so the same bytes. Lossless JPEG (SOF3), which MozJPEG's decoder does not read, goes through
//! the `jpeg-decoder` crate (lossless decoding has no rounding, so every correct decoder agrees); the JPEG strips
//! and tiles of JPEG-compressed TIFFs go through libjpeg-turbo's decoder as libtiff sends them. The other formats
//! are lossless (PNG, TIFF, BMP, GIF, lossless WebP) or fully specified (lossy WebP) and are read with the `image`
//! crate's decoders.
//!
//! What a file becomes, format by format (each rule is checked against Pillow and OpenCV by the committed
//! fixtures of `tools/reference/gen_decode_fixtures.py`):
//!
//! - The result is [`DynamicImage::ImageLuma8`] for grayscale sources and [`DynamicImage::ImageRgb8`] for
//!   everything else. Converting the grayscale result to RGB (replicating the value) gives exactly Pillow's
//!   `convert("RGB")`.
//! - Alpha is dropped, not composited (Pillow's `convert("RGB")`, OpenCV's `IMREAD_COLOR`); palette images are
//!   expanded through their palette (a transparent index keeps its palette colour).
//! - JPEG CMYK and YCCK (Adobe/Photoshop files) become RGB the way Pillow converts them: the samples are taken
//!   as Adobe-inverted CMYK and `R = K' − K'·C'/255` (rounded as Pillow rounds) with `K' = 255 − K`.
//! - 16-bit samples (PNG, TIFF) are reduced to 8 bits as `cv2.imread` reduces them: the high byte (`v >> 8`),
//!   except in colour TIFFs, which OpenCV reads through libtiff's RGBA interface and so rounds (`(v + 128) / 257`).
//!   Pillow clips 16-bit grayscale to 255 instead (a white image for most microscopy files).
//! - The EXIF orientation is applied by default ([`ImageLoadOptions::apply_exif_orientation`]), as
//!   `cv2.imread` and `transformers`' `load_image` (`ImageOps.exif_transpose`) do, so that prompts are in the
//!   frame of the picture a person sees; plain `Image.open(...).convert("RGB")` ignores it.
//! - Files larger than [`ImageLoadOptions::max_pixels`] are refused before their pixels are decoded (Pillow's
//!   decompression-bomb limit by default).
//!
//! The format is detected from the file's first bytes, never from its extension.

use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, ImageDecoder, RgbImage};

use crate::error::{Error, Result};

/// Pillow's decompression-bomb error limit (`2 × Image.MAX_IMAGE_PIXELS`): 178,956,970 pixels.
pub const DEFAULT_MAX_PIXELS: u64 = 2 * (1024 * 1024 * 1024 / 4 / 3);

/// How [`load_image`] and [`decode_image`] read a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLoadOptions {
    /// Rotate / flip the image as its EXIF orientation tag says (default `true`).
    pub apply_exif_orientation: bool,
    /// Refuse images with more pixels than this (width × height), before decoding them; `None` for no limit.
    /// Default [`DEFAULT_MAX_PIXELS`].
    pub max_pixels: Option<u64>,
}

impl Default for ImageLoadOptions {
    fn default() -> Self {
        Self {
            apply_exif_orientation: true,
            max_pixels: Some(DEFAULT_MAX_PIXELS),
        }
    }
}

/// The file formats [`load_image`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFileFormat {
    /// JPEG / JFIF / EXIF (baseline, progressive, arithmetic-coded, lossless; 8-bit samples).
    Jpeg,
    /// PNG, every colour type and bit depth.
    Png,
    /// WebP, lossy and lossless (first frame of an animation).
    WebP,
    /// TIFF, 8- and 16-bit samples.
    Tiff,
    /// Windows bitmap.
    Bmp,
    /// GIF (first frame).
    Gif,
}

impl ImageFileFormat {
    /// The format of a file from its first bytes, or `None` for anything else.
    pub fn detect(bytes: &[u8]) -> Option<Self> {
        match bytes {
            [0xFF, 0xD8, 0xFF, ..] => Some(Self::Jpeg),
            [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(Self::Png),
            [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some(Self::WebP),
            [b'I', b'I', 0x2A, 0x00, ..] | [b'M', b'M', 0x00, 0x2A, ..] => Some(Self::Tiff),
            [b'I', b'I', 0x2B, 0x00, ..] | [b'M', b'M', 0x00, 0x2B, ..] => Some(Self::Tiff),
            [b'B', b'M', ..] => Some(Self::Bmp),
            [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(Self::Gif),
            _ => None,
        }
    }

    /// The format's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
            Self::WebP => "WebP",
            Self::Tiff => "TIFF",
            Self::Bmp => "BMP",
            Self::Gif => "GIF",
        }
    }
}

/// Read an image file: gray (`Luma8`) or `Rgb8`, oriented as [`ImageLoadOptions`] says (see the module docs for
/// the exact rules). Errors name the file and the problem (missing, corrupt, truncated, unsupported, too large).
pub fn load_image(path: impl AsRef<Path>, options: &ImageLoadOptions) -> Result<DynamicImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_named(&bytes, options, &path.display().to_string())
}

/// [`load_image`] on the bytes of a file already in memory (an upload, an archive member).
pub fn decode_image(bytes: &[u8], options: &ImageLoadOptions) -> Result<DynamicImage> {
    decode_named(bytes, options, "image data")
}

fn decode_named(bytes: &[u8], options: &ImageLoadOptions, name: &str) -> Result<DynamicImage> {
    let fail = |message: String| Error::ImageFile {
        name: name.to_string(),
        message,
    };
    if bytes.is_empty() {
        return Err(fail("the file is empty".into()));
    }
    let format = ImageFileFormat::detect(bytes).ok_or_else(|| {
        fail("not an image in a supported format (JPEG, PNG, WebP, TIFF, BMP, GIF)".into())
    })?;
    let decoded = match format {
        ImageFileFormat::Jpeg => jpeg::decode(bytes, options),
        ImageFileFormat::Gif => gif::decode(bytes, options),
        _ => decode_with_image_crate(bytes, format, options),
    }
    .map_err(|message| fail(format!("{} {message}", format.name())))?;
    let (mut image, orientation) = decoded;
    if options.apply_exif_orientation {
        if let Some(o) = orientation {
            image.apply_orientation(o);
        }
    }
    Ok(image)
}

/// Gray bytes of an image as Pillow's `convert("L")` computes them: gray images as they are, colour ones with
/// ITU-R 601-2 luma in 16-bit fixed point, `(19595·R + 38470·G + 7471·B + 2¹⁵) >> 16` (the `image` crate's
/// `to_luma8` uses other weights). Alpha is ignored. Returns (H·W) bytes, row-major.
pub fn to_gray_like_pillow(image: &DynamicImage) -> Vec<u8> {
    match image {
        DynamicImage::ImageLuma8(g) => g.as_raw().clone(),
        other => other
            .to_rgb8()
            .as_raw()
            .chunks_exact(3)
            .map(|p| {
                ((19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32 + 0x8000) >> 16)
                    as u8
            })
            .collect(),
    }
}

/// Interleaved u8 pixels of `image` with `channels` channels, for a model with that many input channels: gray as
/// [`to_gray_like_pillow`], RGB, or RGBA. Returns (H·W·channels) bytes, row-major.
pub(crate) fn model_pixels(
    image: &DynamicImage,
    channels: usize,
    fallback: &str,
) -> Result<Vec<u8>> {
    match channels {
        1 => Ok(to_gray_like_pillow(image)),
        3 => Ok(image.to_rgb8().into_raw()),
        4 => Ok(image.to_rgba8().into_raw()),
        c => Err(Error::arg(
            "image",
            format!("cannot convert an image to {c} channels; use {fallback}"),
        )),
    }
}

/// Refuse an image of `width × height` pixels above the limit.
fn check_size(
    width: u64,
    height: u64,
    options: &ImageLoadOptions,
) -> std::result::Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("image has no pixels ({width}×{height})"));
    }
    let pixels = width * height;
    match options.max_pixels {
        Some(limit) if pixels > limit => Err(format!(
            "image of {width}×{height} = {pixels} pixels exceeds the limit of {limit} pixels \
             (a possible decompression bomb; raise or remove the limit to read it)"
        )),
        _ => Ok(()),
    }
}

/// PNG, WebP, TIFF and BMP through the `image` crate, reduced to gray or RGB bytes.
fn decode_with_image_crate(
    bytes: &[u8],
    format: ImageFileFormat,
    options: &ImageLoadOptions,
) -> std::result::Result<(DynamicImage, Option<Orientation>), String> {
    if format == ImageFileFormat::Tiff {
        if let Some(decoded) = jpeg_tiff::decode(bytes, options) {
            return decoded;
        }
    }
    let crate_format = match format {
        ImageFileFormat::Png => image::ImageFormat::Png,
        ImageFileFormat::WebP => image::ImageFormat::WebP,
        ImageFileFormat::Tiff => image::ImageFormat::Tiff,
        ImageFileFormat::Bmp => image::ImageFormat::Bmp,
        ImageFileFormat::Jpeg | ImageFileFormat::Gif => unreachable!("decoded elsewhere"),
    };
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), crate_format);
    let mut limits = image::Limits::no_limits();
    // The decoders' own allocations stay within what the largest allowed image needs (16-bit RGBA).
    limits.max_alloc = options
        .max_pixels
        .map(|p| p.saturating_mul(8).saturating_add(1 << 26));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(describe_image_error)?;
    let (w, h) = decoder.dimensions();
    check_size(w as u64, h as u64, options)?;
    let orientation = decoder.orientation().ok();
    let image = DynamicImage::from_decoder(decoder).map_err(describe_image_error)?;
    Ok((
        to_gray_or_rgb(image, format == ImageFileFormat::Tiff)?,
        orientation,
    ))
}

fn describe_image_error(e: image::ImageError) -> String {
    match e {
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "file is truncated (the data ends before the image does)".into()
        }
        image::ImageError::Unsupported(u) => format!("variant not supported: {u}"),
        image::ImageError::Limits(l) => format!("image too large: {l}"),
        other => format!("file is corrupt: {other}"),
    }
}

/// Gray sources stay gray; alpha is dropped; 16-bit samples are reduced as `cv2.imread` reduces them: the high
/// byte, except for colour TIFFs, which OpenCV reads through libtiff's RGBA interface and so rounds (`v / 257`).
fn to_gray_or_rgb(image: DynamicImage, tiff: bool) -> std::result::Result<DynamicImage, String> {
    let (w, h) = (image.width(), image.height());
    let reduce = |v: &[u16], step: usize, keep: usize, round: bool| -> Vec<u8> {
        v.chunks_exact(step)
            .flat_map(|p| {
                p[..keep].iter().map(move |&s| {
                    if round {
                        ((s as u32 + 128) / 257) as u8
                    } else {
                        (s >> 8) as u8
                    }
                })
            })
            .collect()
    };
    let drop_alpha = |v: &[u8], step: usize, keep: usize| -> Vec<u8> {
        v.chunks_exact(step)
            .flat_map(|p| p[..keep].to_vec())
            .collect()
    };
    let gray = |raw: Vec<u8>| {
        DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, raw).expect("w·h samples"))
    };
    let rgb = |raw: Vec<u8>| {
        DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, raw).expect("w·h·3 samples"))
    };
    Ok(match image {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) => image,
        DynamicImage::ImageLumaA8(i) => gray(drop_alpha(i.as_raw(), 2, 1)),
        DynamicImage::ImageRgba8(i) => rgb(drop_alpha(i.as_raw(), 4, 3)),
        DynamicImage::ImageLuma16(i) => gray(reduce(i.as_raw(), 1, 1, false)),
        DynamicImage::ImageLumaA16(i) => gray(reduce(i.as_raw(), 2, 1, false)),
        DynamicImage::ImageRgb16(i) => rgb(reduce(i.as_raw(), 3, 3, tiff)),
        DynamicImage::ImageRgba16(i) => rgb(reduce(i.as_raw(), 4, 3, tiff)),
        other => {
            return Err(format!(
                "variant not supported: {:?} samples (only 8- and 16-bit integer images are read)",
                other.color()
            ))
        }
    })
}

/// JPEG through libjpeg-turbo's decoder (MozJPEG), with Pillow's colour rules.
mod jpeg {
    use std::cell::Cell;
    use std::os::raw::c_int;

    use image::metadata::Orientation;
    use image::{DynamicImage, GrayImage, RgbImage};
    use mozjpeg::{ColorSpace, ColorSpaceExt, Decompress, Marker};
    use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr};

    use super::{check_size, ImageLoadOptions};

    const TRUNCATED: &str = "file is truncated (the data ends before the image does)";

    thread_local! {
        /// Set by the error manager when the data ended before the image did.
        static HIT_EOF: Cell<bool> = const { Cell::new(false) };
    }

    /// libjpeg's message for the error or warning in `cinfo`.
    ///
    /// # Safety
    /// `cinfo.err` must point to a live error manager set up by `jpeg_std_error`.
    unsafe fn message(cinfo: &mut jpeg_common_struct) -> String {
        // SAFETY: the caller guarantees `cinfo.err` is a valid error manager.
        let err = unsafe { &*cinfo.err };
        let mut buffer = [0u8; 80];
        if let Some(format) = err.format_message {
            type Writing = unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8);
            // SAFETY: the binding declares the buffer argument `&[u8; 80]`, but libjpeg's `format_message` writes
            // into it; both are one data pointer in the C ABI, so the function is called as taking `*mut u8`.
            let format: Writing = unsafe { std::mem::transmute(format) };
            // SAFETY: `format_message` writes at most JMSG_LENGTH_MAX = 80 bytes, the size of `buffer`.
            unsafe { format(cinfo, buffer.as_mut_ptr()) };
        }
        let text = buffer.split(|&c| c == 0).next().unwrap_or_default();
        String::from_utf8_lossy(text).into_owned()
    }

    /// libjpeg's fatal-error hook: unwinds with the message (caught in [`decode`]).
    ///
    /// # Safety
    /// Called by libjpeg only, with the `cinfo` whose error manager is this one.
    unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
        // SAFETY: libjpeg calls this with its own `cinfo`, whose `err` is our manager.
        let text = unsafe { message(cinfo) };
        std::panic::resume_unwind(Box::new(text));
    }

    /// libjpeg's warning hook: records premature end of data, ignores the rest (as Pillow does).
    ///
    /// # Safety
    /// Called by libjpeg only, with the `cinfo` whose error manager is this one.
    unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
        // SAFETY: libjpeg calls this with its own `cinfo`, whose `err` is our manager.
        let err = unsafe { &mut *cinfo.err };
        if level < 0 {
            err.num_warnings += 1;
            if err.msg_code == mozjpeg_sys::JWRN_JPEG_EOF as c_int {
                HIT_EOF.with(|f| f.set(true));
            }
        }
    }

    fn error_manager() -> jpeg_error_mgr {
        // SAFETY: an all-zero `jpeg_error_mgr` (null pointers, `None` hooks, zero counters) is a valid value,
        // and `jpeg_std_error` then fills in every field.
        let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
        // SAFETY: `err` is a valid, exclusively borrowed error manager for the duration of the call.
        unsafe { mozjpeg_sys::jpeg_std_error(&mut err) };
        err.error_exit = Some(error_exit);
        err.emit_message = Some(emit_message);
        err
    }

    enum Pixels {
        Gray(Vec<u8>),
        Rgb(Vec<u8>),
        Cmyk(Vec<u8>),
    }

    type Decoded = (usize, usize, Pixels, Option<Orientation>);

    pub(super) fn decode(
        bytes: &[u8],
        options: &ImageLoadOptions,
    ) -> std::result::Result<(DynamicImage, Option<Orientation>), String> {
        if frame_type(bytes) == Some(0xC3) {
            return decode_lossless(bytes, options);
        }
        HIT_EOF.with(|f| f.set(false));
        let run = || -> std::result::Result<Decoded, String> {
            let d = Decompress::with_err(error_manager())
                .with_markers(&[Marker::APP(1)])
                .from_mem(bytes)
                .map_err(|e| format!("file is corrupt: {e}"))?;
            let (w, h) = d.size();
            check_size(w as u64, h as u64, options)?;
            let orientation = d
                .markers()
                .find(|m| m.marker == Marker::APP(1) && m.data.starts_with(b"Exif\0\0"))
                .and_then(|m| Orientation::from_exif_chunk(&m.data[6..]));
            let space = d.color_space();
            let read = |started: std::io::Result<mozjpeg::decompress::DecompressStarted<&[u8]>>| {
                let mut s = started.map_err(|e| format!("file is corrupt: {e}"))?;
                let row = s.width() * s.color_space().num_components();
                let mut px = vec![0u8; row * s.height()];
                // A few rows at a time, so that a truncated file stops here rather than after libjpeg has
                // filled every remaining row of a large image.
                for rows in px.chunks_mut(row * 16) {
                    s.read_scanlines_into(rows)
                        .map_err(|_| TRUNCATED.to_string())?;
                    if HIT_EOF.with(|f| f.get()) {
                        return Err(TRUNCATED.to_string());
                    }
                }
                s.finish().map_err(|e| format!("file is corrupt: {e}"))?;
                Ok::<_, String>(px)
            };
            let pixels = match space {
                ColorSpace::JCS_GRAYSCALE => Pixels::Gray(read(d.grayscale())?),
                ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
                    Pixels::Cmyk(read(d.to_colorspace(ColorSpace::JCS_CMYK))?)
                }
                _ => Pixels::Rgb(read(d.rgb())?),
            };
            Ok((w, h, pixels, orientation))
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run));
        let (w, h, pixels, orientation) = match outcome {
            Ok(result) => result?,
            Err(payload) => {
                let text = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "decoder failure".into());
                return Err(classify(&text));
            }
        };
        if HIT_EOF.with(|f| f.get()) {
            return Err(TRUNCATED.into());
        }
        let (w32, h32) = (w as u32, h as u32);
        let image = match pixels {
            Pixels::Gray(px) => {
                DynamicImage::ImageLuma8(GrayImage::from_raw(w32, h32, px).ok_or("short image")?)
            }
            Pixels::Rgb(px) => {
                DynamicImage::ImageRgb8(RgbImage::from_raw(w32, h32, px).ok_or("short image")?)
            }
            Pixels::Cmyk(px) => DynamicImage::ImageRgb8(
                RgbImage::from_raw(w32, h32, cmyk_to_rgb(&px)).ok_or("short image")?,
            ),
        };
        Ok((image, orientation))
    }

    /// The start-of-frame marker (`0xC0`…`0xCF`, except DHT, JPG and DAC) of a JPEG stream, from its headers.
    fn frame_type(bytes: &[u8]) -> Option<u8> {
        let mut i = 2;
        while i + 4 <= bytes.len() {
            if bytes[i] != 0xFF {
                return None;
            }
            let marker = bytes[i + 1];
            match marker {
                0xFF => i += 1, // fill byte
                0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => return Some(marker),
                0xD8 | 0xD0..=0xD7 | 0x01 => i += 2,
                0xDA | 0xD9 => return None,
                _ => i += 2 + u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize,
            }
        }
        None
    }

    /// Lossless (SOF3) JPEG, 8-bit samples.
    fn decode_lossless(
        bytes: &[u8],
        options: &ImageLoadOptions,
    ) -> std::result::Result<(DynamicImage, Option<Orientation>), String> {
        let mut d = jpeg_decoder::Decoder::new(bytes);
        d.read_info().map_err(describe_lossless)?;
        let info = d.info().ok_or("file is corrupt: no frame header")?;
        check_size(info.width as u64, info.height as u64, options)?;
        let orientation = d
            .exif_data()
            .and_then(|e| Orientation::from_exif_chunk(e.strip_prefix(b"Exif\0\0").unwrap_or(e)));
        let px = d.decode().map_err(describe_lossless)?;
        let (w, h) = (info.width as u32, info.height as u32);
        let image = match info.pixel_format {
            jpeg_decoder::PixelFormat::L8 => DynamicImage::ImageLuma8(GrayImage::from_raw(w, h, px).ok_or(TRUNCATED)?),
            jpeg_decoder::PixelFormat::RGB24 => DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, px).ok_or(TRUNCATED)?),
            other => return Err(format!("variant not supported: lossless JPEG with {other:?} samples (8-bit gray and RGB are read)")),
        };
        Ok((image, orientation))
    }

    fn describe_lossless(e: jpeg_decoder::Error) -> String {
        match e {
            jpeg_decoder::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                TRUNCATED.into()
            }
            jpeg_decoder::Error::Unsupported(u) => format!("variant not supported: {u:?}"),
            other => format!("file is corrupt: {other}"),
        }
    }

    /// Name the kind of failure in libjpeg's message.
    fn classify(text: &str) -> String {
        if text.contains("precision")
            || text.contains("Unsupported")
            || text.contains("not supported")
        {
            format!("variant not supported: {text}")
        } else {
            format!("file is corrupt: {text}")
        }
    }

    /// `(a·b + 128 + ((a·b + 128) >> 8)) >> 8`: a·b/255 rounded, as Pillow computes it.
    fn mul_div_255(a: u32, b: u32) -> u32 {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    }

    /// libjpeg's CMYK samples (Adobe-inverted, as Photoshop writes them) to RGB exactly as Pillow's
    /// `Image.open(...).convert("RGB")` does: Pillow stores `255 − s` ("CMYK;I") and converts with
    /// `R = (255 − K) − (255 − K)·C/255`.
    pub(super) fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
        for p in cmyk.chunks_exact(4) {
            let nk = p[3] as u32; // 255 − (255 − k)
            for &c in &p[..3] {
                let inverted = 255 - c as u32;
                out.push(nk.saturating_sub(mul_div_255(inverted, nk)).min(255) as u8);
            }
        }
        out
    }
}

/// JPEG-compressed TIFF (compression 7): each strip or tile is a JPEG stream (after the shared `JPEGTables`),
/// decoded by libjpeg-turbo's decoder as libtiff (and so Pillow) decodes it, then placed in the image.
mod jpeg_tiff {
    use std::io::Cursor;

    use image::metadata::Orientation;
    use image::{DynamicImage, GrayImage, RgbImage};
    use tiff::decoder::{ChunkType, Decoder};
    use tiff::tags::Tag;

    use super::{check_size, ImageLoadOptions};

    type Decoded = std::result::Result<(DynamicImage, Option<Orientation>), String>;

    /// `None` when the file is not a JPEG-compressed TIFF (or is not a TIFF this path reads; the general path
    /// then reports the problem).
    pub(super) fn decode(bytes: &[u8], options: &ImageLoadOptions) -> Option<Decoded> {
        let mut d = Decoder::new(Cursor::new(bytes)).ok()?;
        let compression = d.find_tag(Tag::Compression).ok()??.into_u16().ok()?;
        if compression != 7 {
            return None;
        }
        Some(decode_chunks(&mut d, bytes, options))
    }

    fn tag_u64s(d: &mut Decoder<Cursor<&[u8]>>, tag: Tag) -> std::result::Result<Vec<u64>, String> {
        d.find_tag(tag)
            .map_err(|e| format!("file is corrupt: {e}"))?
            .ok_or_else(|| format!("file is corrupt: no {tag:?} tag"))?
            .into_u64_vec()
            .map_err(|e| format!("file is corrupt: {tag:?}: {e}"))
    }

    fn decode_chunks(
        d: &mut Decoder<Cursor<&[u8]>>,
        bytes: &[u8],
        options: &ImageLoadOptions,
    ) -> Decoded {
        let (w, h) = d
            .dimensions()
            .map_err(|e| format!("file is corrupt: {e}"))?;
        check_size(w as u64, h as u64, options)?;
        let planar = d
            .find_tag(Tag::PlanarConfiguration)
            .ok()
            .flatten()
            .and_then(|v| v.into_u16().ok());
        if planar.unwrap_or(1) != 1 {
            return Err(
                "variant not supported: JPEG compression with separate colour planes".into(),
            );
        }
        let (offsets, counts) = match d.get_chunk_type() {
            ChunkType::Strip => (
                tag_u64s(d, Tag::StripOffsets)?,
                tag_u64s(d, Tag::StripByteCounts)?,
            ),
            ChunkType::Tile => (
                tag_u64s(d, Tag::TileOffsets)?,
                tag_u64s(d, Tag::TileByteCounts)?,
            ),
        };
        let (cw, ch) = d.chunk_dimensions();
        let (cw, ch) = (cw as usize, ch as usize);
        let across = (w as usize).div_ceil(cw.max(1));
        let tables = d
            .find_tag(Tag::JPEGTables)
            .ok()
            .flatten()
            .and_then(|v| v.into_u8_vec().ok());
        let orientation = d
            .find_tag(Tag::Orientation)
            .ok()
            .flatten()
            .and_then(|v| v.into_u16().ok())
            .and_then(|o| Orientation::from_exif(o as u8));
        let (w, h) = (w as usize, h as usize);
        let mut channels = 0;
        let mut out = Vec::new();
        let whole = ImageLoadOptions {
            apply_exif_orientation: false,
            max_pixels: None,
        };
        for (i, (&off, &len)) in offsets.iter().zip(&counts).enumerate() {
            let chunk = usize::try_from(off)
                .ok()
                .zip(usize::try_from(len).ok())
                .and_then(|(o, l)| bytes.get(o..o.checked_add(l)?))
                .ok_or_else(|| format!("file is truncated: chunk {i} lies outside the file"))?;
            let stream = match &tables {
                // The tables are a JPEG stream of their own (SOI … EOI); the chunk starts with SOI again.
                Some(t) if t.len() >= 4 && chunk.len() >= 2 => {
                    [&t[..t.len() - 2], &chunk[2..]].concat()
                }
                _ => chunk.to_vec(),
            };
            let (img, _) =
                super::jpeg::decode(&stream, &whole).map_err(|m| format!("chunk {i}: {m}"))?;
            let (jw, jh) = (img.width() as usize, img.height() as usize);
            let (img_c, px) = match img {
                DynamicImage::ImageLuma8(g) => (1, g.into_raw()),
                DynamicImage::ImageRgb8(c) => (3, c.into_raw()),
                other => {
                    return Err(format!(
                        "variant not supported: chunk {i} decodes to {:?}",
                        other.color()
                    ))
                }
            };
            if channels == 0 {
                channels = img_c;
                out = vec![0u8; w * h * channels];
            } else if channels != img_c {
                return Err(format!(
                    "file is corrupt: chunk {i} has {img_c} channels, not {channels}"
                ));
            }
            let (x0, y0) = ((i % across) * cw, (i / across) * ch);
            let rows = jh.min(ch).min(h.saturating_sub(y0));
            let cols = jw.min(cw).min(w.saturating_sub(x0));
            for r in 0..rows {
                let src = &px[r * jw * channels..(r * jw + cols) * channels];
                let dst = ((y0 + r) * w + x0) * channels;
                out[dst..dst + cols * channels].copy_from_slice(src);
            }
        }
        let (w32, h32) = (w as u32, h as u32);
        let image = match channels {
            1 => {
                DynamicImage::ImageLuma8(GrayImage::from_raw(w32, h32, out).ok_or("no image data")?)
            }
            3 => DynamicImage::ImageRgb8(RgbImage::from_raw(w32, h32, out).ok_or("no image data")?),
            _ => return Err("file is corrupt: no image data".into()),
        };
        Ok((image, orientation))
    }
}

/// GIF's first frame, through its palette, placed on the logical screen as Pillow places it.
mod gif {
    use image::metadata::Orientation;
    use image::{DynamicImage, RgbImage};

    use super::{check_size, ImageLoadOptions};

    pub(super) fn decode(
        bytes: &[u8],
        options: &ImageLoadOptions,
    ) -> std::result::Result<(DynamicImage, Option<Orientation>), String> {
        let mut opts = ::gif::DecodeOptions::new();
        opts.set_color_output(::gif::ColorOutput::Indexed);
        let mut decoder = opts.read_info(bytes).map_err(describe)?;
        let (sw, sh) = (decoder.width() as usize, decoder.height() as usize);
        check_size(sw as u64, sh as u64, options)?;
        let global = decoder.global_palette().map(<[u8]>::to_vec);
        let frame = decoder
            .read_next_frame()
            .map_err(describe)?
            .ok_or_else(|| "file is corrupt: no image frame".to_string())?;
        let palette = frame.palette.clone().or(global);
        // Pillow fills the screen with the transparent index (else 0), then draws the frame on it.
        let fill = frame.transparent.unwrap_or(0);
        let mut indices = vec![fill; sw * sh];
        let (fx, fy, fw, fh) = (
            frame.left as usize,
            frame.top as usize,
            frame.width as usize,
            frame.height as usize,
        );
        for y in 0..fh {
            let sy = fy + y;
            if sy >= sh {
                break;
            }
            for x in 0..fw {
                let sx = fx + x;
                if sx < sw {
                    indices[sy * sw + sx] = frame.buffer[y * fw + x];
                }
            }
        }
        let mut rgb = Vec::with_capacity(sw * sh * 3);
        for &i in &indices {
            let i = i as usize;
            match &palette {
                Some(p) if 3 * i + 2 < p.len() => rgb.extend_from_slice(&p[3 * i..3 * i + 3]),
                Some(_) => rgb.extend_from_slice(&[0, 0, 0]),
                None => rgb.extend_from_slice(&[i as u8; 3]),
            }
        }
        let image = RgbImage::from_raw(sw as u32, sh as u32, rgb).ok_or("short image")?;
        Ok((DynamicImage::ImageRgb8(image), None))
    }

    fn describe(e: ::gif::DecodingError) -> String {
        match e {
            ::gif::DecodingError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                "file is truncated (the data ends before the image does)".into()
            }
            other => format!("file is corrupt: {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_detected_from_content() {
        assert_eq!(
            ImageFileFormat::detect(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(ImageFileFormat::Jpeg)
        );
        assert_eq!(
            ImageFileFormat::detect(b"GIF89a...."),
            Some(ImageFileFormat::Gif)
        );
        assert_eq!(
            ImageFileFormat::detect(b"RIFF\0\0\0\0WEBPVP8 "),
            Some(ImageFileFormat::WebP)
        );
        assert_eq!(ImageFileFormat::detect(b"hello"), None);
    }

    #[test]
    fn pixel_limit_is_checked_before_decoding() {
        let opts = ImageLoadOptions {
            max_pixels: Some(99),
            ..Default::default()
        };
        assert!(check_size(10, 10, &opts)
            .unwrap_err()
            .contains("exceeds the limit of 99"));
        assert!(check_size(9, 11, &opts).is_ok());
        assert!(check_size(0, 11, &opts).is_err());
    }
}
