//! Weights stored in 16 bits (f16, bf16): the element types, how each ISA's kernels read them,
//! and the register tile the 16-bit prefill kernels compute.

use half::{bf16, f16};

/// How 16 weights are read: as f16 (converted by the CPU) or as bf16 (the top half of an f32).
#[derive(Clone, Copy)]
pub enum Load16 {
    F16,
    Bf16,
}

/// A weight element stored in 16 bits, converted to f32 on the fly.
pub trait Half16: Copy + Send + Sync + 'static {
    /// How the SIMD tiles read these weights.
    const LOAD16: Load16;
    fn widen_into(src: &[Self], dst: &mut [f32]);
    /// x · w with the conversion fused into the loop (AVX2 + FMA + F16C).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `x` and `w` have the same length.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_x86(x: &[f32], w: &[Self]) -> f32;
}

impl Half16 for bf16 {
    const LOAD16: Load16 = Load16::Bf16;
    fn widen_into(src: &[Self], dst: &mut [f32]) {
        // bf16 is the top half of an f32: a shift, which the compiler vectorises.
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_x86(x: &[f32], w: &[Self]) -> f32 {
        super::x86::avx2::dot_bf16(x, w)
    }
}

impl Half16 for f16 {
    const LOAD16: Load16 = Load16::F16;
    fn widen_into(src: &[Self], dst: &mut [f32]) {
        // half picks F16C / NEON conversion at run time where the CPU has it.
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_x86(x: &[f32], w: &[Self]) -> f32 {
        super::x86::avx2::dot_f16(x, w)
    }
}
