"""connect_read_pipe / connect_write_pipe: pipes, socketpairs, ptys, EOF,
reader going away, flow control, the fd-type checks.

Runs on the stdlib loop (oracle) and on tokioloop.
"""

import asyncio
import os
import pty
import socket
import sys
import tempfile

import pytest

import tokioloop

from net_helpers import CollectProtocol, run

pytestmark = pytest.mark.timeout(60)


def test_read_pipe(loop):
    r, w = os.pipe()
    rf = open(r, "rb", buffering=0)

    async def main():
        proto = CollectProtocol(loop)
        tr, pr = await loop.connect_read_pipe(lambda: proto, rf)
        assert pr is proto and proto.events == ["made"]
        assert tr.get_extra_info("pipe") is rf
        assert tr.is_reading()
        os.write(w, b"one ")
        await proto.wait_for_bytes(4)
        tr.pause_reading()
        assert not tr.is_reading()
        os.write(w, b"two")
        await asyncio.sleep(0.05)
        assert bytes(proto.data) == b"one "
        tr.resume_reading()
        await proto.wait_for_bytes(7)
        os.close(w)
        await proto.done
        assert bytes(proto.data) == b"one two"
        assert proto.events == ["made", "data", "eof", "lost"]
        assert tr.is_closing()

    run(loop, main())
    assert rf.closed


def test_read_pipe_bulk(loop, loop_kind):
    """Megabytes through a big pipe arrive intact and in order; tokioloop
    hands them over in chunks of at most 256 KiB (sized to what the pipe holds)."""
    import fcntl
    import threading

    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    rf = open(r, "rb", buffering=0)
    payload = os.urandom(1 << 16) * 48 + b"tail"  # 3 MiB + 4
    sizes = []

    def writer():
        with open(w, "wb", buffering=0) as wf:
            view = memoryview(payload)
            while view:
                view = view[wf.write(view[: 700_000]) :]

    async def main():
        class P(CollectProtocol):
            def data_received(self, data):
                sizes.append(len(data))
                super().data_received(data)

        proto = P(loop)
        await loop.connect_read_pipe(lambda: proto, rf)
        t = threading.Thread(target=writer)
        t.start()
        await proto.done
        t.join()
        return bytes(proto.data)

    assert run(loop, main()) == payload
    if loop_kind == "tokioloop":
        assert max(sizes) <= 256 * 1024


def test_read_pipe_close(loop):
    r, w = os.pipe()
    rf = open(r, "rb", buffering=0)

    async def main():
        proto = CollectProtocol(loop)
        tr, _ = await loop.connect_read_pipe(lambda: proto, rf)
        tr.close()
        assert await proto.done is None
        assert proto.events == ["made", "lost"]

    try:
        run(loop, main())
        assert rf.closed
    finally:
        os.close(w)


def test_read_pipe_buffered_protocol(tloop):
    """tokioloop feeds BufferedProtocols on pipes too (the stdlib's pipe
    transport only calls data_received)."""
    loop = tloop
    r, w = os.pipe()
    rf = open(r, "rb", buffering=0)
    from net_helpers import BufferedCollect

    async def main():
        proto = BufferedCollect(loop, size=7)
        tr, _ = await loop.connect_read_pipe(lambda: proto, rf)
        os.write(w, b"buffered protocol over a pipe")
        os.close(w)
        await proto.done
        return bytes(proto.data), proto.events

    assert run(loop, main()) == (b"buffered protocol over a pipe", ["made", "eof", "lost"])


def test_write_pipe(loop):
    r, w = os.pipe()
    wf = open(w, "wb", buffering=0)

    async def main():
        proto = CollectProtocol(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, wf)
        assert tr.get_extra_info("pipe") is wf
        assert tr.can_write_eof()
        tr.write(b"to ")
        tr.writelines([b"the ", b"pipe"])
        await asyncio.sleep(0.01)
        assert os.read(r, 100) == b"to the pipe"
        assert tr.get_write_buffer_size() == 0
        tr.close()
        await proto.done
        assert os.read(r, 100) == b""  # writer closed -> EOF
        assert proto.events == ["made", "lost"]

    try:
        run(loop, main())
    finally:
        os.close(r)


def test_write_pipe_write_eof(loop):
    r, w = os.pipe()
    wf = open(w, "wb", buffering=0)

    async def main():
        proto = CollectProtocol(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, wf)
        tr.write(b"last words")
        tr.write_eof()
        assert tr.is_closing()
        await proto.done
        data = b""
        while chunk := os.read(r, 100):
            data += chunk
        return data

    try:
        assert run(loop, main()) == b"last words"
    finally:
        os.close(r)


def test_write_pipe_reader_closes(loop):
    """The read end goes away: the transport notices (BrokenPipe or clean)."""

    r, w = os.pipe()
    wf = open(w, "wb", buffering=0)

    async def main():
        proto = CollectProtocol(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, wf)
        os.close(r)
        exc = await proto.done
        assert exc is None or isinstance(exc, BrokenPipeError)
        assert tr.is_closing()

    run(loop, main())


def test_write_pipe_flow_control(loop):
    """A full pipe pauses the protocol; draining it resumes."""

    r, w = os.pipe()
    wf = open(w, "wb", buffering=0)

    async def main():
        events = []
        resumed = loop.create_future()

        class P(asyncio.Protocol):
            def pause_writing(self):
                events.append("pause")

            def resume_writing(self):
                events.append("resume")
                resumed.set_result(None)

            def connection_lost(self, exc):
                events.append("lost")

        tr, _ = await loop.connect_write_pipe(P, wf)
        total = 0
        while "pause" not in events:
            tr.write(b"p" * 65536)
            total += 65536
            await asyncio.sleep(0)
        assert tr.get_write_buffer_size() > 0
        got = 0
        os.set_blocking(r, False)
        while not resumed.done():
            try:
                got += len(os.read(r, 1 << 20))
            except BlockingIOError:
                pass
            await asyncio.sleep(0.001)
        assert events == ["pause", "resume"]
        tr.close()
        while True:
            try:
                chunk = os.read(r, 1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            if not chunk:
                break
            got += len(chunk)
        assert got == total

    try:
        run(loop, main())
    finally:
        os.close(r)


def test_pipe_over_socketpair(loop):
    a, b = socket.socketpair()

    async def main():
        rproto = CollectProtocol(loop)
        wproto = CollectProtocol(loop)
        rtr, _ = await loop.connect_read_pipe(lambda: rproto, a)
        wtr, _ = await loop.connect_write_pipe(lambda: wproto, b)
        wtr.write(b"socketpair as pipes")
        await rproto.wait_for_bytes(19)
        wtr.close()
        await wproto.done
        await rproto.done
        return bytes(rproto.data)

    assert run(loop, main()) == b"socketpair as pipes"


def test_write_pty(loop):
    master, slave = pty.openpty()
    import tty

    tty.setraw(slave)
    slave_f = open(slave, "wb", buffering=0)

    async def main():
        proto = CollectProtocol(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, slave_f)
        tr.write(b"to the tty")
        got = b""
        os.set_blocking(master, False)
        for _ in range(200):
            try:
                got += os.read(master, 100)
            except BlockingIOError:
                pass
            if len(got) >= 10:
                break
            await asyncio.sleep(0.005)
        # input typed on the terminal does not close the write transport
        os.write(master, b"typed\n")
        await asyncio.sleep(0.05)
        assert not tr.is_closing()
        tr.close()
        await proto.done
        return got

    try:
        assert run(loop, main()) == b"to the tty"
    finally:
        os.close(master)


def test_read_pty(loop):
    master, slave = pty.openpty()
    master_f = open(master, "rb", buffering=0)

    async def main():
        proto = CollectProtocol(loop)
        tr, _ = await loop.connect_read_pipe(lambda: proto, master_f)
        os.write(slave, b"line from the slave\n")
        await proto.wait_for_bytes(5)
        tr.close()
        await proto.done
        return bytes(proto.data)

    try:
        assert run(loop, main()).startswith(b"line")
    finally:
        os.close(slave)


def test_pipe_type_checks(loop):
    fd, path = tempfile.mkstemp()
    try:
        with open(path, "rb") as f:
            with pytest.raises(ValueError, match=r"^Pipe transport is for pipes/sockets only\.$"):
                run(loop, loop.connect_read_pipe(asyncio.Protocol, f))
        with open(path, "wb") as f:
            with pytest.raises(ValueError, match=r"^Pipe transport is only for pipes, sockets and character devices$"):
                run(loop, loop.connect_write_pipe(asyncio.Protocol, f))
    finally:
        os.close(fd)
        os.unlink(path)


def test_write_pipe_is_not_a_read_transport(loop):
    r, w = os.pipe()
    wf = open(w, "wb", buffering=0)

    async def main():
        tr, _ = await loop.connect_write_pipe(asyncio.Protocol, wf)
        with pytest.raises(Exception):
            tr.write("text, not bytes")
        tr.abort()
        await asyncio.sleep(0)

    try:
        run(loop, main())
    finally:
        os.close(r)


def test_start_tls_refuses_pipe_transport(loop):
    import ssl

    r, w = os.pipe()
    wf = open(w, "wb", buffering=0)

    async def main():
        tr, proto = await loop.connect_write_pipe(asyncio.Protocol, wf)
        try:
            with pytest.raises(TypeError, match="is not supported by start_tls"):
                await loop.start_tls(tr, proto, ssl.create_default_context())
        finally:
            tr.close()
            await asyncio.sleep(0)

    try:
        run(loop, main())
    finally:
        os.close(r)


def _drain_in_thread(fd, into):
    """Reads fd (blocking) to EOF into the list `into`, in a thread."""
    import threading

    def reader():
        while chunk := os.read(fd, 1 << 20):
            into.append(chunk)

    t = threading.Thread(target=reader)
    t.start()
    return t


def _assert_same_stream(got, expected):
    """Compares two big byte strings without pytest's (very slow) diff of them."""
    if got != expected:
        i = next((k for k, (x, y) in enumerate(zip(got, expected)) if x != y), min(len(got), len(expected)))
        pytest.fail(
            f"stream differs at byte {i} (got {len(got)} bytes, expected {len(expected)}): "
            f"{got[i:i + 16]!r} != {expected[i:i + 16]!r}"
        )


def _mixed_writes(tr):
    """Writes bytes, a bytearray and a memoryview that the caller then
    mutates, and many small writes; returns what must arrive."""
    big = os.urandom(1 << 20)  # more than a pipe or socket takes at once
    ba = bytearray(b"A" * 300_000)
    mv_src = bytearray(b"M" * 200_000)
    expected = [big]
    tr.write(big)
    tr.write(ba)
    expected.append(bytes(ba))
    ba[:] = b"Z" * len(ba)  # mutated after write(): must not change what is sent
    ba.extend(b"more")
    tr.write(memoryview(mv_src)[1000:])
    expected.append(bytes(mv_src[1000:]))
    mv_src[:] = b"N" * len(mv_src)
    for i in range(2000):
        small = b"%05d;" % i
        tr.write(small)
        expected.append(small)
    tail = b"T" * 40_000 + b"end"
    tr.write(tail)
    expected.append(tail)
    return b"".join(expected)


def test_write_pipe_queued_data_intact(loop):
    """Data queued behind a full pipe (bytes kept by reference, mutable
    buffers copied) arrives intact and in order."""
    r, w = os.pipe()
    wf = open(w, "wb", buffering=0)
    got = []

    async def main():
        proto = CollectProtocol(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, wf)
        expected = _mixed_writes(tr)
        assert tr.get_write_buffer_size() > 0
        t = _drain_in_thread(r, got)
        tr.close()
        await proto.done
        await loop.run_in_executor(None, t.join)
        return expected

    try:
        expected = run(loop, main())
    finally:
        os.close(r)
    _assert_same_stream(b"".join(got), expected)


def test_socket_queued_data_intact(loop):
    """The same over a stream socket transport (shared with TCP)."""
    if not isinstance(loop, tokioloop.Loop) and sys.version_info >= (3, 12):
        pytest.skip(
            "CPython 3.12+'s selector socket transport queues the caller's bytearray/"
            "memoryview without copying it (write() appends memoryview(data)[n:]), so a "
            "buffer mutated after write() changes what is sent; tokioloop copies"
        )
    a, b = socket.socketpair()
    got = []

    async def main():
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_unix_connection(lambda: proto, sock=a)
        expected = _mixed_writes(tr)
        assert tr.get_write_buffer_size() > 0
        t = _drain_in_thread(b.fileno(), got)
        tr.close()
        await proto.done
        await loop.run_in_executor(None, t.join)
        return expected

    try:
        expected = run(loop, main())
    finally:
        b.close()
    _assert_same_stream(b"".join(got), expected)


def test_write_pipe_exactly_filled_then_more(loop):
    """A write of exactly the pipe's size fills it; what follows is written
    once a slow reader (small reads) makes room, to the last byte."""
    import fcntl

    r, w = os.pipe()
    size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    wf = open(w, "wb", buffering=0)
    got = []

    def slow_reader():
        import time

        while chunk := os.read(r, 1000):
            got.append(chunk)
            time.sleep(0.0002)

    async def main():
        proto = CollectProtocol(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, wf)
        first = os.urandom(size)
        tr.write(first)
        rest = [os.urandom(n) for n in (1, 100, 5000, 200_000, 3)]
        for chunk in rest:
            tr.write(chunk)
        import threading

        t = threading.Thread(target=slow_reader)
        t.start()
        tr.close()
        await proto.done
        await loop.run_in_executor(None, t.join)
        return first + b"".join(rest)

    try:
        expected = run(loop, main())
    finally:
        os.close(r)
    assert b"".join(got) == expected


def test_write_pipe_enlarged_behind_the_transport(loop):
    """The pipe is made bigger after the transport measured it: a write of
    the old size no longer fills it, and what follows must still go out
    (tokioloop's edge mode must not wait for an EPOLLOUT edge forever)."""
    import fcntl

    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 65536)
    except OSError:
        pytest.skip("cannot size pipes here")
    wf = open(w, "wb", buffering=0)
    os.set_blocking(r, False)

    async def main():
        proto = CollectProtocol(loop)
        tr, _ = await loop.connect_write_pipe(lambda: proto, wf)
        tr.write(b"x" * 100_000)  # more than fits: the write watch is armed
        got = b""
        while len(got) < 100_000:
            await asyncio.sleep(0.001)
            try:
                got += os.read(r, 1 << 20)
            except BlockingIOError:
                pass
        assert got == b"x" * 100_000
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pytest.skip("cannot enlarge pipes here")
        tr.write(b"a" * 65536)  # the old size: the pipe is not full now
        got = os.read(r, 1 << 20)  # the reader takes it all: no EPOLLOUT edge
        tr.write(b"b" * 1000)
        deadline = loop.time() + 5
        while len(got) < 66536 and loop.time() < deadline:
            await asyncio.sleep(0.01)
            try:
                got += os.read(r, 1 << 20)
            except BlockingIOError:
                pass
        tr.close()
        await proto.done
        return got

    try:
        assert run(loop, main()) == b"a" * 65536 + b"b" * 1000
    finally:
        os.close(r)


def test_read_pipe_pause_in_data_received_with_full_pipe(loop):
    """A protocol pausing in every data_received() gets nothing more until it
    resumes, even when the transport took more out of the pipe at once; all
    data arrives in order."""
    import fcntl

    r, w = os.pipe()
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    payload = os.urandom(1 << 16) * 12  # 768 KiB: fits in the pipe at once
    os.write(w, payload)
    os.close(w)
    rf = open(r, "rb", buffering=0)

    async def main():
        got = []
        done = loop.create_future()
        violations = []

        class P(asyncio.Protocol):
            paused = False

            def connection_made(self, tr):
                self.tr = tr

            def data_received(self, data):
                if self.paused:
                    violations.append(len(data))
                got.append(data)
                self.paused = True
                self.tr.pause_reading()
                loop.call_later(0.01, self.resume)

            def resume(self):
                self.paused = False
                self.tr.resume_reading()

            def eof_received(self):
                pass

            def connection_lost(self, exc):
                done.set_result(exc)

        await loop.connect_read_pipe(P, rf)
        await done
        return b"".join(got), violations, len(got)

    data, violations, n = run(loop, main())
    assert data == payload
    assert violations == []
    assert n >= 3
