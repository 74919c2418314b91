#!/usr/bin/env bash
# bench/cpu.sh [WORKDIR]
#
# Where the time of a first backup and of a restore goes: starts 5 `peer daemon`s on
# 127.0.0.1 (as bench/run.sh), backs the reference dataset up from the first with
# `--copies 3`, then restores it into a fresh directory, and prints for each phase the wall
# seconds, the CPU seconds (user + system, from /proc/PID/stat) of each daemon, and what the
# disk read and wrote meanwhile (/proc/diskstats, MiB, and the milliseconds it was busy).
# Then the same for restic (Debian package) on the same data, its CPU seconds from
# getrusage: CPU seconds move far less from run to run than wall seconds on a shared
# machine. Every phase starts after `sync`. Needs the dataset of bench/run.sh in
# WORKDIR/dataset. PEER_EXE: another build to measure; else this tree's release build.
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
# phase NAME COMMAND...: runs the command after `sync` and prints its wall seconds, the
# daemons' CPU seconds and the disk's work meanwhile.
phase() {
  local name=$1 before=() total=0 line="" i d r0 w0 b0 r1 w1 b1 t0 t1; shift
  for p in "${pids[@]}"; do before+=("$(ticks "$p")"); done
  sync; read -r r0 w0 b0 < <(disk); t0=$(date +%s.%N)
  "$@" >/dev/null
  t1=$(date +%s.%N); read -r r1 w1 b1 < <(disk)
  for i in "${!pids[@]}"; do
    d=$(( $(ticks "${pids[$i]}") - before[i] )); total=$((total + d))
    line+=" p$i $(awk -v t="$d" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')"
  done
  echo "$name: wall $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s; CPU $(awk -v t="$total" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}') s over the daemons:$line (p0 is the client)"
  echo "  disk: read $((r1 - r0)) MiB, wrote $((w1 - w0)) MiB, busy $((b1 - b0)) ms"
}
rm -rf "$work/cpu-restore"
phase "peer backup" "$peer" --home "$work/cpu-net/p0" backup "$data" --copies 3
phase "peer restore" "$peer" --home "$work/cpu-net/p0" restore latest --target "$work/cpu-restore"
diff -r -q "$data" "$work/cpu-restore/dataset" >/dev/null && echo "  restore verified: yes" || echo "  restore verified: NO"
cleanup; pids=()

command -v restic >/dev/null || { echo "restic missing: apt-get install -y restic" >&2; exit 1; }
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY="$work/cpu-restic"
rm -rf "$RESTIC_REPOSITORY" "$work/cpu-restic-restore"
restic init --quiet
# restic CMD...: wall and CPU seconds (user + system of restic and its children).
rusage() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
subprocess.run(["sync"], check=True)
t = time.monotonic()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
wall = time.monotonic() - t
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"wall {wall:.2f} s; CPU {r.ru_utime + r.ru_stime:.2f} s")
PY
}
echo "restic backup: $(rusage restic backup --quiet "$data")"
echo "restic restore: $(rusage restic restore --quiet latest --target "$work/cpu-restic-restore")"
