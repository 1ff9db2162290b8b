//! Image decoding against the official loaders: every file of the corpus written by
//! `tools/reference/gen_decode_fixtures.py` must decode to exactly the bytes Pillow (or, for 16-bit files,
//! OpenCV) gives, and every broken file must be refused with an error naming the file and the problem.

use std::path::{Path, PathBuf};

use image::DynamicImage;
use segment_anything::{decode_image, load_image, Error, ImageLoadOptions};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decode")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cases() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases.json is JSON")
}

fn expected_rgb(file: &str) -> image::RgbImage {
    // The expected pixels are stored as 8-bit RGB PNGs (lossless).
    let img = image::open(fixture_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    match img {
        DynamicImage::ImageRgb8(i) => i,
        other => panic!("{file}: expected an RGB8 PNG, got {:?}", other.color()),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Differing bytes between two RGB images of the same size (or a size mismatch message).
fn differing(ours: &DynamicImage, expected: &image::RgbImage) -> Result<usize, String> {
    let ours = ours.to_rgb8();
    if ours.dimensions() != expected.dimensions() {
        return Err(format!(
            "size {:?}, expected {:?}",
            ours.dimensions(),
            expected.dimensions()
        ));
    }
    Ok(ours
        .as_raw()
        .iter()
        .zip(expected.as_raw())
        .filter(|(a, b)| a != b)
        .count())
}

#[test]
fn every_file_decodes_to_the_official_loaders_bytes() {
    let cases = cases();
    let mut failures = Vec::new();
    let list = cases["cases"].as_array().unwrap();
    assert!(list.len() >= 70, "corpus too small: {}", list.len());
    for case in list {
        let name = case["name"].as_str().unwrap();
        let path = fixture_dir().join(case["file"].as_str().unwrap());
        let ours = match load_image(&path, &ImageLoadOptions::default()) {
            Ok(img) => img,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let expected = expected_rgb(case["expected"].as_str().unwrap());
        match differing(&ours, &expected) {
            Ok(0) => {}
            Ok(n) => failures.push(format!(
                "{name}: {n} of {} bytes differ",
                expected.as_raw().len()
            )),
            Err(m) => failures.push(format!("{name}: {m}")),
        }
        // Gray sources come back gray; expanding them to RGB gives the same bytes as above.
        let gray_modes = ["L", "1", "LA", "I;16", "I;16B", "I", "La"];
        let mode = case["pillow_mode"].as_str().unwrap_or("");
        // (A 1-bit BMP comes back as RGB: the `image` crate expands its two-colour palette.)
        let bmp = case["format"].as_str() == Some("BMP");
        if gray_modes.contains(&mode) && !bmp && !matches!(ours, DynamicImage::ImageLuma8(_)) {
            failures.push(format!(
                "{name}: Pillow mode {mode} but decoded as {:?}",
                ours.color()
            ));
        }
        if let Some(raw) = case.get("expected_without_exif").and_then(Value::as_str) {
            let opts = ImageLoadOptions {
                apply_exif_orientation: false,
                ..Default::default()
            };
            let unrotated = load_image(&path, &opts).unwrap();
            match differing(&unrotated, &expected_rgb(raw)) {
                Ok(0) => {}
                Ok(n) => failures.push(format!("{name} (EXIF ignored): {n} bytes differ")),
                Err(m) => failures.push(format!("{name} (EXIF ignored): {m}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} files differ:\n{}",
        failures.len(),
        list.len(),
        failures.join("\n")
    );
}

#[test]
fn every_jpeg_variant_is_in_the_corpus() {
    // The variants the README promises: each subsampling, progressive, restart markers, grayscale,
    // CMYK/YCCK, EXIF rotation; if the generator drops one, this fails.
    let cases = cases();
    let names: Vec<&str> = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for needed in [
        "jpeg_q75_420",
        "jpeg_q90_422",
        "jpeg_q90_444",
        "jpeg_q85_440",
        "jpeg_progressive_420",
        "jpeg_restart_markers",
        "jpeg_gray",
        "jpeg_cmyk_adobe",
        "jpeg_ycck",
        "jpeg_lossless",
        "jpeg_arithmetic",
        "jpeg_exif_orientation_6",
        "png_gray16",
        "png_palette4",
        "webp_lossy",
        "webp_lossless",
        "tiff_rgb16",
        "bmp_rgb24",
        "gif_animated",
    ] {
        assert!(names.contains(&needed), "{needed} missing from the corpus");
    }
}

#[test]
fn committed_photos_decode_exactly() {
    let cases = cases();
    for photo in cases["photos"].as_array().unwrap() {
        let file = photo["file"].as_str().unwrap();
        let img = load_image(repo_root().join(file), &ImageLoadOptions::default()).unwrap();
        let rgb = img.to_rgb8();
        let size = [rgb.width() as u64, rgb.height() as u64];
        assert_eq!(
            size.to_vec(),
            photo["size"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect::<Vec<_>>(),
            "{file}"
        );
        assert_eq!(
            sha256_hex(rgb.as_raw()),
            photo["expected_sha256"].as_str().unwrap(),
            "{file}: pixels differ from Pillow's"
        );
        assert_eq!(
            sha256_hex(&segment_anything::image_io::to_gray_like_pillow(&img)),
            photo["expected_gray_sha256"].as_str().unwrap(),
            "{file}: gray pixels differ from Pillow's convert(\"L\")"
        );
    }
}

#[test]
fn broken_files_are_refused_with_the_file_named() {
    let cases = cases();
    for case in cases["errors"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let path = fixture_dir().join(case["file"].as_str().unwrap());
        assert_ne!(
            case["pillow"].as_str(),
            Some("decoded"),
            "{name}: Pillow reads it; not an error case"
        );
        let err = load_image(&path, &ImageLoadOptions::default()).expect_err(name);
        let text = err.to_string();
        assert!(matches!(err, Error::ImageFile { .. }), "{name}: {err:?}");
        assert!(
            text.contains(path.file_name().unwrap().to_str().unwrap()),
            "{name}: file not named in `{text}`"
        );
        let expected_words: &[&str] = match name {
            n if n.contains("truncated") => &["truncated"],
            "err_empty" => &["empty"],
            "err_not_an_image" => &["not an image"],
            "err_jpeg_12bit" => &["not supported"],
            _ => &["corrupt"],
        };
        for w in expected_words {
            assert!(text.contains(w), "{name}: `{text}` does not say `{w}`");
        }
    }
}

#[test]
fn truncation_anywhere_is_an_error_never_a_panic() {
    for file in [
        "files/jpeg_progressive_420.jpg",
        "files/jpeg_q75_420.jpg",
        "files/png_rgb8.png",
        "files/gif.gif",
        "files/webp_lossy.webp",
        "files/tiff_rgb8_lzw.tif",
        "files/bmp_rgb24.bmp",
    ] {
        let bytes = std::fs::read(fixture_dir().join(file)).unwrap();
        for cut in [
            1,
            2,
            3,
            10,
            30,
            bytes.len() / 4,
            bytes.len() / 2,
            bytes.len() * 9 / 10,
        ] {
            let result = decode_image(&bytes[..cut], &ImageLoadOptions::default());
            assert!(
                result.is_err(),
                "{file} cut at {cut} of {} bytes decoded",
                bytes.len()
            );
        }
    }
}

#[test]
fn the_pixel_limit_refuses_large_images_before_decoding() {
    let path = fixture_dir().join("files/jpeg_q75_420.jpg");
    let small = ImageLoadOptions {
        max_pixels: Some(161 * 103 - 1),
        ..Default::default()
    };
    let text = load_image(&path, &small).unwrap_err().to_string();
    assert!(
        text.contains("exceeds the limit") && text.contains("161×103"),
        "{text}"
    );
    let exact = ImageLoadOptions {
        max_pixels: Some(161 * 103),
        ..Default::default()
    };
    load_image(&path, &exact).unwrap();

    // A JPEG whose header claims 60000×60000 pixels is refused by the default limit without allocating them.
    let mut bytes = std::fs::read(&path).unwrap();
    let sof = bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline SOF0");
    bytes[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    let text = decode_image(&bytes, &ImageLoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("exceeds the limit of 178956970 pixels"),
        "{text}"
    );
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let err = load_image("/nonexistent/photo.jpg", &ImageLoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/photo.jpg"));
}

#[test]
fn jpeg_end_of_file_rules_follow_pillow() {
    // Pillow 13: bytes after the EOI marker are ignored; a file missing only its EOI marker is "truncated".
    let path = fixture_dir().join("files/jpeg_q75_420.jpg");
    let bytes = std::fs::read(&path).unwrap();
    let whole = decode_image(&bytes, &ImageLoadOptions::default()).unwrap();
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(&b"garbage".repeat(10));
    let padded = decode_image(&trailing, &ImageLoadOptions::default()).unwrap();
    assert_eq!(padded.to_rgb8().as_raw(), whole.to_rgb8().as_raw());
    let text = decode_image(&bytes[..bytes.len() - 2], &ImageLoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(text.contains("truncated"), "{text}");
}
