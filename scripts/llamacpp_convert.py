#!/usr/bin/env python3
"""Run llama.cpp's own convert_hf_to_gguf.py, answering one question it cannot answer for owrun's
tiny fixtures: which pre-tokenizer a byte-level BPE vocabulary uses. The converter recognises a
vocabulary by the hash of its encoding of a test text, and knows only the real models' hashes;
the fixtures' 380-token vocabularies are told apart by name instead (llama-bpe, qwen2). Everything
else — hyperparameters, tensor names, permutations, types, quantization — is the converter's.

    python3 scripts/llamacpp_convert.py LLAMA_CPP_DIR PRE_TOKENIZER|- CONVERTER_ARGS...

`-` leaves the converter's own recognition alone (SentencePiece vocabularies need none).
"""

import runpy
import sys

llama, pre, args = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, llama)
sys.path.insert(1, llama + "/gguf-py")
if pre != "-":
    import conversion.base as base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [llama + "/convert_hf_to_gguf.py"] + args
runpy.run_path(llama + "/convert_hf_to_gguf.py", run_name="__main__")
