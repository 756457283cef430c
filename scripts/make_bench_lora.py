#!/usr/bin/env python3
"""Make a LoRA adapter of a real model's shape for speed measurements: rank R on every projection
(q/k/v/o, gate/up/down) of every layer, random values, in PEFT's file layout (adapter_config.json
+ adapter_model.safetensors, the tensor names PEFT's save_pretrained writes). Speed does not
depend on the values; the parity fixtures in tests/fixtures/lora are made by PEFT itself
(scripts/make_lora_fixtures.py). The GGUF version is written by llama.cpp's own
convert_lora_to_gguf.py (scripts/bench_lora.sh runs it).

    python3 -m pip install numpy safetensors
    python3 scripts/make_bench_lora.py CONFIG_JSON OUT_DIR [--rank 16]

CONFIG_JSON is the base's config.json (a Llama-style model: hidden_size, intermediate_size,
num_hidden_layers, num_attention_heads, num_key_value_heads, optional head_dim).
"""
import argparse
import json
import os

import numpy as np
from safetensors.numpy import save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("out")
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    with open(args.config) as f:
        c = json.load(f)
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    hd = c.get("head_dim") or h // heads
    shapes = {  # module: (in, out)
        "self_attn.q_proj": (h, heads * hd),
        "self_attn.k_proj": (h, kv * hd),
        "self_attn.v_proj": (h, kv * hd),
        "self_attn.o_proj": (heads * hd, h),
        "mlp.gate_proj": (h, inter),
        "mlp.up_proj": (h, inter),
        "mlp.down_proj": (inter, h),
    }
    rng = np.random.default_rng(0)
    r = args.rank
    tensors = {}
    for layer in range(layers):
        for module, (n_in, n_out) in shapes.items():
            p = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{p}.lora_A.weight"] = (rng.standard_normal((r, n_in)) * 0.01).astype(np.float32)
            tensors[f"{p}.lora_B.weight"] = (rng.standard_normal((n_out, r)) * 0.01).astype(np.float32)
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "target_modules": [m.split(".")[1] for m in shapes],
        "base_model_name_or_path": os.path.basename(os.path.dirname(os.path.abspath(args.config))),
    }
    with open(os.path.join(args.out, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    size = os.path.getsize(os.path.join(args.out, "adapter_model.safetensors"))
    print(f"{args.out}: rank {r}, {layers} layers x 7 projections, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
