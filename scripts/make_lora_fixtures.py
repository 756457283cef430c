#!/usr/bin/env python3
"""Make owrun's LoRA fixtures: tiny random PEFT LoRA adapters on three of the base fixtures
(tests/fixtures/models/{llama,qwen2,gemma2}, which make_fixtures.py wrote and this script only
reads), and what Hugging Face transformers + PEFT compute with them (float32, eager attention).

    python3 -m pip install torch transformers safetensors tokenizers sentencepiece peft
    python3 scripts/make_lora_fixtures.py [NAME...]     # writes tests/fixtures/lora/<name>/

Each adapter is rank 4, lora_alpha 8, on q/k/v/o/gate/up/down_proj, bias "none", written by PEFT's
own save_pretrained (adapter_config.json + adapter_model.safetensors). PEFT starts lora_B at zero
(an adapter that changes nothing); here both A and B are drawn from a seeded generator, large
enough that the adapter changes the greedy tokens (of both prompts; gemma2: of the chat prompt, see
ADAPTERS) and moves the first-step logits clearly. As in make_fixtures.py, seeds
are searched until every greedy step has a clear winner (top-2 margin > 0.05). llama_rslora uses
rank-stabilised LoRA (use_rslora: scale alpha/sqrt(r) = 4 instead of alpha/r = 2); its seed is
also chosen so that the plain alpha/r scale would give different tokens, so a reader that ignores
use_rslora fails its test; its expected.json also records, under at_alpha_over_r, the result at
that plain scale, which is what llama.cpp computes with the converted GGUF (the converter keeps
alpha alone, and llama.cpp scales by alpha / rank).

base_model_name_or_path in adapter_config.json is "owrun-fixtures/<family>": not a Hugging Face
Hub id, a name for the base fixture tests/fixtures/models/<family> of this repository (PEFT would
otherwise record the absolute local path it was loaded from). Tools that resolve it against the
Hub (llama.cpp's convert_lora_to_gguf.py without --base) must be given the folder instead.

expected.json holds, for the plain and the chat prompt exactly as make_fixtures.py builds them
(its PLAIN_PROMPT, CHAT, NEW_TOKENS, run and greedy are imported, not copied): prompt_ids,
first_logits (6 places), new_token_ids, text; min_margin; the adapter's r, alpha, scale; how far
the result is from the base's expected.json; and the check that PEFT's merge_and_unload gives the
same tokens (merged_max_abs_diff: the largest logit difference, over every position of both
prompts and their continuations; merged_max_abs_diff_float64 the same in float64). The output
is deterministic for given torch/transformers/peft versions, which are recorded.
"""

import copy
import json
import math
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never ask the Hub

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

import peft
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402  (the prompts, the tokenizer's use, greedy decoding)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
MODELS = os.path.join(ROOT, "models")
OUT = os.path.join(ROOT, "lora")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8

# adapter name → (base fixture, use_rslora, STD, the prompts whose greedy tokens it must change).
# STD is the standard deviation of every element of lora_A and lora_B: with the scale s, an
# element of s * B @ A has standard deviation s * sqrt(r) * STD^2 — 0.08 at STD 0.2 and s = 2,
# 0.16 with rslora (s = 4), beside the base weights' 0.25. The gemma2 base answers each prompt with
# one token repeated, by a wide margin (its embeddings, scaled by sqrt(hidden), dominate two small
# layers): no adapter tried (STD 0.2 to 0.8, seeds 0 to 11) changed the plain prompt's tokens, so
# its adapter is stronger (STD 0.4: 0.64) and need only change the chat prompt's tokens.
ADAPTERS = {
    "llama": ("llama", False, 0.2, ("plain", "chat")),
    "qwen2": ("qwen2", False, 0.2, ("plain", "chat")),
    "gemma2": ("gemma2", False, 0.4, ("chat",)),
    "llama_rslora": ("llama", True, 0.2, ("plain", "chat")),
}
# Every adapter must also move both prompts' first-step logits by more than this.
MIN_LOGIT_CHANGE = 0.1


def base_name(family):
    return f"owrun-fixtures/{family}"


def set_lora_weights(model, seed, std):
    """Fill every lora_A / lora_B with N(0, std^2) from one seeded generator, in module order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in model.named_modules():
            if isinstance(module, LoraLayer):
                for lin in (module.lora_A["default"], module.lora_B["default"]):
                    lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * std)


def set_scaling(model, scale):
    for _, module in model.named_modules():
        if isinstance(module, LoraLayer):
            module.scaling["default"] = scale


def tokens(rec):
    return rec["plain"]["new_token_ids"] + rec["chat"]["new_token_ids"]


def n_differ(a, b):
    """Greedy steps at which two continuations differ (a length difference counts as differing)."""
    return sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))


def max_diff(a, b):
    return max(abs(x - y) for x, y in zip(a, b))


def all_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def build(name):
    family, rslora, std, must_change = ADAPTERS[name]
    d = os.path.join(MODELS, family)
    eos = mf.FAMILIES[family][5]
    with open(os.path.join(d, "expected.json")) as f:
        base_expected = json.load(f)
    fast = AutoTokenizer.from_pretrained(d)
    base = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()

    # The base fixture as make_fixtures.py recorded it (same tokenizer, same template, same model).
    base_rec = mf.run(base, fast, eos)
    for case in ("plain", "chat"):
        assert base_rec[case]["prompt_ids"] == base_expected[case]["prompt_ids"], (name, case)
        assert base_rec[case]["new_token_ids"] == base_expected[case]["new_token_ids"], (name, case)

    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, bias="none", lora_dropout=0.0,
                     use_rslora=rslora, init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg).eval()
    scale = ALPHA / math.sqrt(RANK) if rslora else ALPHA / RANK
    # llama_rslora's seeds start at 100, so that its weights are not llama's.
    first = 100 if rslora else 0
    for seed in range(first, first + 100):
        set_lora_weights(model, seed, std)
        record = mf.run(model, fast, eos)
        if record["min_margin"] <= 0.05:
            continue
        if any(record[c]["new_token_ids"] == base_expected[c]["new_token_ids"] for c in must_change):
            continue
        if any(max_diff(record[c]["first_logits"], base_expected[c]["first_logits"]) <= MIN_LOGIT_CHANGE
               for c in ("plain", "chat")):
            continue
        if rslora:
            # ... and the tokens must tell the rslora scale from the plain one.
            set_scaling(model, ALPHA / RANK)
            wrong = mf.run(model, fast, eos)
            set_scaling(model, scale)
            if wrong["min_margin"] <= 0.05 or any(
                    wrong[c]["new_token_ids"] == record[c]["new_token_ids"] for c in ("plain", "chat")):
                continue
            # What the same weights give at alpha/r: llama.cpp's convert_lora_to_gguf.py writes only
            # adapter.lora.alpha (use_rslora is lost) and llama.cpp scales by alpha / rank, so this
            # is what llama.cpp computes with tests/fixtures/lora/llama_rslora.gguf.
            record["at_alpha_over_r"] = {
                "scale": ALPHA / RANK, "min_margin": wrong["min_margin"],
                "tokens_differing_from_rslora": n_differ(tokens(wrong), tokens(record)),
                **{c: {k: wrong[c][k] for k in ("first_logits", "new_token_ids", "text")} for c in ("plain", "chat")}}
        break
    else:
        sys.exit(f"{name}: no seed without near-ties that changes the output")
    assert all(m.scaling["default"] == scale for _, m in model.named_modules() if isinstance(m, LoraLayer))

    record["differs_from_base"] = {
        c: {"tokens_differing": n_differ(record[c]["new_token_ids"], base_expected[c]["new_token_ids"]),
            "of": max(len(record[c]["new_token_ids"]), len(base_expected[c]["new_token_ids"])),
            "first_logits_max_abs_diff": round(max_diff(record[c]["first_logits"], base_expected[c]["first_logits"]), 6)}
        for c in ("plain", "chat")}
    record.update({"adapter": name, "base_model": base_name(family), "base_fixture": f"tests/fixtures/models/{family}",
                   "seed": seed, "r": RANK, "lora_alpha": ALPHA, "use_rslora": rslora, "scale": scale,
                   "target_modules": TARGETS, "lora_std": std})
    return model, fast, record, family


def verify(name, model, fast, record, family, out_dir):
    """merge_and_unload gives the same tokens; the saved files load back to the same logits."""
    seqs = [record[c]["prompt_ids"] + record[c]["new_token_ids"] for c in ("plain", "chat")]
    ref = [all_logits(model, s) for s in seqs]
    eos = mf.FAMILIES[family][5]

    merged = copy.deepcopy(model).merge_and_unload().eval()
    merged_rec = mf.run(merged, fast, eos)
    assert tokens(merged_rec) == tokens(record), f"{name}: merged model's greedy tokens differ"
    # In float32 the merged weights round differently from base + scale * B @ A computed apart:
    # the logits (up to ~15 here) then differ by a few units in their last place, more than 1e-5
    # in absolute terms, so the bound is relative. In float64 the merge is exact to 1e-10.
    diff = max(float((all_logits(merged, s) - r).abs().max()) for s, r in zip(seqs, ref))
    bound = 1e-5 * max(1.0, max(float(r.abs().max()) for r in ref))
    assert diff < bound, f"{name}: merged logits differ by {diff} (bound {bound})"
    model64 = copy.deepcopy(model).double()
    merged64 = copy.deepcopy(model64).merge_and_unload().eval()
    diff64 = max(float((all_logits(merged64, s) - all_logits(model64, s)).abs().max()) for s in seqs)
    assert diff64 < 1e-10, f"{name}: float64 merged logits differ by {diff64}"

    d = os.path.join(MODELS, family)
    fresh = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    loaded = PeftModel.from_pretrained(fresh, out_dir).eval()
    reload_diff = max(float((all_logits(loaded, s) - r).abs().max()) for s, r in zip(seqs, ref))
    assert reload_diff == 0.0, f"{name}: reloaded adapter differs by {reload_diff}"
    return diff, diff64


def main():
    names = sys.argv[1:] or list(ADAPTERS)
    torch.set_num_threads(1)  # one thread: float sums in one order, whatever the core count
    for name in names:
        model, fast, record, family = build(name)
        d = os.path.join(OUT, name)
        shutil.rmtree(d, ignore_errors=True)
        cfg = model.peft_config["default"]
        cfg.base_model_name_or_path = base_name(family)
        # PEFT keeps target_modules as a set, which it writes in the order of Python's (per-run,
        # randomised) string hashes; a list is written as it is.
        cfg.target_modules = list(TARGETS)
        # save_embedding_layers=False: PEFT would otherwise look base_model_name_or_path up on the
        # Hub to see whether the vocabulary changed (the adapter has no embedding layers).
        model.save_pretrained(d, safe_serialization=True, save_embedding_layers=False)
        with open(os.path.join(d, "adapter_config.json")) as f:
            assert json.load(f)["base_model_name_or_path"] == base_name(family)
        # PEFT writes a model card of its own (a template); this one replaces it.
        with open(os.path.join(d, "README.md"), "w") as f:
            f.write("---\nlicense: mit\n---\n# tiny random LoRA adapter " + name + " (owrun test fixture)\n\n"
                    f"For the base fixture tests/fixtures/models/{family} (named {base_name(family)} in "
                    "adapter_config.json). Made by scripts/make_lora_fixtures.py.\n")
        record["merged_max_abs_diff"], record["merged_max_abs_diff_float64"] = verify(name, model, fast, record, family, d)
        record.update({"transformers": transformers.__version__, "torch": torch.__version__,
                       "peft": peft.__version__, "system_folded": "System role" in fast.chat_template,
                       "chat_messages": mf.CHAT})
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump(record, f, indent=1, ensure_ascii=False)
        size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
        diffs = record["differs_from_base"]
        print(f"{name}: seed {record['seed']}, scale {record['scale']:g}, min margin {record['min_margin']:.3f}, "
              f"tokens differing from base: plain {diffs['plain']['tokens_differing']}/{diffs['plain']['of']}, "
              f"chat {diffs['chat']['tokens_differing']}/{diffs['chat']['of']}, "
              f"merged max abs diff {record['merged_max_abs_diff']:.2e}, {size} bytes")


if __name__ == "__main__":
    main()
