//! A GGUF file taken apart and put back together, so the tests can build malformed variants of a
//! valid fixture: change or drop a metadata key, give a tensor other dimensions, type or offset,
//! or choose the alignment the data is padded to. Written from the format's description
//! (magic, version, counts, metadata, tensor table, padding, data), independently of owrun's
//! reader.

#![allow(dead_code)]

/// A metadata value, with the GGUF type it is written as.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type id and the elements.
    Arr(u32, Vec<Val>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Val {
    fn type_id(&self) -> u32 {
        match self {
            Val::U8(_) => 0,
            Val::I8(_) => 1,
            Val::U16(_) => 2,
            Val::I16(_) => 3,
            Val::U32(_) => 4,
            Val::I32(_) => 5,
            Val::F32(_) => 6,
            Val::Bool(_) => 7,
            Val::Str(_) => 8,
            Val::Arr(..) => 9,
            Val::U64(_) => 10,
            Val::I64(_) => 11,
            Val::F64(_) => 12,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Val::U8(v) => out.push(*v),
            Val::I8(v) => out.push(*v as u8),
            Val::U16(v) => out.extend(v.to_le_bytes()),
            Val::I16(v) => out.extend(v.to_le_bytes()),
            Val::U32(v) => out.extend(v.to_le_bytes()),
            Val::I32(v) => out.extend(v.to_le_bytes()),
            Val::F32(v) => out.extend(v.to_le_bytes()),
            Val::Bool(v) => out.push(*v as u8),
            Val::Str(s) => write_str(out, s),
            Val::Arr(ty, items) => {
                out.extend(ty.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    i.write(out);
                }
            }
            Val::U64(v) => out.extend(v.to_le_bytes()),
            Val::I64(v) => out.extend(v.to_le_bytes()),
            Val::F64(v) => out.extend(v.to_le_bytes()),
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    /// As the file stores them: innermost first.
    pub dims: Vec<u64>,
    pub ty: u32,
    /// Where the bytes start in the data section; None: after the previous tensor, aligned.
    pub offset: Option<u64>,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Gguf {
    pub version: u32,
    pub meta: Vec<(String, Val)>,
    pub tensors: Vec<Tensor>,
    /// What the data is padded to when written (whatever `general.alignment` says).
    pub pad_to: u64,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn val(&mut self, ty: u32) -> Val {
        match ty {
            0 => Val::U8(self.take(1)[0]),
            1 => Val::I8(self.take(1)[0] as i8),
            2 => Val::U16(u16::from_le_bytes(self.take(2).try_into().unwrap())),
            3 => Val::I16(i16::from_le_bytes(self.take(2).try_into().unwrap())),
            4 => Val::U32(self.u32()),
            5 => Val::I32(self.u32() as i32),
            6 => Val::F32(f32::from_bits(self.u32())),
            7 => Val::Bool(self.take(1)[0] != 0),
            8 => Val::Str(self.string()),
            9 => {
                let elem = self.u32();
                let n = self.u64();
                Val::Arr(elem, (0..n).map(|_| self.val(elem)).collect())
            }
            10 => Val::U64(self.u64()),
            11 => Val::I64(self.u64() as i64),
            12 => Val::F64(f64::from_bits(self.u64())),
            t => panic!("value type {t} in a fixture"),
        }
    }
}

/// Bytes per block and values per block of the types the fixtures use.
fn type_size(ty: u32) -> (u64, u64) {
    match ty {
        0 => (4, 1),   // F32
        1 => (2, 1),   // F16
        8 => (34, 32), // Q8_0
        30 => (2, 1),  // BF16
        t => panic!("tensor type {t} in a fixture"),
    }
}

impl Gguf {
    /// Take apart a valid file (a fixture; panics on anything else).
    pub fn parse(bytes: &[u8]) -> Gguf {
        let mut c = Cursor { b: bytes, pos: 0 };
        assert_eq!(c.take(4), b"GGUF");
        let version = c.u32();
        let n_tensors = c.u64();
        let n_meta = c.u64();
        let mut meta = Vec::new();
        for _ in 0..n_meta {
            let key = c.string();
            let ty = c.u32();
            meta.push((key, c.val(ty)));
        }
        let mut table = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string();
            let n_dims = c.u32();
            let dims: Vec<u64> = (0..n_dims).map(|_| c.u64()).collect();
            let ty = c.u32();
            let offset = c.u64();
            table.push((name, dims, ty, offset));
        }
        let align =
            meta.iter()
                .find(|(k, _)| k == "general.alignment")
                .map_or(32, |(_, v)| match v {
                    Val::U32(a) => *a as u64,
                    _ => 32,
                });
        let data_start = (c.pos as u64).div_ceil(align) * align;
        let tensors = table
            .into_iter()
            .map(|(name, dims, ty, offset)| {
                let (block_bytes, block_len) = type_size(ty);
                let n: u64 = dims.iter().product::<u64>() / block_len * block_bytes;
                let s = (data_start + offset) as usize;
                Tensor {
                    name,
                    dims,
                    ty,
                    offset: None,
                    data: bytes[s..s + n as usize].to_vec(),
                }
            })
            .collect();
        Gguf {
            version,
            meta,
            tensors,
            pad_to: align,
        }
    }

    pub fn fixture(name: &str) -> Gguf {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/gguf")
            .join(name);
        Gguf::parse(&std::fs::read(path).unwrap())
    }

    /// Set (or add) a metadata key.
    pub fn set(&mut self, key: &str, v: Val) -> &mut Self {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = v,
            None => self.meta.push((key.to_string(), v)),
        }
        self
    }

    pub fn get(&self, key: &str) -> Option<&Val> {
        self.meta.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn remove(&mut self, key: &str) -> &mut Self {
        self.meta.retain(|(k, _)| k != key);
        self
    }

    pub fn tensor(&mut self, name: &str) -> &mut Tensor {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name} in the fixture"))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.meta.len() as u64).to_le_bytes());
        for (k, v) in &self.meta {
            write_str(&mut out, k);
            out.extend(v.type_id().to_le_bytes());
            v.write(&mut out);
        }
        let align = self.pad_to.max(1);
        let mut next = 0u64;
        let mut placed = Vec::new();
        for t in &self.tensors {
            let offset = t.offset.unwrap_or(next);
            next = offset
                .saturating_add(t.data.len() as u64)
                .div_ceil(align)
                .saturating_mul(align);
            write_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.to_le_bytes());
            out.extend(offset.to_le_bytes());
            placed.push(offset);
        }
        let data_start = (out.len() as u64).div_ceil(align) * align;
        out.resize(data_start as usize, 0);
        for (t, offset) in self.tensors.iter().zip(placed) {
            // Offsets past any sane size are written as given, with no data behind them.
            let Some(at) = data_start.checked_add(offset).filter(|&a| a < 1 << 32) else {
                continue;
            };
            let end = at as usize + t.data.len();
            if out.len() < end {
                out.resize(end, 0);
            }
            out[at as usize..end].copy_from_slice(&t.data);
        }
        out
    }
}
