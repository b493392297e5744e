"""Leaks and long runs: after large workloads, memory, fds, epoll registrations
and Python objects come back to where they were.

Each workload runs in a fresh interpreter (a clean baseline):

    small warm-up (lazily created fds and buffers exist)  -> pre
    full workload, twice (allocators reach their plateau)  -> base
    full workload, twice more                              -> after1, after2

and the test asserts

* open fds and epoll registrations (``tfd:`` lines of every eventpoll fd in
  /proc/self/fdinfo) equal to ``pre`` after every run, exactly;
* Python objects (``len(gc.get_objects())``): after2 within 50 of base;
* RSS: after2 - base (a leak repeats every run: two runs' worth) at most
  LEAK_KB, and base - pre (what the allocators keep after the first peak) at
  most KEPT_KB.
  The tolerances are per workload, in the table below.

Sizes are the issue's (1,000,000 callbacks, 200,000 cancelled timers, 20,000
connections, 10,000 tasks cancelled mid-I/O); TOKIOLOOP_SOAK_SCALE=10 runs them
ten times larger with the same tolerances (a leak grows with N).
"""

import pytest

from reliability_helpers import env_int, run_child

SCALE = env_int("TOKIOLOOP_SOAK_SCALE", 1)
pytestmark = pytest.mark.timeout(120 * SCALE)

_CHILD = r"""
import socket
kind = KIND
loop = make_loop(kind)

def epoll_watches():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventpoll]":
                with open(f"/proc/self/fdinfo/{fd}") as f:
                    n += sum(1 for ln in f if ln.startswith("tfd:"))
        except OSError:
            pass
    return n

def trim_heap():
    # glibc keeps freed memory in its arenas (how much depends on where the
    # last live blocks sit): give it back first, so that RSS measures what
    # is still allocated rather than fragmentation, which moved it by up to
    # +-9 MiB between identical runs.
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

def snapshot():
    gc.collect()
    trim_heap()
    return dict(rss=rss_kb(), fds=fd_count(), watches=epoll_watches(), objects=len(gc.get_objects()))

def one_iteration():
    loop.call_soon(loop.stop)
    loop.run_forever()

def callbacks(n):
    # call_soon in batches of 10,000 per iteration, 1/10 of them through
    # call_soon_threadsafe from another thread and 1/10 as call_later(0) timers
    import threading
    count = [0]
    def cb():
        count[0] += 1
    batch = 10_000
    for _ in range(n // batch):
        for i in range(batch * 8 // 10):
            loop.call_soon(cb)
        for i in range(batch // 10):
            loop.call_later(0, cb)
        th = threading.Thread(target=lambda: [loop.call_soon_threadsafe(cb) for i in range(batch // 10)])
        th.start(); th.join()
        one_iteration()
        one_iteration()
    assert count[0] == n, count

def cancelled_timers(n):
    # cancelled before they are due, half of them while the loop runs
    hs = [loop.call_later(100 + i * 1e-6, print) for i in range(n // 2)]
    for h in hs:
        h.cancel()
    del hs
    async def in_loop():
        for chunk in range(10):
            hs = [loop.call_later(50 + i * 1e-6, print) for i in range(n // 20)]
            await asyncio.sleep(0)
            for h in hs:
                h.cancel()
            await asyncio.sleep(0)
    loop.run_until_complete(in_loop())
    for _ in range(3):
        one_iteration()

def connections(n, conc=50):
    done = [0]
    class Srv(asyncio.Protocol):
        def connection_made(self, t):
            self.t = t
        def data_received(self, d):
            self.t.write(d.upper())
            self.t.close()            # the server closes first (no client TIME_WAIT)
    class Cli(asyncio.Protocol):
        def __init__(self, fut):
            self.fut, self.data = fut, b""
        def connection_made(self, t):
            t.write(b"ping")
        def data_received(self, d):
            self.data += d
        def connection_lost(self, exc):
            self.fut.set_result(self.data)
    async def one(port, sem, i):
        async with sem:
            if i % 10 == 0:           # a tenth through streams
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"ping")
                data = await r.read()
                w.close()
                await w.wait_closed()
            else:
                fut = loop.create_future()
                await loop.create_connection(lambda: Cli(fut), "127.0.0.1", port)
                data = await fut
            assert data == b"PING", data
            done[0] += 1
    async def main():
        srv = await loop.create_server(Srv, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        sem = asyncio.Semaphore(conc)
        await asyncio.gather(*(one(port, sem, i) for i in range(n)))
        srv.close()
        await srv.wait_closed()
    loop.run_until_complete(main())
    assert done[0] == n

PAY1 = b"x" * (128 << 10)
PAY4 = b"y" * (1 << 20)

def tasks_mid_io(n, batch=1000):
    # per 4 tasks: sock_recv with nothing to read, a stream read() and a
    # drain() on a transport whose peer never reads, a sock_sendall of 1 MiB
    # to a peer that never reads; all cancelled while blocked
    async def main():
        for b in range(n // batch):
            closers, writers, tasks = [], [], []
            for i in range(batch // 4):
                pairs = [socket.socketpair() for _ in range(3)]
                for p in pairs:
                    for s in p:
                        s.setblocking(False)
                        # small kernel buffers: the writes block at once and the
                        # transient peak (transport buffers) stays small
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                closers += [pairs[0][0], pairs[0][1], pairs[1][1], pairs[2][0], pairs[2][1]]
                tasks.append(loop.create_task(loop.sock_recv(pairs[0][0], 100)))
                r, w = await asyncio.open_connection(sock=pairs[1][0])
                writers.append(w)
                tasks.append(loop.create_task(r.read(100)))
                w.transport.set_write_buffer_limits(high=0)
                w.write(PAY1)
                tasks.append(loop.create_task(w.drain()))
                tasks.append(loop.create_task(loop.sock_sendall(pairs[2][0], PAY4)))
            await asyncio.sleep(0.01)
            assert not any(t.done() for t in tasks), [t for t in tasks if t.done()][:3]
            for t in tasks:
                t.cancel()
            res = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in res), res[:5]
            for w in writers:
                w.transport.abort()
            for s in closers:
                s.close()
            for w in writers:
                try:
                    await w.wait_closed()
                except OSError:
                    pass
    loop.run_until_complete(main())

WORK = {"callbacks": callbacks, "timers": cancelled_timers, "connections": connections, "tasks": tasks_mid_io}
work = WORK[WORKLOAD]
work(WARM)                 # lazily created fds and buffers exist
pre = snapshot()
work(N)                    # the allocators reach their high-water marks
work(N)
base = snapshot()
t0 = time.monotonic()
work(N)
t1 = time.monotonic() - t0
after1 = snapshot()
work(N)
after2 = snapshot()
stats = loop.stats() if hasattr(loop, "stats") else {}
loop.close()
emit(dict(pre=pre, base=base, after1=after1, after2=after2, seconds=t1,
          timers_pending=stats.get("timers_pending"), ready=stats.get("ready")))
"""

MiB_KB = 1024

# workload: (N, warm-up N, LEAK_KB, KEPT_KB)
WORKLOADS = {
    "callbacks": (1_000_000, 10_000, 2 * MiB_KB, 16 * MiB_KB),
    "timers": (200_000, 2_000, 2 * MiB_KB, 24 * MiB_KB),
    "connections": (20_000, 200, 8 * MiB_KB, 32 * MiB_KB),
    "tasks": (10_000, 1_000, 8 * MiB_KB, 32 * MiB_KB),
}


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_resources_return_to_baseline(workload):
    n, warm, leak_kb, kept_kb = WORKLOADS[workload]
    n *= SCALE
    code = f"KIND = 'tokioloop'\nWORKLOAD = {workload!r}\nN = {n}\nWARM = {warm}\n" + _CHILD
    # glibc's dynamic mmap threshold makes a heap grow once more on a second
    # peak; pinning it makes freed large blocks go back to the OS at once, so
    # what remains is what the program holds.
    data, proc = run_child(
        code, timeout=110 * SCALE, env={"MALLOC_MMAP_THRESHOLD_": "131072", "PYTHONFAULTHANDLER": "1"}
    )
    assert data is not None, proc.stderr[-3000:]
    pre, base, a1, a2 = data["pre"], data["base"], data["after1"], data["after2"]
    summary = (
        f"[{workload} x{n}] {data['seconds']:.2f}s per run; RSS {pre['rss']} KiB before, "
        f"+{base['rss'] - pre['rss']} after two runs, then {a1['rss'] - base['rss']:+d}, "
        f"{a2['rss'] - a1['rss']:+d}; fds {pre['fds']}/{base['fds']}/{a1['fds']}/{a2['fds']}; "
        f"epoll watches {pre['watches']}/{base['watches']}/{a1['watches']}/{a2['watches']}; "
        f"objects {pre['objects']}/{base['objects']}/{a1['objects']}/{a2['objects']}"
    )
    print("\n" + summary)
    for snap in (base, a1, a2):
        assert snap["fds"] == pre["fds"], summary
        assert snap["watches"] == pre["watches"], summary
    assert abs(a2["objects"] - base["objects"]) <= 50, summary
    assert a2["rss"] - base["rss"] <= leak_kb, summary
    assert base["rss"] - pre["rss"] <= kept_kb, summary
    assert data["timers_pending"] == 0 and data["ready"] == 0, data
