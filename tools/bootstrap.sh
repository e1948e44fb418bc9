#!/usr/bin/env bash
# tools/bootstrap.sh: the README's two commands.
#   bash tools/bootstrap.sh run    install deps, build (Release), run the main job
#   bash tools/bootstrap.sh test   install deps, build (Release), run the whole test suite
# Run as root on a fresh Debian 12 machine (or as a user with sudo). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-run}"
case "$mode" in run|test) ;; *) echo "usage: $0 run|test" >&2; exit 2 ;; esac

bash tools/setup.sh

jobs="${DS_JOBS:-$(nproc)}"
build="${DS_BUILD_DIR:-build}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDS_CUDA="${DS_CUDA:-AUTO}"
cmake --build "$build" -j "$jobs"

models="../shared/models"
if [ "$mode" = run ]; then
  echo
  echo "== ds: main job: a local cluster of 3 nodes, a client, the status, an engine benchmark =="
  model_args=()
  [ -f "$models/stories260K.gguf" ] && model_args=(--model "$models/stories260K.gguf" --ctx 512)
  export DS_BUILD_DIR="$build"
  trap 'bash tools/local-cluster.sh stop' EXIT
  bash tools/local-cluster.sh start 3 -- "${model_args[@]}"
  port="${DS_PORT:-4242}"
  for p in $port $((port + 1)) $((port + 2)); do
    "$build/ds-client" --connect "127.0.0.1:$p" generate --max-tokens 48 --stream "Once upon a time"
  done
  bash tools/local-cluster.sh status
  bash tools/local-cluster.sh stop
  trap - EXIT
  "$build/ds-mkmodel" --preset bench-110m --type q8_0 --seed 1 -o "$build/bench-110m-q8_0.gguf"
  "$build/ds-bench" engine --model "$build/bench-110m-q8_0.gguf" --prompt 128 --gen 32 --batch 1,8
  exit 0
fi

echo
echo "== ds: tests =="
(cd "$build" && ctest --output-on-failure -j "$jobs" --timeout 900)
if [ "${DS_SKIP_FUZZ:-0}" != 1 ]; then
  bash tools/fuzz.sh "${DS_FUZZ_SECONDS:-60}"
fi
