#!/usr/bin/env bash
# tools/fuzz.sh [SECONDS]: fuzzes the GGUF reader, the model loader and the tokenizers with
# libFuzzer + ASan + UBSan for SECONDS (default 60; 0 runs the corpus once and stops).
#   1. configures and builds ds_gguf_fuzz and ds_gguf_seed with clang in build-fuzz
#      (-DDS_FUZZ=ON -DDS_SANITIZE=ON, -fsanitize=fuzzer-no-link on the whole build);
#   2. writes the seed corpus into build-fuzz/corpus: tiny random models, tiny byte-level BPE
#      vocabularies and, when ../shared/models/vocab exists, cut-down copies of its GGUFs and
#      the files themselves (only their first -max_len bytes are fuzzed);
#   3. fuzzes; inputs that find new coverage are added to build-fuzz/corpus.
# Exits non-zero on a crash, sanitizer report, leak, timeout or out-of-memory, naming the
# reproducer (rerun it with: build-fuzz/ds_gguf_fuzz REPRODUCER).
# Environment: DS_JOBS (build jobs, default nproc), DS_FUZZ_BUILD_DIR (default build-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

secs="${1:-60}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac
build="${DS_FUZZ_BUILD_DIR:-$root/build-fuzz}"
jobs="${DS_JOBS:-$(nproc)}"

for tool in clang clang++; do
  command -v "$tool" >/dev/null || { echo "fuzz: $tool not found (bash tools/setup.sh installs clang and libclang-rt-14-dev)" >&2; exit 1; }
done

echo "== ds: fuzz build ($build) =="
mkdir -p "$build"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$root" -B "$build" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link -DCMAKE_CXX_FLAGS=-fsanitize=fuzzer-no-link \
  -DDS_FUZZ=ON -DDS_SANITIZE=ON -DDS_TESTS=OFF -DDS_CUDA=OFF >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log" >&2; echo "fuzz: cmake failed" >&2; exit 1; }
cmake --build "$build" -j "$jobs" --target ds_gguf_fuzz ds_gguf_seed

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

corpus="$build/corpus"
artifacts="$build/artifacts"
mkdir -p "$corpus" "$artifacts"
vocab="$root/../shared/models/vocab"
echo "== ds: seed corpus ($corpus) =="
if [ -d "$vocab" ]; then
  "$build/ds_gguf_seed" "$corpus" "$vocab"
  for f in "$vocab"/*.gguf; do
    [ -f "$f" ] && cp -f "$f" "$corpus/shared-$(basename "$f")"
  done
else
  echo "  (no $vocab: skipping the shared vocabularies)"
  "$build/ds_gguf_seed" "$corpus"
fi

log="$build/fuzz.log"
if [ "$secs" = 0 ]; then
  echo "== ds: running the corpus once =="
  limits=(-runs=0)
else
  echo "== ds: fuzzing for ${secs}s (log: $log) =="
  limits=(-max_total_time="$secs")
fi
set +e
"$build/ds_gguf_fuzz" "${limits[@]}" -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
  -artifact_prefix="$artifacts/" -print_final_stats=1 "$corpus" 2>&1 |
  tee "$log" | grep --line-buffered -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE) '
rc=${PIPESTATUS[0]}
set -e

if [ "$rc" -ne 0 ]; then
  repro="$(grep -o 'Test unit written to .*' "$log" | tail -n 1 | sed 's/^Test unit written to //')"
  echo >&2
  echo "fuzz: FAILED (ds_gguf_fuzz exited with $rc; full log: $log)" >&2
  if [ -n "$repro" ]; then
    echo "fuzz: reproducer: $repro" >&2
    echo "fuzz: rerun with: $build/ds_gguf_fuzz $repro" >&2
  fi
  exit 1
fi
execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
if [ "$secs" = 0 ]; then
  echo "fuzz: clean (${execs:-?} corpus inputs run once)"
else
  echo "fuzz: clean (${execs:-?} inputs run in ${secs}s; corpus: $(ls "$corpus" | wc -l) files)"
fi
