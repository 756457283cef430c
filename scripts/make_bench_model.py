#!/usr/bin/env python3
"""Make a random-weight model of a real shape for speed measurements, in the formats both runners
read: a Hugging Face folder (f16 safetensors, config.json, a stand-in tokenizer.json) for owrun,
and an F16 GGUF as llama.cpp's converter lays it out (llama architecture, q/k rows permuted for
its rope, a SentencePiece-style stand-in vocabulary) for llama-bench and llama-quantize. The
shapes are real models' matrices; every one runs as the llama architecture, which is what the
kernels see (the families differ in norms and attention details, not in matrix shapes).

    python3 -m pip install numpy safetensors gguf
    python3 scripts/make_bench_model.py OUT_DIR [--shape tinyllama|llama3.2-1b|qwen2.5-0.5b|gemma3-1b]

Writes OUT_DIR/<shape>/ (the folder) and OUT_DIR/<shape>.f16.gguf. The weights are N(0, 0.02):
speed does not depend on their values. Nothing is downloaded.
"""

import argparse
import json
import os

import numpy as np
from safetensors.numpy import save_file
import gguf

SHAPES = {
    # TinyLlama-1.1B
    "tinyllama": dict(hidden=2048, layers=22, heads=32, kv=4, inter=5632, vocab=32000, tied=False, theta=10000.0),
    # Llama-3.2-1B: big vocabulary, tied embeddings
    "llama3.2-1b": dict(hidden=2048, layers=16, heads=32, kv=8, inter=8192, vocab=128256, tied=True, theta=500000.0),
    # Qwen2.5-0.5B's matrices: rows of 896 (not whole 256-blocks: llama-quantize falls back to
    # Q5_0 / Q8_0 / IQ4_NL there, as it does for the real model)
    "qwen2.5-0.5b": dict(hidden=896, layers=24, heads=14, kv=2, inter=4864, vocab=151936, tied=True, theta=1000000.0),
    # Gemma-3-1B's matrices: rows of 1152, head_dim 256 (not hidden / heads), a 262k vocabulary
    "gemma3-1b": dict(hidden=1152, layers=26, heads=4, kv=1, inter=6912, vocab=262144, tied=True, theta=1000000.0, head_dim=256),
}


def permute(w, heads):
    """llama.cpp's converter order for q/k rows (LlamaModel.permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--shape", default="tinyllama", choices=sorted(SHAPES))
    args = ap.parse_args()
    s = SHAPES[args.shape]
    h = s["hidden"]
    hd = s.get("head_dim", h // s["heads"])
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    tensors = {"model.embed_tokens.weight": w(s["vocab"], h), "model.norm.weight": np.ones(h, np.float16)}
    if not s["tied"]:
        tensors["lm_head.weight"] = w(s["vocab"], h)
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = np.ones(h, np.float16)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(h, np.float16)
        tensors[p + "self_attn.q_proj.weight"] = w(s["heads"] * hd, h)
        tensors[p + "self_attn.k_proj.weight"] = w(s["kv"] * hd, h)
        tensors[p + "self_attn.v_proj.weight"] = w(s["kv"] * hd, h)
        tensors[p + "self_attn.o_proj.weight"] = w(h, s["heads"] * hd)
        tensors[p + "mlp.gate_proj.weight"] = w(s["inter"], h)
        tensors[p + "mlp.up_proj.weight"] = w(s["inter"], h)
        tensors[p + "mlp.down_proj.weight"] = w(h, s["inter"])

    folder = os.path.join(args.out, args.shape)
    os.makedirs(folder, exist_ok=True)
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": h,
        "intermediate_size": s["inter"], "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"], "num_key_value_heads": s["kv"], "vocab_size": s["vocab"],
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": s["theta"],
        "tie_word_embeddings": s["tied"], "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2,
        "head_dim": hd,
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    # A stand-in vocabulary of the right size: speed tests feed token ids, not text.
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"t{i}" for i in range(s["vocab"] - len(tokens))]
    # SentencePiece-style (BPE with byte fallback, no merges), so `owrun quantize` can write it.
    tokenizer = {
        "version": "1.0",
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in enumerate(tokens[:3])],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None, "post_processor": None, "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": []},
    }
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f)
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("---\nlicense: mit\n---\nRandom weights for speed tests (owrun scripts/make_bench_model.py).\n")

    path = os.path.join(args.out, f"{args.shape}.f16.gguf")
    g = gguf.GGUFWriter(path, "llama")
    g.add_name(args.shape)
    g.add_context_length(2048)
    g.add_embedding_length(h)
    g.add_block_count(s["layers"])
    g.add_feed_forward_length(s["inter"])
    g.add_rope_dimension_count(hd)
    g.add_key_length(hd)
    g.add_value_length(hd)
    g.add_head_count(s["heads"])
    g.add_head_count_kv(s["kv"])
    g.add_layer_norm_rms_eps(1e-5)
    g.add_rope_freq_base(s["theta"])
    g.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    g.add_tokenizer_model("llama")
    g.add_tokenizer_pre("default")
    g.add_token_list(tokens)
    g.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(len(tokens) - 259)])
    g.add_token_types([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
                      + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * (len(tokens) - 259))
    g.add_bos_token_id(1)
    g.add_eos_token_id(2)
    g.add_unk_token_id(0)
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for name, t in tensors.items():
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            out = "output.weight"
        else:
            _, _, i, rest = name.split(".", 3)
            base = rest.rsplit(".", 1)[0]
            out = f"blk.{i}.{names[base]}.weight"
            if base == "self_attn.q_proj":
                t = permute(t, s["heads"])
            elif base == "self_attn.k_proj":
                t = permute(t, s["kv"])
        # Norms in f32, as the converter writes them.
        g.add_tensor(out, t.astype(np.float32) if t.ndim == 1 else t)
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
    print(f"{folder}: {sum(t.nbytes for t in tensors.values()) / 1e9:.2f} GB of f16 weights; {path}")


if __name__ == "__main__":
    main()
