#!/usr/bin/env bash
# GGUF fixtures written by llama.cpp's own convert_hf_to_gguf.py (from PyPI's llama-cpp-python
# 0.3.36 sdist), not by a re-implementation: what owrun must read is what that converter writes,
# keys it leaves out included (Gemma 2/3 27B's attention scale is one: the converter does not
# write it, llama.cpp infers it from the layer count).
#
#   scripts/convert_fixtures_with_llamacpp.sh [FAMILY...]    (default: every family in ALL below)
#
# Needs torch, transformers, sentencepiece and protobuf (the converter imports them): set PYTHON
# to an environment that has them (default: python3). The sdist is fetched into $OWRUN_BENCH_DIR
# (default ~/.cache/owrun-bench), as the benchmark scripts do.
#
# Which fixtures: those whose tokenizer files the converter takes as they are. Byte-level BPE
# vocabularies (llama, qwen2, qwen3) need their pre-tokenizer named (scripts/llamacpp_convert.py);
# SentencePiece ones need a tokenizer.model (gemma2, gemma3, gemma2_27b, phi3 and mixtral have
# one, made by scripts/make_fixtures.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
source scripts/llamacpp_sdist.sh
# family  converter's outtype  pre-tokenizer ("-": the converter's own recognition)
# A name of tests/fixtures/long/ (qwen2_yarn) is that fixture's model with its config changes.
ALL="gemma2:q8_0:- gemma3:q8_0:- gemma2_27b:f32:- phi3:q8_0:- mixtral:q8_0:- llama:q8_0:llama-bpe llama:f32:llama-bpe qwen2:q8_0:qwen2 qwen2:f32:qwen2 qwen3:q8_0:qwen2 qwen3_moe:q8_0:qwen2 qwen2_yarn:f32:qwen2"
for spec in $ALL; do
  IFS=: read -r fam outtype pre <<<"$spec"
  if [ $# -gt 0 ] && [[ " $* " != *" $fam "* ]]; then continue; fi
  # Q8_0 files are named after the family alone, as the tests expect.
  out=tests/fixtures/gguf/$fam.gguf
  [ "$outtype" = q8_0 ] || out=tests/fixtures/gguf/$fam.$outtype.gguf
  src=tests/fixtures/models/$fam
  if [ ! -d "$src" ]; then
    src=$DIR/variant-$fam
    rm -rf "$src"
    "$PYTHON" - "$fam" "$src" <<'PY'
import json, shutil, sys
fam, out = sys.argv[1], sys.argv[2]
spec = json.load(open(f"tests/fixtures/long/{fam}.json"))
shutil.copytree(f"tests/fixtures/models/{spec['model']}", out)
cfg = json.load(open(f"{out}/config.json"))
cfg.update(spec["config_changes"])
json.dump(cfg, open(f"{out}/config.json", "w"))
PY
  fi
  "$PYTHON" scripts/llamacpp_convert.py "$LLAMA" "$pre" "$src" \
    --outtype "$outtype" --outfile "$out" >"$DIR/convert-$fam.log" 2>&1 \
    || { tail -20 "$DIR/convert-$fam.log" >&2; exit 1; }
  echo "$fam ($outtype): $out ($(stat -c %s "$out") bytes)"
done
