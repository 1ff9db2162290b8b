//! The Hugging Face `transformers` `SamModel` key layout and its map to the official keys.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::error::Result;
use crate::state_dict::StateDict;

use super::ckpt_err;
use super::safetensors::tensor_le_bytes;

/// Official key of the prompt encoder's random positional-encoding matrix.
const PE_KEY: &str = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix";
/// The two Hugging Face keys of that matrix (tied; `save_pretrained` usually keeps only the first).
const HF_PE_KEYS: [&str; 2] = [
    "shared_image_embedding.positional_embedding",
    "prompt_encoder.shared_embedding.positional_embedding",
];

/// Whether the keys look like a Hugging Face `transformers` `SamModel` state dict.
pub fn is_hf_layout(sd: &StateDict) -> bool {
    const MARKERS: [&str; 7] = [
        "vision_encoder.",
        "shared_image_embedding.",
        "prompt_encoder.shared_embedding.",
        "prompt_encoder.mask_embed.",
        "prompt_encoder.point_embed.",
        "mask_decoder.upscale_conv",
        "mask_decoder.upscale_layer_norm.",
    ];
    sd.keys().any(|k| MARKERS.iter().any(|m| k.starts_with(m)))
}

fn replace_prefix(s: &str, table: &[(&str, &str)]) -> Option<String> {
    table
        .iter()
        .find_map(|(from, to)| s.strip_prefix(from).map(|rest| format!("{to}{rest}")))
}

/// Split `<head>.<index>.<rest>` at a numeric segment; returns (index, rest).
pub(super) fn split_index(s: &str) -> Option<(usize, &str)> {
    let (idx, rest) = s.split_once('.')?;
    Some((idx.parse().ok()?, rest))
}

/// The MLP prefixes whose sub-layers Hugging Face renames to `proj_in` / `layers.{j}` / `proj_out`.
fn mlp_prefix(key: &str) -> Option<(&str, &str)> {
    const IOU: &str = "mask_decoder.iou_prediction_head.";
    const HYPER: &str = "mask_decoder.output_hypernetworks_mlps.";
    if key.starts_with(IOU) {
        return Some(key.split_at(IOU.len()));
    }
    let rest = key.strip_prefix(HYPER)?;
    let (_, tail) = split_index(rest)?;
    Some(key.split_at(key.len() - tail.len()))
}

pub(super) fn map_hf_key(key: &str, mlp_mid_layers: &HashMap<String, usize>) -> String {
    if HF_PE_KEYS.contains(&key) {
        return PE_KEY.to_string();
    }
    if let Some(rest) = key.strip_prefix("vision_encoder.") {
        let rest = if let Some(r) = replace_prefix(
            rest,
            &[
                ("patch_embed.projection.", "patch_embed.proj."),
                ("neck.conv1.", "neck.0."),
                ("neck.layer_norm1.", "neck.1."),
                ("neck.conv2.", "neck.2."),
                ("neck.layer_norm2.", "neck.3."),
            ],
        ) {
            r
        } else if let Some((i, tail)) = rest.strip_prefix("layers.").and_then(split_index) {
            let tail = replace_prefix(
                tail,
                &[("layer_norm1.", "norm1."), ("layer_norm2.", "norm2.")],
            )
            .unwrap_or_else(|| tail.to_string());
            format!("blocks.{i}.{tail}")
        } else {
            rest.to_string()
        };
        return format!("image_encoder.{rest}");
    }
    if let Some(rest) = key.strip_prefix("prompt_encoder.") {
        if let Some(r) = replace_prefix(
            rest,
            &[
                ("mask_embed.conv1.", "mask_downscaling.0."),
                ("mask_embed.layer_norm1.", "mask_downscaling.1."),
                ("mask_embed.conv2.", "mask_downscaling.3."),
                ("mask_embed.layer_norm2.", "mask_downscaling.4."),
                ("mask_embed.conv3.", "mask_downscaling.6."),
                ("point_embed.", "point_embeddings."),
            ],
        ) {
            return format!("prompt_encoder.{r}");
        }
        return key.to_string();
    }
    if let Some((prefix, tail)) = mlp_prefix(key) {
        if let Some(&mid) = mlp_mid_layers.get(prefix) {
            let tail = if let Some(r) = tail.strip_prefix("proj_in.") {
                format!("layers.0.{r}")
            } else if let Some(r) = tail.strip_prefix("proj_out.") {
                format!("layers.{}.{r}", mid + 1)
            } else if let Some((j, r)) = tail.strip_prefix("layers.").and_then(split_index) {
                format!("layers.{}.{r}", j + 1)
            } else {
                tail.to_string()
            };
            return format!("{prefix}{tail}");
        }
        return key.to_string();
    }
    if let Some(rest) = key.strip_prefix("mask_decoder.") {
        if let Some(r) = replace_prefix(
            rest,
            &[
                ("upscale_conv1.", "output_upscaling.0."),
                ("upscale_layer_norm.", "output_upscaling.1."),
                ("upscale_conv2.", "output_upscaling.3."),
                (
                    "transformer.layer_norm_final_attn.",
                    "transformer.norm_final_attn.",
                ),
            ],
        ) {
            return format!("mask_decoder.{r}");
        }
        if let Some((l, tail)) = rest
            .strip_prefix("transformer.layers.")
            .and_then(split_index)
        {
            if let Some(n) = tail
                .strip_prefix("layer_norm")
                .and_then(|t| t.split_once('.'))
                .filter(|(n, _)| matches!(*n, "1" | "2" | "3" | "4"))
            {
                return format!("mask_decoder.transformer.layers.{l}.norm{}.{}", n.0, n.1);
            }
        }
    }
    key.to_string()
}

/// Number of middle layers of each MLP that uses the HF names (has `proj_in` or `proj_out`), by key prefix.
pub(super) fn hf_mlp_mid_layers(sd: &StateDict) -> HashMap<String, usize> {
    let mut mid: HashMap<String, usize> = HashMap::new();
    for key in sd.keys() {
        if let Some((prefix, tail)) = mlp_prefix(key) {
            if tail.starts_with("proj_in.") || tail.starts_with("proj_out.") {
                mid.entry(prefix.to_string()).or_insert(0);
            }
        }
    }
    for key in sd.keys() {
        if let Some((prefix, tail)) = mlp_prefix(key) {
            if let (Some(n), Some((j, _))) = (
                mid.get_mut(prefix),
                tail.strip_prefix("layers.").and_then(split_index),
            ) {
                *n = (*n).max(j + 1);
            }
        }
    }
    mid
}

/// Map a Hugging Face `transformers` SAM state dict (`SamModel`) to the official key layout.
///
/// This is the exact inverse of `replace_keys` in transformers' `convert_sam_to_hf.py`; no tensor is reshaped
/// (HF keeps the fused `qkv`, the `(2, 128)` positional matrix and all conv layouts):
///
/// | Hugging Face | official |
/// |---|---|
/// | `vision_encoder.` | `image_encoder.` |
/// | `….patch_embed.projection` | `….patch_embed.proj` |
/// | `….layers.{i}.layer_norm{1,2}` / `….layers.{i}.…` | `….blocks.{i}.norm{1,2}` / `….blocks.{i}.…` |
/// | `….neck.conv1 / layer_norm1 / conv2 / layer_norm2` | `….neck.0 / 1 / 2 / 3` |
/// | `shared_image_embedding.positional_embedding`, `prompt_encoder.shared_embedding.positional_embedding` | `prompt_encoder.pe_layer.positional_encoding_gaussian_matrix` |
/// | `prompt_encoder.mask_embed.conv1 / layer_norm1 / conv2 / layer_norm2 / conv3` | `prompt_encoder.mask_downscaling.0 / 1 / 3 / 4 / 6` |
/// | `prompt_encoder.point_embed.{k}` | `prompt_encoder.point_embeddings.{k}` |
/// | `mask_decoder.transformer.layers.{l}.layer_norm{1..4}` | `….norm{1..4}` |
/// | `mask_decoder.transformer.layer_norm_final_attn` | `….norm_final_attn` |
/// | `mask_decoder.upscale_conv1 / upscale_layer_norm / upscale_conv2` | `mask_decoder.output_upscaling.0 / 1 / 3` |
/// | MLP heads (`iou_prediction_head`, `output_hypernetworks_mlps.{k}`): `proj_in`, `layers.{j}`, `proj_out` | `layers.0`, `layers.{j+1}`, `layers.{n-1}` |
///
/// The positional matrix is stored twice in some HF files (the two tied keys); the duplicate is derivable and is
/// dropped after checking that both copies are bit-identical. Keys that match no rule are kept unchanged, so the
/// model's strict loader reports them. Errors if two keys map to the same official key.
pub fn hf_to_official(sd: StateDict) -> Result<StateDict> {
    let source = sd.source_name().to_string();
    let path = PathBuf::from(&source);
    let mid = hf_mlp_mid_layers(&sd);
    let mut out = StateDict::new(source);
    let mut origin: HashMap<String, String> = HashMap::new();
    for (key, tensor) in sd.into_tensors() {
        let new = map_hf_key(&key, &mid);
        if let Some(prev) = origin.get(&new) {
            let both_pe = new == PE_KEY
                && HF_PE_KEYS.contains(&prev.as_str())
                && HF_PE_KEYS.contains(&key.as_str());
            if both_pe {
                let existing = out.get(&new).cloned();
                let same = match existing {
                    Some(e) => {
                        e.dims() == tensor.dims()
                            && e.dtype() == tensor.dtype()
                            && tensor_le_bytes(&e)? == tensor_le_bytes(&tensor)?
                    }
                    None => false,
                };
                if same {
                    continue;
                }
                return Err(ckpt_err(
                    &path,
                    format!("`{prev}` and `{key}` should be the same tied tensor but differ"),
                ));
            }
            return Err(ckpt_err(
                &path,
                format!("`{prev}` and `{key}` both map to the official key `{new}`"),
            ));
        }
        origin.insert(new.clone(), key);
        out.insert(new, tensor);
    }
    Ok(out)
}
