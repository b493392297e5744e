"""Subprocess stress: many children, kills mid-flight, floods and flow control."""

import asyncio
import gc
import hashlib
import os
import signal
import sys
import threading
import time
import tracemalloc

import pytest

from conftest import LOOP_KINDS, make_loop

PIPE = asyncio.subprocess.PIPE
PY = sys.executable


def child_pids():
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            out.append((int(name), fields[0]))
    return out


def open_fds():
    # A closed tokioloop keeps its epoll/eventfd/timerfd until it is freed.
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_children_left():
    yield
    deadline = time.monotonic() + 5
    while child_pids() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child_pids() == []


def run(kind, coro_fn, timeout=60):
    loop = make_loop(kind)
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(), timeout))
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        asyncio.set_event_loop(None)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_200_concurrent_short_lived_children(kind):
    threads_seen = []

    async def one(i):
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", f'printf "%s" {i}; exit $(({i} % 7))', stdout=PIPE, stderr=PIPE
        )
        if getattr(proc._transport, "_watch_kind", None) == "pidfd":
            threads_seen.append(threading.active_count())
        out, err = await proc.communicate()
        return int(out), err, proc.returncode

    async def scenario():
        base_threads = threading.active_count()
        results = await asyncio.gather(*(one(i) for i in range(200)))
        return base_threads, results

    fds_before = open_fds()
    base_threads, results = run(kind, scenario)
    assert results == [(i, b"", i % 7) for i in range(200)]
    assert open_fds() == fds_before
    if threads_seen:
        # with pidfds: no thread per child
        assert max(threads_seen) == base_threads


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_child_killed_mid_communicate(kind):
    code = "import sys, time\nprint('partial', flush=True)\nsys.stderr.write('e'); sys.stderr.flush()\ntime.sleep(60)\n"

    async def scenario():
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdout=PIPE, stderr=PIPE)
        task = asyncio.ensure_future(proc.communicate())
        await asyncio.sleep(0.5)
        assert not task.done()
        t0 = time.monotonic()
        proc.kill()
        out, err = await task
        return out, err, proc.returncode, time.monotonic() - t0 < 5

    assert run(kind, scenario) == (b"partial\n", b"e", -signal.SIGKILL, True)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_child_killed_mid_communicate_while_feeding_stdin(kind):
    big = b"x" * (8 << 20)  # far more than a pipe holds: the child never reads it

    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import time; print('up', flush=True); time.sleep(60)",
            stdin=PIPE, stdout=PIPE,
        )
        task = asyncio.ensure_future(proc.communicate(big))
        await asyncio.sleep(0.5)
        assert not task.done()
        proc.kill()
        out, _ = await task  # BrokenPipeError on stdin is ignored by communicate()
        return out, proc.returncode

    assert run(kind, scenario) == (b"up\n", -signal.SIGKILL)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_terminate_during_readline(kind):
    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import time; time.sleep(60)", stdout=PIPE
        )
        reader = asyncio.ensure_future(proc.stdout.readline())
        await asyncio.sleep(0.2)
        proc.terminate()
        line = await reader
        return line, await proc.wait()

    assert run(kind, scenario) == (b"", -signal.SIGTERM)


FLOOD = (
    "import os, sys\n"
    "chunk = b'f' * 65536\n"
    "out = sys.stdout.fileno()\n"
    "while True:\n"
    "    os.write(out, chunk)\n"
)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_flooding_child_memory_bounded_by_flow_control(kind):
    limit = 64 * 1024

    async def scenario():
        proc = await asyncio.create_subprocess_exec(PY, "-c", FLOOD, stdout=PIPE, limit=limit)
        transport = proc._transport.get_pipe_transport(1)
        reader = proc.stdout
        max_buffer = 0
        paused_seen = False
        consumed = 0
        tracemalloc.start()
        try:
            t_end = time.monotonic() + 1.5
            while time.monotonic() < t_end:
                data = await reader.read(4096)  # much slower than the child
                consumed += len(data)
                max_buffer = max(max_buffer, len(reader._buffer))
                if not transport.is_reading():
                    paused_seen = True
                await asyncio.sleep(0.0005)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        proc.kill()
        await proc.communicate()
        return max_buffer, paused_seen, consumed, peak, proc.returncode

    max_buffer, paused_seen, consumed, peak, rc = run(kind, scenario)
    assert rc == -signal.SIGKILL
    assert consumed > 100_000
    assert paused_seen
    # StreamReader pauses above 2 * limit; one read (<= 256 KiB) may overshoot it.
    assert max_buffer <= 2 * limit + 256 * 1024, max_buffer
    assert peak < 8 << 20, peak


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_stdin_write_flow_control_bounded(kind):
    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys, time\ntime.sleep(0.3)\nn = len(sys.stdin.buffer.read())\nprint(n)",
            stdin=PIPE, stdout=PIPE,
        )
        transport = proc._transport.get_pipe_transport(0)
        max_buffered = 0
        chunk = b"w" * 65536
        for _ in range(160):  # 10 MiB
            proc.stdin.write(chunk)
            max_buffered = max(max_buffered, transport.get_write_buffer_size())
            await proc.stdin.drain()
        proc.stdin.close()
        out, _ = await proc.communicate()
        return int(out), max_buffered, proc.returncode

    n, max_buffered, rc = run(kind, scenario)
    assert (n, rc) == (160 * 65536, 0)
    high = 64 * 1024  # default high-water mark: drain() blocks above it
    assert max_buffered <= high + 65536


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_large_transfer_integrity(kind):
    size = 50 << 20
    code = (
        "import hashlib, os, sys\n"
        "h = hashlib.sha256()\n"
        f"left = {size}\n"
        "seed = os.urandom(1 << 20)\n"
        "while left:\n"
        "    b = seed[: min(left, len(seed))]\n"
        "    h.update(b)\n"
        "    sys.stdout.buffer.write(b)\n"
        "    left -= len(b)\n"
        "sys.stdout.flush()\n"
        "sys.stderr.write(h.hexdigest())\n"
    )

    async def scenario():
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdout=PIPE, stderr=PIPE)
        h = hashlib.sha256()
        n = 0
        while True:
            data = await proc.stdout.read(1 << 20)
            if not data:
                break
            n += len(data)
            h.update(data)
        err = await proc.stderr.read()
        return n, h.hexdigest() == err.decode(), await proc.wait()

    assert run(kind, scenario) == (size, True, 0)


_STDIN_SINK = (
    "import hashlib, sys\n"
    "h = hashlib.sha256()\n"
    "n = 0\n"
    "inp = sys.stdin.buffer.raw\n"
    "while True:\n"
    "    d = inp.read(1 << 20)\n"
    "    if not d:\n"
    "        break\n"
    "    n += len(d)\n"
    "    h.update(d)\n"
    "print(n, h.hexdigest())\n"
)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_100mb_to_stdin_complete_and_bounded(kind):
    """100 MB written to a child's stdin (write + drain of 1 MiB) arrive
    complete and in order, with the write buffer bounded by flow control."""
    seed = os.urandom(1 << 20)

    async def scenario():
        proc = await asyncio.create_subprocess_exec(PY, "-c", _STDIN_SINK, stdin=PIPE, stdout=PIPE)
        transport = proc._transport.get_pipe_transport(0)
        h = hashlib.sha256()
        max_buffered = 0
        for i in range(100):
            chunk = seed[i:] + seed[:i]
            h.update(chunk)
            proc.stdin.write(chunk)
            max_buffered = max(max_buffered, transport.get_write_buffer_size())
            await proc.stdin.drain()
        proc.stdin.close()
        out, _ = await proc.communicate()
        return out.split(), h.hexdigest(), max_buffered, proc.returncode

    (n, digest), expected, max_buffered, rc = run(kind, scenario)
    assert (int(n), digest.decode(), rc) == (100 << 20, expected, 0)
    assert max_buffered <= 1 << 20


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_one_huge_stdin_write_is_not_copied(kind):
    """A 64 MB bytes object written in one go (no drain) arrives complete; on
    tokioloop the unsent rest is the caller's object, kept by reference, not
    a copy."""
    payload = os.urandom(1 << 20) * 64

    async def scenario():
        proc = await asyncio.create_subprocess_exec(PY, "-c", _STDIN_SINK, stdin=PIPE, stdout=PIPE)
        before = sys.getrefcount(payload)
        proc.stdin.write(payload)
        queued = proc._transport.get_pipe_transport(0).get_write_buffer_size()
        held = sys.getrefcount(payload) - before
        proc.stdin.close()
        out, _ = await proc.communicate()
        return out.split(), queued, held, proc.returncode

    (n, digest), queued, held, rc = run(kind, scenario)
    assert (int(n), digest.decode(), rc) == (len(payload), hashlib.sha256(payload).hexdigest(), 0)
    assert queued > 0  # more than a pipe takes at once
    if kind == "tokioloop":
        assert held == 1


def test_many_sequential_spawns_leak_nothing():
    async def scenario():
        for i in range(300):
            proc = await asyncio.create_subprocess_exec(
                "true", stdin=PIPE, stdout=PIPE, stderr=PIPE
            )
            await proc.communicate()
            assert proc.returncode == 0

    run("tokioloop", scenario)  # warm-up
    fds = open_fds()
    threads = threading.active_count()
    run("tokioloop", scenario)
    assert open_fds() == fds
    assert threading.active_count() == threads


def test_children_of_several_loops_in_threads():
    results = {}

    def worker(n):
        async def scenario():
            procs = [
                await asyncio.create_subprocess_exec("sh", "-c", f"exit {n}", stdout=PIPE)
                for _ in range(25)
            ]
            return [(await p.communicate())[0] == b"" and p.returncode for p in procs]

        results[n] = run("tokioloop", scenario)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {n: [n] * 25 for n in range(1, 5)}
