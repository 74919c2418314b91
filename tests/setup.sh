#!/usr/bin/env bash
# What the test suite needs beyond the Rust toolchain: iptables and conntrack for the NAT
# tests (tests/nat.rs builds home routers from network namespaces).
set -euo pipefail
if ! command -v iptables >/dev/null || ! command -v conntrack >/dev/null || ! command -v ip >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/setup.sh: iptables, conntrack or ip is missing and only root can install it; the NAT tests will fail" >&2
    exit 0
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables conntrack iproute2 >/dev/null
fi
