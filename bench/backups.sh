#!/usr/bin/env bash
# bench/backups.sh WORKDIR RUN...
#
# First backups of the reference dataset only, for comparing builds (or settings) with
# each other and with restic in one series, in the order given. Each RUN is either
# `restic` (restic backs the dataset up into a new local repository) or
# `EXE[@LEVEL]`: a peer binary (a path) that starts 5 new `peer daemon`s on 127.0.0.1
# (bench/lib.sh), backs the dataset up from the first with `--copies 3` and, with @LEVEL,
# `backup.zstd_level = LEVEL` in the client's config (otherwise 3, the default).
# Prints one line per run: the wall seconds, the CPU seconds (user + system; for peer the
# five daemons' since they started, from /proc/PID/stat, then each daemon's, p0 the client;
# for restic from getrusage), and for peer the bytes the four providers stored. The
# dataset is read once first so that every run finds it in the page cache, and every run
# starts after `sync`.
# Needs the dataset of bench/run.sh in WORKDIR/dataset and restic (Debian package).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=$1; shift
data="$work/dataset"
[ -d "$data" ] || { echo "no dataset at $data: run bench/run.sh first" >&2; exit 1; }
command -v restic >/dev/null || { echo "restic missing: apt-get install -y restic" >&2; exit 1; }
hz=$(getconf CLK_TCK)
pids=()
source "$here/bench/lib.sh"
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
find "$data" -type f -print0 | xargs -0 cat >/dev/null

# restic_backup: wall and CPU seconds of one restic backup into a new repository.
restic_backup() {
  export RESTIC_PASSWORD=bench RESTIC_REPOSITORY="$work/backups-restic"
  rm -rf "$RESTIC_REPOSITORY"
  restic init --quiet
  rusage restic backup --quiet "$data"
}

level=3
set_level() { sed -i "s/^zstd_level = .*/zstd_level = $level/" "$2/config.toml"; }
for run in "$@"; do
  if [ "$run" = restic ]; then
    echo "restic: $(restic_backup)"
    continue
  fi
  peer=${run%@*}; level=3
  [ "$peer" = "$run" ] || level=${run##*@}
  pids=()
  start_network "$work/backups-net" 5 20GB set_level
  sync
  t0=$(date +%s.%N)
  "$peer" --home "$work/backups-net/p0" backup "$data" --copies 3 >/dev/null
  t1=$(date +%s.%N)
  line="" total=0
  for i in "${!pids[@]}"; do
    t=$(awk '{print $14 + $15}' "/proc/${pids[$i]}/stat"); total=$((total + t))
    line+=" p$i $(awk -v t="$t" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')"
  done
  stored=$(du -sb "$work"/backups-net/p[1-4]/store | awk '{s += $1} END {print s}')
  echo "$run: wall $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s; CPU $(awk -v t="$total" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}') s:$line; providers stored $stored bytes"
  cleanup; wait
done
