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
mod kernels;
pub mod kv;
pub mod linear;
pub mod rope;
pub mod weights;

use std::collections::HashMap;

use anyhow::{bail, Result};

use decoder::{Decoder, Segment};
use kv::KvCache;

pub use kernels::use_threads;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqId(u64);

pub struct Model {
    pub decoder: Decoder,
    sequences: HashMap<SeqId, KvCache>,
    next_id: u64,
}

impl Model {
    pub fn new(decoder: Decoder) -> Self {
        Model {
            decoder,
            sequences: HashMap::new(),
            next_id: 0,
        }
    }

    /// Positions a sequence may hold: the model's context.
    pub fn context(&self) -> usize {
        self.decoder.arch.context
    }

    /// Start an empty sequence.
    pub fn new_sequence(&mut self) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        let cache = self.decoder.new_cache(self.context());
        self.sequences.insert(id, cache);
        id
    }

    /// Drop a sequence and its cache. (The server keeps its slots' sequences for prefix reuse;
    /// run and chat hold one sequence for their lifetime.)
    #[allow(dead_code)]
    pub fn free(&mut self, seq: SeqId) {
        self.sequences.remove(&seq);
    }

    /// Tokens the sequence holds.
    pub fn len(&self, seq: SeqId) -> usize {
        self.sequences.get(&seq).map_or(0, KvCache::len)
    }

    /// Keep the first `len` tokens of the sequence and forget the rest.
    pub fn truncate(&mut self, seq: SeqId, len: usize) -> Result<()> {
        match self.sequences.get_mut(&seq) {
            Some(cache) => {
                cache.truncate(len);
                Ok(())
            }
            None => bail!("no sequence {seq:?}"),
        }
    }

    /// Bytes of KV cache one token of one sequence takes.
    pub fn cache_bytes_per_token(&self) -> usize {
        self.decoder.new_cache(0).bytes_per_token()
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
        on_pool(|| {
            self.decoder.forward(&mut [Segment {
                cache,
                tokens,
                all_logits: true,
            }])
        })
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
        // Take the caches out of the map for the duration of the forward.
        let mut caches: Vec<KvCache> = batch
            .iter()
            .map(|(seq, _)| self.sequences.remove(seq).expect("checked above"))
            .collect();
        let result = {
            let mut segments: Vec<Segment> = caches
                .iter_mut()
                .zip(batch)
                .map(|(cache, (_, tokens))| Segment {
                    cache,
                    tokens,
                    all_logits: false,
                })
                .collect();
            on_pool(|| self.decoder.forward(&mut segments))
        };
        for ((seq, _), cache) in batch.iter().zip(caches) {
            self.sequences.insert(*seq, cache);
        }
        result
    }
}

/// Runs a forward on a thread of rayon's pool. The kernels split each matmul across the pool;
/// started from a thread outside it, every one of the ~150 matmuls of a token would wake the
/// workers and put the caller to sleep until they finish (three context switches each, about
/// 15% of a TinyLlama Q4_K_M token on 2 threads). From inside, the caller takes part.
fn on_pool<R: Send>(forward: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| forward())
}
