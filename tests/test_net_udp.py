"""create_datagram_endpoint and tokioloop's (pure-Python) datagram transport:
UDP echo, connected/unconnected sockets, errors, flow control, Unix datagrams.

Runs on the stdlib loop (oracle) and on tokioloop.
"""

import asyncio
import os
import socket
import sys
import tempfile

import pytest

from net_helpers import HOST, has_ipv6, run

pytestmark = pytest.mark.timeout(60)

PY313 = sys.version_info >= (3, 13)


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, tr):
        self.tr = tr

    def datagram_received(self, data, addr):
        self.tr.sendto(data.upper(), addr)


class Client(asyncio.DatagramProtocol):
    def __init__(self, loop):
        self.loop = loop
        self.received = asyncio.Queue()
        self.errors = []
        self.lost = loop.create_future()
        self.made = False

    def connection_made(self, tr):
        self.made = True

    def datagram_received(self, data, addr):
        self.received.put_nowait((data, addr))

    def error_received(self, exc):
        self.errors.append(exc)

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_udp_echo(loop):
    async def main():
        st, _ = await loop.create_datagram_endpoint(Echo, local_addr=(HOST, 0))
        addr = st.get_extra_info("sockname")
        assert st.get_extra_info("peername") is None
        assert isinstance(st, asyncio.BaseTransport)
        client = Client(loop)
        ct, cp = await loop.create_datagram_endpoint(lambda: client, remote_addr=addr)
        assert cp is client and client.made
        assert ct.get_extra_info("peername") == addr
        assert ct.get_extra_info("socket").type == socket.SOCK_DGRAM
        for word in (b"one", b"two", b"three"):
            ct.sendto(word)
        got = [await asyncio.wait_for(client.received.get(), 5) for _ in range(3)]
        assert sorted(d for d, _ in got) == [b"ONE", b"THREE", b"TWO"]
        assert all(a == addr for _, a in got)
        assert ct.get_write_buffer_size() == 0
        with pytest.raises(ValueError, match="Invalid address: must be None or"):
            ct.sendto(b"x", ("127.0.0.2", 9))
        with pytest.raises(TypeError, match="data argument must be a bytes-like object, not 'str'"):
            ct.sendto("str")
        ct.close()
        assert ct.is_closing()
        assert await client.lost is None
        st.close()
        await asyncio.sleep(0)

    run(loop, main())


def test_udp_unconnected_sendto(loop):
    async def main():
        st, _ = await loop.create_datagram_endpoint(Echo, local_addr=(HOST, 0))
        addr = st.get_extra_info("sockname")
        client = Client(loop)
        ct, _ = await loop.create_datagram_endpoint(lambda: client, family=socket.AF_INET)
        ct.sendto(b"hello", addr)
        data, src = await asyncio.wait_for(client.received.get(), 5)
        assert (data, src) == (b"HELLO", addr)
        ct.abort()
        await client.lost
        st.close()
        await asyncio.sleep(0)

    run(loop, main())


def test_udp_error_received(loop):
    """ICMP port unreachable on a connected UDP socket reaches error_received."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    dead = s.getsockname()
    s.close()

    async def main():
        client = Client(loop)
        ct, _ = await loop.create_datagram_endpoint(lambda: client, remote_addr=dead)
        for _ in range(50):
            ct.sendto(b"anyone?")
            await asyncio.sleep(0.01)
            if client.errors:
                break
        ct.close()
        await client.lost
        return client.errors

    errors = run(loop, main())
    assert errors and isinstance(errors[0], ConnectionRefusedError)


def test_udp_sock_argument(loop):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))

    async def main():
        tr, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock)
        assert tr.get_extra_info("sockname") == sock.getsockname()
        tr.close()
        await asyncio.sleep(0)
        assert sock.fileno() == -1

    run(loop, main())


def test_udp_errors(loop):
    tcp = socket.socket()
    udp = socket.socket(type=socket.SOCK_DGRAM)
    try:
        stream_msg = "A datagram socket was expected, got" if PY313 else "A UDP Socket was expected, got"
        cases = [
            (dict(sock=tcp), ValueError, stream_msg),
            (dict(sock=udp, local_addr=(HOST, 0)), ValueError,
             "socket modifier keyword arguments can not be used when sock is specified. (local_addr=('127.0.0.1', 0))"),
            (dict(sock=udp, reuse_port=True, family=socket.AF_INET), ValueError,
             "socket modifier keyword arguments can not be used when sock is specified. (family=2, reuse_port=True)"),
            (dict(), ValueError, "unexpected address family"),
            (dict(local_addr=("localhost", 0, 1)), TypeError, "2-tuple is expected"),
            (dict(family=socket.AF_UNIX, local_addr=("x", 1)), TypeError, "string is expected"),
        ]  # fmt: skip
        for kw, exc, msg in cases:
            with pytest.raises(exc) as info:
                run(loop, loop.create_datagram_endpoint(asyncio.DatagramProtocol, **kw))
            assert str(info.value).startswith(msg), (str(info.value), msg)
        # reuse_address is not a parameter at all (removed for security)
        with pytest.raises(TypeError):
            run(loop, loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(HOST, 0), reuse_address=True))
    finally:
        tcp.close()
        udp.close()


def test_udp_no_matching_family(loop):
    if not has_ipv6():
        pytest.skip("no IPv6")
    with pytest.raises(ValueError, match="can not get address information"):
        run(loop, loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(HOST, 0), remote_addr=("::1", 9)))  # fmt: skip


def test_udp_reuse_port_and_broadcast(loop):
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT")

    async def main():
        t1, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(HOST, 0), reuse_port=True)
        port = t1.get_extra_info("sockname")[1]
        t2, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(HOST, port), reuse_port=True, allow_broadcast=True
        )
        s = t2.get_extra_info("socket")
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        t1.close()
        t2.close()
        await asyncio.sleep(0)

    run(loop, main())


def test_udp_ipv6(loop):
    if not has_ipv6():
        pytest.skip("no IPv6")

    async def main():
        st, _ = await loop.create_datagram_endpoint(Echo, local_addr=("::1", 0))
        addr = st.get_extra_info("sockname")
        client = Client(loop)
        ct, _ = await loop.create_datagram_endpoint(lambda: client, remote_addr=("::1", addr[1]))
        ct.sendto(b"six")
        data, _ = await asyncio.wait_for(client.received.get(), 5)
        ct.close()
        st.close()
        await asyncio.sleep(0)
        return data

    assert run(loop, main()) == b"SIX"


def test_udp_empty_datagram(loop):
    """3.13 sends empty datagrams; 3.11/3.12 silently drop them."""

    async def main():
        received = asyncio.Queue()

        class R(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                received.put_nowait(data)

        st, _ = await loop.create_datagram_endpoint(R, local_addr=(HOST, 0))
        ct, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=st.get_extra_info("sockname"))
        ct.sendto(b"")
        ct.sendto(b"marker")
        first = await asyncio.wait_for(received.get(), 5)
        ct.close()
        st.close()
        await asyncio.sleep(0)
        return first

    assert run(loop, main()) == (b"" if PY313 else b"marker")


def test_unix_datagram(loop):
    d = tempfile.mkdtemp()
    spath = os.path.join(d, "srv")
    cpath = os.path.join(d, "cli")

    async def main():
        st, _ = await loop.create_datagram_endpoint(Echo, local_addr=spath, family=socket.AF_UNIX)
        client = Client(loop)
        ct, _ = await loop.create_datagram_endpoint(
            lambda: client, local_addr=cpath, remote_addr=spath, family=socket.AF_UNIX
        )
        ct.sendto(b"unix dgram")
        data, _ = await asyncio.wait_for(client.received.get(), 5)
        ct.close()
        st.close()
        await asyncio.sleep(0)
        return data

    try:
        assert run(loop, main()) == b"UNIX DGRAM"
    finally:
        for p in (spath, cpath):
            if os.path.exists(p):
                os.unlink(p)
        os.rmdir(d)


def test_datagram_flow_control_and_buffer(loop):
    """Datagrams that cannot be sent at once are buffered; the protocol is
    paused above the high-water mark and resumed when the buffer drains.
    (AF_UNIX datagrams: a full receive queue makes send() block, unlike UDP
    on loopback, which drops.)"""
    d = tempfile.mkdtemp()
    spath = os.path.join(d, "sink")
    cpath = os.path.join(d, "cli")

    async def main():
        events = []
        done = loop.create_future()

        class P(asyncio.DatagramProtocol):
            def pause_writing(self):
                events.append("pause")

            def resume_writing(self):
                events.append("resume")
                done.set_result(None)

        sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sink.bind(spath)
        sink.setblocking(False)
        tr, _ = await loop.create_datagram_endpoint(
            P, local_addr=cpath, remote_addr=spath, family=socket.AF_UNIX
        )
        tr.set_write_buffer_limits(high=8000, low=1000)
        assert tr.get_write_buffer_limits() == (1000, 8000)
        for _ in range(100000):
            tr.sendto(b"d" * 1000)
            if "pause" in events:
                break
        assert "pause" in events, "never paused"
        assert tr.get_write_buffer_size() > 8000
        received = 0

        async def drain_sink():
            nonlocal received
            while not done.done():
                try:
                    sink.recv(65536)
                    received += 1
                except BlockingIOError:
                    await asyncio.sleep(0.001)

        await asyncio.wait_for(asyncio.gather(done, drain_sink()), 10)
        assert events == ["pause", "resume"]
        assert tr.get_write_buffer_size() <= 1000 + 8
        tr.close()
        sink.close()
        await asyncio.sleep(0.05)

    try:
        run(loop, main())
    finally:
        for p in (spath, cpath):
            if os.path.exists(p):
                os.unlink(p)
        os.rmdir(d)


def test_udp_close_with_buffer_flushes(loop):
    async def main():
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind((HOST, 0))
        sink.setblocking(False)
        lost = loop.create_future()

        class P(asyncio.DatagramProtocol):
            def connection_lost(self, exc):
                lost.set_result(exc)

        tr, _ = await loop.create_datagram_endpoint(P, remote_addr=sink.getsockname())
        tr.sendto(b"last")
        tr.close()
        assert await lost is None
        await asyncio.sleep(0.01)
        assert sink.recv(100) == b"last"
        sink.close()

    run(loop, main())


def test_udp_repr(loop):
    async def main():
        tr, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(HOST, 0))
        r = repr(tr)
        assert "fd=" in r and "read=" in r
        tr.close()
        await asyncio.sleep(0)
        assert "closed" in repr(tr)

    run(loop, main())
