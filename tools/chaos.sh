#!/usr/bin/env bash
# tools/chaos.sh: fault scenarios against a real local cluster under `ds-bench load`; the load
# must finish with 0 errors and every node must end with all members up (exit 0), else exit 1.
#
#   bash tools/chaos.sh rolling   [--model FILE] [--requests N]   # 5 nodes on 127.0.0.1: SIGTERM
#                                 drain + restart of each node in turn, then kill -9 + immediate
#                                 restart of three (the load's own first node among them)
#   bash tools/chaos.sh partition [--model FILE] [--requests N]   # root: 5 nodes in network
#                                 namespaces, a 3 | 2 split flapped five times (2-15 s cuts)
#
# Prints the load's summary, each node's final view, and every down verdict (decider, subject).
# Work dir: $DS_CHAOS_DIR (default a fresh /tmp/ds-chaos.XXXXXX, kept for its node logs).
# Found this project's zombie false downs and the lost streams of a dying client node
# (cluster/README.md, "Zombies"; README.md, "Cluster").
set -uo pipefail
cd "$(dirname "$0")/.."
build="${DS_BUILD_DIR:-build}"
scenario="${1:-}"
shift || true
model="../shared/models/stories260K.gguf"
requests=15000
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "chaos.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$scenario" in
  rolling|partition) ;;
  -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
  *) echo "usage: bash tools/chaos.sh rolling|partition [--model FILE] [--requests N]" >&2; exit 2 ;;
esac
[[ -x $build/ds-node && -x $build/ds-bench && -x $build/ds-admin ]] || { echo "chaos.sh: build first ($build)" >&2; exit 2; }
[[ -f $model ]] || { echo "chaos.sh: no model file '$model'" >&2; exit 2; }
model=$(realpath "$model")
dir="${DS_CHAOS_DIR:-$(mktemp -d /tmp/ds-chaos.XXXXXX)}"
mkdir -p "$dir"
echo "chaos: $scenario, work dir $dir"

declare -a addr pids
tag="dsc$$"
netns=0

cleanup() {
  for p in "${pids[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null; done
  sleep 2
  for p in "${pids[@]:-}"; do [[ -n $p ]] && kill -9 "$p" 2>/dev/null; done
  if ((netns)); then
    for i in 1 2 3 4 5; do ip netns del "${tag}n$i" 2>/dev/null; done
    ip link del "${tag}ba" 2>/dev/null; ip link del "${tag}bb" 2>/dev/null; ip link del "${tag}ab" 2>/dev/null
  fi
}
trap cleanup EXIT

# start I [extra ds-node flags...]: node I (1..5) at addr[I], joining through the others.
start() {
  local i=$1; shift
  local host=${addr[$i]%:*} port=${addr[$i]##*:} seeds=()
  for j in 1 2 3; do [[ $j != "$i" ]] && seeds+=("${addr[$j]}"); done
  local args=(--model "$model" --bind "$host" --port "$port" --node-id "x$i" --data-dir "$dir/d$i" --http-port 0
              --threads 1 --drain-timeout 10)
  [[ $i != 1 || -n ${REJOIN:-} ]] && args+=(--join "$(IFS=,; echo "${seeds[*]}")")
  if ((netns)); then
    ip netns exec "${tag}n$i" "$build/ds-node" "${args[@]}" "$@" >>"$dir/node$i.log" 2>&1 &
  else
    "$build/ds-node" "${args[@]}" "$@" >>"$dir/node$i.log" 2>&1 &
  fi
  pids[$i]=$!
  disown "${pids[$i]}" 2>/dev/null  # no "Killed" job notices: the kills are the point
}

if [[ $scenario == partition ]]; then
  [[ $(id -u) == 0 ]] && command -v ip >/dev/null || { echo "chaos.sh: partition needs root and iproute2" >&2; exit 2; }
  netns=1
  ip link add "${tag}ba" type bridge && ip link add "${tag}bb" type bridge &&
    ip link add "${tag}ab" type veth peer name "${tag}xb" &&
    ip link set "${tag}ab" master "${tag}ba" && ip link set "${tag}xb" master "${tag}bb" &&
    ip addr add 10.79.0.1/24 dev "${tag}ba" || { echo "chaos.sh: cannot create the bridges" >&2; exit 2; }
  for l in "${tag}ba" "${tag}bb" "${tag}ab" "${tag}xb"; do ip link set "$l" up; done
  for i in 1 2 3 4 5; do
    br="${tag}ba"; ((i > 3)) && br="${tag}bb"
    ip netns add "${tag}n$i" && ip link add "${tag}v$i" type veth peer name eth0 netns "${tag}n$i" &&
      ip link set "${tag}v$i" master "$br" && ip link set "${tag}v$i" up &&
      ip -n "${tag}n$i" addr add "10.79.0.$((10 + i))/24" dev eth0 && ip -n "${tag}n$i" link set eth0 up &&
      ip -n "${tag}n$i" link set lo up || { echo "chaos.sh: cannot create namespace $i" >&2; exit 2; }
    addr[$i]="10.79.0.$((10 + i)):4242"
  done
else
  for i in 1 2 3 4 5; do addr[$i]="127.0.0.1:$((5700 + i))"; done
fi

for i in 1 2 3 4 5; do start "$i"; [[ $i == 1 ]] && sleep 0.5; done
sleep 4
"$build/ds-bench" load --connect "$(IFS=,; echo "${addr[*]:1:5}")" --concurrency 10 --requests "$requests" \
  --max-tokens 300 >"$dir/load.out" 2>&1 &
load=$!
sleep 2
if [[ $scenario == rolling ]]; then
  for i in 2 3 4 5 1; do
    echo "  SIGTERM x$i (drain), then restart"
    kill -TERM "${pids[$i]}"; while kill -0 "${pids[$i]}" 2>/dev/null; do sleep 0.2; done
    REJOIN=1 start "$i"; sleep 4
  done
  for i in 4 1 3; do
    echo "  kill -9 x$i, restart at once"
    kill -9 "${pids[$i]}"; sleep 0.3; REJOIN=1 start "$i"; sleep 5
  done
else
  for cycle in "3 5" "12 12" "2 3" "6 2" "15 15"; do
    set -- $cycle
    echo "  cut {x1 x2 x3} | {x4 x5} for $1 s, then heal for $2 s"
    ip link set "${tag}ab" down; sleep "$1"; ip link set "${tag}ab" up; sleep "$2"
  done
fi
wait "$load"
load_rc=$?
sleep 3
echo "load (exit $load_rc):"
grep -E "^done|first error" "$dir/load.out" | sed 's/^/  /'
ok=$((load_rc == 0))
for i in 1 2 3 4 5; do
  view=$("$build/ds-admin" --connect "${addr[$i]}" cluster status --json 2>/dev/null |
         python3 -c 'import json,sys; d=json.load(sys.stdin); n=[x for x in d["nodes"] if x["state"]!="removed"]; print(sum(x["state"]=="up" for x in n), len(n), d.get("has_quorum"))' 2>/dev/null)
  echo "  x$i sees (up, members, quorum): ${view:-no answer}"
  [[ $view == "5 5 True" ]] || ok=0
done
echo "down verdicts (decider: subject):"
grep -h "decided here" "$dir"/node*.log | grep "member-down" | sed -E 's/.*\[(x[0-9])\] cluster: member-down (x[0-9]).*/  \1: \2/' | sort | uniq -c
if ((ok)); then echo "chaos: PASS"; exit 0; fi
echo "chaos: FAIL (logs in $dir)"
exit 1
