# bench/lib.sh: sourced by the benchmarks. Expects $peer (the binary) and the array pids.
#
# start_network NET COUNT OFFER [SETUP]: starts COUNT `peer daemon`s on 127.0.0.1 with homes
# NET/p0 … NET/p(COUNT-1), each offering OFFER (e.g. 20GB); p0 is everyone's bootstrap.
# SETUP, if given, is a function called as `SETUP INDEX HOME` after `init`, to edit the
# config before the daemon starts. Returns once p0 is connected to all the others, or to
# 16 of them (the default `network.target_peers`, above which connections are trimmed).
start_network() {
  local net=$1 count=$2 offer=$3 setup=${4:-} boot="" h i
  rm -rf "$net"; mkdir -p "$net"
  for i in $(seq 0 $((count - 1))); do
    h="$net/p$i"
    if [ -z "$boot" ]; then "$peer" --home "$h" init --no-mdns --listen /ip4/127.0.0.1/tcp/0 >/dev/null
    else "$peer" --home "$h" init --no-mdns --listen /ip4/127.0.0.1/tcp/0 --bootstrap "$boot" >/dev/null; fi
    [ -z "$setup" ] || "$setup" "$i" "$h"
    "$peer" --home "$h" offer-storage "$offer" >/dev/null
    "$peer" --home "$h" daemon >"$h.out" 2>"$h.log" &
    pids+=($!)
    until grep -q '^/ip4/127.0.0.1/tcp/' "$h.out" 2>/dev/null; do sleep 0.1; done
    [ -n "$boot" ] || boot=$(grep -m1 '^/ip4/127.0.0.1/tcp/' "$h.out")
  done
  local want=$((count - 1)); [ "$want" -le 16 ] || want=16
  until [ "$("$peer" --home "$net/p0" status --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["connected"]))')" -ge "$want" ]; do sleep 0.2; done
}

# rusage CMD...: runs CMD after `sync`, its output discarded, and prints its wall seconds and
# CPU seconds (user + system of it and its children, from getrusage).
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
