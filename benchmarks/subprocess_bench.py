#!/usr/bin/env python3
"""Subprocess benchmarks: asyncio vs uvloop vs tokioloop (rloop if it can).

Every (loop, case) pair runs in a fresh subprocess pinned to one CPU
(``taskset -c 1`` by default, as ``core_bench.py``); the children it spawns
inherit that pinning, except the data-pumping child of the pipe cases, which
moves itself to ``--child-cpu`` (default: another CPU when there is one) so
that the measured loop does not share its CPU with the producer/consumer.
Inside the worker the case runs once as a small warm-up and then ``--repeat``
times, each time on a brand-new loop; only the time inside
``run_until_complete`` counts.  The table shows the best (or ``--stat
median``) rate and tokioloop's ratio to uvloop (> 1: tokioloop is faster).

Cases (only public asyncio APIs, identical Python work on every loop):

* ``spawn_true``: ``create_subprocess_exec('true')`` + ``wait()``, one after
  the other; ops = processes.
* ``spawn_true_x50``: the same with 50 children in flight at a time.
* ``pipe_from_child``: a child writes 100 MB to its stdout in 1 MiB writes; the
  parent reads ``proc.stdout`` with ``read(1 MiB)`` until EOF, then ``wait()``;
  timed from the first byte to the end; ops = MB.
* ``pipe_to_child``: the parent writes 100 MB to the child's stdin
  (``write`` + ``drain`` of 1 MiB chunks, then ``close`` + ``wait``); the child
  reads it with 1 MiB reads; ops = MB.
* ``communicate``: ``communicate()`` of a child printing 100 MB; ops = MB.

Examples::

    /work/venv/bin/python benchmarks/subprocess_bench.py
    /work/venv/bin/python benchmarks/subprocess_bench.py --quick
    /work/venv/bin/python benchmarks/subprocess_bench.py --loops uvloop,tokioloop --cases spawn_true
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import time
import traceback

import _harness
from _harness import (
    child_env,
    cpu_model,
    emit_result,
    get_loop_factory,
    loop_version,
    parse_list,
    run_worker,
    setup_pinning,
)

ALL_LOOPS = ["asyncio", "uvloop", "rloop", "tokioloop"]
DEFAULT_LOOPS = ["asyncio", "uvloop", "tokioloop"]
RESULT_MARK = "@@SUBPROCESS_BENCH_RESULT@@ "
MB = 1_000_000
CHUNK = 1 << 20


class _Clock:
    """Wall and CPU time (this process, all threads) of a measured section."""

    def start(self):
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def stop(self):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def _timed(factory, main):
    """Run main(loop, clock) on a fresh loop; returns (ops/s, ops per CPU-s)."""
    loop = factory()
    clock = _Clock()
    try:
        gc.collect()
        ops = loop.run_until_complete(main(loop, clock))
    finally:
        loop.close()
    return ops / clock.wall, ops / max(clock.cpu, 1e-9)


def _pin_prefix(child_cpu):
    if child_cpu is None or not hasattr(os, "sched_setaffinity"):
        return ""
    return f"import os\ntry:\n os.sched_setaffinity(0, {{{child_cpu}}})\nexcept OSError:\n pass\n"


# --------------------------------------------------------------------------
# cases: each returns ops/s


def bench_spawn_true(factory, n=1000, inflight=1, child_cpu=None):
    true = shutil.which("true") or "/bin/true"

    async def one():
        proc = await asyncio.create_subprocess_exec(true)
        rc = await proc.wait()
        if rc != 0:
            raise RuntimeError(f"true exited with {rc}")

    async def main(loop, clock):
        clock.start()
        if inflight <= 1:
            for _ in range(n):
                await one()
        else:
            sem = asyncio.Semaphore(inflight)

            async def limited():
                async with sem:
                    await one()

            await asyncio.gather(*(limited() for _ in range(n)))
        clock.stop()
        return n

    return _timed(factory, main)


def bench_pipe_from_child(factory, mb=100, child_cpu=None):
    total = mb * MB
    code = _pin_prefix(child_cpu) + (
        "import sys\n"
        f"total = {total}\n"
        f"buf = b'x' * {CHUNK}\n"
        "out = sys.stdout.buffer\n"
        "while total > 0:\n"
        "    n = min(total, len(buf))\n"
        "    out.write(buf[:n] if n < len(buf) else buf)\n"
        "    total -= n\n"
        "out.flush()\n"
    )

    async def main(loop, clock):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
        )
        read = proc.stdout.read
        first = await read(CHUNK)
        clock.start()
        got = len(first)
        while True:
            data = await read(CHUNK)
            if not data:
                break
            got += len(data)
        rc = await proc.wait()
        clock.stop()
        if got != total or rc != 0:
            raise RuntimeError(f"got {got} of {total} bytes, exit status {rc}")
        return (got - len(first)) / MB

    return _timed(factory, main)


def bench_pipe_to_child(factory, mb=100, child_cpu=None):
    total = mb * MB
    code = _pin_prefix(child_cpu) + (
        "import sys\n"
        "inp = sys.stdin.buffer.raw\n"
        "n = 0\n"
        "while True:\n"
        f"    d = inp.read({CHUNK})\n"
        "    if not d:\n"
        "        break\n"
        "    n += len(d)\n"
        f"sys.exit(0 if n == {total} else 1)\n"
    )
    chunk = b"y" * CHUNK

    async def main(loop, clock):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdin=asyncio.subprocess.PIPE
        )
        clock.start()
        left = total
        while left > 0:
            n = min(left, CHUNK)
            proc.stdin.write(chunk if n == CHUNK else chunk[:n])
            await proc.stdin.drain()
            left -= n
        proc.stdin.close()
        rc = await proc.wait()
        clock.stop()
        if rc != 0:
            raise RuntimeError(f"child saw a short stream (status {rc})")
        return total / MB

    return _timed(factory, main)


def bench_communicate(factory, mb=100, child_cpu=None):
    total = mb * MB
    code = _pin_prefix(child_cpu) + (
        "import sys\n"
        f"buf = b'z' * {CHUNK}\n"
        f"total = {total}\n"
        "while total > 0:\n"
        "    n = min(total, len(buf))\n"
        "    sys.stdout.buffer.write(buf[:n])\n"
        "    total -= n\n"
    )

    async def main(loop, clock):
        clock.start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        clock.stop()
        if len(out) != total or proc.returncode != 0:
            raise RuntimeError(f"got {len(out)} of {total} bytes, status {proc.returncode}")
        return total / MB

    return _timed(factory, main)


# name -> (function, default params, --quick params, unit, label)
CASES = {
    "spawn_true": (
        bench_spawn_true, dict(n=1000), dict(n=200), "proc/s",
        "1,000 x create_subprocess_exec('true') + wait(), sequential",
    ),
    "spawn_true_x50": (
        bench_spawn_true, dict(n=1000, inflight=50), dict(n=200, inflight=50), "proc/s",
        "1,000 x the same, 50 in flight",
    ),
    "pipe_from_child": (
        bench_pipe_from_child, dict(mb=100), dict(mb=20), "MB/s",
        "100 MB child stdout -> StreamReader.read(1 MiB)",
    ),
    "pipe_to_child": (
        bench_pipe_to_child, dict(mb=100), dict(mb=20), "MB/s",
        "100 MB StreamWriter.write+drain -> child stdin",
    ),
    "communicate": (
        bench_communicate, dict(mb=100), dict(mb=20), "MB/s",
        "communicate() of 100 MB stdout (incl. spawn)",
    ),
}
SIZE_KEYS = {"n", "mb"}


def scaled(params, factor):
    return _harness.scaled(params, factor, SIZE_KEYS)


# --------------------------------------------------------------------------
# worker


def worker_main(args):
    if args.pin_self is not None:
        os.sched_setaffinity(0, {args.pin_self})
    out = {"loop": args.worker_loop}
    try:
        factory = get_loop_factory(args.worker_loop)
        if args.worker_case == "__probe__":
            loop = factory()
            loop.close()
            out["version"] = loop_version(args.worker_loop)
        else:
            func = CASES[args.worker_case][0]
            params = json.loads(args.params)
            for _ in range(args.warmup):
                func(factory, **scaled(params, 0.1))
            pairs = [func(factory, **params) for _ in range(args.repeat)]
            out["samples"] = [wall for wall, _ in pairs]
            out["cpu_samples"] = [cpu for _, cpu in pairs]
        if hasattr(os, "sched_getaffinity"):
            out["affinity"] = sorted(os.sched_getaffinity(0))
    except BaseException as exc:
        traceback.print_exc()
        out["error"] = f"{type(exc).__name__}: {exc}"
    emit_result(RESULT_MARK, out)
    return 0


# --------------------------------------------------------------------------
# parent


def run_child(prefix, extra, loop, case, params, args):
    cmd = [
        *prefix, sys.executable, os.path.abspath(__file__), "--worker",
        "--worker-loop", loop, "--worker-case", case,
        "--params", json.dumps(params), "--repeat", str(args.repeat),
        "--warmup", str(args.warmup), *extra,
    ]  # fmt: skip
    # TOKIOLOOP_CHILD_WATCHER would pick a non-default watcher: measure the default.
    return run_worker(cmd, RESULT_MARK, args.timeout, env=child_env(drop=("TOKIOLOOP_CHILD_WATCHER",)))


def fmt_rate(x):
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cases:\n" + "\n".join(f"  {name:16s} {c[4]}" for name, c in CASES.items()),
    )
    ap.add_argument("--loops", default=",".join(DEFAULT_LOOPS),
                    help="comma-separated loops (default: %(default)s; also: rloop)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated cases (default: all)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="measured runs per (loop, case) (default: 5, 3 with --quick)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up runs at 1/10 size (default: 1)")
    ap.add_argument("--stat", choices=("best", "median"), default="best")
    ap.add_argument("--quick", action="store_true", help="small sizes, repeat 3")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply all work sizes by this")
    ap.add_argument("--cpu", type=int, default=1, help="CPU the loop runs on (default: 1)")
    ap.add_argument("--child-cpu", type=int, default=None,
                    help="CPU of the data-pumping child in the pipe cases "
                         "(default: another CPU than --cpu when there is one; -1: same as the loop)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin anything")
    ap.add_argument("--timeout", type=float, default=600, help="per-worker timeout in s")
    ap.add_argument("--json", metavar="PATH", help="write raw results as JSON")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-loop", help=argparse.SUPPRESS)
    ap.add_argument("--worker-case", help=argparse.SUPPRESS)
    ap.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--pin-self", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        return worker_main(args)

    if args.repeat is None:
        args.repeat = 3 if args.quick else 5
    loops = parse_list(args.loops, ALL_LOOPS, "loop")
    cases = parse_list(args.cases, list(CASES), "case")
    prefix, extra, pin_desc, loop_cpu = setup_pinning(args.cpu, args.no_pin)
    child_cpu = None
    if not args.no_pin and hasattr(os, "sched_getaffinity"):
        avail = sorted(os.sched_getaffinity(0))
        if args.child_cpu is None:
            others = [c for c in avail if c != loop_cpu]
            child_cpu = others[0] if others else None
        elif args.child_cpu >= 0:
            child_cpu = args.child_cpu
    child_desc = f"CPU {child_cpu}" if child_cpu is not None else "same CPU as the loop"

    versions, notes = {}, []
    for loop in loops:
        res = run_child(prefix, extra, loop, "__probe__", {}, args)
        if "error" in res:
            notes.append(f"note: skipping {loop}: {res['error']}")
        else:
            versions[loop] = res["version"]
    active = [lp for lp in ALL_LOOPS if lp in versions]
    for note in notes:
        print(note, file=sys.stderr)
    if not active:
        raise SystemExit("no loop available")

    started = datetime.datetime.now().astimezone()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = {}
    for case in cases:
        func, dparams, qparams, unit, label = CASES[case]
        params = scaled(qparams if args.quick else dparams, args.scale)
        if "mb" in params:
            params["child_cpu"] = child_cpu
        results[case] = {"params": params, "unit": unit, "label": label, "loops": {}}
        for loop in active:
            t0 = time.perf_counter()
            res = run_child(prefix, extra, loop, case, params, args)
            wall = time.perf_counter() - t0
            if "samples" in res:
                s = res["samples"]
                res["best"] = max(s)
                res["median"] = statistics.median(s)
                res["cpu_best"] = max(res["cpu_samples"])
                res["cpu_median"] = statistics.median(res["cpu_samples"])
                msg = f"best {fmt_rate(res['best'])} {unit}, median {fmt_rate(res['median'])}"
            else:
                msg = f"ERROR {res['error']}"
            res["wall_s"] = round(wall, 2)
            results[case]["loops"][loop] = res
            print(f"  {case:16s} {loop:10s} {msg}  ({wall:.1f}s)", file=sys.stderr, flush=True)

    stat = args.stat
    lines = ["## tokioloop subprocess benchmark", ""]
    lines.append(f"- date: {started.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    lines.append(f"- Python: {platform.python_implementation()} {platform.python_version()} "
                 f"({sys.executable})")
    lines.append(f"- platform: {platform.platform()}; CPU: {cpu_model()} "
                 f"({os.cpu_count()} logical CPUs)")
    lines.append(f"- CPU pinning: {pin_desc}, one fresh subprocess per (loop, case); "
                 f"data-pumping child: {child_desc}")
    if load_start is not None:
        lines.append(f"- load average (1 min) at start / end: {load_start[0]:.2f} / "
                     f"{os.getloadavg()[0]:.2f}")
    lines.append("- loops: " + ", ".join(f"{lp} {versions[lp]}" for lp in active))
    lines.append(f"- {args.repeat} repeat(s) (+{args.warmup} warm-up) per cell, fresh loop per run; "
                 f"showing **{stat}**{' (--quick sizes)' if args.quick else ''}")
    for note in notes:
        lines.append(f"- {note}")
    lines.append("")
    ref = "uvloop" if "uvloop" in active else None
    others = []
    if "tokioloop" in active:
        others = ([ref] if ref else []) + (["asyncio"] if "asyncio" in active else [])
    errors = []

    def table(key, unit_suffix):
        head = ["case", "unit", *active] + [f"tokioloop / {o}" for o in others]
        out = ["| " + " | ".join(head) + " |",
               "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
        for case in cases:
            r = results[case]
            unit = r["unit"] if unit_suffix is not None else r["unit"].replace("/s", "") + " per CPU-s"
            row = [f"{case} ({r['label']})", unit]
            for loop in active:
                res = r["loops"][loop]
                if key in res:
                    row.append(fmt_rate(res[key]))
                else:
                    row.append("error")
                    if (case, loop, res) not in errors:
                        errors.append((case, loop, res))
            tok = r["loops"].get("tokioloop", {}).get(key)
            for other in others:
                base = r["loops"][other].get(key)
                row.append(f"{tok / base:.2f}x" if tok and base else "n/a")
            out.append("| " + " | ".join(row) + " |")
        return out

    lines.append("Throughput (wall clock):")
    lines.append("")
    lines.extend(table(stat, ""))
    lines.append("")
    lines.append("Efficiency: the same work per CPU-second of the loop's process (all its threads; "
                 "children excluded) -- robust against other load on the machine:")
    lines.append("")
    lines.extend(table("cpu_" + stat, None))
    lines.append("")
    lines.append("Higher is better; a ratio > 1 means tokioloop is faster.")
    print("\n".join(lines))
    for case, loop, res in errors:
        print(f"\n{case} / {loop}: {res['error']}")
        if res.get("stderr"):
            print("  " + res["stderr"].strip().replace("\n", "\n  "))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": {"date": started.isoformat(), "python": sys.version,
                                "pinning": pin_desc, "child_cpu": child_cpu,
                                "repeat": args.repeat, "stat": stat, "versions": versions},
                       "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
