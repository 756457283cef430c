//! Quantized weights: which GGML type each matrix gets under a scheme (llama.cpp's names and
//! choices), quantizing a matrix with every core, and the cache that keeps the result between
//! loads ([`cache`]).
//!
//! The block formats are GGML's, quantized by candle (`candle_core::quantized`); what is here is
//! the policy llama-quantize applies: K-quant mixes that give the most sensitive matrices more
//! bits, and a fallback type for rows that do not fill whole blocks (never an error). It knows
//! nothing of the decoder: the model's loader asks it for one matrix at a time, by [`Role`]. It
//! imports nothing from the engine.

pub mod cache;

use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

/// A quantization scheme, as `--quant` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q4K,
    Q5K,
    Q6K,
    /// llama.cpp's Q4_K_M: Q4_K, with Q6_K for the output matrix and for attn_v / ffn_down in
    /// the layers that matter most.
    Q4KM,
    /// Q5_K_M: the same mix on Q5_K.
    Q5KM,
}

/// What a matrix is for, which decides its type in a mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Embedding,
    Output,
    AttnV {
        layer: usize,
    },
    FfnDown {
        layer: usize,
    },
    /// Mixtral's router: tiny, and decisive for which experts run; llama.cpp keeps it f32.
    Router,
    Other,
}

impl Scheme {
    pub const ALL: [Scheme; 10] = [
        Scheme::Q8_0,
        Scheme::Q4_0,
        Scheme::Q4_1,
        Scheme::Q5_0,
        Scheme::Q5_1,
        Scheme::Q4K,
        Scheme::Q5K,
        Scheme::Q6K,
        Scheme::Q4KM,
        Scheme::Q5KM,
    ];

    /// The name llama.cpp gives it (and owrun prints).
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Q8_0 => "Q8_0",
            Scheme::Q4_0 => "Q4_0",
            Scheme::Q4_1 => "Q4_1",
            Scheme::Q5_0 => "Q5_0",
            Scheme::Q5_1 => "Q5_1",
            Scheme::Q4K => "Q4_K",
            Scheme::Q5K => "Q5_K",
            Scheme::Q6K => "Q6_K",
            Scheme::Q4KM => "Q4_K_M",
            Scheme::Q5KM => "Q5_K_M",
        }
    }

    /// Bits per weight, for size estimates: the block types' exact sizes (Q8_0: 34 bytes per 32
    /// weights, Q4_K: 144 per 256, ...), and for the mixes what llama.cpp reports on Llama 3 8B.
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Scheme::Q8_0 => 8.5,
            Scheme::Q4_0 => 4.5,
            Scheme::Q4_1 => 5.0,
            Scheme::Q5_0 => 5.5,
            Scheme::Q5_1 => 6.0,
            Scheme::Q4K => 4.5,
            Scheme::Q5K => 5.5,
            Scheme::Q6K => 6.5625,
            Scheme::Q4KM => 4.89,
            Scheme::Q5KM => 5.70,
        }
    }

    /// Case-insensitive; "q4_k" and "q4_k_s" are the plain K-quant.
    pub fn parse(s: &str) -> Option<Scheme> {
        let s = s.trim().to_ascii_uppercase().replace('-', "_");
        let s = s.strip_suffix("_S").unwrap_or(&s);
        Scheme::ALL.into_iter().find(|q| q.name() == s)
    }

    /// The type for a matrix of `layers`-layer model, as llama-quantize chooses it.
    pub fn type_for(self, role: Role, layers: usize) -> GgmlDType {
        let base = match self {
            Scheme::Q8_0 => GgmlDType::Q8_0,
            Scheme::Q4_0 => GgmlDType::Q4_0,
            Scheme::Q4_1 => GgmlDType::Q4_1,
            Scheme::Q5_0 => GgmlDType::Q5_0,
            Scheme::Q5_1 => GgmlDType::Q5_1,
            Scheme::Q4K | Scheme::Q4KM => GgmlDType::Q4K,
            Scheme::Q5K | Scheme::Q5KM => GgmlDType::Q5K,
            Scheme::Q6K => GgmlDType::Q6K,
        };
        let mix = matches!(self, Scheme::Q4KM | Scheme::Q5KM);
        // llama.cpp's use_more_bits: the first and last eighth of the layers, and every third
        // layer in between.
        let more_bits = |i: usize| {
            let e = layers / 8;
            i < e || i >= 7 * layers / 8 || (i - e) % 3 == 2
        };
        match role {
            // The output matrix (the embedding, when tied) gets Q6_K unless the scheme is Q8_0.
            Role::Output if base != GgmlDType::Q8_0 => GgmlDType::Q6K,
            Role::AttnV { layer } | Role::FfnDown { layer } if mix && more_bits(layer) => {
                GgmlDType::Q6K
            }
            _ => base,
        }
    }
}

/// The type a matrix with rows of `k` values can take when `wanted`'s blocks do not divide
/// its rows: llama.cpp's fallbacks, then None (the matrix stays as stored).
pub fn fitting_type(wanted: GgmlDType, k: usize) -> Option<GgmlDType> {
    if k.is_multiple_of(wanted.block_size()) {
        return Some(wanted);
    }
    let fallback = match wanted {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
        other => other,
    };
    k.is_multiple_of(fallback.block_size()).then_some(fallback)
}

/// Rows per quantization task.
const ROWS_PER_TASK: usize = 64;

/// Quantize `w` (rows × k; any float dtype) to `ty`, rows in parallel, onto `device`.
pub fn quantize(w: &Tensor, ty: GgmlDType, device: &Device) -> Result<Arc<QTensor>> {
    let (rows, k) = w.dims2()?;
    let w = w
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let parts: Vec<Vec<u8>> = (0..rows.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|p| -> Result<Vec<u8>> {
            let first = p * ROWS_PER_TASK;
            let n = ROWS_PER_TASK.min(rows - first);
            // A tensor of its own: candle's quantizer reads a view's whole storage, ignoring
            // its offset.
            let part = Tensor::from_slice(&w[first * k..(first + n) * k], (n, k), &Device::Cpu)?;
            let q = QTensor::quantize(&part, ty)?;
            Ok(q.data()?.into_owned())
        })
        .collect::<Result<_>>()?;
    // Blocks never cross rows, so the row groups' blocks laid end to end are the matrix's.
    let bytes: Vec<u8> = parts.concat();
    let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), device, ty)?;
    Ok(Arc::new(
        QTensor::new(storage, (rows, k)).context("assembling a quantized matrix")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for q in Scheme::ALL {
            assert_eq!(Scheme::parse(&q.name().to_lowercase()), Some(q));
        }
        assert_eq!(Scheme::parse("q4_k_s"), Some(Scheme::Q4K));
        assert_eq!(Scheme::parse("q3_k"), None);
    }

    #[test]
    fn q4_k_m_gives_sensitive_matrices_more_bits() {
        let s = Scheme::Q4KM;
        assert_eq!(s.type_for(Role::Output, 32), GgmlDType::Q6K);
        assert_eq!(s.type_for(Role::AttnV { layer: 0 }, 32), GgmlDType::Q6K);
        assert_eq!(s.type_for(Role::AttnV { layer: 5 }, 32), GgmlDType::Q4K);
        assert_eq!(s.type_for(Role::FfnDown { layer: 31 }, 32), GgmlDType::Q6K);
        assert_eq!(s.type_for(Role::Other, 32), GgmlDType::Q4K);
        assert_eq!(Scheme::Q8_0.type_for(Role::Output, 32), GgmlDType::Q8_0);
        assert_eq!(Scheme::Q4_0.type_for(Role::Output, 32), GgmlDType::Q6K);
        assert_eq!(Scheme::Q4_0.type_for(Role::Embedding, 32), GgmlDType::Q4_0);
    }

    #[test]
    fn rows_that_do_not_fill_blocks_fall_back() {
        assert_eq!(fitting_type(GgmlDType::Q4K, 512), Some(GgmlDType::Q4K));
        assert_eq!(fitting_type(GgmlDType::Q4K, 64), Some(GgmlDType::Q5_0));
        assert_eq!(fitting_type(GgmlDType::Q6K, 96), Some(GgmlDType::Q8_0));
        assert_eq!(fitting_type(GgmlDType::Q8_0, 48), None);
    }

    #[test]
    fn parallel_quantization_equals_quantizing_at_once() {
        let w = Tensor::randn(0f32, 1.0, (200, 256), &Device::Cpu).unwrap();
        for ty in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            let ours = quantize(&w, ty, &Device::Cpu).unwrap();
            let whole = QTensor::quantize(&w, ty).unwrap();
            assert_eq!(ours.data().unwrap(), whole.data().unwrap(), "{ty:?}");
            // And it is a faithful copy: dequantized, close to the original.
            let back = ours.dequantize(&Device::Cpu).unwrap();
            let err = (back - &w)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(err < 0.5, "{ty:?}: max error {err}");
        }
    }
}
