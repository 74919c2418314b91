#!/usr/bin/env bash
# bench/nat.sh: the "Behind home routers" figures of BENCHMARKS.md, with the release
# binary, in network namespaces this script's test builds (root; iptables and conntrack,
# see tests/setup.sh). Prints: time from a home daemon's start to its first direct
# connection (median of NAT_BENCH_RUNS, default 10), hole-punch outcomes over the NAT
# matrix for TCP and QUIC (NAT_BENCH_TRIALS each, default 3), and backup throughput between
# two NATed peers against two public peers in the same run.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash tests/setup.sh
cargo build --release --quiet
PEER_EXE="$here/target/release/peer" PEER_LOG=warn,peer=info \
  cargo nextest run --test nat --run-ignored only measure_hole_punching_and_nat_throughput --no-capture
