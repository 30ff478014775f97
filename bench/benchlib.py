"""Helpers the benchmarks share: logging, load checks, free ports.

Standard library only, so every benchmark runs with plain python3."""
import socket
import sys
import time


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def loadavg():
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def cpu_busy(interval=1.0):
    """Fraction of all CPUs busy over `interval` seconds (from /proc/stat)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]
    t0, i0 = snap()
    time.sleep(interval)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_s, threshold=0.15):
    """Waits (up to max_s) until other processes leave the CPUs mostly idle."""
    if max_s <= 0:
        return True
    deadline = time.time() + max_s
    while time.time() < deadline:
        b = cpu_busy()
        if b < threshold:
            return True
        log(f"waiting for a quiet machine: CPUs {b * 100:.0f}% busy")
        time.sleep(2)
    log(f"the machine stayed busy for {max_s} s: measuring anyway")
    return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
