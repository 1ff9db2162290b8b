//! The overlay image: the photo with masks tinted and the prompts drawn; PNG writing.

use std::path::Path;

use anyhow::{Context, Result};
use image::{DynamicImage, Rgb, RgbImage};
use segment_anything::predictor::PromptSet;

const COLORS: [[u8; 3]; 6] = [
    [30, 144, 255],
    [255, 99, 71],
    [50, 205, 50],
    [255, 215, 0],
    [186, 85, 211],
    [0, 206, 209],
];

/// Tint each mask (50 % blend, one colour per mask), then draw boxes and points (green foreground, red background).
pub fn draw(photo: &DynamicImage, masks: &[Vec<bool>], prompt: &PromptSet) -> DynamicImage {
    let mut img: RgbImage = photo.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    for (k, mask) in masks.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
            let p = img.get_pixel_mut((i % w) as u32, (i / w) as u32);
            for (v, tint) in p.0.iter_mut().zip(c) {
                *v = ((*v as u16 + tint as u16) / 2) as u8;
            }
        }
    }
    let mut put = |x: i64, y: i64, c: [u8; 3]| {
        if x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h {
            img.put_pixel(x as u32, y as u32, Rgb(c));
        }
    };
    for b in &prompt.boxes {
        let [x0, y0, x1, y1] = b.map(|v| v.round() as i64);
        for t in 0..2 {
            for x in x0..=x1 {
                put(x, y0 + t, [255, 255, 0]);
                put(x, y1 - t, [255, 255, 0]);
            }
            for y in y0..=y1 {
                put(x0 + t, y, [255, 255, 0]);
                put(x1 - t, y, [255, 255, 0]);
            }
        }
    }
    for (p, l) in prompt.points.iter().zip(&prompt.labels) {
        let (cx, cy) = (p[0].round() as i64, p[1].round() as i64);
        let fill = if *l == 1 { [0, 220, 0] } else { [230, 0, 0] };
        let r = 6i64;
        for dy in -r - 1..=r + 1 {
            for dx in -r - 1..=r + 1 {
                let d2 = dx * dx + dy * dy;
                if d2 <= r * r {
                    put(cx + dx, cy + dy, fill);
                } else if d2 <= (r + 1) * (r + 1) {
                    put(cx + dx, cy + dy, [255, 255, 255]);
                }
            }
        }
    }
    DynamicImage::ImageRgb8(img)
}

/// Encode as PNG and write atomically.
pub fn save_png(img: &DynamicImage, path: &Path) -> Result<()> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    segment_anything::io::atomic_write(path, buf.get_ref())?;
    Ok(())
}
