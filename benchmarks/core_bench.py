#!/usr/bin/env python3
"""Event-loop core micro-benchmarks: asyncio vs uvloop vs rloop vs tokioloop.

Every (loop, case) pair runs in a fresh subprocess pinned to one CPU
(``taskset -c 1`` by default).  Inside that subprocess the case runs once as
a (smaller) warm-up and then ``--repeat`` times, each time on a brand-new
loop; only the time spent running the loop is measured (loop creation and
``close()`` are excluded).  The table reports ops/s (best of the repeats by
default, ``--stat median`` for the median) and tokioloop's ratio to the best
of uvloop and rloop (> 1 means tokioloop is faster).

Every case uses only public loop APIs and stdlib asyncio helpers, so the
Python-level work per op is identical for every loop.

Examples::

    /work/venv/bin/python benchmarks/core_bench.py
    /work/venv/bin/python benchmarks/core_bench.py --quick
    /work/venv/bin/python benchmarks/core_bench.py --loops uvloop,tokioloop \\
        --cases call_soon,sleep0 --repeat 10 --stat median --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
import traceback

import _harness
from _harness import (
    cpu_model,
    emit_result,
    get_loop_factory,
    loop_version,
    parse_list,
    run_worker,
    setup_pinning,
)

ALL_LOOPS = ["asyncio", "uvloop", "rloop", "tokioloop", "tokioloop+detector"]
# Opt-in: tokioloop with its blocking-call detector on (threshold 0.1 s), to
# measure the detector's cost (--loops tokioloop,tokioloop+detector).
DEFAULT_LOOPS = ["asyncio", "uvloop", "rloop", "tokioloop"]
RESULT_MARK = "@@CORE_BENCH_RESULT@@ "


# --------------------------------------------------------------------------
# loop factories


def _timed_run(factory, main):
    """Run ``main(loop)`` on a fresh loop; return (seconds, result).

    Only ``run_until_complete`` is timed; loop creation and close are not.
    """
    loop = factory()
    try:
        coro = main(loop)
        gc.collect()
        t0 = time.perf_counter()
        result = loop.run_until_complete(coro)
        elapsed = time.perf_counter() - t0
    finally:
        loop.close()
    return elapsed, result


def _coprime_step(n, start=7919):
    """A multiplier p with gcd(p, n) == 1, so i -> i*p % n permutes range(n)."""
    p = start
    while math.gcd(p, n) != 1:
        p += 1
    return p


# --------------------------------------------------------------------------
# cases: each takes a loop factory (+ size params) and returns ops/s


def bench_call_soon(factory, n=1_000_000, chains=1000):
    """`chains` independent call_soon chains; each callback schedules the next.

    ops = callbacks run (= call_soon calls).
    """
    per_chain = max(1, n // chains)
    total = per_chain * chains

    async def main(loop):
        fut = loop.create_future()
        call_soon = loop.call_soon
        finished = [0]

        def cb(remaining):
            if remaining:
                call_soon(cb, remaining - 1)
            else:
                finished[0] += 1
                if finished[0] == chains:
                    fut.set_result(None)

        for _ in range(chains):
            call_soon(cb, per_chain - 1)
        await fut
        return finished[0]

    elapsed, done = _timed_run(factory, main)
    assert done == chains, done
    return total / elapsed


def bench_call_soon_batch(factory, n=1_000_000, batch=100_000):
    """Opt-in variant: schedule `batch` call_soon(cb) at once, run them all,
    repeat until `n`.  Times scheduling + running, so it includes the cost of
    holding many live handles (GC pressure).  ops = callbacks run.
    """
    rounds = max(1, n // batch)

    async def main(loop):
        call_soon = loop.call_soon
        count = [0]

        def cb():
            count[0] += 1

        for _ in range(rounds):
            fut = loop.create_future()
            for _ in range(batch - 1):
                call_soon(cb)
            call_soon(fut.set_result, None)
            await fut
            count[0] += 1
        return count[0]

    elapsed, done = _timed_run(factory, main)
    assert done == rounds * batch, done
    return rounds * batch / elapsed


def bench_sleep0(factory, tasks=100, steps=2000):
    """`tasks` tasks each doing `steps` x ``await asyncio.sleep(0)``.

    ops = task steps (tasks * steps).
    """

    async def worker():
        sleep = asyncio.sleep
        for _ in range(steps):
            await sleep(0)
        return 1

    async def main(loop):
        res = await asyncio.gather(*[worker() for _ in range(tasks)])
        return sum(res)

    elapsed, done = _timed_run(factory, main)
    assert done == tasks, done
    return tasks * steps / elapsed


def bench_gather(factory, tasks=20_000, rounds=5):
    """`rounds` x ``await asyncio.gather(*20k trivial coroutines)``.

    ops = tasks created and completed (tasks * rounds).
    """

    async def noop():
        return 1

    async def main(loop):
        total = 0
        for _ in range(rounds):
            res = await asyncio.gather(*[noop() for _ in range(tasks)])
            total += len(res)
        return total

    elapsed, done = _timed_run(factory, main)
    assert done == tasks * rounds, done
    return tasks * rounds / elapsed


def bench_call_later(factory, n=200_000, spread=0.001):
    """`n` call_later timers with distinct small delays in [0, spread) s,
    scheduled in shuffled order, all fired.  ops = timers (schedule + fire).
    """
    step = spread / n
    mult = _coprime_step(n)

    async def main(loop):
        fut = loop.create_future()
        fired = [0]

        def cb():
            fired[0] += 1
            if fired[0] == n:
                fut.set_result(None)

        call_later = loop.call_later
        for i in range(n):
            call_later(((i * mult) % n) * step, cb)
        await fut
        return fired[0]

    elapsed, fired = _timed_run(factory, main)
    assert fired == n, fired
    return n / elapsed


def bench_cancelled_timers(factory, n=200_000, base=3600.0):
    """`n` call_later timers ~1 h in the future (distinct, shuffled), all
    cancelled, then a few loop iterations.  ops = timers (schedule + cancel).
    """
    mult = _coprime_step(n)

    async def main(loop):
        fired = [0]

        def cb():
            fired[0] += 1

        call_later = loop.call_later
        handles = [call_later(base + ((i * mult) % n) * 1e-3, cb) for i in range(n)]
        for h in handles:
            h.cancel()
        del handles
        # Give the loop a few iterations to drop the cancelled timers.
        for _ in range(3):
            await asyncio.sleep(0)
        return fired[0]

    elapsed, fired = _timed_run(factory, main)
    assert fired == 0, fired
    return n / elapsed


def bench_wait_for(factory, n=100_000, timeout=10.0):
    """`n` sequential ``await asyncio.wait_for(coro(), 10.0)`` that complete
    (each wraps the coroutine in a task and arms/cancels a timeout timer).
    ops = wait_for calls.
    """

    async def noop():
        return 1

    async def main(loop):
        wait_for = asyncio.wait_for
        total = 0
        for _ in range(n):
            total += await wait_for(noop(), timeout)
        return total

    elapsed, total = _timed_run(factory, main)
    assert total == n, total
    return n / elapsed


def bench_queue_pingpong(factory, n=100_000):
    """Two tasks bouncing an item through two asyncio.Queue()s.

    ops = round trips (2 put + 2 get each).
    """

    async def main(loop):
        q_ping = asyncio.Queue()
        q_pong = asyncio.Queue()

        async def pinger():
            got = 0
            for i in range(n):
                await q_ping.put(i)
                got += (await q_pong.get()) == i
            return got

        async def ponger():
            for _ in range(n):
                await q_pong.put(await q_ping.get())
            return 0

        got, _ = await asyncio.gather(pinger(), ponger())
        return got

    elapsed, got = _timed_run(factory, main)
    assert got == n, got
    return n / elapsed


def bench_threadsafe(factory, n=200_000):
    """A producer thread calls loop.call_soon_threadsafe(cb) `n` times; the
    loop counts the callbacks.  ops = callbacks run.  Timed from thread start
    until the loop has run all `n` callbacks (both threads share the pinned CPU).
    """

    async def main(loop):
        fut = loop.create_future()
        count = [0]

        def cb():
            count[0] += 1
            if count[0] == n:
                fut.set_result(None)

        def producer():
            cst = loop.call_soon_threadsafe
            for _ in range(n):
                cst(cb)

        t = threading.Thread(target=producer, daemon=True)
        t.start()
        await fut
        t.join()
        return count[0]

    elapsed, count = _timed_run(factory, main)
    assert count == n, count
    return n / elapsed


# name -> (function, default params, --quick params, ops-per-run function, label)
CASES = {
    "call_soon": (
        bench_call_soon,
        dict(n=1_000_000, chains=1000),
        dict(n=100_000, chains=1000),
        lambda p: (p["n"] // p["chains"]) * p["chains"],
        "self-rescheduling call_soon chains",
    ),
    # opt-in only (--cases call_soon_batch), not part of the default set
    "call_soon_batch": (
        bench_call_soon_batch,
        dict(n=1_000_000, batch=100_000),
        dict(n=100_000, batch=10_000),
        lambda p: max(1, p["n"] // p["batch"]) * p["batch"],
        "call_soon batches of 100k, incl. scheduling",
    ),
    "sleep0": (
        bench_sleep0,
        dict(tasks=100, steps=2000),
        dict(tasks=100, steps=200),
        lambda p: p["tasks"] * p["steps"],
        "tasks x await sleep(0)",
    ),
    "gather": (
        bench_gather,
        dict(tasks=20_000, rounds=5),
        dict(tasks=20_000, rounds=1),
        lambda p: p["tasks"] * p["rounds"],
        "gather(*20k trivial coros)",
    ),
    "call_later": (
        bench_call_later,
        dict(n=200_000),
        dict(n=20_000),
        lambda p: p["n"],
        "call_later, distinct delays <1ms, all fire",
    ),
    "cancelled_timers": (
        bench_cancelled_timers,
        dict(n=200_000),
        dict(n=20_000),
        lambda p: p["n"],
        "call_later(~1h) then cancel",
    ),
    "wait_for": (
        bench_wait_for,
        dict(n=100_000),
        dict(n=10_000),
        lambda p: p["n"],
        "wait_for(coro(), 10) completing",
    ),
    "queue_pingpong": (
        bench_queue_pingpong,
        dict(n=100_000),
        dict(n=10_000),
        lambda p: p["n"],
        "2 tasks, 2 Queues, round trips",
    ),
    "threadsafe": (
        bench_threadsafe,
        dict(n=200_000),
        dict(n=20_000),
        lambda p: p["n"],
        "call_soon_threadsafe from a thread",
    ),
}

DEFAULT_CASES = [c for c in CASES if c != "call_soon_batch"]

# Parameters that count work (scaled by --scale / warm-up); others are fixed.
SIZE_KEYS = {"n", "steps", "rounds"}


def scaled(params, factor):
    out = _harness.scaled(params, factor, SIZE_KEYS)
    for k in ("chains", "batch"):  # keep n >= chains / batch
        if k in out:
            out["n"] = max(out["n"], out[k])
    return out


# --------------------------------------------------------------------------
# worker (child process)


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
            out["samples"] = [func(factory, **params) for _ in range(args.repeat)]
        if hasattr(os, "sched_getaffinity"):
            out["affinity"] = sorted(os.sched_getaffinity(0))
    except BaseException as exc:  # report, don't hide, any failure
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
    return run_worker(cmd, RESULT_MARK, args.timeout)


def fmt_ops(x):
    if x is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            v = x / div
            return f"{v:.3g}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return f"{x:.3g}"


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cases:\n" + "\n".join(
            f"  {name:17s} {c[4]}: default {c[1]}, --quick {c[2]}" for name, c in CASES.items()
        ),
    )
    ap.add_argument("--loops", default=",".join(DEFAULT_LOOPS),
                    help="comma-separated loops (default: %(default)s)")
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES),
                    help="comma-separated cases (default: all but call_soon_batch)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="measured runs per (loop, case) (default: 5, 3 with --quick)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="discarded warm-up runs at 1/10 size (default: 1)")
    ap.add_argument("--stat", choices=("best", "median"), default="best",
                    help="statistic shown in the table (default: best)")
    ap.add_argument("--quick", action="store_true", help="small sizes, repeat 3, for a smoke run")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply all work sizes by this")
    ap.add_argument("--cpu", type=int, default=1, help="CPU to pin to (default: 1)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the subprocesses")
    ap.add_argument("--timeout", type=float, default=600, help="per-subprocess timeout in s")
    ap.add_argument("--json", metavar="PATH", help="write raw results as JSON")
    # worker-mode (internal)
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
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    loops = parse_list(args.loops, ALL_LOOPS, "loop")
    cases = parse_list(args.cases, list(CASES), "case")
    prefix, extra, pin_desc, _ = setup_pinning(args.cpu, args.no_pin)

    # Probe loops in a subprocess (a broken build must not kill this process).
    versions, notes, child_affinity = {}, [], None
    for loop in loops:
        res = run_child(prefix, extra, loop, "__probe__", {}, args)
        if "error" in res:
            notes.append(f"note: skipping {loop}: {res['error']}")
        else:
            versions[loop] = res["version"]
            child_affinity = res.get("affinity", child_affinity)
    active = [lp for lp in ALL_LOOPS if lp in versions]  # canonical column order
    for note in notes:
        print(note, file=sys.stderr)
    if not active:
        raise SystemExit("no loop available")

    started = datetime.datetime.now().astimezone()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = {}
    for case in cases:
        func, dparams, qparams, ops_of, label = CASES[case]
        params = scaled(qparams if args.quick else dparams, args.scale)
        results[case] = {"params": params, "ops_per_run": ops_of(params), "label": label, "loops": {}}
        for loop in active:
            t0 = time.perf_counter()
            res = run_child(prefix, extra, loop, case, params, args)
            wall = time.perf_counter() - t0
            if "samples" in res:
                s = res["samples"]
                res["best"] = max(s)
                res["median"] = statistics.median(s)
                msg = (f"best {fmt_ops(res['best'])}/s, median {fmt_ops(res['median'])}/s, "
                       f"min {fmt_ops(min(s))}/s")
            else:
                msg = f"ERROR {res['error']}"
            res["wall_s"] = round(wall, 2)
            results[case]["loops"][loop] = res
            print(f"  {case:17s} {loop:10s} {msg}  ({wall:.1f}s)", file=sys.stderr, flush=True)

    # ---------------------------------------------------------------- report
    stat = args.stat
    lines = []
    lines.append("## tokioloop core benchmark")
    lines.append("")
    lines.append(f"- date: {started.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    lines.append(f"- Python: {platform.python_implementation()} {platform.python_version()} "
                 f"({sys.executable})")
    lines.append(f"- platform: {platform.platform()}; CPU: {cpu_model()} "
                 f"({os.cpu_count()} logical CPUs)")
    pin_line = f"- CPU pinning: {pin_desc}, one fresh subprocess per (loop, case)"
    if child_affinity is not None:
        pin_line += f" (child affinity: CPUs {child_affinity})"
    lines.append(pin_line)
    if load_start is not None:
        load_end = os.getloadavg()
        lines.append(f"- load average (1 min) at start / end: {load_start[0]:.2f} / {load_end[0]:.2f}"
                     " (other load on the pinned CPU skews results)")
    lines.append("- loops: " + ", ".join(f"{lp} {versions[lp]}" for lp in active))
    lines.append(f"- {args.repeat} repeat(s) (+{args.warmup} warm-up) per cell, fresh loop per run; "
                 f"showing **{stat}** ops/s{' (--quick sizes)' if args.quick else ''}"
                 f"{f', --scale {args.scale}' if args.scale != 1 else ''}")
    for note in notes:
        lines.append(f"- {note}")
    lines.append("")

    has_tok = "tokioloop" in active
    refs = [lp for lp in ("uvloop", "rloop") if lp in active]
    show_ratio = has_tok and bool(refs)
    head = ["case", "ops/run", *active]
    if show_ratio:
        head.append(f"tokioloop / best({', '.join(refs)})")
    show_detector = has_tok and "tokioloop+detector" in active
    if show_detector:
        head.append("detector on / off")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    ratios = []
    errors = []
    for case in cases:
        r = results[case]
        row = [f"{case} ({r['label']})", f"{r['ops_per_run']:,}"]
        for loop in active:
            res = r["loops"][loop]
            if stat in res:
                row.append(fmt_ops(res[stat]))
            else:
                row.append("error")
                errors.append((case, loop, res))
        if show_ratio:
            tok = r["loops"]["tokioloop"].get(stat)
            best_ref = max(((r["loops"][lp].get(stat), lp) for lp in refs
                            if r["loops"][lp].get(stat) is not None), default=None)
            if tok is not None and best_ref is not None:
                ratio = tok / best_ref[0]
                ratios.append(ratio)
                row.append(f"{ratio:.2f}x (vs {best_ref[1]})")
            else:
                row.append("n/a")
        if show_detector:
            on = r["loops"]["tokioloop+detector"].get(stat)
            off = r["loops"]["tokioloop"].get(stat)
            row.append(f"{on / off:.3f}" if on and off else "n/a")
        lines.append("| " + " | ".join(row) + " |")
    if show_ratio and ratios:
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        lines.append(f"| **geometric mean** ({len(ratios)}/{len(cases)} cases) | | "
                     + " | ".join([""] * len(active)) + f" | **{geo:.2f}x** |")
    lines.append("")
    lines.append("ops/s, higher is better; ratio > 1 means tokioloop is faster.")
    print("\n".join(lines))

    for case, loop, res in errors:
        print(f"\n{case} / {loop}: {res['error']}")
        if res.get("stderr"):
            print("  " + res["stderr"].strip().replace("\n", "\n  "))

    if args.json:
        payload = {
            "meta": {
                "date": started.isoformat(),
                "python": sys.version,
                "executable": sys.executable,
                "platform": platform.platform(),
                "cpu": cpu_model(),
                "pinning": pin_desc,
                "loadavg_start": load_start,
                "repeat": args.repeat,
                "warmup": args.warmup,
                "quick": args.quick,
                "scale": args.scale,
                "stat": stat,
                "versions": versions,
                "skipped": notes,
            },
            "results": results,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"\nraw results written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
