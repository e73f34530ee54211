#!/usr/bin/env bash
# Build llama-cpp-python once, with CPU flags chosen by the project (never the build machine's own),
# into .wheels/<version>-<arch>-<flags hash>/, and print the wheel's path.
#
# Why: pip's default build compiles llama.cpp with -march=native. A wheel built that way on one CPU dies
# with SIGILL on another (an AMX-capable Xeon picks AMX kernels the next machine lacks), and pip reuses a
# cached wheel whatever CMAKE_ARGS says. So the project builds its own wheel, with pip's cache off, keyed
# by the flags, and installs that file.
#
#   x86-64:  AVX2 + FMA + F16C + BMI2 (every x86-64 CPU since 2013-2015: Haswell, Zen); no AVX-512, no AMX.
#   aarch64: armv8-a with NEON (every 64-bit ARM: Graviton, Ampere, Apple silicon, Raspberry Pi 4).
# Override with LLAMA_CMAKE_ARGS (the key follows, so a different build never shadows this one).
set -euo pipefail

version=${LLAMA_CPP_VERSION:?set LLAMA_CPP_VERSION}
python=${PYTHON:-python3}
root=${WHEEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/textnlp/wheels}

arch=$(uname -m)
common="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
case "$arch" in
  x86_64|amd64)
    flags="$common -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF \
-DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
  aarch64|arm64)
    flags="$common -DGGML_CPU_ARM_ARCH=armv8-a" ;;
  *)
    flags="$common" ;;
esac
flags=${LLAMA_CMAKE_ARGS:-$flags}
pytag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
key=$(printf '%s|%s|%s|%s' "$version" "$arch" "$pytag" "$flags" | sha1sum | cut -c1-12)
dir="$root/llama-cpp-python-$version-$arch-$pytag-$key"

if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "Building llama-cpp-python $version for $arch with portable flags (several minutes, once):" >&2
  echo "  CMAKE_ARGS=$flags" >&2
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  CMAKE_ARGS="$flags" FORCE_CMAKE=1 CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}" \
    "$python" -m pip wheel --quiet --no-deps --no-cache-dir --no-binary llama-cpp-python \
    "llama-cpp-python==$version" -w "$dir.tmp" >&2
  printf '%s\n' "$flags" > "$dir.tmp/CMAKE_ARGS"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi
ls "$dir"/llama_cpp_python-*.whl
