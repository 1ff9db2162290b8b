//! "Segment everything": the official `SamAutomaticMaskGenerator`, step for step.
//!
//! A grid of single-point prompts is run over the image (and optionally over overlapping crops of it); masks are
//! filtered by predicted IoU and stability score, de-duplicated by box NMS (within each crop, then across crops),
//! optionally cleaned of small holes and islands, and returned as records in the official order.
//!
//! Every step mirrors `segment_anything/automatic_mask_generator.py` and `segment_anything/utils/amg.py`,
//! including the arithmetic that decides ties and thresholds:
//!
//! * thresholds are compared in `f32` (a Python float compared with a float32 tensor is cast to float32);
//! * the stability score counts logits `> mask_threshold ± offset` on the crop-resolution logits with the official
//!   `int16` row sums, divides in `f32`, and gives NaN for an empty union (then dropped by the `>=` filter);
//! * boxes are inclusive `XYXY` (`batched_mask_to_box`), NMS is torchvision's (areas without `+1`, IoU in `f32`,
//!   strict `>`, a stable descending score sort, so equal scores — `1 / crop area` across crops, 0 or 1 in the
//!   small-region NMS — keep their order);
//! * above 1000 boxes torchvision's `batched_nms` takes its "vanilla" path, which re-sorts the kept indices with
//!   `torch.sort(descending=True)`: an *unstable* introsort (libstdc++ `std::sort`) that reorders equal scores;
//!   that sort is reproduced exactly;
//! * connected components are 8-connected and labelled in OpenCV's order (first 2×2 block in raster order), which
//!   decides which island is kept when all are too small.
//!
//! Unlike the official code, the masks of a batch are upsampled only after the IoU filter, one at a time and in
//! parallel, and each is reduced to its RLE at once: full-resolution logits of a whole batch are never held.

mod generator;
mod nms;
mod params;
mod regions;
mod utils;

pub use self::generator::{
    AmgOutput, AmgProgress, AmgStats, AutomaticMaskGenerator, MaskRecord, Segmentation,
};
pub use self::nms::{batched_nms, torch_argsort_descending};
pub use self::params::{AmgParams, OutputMode};
pub use self::regions::{remove_small_regions, RegionMode};
pub use self::utils::{
    build_all_layer_point_grids, build_point_grid, calculate_stability_score, generate_crop_boxes,
    mask_to_box,
};
