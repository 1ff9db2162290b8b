//! PyTorch zip checkpoints (`torch.save`, PyTorch >= 1.6): the zip entries, tensor views into storages.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::state_dict::StateDict;

use super::pickle;
use super::safetensors::widen_i8;
use super::{ckpt_err, io_err, read_head, LEGACY_HINT, LEGACY_MAGIC};

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
