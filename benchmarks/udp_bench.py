"""UDP echo benchmark: asyncio, uvloop, rloop and tokioloop serving datagrams.

Each (loop, mode, size) cell starts a fresh echo server process pinned to one
CPU and drives it with ``loadgen client --udp 1`` (Rust, tokio; pinned to the
other CPU): N connected UDP sockets each send a datagram and wait for its
echo, closed loop.  Reported: datagrams/s (round trips) and the server's CPU
time per datagram (µs, /proc).  A plain tokio UDP echo server (``loadgen
udp-server``) is the floor.

Modes:
  protocol  create_datagram_endpoint + DatagramProtocol echoing with sendto()
  sock      loop.sock_recvfrom / loop.sock_sendto in a coroutine

uvloop (0.23) and rloop (0.5) implement create_datagram_endpoint but not
sock_recvfrom/sock_sendto (NotImplementedError): their sock cells are skipped.

``--callgrind``: instead, counts the server's instructions per datagram under
valgrind (robust to other load): the server runs under callgrind twice, for
N1 and N2 round trips of one socket paced at --cg-rate per second (so every
datagram finds the loop asleep and the count does not depend on timing), and
the difference of the totals divided by N2-N1 removes start-up costs.

A loop name ``tokioloop@PATH`` runs tokioloop imported from PATH (e.g. a copy
of an older build's package directory) for before/after comparisons.

    python benchmarks/udp_bench.py [--loops ...] [--modes protocol,sock]
           [--sizes 64,1024] [--repeat 2] [--duration 2] [--conns 10]
    python benchmarks/udp_bench.py --callgrind [--loops ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import child_env, get_loop_factory  # noqa: E402
from echo_bench import (  # noqa: E402
    LOADGEN_BIN,
    ServerProc,
    announce_port,
    ensure_loadgen,
    install_fatal_handler,
    pin_prefix,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ALL_LOOPS = ["asyncio", "uvloop", "rloop", "tokioloop"]
MODES = {"protocol": "DatagramProtocol", "sock": "sock_recvfrom/sock_sendto"}
NO_SOCK_OPS = {"rloop", "uvloop"}  # NotImplementedError for sock_recvfrom/sock_sendto


# ----------------------------------------------------------------- server


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.sendto = transport.sendto

    def datagram_received(self, data, addr):
        self.sendto(data, addr)


class CountingEcho(Echo):
    """Echo that stops the loop after `limit` datagrams (--callgrind runs)."""

    limit = 0
    done = None

    def datagram_received(self, data, addr):
        self.sendto(data, addr)
        self.limit -= 1
        if self.limit == 0:
            self.done.set_result(None)


async def serve(loop, mode, host, count):
    if mode == "protocol":
        done = loop.create_future()
        CountingEcho.limit, CountingEcho.done = count, done
        tr, _ = await loop.create_datagram_endpoint(CountingEcho if count else Echo, local_addr=(host, 0))
        announce_port(tr.get_extra_info("sockname")[1])
        await done
        tr.close()
        return
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((host, 0))
    announce_port(sock.getsockname()[1])
    recvfrom, sendto = loop.sock_recvfrom, loop.sock_sendto
    n = count or -1
    while n:
        data, addr = await recvfrom(sock, 65536)
        await sendto(sock, data, addr)
        n -= 1
    sock.close()


def server_main(loop_name, mode, host, count):
    loop = get_loop_factory(loop_name)()
    asyncio.set_event_loop(loop)
    install_fatal_handler(loop)
    loop.run_until_complete(serve(loop, mode, host, count))
    loop.close()


# ----------------------------------------------------------------- parent


def split_loop(spec):
    """'tokioloop@/path' -> ('tokioloop', '/path')."""
    name, _, path = spec.partition("@")
    return name, path or None


def server_cmd(spec, mode, host):
    name, _ = split_loop(spec)
    if name == "tokio":
        return [LOADGEN_BIN, "udp-server", "--host", host]
    return [sys.executable, os.path.abspath(__file__), "--server", name, "--mode", mode, "--host", host]


def child_env_for(spec):
    env = child_env()
    _, path = split_loop(spec)
    if path:
        env["PYTHONPATH"] = path + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cell(spec, mode, size, args):
    cmd = pin_prefix(args.server_cpu, args.no_pin) + server_cmd(spec, mode, args.host)
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(child_env_for(spec))
    try:
        srv = ServerProc(cmd)
    finally:
        os.environ.clear()
        os.environ.update(old)
    try:
        if srv.error:
            return {"error": srv.error}
        client = pin_prefix(args.client_cpu, args.no_pin) + [
            args.loadgen, "client", "--udp", "1", "--host", args.host, "--port", str(srv.port),
            "--conns", str(args.conns), "--size", str(size), "--warmup", str(args.warmup),
            "--duration", str(args.duration), "--server-pid", str(srv.pid),
        ]
        p = subprocess.run(client, capture_output=True, text=True, timeout=args.duration + 120)
        try:
            res = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"loadgen: {p.stderr.strip()[-300:]}"}
        dead = srv.alive_error()
        if dead:
            res["error"] = dead
        return res
    finally:
        srv.stop()


def callgrind_total(spec, mode, n, args):
    """Instructions (Ir) the server executes for `n` round trips (plus start-up)."""
    out = tempfile.mktemp(prefix="udp-bench-cg-")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    cmd += server_cmd(spec, mode, args.host) + ["--count", str(n)]
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(child_env_for(spec))
    try:
        srv = ServerProc(cmd, start_timeout=180)
    finally:
        os.environ.clear()
        os.environ.update(old)
    try:
        if srv.error:
            raise SystemExit(f"{spec}/{mode}: {srv.error}")
        client = [
            args.loadgen, "client", "--udp", "1", "--host", args.host, "--port", str(srv.port),
            "--conns", "1", "--size", "64", "--warmup", "0", "--requests", str(n), "--timeout", "300",
            "--rate", str(args.cg_rate),
        ]
        p = subprocess.run(client, capture_output=True, text=True, timeout=600)
        res = json.loads(p.stdout.strip().splitlines()[-1])
        if "error" in res:
            raise SystemExit(f"{spec}/{mode}: {res['error']}")
        srv.proc.wait(timeout=300)  # the server exits after n datagrams
    finally:
        srv.stop()
    for _ in range(100):
        if os.path.exists(out) and os.path.getsize(out) > 0:
            break
        time.sleep(0.1)
    with open(out) as f:
        text = f.read()
    os.unlink(out)
    m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
    if not m:
        raise SystemExit(f"{spec}/{mode}: no totals in the callgrind output")
    return int(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="protocol", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--loops", default=",".join(ALL_LOOPS + ["tokio"]))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--sizes", default="64,1024")
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--loadgen", default=LOADGEN_BIN)
    ap.add_argument("--callgrind", action="store_true")
    ap.add_argument("--n1", type=int, default=2000)
    ap.add_argument("--n2", type=int, default=6000)
    ap.add_argument("--cg-rate", type=float, default=400.0)
    args = ap.parse_args()
    if args.server:
        server_main(args.server, args.mode, args.host, args.count)
        return 0
    args.loadgen = ensure_loadgen(args.loadgen)
    loops = [s for s in args.loops.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    if args.callgrind:
        print("| loop | mode | instructions per datagram (callgrind, server process) |")
        print("|---|---|---:|")
        for spec in loops:
            for mode in modes:
                if split_loop(spec)[0] == "tokio" and mode != "protocol":
                    continue
                if split_loop(spec)[0] in NO_SOCK_OPS and mode == "sock":
                    continue
                a = callgrind_total(spec, mode, args.n1, args)
                b = callgrind_total(spec, mode, args.n2, args)
                per = (b - a) / (args.n2 - args.n1)
                print(f"| {spec} | {MODES[mode]} | {per:,.0f} |", flush=True)
        return 0
    sizes = [int(s) for s in args.sizes.split(",") if s]
    print(f"# UDP echo, {args.conns} sockets, best of {args.repeat}, {args.duration}s windows, "
          f"server CPU {args.server_cpu}, loadgen CPU {args.client_cpu}", flush=True)
    print("| size | mode | loop | datagrams/s | server CPU µs/datagram | lost |")
    print("|---|---|---|---:|---:|---:|")
    for size in sizes:
        for mode in modes:
            for spec in loops:
                name = split_loop(spec)[0]
                if name == "tokio" and mode != "protocol":
                    continue
                if name in NO_SOCK_OPS and mode == "sock":
                    print(f"| {size} | {MODES[mode]} | {spec} | n/a (NotImplementedError) | | |", flush=True)
                    continue
                best = None
                for _ in range(args.repeat):
                    r = run_cell(spec, mode, size, args)
                    if "error" in r:
                        best = r
                        break
                    if best is None or r["rps"] > best["rps"]:
                        best = r
                if "error" in best:
                    print(f"| {size} | {MODES[mode]} | {spec} | error: {best['error']} | | |", flush=True)
                    continue
                cpu = best.get("server_sched_cpu_us_per_req") or best.get("server_cpu_us_per_req")
                label = "plain tokio" if name == "tokio" else spec
                print(f"| {size} | {MODES[mode] if name != 'tokio' else 'recv_from/send_to'} | {label} | "
                      f"{best['rps']:,.0f} | {cpu:.2f} | {best.get('lost', 0)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
