#!/usr/bin/env python3
"""Echo server cost in instructions per request, under callgrind.

Wall-clock and CPU-time figures move by +-10% on a shared machine; instruction
counts do not.  This runs each echo server of ``echo_bench.py`` (same server
code, same modes) under ``valgrind --tool=callgrind`` and drives it with the
same Rust load generator, a fixed number of requests at a time:

1. one priming run (connections opened, used, closed), as echo_bench does;
2. counters zeroed (``callgrind_control -z``), a run of ``--requests`` round
   trips on fresh connections, counters dumped (``callgrind_control -d``);
3. the same with ``2 * --requests``.

Instructions per request = (I2 - I1) / (R2 - R1): what connecting, the first
reads, closing and the few requests in flight at the end cost appears in both
runs and cancels out, leaving the steady-state cost of one round trip in the
server process (user space: the interpreter, the loop, libc; the kernel is not
counted).  Under valgrind the server is ~50x slower than the load generator,
so every connection has a request waiting whenever the server polls: this is
the cost at saturation (most events per epoll_wait).  ``--conns 1`` gives the
opposite end (one event per wake-up).

``tokio`` in ``--loops`` is loadgen's plain tokio echo server (the floor).
``--keep DIR`` keeps the dumps (with --dump-instr=yes) for callgrind_annotate.

    python benchmarks/echo_callgrind.py --loops tokioloop,uvloop,rloop \\
        --modes protocol,buffered --sizes 1k --requests 5000
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from _harness import child_env

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO = os.path.join(HERE, "echo_bench.py")
LOADGEN = os.path.join(HERE, "loadgen", "target", "release", "loadgen")


def parse_list(value):
    return [x.strip() for x in value.split(",") if x.strip()]


def parse_size(s):
    s = s.strip().lower()
    mult = 1024 if s.endswith("k") else 1
    return int(s.rstrip("k")) * mult


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rfind(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def wait_idle(pid, quiet=0.3, limit=60.0):
    """Wait until the server has used no CPU for `quiet` seconds."""
    end = time.monotonic() + limit
    last = cpu_ticks(pid)
    while time.monotonic() < end:
        time.sleep(quiet)
        now = cpu_ticks(pid)
        if now == last:
            return
        last = now


def dump_total(path):
    with open(path) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def run_loadgen(loadgen, port, size, conns, requests):
    out = subprocess.run(
        [loadgen, "client", "--port", str(port), "--size", str(size), "--conns", str(conns),
         "--warmup", "0", "--requests", str(requests), "--timeout", "600"],
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["requests"]


def measure(loop, mode, size, args, workdir):
    out_base = os.path.join(workdir, f"cg.{loop}.{mode}.{size}")
    for old in glob.glob(out_base + "*"):
        os.unlink(old)
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_base}",
          f"--dump-instr={'yes' if args.keep else 'no'}"]
    if loop == "tokio":
        cmd = [*vg, args.loadgen, "server"]
    else:
        cmd = [*vg, sys.executable, ECHO, "--server", "--server-loop", loop,
               "--server-mode", mode]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=child_env())
    try:
        port = None
        deadline = time.monotonic() + 300
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{loop} server exited before listening")
            if line.startswith("PORT "):
                port = int(line.split()[1])
        run_loadgen(args.loadgen, port, size, args.conns, max(200, args.requests // 5))
        wait_idle(proc.pid)
        totals = []
        for n in (args.requests, 2 * args.requests):
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                           capture_output=True)
            done = run_loadgen(args.loadgen, port, size, args.conns, n)
            wait_idle(proc.pid)
            before = set(glob.glob(out_base + ".*"))
            new = []
            for _ in range(3):  # vgdb now and then misses a request: ask again
                subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                               capture_output=True)
                for _ in range(100):
                    new = sorted(set(glob.glob(out_base + ".*")) - before)
                    if new:
                        break
                    time.sleep(0.1)
                if new:
                    break
            if not new:
                raise RuntimeError("no callgrind dump appeared")
            time.sleep(0.2)
            totals.append((done, dump_total(new[-1]), new[-1]))
        (r1, i1, _), (r2, i2, path2) = totals
        return (i2 - i1) / (r2 - r1), path2
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loops", default="tokioloop,uvloop,rloop")
    ap.add_argument("--modes", default="protocol,buffered")
    ap.add_argument("--sizes", default="1k")
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--loadgen", default=LOADGEN)
    ap.add_argument("--keep", metavar="DIR", help="keep the dumps here (with --dump-instr=yes)")
    args = ap.parse_args()
    if not os.path.exists(args.loadgen):
        subprocess.run(["cargo", "build", "--release", "--manifest-path",
                        os.path.join(HERE, "loadgen", "Cargo.toml")], check=True)
    workdir = args.keep or tempfile.mkdtemp(prefix="echo-cg-")
    os.makedirs(workdir, exist_ok=True)
    sizes = [parse_size(s) for s in parse_list(args.sizes)]
    print(f"instructions per request (callgrind, user space, {args.conns} connections, "
          f"{args.requests} vs {2 * args.requests} requests)")
    for mode in parse_list(args.modes):
        for size in sizes:
            for loop in parse_list(args.loops):
                if loop == "tokio" and mode != parse_list(args.modes)[0]:
                    continue
                label = "tokio" if loop == "tokio" else mode
                try:
                    per, path = measure(loop, mode, size, args, workdir)
                    where = f"  {path}" if args.keep else ""
                    print(f"{label:10} {size // 1024:4}K {loop:10} {per:10.0f}{where}",
                          flush=True)
                except Exception as e:  # one failing cell must not end the run
                    print(f"{label:10} {size // 1024:4}K {loop:10}  failed: {e}", flush=True)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
