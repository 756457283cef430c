#!/usr/bin/env bash
# Does llama.cpp read what `owrun quantize` writes exactly as it reads a file laid out by its own
# converter? For each fixture family: the converter-style Q8_0 file (tests/fixtures/gguf) is
# llama-perplexity's KL-divergence base, owrun's Q8_0 file is measured against it; identical
# computations give a KL divergence of 0 and 100 % same top token.
#
#   scripts/check_gguf_llamacpp.sh [DIR_WITH_llama-perplexity]   (default: the bench_cpu.sh build)
#   (env FAMILIES: the fixtures to check, default all below)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${OWRUN_BENCH_DIR:-$HOME/.cache/owrun-bench}/llama.cpp/build/bin}
[ -x "$BIN/llama-perplexity" ] || { echo "no llama-perplexity in $BIN (run scripts/bench_cpu.sh once, or build its llama-perplexity target)" >&2; exit 2; }
cargo build --release -q
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for i in 1 2 3 4; do cat assets/kld_text.txt; done >"$OUT/text.txt"
failed=0
# Not phi3: llama.cpp 0.3.36 cannot load the tiny phi3 fixture its own converter writes
# ("error loading model vocabulary: unordered_map::at"), owrun's file or not.
for fam in ${FAMILIES:-llama qwen2 qwen3 gemma2 gemma3 mixtral qwen3_moe}; do
  OWRUN_HOME=$OUT/home ./target/release/owrun quantize "tests/fixtures/models/$fam" --quant q8_0 -o "$OUT/$fam.gguf" >/dev/null 2>&1
  if ! "$BIN/llama-perplexity" -m "tests/fixtures/gguf/$fam.gguf" -f "$OUT/text.txt" -c 64 -b 64 -t 2 \
    --kl-divergence-base "$OUT/$fam.base" >"$OUT/$fam.base.log" 2>&1; then
    printf '%-8s FAILED: llama.cpp could not read the converter'"'"'s file:\n' "$fam"
    tail -5 "$OUT/$fam.base.log"
    failed=1
    continue
  fi
  # A file llama.cpp cannot read, or reads differently, fails the check (exit 1 at the end).
  if ! "$BIN/llama-perplexity" -m "$OUT/$fam.gguf" -f "$OUT/text.txt" -c 64 -b 64 -t 2 \
    --kl-divergence-base "$OUT/$fam.base" --kl-divergence >"$OUT/$fam.log" 2>&1; then
    printf '%-8s FAILED: llama.cpp could not read owrun'"'"'s file:\n' "$fam"
    tail -5 "$OUT/$fam.log"
    failed=1
    continue
  fi
  kld=$(awk '/Mean    KLD/ {print $3; exit}' "$OUT/$fam.log")
  printf '%-8s %s | %s\n' "$fam" "$(grep -m1 'Mean    KLD' "$OUT/$fam.log")" "$(grep -m1 '^Same top p' "$OUT/$fam.log" || true)"
  if ! awk -v k="${kld:-nan}" 'BEGIN { exit !(k + 0 == k && k < 1e-4) }'; then
    echo "$fam FAILED: mean KL divergence ${kld:-missing}, expected < 1e-4" >&2
    failed=1
  fi
done
exit $failed
