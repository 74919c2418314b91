#!/usr/bin/env bash
# bench/run.sh [WORKDIR]
#
# The first benchmark: the reference dataset (../shared/bench/make-dataset.sh), a local
# network of 5 `peer` daemons on 127.0.0.1, and restic (Debian package) on the same data in
# the same run. Phases, for both: first backup, unchanged re-backup, restore. Prints MB/s
# for each (dataset bytes / wall seconds, MB = 10^6 bytes) and the peak RSS (VmHWM) of the
# client daemon, for the first backup and for the restore. Every timed phase of both tools
# starts after `sync`, so that no phase pays for the writeback of the one before (the
# peer backup writes three copies, 2 GB, to this one disk; restic's, one), and the dataset
# is read once before, so that both first backups find it in the page cache. Needs: cargo,
# restic (apt-get install restic). PEER_EXE: another build to time (say, the one before a
# change); else this tree's release build.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/peer-bench}
copies=3
peers=5

command -v restic >/dev/null || { echo "restic missing: apt-get install -y restic" >&2; exit 1; }
if [ -n "${PEER_EXE:-}" ]; then
  peer=$PEER_EXE
else
  (cd "$here" && cargo build --release --quiet)
  peer="$here/target/release/peer"
fi
source "$here/bench/lib.sh"

mkdir -p "$work"
data="$work/dataset"
if [ ! -d "$data" ]; then
  bash "$here/../shared/bench/make-dataset.sh" "$data" || [ $? -eq 3 ]
fi
bytes=$(find "$data" -type f -printf '%s\n' | awk '{t+=$1} END {print t}')
files=$(find "$data" -type f | wc -l)
echo "dataset: $files files, $bytes bytes"
# Both first backups read the dataset from the page cache: read it once now, or peer's,
# which comes first, may read it from the disk while restic's finds it cached.
find "$data" -type f -print0 | xargs -0 cat >/dev/null

now() { date +%s.%N; }
rate() { awk -v b="$bytes" -v s="$1" 'BEGIN { printf "%.1f", b / s / 1e6 }'; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# --- peer: a local network -------------------------------------------------------------
net="$work/net"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
start_network "$net" $peers 20GB
client_pid=${pids[0]}

# Peak RSS per phase: VmHWM, reset between phases (writing 5 to clear_refs, Linux ≥ 4.0).
hwm() { awk '/VmHWM/ {print $2}' "/proc/$client_pid/status"; }
reset_hwm() { echo 5 > "/proc/$client_pid/clear_refs"; }
idle_kib=$(awk '/VmRSS/ {print $2}' "/proc/$client_pid/status")
reset_hwm
sync; t0=$(now); "$peer" --home "$net/p0" backup "$data" --copies $copies --json | tail -1 > "$work/peer-backup1.json"; t1=$(now)
backup_kib=$(hwm); reset_hwm
sync; u1=$(now)
"$peer" --home "$net/p0" backup "$data" --copies $copies --json | tail -1 > "$work/peer-backup2.json"; t2=$(now)
rm -rf "$work/peer-restore"
reset_hwm
sync; u2=$(now)
"$peer" --home "$net/p0" restore latest --target "$work/peer-restore" --json | tail -1 > "$work/peer-restore.json"; t3=$(now)
restore_kib=$(hwm)
peak_kib=$((backup_kib > restore_kib ? backup_kib : restore_kib))
diff -r -q "$data" "$work/peer-restore/dataset" >/dev/null && verified=yes || verified=NO
uploaded=$(python3 -c 'import json; print(json.load(open("'"$work/peer-backup1.json"'"))["bytes_uploaded"])')
cleanup

# --- restic: a local repository ---------------------------------------------------------
export RESTIC_PASSWORD=bench RESTIC_REPOSITORY="$work/restic-repo"
rm -rf "$RESTIC_REPOSITORY" "$work/restic-restore"
restic init --quiet
sync; r0=$(now); restic backup --quiet "$data"; r1=$(now)
sync; q1=$(now); restic backup --quiet "$data"; r2=$(now)
sync; q2=$(now)
restic restore --quiet latest --target "$work/restic-restore"; r3=$(now)
repo_bytes=$(du -sb "$RESTIC_REPOSITORY" | cut -f1)

echo
echo "peer $( "$peer" --version | cut -d' ' -f2 ) ($peers peers, --copies $copies) vs $(restic version | cut -d' ' -f1-2) (local repository)"
printf '%-22s %12s %12s\n' phase "peer MB/s" "restic MB/s"
printf '%-22s %12s %12s\n' "backup (first)" "$(rate "$(secs "$t0" "$t1")")" "$(rate "$(secs "$r0" "$r1")")"
printf '%-22s %12s %12s\n' "backup (unchanged)" "$(rate "$(secs "$u1" "$t2")")" "$(rate "$(secs "$q1" "$r2")")"
printf '%-22s %12s %12s\n' "restore" "$(rate "$(secs "$u2" "$t3")")" "$(rate "$(secs "$q2" "$r3")")"
echo "seconds: peer $(secs "$t0" "$t1") / $(secs "$u1" "$t2") / $(secs "$u2" "$t3"); restic $(secs "$r0" "$r1") / $(secs "$q1" "$r2") / $(secs "$q2" "$r3")"
echo "peer client daemon peak RSS: $((peak_kib / 1024)) MiB (first backup $((backup_kib / 1024)) MiB, restore $((restore_kib / 1024)) MiB; idle before: $((idle_kib / 1024)) MiB)"
echo "bytes uploaded (all copies): $uploaded; restore verified: $verified"
echo "restic repository size: $repo_bytes bytes"
