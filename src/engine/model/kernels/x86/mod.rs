//! x86-64 instructions, one file per instruction set and kernel family. Each function here is
//! `unsafe` and compiled for its set with `target_feature`; the portable drivers above call it
//! only where `cpu::features()` says the CPU has that set.

pub mod avx2;
pub mod avx2_attend;
pub mod avx2_half;
pub mod avx2_quant;
pub mod avx512_half;
pub mod avx512_quant_rows;
pub mod avx512_quant_tiles;
