#!/usr/bin/env bash
# tools/bench-load.sh: is the actor path thin? The engine's batch-C decode tok/s against the
# generated tok/s of C closed-loop greedy streams through a ds-node and the ds::Client library,
# on the same model file, measured one after the other in one run: the engine first, before
# the node starts (an idle ds-node on the same 2 cores costs the engine ~20%: CAF's scheduler
# threads poll), then the load. Prints the load report, then the engine figure and the ratio
# (with --json: one object, the load's keys plus engine_decode_tok_s and load_vs_engine).
#   bash tools/bench-load.sh [--json]
# Environment (defaults): DS_BUILD_DIR (build), PRESET (bench-110m), TYPE (q8_0),
# THREADS (2), CONCURRENCY (8), REQUESTS (32), PROMPT_TOKENS (32), MAX_TOKENS (64),
# PORT (a free one). Exit code: ds-bench load's (0 ok).
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

engine_json="$("$build/ds-bench" engine --model "$model" --threads "$threads" --batch "$conc" --prompt "$prompt" \
  --gen "$gen" --repeats 3 --json -q)"
engine_tok_s="$(python3 -c 'import json, sys; j = json.loads(sys.argv[1]); print(j["batches"][-1]["decode_tok_s"])' "$engine_json")"

"$build/ds-node" --bind 127.0.0.1 --port "$port" --http-port 0 --node-id bench-load --data-dir "$work/data" \
  --model "$model" --threads "$threads" --max-batch "$conc" >"$work/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 1 300); do
  grep -q " up on " "$work/node.log" 2>/dev/null && break
  kill -0 "$node_pid" 2>/dev/null || { cat "$work/node.log" >&2; exit 1; }
  sleep 0.1
done
grep -q " up on " "$work/node.log" || { echo "bench-load: ds-node did not come up" >&2; cat "$work/node.log" >&2; exit 1; }

rc=0
load_out="$("$build/ds-bench" load --connect "127.0.0.1:$port" --concurrency "$conc" --requests "$requests" \
  --prompt-tokens "$prompt" --max-tokens "$gen" "$@")" || rc=$?
if [ "${1:-}" = "--json" ]; then
  python3 -c 'import json, sys
j = json.loads(sys.argv[1]); e = float(sys.argv[2])
j.update(engine_model=sys.argv[3], engine_threads=int(sys.argv[4]), engine_batch=j["concurrency"],
         engine_decode_tok_s=e, load_vs_engine=j["gen_tok_s"] / e if e > 0 else 0)
print(json.dumps(j))' "$load_out" "$engine_tok_s" "$preset $type" "$threads"
else
  echo "$load_out"
  python3 -c 'import sys
e = float(sys.argv[1]); l = float(sys.argv[2])
print("\nengine batch-%s decode %.1f tok/s (in-process, no node running, %s threads, median of 3); load / engine = %.2f"
      % (sys.argv[3], e, sys.argv[4], l / e if e > 0 else 0))' "$engine_tok_s" \
    "$(echo "$load_out" | awk '/^generated tok\/s/ {print $3}')" "$conc" "$threads"
fi
exit "$rc"
