#!/usr/bin/env bash
# tools/local-cluster.sh: a ds cluster of N nodes on 127.0.0.1, for trying ds out.
#   bash tools/local-cluster.sh start [N] [-- ds-node flags...]   N nodes on ports 4242, 4243, ...
#   bash tools/local-cluster.sh status                            ds-admin cluster status
#   bash tools/local-cluster.sh stop                              SIGTERM (drain) every node
# Node logs and data live in $DS_CLUSTER_DIR (default build/local-cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
build="${DS_BUILD_DIR:-build}"
dir="${DS_CLUSTER_DIR:-$build/local-cluster}"
base="${DS_PORT:-4242}"
cmd="${1:-start}"
shift || true

case "$cmd" in
  start)
    n="${1:-3}"
    shift || true
    [ "${1:-}" = "--" ] && shift
    mkdir -p "$dir"
    for i in $(seq 0 $((n - 1))); do
      port=$((base + i))
      join=()
      [ "$i" -gt 0 ] && join=(--join "127.0.0.1:$base")
      "$build/ds-node" --bind 127.0.0.1 --port "$port" --http-port 0 --node-id "node$i" \
        --data-dir "$dir/node$i" "${join[@]}" "$@" >"$dir/node$i.log" 2>&1 &
      echo $! >"$dir/node$i.pid"
      # The first node is the seed: wait until it serves before the others join.
      for _ in $(seq 1 150); do
        grep -q " up on " "$dir/node$i.log" 2>/dev/null && break
        kill -0 "$(cat "$dir/node$i.pid")" 2>/dev/null || { cat "$dir/node$i.log" >&2; exit 1; }
        sleep 0.1
      done
      echo "node$i up on 127.0.0.1:$port (log $dir/node$i.log)"
    done
    ;;
  status)
    "$build/ds-admin" --connect "127.0.0.1:$base" cluster status "$@"
    ;;
  stop)
    for f in "$dir"/node*.pid; do
      [ -f "$f" ] || continue
      pid=$(cat "$f")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$f"
    done
    echo "stopped"
    ;;
  *)
    echo "usage: $0 start [N] [-- ds-node flags] | status | stop" >&2
    exit 2
    ;;
esac
