//! The SAM model: image encoder, prompt encoder and mask decoder, with loading and the end-to-end call.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint;
use crate::config::SamConfig;
use crate::error::{Error, Result};
use crate::image_encoder::ImageEncoder;
use crate::mask_decoder::{DecoderCache, MaskDecoder};
use crate::predictor::PredictOptions;
use crate::prompt_encoder::{PromptEncoder, Prompts};
use crate::resize::interpolate_bilinear;
use crate::state_dict::StateDict;
use crate::weights::Weights;

/// Inputs of the end-to-end model call ([`Sam::forward`]); every image has its own prompt set.
#[derive(Debug, Clone)]
pub struct SamInputs {
    /// Preprocessed (normalised, padded) images (N, H, W, C), channels last.
    pub images: Tensor,
    /// Prompts with batch N (points N×M1×2, labels N×M1, boxes N×M2×4, masks N×M3×H′×W′), model-input frame.
    pub prompts: Prompts,
}

/// Outputs of [`Sam::forward`].
#[derive(Debug, Clone)]
pub struct SamOutputs {
    /// Masks (N, K, H, W) at the padded input size, u8 0/1 (logits above the model's mask threshold).
    pub masks: Tensor,
    /// The upsampled logits (N, K, H, W) f32 the masks were thresholded from, when `return_logits` was asked.
    pub mask_logits: Option<Tensor>,
    /// Predicted IoU scores (N, K).
    pub scores: Tensor,
    /// Low-resolution logits (N, K, H′, W′).
    pub low_res_logits: Tensor,
}

/// Meta's Segment Anything Model.
#[derive(Debug, Clone)]
pub struct Sam {
    config: SamConfig,
    image_encoder: ImageEncoder,
    prompt_encoder: PromptEncoder,
    mask_decoder: MaskDecoder,
    device: Device,
}

impl Sam {
    /// Build from an official-layout state dict. Strict: every key must be used, with the right shape.
    pub fn from_state_dict(
        config: &SamConfig,
        state_dict: &StateDict,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let w = Weights::from_state_dict(state_dict, device);
        let sam = Self::build(config, &w, device)?;
        w.finish()?;
        Ok(sam)
    }

    /// A model with random weights (deterministic for `seed`), for tests and benchmarks.
    pub fn random(config: &SamConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let w = Weights::random(seed, device);
        Self::build(config, &w, device)
    }

    /// Random weights (deterministic for `seed`) as an official-layout state dict, e.g. to write a test
    /// checkpoint with [`crate::checkpoint::save_safetensors`]. Loading it gives the same model as [`Sam::random`].
    pub fn random_state_dict(config: &SamConfig, seed: u64, device: &Device) -> Result<StateDict> {
        config.validate()?;
        let w = Weights::random(seed, device);
        Self::build(config, &w, device)?;
        Ok(w.generated())
    }

    /// Load a `.pth` or `.safetensors` checkpoint (official or Hugging Face key layout).
    ///
    /// Without `config`, the architecture is inferred from the checkpoint (official presets are recognised).
    /// With a `config` naming a different official variant than the checkpoint holds, the error says so.
    pub fn load(
        path: impl AsRef<Path>,
        config: Option<&SamConfig>,
        device: &Device,
    ) -> Result<Self> {
        let path = path.as_ref();
        let sd = checkpoint::load_checkpoint(path, device)?;
        let inferred = checkpoint::infer_config(&sd);
        let config = match (config, inferred) {
            (Some(cfg), Ok(found)) => {
                if let Some(want) = cfg.variant() {
                    if found.variant() != Some(want) {
                        let have = match found.variant() {
                            Some(v) => format!("a {v} checkpoint"),
                            None => format!(
                                "a checkpoint of another architecture (encoder dim {}, {} blocks, {} heads)",
                                found.encoder_embed_dim, found.encoder_nb_blocks, found.encoder_nb_heads
                            ),
                        };
                        return Err(Error::Checkpoint {
                            path: path.to_path_buf(),
                            message: format!("this is {have}, but the model {want} was requested"),
                        });
                    }
                }
                cfg.clone()
            }
            (Some(cfg), Err(_)) => cfg.clone(),
            (None, Ok(found)) if found.variant().is_some() => found,
            (None, Ok(found)) => {
                return Err(Error::Checkpoint {
                    path: path.to_path_buf(),
                    message: format!(
                        "this checkpoint is not one of the official architectures (encoder dim {}, {} blocks); \
                         some of its hyper-parameters (attention heads) cannot be read from the weights, so pass its \
                         config (SamConfig JSON, `--config`)",
                        found.encoder_embed_dim, found.encoder_nb_blocks
                    ),
                })
            }
            (None, Err(e)) => return Err(e),
        };
        let sam = Self::from_state_dict(&config, &sd, device)?;
        // The checkpoint's tensors were copied into the model's layout: hand their memory back to the system
        // (glibc would keep it in its heap, counted as the process's memory).
        drop(sd);
        crate::memory::release_free_memory();
        Ok(sam)
    }

    fn build(config: &SamConfig, w: &Weights, device: &Device) -> Result<Self> {
        Ok(Self {
            image_encoder: ImageEncoder::load(config, &w.pp("image_encoder"))?,
            prompt_encoder: PromptEncoder::load(config, &w.pp("prompt_encoder"))?,
            mask_decoder: MaskDecoder::load(config, &w.pp("mask_decoder"))?,
            config: config.clone(),
            device: device.clone(),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &SamConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Embedding grid size `[gh, gw]` for the configured input size.
    pub fn grid_size(&self) -> [usize; 2] {
        self.config.grid_size()
    }

    /// Low-resolution mask size `[4gh, 4gw]`.
    pub fn mask_size(&self) -> [usize; 2] {
        self.config.mask_size()
    }

    /// Logit threshold for binary masks.
    pub fn mask_threshold(&self) -> f32 {
        self.config.mask_threshold
    }

    /// The image encoder.
    pub fn image_encoder(&self) -> &ImageEncoder {
        &self.image_encoder
    }

    /// The prompt encoder.
    pub fn prompt_encoder(&self) -> &PromptEncoder {
        &self.prompt_encoder
    }

    /// The mask decoder.
    pub fn mask_decoder(&self) -> &MaskDecoder {
        &self.mask_decoder
    }

    /// Encode preprocessed images NCHW (N, C, H, W) → embeddings (N, embed_dim, H/16, W/16).
    pub fn encode_images(&self, images: &Tensor) -> Result<Tensor> {
        self.image_encoder
            .forward(&images.to_dtype(DType::F32)?.to_device(&self.device)?)
    }

    /// Decode B prompt sets against one image embedding (1, D, gh, gw) (or B embeddings).
    ///
    /// Prompts are in the model-input frame of a padded input of `input_hw` = 16·(gh, gw). `cache`, made by
    /// [`Sam::prepare_decoder`] for this same embedding tensor, saves the decoder's prompt-independent work; it is
    /// not used for other embeddings or for prompts with a mask. K = 3 with `multimask_output`, else 1.
    /// Returns low-res logits (B, K, 4gh, 4gw) and IoU predictions (B, K).
    pub fn decode(
        &self,
        image_embeddings: &Tensor,
        prompts: &Prompts,
        multimask_output: bool,
        cache: Option<&DecoderCache>,
    ) -> Result<(Tensor, Tensor)> {
        let (_, _, gh, gw) = image_embeddings.dims4()?;
        let p = self.config.encoder_patch_size;
        let (sparse, dense) =
            self.prompt_encoder
                .forward(prompts, (gh * p, gw * p), (gh, gw), &self.device)?;
        let pe = self.prompt_encoder.dense_pe(gh, gw, &self.device)?;
        self.mask_decoder.forward(
            image_embeddings,
            &pe,
            &sparse,
            &dense,
            multimask_output,
            cache,
        )
    }

    /// Compute what later [`Sam::decode`] calls on this embedding (1, D, gh, gw) can reuse: the
    /// prompt-independent image side of the decoder's first layer, for prompts without a mask. The caller owns
    /// the result and passes it with the embedding ([`crate::SamPredictor`] does so for the image that is set);
    /// the model keeps nothing per embedding. Empty off the CPU.
    pub fn prepare_decoder(&self, image_embeddings: &Tensor) -> Result<DecoderCache> {
        let (_, _, gh, gw) = image_embeddings.dims4()?;
        let p = self.config.encoder_patch_size;
        let (_, dense) = self.prompt_encoder.forward(
            &Prompts::default(),
            (gh * p, gw * p),
            (gh, gw),
            &self.device,
        )?;
        let pe = self.prompt_encoder.dense_pe(gh, gw, &self.device)?;
        self.mask_decoder.prepare(image_embeddings, &pe, &dense)
    }

    /// The seed's end-to-end call: each image with its own prompt set.
    ///
    /// Images (N, H, W, C) preprocessed; returns masks (N, K, H, W) u8 upsampled bilinearly to the padded input
    /// size (with their f32 logits when `options.return_logits`), scores (N, K) and low-res logits (N, K, H′, W′).
    pub fn forward(&self, inputs: &SamInputs, options: PredictOptions) -> Result<SamOutputs> {
        let images = inputs
            .images
            .to_dtype(DType::F32)?
            .to_device(&self.device)?;
        let (n, h, w, _) = images.dims4()?;
        let b = inputs.prompts.batch_size()?;
        if b != n
            && !(inputs.prompts.points.is_none()
                && inputs.prompts.boxes.is_none()
                && inputs.prompts.masks.is_none())
        {
            return Err(Error::arg(
                "prompts",
                format!("batch size {b} differs from the number of images {n}"),
            ));
        }
        let embeddings = self.encode_images(&images.permute((0, 3, 1, 2))?.contiguous()?)?;
        let mut lows = Vec::with_capacity(n);
        let mut scores = Vec::with_capacity(n);
        for i in 0..n {
            let prompts = Prompts {
                points: select(&inputs.prompts.points, i)?,
                labels: select(&inputs.prompts.labels, i)?,
                boxes: select(&inputs.prompts.boxes, i)?,
                masks: select(&inputs.prompts.masks, i)?,
            };
            let (low, iou) = self.decode(
                &embeddings.narrow(0, i, 1)?,
                &prompts,
                options.multimask_output,
                None,
            )?;
            lows.push(low);
            scores.push(iou);
        }
        let logits = Tensor::cat(&lows, 0)?;
        let scores = Tensor::cat(&scores, 0)?;
        let (_, k, mh, mw) = logits.dims4()?;
        let up = interpolate_bilinear(
            &logits.flatten_all()?.to_vec1::<f32>()?,
            n * k,
            mh,
            mw,
            h,
            w,
        )?;
        let threshold = self.config.mask_threshold;
        let bin: Vec<u8> = up.iter().map(|&v| u8::from(v > threshold)).collect();
        let masks = Tensor::from_vec(bin, (n, k, h, w), &self.device)?;
        let mask_logits = options
            .return_logits
            .then(|| Tensor::from_vec(up, (n, k, h, w), &self.device))
            .transpose()?;
        Ok(SamOutputs {
            masks,
            mask_logits,
            scores,
            low_res_logits: logits,
        })
    }

    /// Zero-valued inputs of the right shapes for one image with one point: useful to warm up or trace the model.
    pub fn dummy_inputs(&self) -> Result<SamInputs> {
        let [h, w] = self.config.input_size;
        let c = self.config.in_channels;
        let [mh, mw] = self.mask_size();
        Ok(SamInputs {
            images: Tensor::zeros((1, h, w, c), DType::F32, &self.device)?,
            prompts: Prompts {
                points: Some(Tensor::zeros((1, 1, 2), DType::F32, &self.device)?),
                labels: Some(Tensor::ones((1, 1), DType::F32, &self.device)?),
                boxes: Some(Tensor::zeros((1, 0, 4), DType::F32, &self.device)?),
                masks: Some(Tensor::zeros((1, 0, mh, mw), DType::F32, &self.device)?),
            },
        })
    }
}

fn select(t: &Option<Tensor>, i: usize) -> Result<Option<Tensor>> {
    Ok(match t {
        Some(t) => Some(t.narrow(0, i, 1)?),
        None => None,
    })
}
