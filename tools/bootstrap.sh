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
  echo "== ds: main job: a node, a client, the status, an engine benchmark =="
  model_args=()
  [ -f "$models/stories260K.gguf" ] && model_args=(--model "$models/stories260K.gguf" --ctx 512)
  port="${DS_PORT:-4242}"
  data="$build/node-data"
  "$build/ds-node" "${model_args[@]}" --bind 127.0.0.1 --port "$port" --http-port 0 --data-dir "$data" &
  node=$!
  trap 'kill -TERM $node 2>/dev/null; wait $node 2>/dev/null' EXIT
  for _ in $(seq 1 100); do
    "$build/ds-admin" --connect "127.0.0.1:$port" cluster status >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$build/ds-client" --connect "127.0.0.1:$port" generate --max-tokens 64 --stream "Once upon a time"
  "$build/ds-admin" --connect "127.0.0.1:$port" cluster status
  kill -TERM "$node"
  wait "$node"
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
