#!/usr/bin/env bash
# `owrun serve` beside llama.cpp's `llama-server` on the same machine: aggregate decode tokens/s
# and time to first token for 1, 4, 16 and 32 concurrent streaming clients, the same GGUF file,
# the same number of slots as clients, the two servers alternating (which goes first flips at
# each client count).
#
#   OWRUN_BENCH_DIR=/path/to/cache bash scripts/bench_serve.sh [--clients "1 4 16 32"]
#       [--tokens 64] [--threads 2] [--models "stories260k tinyllama"]
#
# Needs the llama.cpp checkout and models of scripts/bench_cpu.sh (run that first); builds
# llama-server in that checkout when missing. Prints a markdown table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS="1 4 16 32"
TOKENS=64
THREADS=2
MODELS="stories260k tinyllama"
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) CLIENTS=$2; shift 2 ;;
    --tokens) TOKENS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --models) MODELS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

DIR=${OWRUN_BENCH_DIR:-$HOME/.cache/owrun-bench}
LLAMA=$DIR/llama.cpp
BIN=$LLAMA/build/bin
if [ ! -d "$LLAMA" ]; then
  echo "no llama.cpp checkout in $LLAMA: run scripts/bench_cpu.sh first" >&2
  exit 1
fi
if [ ! -x "$BIN/llama-server" ]; then
  export PATH=$DIR/venv/bin:$PATH
  # The sdist's .git file points into a repository that is not there; ninja would re-run
  # CMake forever over the missing index.
  [ -f "$LLAMA/.git" ] && mv "$LLAMA/.git" "$LLAMA/.git.sdist-stub"
  cmake -S "$LLAMA" -B "$LLAMA/build" -DLLAMA_BUILD_SERVER=ON >/dev/null
  cmake --build "$LLAMA/build" --target llama-server -j "$(nproc)" >/dev/null
fi

cargo build --release -q
OWRUN=$PWD/target/release/owrun
export OWRUN_HOME=$DIR/owrun-home
M=$DIR/models
if [ ! -f "$M/stories260k.f32.gguf" ]; then
  "$OWRUN" quantize stories260k -o "$M/stories260k.f32.gguf" >/dev/null
fi

PORT=18431
wait_ready() {
  for _ in $(seq 600); do
    if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "server on $PORT never became ready" >&2
  return 1
}

# run SERVER FILE N: start it with N slots, warm up, load it with N clients, stop it.
run() {
  local server=$1 file=$2 n=$3 pid
  if [ "$server" = owrun ]; then
    "$OWRUN" serve "$file" --port "$PORT" --parallel "$n" --threads "$THREADS" \
      --keep-alive -1 2>/dev/null &
  else
    "$BIN/llama-server" -m "$file" --host 127.0.0.1 --port "$PORT" -np "$n" \
      -c $((n * 512)) -t "$THREADS" -tb "$THREADS" >/dev/null 2>&1 &
  fi
  pid=$!
  wait_ready
  # Steady state: one identical round first (owrun's KV caches grow to what the round needs,
  # llama-server's are allocated at start; both reach their working memory).
  python3 scripts/serve_load.py --url "http://127.0.0.1:$PORT" --model "$file" --clients "$n" \
    --tokens "$TOKENS" >/dev/null
  python3 scripts/serve_load.py --url "http://127.0.0.1:$PORT" --model "$file" --clients "$n" \
    --tokens "$TOKENS"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

field() { python3 -c "import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print(v)" "$1" "$2"; }

echo "| model | clients | owrun tok/s | llama-server tok/s | owrun / llama | owrun TTFT s | llama TTFT s |"
echo "|---|---|---|---|---|---|---|"
flip=0
for model in $MODELS; do
  case $model in
    stories260k) file=$M/stories260k.f32.gguf ;;
    tinyllama) file=$M/tinyllama.Q4_K_M.gguf ;;
    *) file=$M/$model ;;
  esac
  for n in $CLIENTS; do
    if [ $flip = 0 ]; then
      o=$(run owrun "$file" "$n"); l=$(run llama "$file" "$n")
    else
      l=$(run llama "$file" "$n"); o=$(run owrun "$file" "$n")
    fi
    flip=$((1 - flip))
    ot=$(field "$o" aggregate_tok_s); lt=$(field "$l" aggregate_tok_s)
    ratio=$(python3 -c "print(f'{$ot / $lt:.2f}')")
    echo "| $model | $n | $ot | $lt | $ratio | $(field "$o" ttft_mean_s) | $(field "$l" ttft_mean_s) |"
  done
done
