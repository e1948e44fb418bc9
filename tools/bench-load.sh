#!/usr/bin/env bash
# tools/bench-load.sh: is the actor path thin? The engine's batch-C decode tok/s against the
# generated tok/s of C closed-loop streams through a ds-node and the ds::Client library, on
# the same model file, measured one after the other in one ds-bench run (engine first, while
# the node idles; then the load).
#   bash tools/bench-load.sh [--json]
# Environment (defaults): DS_BUILD_DIR (build), PRESET (bench-110m), TYPE (q8_0),
# THREADS (2), CONCURRENCY (8), REQUESTS (32), PROMPT_TOKENS (32), MAX_TOKENS (64),
# PORT (a free one). Exit code: ds-bench's (0 ok).
set -euo pipefail
cd "$(dirname "$0")/.."
build="${DS_BUILD_DIR:-build}"
preset="${PRESET:-bench-110m}"
type="${TYPE:-q8_0}"
threads="${THREADS:-2}"
conc="${CONCURRENCY:-8}"
requests="${REQUESTS:-32}"
prompt="${PROMPT_TOKENS:-32}"
gen="${MAX_TOKENS:-64}"
port="${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"

work="$(mktemp -d "${TMPDIR:-/tmp}/ds-bench-load-XXXXXX")"
node_pid=""
cleanup() {
  if [ -n "$node_pid" ]; then
    kill -TERM "$node_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$node_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

model="$work/$preset-$type.gguf"
"$build/ds-mkmodel" --preset "$preset" --type "$type" -o "$model" >&2

"$build/ds-node" --bind 127.0.0.1 --port "$port" --http-port 0 --node-id bench-load --data-dir "$work/data" \
  --model "$model" --threads "$threads" --max-batch "$conc" >"$work/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 1 300); do
  grep -q " up on " "$work/node.log" 2>/dev/null && break
  kill -0 "$node_pid" 2>/dev/null || { cat "$work/node.log" >&2; exit 1; }
  sleep 0.1
done
grep -q " up on " "$work/node.log" || { echo "bench-load: ds-node did not come up" >&2; cat "$work/node.log" >&2; exit 1; }

"$build/ds-bench" load --connect "127.0.0.1:$port" --concurrency "$conc" --requests "$requests" \
  --prompt-tokens "$prompt" --max-tokens "$gen" --compare-engine "$model" --threads "$threads" "$@"
