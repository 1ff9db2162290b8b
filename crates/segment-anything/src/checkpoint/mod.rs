//! Checkpoint files: PyTorch `.pth` (zip + pickle) and safetensors.
//!
//! * [`load_pth`] reads a `torch.save`d state dict (the zip format of PyTorch ≥ 1.6) **without Python**, with a
//!   restricted pickle reader: the only globals it accepts are the ones `torch.save` needs to describe tensors
//!   (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter` and the
//!   `torch.*Storage` types). Nothing in the file is ever executed; any other global (`os.system`, `builtins.eval`,
//!   ...) makes the load fail.
//! * [`load_safetensors`] memory-maps a safetensors file.
//! * [`load_checkpoint`] detects the format from the file's content and maps Hugging Face `transformers` SAM keys to
//!   the official layout ([`hf_to_official`]).
//! * [`infer_config`] derives the architecture from the tensor shapes.
//! * [`save_safetensors`] / [`convert_pth_to_safetensors`] write safetensors files atomically.
//!
//! Tensors keep the dtype they have in the file, with two exceptions candle cannot represent: `int8` is widened to
//! `i16` and `bool` is stored as `u8` (0/1). The model code converts weights to f32 itself.

mod hf_keys;
mod infer;
mod pickle;
mod pth;
mod safetensors;

pub use self::hf_keys::{hf_to_official, is_hf_layout};
pub use self::infer::{infer_config, infer_config_from_shapes};
pub use self::pth::load_pth;
pub use self::safetensors::{load_safetensors, save_safetensors};

use std::fs::File;
use std::io::Read;
use std::path::Path;

use candle_core::Device;

use crate::error::{Error, Result};
use crate::state_dict::StateDict;

/// On-disk checkpoint formats understood by [`load_checkpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// A `torch.save` zip archive (`.pth`, `.pt`, `.bin`).
    Pth,
    /// A safetensors file.
    Safetensors,
}

/// Magic number that starts the legacy (pre-1.6, non-zip) `torch.save` format: `PROTO 2`, `LONG1 10 bytes`.
const LEGACY_MAGIC: [u8; 14] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

const LEGACY_HINT: &str = "re-save it with a recent PyTorch (>= 1.6), e.g. \
     `torch.save(torch.load(old, map_location=\"cpu\"), new)`, or convert it to safetensors";

fn ckpt_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Read up to `n` bytes from the start of a file.
fn read_head(path: &Path, n: usize) -> Result<(Vec<u8>, u64)> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut head = Vec::with_capacity(n);
    file.take(n as u64)
        .read_to_end(&mut head)
        .map_err(|e| io_err(path, e))?;
    Ok((head, len))
}

/// Detect the format of a checkpoint from its first bytes (not from its extension).
///
/// Errors if the file is neither a zip archive, nor a safetensors file; a legacy (non-zip) `torch.save` file gets a
/// dedicated message.
pub fn detect_format(path: &Path) -> Result<CheckpointFormat> {
    let (head, len) = read_head(path, 16)?;
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(CheckpointFormat::Pth);
    }
    if head.starts_with(&LEGACY_MAGIC) || head.first() == Some(&0x80) {
        return Err(ckpt_err(
            path,
            format!("uses the legacy (pre-1.6, non-zip) torch.save format, which is not supported; {LEGACY_HINT}"),
        ));
    }
    if head.len() >= 9 {
        let n = u64::from_le_bytes(head[..8].try_into().unwrap_or([0; 8]));
        if n >= 2 && n <= len - 8 && head[8] == b'{' {
            return Ok(CheckpointFormat::Safetensors);
        }
    }
    Err(ckpt_err(
        path,
        "not a PyTorch (torch.save zip) or safetensors checkpoint (unrecognised content)",
    ))
}

/// Load a checkpoint in any supported format, in the official key layout.
///
/// The format is detected from the content ([`detect_format`]). If the keys are in the Hugging Face `transformers`
/// layout (`vision_encoder.…`, `shared_image_embedding.…`, ...), they are mapped with [`hf_to_official`].
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<StateDict> {
    let sd = match detect_format(path)? {
        CheckpointFormat::Pth => load_pth(path, device)?,
        CheckpointFormat::Safetensors => load_safetensors(path, device)?,
    };
    if is_hf_layout(&sd) {
        hf_to_official(sd)
    } else {
        Ok(sd)
    }
}

/// Convert a `.pth` checkpoint to safetensors in the official key layout; returns the number of tensors written.
///
/// Hugging Face-layout checkpoints are mapped to the official layout. Tensors keep their dtype (f32 stays f32) and
/// are written contiguous. The output is written atomically (see [`save_safetensors`]).
pub fn convert_pth_to_safetensors(input: &Path, output: &Path) -> Result<usize> {
    let mut sd = load_pth(input, &Device::Cpu)?;
    if is_hf_layout(&sd) {
        sd = hf_to_official(sd)?;
    }
    save_safetensors(&sd, output)?;
    Ok(sd.len())
}
