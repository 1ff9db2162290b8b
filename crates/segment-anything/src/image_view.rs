//! A borrowed, validated view of an image's pixels: what the predictor, the automatic mask generator and every
//! layer above them (command line, server, Python) take as an image, checked in one place.

use std::borrow::Cow;

use crate::error::{Error, Result};

/// Channel order of an input image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    /// Red, green, blue (the model's order).
    #[default]
    Rgb,
    /// Blue, green, red (e.g. OpenCV); flipped to RGB before encoding.
    Bgr,
}

impl std::str::FromStr for ImageFormat {
    type Err = Error;

    /// `RGB` or `BGR` (any case), the official `image_format` argument.
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "RGB" => Ok(Self::Rgb),
            "BGR" => Ok(Self::Bgr),
            _ => Err(Error::arg(
                "image_format",
                format!("`{s}` is not `RGB` or `BGR`"),
            )),
        }
    }
}

/// Interleaved u8 pixels (H, W, C), row-major, with their channel order.
///
/// Made by [`ImageView::new`], which checks the size once: at least one pixel, `pixels.len() = H·W·C`, at most
/// 2³² − 1 pixels (the limit of COCO run-length counts), and at least one channel.
#[derive(Debug, Clone, Copy)]
pub struct ImageView<'a> {
    pixels: &'a [u8],
    height: usize,
    width: usize,
    channels: usize,
    format: ImageFormat,
}

impl<'a> ImageView<'a> {
    /// A view of `height × width × channels` interleaved pixels in RGB order (see [`ImageView::with_format`]).
    pub fn new(pixels: &'a [u8], height: usize, width: usize, channels: usize) -> Result<Self> {
        if height == 0 || width == 0 {
            return Err(Error::arg(
                "image",
                format!("image is empty ({width}×{height})"),
            ));
        }
        if channels == 0 {
            return Err(Error::arg("image", "image has 0 channels"));
        }
        let expected = height
            .checked_mul(width)
            .and_then(|p| p.checked_mul(channels));
        if expected != Some(pixels.len()) {
            return Err(Error::arg(
                "image",
                format!(
                    "{} bytes do not make a {width}×{height}×{channels} image",
                    pixels.len()
                ),
            ));
        }
        if (height as u64) * (width as u64) > u32::MAX as u64 {
            return Err(Error::arg(
                "image",
                format!("a {width}×{height} image has more than 2^32 - 1 pixels"),
            ));
        }
        Ok(Self {
            pixels,
            height,
            width,
            channels,
            format: ImageFormat::Rgb,
        })
    }

    /// The same pixels read in `format` channel order (BGR for OpenCV arrays).
    pub fn with_format(self, format: ImageFormat) -> Self {
        Self { format, ..self }
    }

    /// The interleaved pixels (H·W·C bytes).
    pub fn pixels(&self) -> &'a [u8] {
        self.pixels
    }

    /// Height H in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Width W in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// (H, W), the official `original_size`.
    pub fn size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// Channels C.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Channel order.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// The pixels in the model's channel order with `model_channels` channels: as they are for a model with C
    /// channels (BGR flipped), and for 3-channel models gray (C = 1) repeated and RGBA / BGRA (C = 4) without alpha.
    pub(crate) fn to_model_pixels(self, model_channels: usize) -> Result<Cow<'a, [u8]>> {
        let c = self.channels;
        let bgr = self.format == ImageFormat::Bgr && c >= 3;
        if c == model_channels {
            if !bgr {
                return Ok(Cow::Borrowed(self.pixels));
            }
            let mut out = self.pixels.to_vec();
            out.chunks_exact_mut(c).for_each(|p| p.swap(0, 2));
            return Ok(Cow::Owned(out));
        }
        if model_channels == 3 && (c == 1 || c == 4) {
            let out = self
                .pixels
                .chunks_exact(c)
                .flat_map(|p| match (c, bgr) {
                    (1, _) => [p[0], p[0], p[0]],
                    (_, false) => [p[0], p[1], p[2]],
                    (_, true) => [p[2], p[1], p[0]],
                })
                .collect();
            return Ok(Cow::Owned(out));
        }
        Err(Error::arg(
            "image",
            format!("image has {c} channels, the model expects {model_channels}"),
        ))
    }

    /// The pixels of the box `[x0, y0, x1, y1)` (inside the image), as a new (y1 − y0, x1 − x0, C) buffer.
    pub(crate) fn crop(&self, [x0, y0, x1, y1]: [usize; 4]) -> Vec<u8> {
        let c = self.channels;
        let mut out = Vec::with_capacity((y1 - y0) * (x1 - x0) * c);
        for y in y0..y1 {
            out.extend_from_slice(
                &self.pixels[(y * self.width + x0) * c..(y * self.width + x1) * c],
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_once() {
        let px = [0u8; 12];
        assert!(ImageView::new(&px, 2, 2, 3).is_ok());
        for (h, w, c) in [(0, 2, 3), (2, 0, 3), (2, 2, 0), (2, 2, 4), (3, 2, 3)] {
            let e = ImageView::new(&px, h, w, c).unwrap_err().to_string();
            assert!(e.contains("image"), "{e}");
        }
        assert!(ImageView::new(&px, usize::MAX, 2, 3).is_err());
    }

    #[test]
    fn channel_conversions() {
        let bgr = [1u8, 2, 3, 4, 5, 6];
        let v = ImageView::new(&bgr, 1, 2, 3)
            .unwrap()
            .with_format(ImageFormat::Bgr);
        assert_eq!(&*v.to_model_pixels(3).unwrap(), &[3, 2, 1, 6, 5, 4]);
        let gray = [7u8, 9];
        let g = ImageView::new(&gray, 1, 2, 1).unwrap();
        assert_eq!(&*g.to_model_pixels(3).unwrap(), &[7, 7, 7, 9, 9, 9]);
        assert_eq!(&*g.to_model_pixels(1).unwrap(), &[7, 9]);
        let rgba = [1u8, 2, 3, 255];
        let a = ImageView::new(&rgba, 1, 1, 4).unwrap();
        assert_eq!(&*a.to_model_pixels(3).unwrap(), &[1, 2, 3]);
        assert!(g
            .to_model_pixels(4)
            .unwrap_err()
            .to_string()
            .contains("1 channels"));
        assert_eq!("bgr".parse::<ImageFormat>().unwrap(), ImageFormat::Bgr);
        assert!("hsv".parse::<ImageFormat>().is_err());
    }

    #[test]
    fn crop_copies_rows() {
        let px: Vec<u8> = (0..12).collect();
        let v = ImageView::new(&px, 3, 4, 1).unwrap();
        assert_eq!(v.crop([1, 1, 3, 3]), vec![5, 6, 9, 10]);
    }
}
