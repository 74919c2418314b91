#!/usr/bin/env bash
# bench/cpu.sh [WORKDIR]
#
# Where a first backup's time goes: starts 5 `peer daemon`s on 127.0.0.1 (as bench/run.sh),
# backs the reference dataset up from the first with `--copies 3`, and prints the wall
# seconds, the CPU seconds (user + system, from /proc/PID/stat) of each daemon during the
# backup, and what the disk read and wrote meanwhile (/proc/diskstats, MiB, and the
# milliseconds it was busy). Needs the dataset of bench/run.sh in WORKDIR/dataset.
# PEER_EXE: another build to measure; else this tree's release build.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/peer-bench}
data="$work/dataset"
[ -d "$data" ] || { echo "no dataset at $data: run bench/run.sh first" >&2; exit 1; }
if [ -n "${PEER_EXE:-}" ]; then
  peer=$PEER_EXE
else
  (cd "$here" && cargo build --release --quiet)
  peer="$here/target/release/peer"
fi
pids=()
source "$here/bench/lib.sh"
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
start_network "$work/cpu-net" 5 20GB

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
disk() { awk '$3 !~ /^(loop|ram)/ {r += $6; w += $10; ms += $13} END {printf "%d %d %d\n", r / 2048, w / 2048, ms}' /proc/diskstats; }
hz=$(getconf CLK_TCK)
before=(); for p in "${pids[@]}"; do before+=("$(ticks "$p")"); done
sync; read -r r0 w0 b0 < <(disk); t0=$(date +%s.%N)
"$peer" --home "$work/cpu-net/p0" backup "$data" --copies 3 >/dev/null
t1=$(date +%s.%N); read -r r1 w1 b1 < <(disk)
total=0; line=""
for i in "${!pids[@]}"; do
  d=$(( $(ticks "${pids[$i]}") - before[i] )); total=$((total + d))
  line+=" p$i $(awk -v t="$d" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')"
done
echo "wall $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s; CPU $(awk -v t="$total" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}') s over the daemons:$line (p0 is the client)"
echo "disk: read $((r1 - r0)) MiB, wrote $((w1 - w0)) MiB, busy $((b1 - b0)) ms"
