# Sourced by the fixture converters: llama.cpp's sources from PyPI's llama-cpp-python 0.3.36
# sdist, fetched once into $OWRUN_BENCH_DIR (default ~/.cache/owrun-bench) with $PYTHON's pip.
# Sets DIR and LLAMA (the llama.cpp folder, with its convert_*.py scripts).
DIR=${OWRUN_BENCH_DIR:-$HOME/.cache/owrun-bench}
LLAMA=$DIR/llama.cpp
if [ ! -f "$LLAMA/convert_hf_to_gguf.py" ]; then
  mkdir -p "$DIR"
  ( cd "$DIR" && "$PYTHON" -m pip download -q --no-deps --no-build-isolation --no-binary \
      llama-cpp-python llama-cpp-python==0.3.36 -d sdist \
      && tar xzf sdist/llama_cpp_python-0.3.36.tar.gz \
      && rm -rf "$LLAMA" && mv llama_cpp_python-0.3.36/vendor/llama.cpp "$LLAMA" && rm -f "$LLAMA/.git" )
fi
