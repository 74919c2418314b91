#!/usr/bin/env bash
# What the test suite needs beyond the Rust toolchain, installed from Debian when missing:
# - iptables, conntrack, iproute2: the NAT tests (tests/nat.rs builds home routers from
#   network namespaces);
# - systemd (systemd-analyze) and man-db: tests/packaging.rs verifies contrib/systemd/;
# - nix-bin (nix-instantiate): tests/packaging.rs parse-checks flake.nix and nix/;
# - chromium, chromium-driver: tests/dashboard.rs drives the dashboard in a real browser.
set -euo pipefail
need=()
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v ip >/dev/null || need+=(iproute2)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v man >/dev/null || need+=(man-db)
command -v nix-instantiate >/dev/null || need+=(nix-bin)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/setup.sh: ${need[*]} missing and only root can install them; tests that need them will fail" >&2
    exit 0
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
