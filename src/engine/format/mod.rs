//! The files a model comes in, read and checked: GGUF (metadata, tensors, the tokenizer it
//! carries, split files), safetensors, config.json. The bottom of the engine: it imports nothing
//! from the rooms above it, and hands them tensors (candle's) and plain values.

pub mod config;
pub mod ggml;
pub mod gguf;
pub mod gguf_container;
pub mod gguf_vocab;
pub mod json;
pub mod lora;
pub mod safetensors;
