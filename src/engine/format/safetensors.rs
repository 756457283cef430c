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
    /// Tensors of a type owrun does not load (F8, integers), with that type's name: an error
    /// naming it if the decoder asks for one, never "missing".
    unsupported: HashMap<String, String>,
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

/// Bytes per element of every safetensors type (to check the table; None: not a type at all).
fn element_bytes(name: &str) -> Option<u64> {
    Some(match name {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// Where the header of one safetensors file puts each tensor, checked: a known type, a shape
/// whose size (with checked arithmetic) equals its byte range, ranges inside the data section
/// that do not overlap.
/// One tensor of a header, checked.
struct Placed {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

fn read_table(header: serde_json::Map<String, Value>, data: u64, len: u64) -> Result<Vec<Placed>> {
    let mut table = Vec::with_capacity(header.len());
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info["dtype"].as_str().unwrap_or("");
        let size = element_bytes(dtype)
            .with_context(|| format!("tensor {name} has an unknown type {:?}", info["dtype"]))?;
        let shape = info["shape"]
            .as_array()
            .with_context(|| format!("tensor {name} has no shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .with_context(|| {
                format!(
                    "tensor {name}: shape {} is not a list of sizes",
                    info["shape"]
                )
            })?;
        let bytes = shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d as u64))
            .with_context(|| format!("tensor {name}: shape {shape:?} overflows"))?;
        let (Some(a), Some(b)) = (
            info["data_offsets"][0].as_u64(),
            info["data_offsets"][1].as_u64(),
        ) else {
            bail!("tensor {name} has no data offsets");
        };
        let end = data.checked_add(b).filter(|&e| e <= len);
        if b < a || end.is_none() {
            bail!("tensor {name} (bytes {a}..{b} of the data) lies outside the file: truncated?");
        }
        if b - a != bytes {
            bail!(
                "tensor {name}: shape {shape:?} of {dtype} takes {bytes} bytes, but its data \
                 offsets span {}",
                b - a
            );
        }
        table.push(Placed {
            name,
            dtype: dtype.to_string(),
            shape,
            start: data + a,
            end: data + b,
        });
    }
    let mut ranges: Vec<(u64, u64, &str)> = table
        .iter()
        .map(|t| (t.start, t.end, t.name.as_str()))
        .collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        if pair[0].1 > pair[1].0 {
            bail!("tensors {} and {} overlap", pair[0].2, pair[1].2);
        }
    }
    Ok(table)
}

impl SafetensorsFiles {
    pub fn open(paths: &[PathBuf]) -> Result<SafetensorsFiles> {
        let mut entries = HashMap::new();
        let mut unsupported = HashMap::new();
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
            let table = read_table(header, 8 + n, len).with_context(|| {
                format!(
                    "{} is not a safetensors file owrun can read safely",
                    path.display()
                )
            })?;
            for Placed {
                name,
                dtype: dtype_name,
                shape,
                start,
                end,
            } in table
            {
                match dtype_of(&dtype_name) {
                    Some(dtype) => {
                        entries.insert(
                            name,
                            Entry {
                                file: i,
                                dtype,
                                shape,
                                start,
                                end,
                            },
                        );
                    }
                    None => {
                        unsupported.insert(name, dtype_name);
                    }
                }
            }
        }
        Ok(SafetensorsFiles {
            paths: paths.to_vec(),
            entries,
            unsupported,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The type tensor `name` is stored in (None: the files lack it; an error: a type owrun does
    /// not load).
    pub fn dtype(&self, name: &str) -> Result<Option<DType>> {
        self.refuse_unsupported(name)?;
        Ok(self.entries.get(name).map(|e| e.dtype))
    }

    fn refuse_unsupported(&self, name: &str) -> Result<()> {
        if let Some(dtype) = self.unsupported.get(name) {
            bail!(
                "tensor {name} is {dtype}, which owrun does not load (weights must be F32, F16, \
                 BF16 or F64: quantize the model to GGUF with llama.cpp, or use its 16-bit \
                 release)"
            );
        }
        Ok(())
    }

    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    /// The tensor `name` as stored, on `device`; None when the files lack it.
    pub fn load(&self, name: &str, device: &Device) -> Result<Option<Tensor>> {
        self.refuse_unsupported(name)?;
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
