"""asyncio streams on a native transport: StreamReaderProtocol.data_received
is done in Rust when the protocol and reader are the stdlib's own, unmodified
classes (src/stream_reader.rs), and by the Python methods otherwise.

Every scenario runs on the stdlib selector loop (the oracle) and on tokioloop
and must give the same result; a few pin that the native path is the one
taken (no Python frame of data_received/feed_data runs) and that every kind
of replacement (instance attribute, subclass, class attribute patched after
first use) makes the Python method run again.
"""

import asyncio
import sys

import pytest

from net_helpers import HOST, EchoProtocol, run

pytestmark = pytest.mark.timeout(60)


async def echo_pair(loop, limit=2**16, server_cb=None):
    """A stream server echoing everything, and a client connected to it."""

    async def echo(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    handlers = []

    async def handler(reader, writer):
        handlers.append(asyncio.current_task())
        await (server_cb or echo)(reader, writer)

    server = await asyncio.start_server(handler, HOST, 0)
    # close_pair waits for these: a handler still pending when the loop
    # closes is reported later, in another test, as a coroutine never finished.
    server.handler_tasks = handlers
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(HOST, port, limit=limit)
    return server, reader, writer


async def close_pair(server, writer, failed=False):
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass
    except Exception:
        # A connection that failed reports its error here too.
        if not failed:
            raise
    server.close()
    await server.wait_closed()
    if server.handler_tasks:
        await asyncio.wait(server.handler_tasks, timeout=5)


def streams_calls(fn):
    """Runs fn() under a profiler; returns the names of the asyncio.streams
    functions called (Python frames only)."""
    seen = []

    def prof(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.endswith("asyncio/streams.py"):
            seen.append(frame.f_code.co_name)

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


@pytest.mark.parametrize("size", [1, 1000, 70_000, 300_000])
def test_echo_roundtrip_sizes(loop_factory, size):
    loop = loop_factory()

    async def main():
        server, reader, writer = await echo_pair(loop)
        payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        writer.write(payload)
        got = await reader.readexactly(len(payload))
        await close_pair(server, writer)
        return got == payload

    assert run(loop, main())


def test_native_path_skips_python_frames(loop_factory):
    """On tokioloop the reads of a plain stream run no Python frame of
    data_received, _stream_reader or feed_data; on the stdlib loop they do."""
    loop = loop_factory()

    async def main():
        server, reader, writer = await echo_pair(loop)
        for _ in range(20):
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
        await close_pair(server, writer)

    seen = streams_calls(lambda: run(loop, main()))
    # (_stream_reader and _wakeup_waiter also run at connection set-up and EOF.)
    native = {"data_received", "feed_data"} & set(seen)
    if loop_factory.kind == "tokioloop":
        assert native == set(), seen
        assert "read" in seen or "readexactly" in seen  # the profiler did run
    else:
        assert {"data_received", "feed_data"} <= native


def test_socket_reads_go_straight_into_the_bytearray():
    """On tokioloop a plain stream's socket reads land in the reader's
    bytearray without a bytes object (the transport records their size);
    a transport whose protocol is not a StreamReaderProtocol never does."""
    import tokioloop

    loop = tokioloop.new_event_loop()

    async def main():
        server, reader, writer = await echo_pair(loop)
        sizes = []
        for size in (5000, 20_000):
            writer.write(b"x" * size)
            await reader.readexactly(size)
            sizes.append(writer.transport._last_reader_read())
        await close_pair(server, writer)

        plain = await loop.create_server(EchoProtocol, HOST, 0)
        port = plain.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, HOST, port)
        transport.write(b"y" * 5000)
        await asyncio.sleep(0.05)
        other = transport._last_reader_read()
        transport.close()
        plain.close()
        await plain.wait_closed()
        return sizes, other

    try:
        sizes, other = loop.run_until_complete(main())
    finally:
        loop.close()
    # The last read of each message: all of it, or its tail if it came in pieces.
    assert all(0 < n <= size for n, size in zip(sizes, (5000, 20_000))), sizes
    assert other == 0


@pytest.mark.parametrize("target", ["reader.feed_data", "protocol.data_received"])
def test_instance_attribute_replaces_method(loop_factory, target):
    loop = loop_factory()
    calls = []

    async def main():
        server, reader, writer = await echo_pair(loop)
        protocol = writer.transport.get_protocol()
        obj = reader if target.startswith("reader") else protocol
        name = target.split(".")[1]
        original = getattr(obj, name)

        def spy(data):
            calls.append(bytes(data))
            return original(data)

        setattr(obj, name, spy)
        writer.write(b"hello")
        got = await reader.readexactly(5)
        delattr(obj, name)
        writer.write(b"again")
        got += await reader.readexactly(5)
        await close_pair(server, writer)
        return got

    assert run(loop, main()) == b"helloagain"
    assert b"".join(calls) == b"hello"


def test_class_patched_after_first_use(loop_factory, monkeypatch):
    loop = loop_factory()
    calls = []

    async def main():
        server, reader, writer = await echo_pair(loop)
        writer.write(b"first")
        assert await reader.readexactly(5) == b"first"
        original = asyncio.StreamReader.feed_data

        def spy(self, data):
            calls.append(bytes(data))
            return original(self, data)

        monkeypatch.setattr(asyncio.StreamReader, "feed_data", spy)
        writer.write(b"second")
        got = await reader.readexactly(6)
        monkeypatch.undo()
        writer.write(b"third")
        got += await reader.readexactly(5)
        await close_pair(server, writer)
        return got

    assert run(loop, main()) == b"secondthird"
    # The server's reader and the client's.
    assert b"".join(calls) == b"secondsecond"


def test_subclassed_reader_and_protocol(loop_factory):
    loop = loop_factory()
    calls = []

    class Reader(asyncio.StreamReader):
        def feed_data(self, data):
            calls.append(("reader", len(data)))
            super().feed_data(data)

    class Protocol(asyncio.StreamReaderProtocol):
        def data_received(self, data):
            calls.append(("protocol", len(data)))
            super().data_received(data)

    async def main():
        server, _, w0 = await echo_pair(loop)
        port = server.sockets[0].getsockname()[1]
        reader = Reader(loop=loop)
        transport, _ = await loop.create_connection(
            lambda: Protocol(reader, loop=loop), HOST, port
        )
        writer = asyncio.StreamWriter(transport, transport.get_protocol(), reader, loop)
        writer.write(b"abc")
        got = await reader.readexactly(3)
        w0.close()
        await close_pair(server, writer)
        return got

    assert run(loop, main()) == b"abc"
    assert ("protocol", 3) in calls and ("reader", 3) in calls


def test_small_limit_pauses_and_resumes_reading(loop_factory):
    """Past twice the limit feed_data pauses the transport; reading resumes it."""
    loop = loop_factory()

    async def main():
        sent = b"x" * 200_000

        async def blast(reader, writer):
            writer.write(sent)
            await writer.drain()
            await reader.read()
            writer.close()

        server, reader, writer = await echo_pair(loop, limit=1024, server_cb=blast)
        for _ in range(200):
            if reader._paused:
                break
            await asyncio.sleep(0.005)
        paused = reader._paused
        reading_while_paused = writer.transport.is_reading()
        buffered = len(reader._buffer)
        got = await reader.readexactly(len(sent))
        writer.write_eof()
        await close_pair(server, writer)
        return paused, reading_while_paused, buffered > 2048, buffered < len(sent), got == sent

    assert run(loop, main()) == (True, False, True, True, True)


def test_pause_reading_not_implemented_forgets_transport(loop_factory):
    loop = loop_factory()

    class NoPause:
        def __init__(self, real):
            self.real = real

        def pause_reading(self):
            raise NotImplementedError

        def __getattr__(self, name):
            return getattr(self.real, name)

    async def main():
        async def blast(reader, writer):
            writer.write(b"y" * 50_000)
            await writer.drain()
            await reader.read()
            writer.close()

        server, reader, writer = await echo_pair(loop, limit=1024, server_cb=blast)
        reader._transport = NoPause(writer.transport)
        got = await reader.readexactly(50_000)
        forgot = reader._transport is None
        writer.write_eof()
        await close_pair(server, writer)
        return len(got), forgot

    assert run(loop, main()) == (50_000, True)


def _fatal_error_scenario(loop, prepare, size=None):
    """Runs `prepare(reader)` on a connected client, sends it data, and
    returns what reached the exception handler and the transport's state.
    With `size`, a message of that size is echoed first and the data sent
    after `prepare` has that size too (which read path comes next depends on
    the last read's size)."""
    reports = []
    loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))

    async def main():
        server, reader, writer = await echo_pair(loop)
        if size:
            writer.write(b"x" * size)
            await reader.readexactly(size)
        keep = prepare(reader)
        writer.write(b"y" * size if size else b"data")
        for _ in range(200):
            if reports:
                break
            await asyncio.sleep(0.005)
        del keep
        closing = writer.transport.is_closing()
        await close_pair(server, writer, failed=True)
        return closing

    closing = run(loop, main())
    return [(c.get("message"), type(c.get("exception")).__name__) for c in reports], closing


def test_data_after_feed_eof_is_a_fatal_error(loop_factory):
    loop = loop_factory()
    reports, closing = _fatal_error_scenario(loop, lambda reader: reader.feed_eof())
    assert reports == [("Fatal error: protocol.data_received() call failed.", "AssertionError")]
    assert closing


def test_buffer_with_exports_is_a_fatal_error(loop_factory):
    loop = loop_factory()
    reports, closing = _fatal_error_scenario(loop, lambda reader: memoryview(reader._buffer))
    assert reports == [("Fatal error: protocol.data_received() call failed.", "BufferError")]
    assert closing


def test_cancelled_read_keeps_data_for_next(loop_factory):
    loop = loop_factory()

    async def main():
        server, reader, writer = await echo_pair(loop)
        pending = asyncio.ensure_future(reader.read(100))
        await asyncio.sleep(0.01)
        pending.cancel()
        # The waiter is cancelled but still set on the reader when data comes.
        writer.write(b"kept")
        await asyncio.sleep(0.05)
        got = await reader.read(100)
        await close_pair(server, writer)
        return pending.cancelled(), got

    assert run(loop, main()) == (True, b"kept")


def test_reader_gone_drops_data(loop_factory):
    """StreamReaderProtocol holds its reader weakly; once it is gone reads are
    dropped without error."""
    loop = loop_factory()
    reports = []
    loop.set_exception_handler(lambda lp, ctx: reports.append(ctx))

    async def main():
        server, _, w0 = await echo_pair(loop)
        port = server.sockets[0].getsockname()[1]
        reader = asyncio.StreamReader(loop=loop)
        transport, protocol = await loop.create_connection(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), HOST, port
        )
        del reader
        transport.write(b"lost")
        await asyncio.sleep(0.05)
        alive = not transport.is_closing()
        transport.close()
        w0.close()
        server.close()
        await server.wait_closed()
        await asyncio.wait(server.handler_tasks, timeout=5)
        return alive, protocol._stream_reader

    assert run(loop, main()) == (True, None)
    assert reports == []


# Reads straight into the reader's bytearray (src/stream.rs,
# read_into_stream_reader): after a read of at most 8 KiB the next one is a
# recv() copied in once; after a bigger one, a readv() into the bytearray grown
# by that size (FIONREAD after 32 KiB and more), the rest through the shared
# buffer. Every switch between the two, reads bigger and smaller than the room
# made, and data already waiting in the buffer must give the same bytes as on
# the stdlib loop.

MIXED_SIZES = [5, 9000, 100, 70_000, 300_000, 12, 9000, 9000, 8192, 8193, 20_000, 1, 40_000]


def _payload(i, size):
    # No b"\n" in it (readuntil splits on it).
    return bytes((i * 7 + k) % 240 + 11 for k in range(240)) * (size // 240 + 1)


def test_mixed_sizes_through_the_bytearray(loop_factory):
    loop = loop_factory()

    async def main():
        server, reader, writer = await echo_pair(loop)
        out = []
        for i, size in enumerate(MIXED_SIZES):
            payload = _payload(i, size)[:size]
            writer.write(payload)
            out.append(await reader.readexactly(size) == payload)
        await close_pair(server, writer)
        return out

    assert run(loop, main()) == [True] * len(MIXED_SIZES)


def test_reads_join_data_left_in_the_buffer(loop_factory):
    """Data already in the reader's buffer stays in front of what is read after it."""
    loop = loop_factory()

    async def main():
        server, reader, writer = await echo_pair(loop, limit=2**18)
        results = []
        for size in (100, 20_000, 100_000, 3000):
            a, b = _payload(1, size)[:size], _payload(2, size)[:size]
            writer.write(a + b"\n" + b)
            line = await reader.readuntil(b"\n")
            # Read b in two steps, the first leaving part of it buffered.
            half = await reader.readexactly(size // 2)
            rest = await reader.readexactly(size - size // 2)
            results.append((line == a + b"\n", half + rest == b))
        await close_pair(server, writer)
        return results

    assert run(loop, main()) == [(True, True)] * 4


@pytest.mark.parametrize("first", [4, 20_000, 100_000])
def test_buffer_with_exports_after_reads_of_a_size(loop_factory, first):
    """A held export of the bytearray makes data_received fail as extend()
    does (BufferError, fatal error), whichever read path comes next."""
    loop = loop_factory()
    reports, closing = _fatal_error_scenario(
        loop, lambda reader: memoryview(reader._buffer), size=first
    )
    assert reports == [("Fatal error: protocol.data_received() call failed.", "BufferError")]
    assert closing


@pytest.mark.parametrize("before", [9000, 40_000])
def test_burst_bigger_than_the_read_expects(loop_factory, before):
    """A read sized by the last one (plus slack) fills up when a burst is
    already waiting in the socket: the rest still arrives, whole and in order,
    and a later small message after it too."""
    import socket

    loop = loop_factory()
    ours, theirs = socket.socketpair()
    # The burst is written while the loop does not run: it must fit.
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    theirs.settimeout(5)

    async def main():
        reader, writer = await asyncio.open_connection(sock=ours, limit=2**20)
        theirs.sendall(_payload(3, before)[:before])
        first = await reader.readexactly(before)
        # Queued in full before the loop looks at the fd again.
        burst = b"".join(_payload(i, 30_000)[:30_000] for i in range(5))
        theirs.sendall(burst)
        got = await asyncio.wait_for(reader.readexactly(len(burst)), 10)
        theirs.sendall(b"tail")
        tail = await asyncio.wait_for(reader.readexactly(4), 10)
        writer.close()
        return first == _payload(3, before)[:before], got == burst, tail

    try:
        assert run(loop, main()) == (True, True, b"tail")
    finally:
        theirs.close()


@pytest.mark.parametrize("state", ["cancelled", "done"])
def test_waiter_that_is_not_pending(loop_factory, state):
    """feed_data wakes the reader's waiter only if it is not cancelled: a
    cancelled one is left alone (the data stays buffered); one that already
    has a result makes set_result() raise InvalidStateError, a fatal error of
    the transport, as on the stdlib loop."""
    loop = loop_factory()
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(type(ctx.get("exception")).__name__))

    async def main():
        server, reader, writer = await echo_pair(loop)
        waiter = loop.create_future()
        if state == "cancelled":
            waiter.cancel()
        else:
            waiter.set_result(1)
        reader._waiter = waiter
        writer.write(b"abc")
        await asyncio.sleep(0.1)
        after = reader._waiter
        got = await asyncio.wait_for(reader.read(10), 1) if state == "cancelled" else None
        closing = writer.transport.is_closing()
        await close_pair(server, writer, failed=state == "done")
        return after, got, closing

    after, got, closing = run(loop, main())
    if state == "cancelled":
        assert (after, got, closing, errors) == (None, b"abc", False, [])
    else:
        assert (after, closing, errors) == (None, True, ["InvalidStateError"])
