//! Architecture inference: a [`SamConfig`] from the tensor shapes of a state dict.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::config::{SamConfig, SamVariant, SAM_PIXEL_MEAN, SAM_PIXEL_STD};
use crate::error::Result;
use crate::state_dict::StateDict;

use super::ckpt_err;
use super::hf_keys::{hf_mlp_mid_layers, is_hf_layout, map_hf_key, split_index};

/// Derive the architecture from the tensor shapes of a state dict (official key layout; Hugging Face keys are
/// also understood).
///
/// Everything is read from shapes (see [`infer_config_from_shapes`]) except what shapes cannot tell:
/// `decoder_nb_heads` (8, the official value, when `embed_dim / 2` is divisible by 8), the encoder LayerNorm epsilon
/// (1e-6), the activation (exact GELU) and the pixel mean / std (the official values for 3 channels, 0 / 1 otherwise).
/// If the result equals an official preset, the preset is returned (with its name, URL and checksum); otherwise the
/// name is `custom`. A model that differs in one of the non-inferable values needs an explicit config.
pub fn infer_config(sd: &StateDict) -> Result<SamConfig> {
    // Hugging Face keys are renamed on the fly (shapes are identical in both layouts).
    let mid = is_hf_layout(sd).then(|| hf_mlp_mid_layers(sd));
    let shapes: BTreeMap<String, Vec<usize>> = sd
        .iter()
        .map(|(k, t)| {
            let key = match &mid {
                Some(mid) => map_hf_key(k, mid),
                None => k.clone(),
            };
            (key, t.dims().to_vec())
        })
        .collect();
    infer_impl(&shapes, sd.source_name())
}

/// [`infer_config`] on a map from official key to shape (no tensors needed).
///
/// Read from shapes: grid and encoder width (`image_encoder.pos_embed` (1, gh, gw, C)), patch size and input
/// channels (`patch_embed.proj.weight` (C, in, p, p)), `input_size` = grid × patch, number of blocks, head dim
/// (`attn.rel_pos_h` (L, head_dim)) hence heads = C / head_dim, global blocks (rel-pos length 2·grid − 1) versus
/// windowed blocks (length 2·window − 1), MLP ratio, qkv bias, `embed_dim` (neck), `prompt_mask_hidden_dim`
/// (`mask_downscaling.3`), decoder blocks and MLP width, IoU head depth and width, multimask outputs
/// (`mask_tokens` rows − 1). When every block is global the window size is irrelevant and set to 14.
pub fn infer_config_from_shapes(shapes: &BTreeMap<String, Vec<usize>>) -> Result<SamConfig> {
    infer_impl(shapes, "shape map")
}

fn infer_impl(shapes: &BTreeMap<String, Vec<usize>>, source: &str) -> Result<SamConfig> {
    let path = PathBuf::from(source);
    let fail = |m: String| ckpt_err(&path, m);
    let get = |key: &str, rank: usize| -> Result<&[usize]> {
        let s = shapes.get(key).ok_or_else(|| {
            fail(format!(
                "not a SAM checkpoint in the official key layout: missing key `{key}`"
            ))
        })?;
        if s.len() != rank {
            return Err(fail(format!(
                "`{key}` has shape {s:?}, expected {rank} dimensions"
            )));
        }
        Ok(s)
    };
    let indices = |prefix: &str| -> BTreeSet<usize> {
        shapes
            .keys()
            .filter_map(|k| k.strip_prefix(prefix).and_then(split_index).map(|(i, _)| i))
            .collect()
    };
    let count = |prefix: &str| -> Result<usize> {
        let idx = indices(prefix);
        let n = idx.len();
        if n == 0 {
            return Err(fail(format!(
                "not a SAM checkpoint in the official key layout: no `{prefix}<i>.…` keys"
            )));
        }
        if idx.iter().copied().ne(0..n) {
            return Err(fail(format!(
                "the indices of `{prefix}<i>` are not 0..{n}: {idx:?}"
            )));
        }
        Ok(n)
    };

    let pos = get("image_encoder.pos_embed", 4)?;
    let (gh, gw, c) = (pos[1], pos[2], pos[3]);
    let patch = get("image_encoder.patch_embed.proj.weight", 4)?;
    if patch[0] != c || patch[2] != patch[3] || gh == 0 || gw == 0 {
        return Err(fail(format!(
            "`image_encoder.patch_embed.proj.weight` has shape {patch:?}, expected ({c}, in_channels, p, p)"
        )));
    }
    let (in_channels, p) = (patch[1], patch[2]);

    let nb_blocks = count("image_encoder.blocks.")?;
    let mut head_dim = None;
    let mut window = None;
    let mut global = Vec::new();
    for i in 0..nb_blocks {
        let hk = format!("image_encoder.blocks.{i}.attn.rel_pos_h");
        let wk = format!("image_encoder.blocks.{i}.attn.rel_pos_w");
        let h = get(&hk, 2)?;
        let w = get(&wk, 2)?;
        if h[1] != w[1] || h[1] == 0 || head_dim.is_some_and(|d| d != h[1]) {
            return Err(fail(format!(
                "`{hk}` {h:?} / `{wk}` {w:?}: inconsistent head dimension"
            )));
        }
        head_dim = Some(h[1]);
        if h[0] == 2 * gh - 1 && w[0] == 2 * gw - 1 {
            global.push(i);
        } else if h[0] == w[0] && h[0] % 2 == 1 && window.is_none_or(|ws| 2 * ws - 1 == h[0]) {
            window = Some(h[0].div_ceil(2));
        } else {
            return Err(fail(format!(
                "`{hk}` has {} rows: neither global (2×{gh}−1) nor a consistent window (2×window−1)",
                h[0]
            )));
        }
    }
    let head_dim = head_dim.unwrap_or(1);
    if c % head_dim != 0 {
        return Err(fail(format!(
            "encoder width {c} is not a multiple of the head dimension {head_dim}"
        )));
    }
    let qkv = get("image_encoder.blocks.0.attn.qkv.weight", 2)?;
    if qkv != [3 * c, c] {
        return Err(fail(format!(
            "`image_encoder.blocks.0.attn.qkv.weight` has shape {qkv:?}, expected [{}, {c}]",
            3 * c
        )));
    }
    let qkv_bias = shapes.contains_key("image_encoder.blocks.0.attn.qkv.bias");
    let lin1 = get("image_encoder.blocks.0.mlp.lin1.weight", 2)?;
    let mlp_dim = lin1[0];
    let mut mlp_ratio = mlp_dim as f64 / c as f64;
    // `int(C * ratio)` must give back the hidden size; nudge up past rounding for odd ratios.
    for _ in 0..4 {
        if (c as f64 * mlp_ratio) as usize >= mlp_dim {
            break;
        }
        mlp_ratio = f64::from_bits(mlp_ratio.to_bits() + 1);
    }

    let neck = get("image_encoder.neck.0.weight", 4)?;
    let embed_dim = neck[0];
    let md = get("prompt_encoder.mask_downscaling.3.weight", 4)?;
    let prompt_mask_hidden_dim = md[0];

    let decoder_nb_blocks = count("mask_decoder.transformer.layers.")?;
    let dmlp = get("mask_decoder.transformer.layers.0.mlp.lin1.weight", 2)?;
    let iou_depth = count("mask_decoder.iou_prediction_head.layers.")?;
    let iou_hidden = if iou_depth > 1 {
        get("mask_decoder.iou_prediction_head.layers.0.weight", 2)?[0]
    } else {
        embed_dim
    };
    let tokens = get("mask_decoder.mask_tokens.weight", 2)?;
    if tokens[0] < 2 {
        return Err(fail(format!(
            "`mask_decoder.mask_tokens.weight` has shape {tokens:?}: at least 2 mask tokens expected"
        )));
    }
    let decoder_nb_heads = [8, 4, 2, 1]
        .into_iter()
        .find(|h| (embed_dim / 2) % h == 0)
        .unwrap_or(1);

    let (mean, std) = if in_channels == 3 {
        (SAM_PIXEL_MEAN.to_vec(), SAM_PIXEL_STD.to_vec())
    } else {
        (vec![0.0; in_channels], vec![1.0; in_channels])
    };
    let cfg = SamConfig {
        name: "custom".to_string(),
        url: None,
        sha256: None,
        file_size: None,
        in_channels,
        input_size: [gh * p, gw * p],
        fixed_input_size: true,
        embed_dim,
        nb_multimask_outputs: tokens[0] - 1,
        mask_threshold: 0.0,
        encoder_patch_size: p,
        encoder_embed_dim: c,
        encoder_nb_blocks: nb_blocks,
        encoder_nb_heads: c / head_dim,
        encoder_mlp_ratio: mlp_ratio,
        encoder_drop_rate: 0.0,
        encoder_attn_drop_rate: 0.0,
        encoder_drop_path_rate: 0.0,
        encoder_norm_layer: "layer_norm_eps_1e-6".to_string(),
        encoder_act_layer: "gelu".to_string(),
        encoder_qkv_bias: qkv_bias,
        encoder_global_attn_indices: global,
        encoder_window_size: window.unwrap_or(14),
        prompt_mask_hidden_dim,
        decoder_nb_blocks,
        decoder_nb_heads,
        decoder_mlp_channels: dmlp[0],
        decoder_iou_head_depth: iou_depth,
        decoder_iou_hidden_dim: iou_hidden,
        mean,
        std,
    };
    for v in SamVariant::ALL {
        let preset = v.config();
        let mut named = cfg.clone();
        named.name = preset.name.clone();
        named.url = preset.url.clone();
        named.sha256 = preset.sha256.clone();
        named.file_size = preset.file_size;
        if named == preset {
            return Ok(preset);
        }
    }
    cfg.validate().map_err(|e| {
        fail(format!(
            "the inferred architecture is not usable ({e}); pass an explicit config"
        ))
    })?;
    Ok(cfg)
}
