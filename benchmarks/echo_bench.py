#!/usr/bin/env python3
"""TCP echo-server benchmark: asyncio vs uvloop vs rloop vs tokioloop (+ plain tokio).

A Python echo server runs in its own process pinned to one CPU (``taskset -c
1`` by default) on a loopback port, in one of four modes:

  sock      loop.sock_accept + loop.sock_recv + loop.sock_sendall
  streams   asyncio.start_server; reader.read + writer.write + await writer.drain()
  protocol  asyncio.Protocol: data_received -> transport.write
  buffered  asyncio.BufferedProtocol: get_buffer/buffer_updated -> transport.write

Reads ask for up to 256 KiB (the stdlib transports' read size); TCP_NODELAY
is on for every accepted socket.  The load comes from ``loadgen`` (Rust,
tokio, benchmarks/loadgen/, built with cargo on first use) pinned to the other
CPU (``taskset -c 0``): ``--conns`` connections each doing request/response
round trips of one message size (write the message, read the whole echo
back) for a warm-up and then a measured window.  loadgen also reads the
server's utime+stime from /proc/<pid>/stat at both edges of the window
(``server CPU per request`` = delta / requests) and its own CPU use, so a
saturated load generator shows (``client_util`` in the JSON).  The same crate's
plain tokio echo server (current-thread runtime, one 256 KiB buffer per
connection, read -> write_all) is the reference point, measured in every row.

Each table row (size, mode) is measured in ``--repeat`` rounds; a round
runs every server of the row once (plain tokio, then each loop), each in a
fresh server process with its own loadgen warm-up, so bursts of other load on
a shared machine hit all of them alike (``--no-interleave``: one server
process per cell running all its repeats, cell after cell).  The tables show the best (max req/s, min CPU/req) or, with
``--stat median``, the median of the repeats.  A loop or mode that fails
(missing API, crash, stall) is skipped with a note rather than aborting the run.

Priming: before it is measured, every fresh server process serves one short
throwaway loadgen run whose connections then close, as a long-running server
would have.  This matters: a loop whose reads allocate a new 256 KiB bytes
object (``sock.recv(262144)``: asyncio's transports, sock_recv) makes glibc
mmap/mremap/munmap that buffer on every read until the first EOF read frees
a whole 256 KiB buffer, which raises glibc's dynamic mmap threshold; in that
cold state asyncio's Protocol server costs ~3x the CPU per request.
``--no-prime`` measures the cold state.

Reading the numbers:

* By default the load is a closed loop (each connection sends its next
  request as soon as the echo is back), so req/s is the most the pair can do.
  loadgen does one send and one receive per request, the same kernel work as
  the server, so it is only a little cheaper per request than the fastest
  servers (its CPU/request is printed): server CPU/request is the sharper
  comparison.  Note that CPU/request falls as a server gets busier (more
  requests per wake-up), so compare it between cells with similar load.
* ``--rate R`` paces the load to R round trips/s in total, the same offered
  load for every server: CPU/request at equal load (pick R below the slowest
  server's capacity; cells that fell short are marked *).
* The header reports how much of the two pinned CPUs other processes used
  during the measured windows (from /proc/stat); on a shared machine that
  moves req/s a lot and CPU/request somewhat.

Needs: Linux (/proc), taskset (util-linux), cargo (to build loadgen once),
uvloop and rloop in the venv for those columns.

Examples::

    /work/venv/bin/python benchmarks/echo_bench.py
    /work/venv/bin/python benchmarks/echo_bench.py --quick
    /work/venv/bin/python benchmarks/echo_bench.py --rate 10000 --cpu-source sched
    /work/venv/bin/python benchmarks/echo_bench.py --loops asyncio,uvloop \\
        --modes protocol,buffered --sizes 1k,100k --repeat 5 --stat median \\
        --json echo.json

The loadgen alone::

    cargo build --release --manifest-path benchmarks/loadgen/Cargo.toml
    taskset -c 1 benchmarks/loadgen/target/release/loadgen server &    # prints PORT n
    taskset -c 0 benchmarks/loadgen/target/release/loadgen client --port N \\
        --size 1024 --conns 10 --duration 3 --server-pid PID     # JSON on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback

from _harness import child_env, cpu_model, get_loop_factory, parse_list
from _harness import loop_version as _loop_version

HERE = os.path.dirname(os.path.abspath(__file__))
LOADGEN_DIR = os.path.join(HERE, "loadgen")
LOADGEN_BIN = os.path.join(LOADGEN_DIR, "target", "release", "loadgen")

ALL_LOOPS = ["asyncio", "uvloop", "rloop", "tokioloop", "tokioloop+nested", "tokioloop@base"]
# Opt-in (--loops ...,tokioloop+nested): tokioloop's fallback wait, for an A/B
# of the two ways the loop parks (src/driver.rs).
DEFAULT_LOOPS = ["asyncio", "uvloop", "rloop", "tokioloop"]
PEERS = ["asyncio", "uvloop", "rloop"]
ALL_MODES = ["sock", "streams", "protocol", "buffered"]
MODE_LABELS = {
    "sock": "sock_recv/sock_sendall",
    "streams": "streams (read/write/drain)",
    "protocol": "Protocol",
    "buffered": "BufferedProtocol",
}
ALL_SIZES = [1024, 10 * 1024, 100 * 1024]
READ_SIZE = 256 * 1024
PORT_MARK = "PORT "


# --------------------------------------------------------------------------
# loops (shared with aiohttp_bench.py)


def loop_version(name):
    return _loop_version(name, build_time=True)


def install_fatal_handler(loop):
    """Make unexpected errors inside the server loud: print and exit(3).

    Connection resets at shutdown are not errors.
    """

    def handler(loop, context):
        exc = context.get("exception")
        if isinstance(exc, (ConnectionError, BrokenPipeError)):
            return
        msg = context.get("message", "")
        print(f"server loop error: {msg}: {exc!r}", file=sys.stderr, flush=True)
        if exc is not None:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)

    loop.set_exception_handler(handler)


def announce_port(port):
    print(f"{PORT_MARK}{port}", flush=True)


# --------------------------------------------------------------------------
# echo servers (child process)


async def serve_sock(loop, host):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, 0))
    lsock.listen(512)
    lsock.setblocking(False)

    async def handle(conn):
        recv, sendall = loop.sock_recv, loop.sock_sendall
        try:
            while True:
                data = await recv(conn, READ_SIZE)
                if not data:
                    break
                await sendall(conn, data)
        except ConnectionError:
            pass
        finally:
            conn.close()

    announce_port(lsock.getsockname()[1])
    tasks = set()
    while True:
        conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = loop.create_task(handle(conn))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


async def serve_streams(loop, host):
    async def handle(reader, writer):
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        read, write, drain = reader.read, writer.write, writer.drain
        try:
            while True:
                data = await read(READ_SIZE)
                if not data:
                    break
                write(data)
                await drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, 0, backlog=512)
    announce_port(server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.write = transport.write

    def data_received(self, data):
        self.write(data)

    def connection_lost(self, exc):
        self.transport = self.write = None


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    """As uvloop's echoserver.py: one 256 KiB bytearray per connection; the
    echo writes a copy (``buf[:n]``) so the next read cannot change queued data."""

    def connection_made(self, transport):
        self.transport = transport
        self.write = transport.write
        self.buffer = bytearray(READ_SIZE)

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        self.write(self.buffer[:nbytes])

    def connection_lost(self, exc):
        self.transport = self.write = None


async def serve_protocol(loop, host, factory):
    server = await loop.create_server(factory, host, 0, backlog=512)
    announce_port(server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


def server_main(args):
    """Child: run one echo server until killed."""
    try:
        factory = get_loop_factory(args.server_loop)
        loop = factory()
        asyncio.set_event_loop(loop)
        install_fatal_handler(loop)
        host = args.host
        if args.server_mode == "sock":
            coro = serve_sock(loop, host)
        elif args.server_mode == "streams":
            coro = serve_streams(loop, host)
        elif args.server_mode == "protocol":
            coro = serve_protocol(loop, host, EchoProtocol)
        elif args.server_mode == "buffered":
            coro = serve_protocol(loop, host, EchoBufferedProtocol)
        else:
            raise ValueError(f"unknown mode {args.server_mode!r}")
        loop.run_until_complete(coro)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(2)
    return 0


# --------------------------------------------------------------------------
# parent helpers (shared with aiohttp_bench.py)


def pin_prefix(cpu, no_pin):
    """Command prefix pinning a child to `cpu` (or nothing)."""
    if no_pin or cpu is None:
        return []
    if shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def pinning_desc(server_cpu, client_cpu, no_pin):
    if no_pin:
        return "none (--no-pin)"
    avail = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not shutil.which("taskset"):
        return "none (taskset not found)"
    bad = [c for c in (server_cpu, client_cpu) if avail and c not in avail]
    note = f" (WARNING: CPU(s) {bad} not in this process's affinity {avail})" if bad else ""
    return f"server taskset -c {server_cpu}, load generator taskset -c {client_cpu}{note}"


def probe_loop(loop, timeout=60):
    """Create and close a loop in a subprocess; return (version, error)."""
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import echo_bench as b\n"
        "f = b.get_loop_factory(%r); l = f(); l.close()\n"
        "print(b.loop_version(%r))\n" % (HERE, loop, loop)
    )
    try:
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=timeout, env=child_env())
    except subprocess.TimeoutExpired:
        return None, "probe timed out"
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"cannot create a loop: {last}"
    return p.stdout.strip().splitlines()[-1], None


class ServerProc:
    """A server child that prints ``PORT n`` on stdout once listening."""

    def __init__(self, cmd, start_timeout=30.0):
        self.cmd = cmd
        self.errfile = open(_tmpfile("srv-err"), "w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.errfile,
                                     stdin=subprocess.DEVNULL, text=True, env=child_env())
        self.port = None
        self.error = None
        deadline = time.monotonic() + start_timeout
        buf = ""
        fd = self.proc.stdout.fileno()
        while self.port is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.error = f"server did not report its port within {start_timeout:.0f}s"
                break
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if r:
                chunk = os.read(fd, 4096).decode(errors="replace")
                if not chunk:
                    self.error = self._exit_error("server exited before listening")
                    break
                buf += chunk
                for line in buf.splitlines():
                    if line.startswith(PORT_MARK):
                        self.port = int(line[len(PORT_MARK):].strip())
            elif self.proc.poll() is not None:
                self.error = self._exit_error("server exited before listening")
                break

    @property
    def pid(self):
        return self.proc.pid

    def stderr_tail(self, n=2500):
        try:
            self.errfile.flush()
            self.errfile.seek(0)
            return self.errfile.read()[-n:]
        except (OSError, ValueError):
            return ""

    def _exit_error(self, what):
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        tail = self.stderr_tail().strip()
        last = tail.splitlines()[-1] if tail else ""
        return f"{what} (exit status {rc}){': ' + last if last else ''}"

    def alive_error(self):
        """None if the server still runs, else why it is gone."""
        if self.proc.poll() is None:
            return None
        return self._exit_error("server died")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            self.proc.stdout.close()
        except OSError:
            pass
        self.errfile.close()
        try:
            os.unlink(self.errfile.name)
        except OSError:
            pass


_tmp_counter = [0]


def _tmpfile(tag):
    import tempfile

    _tmp_counter[0] += 1
    fd, path = tempfile.mkstemp(prefix=f"echo-bench-{tag}-{os.getpid()}-{_tmp_counter[0]}-")
    os.close(fd)
    return path


def read_proc_cpu(pid):
    """(utime+stime seconds from /proc/<pid>/stat, sum of task schedstat seconds)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        fields = s[s.rfind(")") + 2:].split()
        tck = os.sysconf("SC_CLK_TCK")
        stat = (int(fields[11]) + int(fields[12])) / tck
    except (OSError, ValueError, IndexError):
        return None, None
    sched = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    sched += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        return stat, None
    return stat, sched / 1e9


def cpus_busy():
    """Per-CPU user+nice+system seconds from /proc/stat (irq/softirq/idle excluded)."""
    out = {}
    try:
        tck = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            for line in f:
                name, *vals = line.split()
                if name.startswith("cpu") and name[3:].isdigit():
                    out[int(name[3:])] = sum(int(v) for v in vals[:3]) / tck
    except (OSError, ValueError):
        pass
    return out


def ensure_loadgen(path, rebuild=False):
    if path != LOADGEN_BIN:
        if not os.access(path, os.X_OK):
            raise SystemExit(f"loadgen binary {path} not found")
        return path
    if rebuild or not os.access(path, os.X_OK):
        cargo = shutil.which("cargo")
        if cargo is None:
            raise SystemExit("loadgen is not built and cargo is not on PATH "
                             f"(cargo build --release --manifest-path {LOADGEN_DIR}/Cargo.toml)")
        print("building loadgen (cargo build --release) ...", file=sys.stderr, flush=True)
        subprocess.run([cargo, "build", "--release", "--quiet", "--manifest-path",
                        os.path.join(LOADGEN_DIR, "Cargo.toml")], check=True)
    return path


def fmt_num(x):
    if x is None:
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            v = x / div
            return f"{v:.3g}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return f"{x:.3g}"


def fmt_us(x):
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_size(n):
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


def parse_size(s):
    s = s.strip().lower().replace("ib", "").replace("b", "")
    mult = 1
    if s.endswith("k"):
        mult, s = 1024, s[:-1]
    elif s.endswith("m"):
        mult, s = 1024 * 1024, s[:-1]
    return int(float(s) * mult)


def summarize(samples, key, stat, higher_better):
    vals = [s[key] for s in samples if s.get(key) is not None]
    if not vals:
        return None
    if stat == "median":
        return statistics.median(vals)
    return max(vals) if higher_better else min(vals)


def ratio_cells(row_vals, loops, higher_better, extra_ref=None):
    """tokioloop / uvloop and tokioloop / best peer for one table row."""
    tok = row_vals.get("tokioloop")
    out = []
    uv = row_vals.get("uvloop")
    out.append(f"{tok / uv:.2f}" if tok and uv else "n/a")
    peers = [(row_vals[lp], lp) for lp in PEERS if lp in loops and row_vals.get(lp)]
    if tok and peers:
        best = max(peers) if higher_better else min(peers)
        out.append(f"{tok / best[0]:.2f} ({best[1]})")
    else:
        out.append("n/a")
    if extra_ref is not None:
        out.append(f"{tok / extra_ref:.2f}" if tok and extra_ref else "n/a")
    return out


def header_lines(title, started, load_start, pin_desc, versions, notes, extra):
    lines = [f"## {title}", ""]
    lines.append(f"- date: {started.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    lines.append(f"- Python: {platform.python_implementation()} {platform.python_version()} "
                 f"({sys.executable})")
    lines.append(f"- platform: {platform.platform()}; CPU: {cpu_model()} "
                 f"({os.cpu_count()} logical CPUs)")
    lines.append(f"- CPU pinning: {pin_desc}")
    if load_start is not None:
        load_end = os.getloadavg()
        lines.append(f"- load average (1/5/15 min) at start: "
                     f"{' / '.join(f'{x:.2f}' for x in load_start)}; at end: "
                     f"{' / '.join(f'{x:.2f}' for x in load_end)} "
                     "(other load on the pinned CPUs skews results)")
    lines.append("- loops: " + ", ".join(f"{lp} {v}" for lp, v in versions.items()))
    lines.extend(f"- {x}" for x in extra)
    lines.extend(f"- {n}" for n in notes)
    lines.append("")
    return lines


# --------------------------------------------------------------------------
# parent


def run_loadgen(args, port, pid, size, prime=False):
    cmd = [*pin_prefix(args.client_cpu, args.no_pin), args.loadgen, "client",
           "--host", args.host, "--port", str(port), "--conns", str(args.conns),
           "--size", str(size), "--server-pid", str(pid),
           "--timeout", str(args.stall_timeout)]
    if prime:
        cmd += ["--warmup", "0.05", "--duration", "0.1"]
    else:
        cmd += ["--warmup", str(args.warmup), "--duration", str(args.duration)]
        if args.requests:
            cmd += ["--requests", str(args.requests)]
        if args.rate:
            cmd += ["--rate", str(args.rate)]
    limit = args.warmup + args.duration + args.stall_timeout + 30
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"error": f"loadgen did not finish within {limit:.0f}s"}
    try:
        res = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": f"loadgen exit {p.returncode}, no JSON: {p.stderr.strip()[-500:]}"}
    return res


def run_cell(args, server_cmd, size, repeat):
    """Start one server, run loadgen `repeat` times, stop it."""
    srv = ServerProc(server_cmd, start_timeout=args.start_timeout)
    out = {"samples": []}
    try:
        if srv.error:
            out["error"] = srv.error
            out["stderr"] = srv.stderr_tail()
            return out
        if not args.no_prime:
            # A throwaway run whose connections close, as a long-running
            # server would have seen (see "Priming" in the module docstring).
            res = run_loadgen(args, srv.port, srv.pid, size, prime=True)
            dead = srv.alive_error()
            if "error" in res or dead:
                out["error"] = dead or ("priming run: " + res["error"])
                out["stderr"] = srv.stderr_tail()
                return out
        for _ in range(repeat):
            res = run_loadgen(args, srv.port, srv.pid, size)
            dead = srv.alive_error()
            if "error" in res or dead:
                out["error"] = dead or res["error"]
                out["stderr"] = srv.stderr_tail()
                break
            annotate_other_load(res, args)
            out["samples"].append(res)
    finally:
        srv.stop()
    return out


def annotate_other_load(res, args):
    """Add other_load_server_cpu / other_load_client_cpu: the share of each
    pinned CPU used (user+nice+system) by processes other than the server and
    the load generator during the measured window."""
    busy = res.get("cpu_busy") or []
    if args.no_pin:
        return
    for tag, cpu, own in (("server", args.server_cpu, res.get("server_util")),
                          ("client", args.client_cpu, res.get("client_util"))):
        if cpu is not None and cpu < len(busy) and own is not None:
            res[f"other_load_{tag}_cpu"] = round(max(0.0, busy[cpu] - own), 3)


def other_load_line(samples, server_cpu, client_cpu, what="load generator"):
    """Header line summarizing other processes' CPU use during measured windows."""
    parts = []
    for tag, cpu, name in (("server", server_cpu, "server"), ("client", client_cpu, what)):
        vals = [x[f"other_load_{tag}_cpu"] for x in samples if f"other_load_{tag}_cpu" in x]
        if vals:
            parts.append(f"CPU {cpu} ({name}): median {statistics.median(vals):.0%}, "
                         f"max {max(vals):.0%}")
    if not parts:
        return None
    return ("other processes' CPU use on the pinned CPUs during the measured windows "
            "(from /proc/stat, user+nice+system minus the server's and the load's own): "
            + "; ".join(parts) + " (0% = quiet machine; more skews req/s first)")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="modes:\n" + "\n".join(f"  {m:9s} {MODE_LABELS[m]}" for m in ALL_MODES),
    )
    ap.add_argument("--loops", default=",".join(DEFAULT_LOOPS),
                    help="comma-separated loops (default: %(default)s)")
    ap.add_argument("--modes", default=",".join(ALL_MODES),
                    help="comma-separated server modes (default: %(default)s)")
    ap.add_argument("--sizes", default="1k,10k,100k",
                    help="comma-separated message sizes, k = KiB (default: %(default)s)")
    ap.add_argument("--no-tokio", action="store_true",
                    help="skip the plain tokio reference server")
    ap.add_argument("--conns", type=int, default=10,
                    help="concurrent connections (default: 10)")
    ap.add_argument("--duration", type=float, default=None,
                    help="measured window per run in s (default: 3, 1 with --quick)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="warm-up per run in s, not measured (default: 0.5, 0.25 with --quick)")
    ap.add_argument("--requests", type=int, default=None,
                    help="end each measured window after this many round trips instead of "
                         "--duration")
    ap.add_argument("--rate", type=float, default=None,
                    help="pace the load to this many round trips/s in total (fixed offered "
                         "load; compares CPU/request at equal load) instead of the default "
                         "closed loop (each connection sends again as soon as the echo is back)")
    ap.add_argument("--cpu-source", choices=("stat", "sched"), default="stat",
                    help="server CPU from /proc/<pid>/stat utime+stime (clock ticks, default) "
                         "or from /proc/<pid>/task/*/schedstat (ns; better for short or "
                         "lightly loaded windows)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="loadgen runs per cell (default: 3, 2 with --quick)")
    ap.add_argument("--no-prime", action="store_true",
                    help="skip the throwaway run that every fresh server gets before it is "
                         "measured (see Priming above)")
    ap.add_argument("--no-interleave", action="store_true",
                    help="run all repeats of a cell on one server process, cell after cell "
                         "(default: rounds over all servers of a row, fresh process per run)")
    ap.add_argument("--stat", choices=("best", "median"), default="best",
                    help="best = max req/s and min CPU/req over the repeats (default); "
                         "median = medians")
    ap.add_argument("--quick", action="store_true",
                    help="1 s windows, 2 repeats: a smoke run")
    ap.add_argument("--server-cpu", type=int, default=1, help="CPU for servers (default: 1)")
    ap.add_argument("--client-cpu", type=int, default=0,
                    help="CPU for the load generator (default: 0)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin anything")
    ap.add_argument("--host", default="127.0.0.1", help="loopback address (default: 127.0.0.1)")
    ap.add_argument("--loadgen", default=LOADGEN_BIN, help="loadgen binary (default: built "
                    "from benchmarks/loadgen with cargo if missing)")
    ap.add_argument("--rebuild", action="store_true", help="cargo build loadgen even if present")
    ap.add_argument("--start-timeout", type=float, default=30.0,
                    help="seconds a server may take to listen (default: 30)")
    ap.add_argument("--stall-timeout", type=float, default=20.0,
                    help="extra seconds before a stalled run is abandoned (default: 20)")
    ap.add_argument("--json", metavar="PATH", help="write raw results as JSON")
    # server mode (internal)
    ap.add_argument("--server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--server-loop", help=argparse.SUPPRESS)
    ap.add_argument("--server-mode", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.server:
        return server_main(args)
    # SIGTERM unwinds like Ctrl-C, so running servers are stopped.
    signal.signal(signal.SIGTERM, _raise_interrupt)

    if args.duration is None:
        args.duration = 1.0 if args.quick else 3.0
    if args.warmup is None:
        args.warmup = 0.25 if args.quick else 0.5
    if args.repeat is None:
        args.repeat = 2 if args.quick else 3
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    loops = parse_list(args.loops, ALL_LOOPS, "loop")
    modes = parse_list(args.modes, ALL_MODES, "mode")
    modes = [m for m in ALL_MODES if m in modes]  # canonical row order
    try:
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"bad --sizes {args.sizes!r}")
    args.loadgen = ensure_loadgen(os.path.abspath(args.loadgen), args.rebuild)
    pin_desc = pinning_desc(args.server_cpu, args.client_cpu, args.no_pin)
    srv_prefix = pin_prefix(args.server_cpu, args.no_pin)

    versions, notes = {}, []
    for loop in loops:
        v, err = probe_loop(loop)
        if err:
            notes.append(f"skipped {loop}: {err}")
        else:
            versions[loop] = v
    active = [lp for lp in ALL_LOOPS if lp in versions]
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if not active:
        raise SystemExit("no loop available")

    cpu_key = ("server_cpu_us_per_req" if args.cpu_source == "stat"
               else "server_sched_cpu_us_per_req")
    started = datetime.datetime.now().astimezone()
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = {}  # size -> {"tokio": cell, mode: {loop: cell}}
    script = os.path.abspath(__file__)

    def report(tag, cell, wall):
        s = cell["samples"]
        if s:
            rps = summarize(s, "rps", args.stat, True)
            cpu = summarize(s, cpu_key, args.stat, False)
            cu = max(x["client_util"] for x in s)
            su = max((x["server_util"] or 0) for x in s)
            ol = max((x.get("other_load_server_cpu") or 0) for x in s)
            lc = min(x.get("client_cpu_us_per_req") or 0 for x in s)
            msg = (f"{fmt_num(rps)} req/s, {fmt_us(cpu)} us CPU/req "
                   f"(server util {su:.2f}, loadgen util {cu:.2f} at {fmt_us(lc)} us/req, "
                   f"other load on server CPU {ol:.2f})")
        else:
            msg = "-"
        if "error" in cell:
            msg += f"  ERROR {cell['error']}"
        print(f"  {tag:46s} {msg}  ({wall:.1f}s)", file=sys.stderr, flush=True)

    tokio_cmd = [*srv_prefix, args.loadgen, "server", "--host", args.host]
    for size in sizes:
        results[size] = {}
        for mode in modes:
            servers = [] if args.no_tokio else [("tokio", tokio_cmd)]
            servers += [(loop, [*srv_prefix, sys.executable, script, "--server", "--server-loop",
                                loop, "--server-mode", mode, "--host", args.host])
                        for loop in active]
            cells = {name: {"samples": []} for name, _ in servers}
            walls = dict.fromkeys(cells, 0.0)
            # Interleaved (default): round r runs every server once, each in a
            # fresh process, so a burst of other load hits all of them alike.
            rounds, per_round = ((args.repeat, 1) if not args.no_interleave
                                 else (1, args.repeat))
            for rnd in range(rounds):
                for name, cmd in servers:
                    cell = cells[name]
                    if "error" in cell:
                        continue
                    t0 = time.perf_counter()
                    got = run_cell(args, cmd, size, per_round)
                    walls[name] += time.perf_counter() - t0
                    for sample in got["samples"]:
                        sample["round"] = rnd
                    cell["samples"] += got["samples"]
                    if "error" in got:
                        cell["error"] = got["error"]
                        cell["stderr"] = got.get("stderr", "")
            for name, _ in servers:
                tag = f"{mode:9s} " + ("plain tokio (Rust)" if name == "tokio" else name)
                report(f"{fmt_size(size):>7s} {tag}", cells[name], walls[name])
            results[size][mode] = cells

    # ---------------------------------------------------------------- report
    stat = args.stat
    errors = []
    all_samples = [x for size in sizes for m in modes
                   for cell in results[size][m].values() for x in cell["samples"]]
    other = other_load_line(all_samples, args.server_cpu, args.client_cpu)
    lg_cost = []
    for size in sizes:
        vals = [x["client_cpu_us_per_req"] for x in all_samples
                if x.get("size") == size and x.get("client_cpu_us_per_req")]
        if vals:
            lg_cost.append(f"{fmt_size(size)} {fmt_us(min(vals))}-{fmt_us(max(vals))} µs")
    if lg_cost:
        other = (other + "\n- " if other else "") + (
            "load generator's own CPU per request (one CPU; it does one send and one receive "
            "per request, like the server, so its kernel cost equals a server's): "
            + ", ".join(lg_cost) + "; a server with about that CPU/request can be capped "
            "by the load generator in req/s, so CPU/request is the sharper comparison")
    lines = header_lines(
        "tokioloop echo-server benchmark", started, load_start, pin_desc, versions, notes,
        [f"load: loadgen (Rust, tokio current-thread), {args.conns} connections, each a "
         f"request/response loop of one message size; "
         + (f"paced to {args.rate:g} round trips/s in total (fixed offered load; cells that "
            "fell short of 95% of it are marked *), " if args.rate else
            "closed loop (next request as soon as the echo is back), ")
         + (f"{args.requests} round trips" if args.requests else f"{args.duration:g} s")
         + f" measured after {args.warmup:g} s warm-up; {args.repeat} run(s) per cell"
         + (", all on one server process per cell" if args.no_interleave else
            ", interleaved (round after round over every server of a row, a fresh server "
            "process per run; plain tokio is measured in every row)")
         + ("" if args.no_prime else
            "; each fresh server first gets a throwaway run whose connections close "
            "(priming)")
         + f"; showing **{stat}**"
         + (" (--quick)" if args.quick else ""),
         ("server CPU/request = (utime+stime of the server process over the measured window, "
          "from /proc/<pid>/stat) / requests, in microseconds" if args.cpu_source == "stat" else
          "server CPU/request = (run time of all server threads over the measured window, from "
          "/proc/<pid>/task/*/schedstat) / requests, in microseconds")]
        + ([other] if other else []),
    )

    has_tok = "tokioloop" in active
    has_ref = not args.no_tokio

    def short(cell):
        """'*' when a paced run did not reach 95% of the target rate."""
        if not args.rate or not cell or not cell["samples"]:
            return ""
        got = max(x["rps"] for x in cell["samples"])
        return "*" if got < 0.95 * args.rate else ""

    def table(metric, key, higher_better, fmt):
        head = ["size", "mode", *active]
        if has_ref:
            head.append("plain tokio")
        if has_tok:
            word = "higher = faster" if higher_better else "lower = cheaper"
            head.append(f"tokioloop / uvloop ({word})")
            head.append(f"tokioloop / best peer ({word})")
            if has_ref and not higher_better:
                head.append("tokioloop / plain tokio (goal for Protocol: <= 1.10)")
        out = [f"### {metric}", "", "| " + " | ".join(head) + " |",
               "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
        for size in sizes:
            for mode in modes:
                ref_cell = results[size][mode].get("tokio")
                ref = (summarize(ref_cell["samples"], key, stat, higher_better)
                       if ref_cell and "error" not in ref_cell else None)
                vals = {}
                row = [fmt_size(size), MODE_LABELS[mode]]
                for loop in active:
                    cell = results[size][mode][loop]
                    v = summarize(cell["samples"], key, stat, higher_better)
                    if "error" in cell:
                        v = None
                    vals[loop] = v
                    row.append(fmt(v) + short(cell) if v is not None else "skipped")
                if has_ref:
                    row.append(fmt(ref) + short(ref_cell) if ref is not None else "error")
                if has_tok:
                    row.extend(ratio_cells(vals, active, higher_better,
                                           extra_ref=ref if (has_ref and not higher_better)
                                           else None))
                out.append("| " + " | ".join(row) + " |")
        out.append("")
        return out

    lines += table("Requests per second (higher is better)", "rps", True, fmt_num)
    lines += table("Server CPU time per request, µs (lower is better)", cpu_key, False, fmt_us)

    def paired_table():
        """Median over rounds of tokioloop's CPU/request divided by another
        server's in the SAME round. The host's slow and fast phases last tens
        of seconds and hit every server of a round alike, so a same-round
        ratio cancels them where a ratio of two medians does not."""
        others = [lp for lp in active if lp != "tokioloop"] + (["tokio"] if has_ref else [])
        head = ["size", "mode"] + [
            "plain tokio" if o == "tokio" else o for o in others] + ["best peer"]
        out = ["### Server CPU per request, paired: tokioloop / other, median of same-round "
               "ratios (lower = tokioloop cheaper)", "",
               "| " + " | ".join(head) + " |",
               "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]

        def by_round(cell):
            if not cell or "error" in cell:
                return {}
            return {x["round"]: x[cpu_key] for x in cell["samples"]
                    if x.get("round") is not None and x.get(cpu_key)}

        for size in sizes:
            for mode in modes:
                tok = by_round(results[size][mode].get("tokioloop"))
                row = [fmt_size(size), MODE_LABELS[mode]]
                for o in others:
                    oth = by_round(results[size][mode].get(o))
                    ratios = [tok[r] / oth[r] for r in tok if r in oth]
                    row.append(f"{statistics.median(ratios):.2f} (n={len(ratios)})"
                               if ratios else "n/a")
                peers = [by_round(results[size][mode].get(p)) for p in PEERS if p in active]
                ratios = [tok[r] / min(p[r] for p in peers) for r in tok
                          if peers and all(r in p for p in peers)]
                row.append(f"{statistics.median(ratios):.2f}" if ratios else "n/a")
                out.append("| " + " | ".join(row) + " |")
        out.append("")
        return out

    def split_table():
        """Median user and system (kernel) CPU per request of each server, from
        utime and stime: a gap between two servers shows on one side or the
        other (the kernel's share includes the loopback delivery a send does
        for the receiving side)."""
        names = [lp for lp in active] + (["tokio"] if has_ref else [])
        head = ["size", "mode"] + ["plain tokio" if n == "tokio" else n for n in names]
        out = ["### Server CPU per request split, µs: user + system (median of runs; "
               "from utime/stime in clock ticks)", "",
               "| " + " | ".join(head) + " |",
               "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
        any_split = False
        for size in sizes:
            for mode in modes:
                row = [fmt_size(size), MODE_LABELS[mode]]
                for n in names:
                    cell = results[size][mode].get(n)
                    pairs = [((x["server_cpu_s"] - x["server_sys_cpu_s"]) * 1e6 / x["requests"],
                              x["server_sys_cpu_s"] * 1e6 / x["requests"])
                             for x in (cell or {}).get("samples", [])
                             if x.get("server_sys_cpu_s") is not None and x.get("requests")]
                    if pairs:
                        any_split = True
                        row.append(f"{statistics.median(u for u, _ in pairs):.2f} + "
                                   f"{statistics.median(k for _, k in pairs):.2f}")
                    else:
                        row.append("n/a")
                out.append("| " + " | ".join(row) + " |")
        out.append("")
        return out if any_split else []

    if has_tok:
        lines.append("Ratios are tokioloop's value divided by the other's: for req/s > 1 means "
                     "tokioloop is faster; for CPU/request < 1 means tokioloop uses less CPU. "
                     "'best peer' is the best of asyncio, uvloop and rloop for that row.")
        if not args.no_interleave:
            lines.append("")
            lines += paired_table()
    lines += split_table()

    for size in sizes:
        for mode in modes:
            for name, cell in results[size][mode].items():
                if "error" in cell:
                    who = "plain tokio" if name == "tokio" else name
                    errors.append((f"{fmt_size(size)} {mode} / {who}", cell))
    if errors:
        lines.append("")
        lines.append("### Skipped cells")
        lines.append("")
        for tag, cell in errors:
            lines.append(f"- {tag}: {cell['error']}")
    print("\n".join(lines))
    for tag, cell in errors:
        if cell.get("stderr"):
            print(f"\n{tag} server stderr:\n  " + cell["stderr"].strip().replace("\n", "\n  "),
                  file=sys.stderr)

    if args.json:
        payload = {
            "meta": {
                "date": started.isoformat(),
                "python": sys.version,
                "platform": platform.platform(),
                "cpu": cpu_model(),
                "pinning": pin_desc,
                "loadavg_start": load_start,
                "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
                "conns": args.conns,
                "duration": args.duration,
                "warmup": args.warmup,
                "requests": args.requests,
                "rate": args.rate,
                "cpu_source": args.cpu_source,
                "repeat": args.repeat,
                "stat": stat,
                "interleave": not args.no_interleave,
                "prime": not args.no_prime,
                "versions": versions,
                "skipped": notes,
            },
            "results": {
                str(size): {
                    k: v for k, v in results[size].items()
                }
                for size in sizes
            },
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"\nraw results written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
