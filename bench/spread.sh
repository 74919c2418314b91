#!/usr/bin/env bash
# bench/spread.sh [WORKDIR]
#
# Restore at the sum of the uplinks: PROVIDERS provider daemons (default 8) on 127.0.0.1,
# each with `network.limit_upload` = LIMIT KiB/s (default 2048), hold a `--copies 3` backup
# of the archives of the reference dataset (../shared/bench/make-dataset.sh: already
# compressed, so packs are as large as the data), written with 4 MiB packs. The client,
# unlimited, restores it; the rate is compared with the sum of the providers' limits.
# Then the same data is backed up to a network of one limited provider (`--copies 1`) and
# restored: the single-holder figure. Both restores are compared with `diff -r`.
#
# Fetched bytes are the pack bytes of one copy (`bytes_uploaded / copies` of the backup),
# which is what a restore of the whole snapshot fetches (the small index pack included).
#
# ERASURE=K+M backs up with `--erasure K+M` instead of `--copies 3` (fetched bytes are then
# K/(K+M) of the bytes uploaded: K shards of each pack) and skips the single-holder run.
# PEER_EXE: another build to time (say, the one before a change); else this tree's release build.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/peer-bench}
providers=${PROVIDERS:-8}
limit=${LIMIT:-2048}
copies=3

if [ -n "${PEER_EXE:-}" ]; then
  peer=$PEER_EXE
else
  (cd "$here" && cargo build --release --quiet)
  peer="$here/target/release/peer"
fi
erasure=${ERASURE:-}
source "$here/bench/lib.sh"
mkdir -p "$work"
if [ ! -d "$work/dataset" ]; then
  bash "$here/../shared/bench/make-dataset.sh" "$work/dataset" || [ $? -eq 3 ]
fi
data="$work/dataset/archives"
bytes=$(find "$data" -type f -printf '%s\n' | awk '{t+=$1} END {print t}')
echo "data: $(find "$data" -type f | wc -l) files, $bytes bytes ($data)"

now() { date +%s.%N; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; pids=(); }
trap cleanup EXIT
json() { python3 -c "import json,sys; print(json.load(open('$1'))['$2'])"; }

# Before each daemon starts: 4 MiB packs at the client (p0), the upload limit at providers.
limits() {
  if [ "$1" -eq 0 ]; then sed -i 's/^pack_size = .*/pack_size = 4194304/' "$2/config.toml"
  else sed -i "s/^limit_upload = .*/limit_upload = $limit/" "$2/config.toml"; fi
}

# run NAME N_PROVIDERS COPIES|K+M: backup, restore, prints "seconds fetched_bytes verified"
run() {
  local net="$work/$1" t0 t1 up verified fetched
  start_network "$net" $(($2 + 1)) 5GB limits
  if [[ $3 == *+* ]]; then
    "$peer" --home "$net/p0" backup "$data" --erasure "$3" --json | tail -1 >"$net/backup.json"
    up=$(json "$net/backup.json" bytes_uploaded)
    fetched=$((up * ${3%+*} / (${3%+*} + ${3#*+})))
  else
    "$peer" --home "$net/p0" backup "$data" --copies "$3" --json | tail -1 >"$net/backup.json"
    up=$(json "$net/backup.json" bytes_uploaded)
    fetched=$((up / $3))
  fi
  rm -rf "$net/restore"
  t0=$(now)
  "$peer" --home "$net/p0" restore latest --target "$net/restore" --json | tail -1 >"$net/restore.json"
  t1=$(now)
  diff -r -q "$data" "$net/restore/archives" >/dev/null && verified=yes || verified=NO
  cleanup
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') $fetched $verified"
}

read -r s_many f_many v_many < <(run spread "$providers" "${erasure:-$copies}")
label="--copies $copies"; [ -z "$erasure" ] || label="--erasure $erasure"
if [ -z "$erasure" ]; then read -r s_one f_one v_one < <(run single 1 1); fi

mibs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.2f", b / s / 1048576 }'; }
sum=$(awk -v n="$providers" -v l="$limit" 'BEGIN { printf "%.2f", n * l / 1024 }')
echo
echo "peer $("$peer" --version | cut -d' ' -f2): restore with every provider's upload limited to $limit KiB/s"
printf '%-36s %10s %12s %10s %8s\n' case seconds "fetched MiB" "MiB/s" "of sum"
printf '%-36s %10s %12s %10s %8s\n' "$providers providers, $label (sum $sum MiB/s)" "$s_many" \
  "$(awk -v b="$f_many" 'BEGIN { printf "%.1f", b / 1048576 }')" "$(mibs "$f_many" "$s_many")" \
  "$(awk -v r="$(mibs "$f_many" "$s_many")" -v s="$sum" 'BEGIN { printf "%.0f%%", 100 * r / s }')"
[ -n "$erasure" ] || printf '%-36s %10s %12s %10s %8s\n' "1 provider, --copies 1 (sum $(awk -v l="$limit" 'BEGIN { printf "%.2f", l / 1024 }') MiB/s)" "$s_one" \
  "$(awk -v b="$f_one" 'BEGIN { printf "%.1f", b / 1048576 }')" "$(mibs "$f_one" "$s_one")" \
  "$(awk -v r="$(mibs "$f_one" "$s_one")" -v s="$(awk -v l="$limit" 'BEGIN { print l / 1024 }')" 'BEGIN { printf "%.0f%%", 100 * r / s }')"
echo "restores verified by diff -r: $v_many${v_one:+, $v_one}"
