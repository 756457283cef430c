#!/usr/bin/env python3
"""The peer for `owrun bench`: prefill and decode tokens/s of Hugging Face transformers on the
same model folder, measured the same way (pp: one forward over P tokens; tg: N single-token
steps with the KV cache after a 1-token prompt; greedy; mean ± sd over R runs).

    python3 scripts/bench_transformers.py MODEL_DIR [-p 128] [-n 64] [-r 3] [--threads N] [--dtype f32]
"""
import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, DynamicCache

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("-p", type=int, default=128)
ap.add_argument("-n", type=int, default=64)
ap.add_argument("-r", type=int, default=3)
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
a = ap.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a.dtype]
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="sdpa").eval()
vocab = model.config.vocab_size
prompt = torch.tensor([[3 + (i * 7919) % (vocab - 3) for i in range(a.p)]])
pp, tg = [], []
with torch.inference_mode():
    for _ in range(a.r):
        t = time.perf_counter()
        model(prompt, past_key_values=DynamicCache(), use_cache=True)
        pp.append(a.p / (time.perf_counter() - t))
        cache = DynamicCache()
        out = model(prompt[:, :1], past_key_values=cache, use_cache=True)
        t = time.perf_counter()
        for _ in range(a.n):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
        tg.append(a.n / (time.perf_counter() - t))
sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
print(f"transformers {torch.__version__} threads {torch.get_num_threads()} {a.dtype}")
print(f"pp{a.p}  {statistics.mean(pp):.2f} ± {sd(pp):.2f} t/s")
print(f"tg{a.n}  {statistics.mean(tg):.2f} ± {sd(tg):.2f} t/s")
