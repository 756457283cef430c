#!/usr/bin/env bash
# GGUF fixtures written by llama.cpp's own convert_hf_to_gguf.py (from PyPI's llama-cpp-python
# 0.3.36 sdist), not by a re-implementation: what owrun must read is what that converter writes,
# keys it leaves out included (Gemma 2/3 27B's attention scale is one: the converter does not
# write it, llama.cpp infers it from the layer count).
#
#   scripts/convert_fixtures_with_llamacpp.sh [FAMILY...]    (default: every family listed below)
#
# Needs torch, transformers, sentencepiece and protobuf (the converter imports them): set PYTHON
# to an environment that has them (default: python3). The sdist is fetched into $OWRUN_BENCH_DIR
# (default ~/.cache/owrun-bench), as the benchmark scripts do.
#
# Families: each needs tokenizer files the converter accepts as they are (a tokenizer.model for
# the SentencePiece families), so only fixtures made for it are converted here; the older
# fixtures are written by scripts/make_gguf_fixtures.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DIR=${OWRUN_BENCH_DIR:-$HOME/.cache/owrun-bench}
LLAMA=$DIR/llama.cpp
if [ ! -f "$LLAMA/convert_hf_to_gguf.py" ]; then
  mkdir -p "$DIR"
  ( cd "$DIR" && "$PYTHON" -m pip download -q --no-deps --no-build-isolation --no-binary \
      llama-cpp-python llama-cpp-python==0.3.36 -d sdist \
      && tar xzf sdist/llama_cpp_python-0.3.36.tar.gz \
      && rm -rf "$LLAMA" && mv llama_cpp_python-0.3.36/vendor/llama.cpp "$LLAMA" && rm -f "$LLAMA/.git" )
fi
families=("$@")
[ ${#families[@]} -gt 0 ] || families=(gemma2_27b)
for fam in "${families[@]}"; do
  out=tests/fixtures/gguf/$fam.f32.gguf
  # The converter's own gguf-py (it puts it on the path itself), f32 so that owrun must agree
  # with transformers exactly.
  "$PYTHON" "$LLAMA/convert_hf_to_gguf.py" "tests/fixtures/models/$fam" --outtype f32 \
    --outfile "$out" >"$DIR/convert-$fam.log" 2>&1 \
    || { tail -20 "$DIR/convert-$fam.log" >&2; exit 1; }
  echo "$fam: $out ($(stat -c %s "$out") bytes)"
done
