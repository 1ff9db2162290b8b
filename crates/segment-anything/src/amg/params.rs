//! The generator's parameters (`SamAutomaticMaskGenerator.__init__`) and output mode.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

use super::utils::{build_all_layer_point_grids, layer_points_per_side};

/// How [`MaskRecord::segmentation`] is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    /// A row-major boolean mask ([`Segmentation::BinaryMask`]).
    #[default]
    BinaryMask,
    /// An uncompressed RLE ([`Segmentation::UncompressedRle`]).
    UncompressedRle,
    /// A compressed COCO RLE ([`Segmentation::CocoRle`]).
    CocoRle,
}

impl OutputMode {
    /// The official name: `binary_mask`, `uncompressed_rle` or `coco_rle`.
    pub fn as_str(&self) -> &'static str {
        match self {
            OutputMode::BinaryMask => "binary_mask",
            OutputMode::UncompressedRle => "uncompressed_rle",
            OutputMode::CocoRle => "coco_rle",
        }
    }
}

impl std::fmt::Display for OutputMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutputMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "binary_mask" => Ok(OutputMode::BinaryMask),
            "uncompressed_rle" => Ok(OutputMode::UncompressedRle),
            "coco_rle" => Ok(OutputMode::CocoRle),
            _ => Err(Error::arg(
                "output_mode",
                format!("unknown output mode `{s}` (expected binary_mask, uncompressed_rle or coco_rle)"),
            )),
        }
    }
}

/// The parameters of the official `SamAutomaticMaskGenerator`, with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AmgParams {
    /// Points per side of the grid (n × n points); exclusive with `point_grids`. Default `Some(32)`.
    pub points_per_side: Option<usize>,
    /// Points run through the decoder at once. Default 64.
    pub points_per_batch: usize,
    /// Keep masks with predicted IoU `>` this (skipped when `<= 0`). Default 0.88.
    pub pred_iou_thresh: f64,
    /// Keep masks with stability score `>=` this (skipped when `<= 0`). Default 0.95.
    pub stability_score_thresh: f64,
    /// Logit offset of the stability score. Default 1.0.
    pub stability_score_offset: f64,
    /// Box IoU above which NMS removes a mask within a crop. Default 0.7.
    pub box_nms_thresh: f64,
    /// Extra crop layers; layer i has (2^i)² crops. Default 0.
    pub crop_n_layers: usize,
    /// Box IoU above which NMS removes a mask across crops. Default 0.7.
    pub crop_nms_thresh: f64,
    /// Overlap of the layer-1 crops as a fraction of the short image side (halved at each further layer).
    /// Default 512 / 1500.
    pub crop_overlap_ratio: f64,
    /// Points per side in layer i = `points_per_side / factor^i` (truncated). Default 1.
    pub crop_n_points_downscale_factor: usize,
    /// Explicit point grids normalised to [0, 1], one per crop layer; exclusive with `points_per_side`.
    pub point_grids: Option<Vec<Vec<[f64; 2]>>>,
    /// If > 0, holes and islands smaller than this many pixels are removed, then NMS runs again. Default 0.
    pub min_mask_region_area: usize,
    /// Form of the returned segmentations. Default binary masks.
    pub output_mode: OutputMode,
}

impl Default for AmgParams {
    fn default() -> Self {
        Self {
            points_per_side: Some(32),
            points_per_batch: 64,
            pred_iou_thresh: 0.88,
            stability_score_thresh: 0.95,
            stability_score_offset: 1.0,
            box_nms_thresh: 0.7,
            crop_n_layers: 0,
            crop_nms_thresh: 0.7,
            crop_overlap_ratio: 512.0 / 1500.0,
            crop_n_points_downscale_factor: 1,
            point_grids: None,
            min_mask_region_area: 0,
            output_mode: OutputMode::BinaryMask,
        }
    }
}

impl AmgParams {
    /// Check the parameters and return the point grid of every crop layer (`crop_n_layers + 1` grids).
    ///
    /// Errors (the official code asserts or crashes later on most of these): both or neither of
    /// `points_per_side` / `point_grids`; a layer with 0 points per side; fewer grids than layers or an empty grid;
    /// non-finite grid points; `points_per_batch` or `crop_n_points_downscale_factor` 0; non-finite thresholds;
    /// a negative NMS threshold or stability offset; `crop_overlap_ratio` outside [0, 1] (crop boxes would start
    /// at negative coordinates).
    pub fn layer_point_grids(&self) -> Result<Vec<Vec<[f64; 2]>>> {
        fn arg(name: &'static str, message: impl Into<String>) -> Error {
            Error::arg(name, message)
        }
        if self.points_per_batch == 0 {
            return Err(arg("points_per_batch", "must be at least 1"));
        }
        for (name, v) in [
            ("pred_iou_thresh", self.pred_iou_thresh),
            ("stability_score_thresh", self.stability_score_thresh),
            ("stability_score_offset", self.stability_score_offset),
            ("box_nms_thresh", self.box_nms_thresh),
            ("crop_nms_thresh", self.crop_nms_thresh),
            ("crop_overlap_ratio", self.crop_overlap_ratio),
        ] {
            if !v.is_finite() {
                return Err(arg(name, format!("must be a finite number, got {v}")));
            }
        }
        for (name, v) in [
            ("box_nms_thresh", self.box_nms_thresh),
            ("crop_nms_thresh", self.crop_nms_thresh),
            ("stability_score_offset", self.stability_score_offset),
        ] {
            if v < 0.0 {
                return Err(arg(name, format!("must be >= 0, got {v}")));
            }
        }
        if !(0.0..=1.0).contains(&self.crop_overlap_ratio) {
            return Err(arg(
                "crop_overlap_ratio",
                format!(
                    "must be a fraction in [0, 1] of the short image side, got {}",
                    self.crop_overlap_ratio
                ),
            ));
        }
        if self.crop_n_points_downscale_factor == 0 {
            return Err(arg("crop_n_points_downscale_factor", "must be at least 1"));
        }
        if self.crop_n_layers > 16 {
            return Err(arg(
                "crop_n_layers",
                format!(
                    "{} layers would make more than 4^16 crops",
                    self.crop_n_layers
                ),
            ));
        }
        match (&self.points_per_side, &self.point_grids) {
            (Some(_), Some(_)) | (None, None) => Err(arg(
                "points_per_side",
                "exactly one of points_per_side or point_grids must be given",
            )),
            (Some(n), None) => {
                for i in 0..=self.crop_n_layers {
                    if layer_points_per_side(*n, self.crop_n_points_downscale_factor, i) == 0 {
                        return Err(arg(
                            "points_per_side",
                            format!(
                                "{n} points per side downscaled by {}^{i} leaves no point in crop layer {i}",
                                self.crop_n_points_downscale_factor
                            ),
                        ));
                    }
                }
                Ok(build_all_layer_point_grids(
                    *n,
                    self.crop_n_layers,
                    self.crop_n_points_downscale_factor,
                ))
            }
            (None, Some(grids)) => {
                if grids.len() < self.crop_n_layers + 1 {
                    return Err(arg(
                        "point_grids",
                        format!(
                            "{} grid(s) for {} crop layer(s) (one grid per layer, layer 0 included)",
                            grids.len(),
                            self.crop_n_layers + 1
                        ),
                    ));
                }
                for (i, g) in grids.iter().enumerate() {
                    if g.is_empty() {
                        return Err(arg("point_grids", format!("grid {i} is empty")));
                    }
                    if let Some(p) = g.iter().find(|p| !p.iter().all(|v| v.is_finite())) {
                        return Err(arg(
                            "point_grids",
                            format!("grid {i} has a non-finite point {p:?}"),
                        ));
                    }
                }
                Ok(grids.clone())
            }
        }
    }

    /// [`AmgParams::layer_point_grids`], discarding the grids.
    pub fn validate(&self) -> Result<()> {
        self.layer_point_grids().map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_official() {
        let p = AmgParams::default();
        assert_eq!(p.points_per_side, Some(32));
        assert_eq!(p.points_per_batch, 64);
        assert_eq!(p.pred_iou_thresh, 0.88);
        assert_eq!(p.stability_score_thresh, 0.95);
        assert_eq!(p.stability_score_offset, 1.0);
        assert_eq!(p.box_nms_thresh, 0.7);
        assert_eq!(p.crop_n_layers, 0);
        assert_eq!(p.crop_nms_thresh, 0.7);
        assert_eq!(p.crop_overlap_ratio, 512.0 / 1500.0);
        assert_eq!(p.crop_n_points_downscale_factor, 1);
        assert_eq!(p.point_grids, None);
        assert_eq!(p.min_mask_region_area, 0);
        assert_eq!(p.output_mode, OutputMode::BinaryMask);
        assert_eq!(p.layer_point_grids().unwrap()[0].len(), 1024);
    }

    #[test]
    fn validation_errors() {
        let bad = |f: &dyn Fn(&mut AmgParams)| {
            let mut p = AmgParams::default();
            f(&mut p);
            p.validate().unwrap_err().to_string()
        };
        assert!(bad(&|p| p.point_grids = Some(vec![vec![[0.5, 0.5]]])).contains("exactly one"));
        assert!(bad(&|p| p.points_per_side = None).contains("exactly one"));
        assert!(bad(&|p| p.points_per_batch = 0).contains("points_per_batch"));
        assert!(bad(&|p| p.pred_iou_thresh = f64::NAN).contains("finite"));
        assert!(bad(&|p| p.crop_overlap_ratio = 1.5).contains("[0, 1]"));
        assert!(bad(&|p| p.box_nms_thresh = -0.1).contains(">= 0"));
        assert!(bad(&|p| p.crop_n_points_downscale_factor = 0).contains("at least 1"));
        assert!(bad(&|p| {
            p.points_per_side = Some(3);
            p.crop_n_layers = 2;
            p.crop_n_points_downscale_factor = 2;
        })
        .contains("no point in crop layer 2"));
        assert!(bad(&|p| {
            p.points_per_side = None;
            p.crop_n_layers = 1;
            p.point_grids = Some(vec![vec![[0.5, 0.5]]]);
        })
        .contains("1 grid(s) for 2 crop layer(s)"));
        assert_eq!(
            "coco_rle".parse::<OutputMode>().unwrap(),
            OutputMode::CocoRle
        );
        assert!("rle".parse::<OutputMode>().is_err());
    }
}
