"""Server objects: lifecycle (close / wait_closed / serve_forever / async with /
start_serving), sockets, multiple hosts, options, accept-loop resource errors.

Runs on the stdlib loop (oracle) and on tokioloop.
"""

import asyncio
import errno
import socket
import sys

import pytest

from asyncio import trsock
from net_helpers import HOST, CollectProtocol, EchoProtocol, has_ipv6, run

pytestmark = pytest.mark.timeout(60)

PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)


def port_of(server):
    return server.sockets[0].getsockname()[1]


def test_server_basics(loop):
    async def main():
        server = await loop.create_server(EchoProtocol, HOST, 0)
        assert isinstance(server, asyncio.AbstractServer)
        assert server.get_loop() is loop
        assert server.is_serving()
        socks = server.sockets
        port = port_of(server)
        assert isinstance(socks, tuple) and len(socks) == 1
        assert isinstance(socks[0], trsock.TransportSocket)
        assert socks[0].getsockname()[0] == HOST
        assert repr(server).startswith("<Server sockets=(")
        server.close()
        assert not server.is_serving()
        assert server.sockets == ()
        server.close()  # idempotent
        await server.wait_closed()
        await server.wait_closed()
        # the listening socket is really closed
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, HOST, port)

    run(loop, main())


def test_start_serving_false(loop):
    async def main():
        server = await loop.create_server(EchoProtocol, HOST, 0, start_serving=False)
        assert not server.is_serving()
        port = port_of(server)
        # not listening yet: the connection is refused
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, HOST, port)
        await server.start_serving()
        assert server.is_serving()
        await server.start_serving()  # no-op
        r, w = await asyncio.open_connection(HOST, port)
        w.write(b"hi")
        assert await r.readexactly(2) == b"hi"
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_async_with(loop):
    async def main():
        async with await loop.create_server(EchoProtocol, HOST, 0) as server:
            assert server.is_serving()
            r, w = await asyncio.open_connection(HOST, port_of(server))
            w.write(b"ctx")
            assert await r.readexactly(3) == b"ctx"
            w.close()
            await w.wait_closed()
        assert not server.is_serving()
        assert server.sockets == ()

    run(loop, main())


def test_serve_forever_cancelled(loop):
    async def main():
        server = await loop.create_server(EchoProtocol, HOST, 0, start_serving=False)
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0.05)
        assert server.is_serving()
        with pytest.raises(RuntimeError, match="is already being awaited on serve_forever"):
            await server.serve_forever()
        r, w = await asyncio.open_connection(HOST, port_of(server))
        w.write(b"x")
        assert await r.readexactly(1) == b"x"
        w.close()
        await w.wait_closed()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        assert server.sockets == ()
        with pytest.raises(RuntimeError, match="is closed"):
            await server.serve_forever()

    run(loop, main())


def test_serve_forever_ends_when_closed(loop):
    async def main():
        server = await loop.create_server(EchoProtocol, HOST, 0)
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0.01)
        server.close()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(loop, main())


def test_wait_closed_waits_for_connections(loop):
    """3.12+: wait_closed() returns once the server is closed AND its
    connections are gone.  3.11: it returns at once after close()."""

    async def main():
        accepted = loop.create_future()

        class Srv(asyncio.Protocol):
            def connection_made(self, tr):
                accepted.set_result(tr)

        server = await loop.create_server(Srv, HOST, 0)
        proto = CollectProtocol(loop)
        ctr, _ = await loop.create_connection(lambda: proto, HOST, port_of(server))
        str_ = await accepted
        server.close()
        waiter = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.05)
        if PY312:
            assert not waiter.done()
            str_.close()
            await asyncio.wait_for(waiter, 5)
        else:
            assert waiter.done()
            str_.close()
        ctr.close()
        await proto.done

    run(loop, main())


@pytest.mark.skipif(not PY312, reason="3.12+ semantics")
def test_wait_closed_before_close_waits(loop):
    async def main():
        server = await loop.create_server(EchoProtocol, HOST, 0)
        waiter = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.02)
        assert not waiter.done()
        server.close()
        await asyncio.wait_for(waiter, 5)

    run(loop, main())


@pytest.mark.skipif(not PY313, reason="close_clients/abort_clients are 3.13+")
@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
def test_close_and_abort_clients(loop, how):
    async def main():
        server = await loop.create_server(EchoProtocol, HOST, 0)
        protos = []
        for _ in range(3):
            p = CollectProtocol(loop)
            await loop.create_connection(lambda: p, HOST, port_of(server))
            protos.append(p)
        await asyncio.sleep(0.05)
        server.close()
        getattr(server, how)()
        await asyncio.wait_for(server.wait_closed(), 5)
        for p in protos:
            await p.done

    run(loop, main())


@pytest.mark.skipif(PY313, reason="3.11/3.12 have no close_clients")
def test_no_close_clients_before_313(loop):
    async def main():
        server = await loop.create_server(EchoProtocol, HOST, 0)
        assert not hasattr(server, "close_clients")
        server.close()

    run(loop, main())


def test_create_server_sock(loop):
    sock = socket.socket()
    sock.bind((HOST, 0))

    async def main():
        server = await loop.create_server(EchoProtocol, sock=sock)
        assert server.sockets[0].fileno() == sock.fileno()
        r, w = await asyncio.open_connection(HOST, sock.getsockname()[1])
        w.write(b"s")
        assert await r.readexactly(1) == b"s"
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        assert sock.fileno() == -1

    run(loop, main())


@pytest.mark.parametrize(
    "kwargs,exc,msg",
    [
        (dict(), ValueError, "Neither host/port nor sock were specified"),
        (dict(host=HOST, port=0, ssl=True), TypeError, "ssl argument must be an SSLContext or None"),
        (dict(host=HOST, port=0, ssl_handshake_timeout=1), ValueError, "ssl_handshake_timeout is only meaningful with ssl"),
        (dict(host=HOST, port=0, ssl_shutdown_timeout=1), ValueError, "ssl_shutdown_timeout is only meaningful with ssl"),
        (dict(host=HOST, port=0, sock="tcp"), ValueError, "host/port and sock can not be specified at the same time"),
        (dict(sock="udp"), ValueError, "A Stream Socket was expected, got"),
    ],
)  # fmt: skip
def test_create_server_argument_errors(loop, kwargs, exc, msg):
    kw = dict(kwargs)
    made = []
    if kw.get("sock") == "tcp":
        kw["sock"] = socket.socket()
        made.append(kw["sock"])
    elif kw.get("sock") == "udp":
        kw["sock"] = socket.socket(type=socket.SOCK_DGRAM)
        made.append(kw["sock"])
    try:
        with pytest.raises(exc) as info:
            run(loop, loop.create_server(EchoProtocol, **kw))
        assert str(info.value).startswith(msg)
    finally:
        for s in made:
            s.close()


def test_create_server_addr_in_use(loop):
    async def main():
        server = await loop.create_server(EchoProtocol, HOST, 0)
        port = port_of(server)
        with pytest.raises(OSError) as info:
            await loop.create_server(EchoProtocol, HOST, port, reuse_address=False)
        server.close()
        await server.wait_closed()
        return info.value, port

    exc, port = run(loop, main())
    assert exc.errno == errno.EADDRINUSE
    assert f"error while attempting to bind on address ('{HOST}', {port}): " in str(exc)
    assert "address already in use" in str(exc)


def test_create_server_reuse_port(loop):
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT")

    async def main():
        s1 = await loop.create_server(EchoProtocol, HOST, 0, reuse_port=True)
        port = port_of(s1)
        assert s1.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        s2 = await loop.create_server(EchoProtocol, HOST, port, reuse_port=True)
        s1.close()
        s2.close()
        await s1.wait_closed()
        await s2.wait_closed()

    run(loop, main())


def test_create_server_reuse_address_default(loop):
    async def main():
        s = await loop.create_server(EchoProtocol, HOST, 0)
        assert s.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        s.close()
        s = await loop.create_server(EchoProtocol, HOST, 0, reuse_address=False)
        assert not s.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        s.close()

    run(loop, main())


@pytest.mark.skipif(not PY313, reason="keep_alive is 3.13+")
def test_create_server_keep_alive(loop):
    async def main():
        s = await loop.create_server(EchoProtocol, HOST, 0, keep_alive=True)
        assert s.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        s.close()

    run(loop, main())


@pytest.mark.skipif(PY313, reason="3.11/3.12 have no keep_alive")
def test_create_server_no_keep_alive_before_313(loop):
    with pytest.raises(TypeError):
        run(loop, loop.create_server(EchoProtocol, HOST, 0, keep_alive=True))


def test_create_server_multiple_hosts_and_dedup(loop):
    async def main():
        hosts = ["127.0.0.1", "127.0.0.1"]
        if has_ipv6():
            hosts.append("::1")
        server = await loop.create_server(EchoProtocol, hosts, 0)
        fams = sorted(s.family for s in server.sockets)
        expected = [socket.AF_INET] + ([socket.AF_INET6] if has_ipv6() else [])
        assert fams == sorted(expected)
        for s in server.sockets:
            if s.family == socket.AF_INET6:
                assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_create_server_all_interfaces_empty_host(loop):
    async def main():
        server = await loop.create_server(EchoProtocol, "", 0)
        assert server.sockets
        addrs = {s.getsockname()[0] for s in server.sockets}
        assert addrs <= {"0.0.0.0", "::"}
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_server_counts_connections_through_close(loop):
    """Connections attached to a server detach when they close, whichever
    side closes."""

    async def main():
        server = await loop.create_server(EchoProtocol, HOST, 0)
        port = port_of(server)
        writers = []
        for _ in range(5):
            r, w = await asyncio.open_connection(HOST, port)
            w.write(b"a")
            await r.readexactly(1)
            writers.append(w)
        server.close()
        for w in writers:
            w.close()
            await w.wait_closed()
        await asyncio.wait_for(server.wait_closed(), 5)

    run(loop, main())


class _FlakyListener(socket.socket):
    """A listening socket whose first accept() fails with EMFILE."""

    failures = 1

    def accept(self):
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_accept_out_of_resources_retries(loop, loop_kind, monkeypatch):
    monkeypatch.setattr(asyncio.constants, "ACCEPT_RETRY_DELAY", 0.1)
    sock = _FlakyListener(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    contexts = []

    async def main():
        loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
        server = await loop.create_server(EchoProtocol, sock=sock)
        r, w = await asyncio.open_connection(HOST, sock.getsockname()[1])
        w.write(b"retry")
        t0 = loop.time()
        assert await r.readexactly(5) == b"retry"
        waited = loop.time() - t0
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()
        return waited

    waited = run(loop, main())
    loop.set_exception_handler(None)
    assert [c["message"] for c in contexts] == ["socket.accept() out of system resource"]
    assert isinstance(contexts[0]["exception"], OSError)
    assert contexts[0]["exception"].errno == errno.EMFILE
    assert isinstance(contexts[0]["socket"], trsock.TransportSocket)
    if loop_kind == "tokioloop":
        # tokioloop stops accepting until the retry delay has passed (the
        # stdlib loop goes on calling accept() in the same batch).
        assert waited >= 0.05


def test_protocol_factory_error_is_contained(loop):
    """A failing protocol factory drops that connection; the server goes on."""

    calls = []

    def factory():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("factory failed")
        return EchoProtocol()

    async def main():
        server = await loop.create_server(factory, HOST, 0)
        port = port_of(server)
        r, w = await asyncio.open_connection(HOST, port)
        assert await r.read() == b""  # dropped
        w.close()
        await w.wait_closed()
        r, w = await asyncio.open_connection(HOST, port)
        w.write(b"ok")
        assert await r.readexactly(2) == b"ok"
        w.close()
        await w.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_many_pending_accepts(loop):
    """Many connections through a small backlog (accept batches of 10)."""

    async def main():
        server = await loop.create_server(EchoProtocol, HOST, 0, backlog=10)
        port = port_of(server)

        async def one(i):
            r, w = await asyncio.open_connection(HOST, port)
            w.write(b"%d;" % i)
            data = await r.readuntil(b";")
            w.close()
            await w.wait_closed()
            return data

        got = []
        for batch in range(6):
            got += await asyncio.gather(*(one(batch * 10 + i) for i in range(10)))
        assert got == [b"%d;" % i for i in range(60)]
        server.close()
        await server.wait_closed()

    run(loop, main())
