#!/usr/bin/env bash
# tests/gpu/emu/run.sh: builds tests/gpu/gpu_kernel_check against the CPU emulation of CUDA
# in tests/gpu/emu (kernels/cuda/*.cu compiled as C++, each CUDA thread a fiber) and
# runs its checks. For machines without a GPU: it tests the kernels' indexing, reductions,
# barriers and CudaBackend's dispatch (cuBLAS call shapes included), not speed.
#
#   tests/gpu/emu/run.sh [build-dir [gpu_kernel_check args]]   (default build-emu; ~4 minutes on 2 cores)
#   tests/gpu/emu/run.sh build-emu --only attention,matmul     (some check groups only)
#   DS_EMU_FLAGS="-fsanitize=address,undefined" tests/gpu/emu/run.sh build-emu-asan
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
out=${1:-$root/build-emu}
shift || true  # the rest goes to gpu_kernel_check (e.g. --only attention,matmul)
mkdir -p "$out"
cxx=${CXX:-g++}
# shellcheck disable=SC2206
flags=(-std=c++20 -O2 -g -pthread -DDS_CUDA_EMULATION=1 -DDS_HAVE_CUDA=1 -I"$root/tests/gpu/emu/include" -I"$root"
       -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas ${DS_EMU_FLAGS:-})

objs=()
compile() {  # compile <source> [language]
  local src=$1 lang=${2:-}
  local obj
  obj="$out/$(basename "$src").o"
  if [[ ! -f $obj || $root/$src -nt $obj || -n $(find "$root/kernels" "$root/tests/gpu" -newer "$obj" \( -name '*.h' -o -name '*.cuh' \) -print -quit) ]]; then
    echo "emu: compiling $src"
    if [[ -n $lang ]]; then "$cxx" "${flags[@]}" -x "$lang" -c "$root/$src" -o "$obj"
    else "$cxx" "${flags[@]}" -c "$root/$src" -o "$obj"; fi
  fi
  objs+=("$obj")
}
for f in kernels/cuda/cuda_backend.cu kernels/cuda/elementwise.cu kernels/cuda/gemv.cu kernels/cuda/gemv_float.cu \
         kernels/cuda/gemv_q8_0.cu kernels/cuda/gemv_q4_0_q6_k.cu kernels/cuda/gemv_q4_k.cu kernels/cuda/gemv_i8.cu \
         kernels/cuda/gemm_tc.cu kernels/cuda/attention.cu kernels/cuda/attention_tc.cu kernels/cuda/sample.cu kernels/cuda/decode_fused.cu; do
  compile "$f" c++
done
for f in kernels/dtype.cc kernels/ref.cc kernels/sampling.cc kernels/cuda/nccl_comm.cc kernels/cuda/self_check.cc tests/gpu/kernel_trace.cc tests/gpu/emu/emu.cc \
         tests/gpu/gpu_kernel_check.cc tests/gpu/kernel_check/*.cc; do
  compile "$f"
done
"$cxx" "${flags[@]}" "${objs[@]}" -o "$out/gpu_kernel_check_emu"
echo "emu: running $out/gpu_kernel_check_emu --quick --no-bench $*"
exec "$out/gpu_kernel_check_emu" --quick --no-bench "$@"
