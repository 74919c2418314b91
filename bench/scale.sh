#!/usr/bin/env bash
# Network scale: COUNT real daemons on 127.0.0.1, idle, then one small backup.
#
#   bash bench/scale.sh WORK            # COUNT=50 SETTLE=120 WINDOW=300 by default
#   TARGET=1000 bash bench/scale.sh WORK   # network.target_peers = 1000: nothing trimmed
#   SHARD=8 bash bench/scale.sh WORK       # network.shard_peers = 8: several proposal shards
#   PEER_EXE=/path/peer bash bench/scale.sh WORK   # another build (say, the one before a change)
#
# Starts COUNT daemons (p0 is everyone's bootstrap, each offers 1GB, dashboards on
# 17740 + i), lets the network settle for SETTLE seconds, then reads every daemon's
# /metrics and RSS twice, WINDOW seconds apart, and prints per daemon: connected peers,
# RSS, and per hour (the window's counts scaled to 3,600 s) payload bytes sent and
# received, gossip messages delivered, and Kademlia requests served. Last, p1 backs up one
# small file with --copies 3 and the time `peer backup` took is printed (most of it is
# finding providers and making contracts: a backup seeks up to 3 x 3 of them), with the
# proposals each daemon received during it (protocol.md §1.6: only p1's shard, unless
# that shard has too few providers).
set -euo pipefail
work=${1:?usage: bench/scale.sh WORK}
count=${COUNT:-50}
settle=${SETTLE:-120}
window=${WINDOW:-300}
target=${TARGET:-}
shard=${SHARD:-}
cd "$(dirname "$0")/.."
if [ -n "${PEER_EXE:-}" ]; then
  peer=$PEER_EXE
else
  cargo build --release -q
  peer=$PWD/target/release/peer
fi
# shellcheck source=bench/lib.sh
source bench/lib.sh
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
mkdir -p "$work"
work=$(cd "$work" && pwd)
net=$work/scale

setup() {
  sed -i "s/^port = 7740$/port = $((17740 + $1))/" "$2/config.toml"
  [ -z "$target" ] || sed -i "s/^target_peers = .*/target_peers = $target/" "$2/config.toml"
  [ -z "$shard" ] || sed -i "s/^shard_peers = .*/shard_peers = $shard/" "$2/config.toml"
}

t0=$(date +%s.%N)
start_network "$net" "$count" 1GB setup
echo "network of $count daemons up in $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s; settling $settle s"
sleep "$settle"

# One line of JSON per daemon: its RSS (KiB) and metrics summed over labels.
snapshot() {
  local i
  for i in $(seq 0 $((count - 1))); do
    local h=$net/p$i
    curl -s -H "Authorization: Bearer $(cat "$h/dashboard.token")" "http://127.0.0.1:$((17740 + i))/metrics" |
      python3 -c '
import json, sys
rss = int(sys.argv[1])
m = {}
for line in sys.stdin:
    if line.startswith("#") or not line.strip():
        continue
    name_labels, value = line.rsplit(" ", 1)
    name = name_labels.split("{")[0]
    m[name] = m.get(name, 0.0) + float(value)
print(json.dumps({"rss_kib": rss, "m": m}))' "$(awk '/^VmRSS/ {print $2}' "/proc/${pids[$i]}/status")"
  done
}

snapshot >"$work/scale-before.jsonl"
sleep "$window"
snapshot >"$work/scale-after.jsonl"

python3 - "$work/scale-before.jsonl" "$work/scale-after.jsonl" "$window" <<'EOF'
import json, statistics, sys
before = [json.loads(l) for l in open(sys.argv[1])]
after = [json.loads(l) for l in open(sys.argv[2])]
window = float(sys.argv[3])
per_hour = 3600.0 / window
def delta(name):
    return [(a["m"].get(name, 0) - b["m"].get(name, 0)) * per_hour for a, b in zip(after, before)]
def kad(d):
    return sum(v for k, v in d["m"].items() if k.startswith("libp2p_kad_inbound_requests"))
rows = {
    "connected peers": [a["m"].get("peer_connected_peers", 0) for a in after],
    "RSS, MiB": [a["rss_kib"] / 1024 for a in after],
    "sent, KiB/h": [v / 1024 for v in delta("peer_sent_bytes_total")],
    "received, KiB/h": [v / 1024 for v in delta("peer_received_bytes_total")],
    "gossip messages/h": delta("peer_gossip_messages_total"),
    "gossip KiB/h": [v / 1024 for v in delta("peer_gossip_bytes_total")],
    "Kademlia requests served/h": [(kad(a) - kad(b)) * per_hour for a, b in zip(after, before)],
}
print(f"{len(after)} daemons, window {window:.0f} s (rates scaled to one hour)")
print(f"| per daemon | min | median | max |")
print(f"|---|---:|---:|---:|")
for k, v in rows.items():
    print(f"| {k} | {min(v):.1f} | {statistics.median(v):.1f} | {max(v):.1f} |")
EOF

mkdir -p "$work/scale-data"
head -c 1000000 /dev/urandom >"$work/scale-data/file"
t=$(date +%s.%N)
"$peer" --home "$net/p1" backup "$work/scale-data" --copies 3 >/dev/null
echo "backup of one file, --copies 3: $(python3 -c "print(round($(date +%s.%N) - $t, 2))") s;" \
  "contracts made: $("$peer" --home "$net/p1" status --json | python3 -c 'import json,sys; print(len([c for c in json.load(sys.stdin)["contracts"] if c["role"] == "client"]))')"
"$peer" --home "$net/p1" status --json |
  python3 -c 'import json,sys; s=json.load(sys.stdin); print("p1: about", s["estimated_peers"], "peers, proposal shard", s["proposal_shard"])'
snapshot >"$work/scale-backup.jsonl"
python3 - "$work/scale-after.jsonl" "$work/scale-backup.jsonl" <<'EOF'
import json, statistics, sys
before = [json.loads(l) for l in open(sys.argv[1])]
after = [json.loads(l) for l in open(sys.argv[2])]
heard = [a["m"].get("peer_gossip_messages_total", 0) - b["m"].get("peer_gossip_messages_total", 0)
         for a, b in zip(after, before)]
others = heard[:1] + heard[2:]
print(f"proposals received during the backup: {sum(others):.0f} in all; by {sum(1 for h in others if h > 0)} "
      f"of the {len(others)} other daemons; median {statistics.median(others):.0f}, max {max(others):.0f}")
EOF
