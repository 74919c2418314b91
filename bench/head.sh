#!/usr/bin/env bash
# bench/head.sh [WORKDIR] [FILES...]
#
# Repository scale (protocol.md §3.8, §5.8): for each size (default 100000 and 1000000
# small files, one blob each), a local network of 4 `peer` daemons on 127.0.0.1 backs the
# tree up with --copies 2, backs it up again unchanged, then the client's home is deleted,
# recovered from its recovery phrase alone, and the tree restored and compared. Prints, per
# size: head bytes (sealed, as held by a provider), head publication seconds (from the
# daemon's log), index packs, bytes uploaded by the unchanged re-backup, recovery seconds
# (daemon start to `recovering: false`), restore seconds, and the peak RSS of the client
# daemon during the first backup and during the unchanged re-backup (VmHWM reset between
# them), of the recovered one during its recovery, and of the recovered one during the
# restore (VmHWM reset after the recovery); then the unchanged re-backup's seconds, and the
# seconds and peak of the `peer status` that follows it (copy health of both snapshots). Then restic backs up and restores
# the same tree to a local repository on the same disk, and both tools' files per second
# are printed (first backup, restore). Before each of these four timed phases the page
# cache is written back and dropped, so that both tools read the tree (or their packs)
# from the disk. Needs: cargo, python3, restic, root (to drop the page cache).
#
# RESTORE_MAX=N: sizes above N files stop after the recovery (no restore, no restic), for the
# 10,000,000-blob point, whose restore would take the disk hours; their restore columns
# read "-".
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/peer-bench-head}
shift || true
sizes=("${@:-100000 1000000}")
read -r -a sizes <<<"${sizes[*]}"
peers=4
restore_max=${RESTORE_MAX:-0}
offer=${OFFER:-4GiB}

# PEER_EXE: another build to time (say, the one before a change); else this tree's release build.
if [ -n "${PEER_EXE:-}" ]; then
  peer=$PEER_EXE
else
  (cd "$here" && cargo build --release --quiet)
  peer="$here/target/release/peer"
fi
now() { date +%s.%N; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(d'"$1"')'; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; pids=(); }
trap cleanup EXIT

start() { # start HOME: runs the daemon, waits for its first listen address
  "$peer" --home "$1" daemon >"$1.out" 2>"$1.log" &
  pids+=($!)
  until grep -q '^/ip4/127.0.0.1/tcp/' "$1.out"; do sleep 0.1; done
}

row='%-9s %11s %9s %6s %13s %10s %9s %9s %13s %11s %11s\n'
printf "$row" files head_bytes publish_s index unchanged_up recover_s restore_s first_mib unchanged_mib recover_mib restore_mib
rates=()
for n in "${sizes[@]}"; do
  data="$work/tree-$n"
  if [ ! -d "$data" ]; then
    python3 - "$data" "$n" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:05d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    fd = os.open(os.path.join(d, f"f{i:07d}.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, (f"file {i} of {n}\n" * 4).encode())
    os.close(fd)
PY
  fi
  net="$work/net-$n"; rm -rf "$net"; mkdir -p "$net"
  boot=""
  for i in $(seq 0 $((peers - 1))); do
    h="$net/p$i"
    if [ -z "$boot" ]; then "$peer" --home "$h" init --no-mdns --listen /ip4/127.0.0.1/tcp/0 >/dev/null
    else "$peer" --home "$h" init --no-mdns --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$boot" >/dev/null; fi
    "$peer" --home "$h" offer-storage "$offer" >/dev/null
    start "$h"
    [ -n "$boot" ] || boot=$(grep -m1 '^/ip4/127.0.0.1/tcp/' "$h.out")
  done
  until [ "$("$peer" --home "$net/p0" status --json | field '["connected"].__len__()')" -ge $((peers - 1)) ]; do sleep 0.2; done
  cold; b0=$(now)
  "$peer" --home "$net/p0" backup "$data" --copies 2 --json | tail -1 >"$net/backup1.json"
  b1=$(now)
  rss_first=$(awk '/VmHWM/ {print $2}' "/proc/${pids[0]}/status")
  echo 5 >"/proc/${pids[0]}/clear_refs" # the unchanged re-backup's own peak from here
  "$peer" --home "$net/p0" backup "$data" --copies 2 --json | tail -1 >"$net/backup2.json"
  b2=$(now)
  rss_unchanged=$(awk '/VmHWM/ {print $2}' "/proc/${pids[0]}/status")
  echo 5 >"/proc/${pids[0]}/clear_refs" # the status's own peak from here
  s0=$(now); st=$("$peer" --home "$net/p0" status --json); s1=$(now)
  rss_status=$(awk '/VmHWM/ {print $2}' "/proc/${pids[0]}/status")
  index=$(echo "$st" | field '["index_packs"]')
  head_bytes=$(find "$net"/p[1-9]/store -name HEAD -printf '%s\n' | sort -n | tail -1)
  publish=$(grep -o 'stored at [0-9]* providers in [0-9.]* s' "$net/p0.log" | tail -1 | awk '{print $(NF-1)}')
  unchanged=$(field '["bytes_uploaded"]' <"$net/backup2.json")
  phrase=$("$peer" --home "$net/p0" key export --mnemonic)
  kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
  rm -rf "$net/p0"
  echo "$phrase" | "$peer" --home "$net/p0" init --recover --no-mdns --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$(grep -m1 '^/ip4/127.0.0.1/tcp/' "$net/p1.out")" >/dev/null
  t0=$(now); start "$net/p0"; client=${pids[-1]}
  until [ "$("$peer" --home "$net/p0" status --json 2>/dev/null | field '["recovering"]' 2>/dev/null)" = "False" ]; do sleep 0.2; done
  t1=$(now)
  rss_recover=$(awk '/VmHWM/ {print $2}' "/proc/$client/status")
  if [ "$restore_max" -gt 0 ] && [ "$n" -gt "$restore_max" ]; then
    printf "$row" "$n" "$head_bytes" "$publish" "$index" "$unchanged" "$(secs "$t0" "$t1")" - \
      "$((rss_first / 1024))" "$((rss_unchanged / 1024))" "$((rss_recover / 1024))" -
    rates+=("$(awk -v n="$n" -v pb="$(secs "$b0" "$b1")" -v pu="$(secs "$b1" "$b2")" -v ps="$(secs "$s0" "$s1")" -v ms="$((rss_status / 1024))" 'BEGIN { printf "%-9s backup: peer %.0f files/s (%.1f s), unchanged re-backup %.1f s, status %.1f s (%d MiB); no restore, no restic (RESTORE_MAX)", n, n / pb, pb, pu, ps, ms }')")
    cleanup
    rm -rf "$net"
    continue
  fi
  echo 5 >"/proc/$client/clear_refs" # the restore's own peak from here
  rm -rf "$net/back"; cold; t3=$(now)
  "$peer" --home "$net/p0" restore latest --target "$net/back" --json | tail -1 >"$net/restore.json"; t2=$(now)
  diff -r -q "$data" "$net/back/$(basename "$data")" >/dev/null || { echo "restore of $n files differs" >&2; exit 1; }
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$client/status")
  printf "$row" "$n" "$head_bytes" "$publish" "$index" "$unchanged" "$(secs "$t0" "$t1")" "$(secs "$t3" "$t2")" \
    "$((rss_first / 1024))" "$((rss_unchanged / 1024))" "$((rss_recover / 1024))" "$((rss / 1024))"
  cleanup
  rm -rf "$net"
  # restic on the same tree and disk.
  repo="$work/restic-$n"; rback="$work/restic-back-$n"; rm -rf "$repo" "$rback"
  export RESTIC_PASSWORD=bench
  restic init --quiet --repo "$repo" >/dev/null
  cold; r0=$(now); restic --repo "$repo" backup --quiet "$data"; r1=$(now)
  cold; r2=$(now); restic --repo "$repo" restore latest --target "$rback" --quiet; r3=$(now)
  diff -r -q "$data" "$rback$data" >/dev/null || { echo "restic's restore of $n files differs" >&2; exit 1; }
  rm -rf "$repo" "$rback"
  rates+=("$(awk -v n="$n" -v pb="$(secs "$b0" "$b1")" -v pu="$(secs "$b1" "$b2")" -v ps="$(secs "$s0" "$s1")" -v ms="$((rss_status / 1024))" -v rb="$(secs "$r0" "$r1")" -v pr="$(secs "$t3" "$t2")" -v rr="$(secs "$r2" "$r3")" \
    'BEGIN { printf "%-9s backup: peer %.0f files/s (%.1f s), unchanged re-backup %.1f s, status %.1f s (%d MiB), restic %.0f files/s (%.1f s); restore: peer %.0f files/s (%.1f s), restic %.0f files/s (%.1f s)", n, n / pb, pb, pu, ps, ms, n / rb, rb, n / pr, pr, n / rr, rr }')")
done
printf '%s\n' "${rates[@]}"
