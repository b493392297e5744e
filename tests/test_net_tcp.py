"""TCP transports: create_connection / create_server / connect_accepted_socket,
Protocol and BufferedProtocol, streams, flow control, half-close, errors.

Every test runs on the stdlib selector loop (the oracle) and on tokioloop.
"""

import asyncio
import errno
import gc
import socket
import sys
import threading

import pytest

import tokioloop
from net_helpers import HOST, BufferedCollect, CollectProtocol, EchoProtocol, has_ipv6, open_fds, run, rust_bug

pytestmark = pytest.mark.timeout(60)

PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)


async def echo_server(loop, **kw):
    return await loop.create_server(EchoProtocol, HOST, 0, **kw)


def port_of(server):
    return server.sockets[0].getsockname()[1]


# ------------------------------------------------------------------ echo


def test_echo_protocol(loop):
    async def main():
        server = await echo_server(loop)
        proto = CollectProtocol(loop)
        tr, pr = await loop.create_connection(lambda: proto, HOST, port_of(server))
        assert pr is proto
        assert proto.events[0] == "made"
        assert tr.get_protocol() is proto
        assert tr.get_extra_info("peername") == (HOST, port_of(server))
        assert tr.get_extra_info("sockname")[0] == HOST
        sock = tr.get_extra_info("socket")
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert tr.get_extra_info("nonexistent", "dflt") == "dflt"
        assert tr.can_write_eof()
        assert tr.is_reading()
        assert not tr.is_closing()
        tr.write(b"hello ")
        tr.writelines([b"wor", bytearray(b"ld"), memoryview(b"!")])
        await proto.wait_for_bytes(12)
        assert bytes(proto.data) == b"hello world!"
        tr.close()
        assert tr.is_closing()
        assert await proto.done is None
        assert proto.events == ["made", "data", "lost"]
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_echo_buffered_protocol(loop):
    payload = bytes(range(256)) * 400  # 100 KiB, several buffers of 1000

    async def main():
        server = await echo_server(loop)
        proto = BufferedCollect(loop)
        tr, _ = await loop.create_connection(lambda: proto, HOST, port_of(server))
        tr.write(payload)
        tr.write_eof()
        await proto.done
        assert bytes(proto.data) == payload
        assert proto.events == ["made", "eof", "lost"]
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_buffered_protocol_server_side(loop):
    async def main():
        got = loop.create_future()

        class Srv(asyncio.BufferedProtocol):
            def connection_made(self, tr):
                self.tr = tr
                self.buf = bytearray(7)
                self.data = bytearray()

            def get_buffer(self, hint):
                return memoryview(self.buf)[:5]

            def buffer_updated(self, n):
                self.data += self.buf[:n]

            def eof_received(self):
                got.set_result(bytes(self.data))
                self.tr.write(b"bye")
                return False

        server = await loop.create_server(Srv, HOST, 0)
        r, w = await asyncio.open_connection(HOST, port_of(server))
        w.write(b"x" * 1234)
        w.write_eof()
        assert await got == b"x" * 1234
        assert await r.read() == b"bye"
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_large_transfer_both_ways(loop):
    payload = b"0123456789abcdef" * (1 << 16)  # 1 MiB

    async def main():
        server = await echo_server(loop)
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_connection(lambda: proto, HOST, port_of(server))
        for i in range(0, len(payload), 100_000):
            tr.write(payload[i : i + 100_000])
        await proto.wait_for_bytes(len(payload))
        assert bytes(proto.data) == payload
        tr.close()
        await proto.done
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=30)


# --------------------------------------------------------------- streams


def test_write_keeps_no_reference_to_sent_data(loop):
    """Data write() sent at once is not referenced afterwards (bytes, bytearray,
    memoryview); data still queued at abort() is let go then."""

    async def main():
        a, b = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        counts = []
        for data in (b"z" * 1000, bytearray(b"y" * 1000), memoryview(b"x" * 1000)):
            before = sys.getrefcount(data)
            for _ in range(10):
                transport.write(data)
            counts.append(sys.getrefcount(data) - before)
        big = b"q" * 20_000_000  # more than the socket takes: partly queued
        before = sys.getrefcount(big)
        transport.write(big)
        transport.abort()
        await asyncio.sleep(0)
        counts.append(sys.getrefcount(big) - before)
        b.close()
        return counts

    assert run(loop, main()) == [0, 0, 0, 0]


def test_streams_open_connection_start_server(loop):
    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, HOST, 0)
        async with server:
            reader, writer = await asyncio.open_connection(HOST, port_of(server))
            lines = []
            for word in (b"alpha\n", b"beta\n", b"gamma\n"):
                writer.write(word)
                await writer.drain()
                lines.append(await reader.readline())
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
        return lines

    asyncio.set_event_loop(loop)
    assert run(loop, main()) == [b"ALPHA\n", b"BETA\n", b"GAMMA\n"]


def test_streams_readexactly_large(loop):
    data = bytes(range(256)) * 4096  # 1 MiB

    async def handle(reader, writer):
        writer.write(data)
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, HOST, 0)
        reader, writer = await asyncio.open_connection(HOST, port_of(server))
        got = await reader.readexactly(len(data))
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return got == data

    assert run(loop, main(), timeout=30)


# ------------------------------------------------------------ flow control


def test_pause_resume_writing_slow_reader(loop):
    """The client writes into a server that does not read: the transport
    pauses the protocol above the high-water mark and resumes it once the
    reader catches up."""

    async def main():
        srv_transport = loop.create_future()

        class Lazy(asyncio.Protocol):
            def __init__(self):
                self.received = 0

            def connection_made(self, tr):
                tr.pause_reading()
                srv_transport.set_result((tr, self))

            def data_received(self, data):
                self.received += len(data)

        server = await loop.create_server(Lazy, HOST, 0)

        events = []
        resumed = loop.create_future()

        class Writer(asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr

            def pause_writing(self):
                events.append(("pause", self.tr.get_write_buffer_size()))

            def resume_writing(self):
                events.append(("resume", self.tr.get_write_buffer_size()))
                if not resumed.done():
                    resumed.set_result(None)

            def connection_lost(self, exc):
                pass

        tr, proto = await loop.create_connection(Writer, HOST, port_of(server))
        assert tr.get_write_buffer_limits() == (16384, 65536)
        tr.set_write_buffer_limits(high=20000, low=5000)
        assert tr.get_write_buffer_limits() == (5000, 20000)
        with pytest.raises(ValueError):
            tr.set_write_buffer_limits(high=10, low=20)
        str_, sproto = await srv_transport
        chunk = b"z" * 65536
        total = 0
        while not events:
            tr.write(chunk)
            total += len(chunk)
            await asyncio.sleep(0)
            assert total < 200 * 1024 * 1024, "never paused"
        assert events[0][0] == "pause" and events[0][1] > 20000
        assert tr.get_write_buffer_size() > 0
        str_.resume_reading()
        await resumed
        assert events[1][0] == "resume" and events[1][1] <= 5000
        while sproto.received < total:
            await asyncio.sleep(0.01)
        assert sproto.received == total
        assert tr.get_write_buffer_size() == 0
        tr.close()
        str_.close()
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=40)


def test_pause_resume_reading(loop):
    async def main():
        server = await echo_server(loop)
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_connection(lambda: proto, HOST, port_of(server))
        tr.pause_reading()
        assert not tr.is_reading()
        tr.pause_reading()  # idempotent
        tr.write(b"ping")
        await asyncio.sleep(0.1)
        assert proto.data == b""
        tr.resume_reading()
        assert tr.is_reading()
        tr.resume_reading()
        await proto.wait_for_bytes(4)
        assert proto.data == b"ping"
        tr.close()
        assert not tr.is_reading()
        await proto.done
        server.close()
        await server.wait_closed()

    run(loop, main())


# -------------------------------------------------------------- half-close


def test_half_close_write_eof(loop):
    async def main():
        srv_events = []
        srv_tr = []
        srv_done = loop.create_future()

        class Srv(asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr
                self.buf = b""
                srv_tr.append(tr)

            def data_received(self, data):
                self.buf += data

            def eof_received(self):
                srv_events.append(("eof", self.buf))
                # still allowed to write after the peer's EOF
                self.tr.write(b"reply:" + self.buf)
                self.tr.write_eof()
                return True  # keep the transport open

            def connection_lost(self, exc):
                srv_events.append(("lost", exc))
                srv_done.set_result(None)

        server = await loop.create_server(Srv, HOST, 0)
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_connection(lambda: proto, HOST, port_of(server))
        tr.write(b"question")
        tr.write_eof()
        with pytest.raises(RuntimeError):
            tr.write(b"after eof")
        await proto.eof
        assert bytes(proto.data) == b"reply:question"
        tr.close()
        await proto.done
        # After eof_received() returned True the transport stops reading: it
        # only goes away when closed.
        assert srv_events == [("eof", b"question")]
        assert not srv_tr[0].is_closing()
        srv_tr[0].close()
        await srv_done
        assert srv_events == [("eof", b"question"), ("lost", None)]
        assert proto.events == ["made", "data", "eof", "lost"]
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_eof_received_false_closes(loop):
    async def main():
        server = await echo_server(loop)
        proto = CollectProtocol(loop)  # eof_received returns None -> close
        tr, _ = await loop.create_connection(lambda: proto, HOST, port_of(server))
        tr.write(b"abc")
        await proto.wait_for_bytes(3)
        # the echo server closes its side when it sees our EOF
        tr.write_eof()
        await proto.done
        assert proto.events == ["made", "data", "eof", "lost"]
        assert tr.is_closing()
        server.close()
        await server.wait_closed()

    run(loop, main())


# ---------------------------------------------------------------- errors


def test_connection_refused(loop):
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()

    async def main():
        with pytest.raises(ConnectionRefusedError) as info:
            await loop.create_connection(asyncio.Protocol, HOST, port)
        return str(info.value)

    msg = run(loop, main())
    assert f"Connect call failed ('{HOST}', {port})" in msg


def test_peer_reset(loop):
    async def main():
        accepted = loop.create_future()

        class Srv(asyncio.Protocol):
            def connection_made(self, tr):
                accepted.set_result(tr)

        server = await loop.create_server(Srv, HOST, 0)
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_connection(lambda: proto, HOST, port_of(server))
        stran = await accepted
        # SO_LINGER 0 + close: the peer sends RST
        sock = stran.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        stran.abort()
        exc = await proto.done
        assert isinstance(exc, ConnectionResetError), exc
        assert proto.events == ["made", "lost"]
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_write_after_peer_reset_is_silent(loop):
    async def main():
        accepted = loop.create_future()

        class Srv(asyncio.Protocol):
            def connection_made(self, tr):
                accepted.set_result(tr)

        server = await loop.create_server(Srv, HOST, 0)
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_connection(lambda: proto, HOST, port_of(server))
        stran = await accepted
        stran.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        stran.abort()
        await proto.done
        for _ in range(10):
            tr.write(b"into the void")  # no exception, just dropped
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_abort_discards_buffer(loop):
    async def main():
        server = await echo_server(loop)
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_connection(lambda: proto, HOST, port_of(server))
        tr.abort()
        assert tr.is_closing()
        assert await proto.done is None
        tr.close()  # no-op
        tr.abort()
        assert proto.events == ["made", "lost"]
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_close_flushes_buffer(loop):
    payload = b"q" * (4 * 1024 * 1024)

    async def main():
        got = loop.create_future()

        class Srv(asyncio.Protocol):
            def connection_made(self, tr):
                self.n = 0

            def data_received(self, data):
                self.n += len(data)

            def connection_lost(self, exc):
                got.set_result(self.n)

        server = await loop.create_server(Srv, HOST, 0)
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_connection(lambda: proto, HOST, port_of(server))
        tr.write(payload)
        tr.close()
        assert await got == len(payload)
        await proto.done
        server.close()
        await server.wait_closed()

    run(loop, main(), timeout=30)


def test_connection_made_error_is_reported(loop):
    async def main():
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))

        class Bad(asyncio.Protocol):
            def connection_made(self, tr):
                raise ZeroDivisionError

        server = await loop.create_server(Bad, HOST, 0)
        r, w = await asyncio.open_connection(HOST, port_of(server))
        for _ in range(50):
            if errors:
                break
            await asyncio.sleep(0.01)
        w.close()
        await w.wait_closed()
        server.close()
        loop.set_exception_handler(None)
        return [type(c.get("exception")) for c in errors]

    assert ZeroDivisionError in run(loop, main())


# --------------------------------------------------- argument validation


def _outcome_async(loop, coro):
    try:
        run(loop, coro)
    except BaseException as e:  # noqa: BLE001
        return type(e), str(e)
    return ("ok",)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(host=HOST, port=1, server_hostname="x"),
        dict(host=None, port=None, ssl=True),
        dict(host=HOST, port=1, ssl_handshake_timeout=1),
        dict(host=HOST, port=1, ssl_shutdown_timeout=1),
        dict(host=None, port=None),
        dict(host=HOST, port=1, sock=socket.socket),
        dict(sock=lambda: socket.socket(type=socket.SOCK_DGRAM)),
    ],
    ids=["server_hostname", "ssl-no-host", "hs-timeout", "sd-timeout", "nothing", "sock+host", "dgram-sock"],
)
def test_create_connection_argument_errors(kwargs):
    results = []
    for kind in ("asyncio", "tokioloop"):
        lp = asyncio.SelectorEventLoop() if kind == "asyncio" else tokioloop.new_event_loop()
        kw = dict(kwargs)
        socks = []
        if callable(kw.get("sock")):
            kw["sock"] = kw["sock"]()
            socks.append(kw["sock"])
        try:
            out = _outcome_async(lp, lp.create_connection(asyncio.Protocol, **kw))
            results.append(out if "got <socket" not in str(out) else (out[0], "<sock>"))
        finally:
            for s in socks:
                s.close()
            lp.close()
    assert results[0] == results[1]
    assert results[0][0] is ValueError


def test_create_connection_rejects_ssl_socket(loop):
    import ssl

    ctx = ssl.create_default_context()
    raw = socket.socket()
    s = ctx.wrap_socket(raw, server_hostname="x", do_handshake_on_connect=False)
    try:
        with pytest.raises(TypeError, match="Socket cannot be of type SSLSocket"):
            run(loop, loop.create_connection(asyncio.Protocol, sock=s))
    finally:
        s.close()


@pytest.mark.skipif(not PY312, reason="all_errors is 3.12+")
def test_create_connection_all_errors(loop):
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()

    async def main():
        with pytest.raises(ExceptionGroup) as info:
            await loop.create_connection(asyncio.Protocol, HOST, port, all_errors=True)
        return info.value

    eg = run(loop, main())
    assert eg.message == "create_connection failed"
    assert [type(e) for e in eg.exceptions] == [ConnectionRefusedError]


@pytest.mark.skipif(PY312, reason="3.11 has no all_errors parameter")
def test_create_connection_no_all_errors_on_311(loop):
    with pytest.raises(TypeError):
        run(loop, loop.create_connection(asyncio.Protocol, HOST, 1, all_errors=True))


def test_create_connection_multiple_errors(loop):
    """Two addresses, two different errors: one combined OSError."""

    async def fake_getaddrinfo(*args, **kw):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (HOST, refused_port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", refused_port2)),
        ]

    s = socket.socket()
    s.bind((HOST, 0))
    refused_port = s.getsockname()[1]
    s2 = socket.socket()
    s2.bind(("127.0.0.2", 0))
    refused_port2 = s2.getsockname()[1]
    s.close()
    s2.close()
    loop.getaddrinfo = fake_getaddrinfo

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_connection(asyncio.Protocol, "example.invalid", 80)
        return str(info.value)

    msg = run(loop, main())
    assert msg.startswith("Multiple exceptions: ")
    assert str(refused_port) in msg and str(refused_port2) in msg


def test_create_connection_getaddrinfo_empty(loop):
    async def empty(*args, **kw):
        return []

    loop.getaddrinfo = empty
    with pytest.raises(OSError, match=r"getaddrinfo\(\) returned empty list"):
        run(loop, loop.create_connection(asyncio.Protocol, "example.invalid", 80))


def test_create_connection_local_addr(loop):
    async def main():
        server = await echo_server(loop)
        probe = socket.socket()
        probe.bind((HOST, 0))
        lport = probe.getsockname()[1]
        probe.close()
        tr, _ = await loop.create_connection(
            asyncio.Protocol, HOST, port_of(server), local_addr=(HOST, lport)
        )
        assert tr.get_extra_info("sockname") == (HOST, lport)
        tr.close()
        await asyncio.sleep(0)
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_connection_local_addr_in_use(loop):
    async def main():
        server = await echo_server(loop)
        busy = server.sockets[0].getsockname()
        with pytest.raises(OSError) as info:
            await loop.create_connection(asyncio.Protocol, HOST, port_of(server), local_addr=busy)
        server.close()
        await server.wait_closed()
        return info.value

    exc = run(loop, main())
    assert exc.errno == errno.EADDRINUSE
    assert str(exc).startswith(f"[Errno {errno.EADDRINUSE}] error while attempting to bind on address")


def test_create_connection_local_addr_nomatch_family(loop):
    if not has_ipv6():
        pytest.skip("no IPv6")

    async def main():
        with pytest.raises(OSError, match="no matching local address with family="):
            await loop.create_connection(asyncio.Protocol, HOST, 1, local_addr=("::1", 0))

    run(loop, main())


def test_happy_eyeballs(loop):
    """Two candidate addresses: the first refuses, the second wins."""

    async def main():
        server = await echo_server(loop)
        port = port_of(server)
        s = socket.socket()
        s.bind((HOST, 0))
        dead = s.getsockname()[1]
        s.close()

        async def fake_getaddrinfo(host, p, **kw):
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", (HOST, dead)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", (HOST, port)),
            ]

        loop.getaddrinfo = fake_getaddrinfo
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_connection(lambda: proto, "example.invalid", 1, happy_eyeballs_delay=0.05)
        assert tr.get_extra_info("peername") == (HOST, port)
        tr.write(b"eyeballs")
        await proto.wait_for_bytes(8)
        tr.close()
        await proto.done
        server.close()
        await server.wait_closed()

    run(loop, main())


# ------------------------------------------------ connect_accepted_socket


def test_connect_accepted_socket(loop):
    lsock = socket.socket()
    lsock.bind((HOST, 0))
    lsock.listen()
    client = socket.create_connection(lsock.getsockname())
    conn, _ = lsock.accept()
    lsock.close()

    async def main():
        proto = CollectProtocol(loop)
        tr, _ = await loop.connect_accepted_socket(lambda: proto, conn)
        client.sendall(b"from client")
        await proto.wait_for_bytes(11)
        tr.write(b"from server")
        tr.close()
        await proto.done
        return bytes(proto.data)

    try:
        assert run(loop, main()) == b"from client"
        client.settimeout(5)
        assert client.recv(100) == b"from server"
        assert client.recv(100) == b""
        assert conn.fileno() == -1  # the transport closed it
    finally:
        client.close()


def test_connect_accepted_socket_errors(loop):
    udp = socket.socket(type=socket.SOCK_DGRAM)
    tcp = socket.socket()
    try:
        with pytest.raises(ValueError, match="A Stream Socket was expected"):
            run(loop, loop.connect_accepted_socket(asyncio.Protocol, udp))
        with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful with ssl"):
            run(loop, loop.connect_accepted_socket(asyncio.Protocol, tcp, ssl_handshake_timeout=1))
        with pytest.raises(ValueError, match="ssl_shutdown_timeout is only meaningful with ssl"):
            run(loop, loop.connect_accepted_socket(asyncio.Protocol, tcp, ssl_shutdown_timeout=1))
    finally:
        udp.close()
        tcp.close()


def test_create_connection_with_sock(loop):
    async def main():
        server = await echo_server(loop)
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, (HOST, port_of(server)))
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_connection(lambda: proto, sock=s)
        assert tr.get_extra_info("socket").fileno() == s.fileno()
        tr.write(b"sock=")
        await proto.wait_for_bytes(5)
        tr.close()
        await proto.done
        assert s.fileno() == -1
        server.close()
        await server.wait_closed()

    run(loop, main())


# ------------------------------------------------------------ resources


def test_many_connections_no_fd_leak(loop):
    """2,000 connections opened and closed (in batches) leave no fd behind."""

    async def main():
        server = await echo_server(loop)
        port = port_of(server)

        async def one():
            r, w = await asyncio.open_connection(HOST, port)
            w.write(b"x")
            assert await r.readexactly(1) == b"x"
            w.close()
            await w.wait_closed()

        for _ in range(20):
            await asyncio.gather(*(one() for _ in range(100)))
        server.close()
        await server.wait_closed()
        # let server-side transports run connection_lost
        for _ in range(20):
            await asyncio.sleep(0.01)

    asyncio.set_event_loop(loop)
    run(loop, main())  # warm-up: executor threads, etc.
    gc.collect()
    before = open_fds()
    run(loop, main(), timeout=120)
    gc.collect()
    assert open_fds() <= before, (before, open_fds())


def test_transport_repr_and_closed_state(loop):
    async def main():
        server = await echo_server(loop)
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_connection(lambda: proto, HOST, port_of(server))
        r = repr(tr)
        assert "fd=" in r
        tr.close()
        await proto.done
        assert "closed" in repr(tr)
        assert tr.get_extra_info("socket") is not None  # extra survives close
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unclosed_transport_warns(loop, request):

    async def main():
        server = await echo_server(loop)
        tr, _ = await loop.create_connection(asyncio.Protocol, HOST, port_of(server))
        server.close()
        return tr

    tr = run(loop, main())
    loop.close()
    with pytest.warns(ResourceWarning, match="unclosed transport"):
        del tr
        gc.collect()


def test_transport_is_an_asyncio_transport(loop, request):

    async def main():
        server = await echo_server(loop)
        tr, _ = await loop.create_connection(asyncio.Protocol, HOST, port_of(server))
        try:
            return isinstance(tr, asyncio.Transport)
        finally:
            tr.close()
            server.close()
            await server.wait_closed()

    assert run(loop, main())


def test_threadsafe_write_from_other_thread_via_call_soon_threadsafe(loop):
    async def main():
        server = await echo_server(loop)
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_connection(lambda: proto, HOST, port_of(server))
        t = threading.Thread(target=lambda: loop.call_soon_threadsafe(tr.write, b"threaded"))
        t.start()
        await proto.wait_for_bytes(8)
        t.join()
        tr.close()
        await proto.done
        server.close()
        await server.wait_closed()
        return bytes(proto.data)

    assert run(loop, main()) == b"threaded"
