//! Run-length encodings of binary masks, as the official automatic mask generator and pycocotools use them.
//!
//! * [`Rle`]: the *uncompressed* RLE `{"size": [h, w], "counts": [...]}` of `segment_anything.utils.amg`
//!   (`mask_to_rle_pytorch` / `rle_to_mask`): pixels in column-major (Fortran) order, alternating run lengths that
//!   always start with a run of zeros (`counts[0] == 0` when the first pixel is set).
//! * [`CocoRle`]: the *compressed* COCO RLE `{"size": [h, w], "counts": "..."}` of pycocotools, whose string is
//!   byte-identical to `pycocotools.mask.frPyObjects(uncompressed, h, w)["counts"]` (maskApi.c `rleToString`:
//!   LEB128-like, 5 bits per character plus a continuation bit, characters `'0'..='o'`, each count from the fourth
//!   on stored as the difference to the count two places before it).
//! * [`BinaryMask`]: a row-major boolean mask.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A row-major (C order) binary mask of `height × width` pixels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryMask {
    /// Number of rows.
    pub height: usize,
    /// Number of columns.
    pub width: usize,
    /// `height * width` pixels, row by row.
    pub data: Vec<bool>,
}

impl BinaryMask {
    /// A mask from row-major pixels; errors if `data.len() != height * width`.
    pub fn new(height: usize, width: usize, data: Vec<bool>) -> Result<Self> {
        if data.len() != height * width {
            return Err(Error::arg(
                "mask",
                format!("{} pixels do not make a {width}×{height} mask", data.len()),
            ));
        }
        Ok(Self {
            height,
            width,
            data,
        })
    }

    /// The pixel at row `y`, column `x`.
    pub fn get(&self, y: usize, x: usize) -> bool {
        self.data[y * self.width + x]
    }

    /// Number of set pixels.
    pub fn area(&self) -> u64 {
        self.data.iter().filter(|&&v| v).count() as u64
    }

    /// Inclusive bounding box `[x0, y0, x1, y1]` of the set pixels (`x1`/`y1` are the last set column/row), or
    /// `None` for an empty mask (the official `batched_mask_to_box` gives `[0, 0, 0, 0]` then).
    pub fn bbox_xyxy(&self) -> Option<[u32; 4]> {
        let bytes: Vec<u8> = self.data.iter().map(|&v| u8::from(v)).collect();
        mask_bbox_xyxy(&bytes, self.height, self.width)
    }

    /// Pixels as bytes, `0` or `value` (e.g. 255 for an 8-bit PNG).
    pub fn to_bytes(&self, value: u8) -> Vec<u8> {
        self.data
            .iter()
            .map(|&v| if v { value } else { 0 })
            .collect()
    }

    /// The uncompressed RLE of this mask.
    pub fn to_rle(&self) -> Result<Rle> {
        Rle::from_mask(&self.data, self.height, self.width)
    }
}

/// Uncompressed RLE: `size = [h, w]`, `counts` = alternating run lengths over the pixels in column-major order,
/// starting with a run of zeros (possibly empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rle {
    /// `[height, width]`.
    pub size: [usize; 2],
    /// Run lengths: zeros, ones, zeros, ...
    pub counts: Vec<u32>,
}

/// Compressed COCO RLE, as pycocotools writes it (the counts string decoded as UTF-8, as the official
/// `coco_encode_rle` does so that it can be serialised to JSON).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CocoRle {
    /// `[height, width]`.
    pub size: [usize; 2],
    /// The pycocotools counts string.
    pub counts: String,
}

fn check_size(height: usize, width: usize) -> Result<usize> {
    let n = height
        .checked_mul(width)
        .filter(|&n| n <= u32::MAX as usize);
    n.ok_or_else(|| {
        Error::arg(
            "size",
            format!(
                "a {width}×{height} mask has more than 2^32 - 1 pixels (RLE counts are 32-bit)"
            ),
        )
    })
}

impl Rle {
    /// Mask height.
    pub fn height(&self) -> usize {
        self.size[0]
    }

    /// Mask width.
    pub fn width(&self) -> usize {
        self.size[1]
    }

    /// Encode a row-major boolean mask (the official `mask_to_rle_pytorch` for one mask).
    pub fn from_mask(mask: &[bool], height: usize, width: usize) -> Result<Self> {
        let bytes: Vec<u8> = mask.iter().map(|&v| u8::from(v)).collect();
        Self::from_mask_u8(&bytes, height, width)
    }

    /// Encode a row-major mask given as bytes (any non-zero byte is a set pixel).
    pub fn from_mask_u8(mask: &[u8], height: usize, width: usize) -> Result<Self> {
        check_size(height, width)?;
        if mask.len() != height * width {
            return Err(Error::arg(
                "mask",
                format!("{} pixels do not make a {width}×{height} mask", mask.len()),
            ));
        }
        if mask.iter().all(|&v| v <= 1) {
            Ok(rle_from_crop(mask, height, width, (0, 0), (height, width)))
        } else {
            let bin: Vec<u8> = mask.iter().map(|&v| u8::from(v != 0)).collect();
            Ok(rle_from_crop(&bin, height, width, (0, 0), (height, width)))
        }
    }

    /// Check that the counts cover exactly `h * w` pixels.
    pub fn validate(&self) -> Result<()> {
        let n = check_size(self.size[0], self.size[1])? as u64;
        let total: u64 = self.counts.iter().map(|&c| c as u64).sum();
        if total != n {
            return Err(Error::arg(
                "rle",
                format!(
                    "counts sum to {total}, but a {}×{} mask has {n} pixels",
                    self.size[1], self.size[0]
                ),
            ));
        }
        Ok(())
    }

    /// Decode to a row-major mask (the official `rle_to_mask`). Errors if the counts do not cover `h * w` pixels.
    pub fn to_mask(&self) -> Result<BinaryMask> {
        let bytes = self.to_mask_u8()?;
        Ok(BinaryMask {
            height: self.size[0],
            width: self.size[1],
            data: bytes.into_iter().map(|v| v != 0).collect(),
        })
    }

    /// Decode to row-major bytes 0/1.
    pub fn to_mask_u8(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let (h, w) = (self.size[0], self.size[1]);
        // Column-major fill, then a blocked transpose to row-major.
        let mut col = vec![0u8; h * w];
        let mut pos = 0usize;
        for (i, &c) in self.counts.iter().enumerate() {
            let c = c as usize;
            if i % 2 == 1 {
                col[pos..pos + c].fill(1);
            }
            pos += c;
        }
        Ok(transpose_u8(&col, w, h))
    }

    /// Number of set pixels (the official `area_from_rle`: the sum of the odd-indexed counts).
    pub fn area(&self) -> u64 {
        self.counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| c as u64)
            .sum()
    }

    /// Inclusive bounding box `[x0, y0, x1, y1]` of the set pixels, or `None` if the mask is empty.
    pub fn bbox_xyxy(&self) -> Option<[u32; 4]> {
        let h = self.size[0] as u64;
        if h == 0 {
            return None;
        }
        let (mut x0, mut y0, mut x1, mut y1) = (u64::MAX, u64::MAX, 0u64, 0u64);
        let mut pos = 0u64;
        let mut any = false;
        for (i, &c) in self.counts.iter().enumerate() {
            let c = c as u64;
            if i % 2 == 1 && c > 0 {
                any = true;
                let (start, end) = (pos, pos + c - 1);
                let (xs, ys) = (start / h, start % h);
                let (xe, ye) = (end / h, end % h);
                x0 = x0.min(xs);
                x1 = x1.max(xe);
                if xs < xe {
                    // The run covers the bottom row of column xs and the top row of column xe.
                    y0 = 0;
                    y1 = h - 1;
                } else {
                    y0 = y0.min(ys);
                    y1 = y1.max(ye);
                }
            }
            pos += c;
        }
        any.then_some([x0 as u32, y0 as u32, x1 as u32, y1 as u32])
    }

    /// The compressed COCO RLE (pycocotools `frPyObjects` of this uncompressed RLE).
    pub fn to_coco(&self) -> CocoRle {
        CocoRle {
            size: self.size,
            counts: encode_counts(&self.counts),
        }
    }
}

impl CocoRle {
    /// Compress an uncompressed RLE.
    pub fn from_rle(rle: &Rle) -> Self {
        rle.to_coco()
    }

    /// Decode the counts string (pycocotools `rleFrString`) into an uncompressed RLE; errors on a malformed string
    /// or counts that do not cover `h * w` pixels.
    pub fn to_rle(&self) -> Result<Rle> {
        let rle = Rle {
            size: self.size,
            counts: decode_counts(&self.counts)?,
        };
        rle.validate()?;
        Ok(rle)
    }

    /// Decode to a row-major mask (pycocotools `mask.decode`).
    pub fn to_mask(&self) -> Result<BinaryMask> {
        self.to_rle()?.to_mask()
    }

    /// Number of set pixels.
    pub fn area(&self) -> Result<u64> {
        Ok(self.to_rle()?.area())
    }
}

/// pycocotools `rleToString`: counts → the compressed string.
pub fn encode_counts(counts: &[u32]) -> String {
    let mut s = Vec::with_capacity(counts.len() * 2);
    for (i, &c) in counts.iter().enumerate() {
        let mut x = c as i64;
        if i > 2 {
            x -= counts[i - 2] as i64;
        }
        loop {
            let mut ch = (x & 0x1f) as u8;
            x >>= 5;
            let more = if ch & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                ch |= 0x20;
            }
            s.push(ch + 48);
            if !more {
                break;
            }
        }
    }
    // Every byte is in 48..=111, i.e. ASCII.
    String::from_utf8(s).expect("ASCII")
}

/// pycocotools `rleFrString`: the compressed string → counts. Errors on characters outside `'0'..='o'`, on a
/// truncated last value, or on a count outside `0..2^32`.
pub fn decode_counts(s: &str) -> Result<Vec<u32>> {
    let bytes = s.as_bytes();
    let mut counts: Vec<u32> = Vec::with_capacity(bytes.len());
    let mut p = 0;
    while p < bytes.len() {
        let mut x: i64 = 0;
        let mut k = 0u32;
        loop {
            let Some(&b) = bytes.get(p) else {
                return Err(Error::arg(
                    "counts",
                    "truncated COCO RLE string (the last value has its continuation bit set)",
                ));
            };
            if !(48..=111).contains(&b) {
                return Err(Error::arg(
                    "counts",
                    format!(
                        "invalid character {:?} at offset {p} of a COCO RLE string",
                        b as char
                    ),
                ));
            }
            if k >= 12 {
                return Err(Error::arg(
                    "counts",
                    format!("value too long at offset {p} of a COCO RLE string"),
                ));
            }
            let c = (b - 48) as i64;
            x |= (c & 0x1f) << (5 * k);
            let more = c & 0x20 != 0;
            p += 1;
            k += 1;
            if !more {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        let m = counts.len();
        if m > 2 {
            x += counts[m - 2] as i64;
        }
        let c = u32::try_from(x).map_err(|_| {
            Error::arg(
                "counts",
                format!("count {x} (value {m}) is outside 0..2^32 in a COCO RLE string"),
            )
        })?;
        counts.push(c);
    }
    Ok(counts)
}

/// Transpose a `rows × cols` row-major byte matrix (blocked, cache friendly).
pub(crate) fn transpose_u8(src: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    const B: usize = 32;
    let mut dst = vec![0u8; rows * cols];
    for r0 in (0..rows).step_by(B) {
        let r1 = (r0 + B).min(rows);
        for c0 in (0..cols).step_by(B) {
            let c1 = (c0 + B).min(cols);
            for r in r0..r1 {
                let row = &src[r * cols..r * cols + cols];
                for c in c0..c1 {
                    dst[c * rows + r] = row[c];
                }
            }
        }
    }
    dst
}

/// Inclusive bounding box `[x0, y0, x1, y1]` of the non-zero pixels of a row-major mask, `None` if empty.
pub(crate) fn mask_bbox_xyxy(mask: &[u8], height: usize, width: usize) -> Option<[u32; 4]> {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..height {
        let row = &mask[y * width..(y + 1) * width];
        let Some(first) = row.iter().position(|&v| v != 0) else {
            continue;
        };
        let last = row.iter().rposition(|&v| v != 0).unwrap_or(first);
        if y0 == usize::MAX {
            y0 = y;
        }
        y1 = y;
        x0 = x0.min(first);
        x1 = x1.max(last);
    }
    (y0 != usize::MAX).then_some([x0 as u32, y0 as u32, x1 as u32, y1 as u32])
}

/// The uncompressed RLE of a `full = (H, W)` mask that is zero except for a `crop_h × crop_w` block of row-major
/// 0/1 bytes `crop` placed at `offset = (x0, y0)` (the official `uncrop_masks` + `mask_to_rle_pytorch`).
///
/// Works on row-major data: the transitions between vertically adjacent pixels of each column are found by
/// comparing consecutive rows, then sorted into column-major order, so the mask is never transposed.
pub(crate) fn rle_from_crop(
    crop: &[u8],
    crop_h: usize,
    crop_w: usize,
    offset: (usize, usize),
    full: (usize, usize),
) -> Rle {
    let (x0, y0) = offset;
    let (hh, ww) = full;
    debug_assert_eq!(crop.len(), crop_h * crop_w);
    debug_assert!(x0 + crop_w <= ww && y0 + crop_h <= hh);
    let total = (hh * ww) as u64;
    let h = hh as u64;
    let inside = |idx: u64| -> Option<usize> {
        let (col, row) = ((idx / h) as usize, (idx % h) as usize);
        (col >= x0 && col < x0 + crop_w && row >= y0 && row < y0 + crop_h)
            .then(|| (row - y0) * crop_w + (col - x0))
    };
    let pixel = |idx: u64| -> u8 { inside(idx).map_or(0, |i| crop[i]) };
    let mut keys: Vec<u64> = Vec::new();
    if crop_h > 0 && crop_w > 0 {
        // Top of each crop column: the pair (t - 1, t).
        let top = &crop[..crop_w];
        for (x, &cur) in top.iter().enumerate() {
            let t = (x0 + x) as u64 * h + y0 as u64;
            let prev = if t == 0 { 0 } else { pixel(t - 1) };
            if cur != prev {
                keys.push(t);
            }
        }
        // Inside each column: rows y - 1 and y differ.
        for y in 1..crop_h {
            let a = &crop[(y - 1) * crop_w..y * crop_w];
            let b = &crop[y * crop_w..(y + 1) * crop_w];
            push_row_transitions(a, b, |x| {
                keys.push((x0 + x) as u64 * h + (y0 + y) as u64);
            });
        }
        // Bottom of each crop column, when the next pixel (column-major) lies outside the crop.
        let bottom = &crop[(crop_h - 1) * crop_w..];
        for (x, &cur) in bottom.iter().enumerate() {
            let b = (x0 + x) as u64 * h + (y0 + crop_h) as u64;
            if cur != 0 && b < total && inside(b).is_none() {
                keys.push(b);
            }
        }
    }
    keys.sort_unstable();
    let mut counts = Vec::with_capacity(keys.len() + 1);
    let mut prev = 0u64;
    for &k in &keys {
        counts.push((k - prev) as u32);
        prev = k;
    }
    counts.push((total - prev) as u32);
    Rle {
        size: [hh, ww],
        counts,
    }
}

/// Calls `f(x)` for every column `x` where rows `a` and `b` differ (8 bytes at a time).
#[inline]
fn push_row_transitions(a: &[u8], b: &[u8], mut f: impl FnMut(usize)) {
    let n = a.len();
    let mut x = 0;
    while x + 8 <= n {
        let wa = u64::from_ne_bytes(a[x..x + 8].try_into().unwrap());
        let wb = u64::from_ne_bytes(b[x..x + 8].try_into().unwrap());
        if wa != wb {
            for i in x..x + 8 {
                if a[i] != b[i] {
                    f(i);
                }
            }
        }
        x += 8;
    }
    for i in x..n {
        if a[i] != b[i] {
            f(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The official `mask_to_rle_pytorch`, transcribed literally (column-major flatten, change indices).
    fn reference_rle(mask: &[u8], h: usize, w: usize) -> Vec<u32> {
        let mut flat = Vec::with_capacity(h * w);
        for x in 0..w {
            for y in 0..h {
                flat.push(mask[y * w + x]);
            }
        }
        let mut idx = vec![0usize];
        for i in 1..flat.len() {
            if flat[i] != flat[i - 1] {
                idx.push(i);
            }
        }
        idx.push(h * w);
        let mut counts = if flat[0] == 0 { vec![] } else { vec![0] };
        counts.extend(idx.windows(2).map(|p| (p[1] - p[0]) as u32));
        counts
    }

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    fn random_mask(seed: &mut u64, h: usize, w: usize) -> Vec<u8> {
        let density = lcg(seed) % 100;
        let blocky = lcg(seed).is_multiple_of(2);
        (0..h * w)
            .map(|i| {
                let (y, x) = (i / w, i % w);
                if blocky {
                    u8::from((x / 3 + y / 2 + (lcg(seed) % 3) as usize).is_multiple_of(4))
                } else {
                    u8::from(lcg(seed) % 100 < density)
                }
            })
            .collect()
    }

    #[test]
    fn encode_matches_reference_and_roundtrips() {
        let mut seed = 7;
        for t in 0..300 {
            let h = 1 + (lcg(&mut seed) % 23) as usize;
            let w = 1 + (lcg(&mut seed) % 29) as usize;
            let mut m = random_mask(&mut seed, h, w);
            if t % 17 == 0 {
                m.fill(0);
            }
            if t % 19 == 0 {
                m.fill(1);
            }
            let rle = Rle::from_mask_u8(&m, h, w).unwrap();
            assert_eq!(rle.counts, reference_rle(&m, h, w), "{h}×{w}");
            assert_eq!(rle.to_mask_u8().unwrap(), m);
            assert_eq!(rle.area(), m.iter().map(|&v| v as u64).sum::<u64>());
            assert_eq!(rle.bbox_xyxy(), mask_bbox_xyxy(&m, h, w), "{h}×{w} {m:?}");
            let coco = rle.to_coco();
            assert_eq!(coco.to_rle().unwrap(), rle);
        }
    }

    #[test]
    fn crop_placement_matches_padded_mask() {
        let mut seed = 11;
        for _ in 0..300 {
            let hh = 1 + (lcg(&mut seed) % 17) as usize;
            let ww = 1 + (lcg(&mut seed) % 17) as usize;
            let ch = 1 + (lcg(&mut seed) as usize % hh);
            let cw = 1 + (lcg(&mut seed) as usize % ww);
            let y0 = lcg(&mut seed) as usize % (hh - ch + 1);
            let x0 = lcg(&mut seed) as usize % (ww - cw + 1);
            let crop = random_mask(&mut seed, ch, cw);
            let mut full = vec![0u8; hh * ww];
            for y in 0..ch {
                for x in 0..cw {
                    full[(y0 + y) * ww + x0 + x] = crop[y * cw + x];
                }
            }
            let rle = rle_from_crop(&crop, ch, cw, (x0, y0), (hh, ww));
            assert_eq!(rle.counts, reference_rle(&full, hh, ww));
        }
    }

    #[test]
    fn special_cases() {
        // All zero, all one, first pixel set.
        assert_eq!(Rle::from_mask_u8(&[0; 6], 2, 3).unwrap().counts, vec![6]);
        assert_eq!(Rle::from_mask_u8(&[1; 6], 2, 3).unwrap().counts, vec![0, 6]);
        // Row-major [[1, 0, 0], [1, 1, 0]] → column-major 1 1 0 1 0 0.
        let r = Rle::from_mask_u8(&[1, 0, 0, 1, 1, 0], 2, 3).unwrap();
        assert_eq!(r.counts, vec![0, 2, 1, 1, 2]);
        assert_eq!(r.area(), 3);
        assert_eq!(r.bbox_xyxy(), Some([0, 0, 1, 1]));
        assert!(Rle::from_mask_u8(&[1, 0], 2, 3).is_err());
        let bad = Rle {
            size: [2, 3],
            counts: vec![1, 2],
        };
        assert!(bad.to_mask().is_err());
    }

    #[test]
    fn coco_strings_known_values() {
        // Values checked with pycocotools 2.0.11: frPyObjects({"size": [h, w], "counts": c}, h, w)["counts"].
        assert_eq!(encode_counts(&[6]), "6");
        assert_eq!(encode_counts(&[0, 6]), "06");
        assert_eq!(encode_counts(&[0, 2, 1, 1, 2]), "021O1");
        assert_eq!(encode_counts(&[100, 50, 30, 20]), "T3b1n0RO");
        for counts in [
            vec![6],
            vec![0, 6],
            vec![0, 2, 1, 1, 2],
            vec![100, 50, 30, 20],
        ] {
            assert_eq!(decode_counts(&encode_counts(&counts)).unwrap(), counts);
        }
        assert!(decode_counts("0 1").is_err());
        assert!(decode_counts("R").is_err()); // continuation bit set on the last character
    }

    #[test]
    fn coco_strings_roundtrip_large_counts() {
        let mut seed = 3;
        for _ in 0..2000 {
            let n = 1 + (lcg(&mut seed) % 12) as usize;
            let counts: Vec<u32> = (0..n)
                .map(|_| match lcg(&mut seed) % 4 {
                    0 => 0,
                    1 => (lcg(&mut seed) % 40) as u32,
                    2 => (lcg(&mut seed) % 100_000) as u32,
                    _ => (lcg(&mut seed) % (1 << 30)) as u32,
                })
                .collect();
            assert_eq!(decode_counts(&encode_counts(&counts)).unwrap(), counts);
        }
    }
}
