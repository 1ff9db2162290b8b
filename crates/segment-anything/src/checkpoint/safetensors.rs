//! safetensors files: memory-mapped loading and atomic writing.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::state_dict::StateDict;

use super::{ckpt_err, io_err};

/// Load a safetensors file (memory-mapped) into a [`StateDict`] whose source name is the path.
///
/// Supported dtypes: f32, f16, bf16, f64, i64, i32, i16, u32, u8, plus bool (as u8) and i8 (widened to i16).
pub fn load_safetensors(path: &Path, device: &Device) -> Result<StateDict> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the map is read-only and lives only for this call; a concurrent truncation of the file by another
    // process is the usual (documented) caveat of memory-mapping.
    let mmap = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| io_err(path, e))?;
    let st = ::safetensors::SafeTensors::deserialize(&mmap)
        .map_err(|e| ckpt_err(path, format!("not a valid safetensors file: {e}")))?;
    // Tensors are copied out of the map in parallel: the copies and the page faults of their fresh buffers are
    // most of the time a load takes.
    use rayon::prelude::*;
    let views: Vec<_> = st.iter().collect();
    let tensors = views
        .into_par_iter()
        .map(|(name, view)| {
            tensor_from_view(path, name, &view, device).map(|t| (name.to_string(), t))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(StateDict::from_tensors(path.display().to_string(), tensors))
}

/// One safetensors tensor as a candle tensor on `device` (copied).
fn tensor_from_view(
    path: &Path,
    name: &str,
    view: &::safetensors::tensor::TensorView<'_>,
    device: &Device,
) -> Result<Tensor> {
    {
        use ::safetensors::Dtype as S;
        let shape = view.shape();
        let data = view.data();
        let tensor = match view.dtype() {
            S::F32 => Tensor::from_raw_buffer(data, DType::F32, shape, device),
            S::F16 => Tensor::from_raw_buffer(data, DType::F16, shape, device),
            S::BF16 => Tensor::from_raw_buffer(data, DType::BF16, shape, device),
            S::F64 => Tensor::from_raw_buffer(data, DType::F64, shape, device),
            S::I64 => Tensor::from_raw_buffer(data, DType::I64, shape, device),
            S::I32 => Tensor::from_raw_buffer(data, DType::I32, shape, device),
            S::I16 => Tensor::from_raw_buffer(data, DType::I16, shape, device),
            S::U32 => Tensor::from_raw_buffer(data, DType::U32, shape, device),
            S::U8 | S::BOOL => Tensor::from_raw_buffer(data, DType::U8, shape, device),
            S::I8 => Tensor::from_raw_buffer(&widen_i8(data), DType::I16, shape, device),
            other => {
                return Err(ckpt_err(
                    path,
                    format!("tensor `{name}` has unsupported dtype {other}"),
                ))
            }
        }
        .map_err(|e| ckpt_err(path, format!("tensor `{name}` (shape {shape:?}): {e}")))?;
        Ok(tensor)
    }
}

pub(super) fn widen_i8(data: &[u8]) -> Vec<u8> {
    data.iter()
        .flat_map(|&b| (b as i8 as i16).to_le_bytes())
        .collect()
}

fn safetensors_dtype(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        DType::I64 => "I64",
        DType::I32 => "I32",
        DType::I16 => "I16",
        DType::U32 => "U32",
        DType::U8 => "U8",
        _ => return None,
    })
}

/// Little-endian bytes of a tensor's elements in row-major order (any layout, any device).
pub(super) fn tensor_le_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
    let t = t.flatten_all()?.to_device(&Device::Cpu)?;
    fn collect<T: candle_core::WithDType, const N: usize>(
        t: &Tensor,
        f: impl Fn(T) -> [u8; N],
    ) -> candle_core::Result<Vec<u8>> {
        let v = t.to_vec1::<T>()?;
        let mut out = Vec::with_capacity(v.len() * N);
        for x in v {
            out.extend_from_slice(&f(x));
        }
        Ok(out)
    }
    match t.dtype() {
        DType::F32 => collect::<f32, 4>(&t, f32::to_le_bytes),
        DType::F16 => collect::<half::f16, 2>(&t, half::f16::to_le_bytes),
        DType::BF16 => collect::<half::bf16, 2>(&t, half::bf16::to_le_bytes),
        DType::F64 => collect::<f64, 8>(&t, f64::to_le_bytes),
        DType::I64 => collect::<i64, 8>(&t, i64::to_le_bytes),
        DType::I32 => collect::<i32, 4>(&t, i32::to_le_bytes),
        DType::I16 => collect::<i16, 2>(&t, i16::to_le_bytes),
        DType::U32 => collect::<u32, 4>(&t, u32::to_le_bytes),
        DType::U8 => t.to_vec1::<u8>(),
        other => Err(candle_core::Error::Msg(format!(
            "dtype {other:?} cannot be serialised"
        ))),
    }
}

/// Write a state dict as a safetensors file (metadata `{"format": "pt"}`).
///
/// The data goes to a temporary file in the same directory which is then renamed over `path`, so `path` is never
/// left half-written. Tensors are written contiguous, in their own dtype (f32, f16, bf16, f64, i64, i32, i16, u32, u8).
pub fn save_safetensors(sd: &StateDict, path: &Path) -> Result<()> {
    // Header first: larger dtypes first (keeps every tensor aligned), then by name, as the safetensors crate does.
    let mut order: Vec<(&String, &Tensor)> = sd.iter().collect();
    order.sort_by(|a, b| {
        b.1.dtype()
            .size_in_bytes()
            .cmp(&a.1.dtype().size_in_bytes())
            .then_with(|| a.0.cmp(b.0))
    });
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0usize;
    for (key, t) in &order {
        let dtype = safetensors_dtype(t.dtype()).ok_or_else(|| {
            ckpt_err(
                path,
                format!(
                    "tensor `{key}` has dtype {:?}, which safetensors output does not support here",
                    t.dtype()
                ),
            )
        })?;
        let nbytes = t.elem_count() * t.dtype().size_in_bytes();
        header.insert(
            (*key).clone(),
            serde_json::json!({ "dtype": dtype, "shape": t.dims(), "data_offsets": [offset, offset + nbytes] }),
        );
        offset += nbytes;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| ckpt_err(path, format!("cannot encode the safetensors header: {e}")))?;
    while header.len() % 8 != 0 {
        header.push(b' ');
    }

    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::arg("path", format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> Result<()> {
        let file = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|_| w.write_all(&header))
            .map_err(|e| io_err(&tmp, e))?;
        for (key, t) in &order {
            let bytes = tensor_le_bytes(t)
                .map_err(|e| ckpt_err(path, format!("cannot read tensor `{key}`: {e}")))?;
            w.write_all(&bytes).map_err(|e| io_err(&tmp, e))?;
        }
        let file = w.into_inner().map_err(|e| io_err(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| io_err(&tmp, e))?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path, e)
    })
}
