//! Meta's Segment Anything Model (SAM) in Rust, numerically faithful to the official PyTorch pipeline.

pub mod amg;
pub mod checkpoint;
pub mod config;
#[cfg(feature = "download")]
pub mod download;
pub mod error;
pub mod image_encoder;
pub mod image_io;
pub mod image_view;
pub mod io;
/// The CPU kernels: crate-private, reachable only for the kernel benchmark (feature `bench-internals`).
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
pub mod kernels;
#[cfg(not(feature = "bench-internals"))]
pub(crate) mod kernels;
pub mod layers;
pub mod mask_decoder;
pub mod memory;
pub mod predictor;
pub mod prompt_encoder;
pub mod resize;
pub mod rle;
pub mod sam;
pub mod state_dict;
pub(crate) mod transformer;
pub mod weights;

pub use amg::{AmgParams, AutomaticMaskGenerator, MaskRecord};
pub use config::{SamConfig, SamVariant};
pub use error::{Error, Result};
pub use image_io::{decode_image, load_image, ImageFileFormat, ImageLoadOptions};
pub use image_view::{ImageFormat, ImageView};
pub use mask_decoder::DecoderCache;
pub use predictor::{ImageEmbedding, PredictOptions, Prediction, PromptSet, SamPredictor};
pub use prompt_encoder::Prompts;
pub use sam::{Sam, SamInputs, SamOutputs};
pub use state_dict::StateDict;
