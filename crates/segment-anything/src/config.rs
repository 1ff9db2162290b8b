//! Model configuration: every architectural hyper-parameter of SAM, with the three official presets.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Base URL of Meta's released checkpoints.
pub const OFFICIAL_WEIGHTS_BASE_URL: &str = "https://dl.fbaipublicfiles.com/segment_anything/";

/// Pixel mean of the official models, in 0..255 units (RGB).
pub const SAM_PIXEL_MEAN: [f32; 3] = [123.675, 116.28, 103.53];
/// Pixel standard deviation of the official models, in 0..255 units (RGB).
pub const SAM_PIXEL_STD: [f32; 3] = [58.395, 57.12, 57.375];

/// Full description of a SAM architecture.
///
/// The field set mirrors the seed's `SegmentAnythingModelConfig`. `mean` and `std` are in 0..255 pixel units
/// (as in the official PyTorch `Sam`), one value per input channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamConfig {
    /// Model name, e.g. `vit_b`. Stored in embedding files so an embedding is never used with another model.
    pub name: String,
    /// Download URL of the official checkpoint, if any.
    #[serde(default)]
    pub url: Option<String>,
    /// SHA-256 of the official checkpoint file, if any.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Size in bytes of the official checkpoint file, if any.
    #[serde(default)]
    pub file_size: Option<u64>,
    /// Number of input image channels (3 for RGB).
    pub in_channels: usize,
    /// Model input size `[height, width]` (1024×1024 for the official models).
    pub input_size: [usize; 2],
    /// When false, any input size that is a multiple of the patch size is accepted; the absolute position
    /// embedding and the global blocks' relative positions are interpolated to the actual grid.
    pub fixed_input_size: bool,
    /// Prompt / decoder embedding dimension (256).
    pub embed_dim: usize,
    /// Number of multimask outputs (3).
    pub nb_multimask_outputs: usize,
    /// Logit threshold for binary masks (0.0).
    pub mask_threshold: f32,
    /// Patch size of the ViT encoder (16).
    pub encoder_patch_size: usize,
    /// ViT embedding dimension.
    pub encoder_embed_dim: usize,
    /// Number of ViT blocks.
    pub encoder_nb_blocks: usize,
    /// Number of attention heads in the ViT.
    pub encoder_nb_heads: usize,
    /// MLP hidden size as a multiple of the embedding dimension (4.0).
    pub encoder_mlp_ratio: f64,
    /// Dropout rate (inference: must be 0).
    pub encoder_drop_rate: f64,
    /// Attention dropout rate (inference: must be 0).
    pub encoder_attn_drop_rate: f64,
    /// Drop-path rate (inference: must be 0).
    pub encoder_drop_path_rate: f64,
    /// Normalisation layer of the encoder: `layer_norm_eps_1e-6` (or `layer_norm_eps_1e-5`, `layer_norm`).
    pub encoder_norm_layer: String,
    /// Activation of the encoder MLPs: `gelu` (exact, erf).
    pub encoder_act_layer: String,
    /// Whether the qkv projection has a bias.
    pub encoder_qkv_bias: bool,
    /// Indices of the blocks with global attention; all others use windowed attention.
    pub encoder_global_attn_indices: Vec<usize>,
    /// Window size of the windowed blocks (14).
    pub encoder_window_size: usize,
    /// Hidden channels of the mask-prompt downscaling network (16).
    pub prompt_mask_hidden_dim: usize,
    /// Number of two-way transformer blocks in the decoder (2).
    pub decoder_nb_blocks: usize,
    /// Number of attention heads in the decoder (8).
    pub decoder_nb_heads: usize,
    /// Hidden size of the decoder transformer MLP (2048).
    pub decoder_mlp_channels: usize,
    /// Number of layers of the IoU prediction head (3).
    pub decoder_iou_head_depth: usize,
    /// Hidden size of the IoU prediction head (256).
    pub decoder_iou_hidden_dim: usize,
    /// Per-channel pixel mean, 0..255 units.
    pub mean: Vec<f32>,
    /// Per-channel pixel standard deviation, 0..255 units.
    pub std: Vec<f32>,
}

/// The official model variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamVariant {
    /// ViT-B, 91M parameters.
    VitB,
    /// ViT-L, 308M parameters.
    VitL,
    /// ViT-H, 636M parameters.
    VitH,
}

impl SamVariant {
    /// All variants, smallest first.
    pub const ALL: [SamVariant; 3] = [SamVariant::VitB, SamVariant::VitL, SamVariant::VitH];

    /// Short name: `vit_b`, `vit_l`, `vit_h`.
    pub fn name(self) -> &'static str {
        match self {
            SamVariant::VitB => "vit_b",
            SamVariant::VitL => "vit_l",
            SamVariant::VitH => "vit_h",
        }
    }

    /// Parse `vit_b`, `vit_l`, `vit_h` (also `default` = `vit_h`, as in the official registry).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "vit_b" => Ok(SamVariant::VitB),
            "vit_l" => Ok(SamVariant::VitL),
            "vit_h" | "default" => Ok(SamVariant::VitH),
            other => Err(Error::arg(
                "model",
                format!("unknown model `{other}` (expected vit_b, vit_l or vit_h)"),
            )),
        }
    }

    /// File name of the official checkpoint.
    pub fn checkpoint_file_name(self) -> &'static str {
        match self {
            SamVariant::VitB => "sam_vit_b_01ec64.pth",
            SamVariant::VitL => "sam_vit_l_0b3195.pth",
            SamVariant::VitH => "sam_vit_h_4b8939.pth",
        }
    }

    /// SHA-256 of the official checkpoint.
    pub fn checkpoint_sha256(self) -> &'static str {
        match self {
            SamVariant::VitB => "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            SamVariant::VitL => "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            SamVariant::VitH => "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        }
    }

    /// Size in bytes of the official checkpoint.
    pub fn checkpoint_size(self) -> u64 {
        match self {
            SamVariant::VitB => 375_042_383,
            SamVariant::VitL => 1_249_524_607,
            SamVariant::VitH => 2_564_550_879,
        }
    }

    /// Official download URL.
    pub fn checkpoint_url(self) -> String {
        format!("{OFFICIAL_WEIGHTS_BASE_URL}{}", self.checkpoint_file_name())
    }

    /// The preset configuration.
    pub fn config(self) -> SamConfig {
        let (dim, blocks, heads, global) = match self {
            SamVariant::VitB => (768, 12, 12, vec![2, 5, 8, 11]),
            SamVariant::VitL => (1024, 24, 16, vec![5, 11, 17, 23]),
            SamVariant::VitH => (1280, 32, 16, vec![7, 15, 23, 31]),
        };
        SamConfig {
            name: self.name().to_string(),
            url: Some(self.checkpoint_url()),
            sha256: Some(self.checkpoint_sha256().to_string()),
            file_size: Some(self.checkpoint_size()),
            in_channels: 3,
            input_size: [1024, 1024],
            fixed_input_size: true,
            embed_dim: 256,
            nb_multimask_outputs: 3,
            mask_threshold: 0.0,
            encoder_patch_size: 16,
            encoder_embed_dim: dim,
            encoder_nb_blocks: blocks,
            encoder_nb_heads: heads,
            encoder_mlp_ratio: 4.0,
            encoder_drop_rate: 0.0,
            encoder_attn_drop_rate: 0.0,
            encoder_drop_path_rate: 0.0,
            encoder_norm_layer: "layer_norm_eps_1e-6".to_string(),
            encoder_act_layer: "gelu".to_string(),
            encoder_qkv_bias: true,
            encoder_global_attn_indices: global,
            encoder_window_size: 14,
            prompt_mask_hidden_dim: 16,
            decoder_nb_blocks: 2,
            decoder_nb_heads: 8,
            decoder_mlp_channels: 2048,
            decoder_iou_head_depth: 3,
            decoder_iou_hidden_dim: 256,
            mean: SAM_PIXEL_MEAN.to_vec(),
            std: SAM_PIXEL_STD.to_vec(),
        }
    }
}

impl std::fmt::Display for SamVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl SamConfig {
    /// The `vit_b` preset.
    pub fn vit_b() -> Self {
        SamVariant::VitB.config()
    }
    /// The `vit_l` preset.
    pub fn vit_l() -> Self {
        SamVariant::VitL.config()
    }
    /// The `vit_h` preset.
    pub fn vit_h() -> Self {
        SamVariant::VitH.config()
    }

    /// Parse a JSON config.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: SamConfig =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("bad JSON: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read a JSON config file.
    pub fn from_json_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Serialise to pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("SamConfig serialises")
    }

    /// Check that the values are consistent; every public constructor calls this.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.in_channels == 0 {
            return bad("in_channels must be at least 1".into());
        }
        if self.mean.len() != self.in_channels || self.std.len() != self.in_channels {
            return bad(format!(
                "mean and std need one value per input channel ({}), got {} and {}",
                self.in_channels,
                self.mean.len(),
                self.std.len()
            ));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s != 0.0)) {
            return bad("std values must be finite and non-zero".into());
        }
        let p = self.encoder_patch_size;
        if p == 0
            || !self.input_size[0].is_multiple_of(p)
            || !self.input_size[1].is_multiple_of(p)
            || self.input_size[0] == 0
            || self.input_size[1] == 0
        {
            return bad(format!(
                "input_size {:?} must be non-zero multiples of encoder_patch_size {p}",
                self.input_size
            ));
        }
        if self.encoder_nb_heads == 0
            || !self.encoder_embed_dim.is_multiple_of(self.encoder_nb_heads)
        {
            return bad(format!(
                "encoder_embed_dim {} must be divisible by encoder_nb_heads {}",
                self.encoder_embed_dim, self.encoder_nb_heads
            ));
        }
        if self.decoder_nb_heads == 0
            || !(self.embed_dim / 2).is_multiple_of(self.decoder_nb_heads)
            || !self.embed_dim.is_multiple_of(8)
        {
            return bad(format!(
                "embed_dim {} must be a multiple of 8 and embed_dim/2 divisible by decoder_nb_heads {}",
                self.embed_dim, self.decoder_nb_heads
            ));
        }
        if self.prompt_mask_hidden_dim < 4 || !self.prompt_mask_hidden_dim.is_multiple_of(4) {
            return bad(format!(
                "prompt_mask_hidden_dim {} must be a positive multiple of 4",
                self.prompt_mask_hidden_dim
            ));
        }
        if let Some(&i) = self
            .encoder_global_attn_indices
            .iter()
            .find(|&&i| i >= self.encoder_nb_blocks)
        {
            return bad(format!(
                "encoder_global_attn_indices contains {i}, but there are only {} blocks",
                self.encoder_nb_blocks
            ));
        }
        if self.encoder_window_size == 0 {
            return bad("encoder_window_size must be positive".into());
        }
        if self.encoder_drop_rate != 0.0
            || self.encoder_attn_drop_rate != 0.0
            || self.encoder_drop_path_rate != 0.0
        {
            return bad("drop rates must be 0 (this is an inference implementation)".into());
        }
        self.encoder_norm_eps()?;
        if self.encoder_act_layer != "gelu" {
            return bad(format!(
                "encoder_act_layer `{}` is not supported (only `gelu`)",
                self.encoder_act_layer
            ));
        }
        if self.decoder_iou_head_depth < 1
            || self.nb_multimask_outputs < 1
            || self.decoder_nb_blocks < 1
        {
            return bad("decoder_iou_head_depth, nb_multimask_outputs and decoder_nb_blocks must be at least 1".into());
        }
        let mlp_dim = self.encoder_mlp_dim();
        if mlp_dim == 0 {
            return bad("encoder_mlp_ratio gives an empty MLP".into());
        }
        Ok(())
    }

    /// Epsilon of the encoder LayerNorms, parsed from `encoder_norm_layer`.
    pub fn encoder_norm_eps(&self) -> Result<f64> {
        match self.encoder_norm_layer.as_str() {
            "layer_norm_eps_1e-6" => Ok(1e-6),
            "layer_norm_eps_1e-5" | "layer_norm" => Ok(1e-5),
            other => Err(Error::Config(format!(
                "encoder_norm_layer `{other}` is not supported (use layer_norm_eps_1e-6)"
            ))),
        }
    }

    /// Hidden size of the encoder MLPs: `int(embed_dim * mlp_ratio)`.
    pub fn encoder_mlp_dim(&self) -> usize {
        (self.encoder_embed_dim as f64 * self.encoder_mlp_ratio) as usize
    }

    /// Head dimension of the encoder attention.
    pub fn encoder_head_dim(&self) -> usize {
        self.encoder_embed_dim / self.encoder_nb_heads
    }

    /// Embedding grid `[h, w]` for the configured input size (64×64 for the official models).
    pub fn grid_size(&self) -> [usize; 2] {
        [
            self.input_size[0] / self.encoder_patch_size,
            self.input_size[1] / self.encoder_patch_size,
        ]
    }

    /// Low-resolution mask size `[h, w]` = 4 × grid (256×256 for the official models).
    pub fn mask_size(&self) -> [usize; 2] {
        let g = self.grid_size();
        [4 * g[0], 4 * g[1]]
    }

    /// Number of mask tokens in the decoder (`nb_multimask_outputs + 1`).
    pub fn nb_mask_tokens(&self) -> usize {
        self.nb_multimask_outputs + 1
    }

    /// Whether block `i` uses global attention.
    pub fn is_global_block(&self, i: usize) -> bool {
        self.encoder_global_attn_indices.contains(&i)
    }

    /// Which official variant this config matches architecturally, if any.
    pub fn variant(&self) -> Option<SamVariant> {
        SamVariant::ALL.into_iter().find(|v| {
            let p = v.config();
            p.encoder_embed_dim == self.encoder_embed_dim
                && p.encoder_nb_blocks == self.encoder_nb_blocks
                && p.encoder_nb_heads == self.encoder_nb_heads
                && p.encoder_global_attn_indices == self.encoder_global_attn_indices
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_round_trip_through_json() {
        for v in SamVariant::ALL {
            let cfg = v.config();
            cfg.validate().unwrap();
            let back = SamConfig::from_json(&cfg.to_json()).unwrap();
            assert_eq!(back, cfg);
            assert_eq!(cfg.grid_size(), [64, 64]);
            assert_eq!(cfg.mask_size(), [256, 256]);
            assert_eq!(cfg.variant(), Some(v));
            assert_eq!(SamVariant::from_name(v.name()).unwrap(), v);
        }
        assert_eq!(SamVariant::from_name("default").unwrap(), SamVariant::VitH);
        assert!(SamVariant::from_name("vit_x").is_err());
    }

    #[test]
    fn invalid_configs_are_rejected_with_the_field_named() {
        let mut cfg = SamConfig::vit_b();
        cfg.encoder_global_attn_indices = vec![2, 12];
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.contains("encoder_global_attn_indices"), "{msg}");

        let mut cfg = SamConfig::vit_b();
        cfg.in_channels = 1;
        let msg = cfg.validate().unwrap_err().to_string();
        assert!(msg.contains("mean and std"), "{msg}");

        let err = SamConfig::from_json("{\"name\": \"x\"}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field"), "{err}");
    }
}
