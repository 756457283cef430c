//! The inference engine: files in, text out. It knows nothing of terminals, HTTP, the registry or
//! licenses: front ends hand it a folder or a GGUF file and tokens, and receive logits and text.
//!
//! Its rooms, from the bottom up; each may import only the rooms listed before it:
//!
//! | room | owns |
//! |---|---|
//! | [`format`] | the files: GGUF (read), safetensors, config.json, the tokenizer a GGUF carries, LoRA adapters (PEFT folders, GGUF adapters) |
//! | [`quantize`] | quantization schemes (llama-quantize's choices), the quantizer, its cache |
//! | [`model`] | the numerics: families as data, weights, decoder, attention, rope, KV cache, LoRA adapters beside or merged into the weights (per sequence), and the CPU kernels private below it |
//! | [`text`] | the tokenizer side: chat templates, prompts, detokenizer, reasoning split |
//! | [`generate`] | decoding policy: sampler, stop strings, constraints, the per-sequence decoding state, conversations |
//! | [`quality`], [`export`] | uses of a whole model: drift from f32 (KLD), writing it as a GGUF file |
//! | `load` ([`Engine`]) | one loaded model: device and dtype policy, both loaders, the pieces above put together |
//!
//! Where things go: a new GGUF block type is a kernel in `model::kernels` (and a type the
//! quantizer may choose in `quantize`); a new architecture is data in `model::arch` (plus its
//! tensor names in `format::gguf` when llama.cpp renames them); a new sampler option lives in
//! `generate::sampler`; a new API field is the server's, which maps it onto these types.

mod device;
pub mod export;
pub mod format;
#[cfg(test)]
mod fuzz_tests;
pub mod generate;
mod load;
pub mod model;
#[cfg(test)]
mod parity_tests;
pub mod quality;
pub mod quantize;
pub mod text;

pub use device::{DTypeChoice, DeviceChoice, LoadError};
pub use load::{gguf_summary, kv_cache_size, Engine, LoadOptions};
pub use model::kv::KvType;
pub use model::use_threads;
