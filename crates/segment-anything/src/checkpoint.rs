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

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::config::{SamConfig, SamVariant, SAM_PIXEL_MEAN, SAM_PIXEL_STD};
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

// ------------------------------------------------------------------------------------------------------------------
// safetensors
// ------------------------------------------------------------------------------------------------------------------

/// Load a safetensors file (memory-mapped) into a [`StateDict`] whose source name is the path.
///
/// Supported dtypes: f32, f16, bf16, f64, i64, i32, i16, u32, u8, plus bool (as u8) and i8 (widened to i16).
pub fn load_safetensors(path: &Path, device: &Device) -> Result<StateDict> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the map is read-only and lives only for this call; a concurrent truncation of the file by another
    // process is the usual (documented) caveat of memory-mapping.
    let mmap = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| io_err(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&mmap)
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
    view: &safetensors::tensor::TensorView<'_>,
    device: &Device,
) -> Result<Tensor> {
    {
        use safetensors::Dtype as S;
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

fn widen_i8(data: &[u8]) -> Vec<u8> {
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
fn tensor_le_bytes(t: &Tensor) -> candle_core::Result<Vec<u8>> {
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

// ------------------------------------------------------------------------------------------------------------------
// PyTorch zip checkpoints
// ------------------------------------------------------------------------------------------------------------------

/// Load a PyTorch checkpoint written by `torch.save(state_dict, path)` (zip format) without running Python.
///
/// The pickle is read by a strict, non-executing reader that only understands tensor rebuilding (see the module
/// docs). A dict of the form `{"state_dict": {...}}` or `{"model": {...}}` (training checkpoints) is unwrapped.
/// Strided / offset views into shared storages are materialised as contiguous tensors. The legacy non-zip format is
/// rejected with a message explaining how to re-save the file.
pub fn load_pth(path: &Path, device: &Device) -> Result<StateDict> {
    let (head, _) = read_head(path, 16)?;
    if !(head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06")) {
        if head.starts_with(&LEGACY_MAGIC) || head.first() == Some(&0x80) {
            return Err(ckpt_err(
                path,
                format!(
                    "uses the legacy (pre-1.6, non-zip) torch.save format, which is not supported; {LEGACY_HINT}"
                ),
            ));
        }
        return Err(ckpt_err(
            path,
            "not a PyTorch checkpoint: not a zip archive (torch.save files start with `PK`)",
        ));
    }
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        ckpt_err(
            path,
            format!("cannot read the zip archive (truncated or corrupt file?): {e}"),
        )
    })?;

    // torch.save writes `<archive>/data.pkl` plus `<archive>/data/<key>` storages, all under one top-level folder.
    let pkl_name = archive
        .file_names()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .min()
        .map(str::to_string)
        .ok_or_else(|| {
            ckpt_err(
                path,
                "the zip archive has no `<archive>/data.pkl` entry: not a torch.save checkpoint",
            )
        })?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let pkl = read_entry(&mut archive, &pkl_name, path, None)?;

    let big_endian = match archive.index_for_name(&format!("{prefix}byteorder")) {
        None => false,
        Some(_) => {
            let b = read_entry(&mut archive, &format!("{prefix}byteorder"), path, Some(64))?;
            match String::from_utf8_lossy(&b).trim() {
                "little" => false,
                "big" => true,
                other => {
                    return Err(ckpt_err(
                        path,
                        format!("unknown byte order `{other}` in `{prefix}byteorder`"),
                    ))
                }
            }
        }
    };

    let mut up = pickle::Unpickler::new(&pkl);
    let root = up
        .load()
        .map_err(|m| ckpt_err(path, format!("{pkl_name}: {m}")))?;
    let entries = pickle::state_dict_entries(&up, &root)
        .map_err(|m| ckpt_err(path, format!("{pkl_name}: {m}")))?;

    // Read each storage once and cut every tensor that views it.
    let mut by_storage: BTreeMap<usize, Vec<(String, pickle::TensorRef)>> = BTreeMap::new();
    for (key, t) in entries {
        by_storage.entry(t.storage).or_default().push((key, t));
    }
    let mut sd = StateDict::new(path.display().to_string());
    for (storage_idx, tensors) in by_storage {
        let storage = up.storage(storage_idx).clone();
        let entry_name = format!("{prefix}data/{}", storage.key);
        let elem = storage.kind.elem_size;
        let needed = storage.numel.checked_mul(elem).ok_or_else(|| {
            ckpt_err(
                path,
                format!(
                    "storage `{entry_name}` declares an absurd size ({} elements)",
                    storage.numel
                ),
            )
        })?;
        if archive.index_for_name(&entry_name).is_none() {
            return Err(ckpt_err(
                path,
                format!(
                    "storage entry `{entry_name}` (used by `{}`) is missing from the archive",
                    tensors[0].0
                ),
            ));
        }
        let buf = read_entry(&mut archive, &entry_name, path, Some(needed))?;
        if buf.len() < needed {
            return Err(ckpt_err(
                path,
                format!(
                    "storage `{entry_name}` holds {} bytes but the pickle declares {} {} elements ({needed} bytes); \
                     the file is truncated or corrupt",
                    buf.len(),
                    storage.numel,
                    storage.kind.torch_name
                ),
            ));
        }
        for (key, t) in tensors {
            let tensor = build_tensor(&buf, &storage, &t, big_endian, device).map_err(|m| {
                ckpt_err(
                    path,
                    format!(
                        "tensor `{key}` (shape {:?}, stride {:?}, offset {}, storage `{entry_name}`): {m}",
                        t.size, t.stride, t.offset
                    ),
                )
            })?;
            sd.insert(key, tensor);
        }
    }
    Ok(sd)
}

/// Read a whole zip entry. `cap` limits the initial reservation (entry sizes come from the file and may lie).
fn read_entry<R: Read + std::io::Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    path: &Path,
    cap: Option<usize>,
) -> Result<Vec<u8>> {
    let mut f = archive
        .by_name(name)
        .map_err(|e| ckpt_err(path, format!("cannot open zip entry `{name}`: {e}")))?;
    let declared = usize::try_from(f.size()).unwrap_or(usize::MAX);
    let reserve = declared.min(cap.unwrap_or(64 << 20));
    let mut buf = Vec::new();
    buf.try_reserve_exact(reserve).map_err(|_| {
        ckpt_err(
            path,
            format!("cannot allocate {reserve} bytes for zip entry `{name}`"),
        )
    })?;
    f.read_to_end(&mut buf).map_err(|e| {
        ckpt_err(
            path,
            format!("cannot read zip entry `{name}` (truncated or corrupt file?): {e}"),
        )
    })?;
    Ok(buf)
}

/// Materialise one tensor view of a storage as a contiguous candle tensor.
fn build_tensor(
    buf: &[u8],
    storage: &pickle::StorageRef,
    t: &pickle::TensorRef,
    big_endian: bool,
    device: &Device,
) -> std::result::Result<Tensor, String> {
    let elem = storage.kind.elem_size;
    if t.size.len() != t.stride.len() {
        return Err(format!(
            "size has {} dimensions but stride has {}",
            t.size.len(),
            t.stride.len()
        ));
    }
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .ok_or("the shape overflows")?;
    let bytes: Cow<'_, [u8]> = if numel == 0 {
        Cow::Borrowed(&[])
    } else {
        // Highest element index the view touches.
        let mut last = t.offset;
        for (&s, &st) in t.size.iter().zip(&t.stride) {
            last = (s - 1)
                .checked_mul(st)
                .and_then(|x| x.checked_add(last))
                .ok_or("the strides overflow")?;
        }
        if last >= storage.numel {
            return Err(format!(
                "the view reads element {last} but the storage has only {} elements",
                storage.numel
            ));
        }
        if is_contiguous(&t.size, &t.stride) {
            // `last < storage.numel` and the buffer holds `storage.numel` elements: in bounds.
            Cow::Borrowed(&buf[t.offset * elem..(last + 1) * elem])
        } else {
            let total = numel.checked_mul(elem).ok_or("the tensor is too large")?;
            let mut out = Vec::new();
            out.try_reserve_exact(total)
                .map_err(|_| format!("cannot allocate {total} bytes for the tensor"))?;
            gather(buf, elem, t.offset, &t.size, &t.stride, &mut out);
            Cow::Owned(out)
        }
    };
    let bytes = if big_endian && elem > 1 {
        let mut b = bytes.into_owned();
        for chunk in b.chunks_exact_mut(elem) {
            chunk.reverse();
        }
        Cow::Owned(b)
    } else {
        bytes
    };
    use pickle::TorchDtype as D;
    let (dtype, bytes) = match storage.kind.dtype {
        D::F32 => (DType::F32, bytes),
        D::F16 => (DType::F16, bytes),
        D::BF16 => (DType::BF16, bytes),
        D::F64 => (DType::F64, bytes),
        D::I64 => (DType::I64, bytes),
        D::I32 => (DType::I32, bytes),
        D::I16 => (DType::I16, bytes),
        D::I8 => (DType::I16, Cow::Owned(widen_i8(&bytes))),
        D::U8 | D::Bool => (DType::U8, bytes),
    };
    Tensor::from_raw_buffer(&bytes, dtype, &t.size, device).map_err(|e| e.to_string())
}

fn is_contiguous(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&s, &st) in size.iter().zip(stride).rev() {
        if s != 1 && st != expected {
            return false;
        }
        expected = expected.saturating_mul(s);
    }
    true
}

/// Append the elements of a non-contiguous strided view (bounds already checked) to `out`, in row-major order.
fn gather(
    buf: &[u8],
    elem: usize,
    offset: usize,
    size: &[usize],
    stride: &[usize],
    out: &mut Vec<u8>,
) {
    let nd = size.len();
    // Innermost run: contiguous when the last stride is 1.
    let (inner, inner_contig) = match (size.last(), stride.last()) {
        (Some(&s), Some(&1)) => (s, true),
        _ => (1, false),
    };
    let outer_dims = if inner_contig { nd - 1 } else { nd };
    let mut idx = vec![0usize; outer_dims];
    loop {
        let base = offset
            + idx
                .iter()
                .zip(stride)
                .map(|(&i, &st)| i * st)
                .sum::<usize>();
        let len = if inner_contig { inner } else { 1 };
        out.extend_from_slice(&buf[base * elem..(base + len) * elem]);
        // Odometer increment over the outer dimensions.
        let mut d = outer_dims;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// A restricted, non-executing reader for the pickles written by `torch.save`.
mod pickle {
    use std::collections::HashMap;
    use std::rc::Rc;

    /// Element types of torch storages.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum TorchDtype {
        F32,
        F16,
        BF16,
        F64,
        I64,
        I32,
        I16,
        I8,
        U8,
        Bool,
    }

    /// A `torch.*Storage` type.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) struct StorageKind {
        pub torch_name: &'static str,
        pub dtype: TorchDtype,
        pub elem_size: usize,
    }

    const STORAGES: &[StorageKind] = &[
        StorageKind {
            torch_name: "FloatStorage",
            dtype: TorchDtype::F32,
            elem_size: 4,
        },
        StorageKind {
            torch_name: "HalfStorage",
            dtype: TorchDtype::F16,
            elem_size: 2,
        },
        StorageKind {
            torch_name: "BFloat16Storage",
            dtype: TorchDtype::BF16,
            elem_size: 2,
        },
        StorageKind {
            torch_name: "DoubleStorage",
            dtype: TorchDtype::F64,
            elem_size: 8,
        },
        StorageKind {
            torch_name: "LongStorage",
            dtype: TorchDtype::I64,
            elem_size: 8,
        },
        StorageKind {
            torch_name: "IntStorage",
            dtype: TorchDtype::I32,
            elem_size: 4,
        },
        StorageKind {
            torch_name: "ShortStorage",
            dtype: TorchDtype::I16,
            elem_size: 2,
        },
        StorageKind {
            torch_name: "CharStorage",
            dtype: TorchDtype::I8,
            elem_size: 1,
        },
        StorageKind {
            torch_name: "ByteStorage",
            dtype: TorchDtype::U8,
            elem_size: 1,
        },
        StorageKind {
            torch_name: "BoolStorage",
            dtype: TorchDtype::Bool,
            elem_size: 1,
        },
        StorageKind {
            torch_name: "UntypedStorage",
            dtype: TorchDtype::U8,
            elem_size: 1,
        },
    ];

    /// The only callables a checkpoint may name.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Global {
        OrderedDict,
        RebuildTensorV2,
        RebuildParameter,
        Storage(StorageKind),
    }

    fn resolve_global(module: &str, name: &str) -> Result<Global, String> {
        match (module, name) {
            ("collections", "OrderedDict") => Ok(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
            ("torch", n) | ("torch.storage", n) if n.ends_with("Storage") => STORAGES
                .iter()
                .find(|k| k.torch_name == n)
                .map(|k| Global::Storage(*k))
                .ok_or_else(|| {
                    format!("unsupported tensor storage type `{module}.{name}` (supported: f32, f16, bf16, f64, i64, i32, i16, i8, u8, bool)")
                }),
            _ => Err(format!(
                "refusing to load: pickle references `{module}.{name}`, only tensor rebuilding is allowed"
            )),
        }
    }

    /// A storage as described by the pickle's persistent id.
    #[derive(Debug, Clone)]
    pub(super) struct StorageRef {
        pub key: String,
        pub kind: StorageKind,
        pub numel: usize,
    }

    /// A tensor view: storage (arena index), element offset, size, stride.
    #[derive(Debug, Clone)]
    pub(super) struct TensorRef {
        pub storage: usize,
        pub offset: usize,
        pub size: Vec<usize>,
        pub stride: Vec<usize>,
    }

    /// Pickle values. Containers live in an arena so that values stay flat (no recursive drops, shared mutation as in
    /// Python, cycles harmless).
    #[derive(Debug, Clone)]
    #[allow(dead_code)] // scalar payloads are only kept for `Debug` output
    pub(super) enum Value {
        None,
        Bool(bool),
        Int(i64),
        Float(f64),
        Str(Rc<str>),
        Bytes(Rc<[u8]>),
        Global(Global),
        Obj(usize),
    }

    #[derive(Debug)]
    enum Obj {
        Tuple(Vec<Value>),
        List(Vec<Value>),
        Dict(Vec<(Value, Value)>),
        Storage(StorageRef),
        Tensor(TensorRef),
    }

    pub(super) struct Unpickler<'a> {
        data: &'a [u8],
        pos: usize,
        stack: Vec<Value>,
        marks: Vec<usize>,
        memo: HashMap<u32, Value>,
        arena: Vec<Obj>,
    }

    type R<T> = Result<T, String>;

    impl<'a> Unpickler<'a> {
        pub fn new(data: &'a [u8]) -> Self {
            Self {
                data,
                pos: 0,
                stack: Vec::new(),
                marks: Vec::new(),
                memo: HashMap::new(),
                arena: Vec::new(),
            }
        }

        pub fn storage(&self, idx: usize) -> &StorageRef {
            match &self.arena[idx] {
                Obj::Storage(s) => s,
                _ => unreachable!("tensor refs always point at storages"),
            }
        }

        fn take(&mut self, n: usize) -> R<&'a [u8]> {
            let end = self
                .pos
                .checked_add(n)
                .filter(|&e| e <= self.data.len())
                .ok_or_else(|| {
                    format!(
                        "pickle truncated at byte {} (needed {n} more bytes)",
                        self.pos
                    )
                })?;
            let s = &self.data[self.pos..end];
            self.pos = end;
            Ok(s)
        }
        fn u8(&mut self) -> R<u8> {
            Ok(self.take(1)?[0])
        }
        fn u16(&mut self) -> R<u16> {
            Ok(u16::from_le_bytes(
                self.take(2)?.try_into().map_err(|_| "short read")?,
            ))
        }
        fn u32(&mut self) -> R<u32> {
            Ok(u32::from_le_bytes(
                self.take(4)?.try_into().map_err(|_| "short read")?,
            ))
        }
        fn u64(&mut self) -> R<u64> {
            Ok(u64::from_le_bytes(
                self.take(8)?.try_into().map_err(|_| "short read")?,
            ))
        }
        fn line(&mut self) -> R<&'a str> {
            let rest = &self.data[self.pos..];
            let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| {
                format!("pickle truncated at byte {}: unterminated line", self.pos)
            })?;
            let s = std::str::from_utf8(&rest[..n])
                .map_err(|_| format!("invalid UTF-8 at byte {}", self.pos))?;
            self.pos += n + 1;
            Ok(s)
        }
        fn string(&mut self, n: u64) -> R<Value> {
            let n = usize::try_from(n).map_err(|_| "string too long".to_string())?;
            let at = self.pos;
            let b = self.take(n)?;
            let s =
                std::str::from_utf8(b).map_err(|_| format!("invalid UTF-8 string at byte {at}"))?;
            Ok(Value::Str(Rc::from(s)))
        }
        fn bytes(&mut self, n: u64) -> R<Value> {
            let n = usize::try_from(n).map_err(|_| "bytes too long".to_string())?;
            Ok(Value::Bytes(Rc::from(self.take(n)?)))
        }
        fn pop(&mut self) -> R<Value> {
            if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
                return Err(format!(
                    "malformed pickle at byte {}: pop across a MARK",
                    self.pos
                ));
            }
            self.stack
                .pop()
                .ok_or_else(|| format!("malformed pickle at byte {}: stack underflow", self.pos))
        }
        fn pop_mark(&mut self) -> R<Vec<Value>> {
            let m = self
                .marks
                .pop()
                .ok_or_else(|| format!("malformed pickle at byte {}: no MARK", self.pos))?;
            Ok(self.stack.split_off(m))
        }
        fn top(&self) -> R<&Value> {
            self.stack
                .last()
                .ok_or_else(|| format!("malformed pickle at byte {}: empty stack", self.pos))
        }
        fn alloc(&mut self, o: Obj) -> Value {
            self.arena.push(o);
            Value::Obj(self.arena.len() - 1)
        }
        fn memo_get(&self, i: u32) -> R<Value> {
            self.memo.get(&i).cloned().ok_or_else(|| {
                format!(
                    "malformed pickle at byte {}: memo entry {i} not found",
                    self.pos
                )
            })
        }

        fn type_name(&self, v: &Value) -> &'static str {
            match v {
                Value::None => "None",
                Value::Bool(_) => "bool",
                Value::Int(_) => "int",
                Value::Float(_) => "float",
                Value::Str(_) => "str",
                Value::Bytes(_) => "bytes",
                Value::Global(_) => "global",
                Value::Obj(i) => match &self.arena[*i] {
                    Obj::Tuple(_) => "tuple",
                    Obj::List(_) => "list",
                    Obj::Dict(_) => "dict",
                    Obj::Storage(_) => "storage",
                    Obj::Tensor(_) => "tensor",
                },
            }
        }

        fn tuple_items(&self, v: &Value, what: &str) -> R<Vec<Value>> {
            match v {
                Value::Obj(i) => match &self.arena[*i] {
                    Obj::Tuple(t) | Obj::List(t) => Ok(t.clone()),
                    _ => Err(format!(
                        "{what}: expected a tuple, got {}",
                        self.type_name(v)
                    )),
                },
                _ => Err(format!(
                    "{what}: expected a tuple, got {}",
                    self.type_name(v)
                )),
            }
        }

        fn usize_of(&self, v: &Value, what: &str) -> R<usize> {
            match v {
                Value::Int(i) => {
                    usize::try_from(*i).map_err(|_| format!("{what}: negative value {i}"))
                }
                _ => Err(format!(
                    "{what}: expected an int, got {}",
                    self.type_name(v)
                )),
            }
        }

        fn usizes(&self, v: &Value, what: &str) -> R<Vec<usize>> {
            self.tuple_items(v, what)?
                .iter()
                .map(|x| self.usize_of(x, what))
                .collect()
        }

        fn dict_mut(&mut self, v: &Value, op: &str) -> R<&mut Vec<(Value, Value)>> {
            let name = self.type_name(v);
            match v {
                Value::Obj(i) => match &mut self.arena[*i] {
                    Obj::Dict(d) => Ok(d),
                    _ => Err(format!("malformed pickle: {op} on a {name}")),
                },
                _ => Err(format!("malformed pickle: {op} on a {name}")),
            }
        }

        /// Run the pickle to its STOP opcode and return the root value.
        pub fn load(&mut self) -> R<Value> {
            loop {
                let at = self.pos;
                let op = self
                    .u8()
                    .map_err(|_| format!("pickle truncated at byte {at}: no STOP opcode"))?;
                match op {
                    0x80 => {
                        let proto = self.u8()?;
                        if proto > 5 {
                            return Err(format!("unsupported pickle protocol {proto}"));
                        }
                    }
                    0x95 => {
                        self.u64()?; // FRAME: just a length hint
                    }
                    b'c' => {
                        let module = self.line()?;
                        let name = self.line()?;
                        let g = resolve_global(module, name)?;
                        self.stack.push(Value::Global(g));
                    }
                    0x93 => {
                        let name = self.pop()?;
                        let module = self.pop()?;
                        match (&module, &name) {
                            (Value::Str(m), Value::Str(n)) => {
                                let g = resolve_global(m, n)?;
                                self.stack.push(Value::Global(g));
                            }
                            _ => return Err(format!("malformed pickle at byte {at}: STACK_GLOBAL needs two strings")),
                        }
                    }
                    b'q' => {
                        let i = self.u8()? as u32;
                        let v = self.top()?.clone();
                        self.memo.insert(i, v);
                    }
                    b'r' => {
                        let i = self.u32()?;
                        let v = self.top()?.clone();
                        self.memo.insert(i, v);
                    }
                    0x94 => {
                        let i = u32::try_from(self.memo.len()).map_err(|_| "memo too large".to_string())?;
                        let v = self.top()?.clone();
                        self.memo.insert(i, v);
                    }
                    b'h' => {
                        let i = self.u8()? as u32;
                        let v = self.memo_get(i)?;
                        self.stack.push(v);
                    }
                    b'j' => {
                        let i = self.u32()?;
                        let v = self.memo_get(i)?;
                        self.stack.push(v);
                    }
                    b'(' => self.marks.push(self.stack.len()),
                    b'}' => {
                        let v = self.alloc(Obj::Dict(Vec::new()));
                        self.stack.push(v);
                    }
                    b']' => {
                        let v = self.alloc(Obj::List(Vec::new()));
                        self.stack.push(v);
                    }
                    b')' => {
                        let v = self.alloc(Obj::Tuple(Vec::new()));
                        self.stack.push(v);
                    }
                    b't' => {
                        let items = self.pop_mark()?;
                        let v = self.alloc(Obj::Tuple(items));
                        self.stack.push(v);
                    }
                    0x85..=0x87 => {
                        let n = (op - 0x84) as usize;
                        let mut items = Vec::with_capacity(n);
                        for _ in 0..n {
                            items.push(self.pop()?);
                        }
                        items.reverse();
                        let v = self.alloc(Obj::Tuple(items));
                        self.stack.push(v);
                    }
                    b'J' => {
                        let v = self.u32()? as i32;
                        self.stack.push(Value::Int(v as i64));
                    }
                    b'K' => {
                        let v = self.u8()?;
                        self.stack.push(Value::Int(v as i64));
                    }
                    b'M' => {
                        let v = self.u16()?;
                        self.stack.push(Value::Int(v as i64));
                    }
                    0x8a => {
                        let n = self.u8()? as usize;
                        let b = self.take(n)?;
                        if n > 8 {
                            return Err(format!("integer of {n} bytes at byte {at} is too large"));
                        }
                        let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
                        buf[..n].copy_from_slice(b);
                        self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                    }
                    b'X' => {
                        let n = self.u32()? as u64;
                        let v = self.string(n)?;
                        self.stack.push(v);
                    }
                    0x8c => {
                        let n = self.u8()? as u64;
                        let v = self.string(n)?;
                        self.stack.push(v);
                    }
                    0x8d => {
                        let n = self.u64()?;
                        let v = self.string(n)?;
                        self.stack.push(v);
                    }
                    b'B' => {
                        let n = self.u32()? as u64;
                        let v = self.bytes(n)?;
                        self.stack.push(v);
                    }
                    b'C' => {
                        let n = self.u8()? as u64;
                        let v = self.bytes(n)?;
                        self.stack.push(v);
                    }
                    0x8e => {
                        let n = self.u64()?;
                        let v = self.bytes(n)?;
                        self.stack.push(v);
                    }
                    0x88 => self.stack.push(Value::Bool(true)),
                    0x89 => self.stack.push(Value::Bool(false)),
                    b'N' => self.stack.push(Value::None),
                    b'G' => {
                        let b = self.take(8)?;
                        let v = f64::from_be_bytes(b.try_into().map_err(|_| "short read")?);
                        self.stack.push(Value::Float(v));
                    }
                    b's' => {
                        let value = self.pop()?;
                        let key = self.pop()?;
                        let d = self.top()?.clone();
                        self.dict_mut(&d, "SETITEM")?.push((key, value));
                    }
                    b'u' => {
                        let items = self.pop_mark()?;
                        if items.len() % 2 != 0 {
                            return Err(format!("malformed pickle at byte {at}: SETITEMS with an odd item count"));
                        }
                        let d = self.top()?.clone();
                        let dict = self.dict_mut(&d, "SETITEMS")?;
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            dict.push((k, v));
                        }
                    }
                    b'a' | b'e' => {
                        let items = if op == b'a' { vec![self.pop()?] } else { self.pop_mark()? };
                        let l = self.top()?.clone();
                        let name = self.type_name(&l);
                        match l {
                            Value::Obj(i) => match &mut self.arena[i] {
                                Obj::List(v) => v.extend(items),
                                _ => return Err(format!("malformed pickle at byte {at}: APPEND on a {name}")),
                            },
                            _ => return Err(format!("malformed pickle at byte {at}: APPEND on a {name}")),
                        }
                    }
                    b'R' => {
                        let args = self.pop()?;
                        let callable = self.pop()?;
                        let v = self.reduce(&callable, &args).map_err(|m| format!("at byte {at}: {m}"))?;
                        self.stack.push(v);
                    }
                    b'b' => {
                        let state = self.pop()?;
                        let obj = self.top()?.clone();
                        match (self.type_name(&obj), self.type_name(&state)) {
                            // OrderedDict attributes such as the state dict's `_metadata`: ignored.
                            ("dict", "dict" | "None" | "tuple") => {}
                            (o, s) => {
                                return Err(format!("malformed pickle at byte {at}: BUILD of a {o} with a {s} state"))
                            }
                        }
                    }
                    b'Q' => {
                        let pid = self.pop()?;
                        let v = self.persistent_load(&pid).map_err(|m| format!("at byte {at}: {m}"))?;
                        self.stack.push(v);
                    }
                    b'0' => {
                        self.pop()?;
                    }
                    b'1' => {
                        self.pop_mark()?;
                    }
                    b'2' => {
                        let v = self.top()?.clone();
                        self.stack.push(v);
                    }
                    b'.' => {
                        let v = self.pop()?;
                        return Ok(v);
                    }
                    other => {
                        return Err(format!(
                            "unsupported pickle opcode 0x{other:02x} at byte {at} (not something torch.save writes)"
                        ))
                    }
                }
            }
        }

        fn persistent_load(&mut self, pid: &Value) -> R<Value> {
            let items = self.tuple_items(pid, "persistent id")?;
            match items.as_slice() {
                [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), Value::Str(_location), numel]
                    if &**tag == "storage" =>
                {
                    let numel = self.usize_of(numel, "storage size")?;
                    Ok(self.alloc(Obj::Storage(StorageRef { key: key.to_string(), kind: *kind, numel })))
                }
                _ => Err("unsupported persistent id (expected ('storage', torch.*Storage, key, location, numel))".into()),
            }
        }

        fn reduce(&mut self, callable: &Value, args: &Value) -> R<Value> {
            let g = match callable {
                Value::Global(g) => *g,
                other => {
                    return Err(format!(
                        "REDUCE on a {}, which is not callable",
                        self.type_name(other)
                    ))
                }
            };
            let args = self.tuple_items(args, "REDUCE arguments")?;
            match g {
                Global::OrderedDict => {
                    let mut items = Vec::new();
                    match args.as_slice() {
                        [] => {}
                        [pairs] => {
                            for p in self.tuple_items(pairs, "OrderedDict items")? {
                                match self.tuple_items(&p, "OrderedDict item")?.as_slice() {
                                    [k, v] => items.push((k.clone(), v.clone())),
                                    _ => return Err("OrderedDict item is not a pair".into()),
                                }
                            }
                        }
                        _ => return Err("OrderedDict() called with too many arguments".into()),
                    }
                    Ok(self.alloc(Obj::Dict(items)))
                }
                Global::RebuildTensorV2 => {
                    if !(6..=7).contains(&args.len()) {
                        return Err(format!(
                            "_rebuild_tensor_v2 takes 6 or 7 arguments, got {}",
                            args.len()
                        ));
                    }
                    let storage = match &args[0] {
                        Value::Obj(i) if matches!(self.arena[*i], Obj::Storage(_)) => *i,
                        other => {
                            return Err(format!(
                                "_rebuild_tensor_v2: expected a storage, got {}",
                                self.type_name(other)
                            ))
                        }
                    };
                    let offset = self.usize_of(&args[1], "storage offset")?;
                    let size = self.usizes(&args[2], "tensor size")?;
                    let stride = self.usizes(&args[3], "tensor stride")?;
                    if !matches!(args[4], Value::Bool(_)) {
                        return Err("_rebuild_tensor_v2: requires_grad is not a bool".into());
                    }
                    Ok(self.alloc(Obj::Tensor(TensorRef {
                        storage,
                        offset,
                        size,
                        stride,
                    })))
                }
                Global::RebuildParameter => match args.as_slice() {
                    [t @ Value::Obj(i), Value::Bool(_), _hooks]
                        if matches!(self.arena[*i], Obj::Tensor(_)) =>
                    {
                        Ok(t.clone())
                    }
                    _ => Err("_rebuild_parameter: expected (tensor, requires_grad, hooks)".into()),
                },
                Global::Storage(k) => Err(format!("calling torch.{} is not allowed", k.torch_name)),
            }
        }

        fn dict_items(&self, v: &Value) -> Option<&[(Value, Value)]> {
            match v {
                Value::Obj(i) => match &self.arena[*i] {
                    Obj::Dict(d) => Some(d),
                    _ => None,
                },
                _ => None,
            }
        }

        fn tensor(&self, v: &Value) -> Option<&TensorRef> {
            match v {
                Value::Obj(i) => match &self.arena[*i] {
                    Obj::Tensor(t) => Some(t),
                    _ => None,
                },
                _ => None,
            }
        }
    }

    /// The `(key, tensor)` entries of the state dict held by the root value (unwrapping `{"state_dict": ...}` or
    /// `{"model": ...}`). Later duplicates of a key win, as in Python.
    pub(super) fn state_dict_entries(
        up: &Unpickler<'_>,
        root: &Value,
    ) -> R<Vec<(String, TensorRef)>> {
        let items = up.dict_items(root).ok_or_else(|| {
            format!(
                "the checkpoint holds a {}, not a dict of tensors",
                up.type_name(root)
            )
        })?;
        let all_tensors = items.iter().all(|(_, v)| up.tensor(v).is_some());
        let items = if all_tensors {
            items
        } else {
            let inner = ["state_dict", "model"].iter().find_map(|name| {
                items.iter().rev().find_map(|(k, v)| match k {
                    Value::Str(s) if &**s == *name => up.dict_items(v).map(|d| (*name, d)),
                    _ => None,
                })
            });
            match inner {
                Some((_, d)) => d,
                None => items,
            }
        };
        let mut out: Vec<(String, TensorRef)> = Vec::with_capacity(items.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (k, v) in items {
            let key = match k {
                Value::Str(s) => s.to_string(),
                other => {
                    return Err(format!(
                        "state dict key is a {}, not a string",
                        up.type_name(other)
                    ))
                }
            };
            let t = up
                .tensor(v)
                .ok_or_else(|| format!("entry `{key}` is a {}, not a tensor", up.type_name(v)))?
                .clone();
            match seen.get(&key) {
                Some(&i) => out[i] = (key, t),
                None => {
                    seen.insert(key.clone(), out.len());
                    out.push((key, t));
                }
            }
        }
        Ok(out)
    }
}

// ------------------------------------------------------------------------------------------------------------------
// Hugging Face transformers layout
// ------------------------------------------------------------------------------------------------------------------

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
fn split_index(s: &str) -> Option<(usize, &str)> {
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

fn map_hf_key(key: &str, mlp_mid_layers: &HashMap<String, usize>) -> String {
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
fn hf_mlp_mid_layers(sd: &StateDict) -> HashMap<String, usize> {
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

// ------------------------------------------------------------------------------------------------------------------
// Architecture inference
// ------------------------------------------------------------------------------------------------------------------

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
