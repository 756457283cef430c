//! The GGUF container, read and checked before anything in it is trusted: the header, the
//! metadata (keys and typed values) and the tensor table (name, type, dimensions, where the
//! bytes are). Every count, length and size is checked against the file's own size with checked
//! arithmetic before anything is allocated for it, so a damaged or hostile file is an error
//! naming what is wrong, never a panic or an allocation of what the file claims.
//!
//! Layout (GGUF versions 2 and 3): the magic `GGUF`, the version, the tensor count and the
//! metadata count (u64 each); the metadata (key string, u32 value type, value); the tensor
//! table (name, u32 dimension count, u64 dimensions innermost first, u32 type, u64 offset into
//! the data); padding to `general.alignment` (32 by default); the tensor data.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::ggml::GgmlType;
pub use candle_core::quantized::gguf_file::Value as MetaValue;

const MAGIC: &[u8; 4] = b"GGUF";
/// Dimensions of a tensor at most (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Arrays inside arrays at most (the format allows nesting; no real file nests at all).
const MAX_NESTING: usize = 4;

/// Where one tensor's bytes are, and what they hold.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub ty: GgmlType,
    /// Row-major: the outermost dimension first (GGUF stores them innermost first).
    pub dims: Vec<usize>,
    /// Absolute position of the first byte in the file.
    pub start: u64,
    pub bytes: usize,
}

pub struct GgufContainer {
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: HashMap<String, TensorInfo>,
}

impl GgufContainer {
    /// Read the header and tables of `path` (the tensor data stays on disk).
    pub fn read(path: &Path) -> Result<GgufContainer> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        let mut r = Reader {
            inner: BufReader::with_capacity(1 << 16, file),
            pos: 0,
            len,
        };
        Self::parse(&mut r).with_context(|| {
            format!(
                "{} is not a GGUF file owrun can read safely",
                path.display()
            )
        })
    }

    fn parse(r: &mut Reader) -> Result<GgufContainer> {
        let mut magic = [0u8; 4];
        r.exact(&mut magic).context("too short for a GGUF header")?;
        ensure!(&magic == MAGIC, "it does not start with GGUF");
        let version = r.u32()?;
        ensure!(
            version == 2 || version == 3,
            "GGUF version {version} (owrun reads versions 2 and 3)"
        );
        let tensor_count = r.u64()?;
        let kv_count = r.u64()?;
        // Each entry takes at least 8 (name length) + 4 bytes: a count beyond that is a lie.
        ensure!(
            tensor_count <= r.remaining() / 12 && kv_count <= r.remaining() / 12,
            "it claims {tensor_count} tensors and {kv_count} metadata entries, more than its \
             {} bytes can hold",
            r.len
        );
        let mut metadata = HashMap::new();
        for i in 0..kv_count {
            let key = r
                .string()
                .with_context(|| format!("metadata entry {i}: its key"))?;
            let ty = r.u32()?;
            let value = r
                .value(ty, 0)
                .with_context(|| format!("metadata {key:?}"))?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(MetaValue::U32(a)) if a.is_power_of_two() => *a as u64,
            Some(v) => bail!("general.alignment {v:?} is not a power of two (u32)"),
        };
        let mut table = Vec::with_capacity(tensor_count.min(1 << 16) as usize);
        for i in 0..tensor_count {
            let name = r
                .string()
                .with_context(|| format!("tensor {i}: its name"))?;
            let n_dims = r.u32()?;
            ensure!(
                (1..=MAX_DIMS).contains(&n_dims),
                "tensor {name}: {n_dims} dimensions"
            );
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let ty = GgmlType::from_id(r.u32()?).with_context(|| format!("tensor {name}"))?;
            let offset = r.u64()?;
            table.push((name, dims, ty, offset));
        }
        let data_start = r
            .pos
            .div_ceil(alignment)
            .checked_mul(alignment)
            .context("overflow")?;
        let mut tensors = HashMap::with_capacity(table.len());
        let mut ranges = Vec::with_capacity(table.len());
        for (name, gguf_dims, ty, offset) in table {
            let info = tensor_info(&name, &gguf_dims, ty, offset, data_start, alignment, r.len)?;
            ranges.push((info.start, info.start + info.bytes as u64, name.clone()));
            if tensors.insert(name.clone(), info).is_some() {
                bail!("tensor {name} appears twice");
            }
        }
        ranges.sort();
        for pair in ranges.windows(2) {
            ensure!(
                pair[0].1 <= pair[1].0,
                "tensors {} and {} overlap",
                pair[0].2,
                pair[1].2
            );
        }
        Ok(GgufContainer { metadata, tensors })
    }
}

/// One tensor's entry, checked: dimensions that multiply without overflow, rows of whole blocks,
/// an aligned offset, bytes inside the file.
fn tensor_info(
    name: &str,
    gguf_dims: &[u64],
    ty: GgmlType,
    offset: u64,
    data_start: u64,
    alignment: u64,
    file_len: u64,
) -> Result<TensorInfo> {
    let mut elems: u64 = 1;
    for &d in gguf_dims {
        ensure!(d > 0, "tensor {name}: a dimension of 0");
        elems = elems
            .checked_mul(d)
            .with_context(|| format!("tensor {name}: dimensions {gguf_dims:?} overflow"))?;
    }
    let block = ty.block_len() as u64;
    ensure!(
        gguf_dims[0].is_multiple_of(block),
        "tensor {name}: rows of {} values are not whole {} blocks of {block}",
        gguf_dims[0],
        ty.name()
    );
    let bytes = (elems / block)
        .checked_mul(ty.block_bytes() as u64)
        .with_context(|| format!("tensor {name}: its size overflows"))?;
    ensure!(
        offset.is_multiple_of(alignment),
        "tensor {name}: offset {offset} is not aligned to {alignment} bytes"
    );
    let start = data_start
        .checked_add(offset)
        .with_context(|| format!("tensor {name}: offset {offset} overflows"))?;
    let end = start.checked_add(bytes).context("overflow")?;
    ensure!(
        end <= file_len,
        "tensor {name} ({bytes} bytes at {start}) lies past the end of the file ({file_len} \
         bytes): the file is cut short"
    );
    let dims = gguf_dims
        .iter()
        .rev()
        .map(|&d| usize::try_from(d).context("a dimension too large for this machine"))
        .collect::<Result<Vec<_>>>()?;
    Ok(TensorInfo {
        ty,
        dims,
        start,
        bytes: usize::try_from(bytes).context("a tensor too large for this machine")?,
    })
}

/// Reads the header, counting bytes, and never asks for more than the file has left.
struct Reader {
    inner: BufReader<File>,
    pos: u64,
    len: u64,
}

impl Reader {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        ensure!(
            buf.len() as u64 <= self.remaining(),
            "it ends in the middle of its header (at byte {})",
            self.pos
        );
        self.inner.read_exact(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.exact(&mut b)?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        ensure!(
            n <= self.remaining(),
            "a string of {n} bytes where {} are left",
            self.remaining()
        );
        let mut buf = vec![0u8; n as usize];
        self.exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>()?[0]),
            1 => MetaValue::I8(self.array::<1>()?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => MetaValue::Bool(self.array::<1>()?[0] != 0),
            8 => MetaValue::String(self.string()?),
            9 => {
                ensure!(depth < MAX_NESTING, "arrays nested too deep");
                let elem = self.u32()?;
                let n = self.u64()?;
                // The smallest element takes a byte: a count beyond what is left is a lie.
                ensure!(
                    n <= self.remaining(),
                    "an array of {n} values where {} bytes are left",
                    self.remaining()
                );
                let mut items = Vec::with_capacity((n as usize).min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            other => bail!("unknown value type {other}"),
        })
    }
}

/// `len` bytes of `file` from `start`.
pub fn read_range(file: &mut File, start: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut buf)?;
    Ok(buf)
}
