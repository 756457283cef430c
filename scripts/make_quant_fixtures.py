#!/usr/bin/env python3
"""Write tests/fixtures/quants/: for every GGML block type owrun reads, a few blocks of random
bits (with sane scales) and what the `gguf` package's reference dequantizer makes of them.

    pip install gguf numpy && python3 scripts/make_quant_fixtures.py

Each type gets `<TYPE>.blocks` (the raw blocks) and `<TYPE>.f32` (the dequantized values,
little-endian f32). owrun's dequantization must reproduce them exactly (tests in
src/engine/model/kernels/dequant.rs).
"""
import os

import numpy as np
from gguf import GGMLQuantizationType as T, GGML_QUANT_SIZES, quants

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "quants")
BLOCKS = 4

# Where each type keeps its f16 scales (byte offsets in a block): random bits there could be
# inf or NaN, so they get real scales instead. IQ1_M spreads its scale over the top nibbles of
# its last 8 bytes (handled below).
F16_AT = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ2_XXS: [0], T.IQ2_XS: [0], T.IQ2_S: [0], T.IQ3_XXS: [0], T.IQ3_S: [0], T.IQ1_S: [0],
    T.IQ4_NL: [0], T.IQ4_XS: [0],
}


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20261207)
    for ty in list(F16_AT) + [T.IQ1_M]:
        block, size = GGML_QUANT_SIZES[ty]
        raw = rng.integers(0, 256, size=(BLOCKS, size), dtype=np.uint8)
        for at in F16_AT.get(ty, []):
            scale = rng.uniform(0.001, 0.1, size=BLOCKS).astype(np.float16)
            raw[:, at:at + 2] = scale.view(np.uint8).reshape(BLOCKS, 2)
        if ty == T.IQ1_M:
            # The f16 scale: its nibble i is the top nibble of the last four u16s' word i.
            scale = rng.uniform(0.001, 0.1, size=BLOCKS).astype(np.float16).view(np.uint16)
            words = raw[:, size - 8:].copy().view(np.uint16)
            for i, shift in enumerate((0, 4, 8, 12)):
                nib = (scale >> shift) & 0xF
                words[:, i] = (words[:, i] & 0x0FFF) | (nib << 12).astype(np.uint16)
            raw[:, size - 8:] = words.view(np.uint8)
        values = quants.dequantize(raw, ty).astype(np.float32).reshape(-1)
        assert values.size == BLOCKS * block and np.all(np.isfinite(values)), ty.name
        raw.tofile(os.path.join(OUT, f"{ty.name}.blocks"))
        values.astype("<f4").tofile(os.path.join(OUT, f"{ty.name}.f32"))
    print(f"wrote {os.path.relpath(OUT)}")


if __name__ == "__main__":
    main()
