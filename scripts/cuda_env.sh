#!/usr/bin/env bash
# Source this to build owrun's CUDA variant on a machine with no GPU and no CUDA toolkit
# (docs/CUDA.md):
#   cargo fetch && source scripts/cuda_env.sh && CARGO_TARGET_DIR=target/cuda cargo build --release --features cuda
# Once, it downloads NVIDIA's CUDA 13.0 toolchain wheels from PyPI into $OWRUN_CUDA_WHEELS
# (default ~/.cache/owrun-cuda). Each time, it adds the linker names the wheels lack, builds a
# link-time stand-in for the driver library (libcuda.so) if there is none, and exports what
# candle's kernel build (nvcc) and cudarc (dynamic linking) read. Target: sm_90 (H100/H200).
wheels="${OWRUN_CUDA_WHEELS:-$HOME/.cache/owrun-cuda}"
root="$wheels/x/nvidia/cu13"
if [ ! -x "$root/bin/nvcc" ] || [ ! -e "$root/lib/libcublasLt.so.13" ]; then
  mkdir -p "$wheels/x" || return 1 2>/dev/null || exit 1
  python3 -m pip download --quiet --no-deps -d "$wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14 || return 1 2>/dev/null || exit 1
  for wheel in "$wheels"/nvidia_*.whl; do python3 -m zipfile -e "$wheel" "$wheels/x"; done
  chmod +x "$root"/bin/* "$root"/nvvm/bin/* 2>/dev/null
fi
(
  cd "$root/lib" || exit 1
  # The wheels ship versioned libraries only; the linker looks for the plain names.
  for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
    ln -sf "$lib" "${lib%%.so.*}.so"
  done
  mkdir -p stubs
  if [ ! -e stubs/libcuda.so ]; then
    # candle makes cudarc link libcuda dynamically, so a libcuda.so must exist at link time. This
    # one defines every cu* function cudarc declares, each returning an error; it is never
    # loaded at run time (the real driver's libcuda.so.1 is).
    cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$cudarc" ]; then
      echo "cuda_env.sh: run 'cargo fetch' first: cudarc's source must be in the registry" >&2
      exit 1
    fi
    grep -ohE '^\s+(pub )?fn cu[A-Za-z0-9_]+\(' "$cudarc"/src/driver/sys/*.rs \
      | sed -E 's/^\s+(pub )?fn //; s/\(//' | sort -u \
      | awk '{ print "int " $1 "(void) { return 999; }" }' > stubs/libcuda_stub.c
    gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o stubs/libcuda.so stubs/libcuda_stub.c
  fi
) || return 1 2>/dev/null || exit 1
export CUDA_ROOT="$root" CUDA_HOME="$root" NVCC="$root/bin/nvcc" PATH="$root/bin:$PATH"
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH="$root/lib:$root/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
