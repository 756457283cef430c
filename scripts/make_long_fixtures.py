#!/usr/bin/env python3
"""Make owrun's long-context parity fixtures: what Hugging Face transformers computes for the tiny
fixture models (tests/fixtures/models, made by make_fixtures.py) on a prompt of a few thousand
tokens: the logits of the last positions of the prompt and the greedy tokens after it (float32,
eager attention, one forward over the whole prompt).

    python3 -m pip install torch transformers safetensors
    python3 scripts/make_long_fixtures.py       # writes tests/fixtures/long/<family>.json

The prompt is far past every sliding window (16 tokens) and every ring owrun keeps for one
(window + a chunk of 512), past Phi-3 LongRoPE's original context (so its long factors apply),
and longer than one of owrun's prefill chunks, so the test exercises chunked prefill, the rings
and the streaming attention at depth. The fixture models were trained for 256 positions; these
positions are past it, which changes nothing for the comparison (both sides rotate the same way).
Prompts are drawn until every greedy step has a clear winner (no near-ties).
"""

import json
import os
import shutil
import sys
import tempfile

import torch
import transformers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
FAMILIES = ["llama", "qwen2", "mistral", "gemma2", "gemma3", "phi3_longrope", "phi3_longrope_1000",
            "qwen2_yarn", "llama_yarn_mscale", "llama_dynamic"]
# A fixture model with its config.json changed (at the top level and in rope_parameters): Phi-3
# LongRoPE whose original context (1000) ends inside the prompt, past owrun's first prefill chunk
# (512), as Phi-3.5's 4096 does for a longer prompt: transformers' single forward uses the long
# factors for every position, so owrun's chunks must decide on the whole prompt, not each chunk.
# YaRN as Qwen2.5 / Qwen3 turn it on past 32k (factor 4 over an original context, here 1024, that
# the prompt passes), and as DeepSeek V2/V3 set it (mscale and mscale_all_dim, their own betas).
VARIANTS = {"phi3_longrope_1000": ("phi3_longrope", {"max_position_embeddings": 4096,
                                                       "original_max_position_embeddings": 1000}),
            "qwen2_yarn": ("qwen2", {"max_position_embeddings": 4096,
                                     "rope_parameters": {"rope_type": "yarn", "rope_theta": 1000000.0,
                                                         "factor": 4.0,
                                                         "original_max_position_embeddings": 1024}}),
            "llama_yarn_mscale": ("llama", {"max_position_embeddings": 4096,
                                            "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0,
                                                                "factor": 8.0, "mscale": 0.707,
                                                                "mscale_all_dim": 1.0, "beta_fast": 16,
                                                                "beta_slow": 2,
                                                                "original_max_position_embeddings": 512}}),
            # Dynamic NTK: past the stated context (1024), the base grows with the sequence.
            "llama_dynamic": ("llama", {"max_position_embeddings": 1024,
                                        "rope_parameters": {"rope_type": "dynamic", "rope_theta": 500000.0,
                                                            "factor": 2.0}})}
PROMPT_TOKENS = 3000
LAST = 4
NEW_TOKENS = 8


def prompt(vocab, seed):
    # A fixed walk over the vocabulary (ids 3.. to skip the usual specials).
    return [3 + (i * 2654435761 + seed * 97) % (vocab - 3) for i in range(PROMPT_TOKENS)]


def record(model, ids):
    with torch.no_grad():
        x = torch.tensor([ids])
        out = model(x, use_cache=True)
        last = out.logits[0, -LAST:].float()
        past = out.past_key_values
        logits = out.logits[0, -1].float()
        new, margins = [], []
        for _ in range(NEW_TOKENS):
            top = torch.topk(logits, 2).values
            margins.append(float(top[0] - top[1]))
            nxt = int(torch.argmax(logits))
            new.append(nxt)
            out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1].float()
    return [[round(v, 6) for v in row.tolist()] for row in last], new, min(margins)


def main():
    families = sys.argv[1:] or FAMILIES
    os.makedirs(os.path.join(ROOT, "long"), exist_ok=True)
    for family in families:
        base, changes = VARIANTS.get(family, (family, {}))
        d = os.path.join(ROOT, "models", base)
        if changes:
            d = os.path.join(tempfile.mkdtemp(), base)
            shutil.copytree(os.path.join(ROOT, "models", base), d)
            with open(os.path.join(d, "config.json")) as f:
                cfg = json.load(f)
            cfg.update(changes)
            for k, v in changes.items():
                if k in cfg.get("rope_parameters", {}):
                    cfg["rope_parameters"][k] = v
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(cfg, f)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            d, torch_dtype=torch.float32, attn_implementation="eager").eval()
        vocab = model.config.vocab_size
        for seed in range(50):
            ids = prompt(vocab, seed)
            last, new, margin = record(model, ids)
            if margin > 0.02:
                break
        else:
            sys.exit(f"{family}: no prompt without near-ties")
        rec = {"family": family, "model": base, "config_changes": changes, "prompt_ids": ids, "last_logits": last, "new_token_ids": new,
               "min_margin": margin, "transformers": transformers.__version__,
               "torch": torch.__version__}
        with open(os.path.join(ROOT, "long", f"{family}.json"), "w") as f:
            json.dump(rec, f)
        print(f"{family}: seed {seed}, margin {margin:.3f}")


if __name__ == "__main__":
    main()
