#!/usr/bin/env bash
# bench/cpu.sh [WORKDIR]
#
# Where the time of a first backup and of a restore goes: starts 5 `peer daemon`s on
# 127.0.0.1 (as bench/run.sh), backs the reference dataset up from the first with
# `--copies 3`, and restic (Debian package) the same data to a local repository; then
# ROUNDS times (default 1) restores each into a fresh file system, peer then restic, the
# peer restore compared with the dataset by `diff -r`. For each peer phase it prints the
# wall seconds, the CPU seconds (user + system, from /proc/PID/stat) of each daemon, and
# what the disk read and wrote meanwhile (/proc/diskstats, MiB, and the milliseconds it
# was busy); for restic the wall seconds and its CPU seconds from getrusage. CPU seconds
# move far less from run to run than wall seconds on a shared machine, and alternating
# the restores lets both meet the same state of it. The daemons stay up, idle, while
# restic runs. Every phase starts after `sync`; the dataset is read once before the
# backups, so that both find it in the page cache. Needs the dataset of bench/run.sh in
# WORKDIR/dataset; root (it mounts the restores' file systems). PEER_EXE: another build
# to measure; else this tree's release build. TIMELINE=SECONDS: also writes, for each peer
# phase, WORKDIR/timeline-<phase>.txt, the cores each daemon and the whole machine used in
# every step of that many seconds (bench/timeline.py).
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
  local sampler=""
  if [ -n "${TIMELINE:-}" ]; then
    python3 "$here/bench/timeline.py" "$(IFS=,; echo "${pids[*]}")" "$TIMELINE" >"$work/timeline-${name// /-}.txt" &
    sampler=$!
  fi
  "$@" >/dev/null
  t1=$(date +%s.%N); read -r r1 w1 b1 < <(disk)
  if [ -n "$sampler" ]; then kill "$sampler"; wait "$sampler" || true; fi
  for i in "${!pids[@]}"; do
    d=$(( $(ticks "${pids[$i]}") - before[i] )); total=$((total + d))
    line+=" p$i $(awk -v t="$d" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')"
  done
  echo "$name: wall $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s; CPU $(awk -v t="$total" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}') s over the daemons:$line (p0 is the client)"
  echo "  disk: read $((r1 - r0)) MiB, wrote $((w1 - w0)) MiB, busy $((b1 - b0)) ms"
}
# Both backups read the dataset from the page cache: read it once first. Otherwise the
# first run after a reboot (or after other work pushed it out) makes peer read it from the
# disk while restic, which comes second, finds it cached.
find "$data" -type f -print0 | xargs -0 cat >/dev/null
phase "peer backup" "$peer" --home "$work/cpu-net/p0" backup "$data" --copies 3

command -v restic >/dev/null || { echo "restic missing: apt-get install -y restic" >&2; exit 1; }
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY="$work/cpu-restic"
rm -rf "$RESTIC_REPOSITORY"
restic init --quiet
echo "restic backup: $(rusage restic backup --quiet "$data")"

# ROUNDS restores of each, alternating, so that both meet the same state of the machine,
# each into a fresh ext4 file system (a sparse image on a loop device, made for it and
# removed after): creating files just after many were deleted costs the kernel far more
# (the inode allocator skips recently deleted inodes), and a file system used by many runs
# before would make one tool pay for the other's leftovers. A new disk after a lost one
# is also what a restore usually meets.
img="$work/cpu-target.img" mnt="$work/cpu-target"
unmount() { mountpoint -q "$mnt" && umount "$mnt"; rm -f "$img"; }
trap 'cleanup; unmount' EXIT
fresh_fs() {
  unmount; mkdir -p "$mnt"
  truncate -s 8G "$img" && mkfs.ext4 -q -F "$img" && mount -o loop "$img" "$mnt"
}
for round in $(seq "${ROUNDS:-1}"); do
  fresh_fs
  phase "peer restore $round" "$peer" --home "$work/cpu-net/p0" restore latest --target "$mnt/r"
  diff -r -q "$data" "$mnt/r/dataset" >/dev/null && echo "  restore verified: yes" || echo "  restore verified: NO"
  fresh_fs
  echo "restic restore $round: $(rusage restic restore --quiet latest --target "$mnt/r")"
done
