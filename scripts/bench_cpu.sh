#!/usr/bin/env bash
# owrun beside llama.cpp on the CPU, in one run on one machine: the same random-weight model of a
# real shape in each format, llama-bench and `owrun bench` alternating, one table of tokens/s and
# the ratio owrun / llama.cpp. Speed is only ever a ratio measured like this (machines differ).
#
#   scripts/bench_cpu.sh [--shape tinyllama|llama3.2-1b] [--threads "1 2"] [--reps 3] [--formats "f16 bf16 q8_0 q4_k_m"]
#
# Needs python3 with pip (PyPI reachable) and a C++ compiler. Everything it builds or makes is
# cached under $OWRUN_BENCH_DIR (default ~/.cache/owrun-bench), so a second run takes minutes:
#   - llama.cpp's llama-bench and llama-quantize, from the source in PyPI's llama-cpp-python sdist,
#     built with GGML_NATIVE=OFF and explicit AVX2/AVX-512/VNNI/BF16 (AMX off): native builds die
#     with "Illegal instruction" on the AMX-reporting CPUs some of these machines have;
#   - the model (scripts/make_bench_model.py) as safetensors for owrun and GGUF for llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPE=tinyllama THREADS="1 2" REPS=3 FORMATS="f16 bf16 q8_0 q4_k_m" PP=128 TG=64
while [ $# -gt 0 ]; do
  case "$1" in
    --shape) SHAPE=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --formats) FORMATS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
DIR=${OWRUN_BENCH_DIR:-$HOME/.cache/owrun-bench}
mkdir -p "$DIR"
VENV=$DIR/venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q numpy safetensors gguf cmake ninja scikit-build-core
fi
export PATH=$VENV/bin:$PATH

LLAMA=$DIR/llama.cpp
if [ ! -x "$LLAMA/build/bin/llama-bench" ]; then
  ( cd "$DIR" && pip download -q --no-deps --no-build-isolation --no-binary llama-cpp-python \
      llama-cpp-python==0.3.36 -d sdist && tar xzf sdist/llama_cpp_python-0.3.36.tar.gz \
      && rm -rf "$LLAMA" && mv llama_cpp_python-0.3.36/vendor/llama.cpp "$LLAMA" )
  cmake -S "$LLAMA" -B "$LLAMA/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
    -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF \
    -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$LLAMA/build" --target llama-bench llama-quantize -j "$(nproc)" >/dev/null
fi
BIN=$LLAMA/build/bin

M=$DIR/models
if [ ! -f "$M/$SHAPE.f16.gguf" ]; then
  python scripts/make_bench_model.py "$M" --shape "$SHAPE"
fi
for q in BF16 Q8_0 Q4_K_M; do
  [ -f "$M/$SHAPE.$q.gguf" ] || "$BIN/llama-quantize" "$M/$SHAPE.f16.gguf" "$M/$SHAPE.$q.gguf" "$q" >/dev/null 2>&1
done

cargo build --release -q
OWRUN=./target/release/owrun
export OWRUN_HOME=$DIR/owrun-home

# The memory-read bandwidth probe (scripts/bandwidth.c): GB/s with N threads.
# Compiled for the widest loads the CPU has: plain SSE2 loads measured 10-15% less here.
PROBE=$DIR/bandwidth
probe_flags=-O3
grep -qw avx2 /proc/cpuinfo 2>/dev/null && probe_flags="-O3 -mavx2"
grep -qw avx512f /proc/cpuinfo 2>/dev/null && probe_flags="-O3 -mavx512f"
[ -x "$PROBE" ] && [ "$PROBE" -nt scripts/bandwidth.c ] && [ "$PROBE" -nt "$0" ] ||
  cc $probe_flags -pthread scripts/bandwidth.c -o "$PROBE"

# One llama-bench run: "pp_tps tg_tps".
llama() {
  "$BIN/llama-bench" -m "$1" -t "$T" -p "$PP" -n "$TG" -r "$REPS" -o json 2>/dev/null |
    python -c 'import json,sys; r=json.load(sys.stdin); print(*[x["avg_ts"] for x in r])'
}
# One owrun bench run: "pp_tps tg_tps peak_rss_bytes".
owrun() {
  "$OWRUN" bench "$@" -p "$PP" -n "$TG" -r "$REPS" --threads "$T" --json 2>/dev/null |
    python -c 'import json,sys; r=json.load(sys.stdin); t=r["tests"]; print(t[0]["tokens_per_s"], t[1]["tokens_per_s"], r["peak_rss_bytes"])'
}
ratio() { python -c "print(f'{$1/$2:.2f}')"; }

# The floor of decoding: every weight read once per token (the GGUF's size, which counts the
# token embeddings too: 6% of an untied TinyLlama, so the floor is a little pessimistic),
# at the bandwidth measured just before the pair of runs (the better of two probes). "% floor"
# is each runner's decode speed as a fraction of that; above 100% means the probe, one plain
# summing loop per thread, read slower than the runner did (the machines' bandwidth also moves
# by ±15% from one minute to the next).
echo "shape $SHAPE, pp$PP / tg$TG, $REPS repetitions, llama-bench and owrun bench alternating"
printf '%-3s %-8s %-18s %9s %9s %8s %9s %9s %8s %8s %10s %12s\n' t format owrun-weights "llama pp" "owrun pp" "pp ratio" "llama tg" "owrun tg" "tg ratio" "GB/s" "floor tg" "% floor l/o"
for T in $THREADS; do
for f in $FORMATS; do
  case $f in
    f16) gguf=F16; flags=(--dtype f16) ;;
    bf16) gguf=BF16; flags=(--dtype bf16) ;;
    q8_0) gguf=Q8_0; flags=(--quant q8_0) ;;
    q4_k_m) gguf=Q4_K_M; flags=(--quant q4_k_m) ;;
    *) echo "unknown format $f" >&2; exit 2 ;;
  esac
  file=$M/$SHAPE.$gguf.gguf
  [ "$gguf" = F16 ] && file=$M/$SHAPE.f16.gguf
  # Warm the quantization cache and the page cache outside the timed runs.
  "$OWRUN" bench "$M/$SHAPE" "${flags[@]}" -p 8 -n 2 -r 1 >/dev/null 2>&1 || true
  bytes=$(stat -c %s "$file")
  runs=("folder ${flags[*]}|$M/$SHAPE ${flags[*]}")
  # owrun on llama.cpp's own quantized file, too.
  if [ "$gguf" = Q8_0 ] || [ "$gguf" = Q4_K_M ]; then runs+=("llama.cpp's GGUF|$file"); fi
  for run in "${runs[@]}"; do
    label=${run%%|*}
    gbs=$(python -c "print(max($("$PROBE" "$T"), $("$PROBE" "$T")))")
    read -r lpp ltg <<<"$(llama "$file")"
    # shellcheck disable=SC2086
    read -r opp otg orss <<<"$(owrun ${run#*|})"
    floor=$(python -c "print(f'{$gbs * 1e9 / $bytes:.1f}')")
    printf '%-3s %-8s %-18s %9.1f %9.1f %8s %9.1f %9.1f %8s %8s %10s %12s  RSS %.2fG\n' "$T" "$f" "$label" \
      "$lpp" "$opp" "$(ratio "$opp" "$lpp")" "$ltg" "$otg" "$(ratio "$otg" "$ltg")" "$gbs" "$floor" \
      "$(python -c "print(f'{100*$ltg/$floor:.0f}/{100*$otg/$floor:.0f}')")" "$(python -c "print($orss/1e9)")"
  done
done
done
