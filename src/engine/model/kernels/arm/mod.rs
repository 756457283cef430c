//! AArch64 instructions, one file per kernel family, as `x86/` is for x86-64. Each function is
//! `unsafe` and compiled for its extension with `target_feature`; the portable drivers call it
//! only where `cpu::features()` says the CPU has it. Tested under emulation (qemu-user) where
//! the build machine is not ARM (README, "Development").

pub mod neon_half;
pub mod neon_quant;
