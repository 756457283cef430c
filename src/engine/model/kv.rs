//! The KV cache of one sequence: per layer, keys and values in buffers preallocated ahead of
//! the sequence (kv_heads × capacity × head_dim), written in place as tokens arrive, read as
//! views (no copy of the cache per token), and truncatable to any length.
//!
//! Capacity grows by doubling up to the model's context, so a short chat does not reserve a
//! 128k-token cache and a long one copies its cache only a logarithmic number of times.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// Smallest buffer, in positions.
const MIN_CAPACITY: usize = 256;

pub struct KvCache {
    /// Empty until the first tokens arrive.
    layers: Vec<(Tensor, Tensor)>,
    layer_count: usize,
    len: usize,
    capacity: usize,
    max: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
}

impl KvCache {
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        max: usize,
        dtype: DType,
        device: &Device,
    ) -> Self {
        KvCache {
            layers: Vec::new(),
            layer_count: layers,
            len: 0,
            capacity: 0,
            max,
            kv_heads,
            head_dim,
            dtype,
            device: device.clone(),
        }
    }

    /// Bytes one more token takes (keys and values of every layer).
    pub fn bytes_per_token(&self) -> usize {
        self.layer_count * self.kv_heads * self.head_dim * 2 * self.dtype.size_in_bytes()
    }

    /// Tokens the cache holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes reserved by the buffers.
    pub fn bytes(&self) -> usize {
        2 * self.layer_count
            * self.kv_heads
            * self.capacity
            * self.head_dim
            * self.dtype.size_in_bytes()
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
        if need <= self.capacity {
            return Ok(());
        }
        let capacity = need
            .next_power_of_two()
            .max(MIN_CAPACITY)
            .min(self.max.max(need));
        let shape = (self.kv_heads, capacity, self.head_dim);
        // One layer at a time, so growing holds at most one layer twice.
        for l in 0..self.layer_count {
            let k = Tensor::zeros(shape, self.dtype, &self.device)?;
            let v = Tensor::zeros(shape, self.dtype, &self.device)?;
            if self.len > 0 {
                let (old_k, old_v) = self.read(l, 0, self.len)?;
                k.slice_set(&old_k.contiguous()?, 1, 0)?;
                v.slice_set(&old_v.contiguous()?, 1, 0)?;
            }
            if l < self.layers.len() {
                self.layers[l] = (k, v);
            } else {
                self.layers.push((k, v));
            }
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Write keys and values (kv_heads × t × head_dim) of layer `layer` at positions
    /// len..len + t. Call [`reserve`](Self::reserve) first; [`advance`](Self::advance) once every
    /// layer has been written.
    pub fn write(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let (kb, vb) = &self.layers[layer];
        kb.slice_set(&k.contiguous()?, 1, self.len)?;
        vb.slice_set(&v.contiguous()?, 1, self.len)?;
        Ok(())
    }

    /// Keys and values of layer `layer` at positions first..end, as views into the buffers.
    pub fn read(&self, layer: usize, first: usize, end: usize) -> Result<(Tensor, Tensor)> {
        let (k, v) = &self.layers[layer];
        Ok((
            k.narrow(1, first, end - first)?,
            v.narrow(1, first, end - first)?,
        ))
    }

    pub fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Forget every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}
