//! Safetensors checkpoints read tensor by tensor with plain reads, straight into the buffers the
//! tensors keep. Memory-mapping would let the file's pages count towards the process's resident
//! memory while they are copied (twice the weights at the peak); reading keeps the peak at the
//! weights plus nothing.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

pub struct SafetensorsFiles {
    paths: Vec<PathBuf>,
    entries: HashMap<String, Entry>,
}

fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        _ => return None,
    })
}

impl SafetensorsFiles {
    pub fn open(paths: &[PathBuf]) -> Result<SafetensorsFiles> {
        let mut entries = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let mut f =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let len = f.metadata()?.len();
            let mut n = [0u8; 8];
            f.read_exact(&mut n)
                .with_context(|| format!("{} is not a safetensors file", path.display()))?;
            let n = u64::from_le_bytes(n);
            if n > 100 << 20 || 8 + n > len {
                bail!(
                    "{} is not a safetensors file (bad header length)",
                    path.display()
                );
            }
            let mut header = vec![0u8; n as usize];
            f.read_exact(&mut header)?;
            let header: serde_json::Map<String, Value> = serde_json::from_slice(&header)
                .with_context(|| {
                    format!("{}: the safetensors header is not JSON", path.display())
                })?;
            let data = 8 + n;
            for (name, info) in header {
                if name == "__metadata__" {
                    continue;
                }
                let dtype_name = info["dtype"].as_str().unwrap_or("");
                let Some(dtype) = dtype_of(dtype_name) else {
                    // Integer buffers and the like: never asked for by the decoder.
                    continue;
                };
                let shape: Vec<usize> = info["shape"]
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .filter_map(|d| d.as_u64().map(|d| d as usize))
                            .collect()
                    })
                    .unwrap_or_default();
                let (Some(a), Some(b)) = (
                    info["data_offsets"][0].as_u64(),
                    info["data_offsets"][1].as_u64(),
                ) else {
                    bail!("{}: tensor {name} has no data offsets", path.display());
                };
                let elems: usize = shape.iter().product();
                if b < a || data + b > len || (b - a) as usize != elems * dtype.size_in_bytes() {
                    bail!(
                        "{}: tensor {name} lies outside the file (truncated?)",
                        path.display()
                    );
                }
                entries.insert(
                    name,
                    Entry {
                        file: i,
                        dtype,
                        shape,
                        start: data + a,
                        end: data + b,
                    },
                );
            }
        }
        Ok(SafetensorsFiles {
            paths: paths.to_vec(),
            entries,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.entries.get(name).map(|e| e.dtype)
    }

    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// The tensor `name` as stored, on `device`; None when the files lack it.
    pub fn load(&self, name: &str, device: &Device) -> Result<Option<Tensor>> {
        let Some(e) = self.entries.get(name) else {
            return Ok(None);
        };
        let path = &self.paths[e.file];
        let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        f.seek(SeekFrom::Start(e.start))?;
        let bytes = (e.end - e.start) as usize;
        let read = |f: &mut File, buf: &mut [u8]| {
            f.read_exact(buf)
                .with_context(|| format!("{}: cannot read tensor {name}", path.display()))
        };
        // Read straight into the element buffer the tensor will own (files are little-endian,
        // as is every CPU owrun runs on).
        let t = match e.dtype {
            DType::F32 => Tensor::from_vec(
                read_into::<f32>(&mut f, bytes, read)?,
                e.shape.as_slice(),
                device,
            )?,
            DType::F16 => Tensor::from_vec(
                read_into::<half::f16>(&mut f, bytes, read)?,
                e.shape.as_slice(),
                device,
            )?,
            DType::BF16 => Tensor::from_vec(
                read_into::<half::bf16>(&mut f, bytes, read)?,
                e.shape.as_slice(),
                device,
            )?,
            _ => Tensor::from_vec(
                read_into::<f64>(&mut f, bytes, read)?,
                e.shape.as_slice(),
                device,
            )?,
        };
        Ok(Some(t))
    }
}

fn read_into<T: Copy + Default>(
    f: &mut File,
    bytes: usize,
    read: impl Fn(&mut File, &mut [u8]) -> Result<()>,
) -> Result<Vec<T>> {
    let n = bytes / std::mem::size_of::<T>();
    let mut v = vec![T::default(); n];
    // SAFETY: T is a plain float type (f32, f64, f16, bf16): every bit pattern is a valid value,
    // and the byte view covers exactly the vector's initialised elements.
    let view = unsafe {
        std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, n * std::mem::size_of::<T>())
    };
    read(f, view)?;
    Ok(v)
}

pub fn describe(paths: &[PathBuf]) -> String {
    match paths {
        [one] => one.display().to_string(),
        many => format!(
            "({} shards in {})",
            many.len(),
            many.first()
                .and_then(|p| p.parent())
                .unwrap_or(Path::new("."))
                .display()
        ),
    }
}
