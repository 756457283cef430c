#!/usr/bin/env python3
"""Write GGUF test fixtures from the tiny Hugging Face fixtures in tests/fixtures/models/.

Now only for phi3 and mixtral, by default: every other GGUF fixture is written by llama.cpp's own
converter (scripts/convert_fixtures_with_llamacpp.sh; for llama, qwen2 and qwen3 its output is
byte for byte what this script writes). These two have no tokenizer.model for the converter, and
tried with one they showed two tokenizer differences still open: llama.cpp (and owrun's GGUF
path) put a "▁" after every special token where transformers' Llama tokenizer puts one only
when `legacy`, and `owrun quantize` drops the dummy prefix of a Metaspace tokenizer.json.

For each family in FAMILIES (llama, qwen2, qwen3, gemma2, gemma3, phi3, mixtral) this writes
tests/fixtures/gguf/<family>.gguf the way llama.cpp's convert_hf_to_gguf.py (conversion/ package,
as vendored in llama-cpp-python 0.3.36, llama.cpp build 0c1e570) writes that model with `--outtype q8_0`:

  * same metadata keys, in the same order (general.*, <arch>.* hparams, tokenizer.*),
  * same tensor names, tensor order and transformations (LlamaModel.permute of Q/K for the llama
    arch, Gemma "+1" on every *norm.weight, merged 3-D Mixtral experts, generated rope_freqs for
    llama3 rope scaling, fused Phi-3 qkv / gate_up kept fused),
  * same tensor types: 1-D tensors, *_norm.weight and ffn_gate_inp in F32, every other weight Q8_0
    (general.file_type = MOSTLY_Q8_0 = 7).

For llama and qwen2 it also writes <family>.f32.gguf with every tensor F32 (general.file_type =
ALL_F32 = 0), for exact-parity tests.

The fixtures' tokenizers exist only as tokenizer.json (no tokenizer.model), which the real converter
cannot always handle (gemma2/phi3 require tokenizer.model, and the BPE pre-tokenizer hash check
rejects the tiny byte-level vocabularies), so the vocabulary is written as the converter would for
the real models:
  * byte-level BPE (llama, qwen2, qwen3): tokenizer.ggml.model = "gpt2", pre = "llama-bpe" (llama)
    or "qwen2" (qwen2, qwen3), tokens / token_type as TextModel.get_vocab_base, merges, special ids
    and add_* flags as gguf.SpecialVocab.
  * SentencePiece-style BPE with byte fallback (gemma2, gemma3, phi3, mixtral): tokenizer.ggml.model
    = "llama", pre = "default", tokens/scores/token_type as _create_vocab_sentencepiece would produce
    from the equivalent tokenizer.model: NORMAL score = -(token id), CONTROL / BYTE / UNKNOWN score 0.
  * tokenizer.chat_template from chat_template.jinja (or tokenizer_config.json's chat_template).

HF-parity extras (omitted with --strict; see EXTRAS below): things the converter drops or hardcodes
although the tiny fixtures need them to reproduce the Hugging Face logits / token ids:
  * gemma2, gemma3: tokenizer.ggml.add_space_prefix = true (converter hardcodes false, which is right
    for real Gemma but these fixture tokenizers prepend "▁").
  * gemma3: gemma3.attention.sliding_window_pattern = per-layer bool array from layer_types
    (llama.cpp otherwise assumes a 5:1 pattern) and gemma3.attention.scale =
    query_pre_attn_scalar ** -0.5 (llama.cpp otherwise uses 1/sqrt(head_dim); not read by llama.cpp).
  * mixtral: llama.attention.sliding_window (HF Mixtral applies it; not read by llama.cpp).
  * phi3: general.name = "Tiny Random Phi 3" (what `convert_hf_to_gguf.py --model-name ...` writes)
    instead of "Phi3": llama.cpp keys a Phi-3 tokenizer hack on a name containing "phi3"/"phi-3"
    (RSTRIP on special tokens + a lookup of "<|endoftext|>", absent here, which fails the load).

Deterministic and idempotent: the output depends only on the input fixture files.

Run (from the repository root):
    /work/fxvenv/bin/python scripts/make_gguf_fixtures.py            # write + verify
    python scripts/make_gguf_fixtures.py [--strict] [--only llama qwen2] [--no-verify]
Needs: pip install torch safetensors numpy gguf
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from safetensors import safe_open

import gguf

# Gemma3Model.set_gguf_parameters re-adds keys TextModel already wrote (same values, same position);
# gguf's writer logs a warning for each, exactly as during a real conversion. Keep the output quiet.
logging.getLogger("gguf.gguf_writer").setLevel(logging.ERROR)

ROOT = Path(__file__).resolve().parent.parent
SRC_DIR = ROOT / "tests" / "fixtures" / "models"
OUT_DIR = ROOT / "tests" / "fixtures" / "gguf"

A = gguf.MODEL_ARCH
FAMILIES: dict[str, dict[str, Any]] = {
    #            gguf arch      converter class      tokenizer style, tokenizer.ggml.pre
    "llama":   dict(arch=A.LLAMA,  cls="LlamaModel",     vocab="gpt2", pre="llama-bpe"),
    "qwen2":   dict(arch=A.QWEN2,  cls="Qwen2Model",     vocab="gpt2", pre="qwen2"),
    "qwen3":   dict(arch=A.QWEN3,  cls="Qwen3Model",     vocab="gpt2", pre="qwen2"),
    "gemma2":  dict(arch=A.GEMMA2, cls="Gemma2Model",    vocab="spm"),
    "gemma3":  dict(arch=A.GEMMA3, cls="Gemma3Model",    vocab="spm"),
    "phi3":    dict(arch=A.PHI3,   cls="Phi3MiniModel",  vocab="spm"),
    "mixtral": dict(arch=A.LLAMA,  cls="LlamaModel",     vocab="spm"),
}
F32_TOO = ("llama", "qwen2")

TT = gguf.TokenType  # NORMAL=1 UNKNOWN=2 CONTROL=3 USER_DEFINED=4 UNUSED=5 BYTE=6


# --------------------------------------------------------------------------------------------------
# hparams (ModelBase.load_hparams + TextModel.__init__)
# --------------------------------------------------------------------------------------------------

def load_hparams(d: Path) -> dict[str, Any]:
    # The converter uses AutoConfig(...).to_dict(); for these fixtures that equals config.json plus
    # generic PretrainedConfig keys that no code path below reads.
    with open(d / "config.json", encoding="utf-8") as f:
        return json.load(f)


def find_hparam(hp: dict[str, Any], keys: Iterable[str], optional: bool = False) -> Any:
    key = next((k for k in keys if k in hp), None)
    if key is not None:
        return hp[key]
    if optional:
        return None
    raise KeyError(f"could not find any of: {keys}")


def rope_parameters(hp: dict[str, Any]) -> dict[str, Any]:
    """TextModel.__init__: mirror the global rope params into rope_parameters."""
    rp = dict(hp.get("rope_parameters", hp.get("rope_scaling")) or {})
    rope_theta = find_hparam(hp, ["global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base"], optional=True)
    local_rope_theta = find_hparam(hp, ["local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta", "rope_local_base_freq"], optional=True)
    partial_rotary_factor = find_hparam(hp, ["partial_rotary_factor", "rope_pct", "rope_percent"], optional=True)
    orig_max_pos = find_hparam(hp, ["original_max_position_embeddings"], optional=True)
    if "full_attention" not in rp and "sliding_attention" not in rp:
        if local_rope_theta is not None:
            rp["sliding_attention"] = {"rope_theta": local_rope_theta}
        if "rope_theta" not in rp and rope_theta is not None:
            rp["rope_theta"] = rope_theta
        if "rope_type" not in rp and (rope_type := rp.get("type")) is not None:
            rp["rope_type"] = rope_type
        if "partial_rotary_factor" not in rp and partial_rotary_factor is not None:
            rp["partial_rotary_factor"] = partial_rotary_factor
        if "original_max_position_embeddings" not in rp and orig_max_pos is not None:
            rp["original_max_position_embeddings"] = orig_max_pos
    return rp


# --------------------------------------------------------------------------------------------------
# tensors
# --------------------------------------------------------------------------------------------------

def llama_permute(weights: torch.Tensor, n_head: int, n_head_kv: int | None) -> torch.Tensor:
    """LlamaModel.permute (convert_hf_to_gguf): HF rotate-half Q/K rows -> GGML interleaved rope rows."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def llama3_rope_freqs(hp: dict[str, Any], rp: dict[str, Any]) -> torch.Tensor | None:
    """LlamaModel.generate_extra_tensors, verbatim arithmetic (float32 torch)."""
    rope_params = rp.get("full_attention", rp)
    if not rope_params or rope_params.get("rope_type", "").lower() != "llama3":
        return None
    base = rope_params.get("rope_theta", 10000.0)
    if (dim := hp.get("head_dim")) is None:
        dim = hp["hidden_size"] // hp["num_attention_heads"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rope_params.get("factor", 8.0)
    low_freq_factor = rope_params.get("low_freq_factor", 1.0)
    high_freq_factor = rope_params.get("high_freq_factor", 4.0)
    old_context_len = rope_params.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    rope_factors: list[Any] = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            rope_factors.append(1)
        elif wavelen > low_freq_wavelen:
            rope_factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor([float(x) for x in rope_factors], dtype=torch.float32)


def read_safetensors(d: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for part in sorted(p for p in d.iterdir() if p.name.startswith("model") and p.name.endswith(".safetensors")):
        with safe_open(str(part), framework="pt") as f:
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    # gguf.utility.SafetensorsLocal iterates tensors sorted by name
    return dict(sorted(tensors.items()))


def block_id(name: str) -> int | None:
    for part in name.split("."):
        if part.isdecimal():
            return int(part)
    return None


class TensorPipeline:
    """prepare_tensors() + the per-class modify_tensors() of the converter, for our 7 classes."""

    def __init__(self, family: str, d: Path, hp: dict[str, Any], rp: dict[str, Any]):
        self.family, self.d, self.hp, self.rp = family, d, hp, rp
        self.spec = FAMILIES[family]
        self.arch = self.spec["arch"]
        self.cls = self.spec["cls"]
        self.block_count = find_hparam(hp, ["n_layers", "num_hidden_layers", "n_layer", "num_layers"])
        self.tensor_map = gguf.get_tensor_name_map(self.arch, self.block_count)
        self._experts: list[dict[str, torch.Tensor]] | None = None

    def map_name(self, name: str) -> str:
        new_name = self.tensor_map.get_name(key=name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"Can not map tensor {name!r}")
        return new_name

    def filter(self, name: str) -> str | None:
        # Gemma2Model.filter_tensors drops lm_head (not present in our tied fixtures anyway)
        if self.cls == "Gemma2Model" and name == "lm_head.weight":
            return None
        if "language_model." in name:
            name = name.replace("language_model.", "")
        return name

    def modify(self, t: torch.Tensor, name: str, bid: int | None) -> Iterable[tuple[str, torch.Tensor]]:
        hp = self.hp
        if self.cls == "LlamaModel":
            n_head = find_hparam(hp, ["n_heads", "num_attention_heads"])
            n_kv_head = find_hparam(hp, ["n_kv_heads", "num_key_value_heads"])
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                t = llama_permute(t, n_head, n_head)
            if name.endswith(("k_proj.weight", "k_proj.bias")):
                t = llama_permute(t, n_head, n_kv_head)
            if name.find("block_sparse_moe.experts") != -1:
                n_experts = hp["num_local_experts"]
                assert bid is not None
                if self._experts is None:
                    self._experts = [{} for _ in range(self.block_count)]
                self._experts[bid][name] = t
                if len(self._experts[bid]) >= n_experts * 3:
                    for wid in ["w1", "w2", "w3"]:
                        datas = []
                        for xid in range(n_experts):
                            ename = f"model.layers.{bid}.block_sparse_moe.experts.{xid}.{wid}.weight"
                            datas.append(self._experts[bid].pop(ename))
                        yield self.map_name(f"layers.{bid}.feed_forward.experts.{wid}.weight"), torch.stack(datas, dim=0)
                return
        elif self.cls == "Gemma2Model":
            if name.endswith("norm.weight"):
                t = t + 1
        elif self.cls == "Gemma3Model":
            if "embed_tokens.weight" in name:
                with open(self.d / "tokenizer.json", encoding="utf-8") as f:
                    tj = json.load(f)
                n_vocab_real = len(tj["model"]["vocab"]) + len(tj["added_tokens"])
                t = t[:n_vocab_real]
            if name.endswith("norm.weight"):  # Gemma3Model.norm_shift
                t = t + 1.0
        # Qwen2Model / Qwen3Model / Phi3MiniModel: plain rename
        yield self.map_name(name), t

    def extra_tensors(self) -> Iterable[tuple[str, torch.Tensor]]:
        if self.cls == "LlamaModel":
            rf = llama3_rope_freqs(self.hp, self.rp)
            if rf is not None:
                yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rf
        # Phi3MiniModel.generate_extra_tensors: rope_factors_long/short only with long_factor (not here)
        if self.cls == "Phi3MiniModel" and self.rp.get("long_factor"):
            raise NotImplementedError("phi3 longrope fixtures are not handled by this script")

    def run(self, writer: gguf.GGUFWriter, ftype: gguf.LlamaFileType) -> list[tuple[str, str, tuple[int, ...]]]:
        log = []
        items: list[tuple[str, torch.Tensor]] = list(self.extra_tensors())
        for name, t in read_safetensors(self.d).items():
            if (name := self.filter(name)) is not None:
                items.append((name, t))
        for name, data_torch in items:
            if name.endswith((".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")):
                continue
            if data_torch.dtype not in (torch.float16, torch.float32):
                data_torch = data_torch.to(torch.float32)
            bid = block_id(name)
            for new_name, t in self.modify(data_torch, name, bid):
                data = t.numpy()
                n_dims = len(data.shape)
                qtype: gguf.GGMLQuantizationType | bool = False
                if n_dims <= 1 or new_name.endswith("_norm.weight"):
                    qtype = gguf.GGMLQuantizationType.F32
                forced_f32 = (gguf.MODEL_TENSOR.FFN_GATE_INP, gguf.MODEL_TENSOR.FFN_GATE_INP_SHEXP,
                              gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES)
                if qtype is False and (
                    any(self._matches(new_name, k, bid) for k in forced_f32)
                    or new_name[-7:] not in (".weight", ".lora_a", ".lora_b")
                ):
                    qtype = gguf.GGMLQuantizationType.F32
                if isinstance(qtype, bool):
                    qtype = {gguf.LlamaFileType.ALL_F32: gguf.GGMLQuantizationType.F32,
                             gguf.LlamaFileType.MOSTLY_Q8_0: gguf.GGMLQuantizationType.Q8_0}[ftype]
                out = gguf.quants.quantize(np.ascontiguousarray(data), qtype)
                writer.add_tensor(new_name, out, raw_dtype=qtype)
                log.append((new_name, qtype.name, tuple(reversed(data.shape))))
        if self._experts is not None and any(self._experts):
            raise ValueError(f"Unprocessed experts: {[k for d in self._experts for k in d]}")
        return log

    def _matches(self, name: str, key: gguf.MODEL_TENSOR, bid: int | None) -> bool:
        if key not in gguf.MODEL_TENSORS[self.arch]:
            return False
        key_name = gguf.TENSOR_NAMES[key]
        if "{bid}" in key_name:
            if bid is None:
                return False
            key_name = key_name.format(bid=bid)
        elif bid is not None:
            return False
        return name == key_name + ".weight"


# --------------------------------------------------------------------------------------------------
# gguf.SpecialVocab, ported from llama.cpp's gguf-py/gguf/vocab.py (the converter's copy, which is
# newer than gguf 0.19 on PyPI: ByteLevel post-processor and add_* precedence handling).
# --------------------------------------------------------------------------------------------------

class SpecialVocab:
    def __init__(self, path: Path, load_merges: bool = False, n_vocab: int | None = None):
        self.special_token_ids: dict[str, int] = {}
        self.add_special_token: dict[str, bool] = {}
        self.n_vocab = n_vocab
        self.load_merges = load_merges
        self.merges: list[str] = []
        self.chat_template: Any = None
        self.special_token_types: tuple[str, ...] = ('bos', 'eos', 'unk', 'sep', 'pad', 'cls', 'mask')
        self._try_load_from_tokenizer_json(path)
        self._try_load_from_config_json(path)

    def add_to_gguf(self, gw: gguf.GGUFWriter) -> None:
        if self.merges:
            gw.add_token_merges(self.merges)
        for typ, tokid in self.special_token_ids.items():
            handler: Callable[[int], None] | None = getattr(gw, f'add_{typ}_token_id', None)
            if handler is not None:
                handler(tokid)
        for typ, value in self.add_special_token.items():
            add_handler: Callable[[bool], None] | None = getattr(gw, f'add_add_{typ}_token', None)
            if add_handler is not None:
                add_handler(value)
        if self.chat_template is not None:
            gw.add_chat_template(self.chat_template)

    def _set_special_token(self, typ: str, tid: Any) -> None:
        if not isinstance(tid, int):
            return
        if tid < 0:
            raise ValueError(f'invalid value for special token type {typ}: {tid}')
        if self.n_vocab is None or tid < self.n_vocab:
            if typ in self.special_token_ids:
                return
            self.special_token_ids[typ] = tid

    def _try_load_from_tokenizer_json(self, path: Path) -> None:
        tokenizer = None
        tokenizer_file = path / 'tokenizer.json'
        if tokenizer_file.is_file():
            with open(tokenizer_file, encoding='utf-8') as f:
                tokenizer = json.load(f)
            if self.load_merges:
                merges = tokenizer.get('model', {}).get('merges')
                if isinstance(merges, list) and merges:
                    if isinstance(merges[0], str):
                        self.merges = merges
                    elif isinstance(merges[0], list) and len(merges[0]) == 2 and isinstance(merges[0][0], str):
                        self.merges = [' '.join(''.join(chr(ord(c) + 256) if c == ' ' else c for c in part)
                                                for part in pair) for pair in merges]
                    else:
                        raise ValueError("Unknown tokenizer merges format")
            # (normalizer Lowercase/StripAccents flags: none of our fixtures has them)
            added_tokens = tokenizer.get('added_tokens', {})
        else:
            added_tokens = {}
        tokenizer_config = None
        tokenizer_config_file = path / 'tokenizer_config.json'
        if tokenizer_config_file.is_file():
            with open(tokenizer_config_file, encoding='utf-8') as f:
                tokenizer_config = json.load(f)
        if tokenizer:
            special_bos = (tokenizer_config or {}).get('bos_token')
            special_cls = (tokenizer_config or {}).get('cls_token')
            special_eos = (tokenizer_config or {}).get('eos_token')
            special_sep = (tokenizer_config or {}).get('sep_token')
            if not special_bos and special_cls and tokenizer_config:
                tokenizer_config['bos_token'] = special_bos = special_cls
            if not special_eos and special_sep and tokenizer_config:
                tokenizer_config['eos_token'] = special_eos = special_sep
            if post_processor := tokenizer.get('post_processor'):
                for processor in post_processor.get('processors', [post_processor]):
                    processor_type = processor.get('type')
                    if processor_type == 'ByteLevel':
                        self.add_special_token.setdefault('bos', False)
                        self.add_special_token.setdefault('eos', False)
                    elif processor_type == 'RobertaProcessing':
                        self.add_special_token['bos'] = True
                        self.add_special_token['eos'] = True
                        self.add_special_token['sep'] = True
                        if not special_cls and tokenizer_config:
                            special_cls = processor.get('cls', [special_bos])[0]
                            tokenizer_config['cls_token'] = special_cls
                        if not special_sep and tokenizer_config:
                            special_sep = processor.get('sep', [special_eos])[0]
                            tokenizer_config['sep_token'] = special_sep
                        continue
                    elif processor_type == 'TemplateProcessing':
                        tmpl_single = processor.get('single', [])
                        tmpl_pair = processor.get('pair', [])
                        special_first = None
                        special_last = None
                        if len(tmpl_single) > 1:
                            if special_first := tmpl_single[0].get('SpecialToken', {}).get('id'):
                                if not tokenizer_config:
                                    special_bos = special_first
                                elif special_first not in (special_bos, special_cls):
                                    if not special_bos:
                                        tokenizer_config['bos_token'] = special_bos = special_first
                                    if not special_cls:
                                        tokenizer_config['cls_token'] = special_cls = special_first
                                self.add_special_token['bos'] = True if special_first in (special_bos, special_cls) else False
                            if special_last := tmpl_single[-1].get('SpecialToken', {}).get('id'):
                                if not tokenizer_config:
                                    special_eos = special_last
                                elif special_last != special_eos:
                                    if 'eot' not in self.special_token_types:
                                        self.special_token_types = tuple(self.special_token_types) + ('eot', )
                                        tokenizer_config['eot_token'] = special_eos
                                    elif 'eom' not in self.special_token_types:
                                        self.special_token_types = tuple(self.special_token_types) + ('eom', )
                                        tokenizer_config['eom_token'] = special_eos
                                    tokenizer_config['eos_token'] = special_eos = special_last
                                self.add_special_token['eos'] = True if special_last == special_eos else False
                        if tmpl_pair:
                            seq_start = 1 if special_first and tmpl_pair[0].get('SpecialToken', {}).get('id') == special_first else 0
                            seq_stop = -1 if special_last and tmpl_pair[-1].get('SpecialToken', {}).get('id') == special_last else None
                            if tmpl_pair := tmpl_pair[slice(seq_start, seq_stop)]:
                                tmpl_a = tmpl_pair[0].get('Sequence', {}).get('id')
                                tmpl_b = tmpl_pair[-1].get('Sequence', {}).get('id')
                                if tmpl_a == 'A' and tmpl_b == 'B' and (tmpl_pair := tmpl_pair[1:-1]):
                                    add_sep = False
                                    if special_entry := tmpl_pair[0].get('SpecialToken', {}).get('id'):
                                        if special_entry in (special_sep, special_eos) and not special_last:
                                            add_sep = True
                                    if len(tmpl_pair) == 2:
                                        if special_entry := tmpl_pair[1].get('SpecialToken', {}).get('id'):
                                            if special_entry in (special_sep, special_eos):
                                                add_sep = True
                                    self.add_special_token['sep'] = add_sep
                                    if add_sep and not special_sep and tokenizer_config:
                                        tokenizer_config['sep_token'] = special_eos
                        continue
        if not tokenizer_config:
            return
        chat_template_alt = None
        chat_template_json = path / 'chat_template.json'
        chat_template_jinja = path / 'chat_template.jinja'
        if chat_template_jinja.is_file():
            with open(chat_template_jinja, encoding='utf-8') as f:
                chat_template_alt = f.read()
            if additional := sorted((path / 'additional_chat_templates').glob('*.jinja')):
                chat_template_alt = [{'name': 'default', 'template': chat_template_alt}]
                for template_path in additional:
                    with open(template_path, encoding='utf-8') as fp:
                        chat_template_alt.append({'name': template_path.stem, 'template': fp.read()})
        elif chat_template_json.is_file():
            with open(chat_template_json, encoding='utf-8') as f:
                chat_template_alt = json.load(f).get('chat_template')
        chat_template = tokenizer_config.get('chat_template', chat_template_alt)
        if chat_template is None or isinstance(chat_template, (str, list)):
            self.chat_template = chat_template
        for typ in self.special_token_types:
            add_entry = tokenizer_config.get(f'add_{typ}_token')
            if isinstance(add_entry, bool) and typ not in self.add_special_token:
                self.add_special_token[typ] = add_entry
            entry = tokenizer_config.get(f'{typ}_token')
            if isinstance(entry, str):
                tc_content = entry
            elif isinstance(entry, dict):
                entry_content = entry.get('content')
                if not isinstance(entry_content, str):
                    continue
                tc_content = entry_content
            else:
                continue
            maybe_token_id = next((atok.get('id') for atok in added_tokens if atok.get('content') == tc_content), None)
            self._set_special_token(typ, maybe_token_id)

    def _try_load_from_config_json(self, path: Path) -> None:
        config_file = path / 'config.json'
        if not config_file.is_file():
            return
        with open(config_file, encoding='utf-8') as f:
            config = json.load(f)
        for typ in self.special_token_types:
            token_id = config.get(f'{typ}_token_id')
            if token_id is None and 'text_config' in config:
                token_id = config['text_config'].get(f'{typ}_token_id')
            self._set_special_token(typ, token_id)


# --------------------------------------------------------------------------------------------------
# vocab
# --------------------------------------------------------------------------------------------------

def does_token_look_special(token_text: str) -> bool:
    """TextModel.does_token_look_special."""
    seems_special = token_text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
    seems_special = seems_special or (token_text.startswith("<|") and token_text.endswith("|>"))
    seems_special = seems_special or (token_text.startswith("<｜") and token_text.endswith("｜>"))
    seems_special = seems_special or (token_text.startswith("<unused") and token_text.endswith(">"))
    return seems_special


def set_vocab_gpt2(w: gguf.GGUFWriter, d: Path, hp: dict[str, Any], pre: str) -> None:
    """TextModel._set_vocab_gpt2 / get_vocab_base, reading tokenizer.json instead of AutoTokenizer."""
    with open(d / "tokenizer.json", encoding="utf-8") as f:
        tj = json.load(f)
    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    added = {a["id"]: a for a in tj["added_tokens"]}
    for a in tj["added_tokens"]:
        vocab[a["content"]] = a["id"]
    vocab_size = hp.get("vocab_size", len(vocab))
    assert max(vocab.values()) < vocab_size
    reverse_vocab = {i: tok for tok, i in vocab.items()}
    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(vocab_size):
        if i not in reverse_vocab:
            tokens.append(f"[PAD{i}]")
            toktypes.append(TT.UNUSED)
            continue
        token = reverse_vocab[i]
        if i in added:
            # (non-normalized added tokens are decode(encode(token)) round-tripped by the converter:
            #  identity for these fixtures)
            if added[i]["special"] or does_token_look_special(token):
                toktypes.append(TT.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                toktypes.append(TT.USER_DEFINED)
        else:
            toktypes.append(TT.NORMAL)
        tokens.append(token)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(toktypes)
    SpecialVocab(d, load_merges=True).add_to_gguf(w)


BYTE_RE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def set_vocab_spm(w: gguf.GGUFWriter, d: Path, hp: dict[str, Any]) -> None:
    """_set_vocab_sentencepiece as it would run on the tokenizer.model equivalent to tokenizer.json."""
    with open(d / "tokenizer.json", encoding="utf-8") as f:
        tj = json.load(f)
    model = tj["model"]
    assert model["type"] == "BPE" and model.get("byte_fallback"), "expected BPE with byte_fallback"
    vocab: dict[str, int] = dict(model["vocab"])
    added = {a["id"]: a for a in tj["added_tokens"]}
    for a in tj["added_tokens"]:
        vocab[a["content"]] = a["id"]
    reverse_vocab = {i: tok for tok, i in vocab.items()}
    unk = model.get("unk_token")
    vocab_size = hp.get("vocab_size") or len(reverse_vocab)
    tokens: list[bytes] = [f"[PAD{i}]".encode("utf-8") for i in range(vocab_size)]
    scores: list[float] = [-10000.0] * vocab_size
    toktypes: list[int] = [TT.UNUSED] * vocab_size
    for i in range(vocab_size):
        if i not in reverse_vocab:
            continue
        piece = reverse_vocab[i]
        score = 0.0
        if piece == unk:
            toktype = TT.UNKNOWN
        elif BYTE_RE.fullmatch(piece):
            toktype = TT.BYTE
        elif i in added:
            if added[i]["special"] or does_token_look_special(piece):
                toktype = TT.CONTROL
            else:
                piece = piece.replace("\u2581", " ")
                toktype = TT.USER_DEFINED
        else:
            toktype = TT.NORMAL
            score = -float(i)  # SentencePiece BPE: score decreases with merge rank == id order here
        tokens[i] = piece.encode("utf-8")
        scores[i] = score
        toktypes[i] = toktype
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(toktypes)
    SpecialVocab(d, n_vocab=len(tokens)).add_to_gguf(w)


def spm_prepends_space(d: Path) -> bool:
    with open(d / "tokenizer.json", encoding="utf-8") as f:
        norm = json.load(f).get("normalizer") or {}
    items = norm.get("normalizers", [norm])
    return any(n.get("type") == "Prepend" and n.get("prepend") == "\u2581" for n in items) or \
        any(n.get("type") == "Metaspace" and n.get("prepend_scheme", "always") != "never" for n in items)


# --------------------------------------------------------------------------------------------------
# hyperparameters (set_gguf_parameters of each converter class)
# --------------------------------------------------------------------------------------------------

def text_model_params(w: gguf.GGUFWriter, hp: dict[str, Any], rp: dict[str, Any], block_count: int,
                      ftype: gguf.LlamaFileType) -> None:
    """TextModel.set_gguf_parameters (only the branches reachable for these fixtures assert-guarded)."""
    w.add_block_count(block_count)
    if (n_ctx := find_hparam(hp, ["max_position_embeddings", "n_ctx", "n_positions", "max_length", "max_sequence_length", "model_max_length"], optional=True)) is not None:
        w.add_context_length(n_ctx)
    if (n_embd := find_hparam(hp, ["hidden_size", "n_embd", "dim"], optional=True)) is not None:
        w.add_embedding_length(n_embd)
    if (n_ff := find_hparam(hp, ["prefix_dense_intermediate_size", "dense_intermediate_size", "intermediate_size", "n_inner", "hidden_dim"], optional=True)) is not None:
        w.add_feed_forward_length(n_ff)
    if (n_head := find_hparam(hp, ["num_attention_heads", "n_head", "n_heads"], optional=True)) is not None:
        w.add_head_count(n_head)
    if (n_head_kv := find_hparam(hp, ["num_key_value_heads", "n_kv_heads"], optional=True)) is not None:
        w.add_head_count_kv(n_head_kv)
    if hp.get("is_causal") is False:
        w.add_causal_attention(False)
    rope_params = rp.get("full_attention", rp)
    if (rope_type := rope_params.get("rope_type")) is not None:
        rope_factor = rope_params.get("factor")
        if rope_type == "linear" and rope_factor is not None:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(rope_factor)
        elif rope_type in ("yarn", "su", "longrope", "dynamic"):
            raise NotImplementedError(f"rope type {rope_type} not needed by these fixtures")
        # "default": nothing; "llama3": rope_freqs tensor (LlamaModel.generate_extra_tensors)
    assert "mrope_section" not in rp
    if (rope_theta := rope_params.get("rope_theta")) is not None:
        w.add_rope_freq_base(rope_theta)
    if (local_rope_theta := rp.get("sliding_attention", {}).get("rope_theta")) is not None:
        w.add_rope_freq_base_swa(local_rope_theta)
    if (f_rms_eps := find_hparam(hp, ["rms_norm_eps", "norm_eps"], optional=True)) is not None:
        w.add_layer_norm_rms_eps(f_rms_eps)
    assert find_hparam(hp, ["layer_norm_eps", "layer_norm_epsilon", "norm_epsilon"], optional=True) is None
    if (n_experts := find_hparam(hp, ["num_local_experts", "num_experts", "n_routed_experts"], optional=True)) is not None:
        w.add_expert_count(n_experts)
    if (n_experts_used := find_hparam(hp, ["num_experts_per_tok", "num_experts_per_token", "top_k_experts"], optional=True)) is not None:
        w.add_expert_used_count(n_experts_used)
    assert hp.get("n_group") is None and hp.get("topk_group") is None
    assert find_hparam(hp, ["score_function", "scoring_func", "score_func", "moe_router_activation", "moe_router_activation_func", "expert_selection_fn"], optional=True) is None
    if (head_dim := hp.get("head_dim")) is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(ftype)


def set_params(cls: str, w: gguf.GGUFWriter, hp: dict[str, Any], rp: dict[str, Any], block_count: int,
               ftype: gguf.LlamaFileType) -> None:
    if cls == "LlamaModel":
        text_model_params(w, hp, rp, block_count, ftype)
        w.add_vocab_size(hp["vocab_size"])
        if (rope_dim := hp.get("head_dim")) is None:
            rope_dim = hp["hidden_size"] // hp["num_attention_heads"]
        w.add_rope_dimension_count(rope_dim)
    elif cls in ("Qwen2Model", "Qwen3Model"):
        text_model_params(w, hp, rp, block_count, ftype)  # + _try_set_pooling_type: no modules.json
    elif cls == "Gemma2Model":
        w.add_context_length(hp["max_position_embeddings"])
        w.add_embedding_length(hp["hidden_size"])
        w.add_block_count(block_count)
        w.add_feed_forward_length(hp["intermediate_size"])
        w.add_head_count(hp["num_attention_heads"])
        w.add_head_count_kv(hp["num_key_value_heads"] if "num_key_value_heads" in hp else hp["num_attention_heads"])
        w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])
        w.add_file_type(ftype)
        w.add_attn_logit_softcapping(hp["attn_logit_softcapping"])
        w.add_final_logit_softcapping(hp["final_logit_softcapping"])
        w.add_sliding_window(hp["sliding_window"])
    elif cls == "Gemma3Model":
        text_model_params(w, hp, rp, block_count, ftype)
        w.add_context_length(hp.get("max_position_embeddings", 131072))
        w.add_head_count(hp.get("num_attention_heads", 8))
        w.add_layer_norm_rms_eps(hp.get("rms_norm_eps", 1e-6))
        w.add_key_length(hp.get("head_dim", 256))
        w.add_value_length(hp.get("head_dim", 256))
        w.add_rope_freq_base(rp.get("full_attention", rp).get("rope_theta", 1_000_000.0))
        assert hp.get("attn_logit_softcapping") is None
        if final_logit_softcap := hp.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(final_logit_softcap)
        if hp.get("sliding_window_pattern") != 1:
            w.add_sliding_window(hp["sliding_window"])
        w.add_head_count_kv(hp.get("num_key_value_heads", 4))
    elif cls == "Phi3MiniModel":
        n_embd = find_hparam(hp, ["hidden_size", "n_embd"])
        n_head = find_hparam(hp, ["num_attention_heads", "n_head"])
        n_head_kv = find_hparam(hp, ["num_key_value_heads", "n_head_kv"])
        rot_pct = rp.get("partial_rotary_factor", 1.0)
        w.add_context_length(find_hparam(hp, ["n_positions", "max_position_embeddings"]))
        w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
        w.add_embedding_length(n_embd)
        w.add_feed_forward_length(find_hparam(hp, ["intermediate_size"]))
        w.add_block_count(block_count)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_layer_norm_rms_eps(find_hparam(hp, ["rms_norm_eps"]))
        w.add_rope_dimension_count(int(rot_pct * n_embd) // n_head)
        w.add_rope_freq_base(rp.get("full_attention", rp)["rope_theta"])
        w.add_file_type(ftype)
        sliding_window = hp.get("sliding_window")
        w.add_sliding_window(0 if sliding_window is None else sliding_window)
    else:
        raise AssertionError(cls)


def set_vocab(family: str, w: gguf.GGUFWriter, d: Path, hp: dict[str, Any], strict: bool) -> None:
    spec = FAMILIES[family]
    if spec["vocab"] == "gpt2":
        set_vocab_gpt2(w, d, hp, spec["pre"])
        return
    if spec["cls"] == "LlamaModel":  # LlamaModel.set_vocab: add_prefix_space from tokenizer_config first
        with open(d / "tokenizer_config.json", encoding="utf-8") as f:
            if (aps := json.load(f).get("add_prefix_space")) is not None:
                w.add_add_space_prefix(aps)
    set_vocab_spm(w, d, hp)
    if spec["cls"] in ("Gemma2Model", "Gemma3Model"):
        # converter: add_add_space_prefix(False) (real Gemma tokenizers do not prepend "▁")
        w.add_add_space_prefix(False if strict else spm_prepends_space(d))


# EXTRAS: --model-name equivalent (see module docstring)
MODEL_NAME_OVERRIDE = {"phi3": "Tiny Random Phi 3"}


def add_extras(family: str, w: gguf.GGUFWriter, hp: dict[str, Any]) -> None:
    """EXTRAS: HF-parity keys the converter does not write (skipped with --strict)."""
    if family == "gemma3":
        if "layer_types" in hp:
            w.add_sliding_window_pattern([t == "sliding_attention" for t in hp["layer_types"]])
        if (qpas := hp.get("query_pre_attn_scalar")) is not None:
            w.add_attention_scale(float(qpas) ** -0.5)
    if family == "mixtral" and hp.get("sliding_window"):
        w.add_sliding_window(hp["sliding_window"])


# --------------------------------------------------------------------------------------------------
# driver (ModelBase.write: prepare_tensors, prepare_metadata, set_vocab, write)
# --------------------------------------------------------------------------------------------------

def convert(family: str, out: Path, ftype: gguf.LlamaFileType, strict: bool) -> list[tuple[str, str, tuple[int, ...]]]:
    d = SRC_DIR / family
    spec = FAMILIES[family]
    hp = load_hparams(d)
    rp = rope_parameters(hp)
    w = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[spec["arch"]])
    pipe = TensorPipeline(family, d, hp, rp)
    log = pipe.run(w, ftype)

    # prepare_metadata
    total_params, shared_params, expert_params, expert_count = w.get_total_parameter_count()
    model_name = None if strict else MODEL_NAME_OVERRIDE.get(family)
    metadata = gguf.Metadata.load(None, d, model_name, total_params)
    if metadata.name is None:
        metadata.name = d.name
    if metadata.size_label is None and total_params > 0:
        metadata.size_label = gguf.size_label(total_params, shared_params, expert_params, expert_count)
    w.add_type(gguf.GGUFType.MODEL)
    metadata.set_gguf_meta_model(w)
    set_params(spec["cls"], w, hp, rp, pipe.block_count, ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    set_vocab(family, w, d, hp, strict)
    if not strict:
        add_extras(family, w, hp)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    w.write_header_to_file(path=tmp)
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    tmp.replace(out)
    return log


# --------------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------------

def _field_value(field: Any) -> Any:
    t = field.types
    if not t:
        return None
    if t[0] == gguf.GGUFValueType.ARRAY:
        n = len(field.data)
        if t[-1] == gguf.GGUFValueType.STRING:
            vals = [bytes(field.parts[i]).decode("utf-8") for i in field.data[:4]]
        else:
            vals = [field.parts[i].tolist()[0] for i in field.data[:4]]
        return f"[{n} items] {vals}{' ...' if n > 4 else ''}"
    if t[0] == gguf.GGUFValueType.STRING:
        s = bytes(field.parts[field.data[0]]).decode("utf-8")
        return repr(s if len(s) <= 60 else s[:57] + "...")
    return field.parts[field.data[0]].tolist()[0]


def verify(path: Path, family: str) -> None:
    r = gguf.GGUFReader(path)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    print(f"\n=== {path.relative_to(ROOT)}  ({path.stat().st_size} bytes)  arch={arch}")
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        print(f"  {name:44s} = {_field_value(field)}")
    for t in r.tensors:
        print(f"  T {t.name:28s} {t.tensor_type.name:5s} ne={tuple(int(x) for x in t.shape)}")
    # numeric round-trip check against the HF weights for a few tensors
    hf = read_safetensors(SRC_DIR / family)
    tens = {t.name: t for t in r.tensors}

    def deq(name: str) -> np.ndarray:
        t = tens[name]
        return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(x) for x in reversed(t.shape)))

    emb = deq("token_embd.weight")
    ref = hf["model.embed_tokens.weight"].numpy()
    tol = 0 if tens["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32 else 0.02 * np.abs(ref).max()
    assert np.abs(emb - ref).max() <= tol, "token_embd mismatch"
    if "blk.0.attn_q.weight" in tens:
        q = deq("blk.0.attn_q.weight")
        qref = hf["model.layers.0.self_attn.q_proj.weight"]
        if FAMILIES[family]["cls"] == "LlamaModel":
            n_head = find_hparam(load_hparams(SRC_DIR / family), ["num_attention_heads"])
            qref = llama_permute(qref, n_head, n_head)
        qref = qref.numpy()
        tol = 0 if tens["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F32 else 0.02 * np.abs(qref).max()
        assert np.abs(q - qref).max() <= tol, "attn_q mismatch"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strict", action="store_true", help="omit the HF-parity extras (converter-exact metadata)")
    ap.add_argument("--only", nargs="*", default=None, help="families to write (default: all)")
    ap.add_argument("--no-verify", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    # The others come from llama.cpp's own converter now (see the header).
    families = args.only or ["phi3", "mixtral"]
    written: list[tuple[Path, str]] = []
    with torch.inference_mode():
        for family in families:
            if not (SRC_DIR / family / "config.json").is_file():
                print(f"skip {family}: no fixture")
                continue
            jobs = [(OUT_DIR / f"{family}.gguf", gguf.LlamaFileType.MOSTLY_Q8_0)]
            if family in F32_TOO:
                jobs.append((OUT_DIR / f"{family}.f32.gguf", gguf.LlamaFileType.ALL_F32))
            for out, ftype in jobs:
                convert(family, out, ftype, args.strict)
                written.append((out, family))
    total = 0
    for out, _ in written:
        size = out.stat().st_size
        total += size
        print(f"{str(out.relative_to(ROOT)):40s} {size:9d} bytes")
    print(f"{'total':40s} {total:9d} bytes")
    if not args.no_verify:
        for out, family in written:
            verify(out, family)
        print("\nverify: OK")


if __name__ == "__main__":
    sys.exit(main())
