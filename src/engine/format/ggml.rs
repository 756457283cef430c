//! GGML's tensor types, as GGUF files number them: each type's name, and the block of values it
//! packs into a fixed number of bytes. The layouts themselves (what the bytes mean) are the
//! kernels' business (`model::kernels::blocks`).

use anyhow::{bail, Result};

/// A tensor type owrun reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    IQ2XXS,
    IQ2XS,
    IQ2S,
    IQ3XXS,
    IQ3S,
    IQ1S,
    IQ1M,
    IQ4NL,
    IQ4XS,
}

impl GgmlType {
    pub const ALL: [GgmlType; 22] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::IQ2XXS,
        GgmlType::IQ2XS,
        GgmlType::IQ2S,
        GgmlType::IQ3XXS,
        GgmlType::IQ3S,
        GgmlType::IQ1S,
        GgmlType::IQ1M,
        GgmlType::IQ4NL,
        GgmlType::IQ4XS,
    ];

    /// The number a GGUF file stores for this type.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::IQ2XXS => 16,
            GgmlType::IQ2XS => 17,
            GgmlType::IQ3XXS => 18,
            GgmlType::IQ1S => 19,
            GgmlType::IQ4NL => 20,
            GgmlType::IQ3S => 21,
            GgmlType::IQ2S => 22,
            GgmlType::IQ4XS => 23,
            GgmlType::IQ1M => 29,
            GgmlType::BF16 => 30,
        }
    }

    /// The type a GGUF file's number stands for; an error naming the type for the ones owrun
    /// does not read (integer tensors, the ternary and FP4 types).
    pub fn from_id(id: u32) -> Result<GgmlType> {
        if let Some(t) = GgmlType::ALL.into_iter().find(|t| t.id() == id) {
            return Ok(t);
        }
        let name = match id {
            9 => "Q8_1",
            15 => "Q8_K",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            31..=33 => {
                "Q4_0_4_4/Q4_0_4_8/Q4_0_8_8 (repacked types, no longer written by llama.cpp)"
            }
            34 => "TQ1_0",
            35 => "TQ2_0",
            36..=38 => "IQ4_NL_4_4/IQ4_NL_4_8/IQ4_NL_8_8 (repacked types)",
            39 => "MXFP4",
            _ => "an unknown type",
        };
        bail!("tensor type {id} ({name}) is not supported")
    }

    /// llama.cpp's name for it.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::IQ2XXS => "IQ2_XXS",
            GgmlType::IQ2XS => "IQ2_XS",
            GgmlType::IQ2S => "IQ2_S",
            GgmlType::IQ3XXS => "IQ3_XXS",
            GgmlType::IQ3S => "IQ3_S",
            GgmlType::IQ1S => "IQ1_S",
            GgmlType::IQ1M => "IQ1_M",
            GgmlType::IQ4NL => "IQ4_NL",
            GgmlType::IQ4XS => "IQ4_XS",
        }
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::IQ4NL => 32,
            _ => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 | GgmlType::IQ4NL => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
            GgmlType::IQ2XXS => 66,
            GgmlType::IQ2XS => 74,
            GgmlType::IQ2S => 82,
            GgmlType::IQ3XXS => 98,
            GgmlType::IQ3S => 110,
            GgmlType::IQ1S => 50,
            GgmlType::IQ1M => 56,
            GgmlType::IQ4XS => 136,
        }
    }

    /// Whether it packs values in blocks (rather than one float per value).
    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes of a row of `k` values, or None when `k` is not a whole number of blocks.
    pub fn row_bytes(self, k: usize) -> Option<usize> {
        k.is_multiple_of(self.block_len())
            .then(|| k / self.block_len() * self.block_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unsupported_types_are_named() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()).unwrap(), t);
        }
        let e = GgmlType::from_id(35).unwrap_err().to_string();
        assert!(e.contains("TQ2_0"), "{e}");
        assert!(GgmlType::from_id(1000).is_err());
        assert_eq!(GgmlType::Q4K.row_bytes(512), Some(288));
        assert_eq!(GgmlType::Q4K.row_bytes(100), None);
    }
}
