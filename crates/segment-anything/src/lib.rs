//! Meta's Segment Anything Model (SAM) in Rust, numerically faithful to the official PyTorch pipeline.

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod resize;
pub mod state_dict;

pub use config::{SamConfig, SamVariant};
pub use error::{Error, Result};
pub use state_dict::StateDict;
