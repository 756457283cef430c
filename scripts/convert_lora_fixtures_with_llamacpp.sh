#!/usr/bin/env bash
# GGUF LoRA fixtures written by llama.cpp's own convert_lora_to_gguf.py (from PyPI's
# llama-cpp-python 0.3.36 sdist), not by a re-implementation: what owrun must read is what that
# converter writes. Input: the PEFT adapters of scripts/make_lora_fixtures.py
# (tests/fixtures/lora/<name>/); output: tests/fixtures/lora/<name>.gguf, in f32, and for llama
# also <name>.f16.gguf and <name>.bf16.gguf (16-bit adapters, which owrun keeps 16-bit).
#
#   scripts/convert_lora_fixtures_with_llamacpp.sh [NAME...]    (default: every adapter in ALL below)
#
# Needs torch, transformers and safetensors (the converter imports them): set PYTHON to an
# environment that has them (default: python3). The sdist is fetched into $OWRUN_BENCH_DIR
# (default ~/.cache/owrun-bench), as scripts/convert_fixtures_with_llamacpp.sh does.
#
# Offline: the adapters name their base "owrun-fixtures/<family>", which is no Hub id; --base
# gives the converter the base fixture's folder instead (it reads config.json alone, for the
# architecture and the head counts of the Q/K permutation; no weights). The converter writes no
# vocabulary for an adapter (its set_vocab does nothing), so unlike the base conversion it needs no
# pre-tokenizer name (scripts/llamacpp_convert.py). It writes lora_alpha alone: an adapter's
# use_rslora is lost, and llama.cpp scales llama_rslora.gguf by alpha / r (expected.json's
# at_alpha_over_r), not alpha / sqrt(r).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
source scripts/llamacpp_sdist.sh
# adapter:base fixture (tests/fixtures/models/...):type
ALL="llama:llama:f32 llama:llama:f16 llama:llama:bf16 qwen2:qwen2:f32 gemma2:gemma2:f32 llama_rslora:llama:f32"
for spec in $ALL; do
  IFS=: read -r name base type <<<"$spec"
  if [ $# -gt 0 ] && [[ " $* " != *" $name "* ]]; then continue; fi
  out=tests/fixtures/lora/$name.gguf
  [ "$type" = f32 ] || out=tests/fixtures/lora/$name.$type.gguf
  HF_HUB_OFFLINE=1 "$PYTHON" "$LLAMA/convert_lora_to_gguf.py" --base "tests/fixtures/models/$base" \
    --outtype "$type" --outfile "$out" "tests/fixtures/lora/$name" >"$DIR/convert-lora-$name.log" 2>&1 \
    || { tail -20 "$DIR/convert-lora-$name.log" >&2; exit 1; }
  echo "$name ($type): $out ($(stat -c %s "$out") bytes)"
done
