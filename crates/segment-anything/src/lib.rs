//! Meta's Segment Anything Model (SAM) in Rust, numerically faithful to the official PyTorch pipeline.

pub mod checkpoint;
pub mod config;
pub mod error;
// pub mod image_encoder; (enabled once resize lands)
pub mod layers;
pub mod mask_decoder;
pub mod prompt_encoder;
pub mod resize;
// pub mod sam;
pub mod state_dict;
pub mod weights;

pub use config::{SamConfig, SamVariant};
pub use error::{Error, Result};
pub use prompt_encoder::Prompts;
// pub use sam::{Sam, SamInputs, SamOutputs};
pub use state_dict::StateDict;
