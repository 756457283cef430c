//! The KV cache of one sequence: per layer, the keys and values of every position it holds.
//!
//! On the CPU the cache is owrun's own storage in the type the user chose (`--kv-type`: f16 by
//! default, as llama.cpp; f32, bf16, or GGML's Q8_0 / Q4_0 blocks). The streaming attention
//! (`flash`) reads it a tile of 64 positions at a time, widened to f32, through
//! [`LayerView::widen`]. Float types are stored in those tiles (`[tile][kv_head]`, then the keys
//! transposed, head_dim × 64, and the values as 64 rows): a tile is widened by one contiguous
//! conversion, with the keys already in the order the score loop reads them. That is done for
//! every cached key at every decoded token, so it is what decoding at depth costs. Block types
//! (whose blocks run along a row) are stored a row per position and key/value head
//! (`[slot][kv_head][row]`) and transposed as they are widened.
//!
//! A sliding-window layer keeps only what its window can still see: its buffer is a ring of
//! `window + MAX_CHUNK` positions (a chunk's first query still sees `window - 1` keys before it,
//! while the chunk writes up to `MAX_CHUNK` more), so Gemma's local layers and Mistral's
//! windowed ones cost a fixed amount however long the conversation. A global layer's buffer
//! spans the whole context but is an anonymous memory map: the system gives it pages as tokens
//! are written, so a short chat holds little, growing never copies, and a dropped cache goes
//! back to the system at once (memory the allocator frees it keeps, by owrun's choice: see
//! `memory::keep_freed_memory`).
//!
//! On a GPU the cache is candle tensors in the activation dtype (kv_heads × capacity × head_dim),
//! read as views by the tensor attention of `attention`.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use memmap2::MmapMut;

use super::arch::Arch;
use super::kernels::{block_scale, dequantize, ATTENTION_TILE as TILE};
use crate::engine::format::ggml::GgmlType;

/// Smallest buffer on a device, in positions.
const MIN_CAPACITY: usize = 256;

/// The most tokens one forward writes per sequence: prompts are fed in chunks of this size
/// (llama.cpp's `-ub`), which bounds the memory of a forward and sizes the windowed rings.
pub const MAX_CHUNK: usize = 512;

/// How the cache stores keys and values on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    F32,
    #[default]
    F16,
    Bf16,
    Q8_0,
    Q4_0,
}

impl KvType {
    pub const NAMES: &'static str = "f32, f16, bf16, q8_0, q4_0";

    pub fn parse(s: &str) -> Option<KvType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => KvType::F32,
            "f16" => KvType::F16,
            "bf16" => KvType::Bf16,
            "q8_0" => KvType::Q8_0,
            "q4_0" => KvType::Q4_0,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Bf16 => "bf16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    fn ggml(self) -> GgmlType {
        match self {
            KvType::F32 => GgmlType::F32,
            KvType::F16 => GgmlType::F16,
            KvType::Bf16 => GgmlType::BF16,
            KvType::Q8_0 => GgmlType::Q8_0,
            KvType::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// Whether the cache holds this type in tiles (float types) or rows (block types).
    fn tiled(self) -> bool {
        matches!(self, KvType::F32 | KvType::F16 | KvType::Bf16)
    }

    /// Bytes of one row of `head_dim` values (a whole number of blocks: see [`KvType::check`]).
    pub fn row_bytes(self, head_dim: usize) -> usize {
        let t = self.ggml();
        head_dim / t.block_len() * t.block_bytes()
    }

    /// Whether rows of `head_dim` values can be stored in this type.
    pub fn check(self, head_dim: usize) -> Result<()> {
        let block = self.ggml().block_len();
        if !head_dim.is_multiple_of(block) {
            bail!(
                "a {} KV cache stores blocks of {block} values, and this model's heads have \
                 {head_dim}: use --kv-type f16",
                self.name()
            );
        }
        Ok(())
    }

    /// `src` (head_dim values) into `dst` (one row in this type).
    fn store(self, src: &[f32], dst: &mut [u8]) {
        match self {
            KvType::F32 => {
                for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                    d.copy_from_slice(&s.to_le_bytes());
                }
            }
            KvType::F16 => {
                for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                    d.copy_from_slice(&f16::from_f32(*s).to_le_bytes());
                }
            }
            KvType::Bf16 => {
                for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                    d.copy_from_slice(&bf16::from_f32(*s).to_le_bytes());
                }
            }
            KvType::Q8_0 => {
                for (d, s) in dst.chunks_exact_mut(34).zip(src.chunks_exact(32)) {
                    quantize_q8_0(s, d);
                }
            }
            KvType::Q4_0 => {
                for (d, s) in dst.chunks_exact_mut(18).zip(src.chunks_exact(32)) {
                    quantize_q4_0(s, d);
                }
            }
        }
    }

    /// One stored row back to f32 values.
    #[inline]
    pub fn load(self, src: &[u8], dst: &mut [f32]) {
        match self {
            KvType::F32 => {
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                }
            }
            KvType::F16 => {
                // SAFETY: f16 is two bytes with no invalid bit patterns; `src` holds
                // dst.len() of them (the row), and u8 has alignment 1 while f16 needs 2:
                // checked by align_to, which leaves a prefix when the row is unaligned.
                let (pre, halves, _) = unsafe { src.align_to::<f16>() };
                if pre.is_empty() && halves.len() >= dst.len() {
                    half::slice::HalfFloatSliceExt::convert_to_f32_slice(&halves[..dst.len()], dst);
                } else {
                    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                        *d = f16::from_le_bytes([s[0], s[1]]).to_f32();
                    }
                }
            }
            KvType::Bf16 => {
                for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                    *d = f32::from_bits((u16::from_le_bytes([s[0], s[1]]) as u32) << 16);
                }
            }
            KvType::Q8_0 | KvType::Q4_0 => dequantize(self.ggml(), src, dst),
        }
    }
}

/// GGML's reference Q8_0: d = max|x| / 127, q = round(x / d) (away from zero, as `roundf`).
fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    let (d, id) = block_scale(x);
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for (o, v) in out[2..].iter_mut().zip(x) {
        *o = (v * id).round() as i8 as u8;
    }
}

/// GGML's reference Q4_0: d = (the value of largest magnitude) / -8, q = min(15, x / d + 8.5).
fn quantize_q4_0(x: &[f32], out: &mut [u8]) {
    let max = x
        .iter()
        .copied()
        .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    for j in 0..16 {
        out[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
    }
}

/// Bytes the keys and values of `tokens` positions take in a CPU cache of `ty` for this model:
/// every layer holds them all, except a sliding-window layer, which stops at its ring.
pub fn cache_bytes(arch: &Arch, ty: KvType, tokens: usize) -> usize {
    let per_token = 2 * arch.kv_heads * ty.row_bytes(arch.head_dim);
    arch.windows()
        .into_iter()
        .map(|w| per_token * tokens.min(slots(w, tokens)))
        .sum()
}

/// Slots a layer's buffers hold in a cache of `max` positions: all of them, or for a window
/// the ring of the window and a chunk; whole tiles, so that a tile never wraps around a ring.
fn slots(window: Option<usize>, max: usize) -> usize {
    let n = window.map_or(max, |w| max.min(w.saturating_add(MAX_CHUNK)));
    n.div_ceil(TILE) * TILE
}

/// One layer's keys and values on the CPU.
struct CpuLayer {
    /// Mapped at the first tokens, `capacity` slots each.
    buffers: Option<(MmapMut, MmapMut)>,
    /// Slots: the context, or the ring of a windowed layer.
    capacity: usize,
    /// Slots written so far (the buffers' resident part).
    touched: usize,
}

/// One layer of a CPU cache, for the attention that reads it.
pub struct LayerView<'a> {
    keys: &'a [u8],
    values: &'a [u8],
    ty: KvType,
    head_dim: usize,
    pub kv_heads: usize,
    /// Position p lives in slot p % capacity (a ring once a windowed layer wraps; the
    /// positions a query may see are always still there). A multiple of the tile when tiled.
    capacity: usize,
}

impl LayerView<'_> {
    /// Keys (transposed: head_dim × TILE) and values (n × head_dim) of positions
    /// `first..first + n` of head `h`, as f32. `first` is a multiple of the tile, n <= TILE.
    pub fn widen(&self, first: usize, n: usize, h: usize, keys_t: &mut [f32], values: &mut [f32]) {
        let (hd, ty) = (self.head_dim, self.ty);
        debug_assert!(first.is_multiple_of(TILE) && n <= TILE);
        if ty.tiled() {
            // One block per tile and head: keys hd × TILE, then values TILE × hd.
            let es = ty.row_bytes(1);
            let block = hd * TILE * es;
            let tile = (first % self.capacity) / TILE;
            let at = (tile * self.kv_heads + h) * block;
            ty.load(&self.keys[at..at + block], &mut keys_t[..hd * TILE]);
            ty.load(&self.values[at..at + n * hd * es], &mut values[..n * hd]);
            return;
        }
        let rb = ty.row_bytes(hd);
        let mut key = [0f32; 512];
        let key = &mut key[..hd];
        for j in 0..n {
            let at = (((first + j) % self.capacity) * self.kv_heads + h) * rb;
            ty.load(&self.keys[at..at + rb], key);
            for (d, &x) in key.iter().enumerate() {
                keys_t[d * TILE + j] = x;
            }
            ty.load(&self.values[at..at + rb], &mut values[j * hd..(j + 1) * hd]);
        }
    }
}

enum Store {
    Cpu {
        ty: KvType,
        layers: Vec<CpuLayer>,
    },
    /// Tensors on a device; empty until the first tokens arrive.
    Device {
        layers: Vec<(Tensor, Tensor)>,
        capacity: usize,
        dtype: DType,
        device: Device,
    },
}

pub struct KvCache {
    store: Store,
    layer_count: usize,
    len: usize,
    max: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl KvCache {
    /// A CPU cache of `ty` rows; `windows[l]` is layer l's sliding window, if it has one.
    pub fn cpu(
        windows: &[Option<usize>],
        kv_heads: usize,
        head_dim: usize,
        max: usize,
        ty: KvType,
    ) -> Self {
        let layers = windows
            .iter()
            .map(|&w| CpuLayer {
                buffers: None,
                capacity: slots(w, max),
                touched: 0,
            })
            .collect();
        KvCache {
            store: Store::Cpu { ty, layers },
            layer_count: windows.len(),
            len: 0,
            max,
            kv_heads,
            head_dim,
        }
    }

    /// A cache of candle tensors in `dtype` on `device` (a GPU).
    pub fn device(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        max: usize,
        dtype: DType,
        device: &Device,
    ) -> Self {
        KvCache {
            store: Store::Device {
                layers: Vec::new(),
                capacity: 0,
                dtype,
                device: device.clone(),
            },
            layer_count: layers,
            len: 0,
            max,
            kv_heads,
            head_dim,
        }
    }

    /// Bytes one more token takes (keys and values of every layer) while it is held.
    pub fn bytes_per_token(&self) -> usize {
        let row = match &self.store {
            Store::Cpu { ty, .. } => ty.row_bytes(self.head_dim),
            Store::Device { dtype, .. } => self.head_dim * dtype.size_in_bytes(),
        };
        self.layer_count * self.kv_heads * row * 2
    }

    /// Tokens the cache holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes reserved by the buffers.
    pub fn bytes(&self) -> usize {
        match &self.store {
            Store::Cpu { ty, layers } => {
                let row = ty.row_bytes(self.head_dim) * self.kv_heads;
                layers.iter().map(|l| 2 * l.touched * row).sum()
            }
            Store::Device {
                capacity, dtype, ..
            } => {
                2 * self.layer_count
                    * self.kv_heads
                    * capacity
                    * self.head_dim
                    * dtype.size_in_bytes()
            }
        }
    }

    /// Make room for `more` tokens after the current ones.
    pub fn reserve(&mut self, more: usize) -> Result<()> {
        let need = self.len + more;
        if need > self.max {
            bail!(
                "the sequence would be {need} tokens long, past the context of {} tokens",
                self.max
            );
        }
        match &mut self.store {
            Store::Cpu { ty, layers } => {
                if more > MAX_CHUNK && layers.iter().any(|l| l.capacity < self.max) {
                    bail!("a forward of {more} tokens, past the chunk of {MAX_CHUNK}");
                }
                let row = ty.row_bytes(self.head_dim) * self.kv_heads;
                for l in layers.iter_mut() {
                    if l.buffers.is_none() {
                        let bytes = (l.capacity * row).max(1);
                        let map = || {
                            MmapMut::map_anon(bytes).map_err(|e| {
                                anyhow::anyhow!(
                                    "cannot reserve a KV cache of {} tokens ({bytes} bytes per \
                                     layer for keys and as many for values): {e}; a smaller \
                                     --ctx or --kv-type needs less",
                                    self.max
                                )
                            })
                        };
                        l.buffers = Some((map()?, map()?));
                    }
                    l.touched = l.touched.max(need.min(l.capacity));
                }
            }
            Store::Device {
                layers,
                capacity,
                dtype,
                device,
            } => {
                if need <= *capacity {
                    return Ok(());
                }
                let c = need.next_power_of_two().max(MIN_CAPACITY).min(self.max);
                let shape = (self.kv_heads, c, self.head_dim);
                // One layer at a time, so growing holds at most one layer twice.
                for l in 0..self.layer_count {
                    let k = Tensor::zeros(shape, *dtype, device)?;
                    let v = Tensor::zeros(shape, *dtype, device)?;
                    if self.len > 0 {
                        let (old_k, old_v) = &layers[l];
                        k.slice_set(&old_k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                        v.slice_set(&old_v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    }
                    if l < layers.len() {
                        layers[l] = (k, v);
                    } else {
                        layers.push((k, v));
                    }
                }
                *capacity = c;
            }
        }
        Ok(())
    }

    /// Write the keys and values of layer `layer` at positions len..len + t: on the CPU, rows of
    /// `t × kv_heads × head_dim` f32 values; on a device, tensors of kv_heads × t × head_dim.
    /// Call [`reserve`](Self::reserve) first; [`advance`](Self::advance) once every layer has
    /// been written.
    pub fn write(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        match &mut self.store {
            Store::Cpu { ty, layers } => {
                let f32s = |x: &Tensor| x.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
                let (k, v) = (f32s(k)?, f32s(v)?);
                let (hd, rb) = (self.head_dim, ty.row_bytes(self.head_dim));
                let l = &mut layers[layer];
                let capacity = l.capacity;
                let Some((keys, values)) = l.buffers.as_mut() else {
                    bail!("the KV cache was written before room was reserved");
                };
                let t = k.len() / (hd * self.kv_heads);
                let es = ty.row_bytes(1);
                for i in 0..t {
                    let slot = (self.len + i) % capacity;
                    for h in 0..self.kv_heads {
                        let src = (i * self.kv_heads + h) * hd;
                        let (k, v) = (&k[src..src + hd], &v[src..src + hd]);
                        if ty.tiled() {
                            // Key element d at d·TILE + lane; the value row at lane·hd.
                            let block = ((slot / TILE) * self.kv_heads + h) * hd * TILE * es;
                            let lane = slot % TILE;
                            for (d, x) in k.iter().enumerate() {
                                let at = block + (d * TILE + lane) * es;
                                ty.store(std::slice::from_ref(x), &mut keys[at..at + es]);
                            }
                            let at = block + lane * hd * es;
                            ty.store(v, &mut values[at..at + rb]);
                        } else {
                            let dst = (slot * self.kv_heads + h) * rb;
                            ty.store(k, &mut keys[dst..dst + rb]);
                            ty.store(v, &mut values[dst..dst + rb]);
                        }
                    }
                }
            }
            Store::Device { layers, .. } => {
                let (kb, vb) = &layers[layer];
                kb.slice_set(&k.contiguous()?, 1, self.len)?;
                vb.slice_set(&v.contiguous()?, 1, self.len)?;
            }
        }
        Ok(())
    }

    /// Whether the cache is owrun's CPU storage (read through [`view`](Self::view)).
    pub fn on_cpu(&self) -> bool {
        matches!(self.store, Store::Cpu { .. })
    }

    /// The CPU rows of layer `layer`.
    pub fn view(&self, layer: usize) -> Result<LayerView<'_>> {
        let Store::Cpu { ty, layers } = &self.store else {
            bail!("the KV cache is not on the CPU");
        };
        let l = &layers[layer];
        let Some((keys, values)) = l.buffers.as_ref() else {
            bail!("the KV cache of layer {layer} holds nothing yet");
        };
        Ok(LayerView {
            keys,
            values,
            ty: *ty,
            head_dim: self.head_dim,
            kv_heads: self.kv_heads,
            capacity: l.capacity,
        })
    }

    /// Keys and values of layer `layer` at positions first..end, as views into a device's
    /// buffers.
    pub fn read(&self, layer: usize, first: usize, end: usize) -> Result<(Tensor, Tensor)> {
        let Store::Device { layers, .. } = &self.store else {
            bail!("the KV cache is not on a device");
        };
        let (k, v) = &layers[layer];
        Ok((
            k.narrow(1, first, end - first)?,
            v.narrow(1, first, end - first)?,
        ))
    }

    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Forget every position from `len` on; returns the tokens kept. A windowed layer's ring
    /// may no longer hold the keys the next token at `len` needs (it moved on past them): then
    /// the whole sequence is forgotten and 0 returned, and the caller feeds it again.
    pub fn truncate(&mut self, len: usize, windows: &[Option<usize>]) -> usize {
        let len = self.len.min(len);
        if let Store::Cpu { layers, .. } = &self.store {
            let lost = layers.iter().zip(windows).any(|(l, w)| {
                let oldest = self.len.saturating_sub(l.capacity);
                let needed = w.map_or(0, |w| (len + 1).saturating_sub(w));
                needed < oldest
            });
            if lost {
                self.len = 0;
                return 0;
            }
        }
        self.len = len;
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seed: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((seed * 31 + i * 7) % 23) as f32 / 7.0 - 1.5)
            .collect()
    }

    #[test]
    fn every_type_stores_and_loads_a_row_within_its_precision() {
        let x = row(3, 64);
        for (ty, tol) in [
            (KvType::F32, 0.0),
            (KvType::F16, 1e-3),
            (KvType::Bf16, 1e-2),
            (KvType::Q8_0, 0.02),
            (KvType::Q4_0, 0.25),
        ] {
            let mut bytes = vec![0u8; ty.row_bytes(64)];
            ty.store(&x, &mut bytes);
            let mut back = vec![0f32; 64];
            ty.load(&bytes, &mut back);
            let err = x
                .iter()
                .zip(&back)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err <= tol, "{}: {err}", ty.name());
        }
        assert!(KvType::Q8_0.check(80).is_err());
        assert!(KvType::F16.check(80).is_ok());
    }

    /// Keys of positions 0..n written one token at a time into a windowed layer's ring.
    fn ring(window: usize, n: usize) -> KvCache {
        let mut c = KvCache::cpu(&[Some(window)], 1, 32, 100_000, KvType::F32);
        for p in 0..n {
            c.reserve(1).unwrap();
            let k = Tensor::new(row(p, 32).as_slice(), &Device::Cpu).unwrap();
            c.write(0, &k, &k).unwrap();
            c.advance(1);
        }
        c
    }

    #[test]
    fn a_windowed_layer_keeps_a_ring_of_its_window_plus_a_chunk() {
        let n = 3000;
        let c = ring(100, n);
        let v = c.view(0).unwrap();
        // The window and a chunk, in whole tiles of 64.
        let ring = (100 + MAX_CHUNK).div_ceil(64) * 64;
        assert_eq!(v.capacity, ring);
        assert_eq!(c.bytes(), 2 * ring * 32 * 4);
        // A global layer holds what was written, not its whole context.
        let mut g = KvCache::cpu(&[None], 2, 32, 100_000, KvType::F16);
        g.reserve(300).unwrap();
        assert_eq!(g.bytes(), 2 * 300 * 2 * 64);
        // The last window's keys and values are where the view says, in every layout.
        let first = (n - 100) / TILE * TILE;
        let (mut kt, mut vs) = (vec![0f32; 32 * TILE], vec![0f32; TILE * 32]);
        for t in (first..n).step_by(TILE) {
            let m = (n - t).min(TILE);
            v.widen(t, m, 0, &mut kt, &mut vs);
            for p in t..t + m {
                let want = row(p, 32);
                let key: Vec<f32> = (0..32).map(|d| kt[d * TILE + p - t]).collect();
                assert_eq!(key, want, "key of position {p}");
                assert_eq!(vs[(p - t) * 32..(p - t + 1) * 32], want[..], "value {p}");
            }
        }
    }

    #[test]
    fn rows_and_tiles_widen_to_the_same_values() {
        for ty in [KvType::F16, KvType::Bf16, KvType::Q8_0] {
            let mut c = KvCache::cpu(&[None], 2, 32, 1000, ty);
            c.reserve(100).unwrap();
            let k: Vec<f32> = (0..100).flat_map(|p| row(p, 64)).collect();
            let v: Vec<f32> = (0..100).flat_map(|p| row(p + 1, 64)).collect();
            let k = Tensor::from_vec(k, (100, 2, 32), &Device::Cpu).unwrap();
            let v = Tensor::from_vec(v, (100, 2, 32), &Device::Cpu).unwrap();
            c.write(0, &k, &v).unwrap();
            c.advance(100);
            let view = c.view(0).unwrap();
            let (mut kt, mut vs) = (vec![0f32; 32 * TILE], vec![0f32; TILE * 32]);
            view.widen(64, 36, 1, &mut kt, &mut vs);
            for j in 0..36 {
                let p = 64 + j;
                let (want_k, want_v) = (&row(p, 64)[32..], &row(p + 1, 64)[32..]);
                for d in 0..32 {
                    let tol = if ty == KvType::Q8_0 { 0.02 } else { 0.01 };
                    assert!(
                        (kt[d * TILE + j] - want_k[d]).abs() <= tol,
                        "{ty:?} k {p} {d}"
                    );
                    assert!(
                        (vs[j * 32 + d] - want_v[d]).abs() <= tol,
                        "{ty:?} v {p} {d}"
                    );
                }
            }
        }
    }

    #[test]
    fn truncating_a_ring_past_what_it_holds_forgets_the_sequence() {
        let mut c = ring(100, 3000);
        // The next token at 2900 needs keys from 2801 on: still in the ring.
        assert_eq!(c.truncate(2900, &[Some(100)]), 2900);
        let mut c = ring(100, 3000);
        // At 1000 it needs keys from 901 on, long overwritten.
        assert_eq!(c.truncate(1000, &[Some(100)]), 0);
        assert_eq!(c.len(), 0);
    }
}
