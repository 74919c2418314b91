"""bench/timeline.py PID[,PID...] [STEP]

Prints, every STEP seconds (default 0.5) until it is stopped (SIGTERM or SIGINT), how
many cores each process used (user + system CPU seconds from /proc/PID/stat, divided by
the step), their sum, and how the whole machine's cores were spent (/proc/stat: user,
system, idle, I/O wait, steal). A process that has exited counts as 0. Used by
bench/cpu.sh (TIMELINE=1) to tell a phase bound by the CPU from one that waits, and work
of the daemons from work of anything else on the machine.
"""
import os
import signal
import sys
import time

pids = [int(p) for p in sys.argv[1].split(",")]
step = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
hz = os.sysconf("SC_CLK_TCK")


def ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def machine():
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("seconds " + " ".join(f"p{i}" for i in range(len(pids))) + " daemons | user system idle iowait steal", flush=True)
t0 = time.monotonic()
before, m0 = [ticks(p) for p in pids], machine()
try:
    while True:
        time.sleep(step)
        now, m1 = [ticks(p) for p in pids], machine()
        cores = [(a - b) / hz / step for a, b in zip(now, before)]
        m = [(a - b) / hz / step for a, b in zip(m1, m0)]
        print(
            f"{time.monotonic() - t0:7.2f} " + " ".join(f"{c:4.2f}" for c in cores)
            + f" {sum(cores):4.2f} | {m[0] + m[1]:4.2f} {m[2]:4.2f} {m[3]:4.2f} {m[4]:4.2f} {m[7]:4.2f}",
            flush=True,
        )
        before, m0 = now, m1
except KeyboardInterrupt:
    pass
