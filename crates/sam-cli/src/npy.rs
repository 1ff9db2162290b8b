//! `.npy` reading and writing for float32 arrays (atomic writes).

use std::path::Path;

use anyhow::{bail, Context, Result};
use npyz::WriterBuilder;

/// Read an f32 (or f64, converted) `.npy` array in C order: (data, shape).
pub fn read_f32(path: &Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .with_context(|| format!("{} is not a .npy file", path.display()))?;
    if npy.order() != npyz::Order::C {
        bail!(
            "{}: Fortran-order arrays are not supported; save with np.ascontiguousarray",
            path.display()
        );
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let dtype = npy.dtype();
    let data: Vec<f32> = match npy.into_vec::<f32>() {
        Ok(v) => v,
        Err(_) => {
            let npy = npyz::NpyFile::new(&bytes[..])?;
            npy.into_vec::<f64>()
                .with_context(|| {
                    format!(
                        "{}: expected a float32 or float64 array, got {dtype:?}",
                        path.display()
                    )
                })?
                .into_iter()
                .map(|v| v as f32)
                .collect()
        }
    };
    Ok((data, shape))
}

/// Write an f32 array with `shape` to `path` via a temporary file.
pub fn write_f32(path: &Path, data: &[f32], shape: &[usize]) -> Result<()> {
    let mut buf = Vec::with_capacity(data.len() * 4 + 128);
    {
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(&mut buf)
            .begin_nd()?;
        w.extend(data.iter().copied())?;
        w.finish()?;
    }
    segment_anything::io::atomic_write(path, &buf)?;
    Ok(())
}
