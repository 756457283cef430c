//! The numerics: a model's weights and the forward pass over them. One decoder for every family
//! ([`decoder`]), steered by a description of the family as data ([`arch`]); matrices held as
//! they were stored behind one matmul ([`linear`]) that picks a kernel from `kernels`, the CPU
//! layer, which is private to this room; rotary embeddings, attention and the KV cache.
//!
//! Imports `format` (tensors from files) and `quantize` (types to quantize matrices to at load),
//! nothing above them: no tokenizer, no sampling.
//!
//! [`Model`] is a loaded model and the sequences it holds. Each sequence is addressed by a
//! [`SeqId`] and owns a KV cache; one forward can advance several sequences at once (the server
//! batches its clients this way), and a sequence can be cut back to any length (chat reuses the
//! part of its cache that the next prompt shares).

pub mod arch;
mod attention;
pub mod decoder;
mod flash;
mod kernels;
pub mod kv;
pub mod linear;
pub mod lora;
pub mod rope;
pub mod weights;

use std::collections::HashMap;

use anyhow::{bail, Result};

use decoder::{Decoder, Segment};
use kv::{KvCache, MAX_CHUNK};

pub use kernels::use_threads;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqId(u64);

pub struct Model {
    pub decoder: Decoder,
    sequences: HashMap<SeqId, KvCache>,
    /// How strongly each LoRA adapter applies to a sequence, where not every adapter at 1.
    lora: HashMap<SeqId, Vec<f32>>,
    next_id: u64,
    /// Positions a sequence may hold (the model's context, or less: `--ctx`, or what fits).
    context: usize,
}

impl Model {
    pub fn new(decoder: Decoder) -> Self {
        let context = decoder.arch.context;
        Model {
            decoder,
            sequences: HashMap::new(),
            lora: HashMap::new(),
            next_id: 0,
            context,
        }
    }

    /// Positions a sequence may hold.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Let sequences started from now on hold `n` positions.
    pub fn set_context(&mut self, n: usize) {
        self.context = n.max(1);
    }

    /// Start an empty sequence.
    pub fn new_sequence(&mut self) -> SeqId {
        self.add_sequence(self.decoder.new_cache(self.context))
    }

    fn add_sequence(&mut self, cache: KvCache) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.sequences.insert(id, cache);
        id
    }

    /// Start an empty sequence whose cache is f32 tensors read by the tensor attention with a
    /// full mask (what owrun ran before the streaming attention, and still runs on GPUs): the
    /// tests' reference.
    #[cfg(test)]
    pub fn new_reference_sequence(&mut self) -> SeqId {
        let a = &self.decoder.arch;
        self.add_sequence(KvCache::device(
            a.layers.len(),
            a.kv_heads,
            a.head_dim,
            self.context,
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        ))
    }

    /// How strongly each of the model's LoRA adapters (`decoder.adapters`, in order) applies to
    /// the sequence from its next token on; a sequence starts with each at 1. What the cache
    /// holds was computed with the adapters of its time: a caller changing them clears it first.
    pub fn set_adapters(&mut self, seq: SeqId, multipliers: Vec<f32>) -> Result<()> {
        if !self.sequences.contains_key(&seq) {
            bail!("no sequence {seq:?}");
        }
        let count = self.decoder.adapters.len();
        if multipliers.len() != count {
            bail!(
                "{} adapter multipliers for a model of {count} adapters",
                multipliers.len()
            );
        }
        self.lora.insert(seq, multipliers);
        Ok(())
    }

    /// Drop a sequence and its cache. (The server keeps its slots' sequences for prefix reuse;
    /// run and chat hold one sequence for their lifetime.)
    #[allow(dead_code)]
    pub fn free(&mut self, seq: SeqId) {
        self.sequences.remove(&seq);
        self.lora.remove(&seq);
    }

    /// Tokens the sequence holds.
    pub fn len(&self, seq: SeqId) -> usize {
        self.sequences.get(&seq).map_or(0, KvCache::len)
    }

    /// Keep the first `len` tokens of the sequence and forget the rest. Returns how many it
    /// kept: fewer (0) when a sliding-window layer no longer holds what position `len` needs.
    pub fn truncate(&mut self, seq: SeqId, len: usize) -> Result<usize> {
        let windows = self.decoder.arch.windows();
        match self.sequences.get_mut(&seq) {
            Some(cache) => Ok(cache.truncate(len, &windows)),
            None => bail!("no sequence {seq:?}"),
        }
    }

    /// Bytes of KV cache one token of one sequence takes (sliding-window layers count until
    /// their window is full: the most a token costs).
    pub fn cache_bytes_per_token(&self) -> usize {
        self.decoder.new_cache(0).bytes_per_token()
    }

    /// Bytes of KV cache one sequence of `tokens` tokens holds at most (sliding-window layers
    /// stop growing at their window plus a chunk).
    pub fn cache_bytes_for(&self, tokens: usize) -> usize {
        let d = &self.decoder;
        if !d.device.is_cpu() {
            return self.cache_bytes_per_token() * tokens;
        }
        kv::cache_bytes(&d.arch, d.kv_type, tokens)
    }

    /// Bytes the sequences' KV caches reserve.
    pub fn cache_bytes(&self) -> usize {
        self.sequences.values().map(KvCache::bytes).sum()
    }

    /// Append `tokens` to one sequence; returns the logits for the token after them.
    pub fn forward(&mut self, seq: SeqId, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut out = self.forward_batch(&[(seq, tokens)])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Append `tokens` to one sequence; returns the logits after each of them (row i predicts
    /// the token after tokens[i]).
    pub fn forward_all(&mut self, seq: SeqId, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let Some(cache) = self.sequences.get_mut(&seq) else {
            bail!("no sequence {seq:?}");
        };
        if tokens.is_empty() {
            bail!("a forward over no tokens");
        }
        let lora = self.lora.get(&seq).map_or(&[][..], Vec::as_slice);
        let mut logits = Vec::with_capacity(tokens.len());
        let reach = cache.len() + tokens.len();
        for chunk in tokens.chunks(MAX_CHUNK) {
            logits.extend(on_pool(|| {
                self.decoder.forward(&mut [Segment {
                    cache: &mut *cache,
                    tokens: chunk,
                    all_logits: true,
                    reach,
                    lora,
                }])
            })?);
        }
        Ok(logits)
    }

    /// Append tokens to several distinct sequences in one forward; returns the next-token
    /// logits of each, in order.
    pub fn forward_batch(&mut self, batch: &[(SeqId, &[u32])]) -> Result<Vec<Vec<f32>>> {
        for (i, (seq, _)) in batch.iter().enumerate() {
            if batch[..i].iter().any(|(s, _)| s == seq) {
                bail!("sequence {seq:?} appears twice in one batch");
            }
            if !self.sequences.contains_key(seq) {
                bail!("no sequence {seq:?}");
            }
        }
        // Take the caches out of the map for the duration of the forward; they go back however
        // it ends, a panic included (the server catches it and goes on with these sequences).
        let lora: Vec<&[f32]> = batch
            .iter()
            .map(|(seq, _)| self.lora.get(seq).map_or(&[][..], Vec::as_slice))
            .collect();
        let mut taken = Taken::out(&mut self.sequences, batch.iter().map(|(seq, _)| *seq));
        Self::chunked(&self.decoder, &mut taken.caches, batch, &lora)
    }

    /// Feed the batch in rounds of at most [`MAX_CHUNK`] tokens per sequence (llama.cpp's
    /// micro-batches), so a forward's memory does not depend on the prompt's length.
    fn chunked(
        decoder: &Decoder,
        caches: &mut [KvCache],
        batch: &[(SeqId, &[u32])],
        lora: &[&[f32]],
    ) -> Result<Vec<Vec<f32>>> {
        if batch.iter().any(|(_, t)| t.is_empty()) {
            bail!("a forward over no tokens");
        }
        let mut last = vec![Vec::new(); batch.len()];
        let reach: Vec<usize> = caches
            .iter()
            .zip(batch)
            .map(|(c, (_, t))| c.len() + t.len())
            .collect();
        let longest = batch.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
        for from in (0..longest).step_by(MAX_CHUNK) {
            let (mut segments, mut which) = (Vec::new(), Vec::new());
            for (i, (cache, (_, tokens))) in caches.iter_mut().zip(batch).enumerate() {
                if from < tokens.len() {
                    which.push(i);
                    segments.push(Segment {
                        cache,
                        tokens: &tokens[from..tokens.len().min(from + MAX_CHUNK)],
                        all_logits: false,
                        reach: reach[i],
                        lora: lora[i],
                    });
                }
            }
            let logits = on_pool(|| decoder.forward(&mut segments))?;
            for (i, row) in which.into_iter().zip(logits) {
                last[i] = row;
            }
        }
        Ok(last)
    }
}

/// Caches taken out of a model's map, put back when dropped.
struct Taken<'m> {
    map: &'m mut HashMap<SeqId, KvCache>,
    seqs: Vec<SeqId>,
    caches: Vec<KvCache>,
}

impl<'m> Taken<'m> {
    /// The caches of `seqs` (each in the map, once).
    fn out(map: &'m mut HashMap<SeqId, KvCache>, seqs: impl Iterator<Item = SeqId>) -> Self {
        let seqs: Vec<SeqId> = seqs.collect();
        let caches = seqs
            .iter()
            .map(|seq| map.remove(seq).expect("checked by the caller"))
            .collect();
        Taken { map, seqs, caches }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        for (seq, cache) in self.seqs.drain(..).zip(self.caches.drain(..)) {
            self.map.insert(seq, cache);
        }
    }
}

/// Runs a forward on a thread of rayon's pool. The kernels split each matmul across the pool;
/// started from a thread outside it, every one of the ~150 matmuls of a token would wake the
/// workers and put the caller to sleep until they finish (three context switches each, about
/// 15% of a TinyLlama Q4_K_M token on 2 threads). From inside, the caller takes part.
fn on_pool<R: Send>(forward: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| forward())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_taken_for_a_forward_go_back_when_it_panics() {
        let mut map = HashMap::new();
        let seq = SeqId(7);
        let cpu = candle_core::Device::Cpu;
        map.insert(
            seq,
            KvCache::device(1, 1, 2, 4, candle_core::DType::F32, &cpu),
        );
        let forward = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let taken = Taken::out(&mut map, [seq].into_iter());
            assert!(taken.map.is_empty());
            panic!("a kernel failed midway");
        }));
        assert!(forward.is_err());
        assert!(map.contains_key(&seq), "the sequence's cache was lost");
    }
}
