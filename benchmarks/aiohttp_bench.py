#!/usr/bin/env python3
"""aiohttp hello-world under wrk: asyncio vs uvloop vs rloop vs tokioloop.

The server is an aiohttp ``web.Application`` with one GET handler returning
``web.Response(text="Hello, World!")`` (access log off), run with
``web.AppRunner``/``web.TCPSite`` on a loopback port, in its own process
pinned to one CPU (``taskset -c 1``).  wrk (one thread, ``--conns``
keep-alive connections) runs pinned to the other CPU (``taskset -c 0``).
``--repeat`` rounds each run every loop once: a fresh server process, a
discarded wrk warm-up run (its connections close, which also primes glibc's
malloc as a long-running server would be: see echo_bench.py), then one
measured wrk run (``--no-interleave``: one server per loop for all its runs).  For each measured run the parent reads the server's utime+stime from
/proc/<pid>/stat just before wrk starts and just after it exits; server CPU per
request = delta / requests wrk completed.  The table shows the best (max
req/s, min CPU/req) or, with ``--stat median``, the median of the runs, and
tokioloop's ratios to uvloop and to the best peer.

Needs (not installed by the project; install once)::

    apt-get install -y wrk                 # Debian's wrk 4.x
    /work/venv/bin/pip install aiohttp     # plus uvloop, rloop for those columns

and taskset (util-linux).  Linux only (/proc).

Examples::

    /work/venv/bin/python benchmarks/aiohttp_bench.py
    /work/venv/bin/python benchmarks/aiohttp_bench.py --quick --loops asyncio,tokioloop
    /work/venv/bin/python benchmarks/aiohttp_bench.py --conns 50 --duration 10 --json http.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import echo_bench as eb  # noqa: E402  (shared helpers)

ALL_LOOPS = eb.ALL_LOOPS


# --------------------------------------------------------------------------
# server (child process)


def server_main(args):
    try:
        from aiohttp import web

        async def hello(request):
            return web.Response(text="Hello, World!")

        async def main():
            app = web.Application()
            app.router.add_get("/", hello)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, args.host, 0, backlog=512)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            eb.announce_port(port)
            await asyncio.Event().wait()

        loop = eb.get_loop_factory(args.server_loop)()
        asyncio.set_event_loop(loop)
        eb.install_fatal_handler(loop)
        loop.run_until_complete(main())
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(2)
    return 0


# --------------------------------------------------------------------------
# wrk


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _to_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_wrk(out):
    res = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    if m:
        res["requests"] = int(m.group(1))
        res["seconds"] = _to_us(m.group(2) + m.group(3)) / 1e6
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    lat = {}
    for p, v in re.findall(r"^\s+(50|75|90|99)(?:\.000)?%\s+(\S+)", out, re.M):
        lat["p" + p] = _to_us(v)
    m = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    if m:
        lat["mean"], lat["max"] = _to_us(m.group(1)), _to_us(m.group(3))
    res["latency_us"] = lat
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(map(int, m.groups())) if m else 0
    return res


def run_wrk(args, port, pid, duration):
    url = f"http://{args.host}:{port}/"
    cmd = [*eb.pin_prefix(args.client_cpu, args.no_pin), args.wrk, "-t", "1",
           "-c", str(args.conns), "-d", f"{max(1, round(duration))}s", "--latency", url]
    c0, s0 = eb.read_proc_cpu(pid)
    b0 = eb.cpus_busy()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        return {"error": "wrk did not finish"}
    wall = time.perf_counter() - t0
    c1, s1 = eb.read_proc_cpu(pid)
    b1 = eb.cpus_busy()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    if p.returncode != 0:
        return {"error": f"wrk exit {p.returncode}: {(p.stderr or p.stdout).strip()[-300:]}"}
    res = parse_wrk(p.stdout)
    if not res.get("requests"):
        return {"error": f"no requests completed; wrk said: {p.stdout.strip()[-300:]}"}
    if res["non2xx"] or res["socket_errors"]:
        res["warning"] = f"{res['non2xx']} non-2xx, {res['socket_errors']} socket errors"
    if c0 is not None and c1 is not None:
        res["server_cpu_s"] = c1 - c0
        res["server_cpu_us_per_req"] = (c1 - c0) * 1e6 / res["requests"]
        res["server_util"] = (c1 - c0) / wall
    if s0 is not None and s1 is not None:
        res["server_sched_cpu_us_per_req"] = (s1 - s0) * 1e6 / res["requests"]
    res["wall_s"] = wall
    res["client_util"] = wrk_cpu / wall
    res["client_cpu_us_per_req"] = wrk_cpu * 1e6 / res["requests"]
    res["cpu_busy"] = [round((b1.get(i, 0) - b0.get(i, 0)) / wall, 3)
                       for i in range(max(b1, default=-1) + 1)]
    eb.annotate_other_load(res, args)
    return res


def run_cell(args, loop, repeat):
    cmd = [*eb.pin_prefix(args.server_cpu, args.no_pin), sys.executable,
           os.path.abspath(__file__), "--server", "--server-loop", loop, "--host", args.host]
    srv = eb.ServerProc(cmd, start_timeout=args.start_timeout)
    out = {"samples": []}
    try:
        if srv.error:
            out["error"] = srv.error
            out["stderr"] = srv.stderr_tail()
            return out
        if args.warmup > 0:
            res = run_wrk(args, srv.port, srv.pid, args.warmup)
            dead = srv.alive_error()
            if "error" in res or dead:
                out["error"] = dead or ("warm-up: " + res["error"])
                out["stderr"] = srv.stderr_tail()
                return out
        for _ in range(repeat):
            res = run_wrk(args, srv.port, srv.pid, args.duration)
            dead = srv.alive_error()
            if "error" in res or dead:
                out["error"] = dead or res["error"]
                out["stderr"] = srv.stderr_tail()
                break
            out["samples"].append(res)
    finally:
        srv.stop()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loops", default=",".join(ALL_LOOPS),
                    help="comma-separated loops (default: %(default)s)")
    ap.add_argument("--conns", type=int, default=32,
                    help="wrk connections (default: 32, enough to keep one server CPU busy; "
                         "wrk uses 1 thread)")
    ap.add_argument("--duration", type=float, default=None,
                    help="seconds per measured wrk run, whole seconds (default: 5, 2 with --quick)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds of a discarded wrk warm-up run, whole seconds, 0 = none (default: 1)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="measured wrk runs per loop (default: 3, 2 with --quick)")
    ap.add_argument("--no-interleave", action="store_true",
                    help="one server process per loop for all its runs, loop after loop "
                         "(default: rounds over the loops, fresh server + warm-up per run)")
    ap.add_argument("--stat", choices=("best", "median"), default="best",
                    help="best = max req/s and min CPU/req (default); median = medians")
    ap.add_argument("--quick", action="store_true", help="short runs for a smoke test")
    ap.add_argument("--server-cpu", type=int, default=1, help="CPU for the server (default: 1)")
    ap.add_argument("--client-cpu", type=int, default=0, help="CPU for wrk (default: 0)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin anything")
    ap.add_argument("--host", default="127.0.0.1", help="loopback address (default: 127.0.0.1)")
    ap.add_argument("--wrk", default=shutil.which("wrk") or "wrk", help="wrk binary")
    ap.add_argument("--start-timeout", type=float, default=30.0,
                    help="seconds a server may take to listen (default: 30)")
    ap.add_argument("--json", metavar="PATH", help="write raw results as JSON")
    ap.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--server-loop", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.server:
        return server_main(args)
    # SIGTERM unwinds like Ctrl-C, so running servers are stopped.
    signal.signal(signal.SIGTERM, eb._raise_interrupt)

    if args.duration is None:
        args.duration = 2.0 if args.quick else 5.0
    if args.warmup is None:
        args.warmup = 1.0
    if args.repeat is None:
        args.repeat = 2 if args.quick else 3
    # wrk takes whole seconds
    args.duration = float(max(1, round(args.duration)))
    args.warmup = float(max(0, round(args.warmup)))
    if not shutil.which(args.wrk):
        raise SystemExit("wrk not found: apt-get install -y wrk (or --wrk PATH)")
    try:
        import aiohttp
    except ImportError:
        raise SystemExit(f"aiohttp missing: {sys.executable} -m pip install aiohttp")
    loops = eb.parse_list(args.loops, ALL_LOOPS, "loop")
    pin_desc = eb.pinning_desc(args.server_cpu, args.client_cpu, args.no_pin).replace(
        "load generator", "wrk")

    versions, notes = {}, []
    for loop in loops:
        v, err = eb.probe_loop(loop)
        if err:
            notes.append(f"skipped {loop}: {err}")
        else:
            versions[loop] = v
    active = [lp for lp in ALL_LOOPS if lp in versions]
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if not active:
        raise SystemExit("no loop available")
    wrk_version = subprocess.run([args.wrk, "-v"], capture_output=True, text=True)
    wrk_version = (wrk_version.stdout + wrk_version.stderr).strip().splitlines()[0:1]

    started = datetime.datetime.now().astimezone()
    load_start = os.getloadavg()
    results = {loop: {"samples": []} for loop in active}
    walls = dict.fromkeys(active, 0.0)
    rounds, per_round = (1, args.repeat) if args.no_interleave else (args.repeat, 1)
    for _ in range(rounds):
        for loop in active:
            if "error" in results[loop]:
                continue
            t0 = time.perf_counter()
            got = run_cell(args, loop, per_round)
            walls[loop] += time.perf_counter() - t0
            results[loop]["samples"] += got["samples"]
            if "error" in got:
                results[loop]["error"] = got["error"]
                results[loop]["stderr"] = got.get("stderr", "")
    for loop in active:
        cell = results[loop]
        s = cell["samples"]
        msg = "-"
        if s:
            rps = eb.summarize(s, "rps", args.stat, True)
            cpu = eb.summarize(s, "server_cpu_us_per_req", args.stat, False)
            su = max(x.get("server_util") or 0 for x in s)
            cu = max(x.get("client_util") or 0 for x in s)
            ol = max(x.get("other_load_server_cpu") or 0 for x in s)
            msg = (f"{eb.fmt_num(rps)} req/s, {eb.fmt_us(cpu)} us CPU/req (server util {su:.2f}, "
                   f"wrk util {cu:.2f}, other load on server CPU {ol:.2f})")
            warn = [x["warning"] for x in s if x.get("warning")]
            if warn:
                msg += f"  WARNING {warn[0]}"
        if "error" in cell:
            msg += f"  ERROR {cell['error']}"
        print(f"  {loop:10s} {msg}  ({walls[loop]:.1f}s)", file=sys.stderr, flush=True)

    stat = args.stat
    other = eb.other_load_line([x for c in results.values() for x in c["samples"]],
                               args.server_cpu, args.client_cpu, what="wrk")
    lines = eb.header_lines(
        "tokioloop aiohttp hello-world benchmark (wrk)", started, load_start, pin_desc,
        versions, notes,
        [f"aiohttp {aiohttp.__version__}; {' '.join(wrk_version)}: 1 thread, {args.conns} "
         f"keep-alive connections, GET / -> 'Hello, World!'; {args.repeat} x "
         f"({args.warmup:g} s warm-up + {args.duration:g} s measured) per loop, "
         + ("one server process per loop; " if args.no_interleave else
            "interleaved (round after round over the loops, a fresh server process and "
            "warm-up per run); ")
         + f"showing **{stat}**" + (" (--quick)" if args.quick else ""),
         "server CPU/request = (utime+stime of the server process over the wrk run, from "
         "/proc/<pid>/stat) / requests, in microseconds"] + ([other] if other else []),
    )
    has_tok = "tokioloop" in active
    head = ["metric", *active]
    if has_tok:
        head += ["tokioloop / uvloop", "tokioloop / best peer"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for label, key, hb, fmt in (
        ("requests/s (higher is better; ratio > 1 = tokioloop faster)", "rps", True, eb.fmt_num),
        ("server CPU µs/request (lower is better; ratio < 1 = tokioloop cheaper)",
         "server_cpu_us_per_req", False, eb.fmt_us),
        ("p50 latency µs (lower is better)", None, False, eb.fmt_us),
        ("p99 latency µs (lower is better)", None, False, eb.fmt_us),
    ):
        vals, row = {}, [label]
        for loop in active:
            cell = results[loop]
            if key is None:
                pk = label.split()[0]
                vs = [x["latency_us"].get(pk) for x in cell["samples"]]
                vs = [v for v in vs if v is not None]
                v = (min(vs) if stat == "best" else eb.statistics.median(vs)) if vs else None
            else:
                v = eb.summarize(cell["samples"], key, stat, hb)
            if "error" in cell:
                v = None
            vals[loop] = v
            row.append(fmt(v) if v is not None else "skipped")
        if has_tok:
            row += eb.ratio_cells(vals, active, hb)
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("'best peer' is the best of asyncio, uvloop and rloop for that row.")
    errs = [(lp, c) for lp, c in results.items() if "error" in c]
    if errs:
        lines += ["", "### Skipped", ""] + [f"- {lp}: {c['error']}" for lp, c in errs]
    print("\n".join(lines))
    for lp, c in errs:
        if c.get("stderr"):
            print(f"\n{lp} server stderr:\n  " + c["stderr"].strip().replace("\n", "\n  "),
                  file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": {"date": started.isoformat(), "platform": platform.platform(),
                                "cpu": eb.cpu_model(), "pinning": pin_desc,
                                "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                                "conns": args.conns, "duration": args.duration,
                                "warmup": args.warmup, "repeat": args.repeat, "stat": stat,
                                "versions": versions, "skipped": notes,
                                "aiohttp": aiohttp.__version__},
                       "results": results}, f, indent=2)
        print(f"\nraw results written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
