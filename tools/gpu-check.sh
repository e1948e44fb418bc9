#!/usr/bin/env bash
# tools/gpu-check.sh: the GPU machine's check of ds, in one command (< 8 minutes on an H100/H200).
#
#   step 1/4  environment, then configure + build the standalone tests/gpu project (nvcc, sm_90)
#   step 2/4  gpu_kernel_check: every CUDA op vs kernels/ref.cc, then GEMV/memcpy benchmarks
#   step 3/4  (engine generation + bench-1b benchmarks): build-gpu/ds-gpu-engine-check, only
#             when that binary exists (arguments from $DS_ENGINE_CHECK_ARGS)
#   step 4/4  summary table
#
# Needs nvcc, CMake (>= 3.18) and a C++20 compiler; no Debian packages (GTest, CLI11, ...).
# The whole output is also written to $OUT/gpu-check.log when $OUT is set, and again as
# $OUT/gpu-check-DATE-GPU-COMMIT.log: commit that one under docs/gpu-runs/ (see its README).
# Exit status: 0 when every step that ran passed; 1 otherwise; 2 when there is no usable GPU.
#
# Environment: DS_GPU_CHECK_BUDGET_S (default 450: the script's own deadline, seconds),
# DS_GPU_CHECK_ARGS (extra gpu_kernel_check arguments, e.g. "--no-bench"),
# DS_ENGINE_CHECK_ARGS (arguments of ds-gpu-engine-check), DS_GPU_CHECK_ENGINE_RESERVE_S
# (default 180: seconds of the budget step 2 leaves to step 3 even when it times out).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build="$root/build-gpucheck"
budget=${DS_GPU_CHECK_BUDGET_S:-450}
steps_file=$(mktemp /tmp/gpu-check-steps.XXXXXX)  # "name|status|seconds" lines (main runs in a pipeline)
log=$(mktemp /tmp/gpu-check.XXXXXX.log)

note_step() { printf '%s|%s|%s\n' "$1" "$2" "$3" >>"$steps_file"; }
banner() { printf '\n==================== %s ====================\n' "$*"; }
left() { echo $((budget - SECONDS)); }  # seconds left of the budget
limit() {  # a timeout leaving $1 seconds of the budget (at least 1: "timeout 0" would mean none)
  local s=$(($(left) - $1))
  echo $((s < 1 ? 1 : s))
}

main() {
  local rc=0 t0 status

  # ---- step 1/4: environment + build ------------------------------------------------
  banner "step 1/4: environment + build (standalone tests/gpu)"
  t0=$SECONDS
  [[ -d /usr/local/cuda/bin ]] && export PATH="/usr/local/cuda/bin:$PATH"
  echo "host: $(uname -srm), $(nproc) cores"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || true
  else
    echo "nvidia-smi: not found"
  fi
  for tool in nvcc cmake; do
    if ! command -v "$tool" >/dev/null; then
      echo "ERROR: $tool not found (PATH=$PATH)"
      note_step "1/4 build" "FAIL (no $tool)" $((SECONDS - t0))
      return 1
    fi
  done
  nvcc --version | tail -n 2
  cmake --version | head -n 1
  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  # A build folder configured elsewhere (another path or machine) is started afresh.
  if [[ -f $build/CMakeCache.txt ]] &&
     ! grep -q "^CMAKE_HOME_DIRECTORY:INTERNAL=$root/tests/gpu\$" "$build/CMakeCache.txt"; then
    rm -rf "$build"
  fi
  if timeout "$(limit 60)" cmake -S "$root/tests/gpu" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release &&
     timeout "$(limit 60)" cmake --build "$build" -j "$(nproc)"; then
    note_step "1/4 build" "ok" $((SECONDS - t0))
  else
    echo "ERROR: configuring or building tests/gpu failed (see above)"
    note_step "1/4 build" "FAIL" $((SECONDS - t0))
    return 1
  fi

  # ---- step 2/4: kernel checks + microbenchmarks ----------------------------------------
  banner "step 2/4: gpu_kernel_check (CUDA ops vs reference, GEMV/memcpy bandwidth)"
  t0=$SECONDS
  # Capped so that step 3 keeps $reserve seconds even when a kernel hangs (the persistent
  # decode kernel's grid barrier is checked last, for that reason).
  local reserve=${DS_GPU_CHECK_ENGINE_RESERVE_S:-180} cap
  cap=$(limit "$reserve")
  ((cap < 60)) && cap=$(limit 30)
  # shellcheck disable=SC2086
  timeout "$cap" "$build/gpu_kernel_check" ${DS_GPU_CHECK_ARGS:-}
  status=$?
  case $status in
    0) note_step "2/4 gpu_kernel_check" "PASS" $((SECONDS - t0)) ;;
    2) note_step "2/4 gpu_kernel_check" "FAIL (no usable GPU)" $((SECONDS - t0)); return 2 ;;
    124) note_step "2/4 gpu_kernel_check" "FAIL (timed out)" $((SECONDS - t0)); rc=1 ;;
    *) note_step "2/4 gpu_kernel_check" "FAIL (exit $status)" $((SECONDS - t0)); rc=1 ;;
  esac

  # ---- step 3/4 (engine generation + bench-1b benchmarks) ---------------------------------
  # The end-to-end check of the engine on the GPU: generation with the CUDA backend against
  # the CPU's output, then the bench-1b benchmarks. Runs build-gpu/ds-gpu-engine-check when
  # that binary exists (built into build-gpu by the ds project; carried or built before this
  # script). To build it here instead, add the commands just below.
  banner "step 3/4 (engine generation + bench-1b benchmarks)"
  t0=$SECONDS
  local engine="$build/ds-gpu-engine-check"
  if [[ -x $engine ]]; then
    if (($(left) < 40)); then
      echo "skipped: only $(left)s of the ${budget}s budget left"
      note_step "3/4 engine + bench-1b" "SKIPPED (no time)" 0
    else
      # shellcheck disable=SC2086
      # Default: the golden models carried with the tree (../shared/models, or a copy in
      # tests/gpu/models), bench-1b files written to /tmp.
      local models="$root/../shared/models"
      [[ -f $models/stories260K.gguf ]] || models="$root/tests/gpu/models"
      local args="${DS_ENGINE_CHECK_ARGS:---golden $models --bench-dir /tmp}"
      echo "+ $engine $args"
      (cd "$root" && timeout "$(limit 20)" "$engine" $args)
      status=$?
      if ((status == 0)); then
        note_step "3/4 engine + bench-1b" "PASS" $((SECONDS - t0))
      else
        note_step "3/4 engine + bench-1b" "FAIL (exit $status)" $((SECONDS - t0))
        rc=1
      fi
    fi
  else
    echo "skipped: $engine does not exist yet"
    note_step "3/4 engine + bench-1b" "skipped (no binary)" 0
  fi
  return $rc
}

# ---- step 4/4: summary ------------------------------------------------------------------
summary() {
  local rc=$1 log=$2
  banner "step 4/4: summary"
  if [[ -f $log ]]; then
    # gpu_kernel_check's per-kernel table, failures and benchmark lines.
    sed -n '/^== summary:/,/^$/p' "$log"
    grep -E '^CHECK FAIL' "$log" | head -n 20
    # What the start-up self-check of the unproven paths found (kernels/cuda/self_check.cc).
    grep -E '^(self-check on this device|kernel self-check at start-up)( \(a later engine, a different verdict\))?: ' "$log" | head -n 6
    grep -E '^(BENCH|BENCH-RATIO) ' "$log"
    grep -E '^RESULT: ' "$log" | head -n 1
    # ds-gpu-engine-check's bench-1b table (with its legend) and the persistent decode kernel's
    # lines: its checks, its timings beside the per-op path, what --fused-decode auto picks.
    awk '/^type +prefill +dec b1/ {p = 1} p {print} /followed by its details/ {p = 0}' "$log"
    grep -E '^(q8_0|f16|q4_k) +[0-9]' "$log"
    # One-off cost of a batch size's first decode step; the per-matrix copy floor of a step.
    grep -E '^(q8_0|f16|q4_k): (first decode step|copy chain|a decode step.s wall time|prefill 512 tokens with the F16|decode b8 at 1024)' "$log"
    grep -E '^(fused decode: |persistent decode kernel|(q8_0|f16)(: per-op path| auto: ))' "$log"
    # The CUPTI kernel traces: each traced stretch's heading and its totals (the per-kernel
    # tables are in the log above).
    grep -E '^(kernel trace, |  total: |  graph launches: )' "$log"
    grep -E '^RESULT: ' "$log" | tail -n 1
  fi
  printf '\n%-28s %-24s %8s\n' "step" "status" "seconds"
  local name status secs
  while IFS='|' read -r name status secs; do
    printf '%-28s %-24s %8s\n' "$name" "$status" "$secs"
  done <"$steps_file"
  printf '%-28s %-24s %8s\n' "total" "$( ((rc == 0)) && echo PASS || echo "FAIL (exit $rc)")" "$SECONDS"
}

main "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# Into its own file first: summary reads $log, so appending to it meanwhile fed the summary
# back into itself (the table printed dozens of times).
summary "$rc" "$log" >"$log.summary" 2>&1
cat "$log.summary"
cat "$log.summary" >>"$log"
rm -f "$log.summary"
if [[ -n ${OUT:-} ]]; then
  mkdir -p "$OUT" && cp "$log" "$OUT/gpu-check.log" && chmod 644 "$OUT/gpu-check.log"
  # The same log under the name docs/gpu-runs/ keeps it by (the device's output does not
  # outlive the session: commit it there).
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -c 'A-Za-z0-9.\n-' '-' | tr -s '-')
  named="$OUT/gpu-check-$(date -u +%F)-${gpu:-nogpu}-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo nogit).log"
  cp "$log" "$named" && chmod 644 "$named"
  echo "log: $named (commit it under docs/gpu-runs/)"
fi
rm -f "$log" "$steps_file"
exit "$rc"
