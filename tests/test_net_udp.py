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


# --------------------------------------------------------------------------
# native transport (src/datagram.rs): ordering, backlog, closing, addresses
# --------------------------------------------------------------------------


def _stdlib_313_leaks(loop):
    """3.13's stdlib loop counts 8 header bytes per queued datagram but does
    not take them off when it is sent: its buffer size never returns to 0."""
    return PY313 and isinstance(loop, asyncio.SelectorEventLoop)


def _unix_paths():
    d = tempfile.mkdtemp()
    return d, os.path.join(d, "a"), os.path.join(d, "b")


def _cleanup(d):
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


def test_udp_order_and_exact_payloads(loop):
    """Datagrams of many sizes arrive one per datagram_received, in order,
    each as exact-size bytes, with the sender's address (the same tuple for
    every datagram of one peer)."""

    async def main():
        got = []
        done = loop.create_future()
        sizes = [1, 7, 100, 1400, 9000, 65000, 0] + list(range(2, 200))

        class R(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                got.append((data, addr))
                if len(got) == len(expect):
                    done.set_result(None)

        st, _ = await loop.create_datagram_endpoint(R, local_addr=(HOST, 0))
        st.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        ct, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(HOST, 0))
        dst = st.get_extra_info("sockname")
        expect = []
        for i, n in enumerate(sizes):
            payload = bytes([i % 256]) * n
            if n or PY313:  # 3.11/3.12 drop empty datagrams
                expect.append(payload)
            # alternate the types sendto() accepts
            ct.sendto([bytes, bytearray, memoryview][i % 3](payload), dst)
            if i % 20 == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(done, 5)
        src = ct.get_extra_info("sockname")
        assert [d for d, _ in got] == expect
        assert all(type(d) is bytes for d, _ in got)
        assert all(a == src for _, a in got)
        ct.close()
        st.close()
        await asyncio.sleep(0)

    run(loop, main())


def test_udp_queue_copies_mutable_data_and_keeps_order(loop):
    """With a backlog (small SO_SNDBUF on a Unix datagram socket whose peer
    does not read), datagrams queue in order; a bytearray changed after
    sendto() is sent as it was; flow control pauses and resumes once; every
    datagram arrives, in order, once the peer reads."""
    d, spath, cpath = _unix_paths()

    async def main():
        events = []
        resumed = loop.create_future()

        class P(asyncio.DatagramProtocol):
            def pause_writing(self):
                events.append(("pause", tr.get_write_buffer_size()))

            def resume_writing(self):
                events.append(("resume", tr.get_write_buffer_size()))
                resumed.set_result(None)

        sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sink.bind(spath)
        sink.setblocking(False)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.bind(cpath)
        s.connect(spath)
        tr, _ = await loop.create_datagram_endpoint(P, sock=s)
        tr.set_write_buffer_limits(high=20000, low=2000)
        buf = bytearray(500)
        n = 0
        while tr.get_write_buffer_size() == 0 and n < 10000:
            buf[:8] = b"%08d" % n
            tr.sendto(buf)
            n += 1
        assert tr.get_write_buffer_size() > 0, "the send buffer never filled"
        first_queued = n - 1
        for _ in range(60):
            buf[:8] = b"%08d" % n
            tr.sendto(buf)
            buf[:8] = b"XXXXXXXX"  # must not change what was queued
            n += 1
        assert events and events[0][0] == "pause"
        assert events[0][1] > 20000
        header = 8 if PY313 else 0
        assert tr.get_write_buffer_size() == (n - first_queued) * (500 + header)
        assert "write=<polling" in repr(tr)
        got = []
        while len(got) < n:
            try:
                got.append(sink.recv(1000))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        await asyncio.wait_for(resumed, 5)
        assert [g[:8] for g in got] == [b"%08d" % i for i in range(n)]
        assert all(len(g) == 500 for g in got)
        assert [e for e, _ in events] == ["pause", "resume"]
        assert events[1][1] <= 2000
        for _ in range(100):
            if tr.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.001)
        if not _stdlib_313_leaks(loop):
            assert tr.get_write_buffer_size() == 0
        tr.close()
        sink.close()
        await asyncio.sleep(0.01)

    try:
        run(loop, main())
    finally:
        _cleanup(d)


@pytest.mark.parametrize("how", ["close", "abort"])
def test_close_or_abort_with_queued_datagrams(loop, how):
    """close() flushes what is queued, then connection_lost(None) once;
    abort() drops it and calls connection_lost(None) at once."""
    d, spath, cpath = _unix_paths()

    async def main():
        lost = []
        sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sink.bind(spath)
        sink.setblocking(False)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.bind(cpath)
        s.connect(spath)

        class P(asyncio.DatagramProtocol):
            def connection_lost(self, exc):
                lost.append(exc)

        tr, _ = await loop.create_datagram_endpoint(P, sock=s)
        n = 0
        while tr.get_write_buffer_size() == 0:
            tr.sendto(b"%08d" % n)
            n += 1
        for _ in range(10):
            tr.sendto(b"%08d" % n)
            n += 1
        getattr(tr, how)()
        assert tr.is_closing()
        tr.close()  # idempotent
        tr.sendto(b"late")  # after close: dropped (connected: counted, no error)
        await asyncio.sleep(0.02)
        got = []
        while True:
            try:
                got.append(sink.recv(100))
            except BlockingIOError:
                if how == "abort" or len(got) >= n:
                    break
                await asyncio.sleep(0.005)
        for _ in range(100):
            if lost:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)
        sink.close()
        return how, lost, len(got), n, tr.get_write_buffer_size(), s.fileno()

    try:
        how, lost, received, sent, size, fd = run(loop, main())
    finally:
        _cleanup(d)
    assert lost == [None]
    assert fd == -1
    # The stdlib leaves its datagram byte count stale after abort(); 0 here.
    if not isinstance(loop, asyncio.SelectorEventLoop) or (how == "close" and not PY313):
        assert size == 0
    if how == "close":
        assert received == sent
    else:
        assert received < sent


def test_connected_endpoint_error_received_then_recovers(loop):
    """ECONNREFUSED (ICMP) on a connected endpoint goes to error_received;
    the transport stays open and works once a peer listens there."""

    async def main():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        dead = s.getsockname()
        s.close()
        client = Client(loop)
        ct, _ = await loop.create_datagram_endpoint(lambda: client, remote_addr=dead)
        for _ in range(100):
            ct.sendto(b"ping")
            await asyncio.sleep(0.005)
            if client.errors:
                break
        assert client.errors and all(isinstance(e, ConnectionRefusedError) for e in client.errors)
        assert not ct.is_closing()
        # a peer appears at the address: traffic flows again
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(dead)
        peer.setblocking(False)
        ct.sendto(b"hello")
        for _ in range(200):
            try:
                data, src = peer.recvfrom(100)
                break
            except BlockingIOError:
                await asyncio.sleep(0.005)
        assert data == b"hello"
        peer.sendto(b"back", src)
        assert (await asyncio.wait_for(client.received.get(), 5))[0] == b"back"
        ct.close()
        assert await client.lost is None
        peer.close()

    run(loop, main())


def test_udp_protocol_exceptions_and_none_addr_like_stdlib():
    """A raising datagram_received goes to the exception handler; sendto()
    with addr=None on an unconnected endpoint is a fatal TypeError (the
    stdlib's socket.sendto(data, None)), closing the transport."""
    from conftest import run_scenario_on_both

    def scen(lp):
        async def main():
            ctxs = []
            lp.set_exception_handler(lambda _lp, ctx: ctxs.append(ctx))
            lost = lp.create_future()

            class R(asyncio.DatagramProtocol):
                def datagram_received(self, data, addr):
                    raise ZeroDivisionError("boom")

                def connection_lost(self, exc):
                    lost.set_result(exc)

            st, _ = await lp.create_datagram_endpoint(R, local_addr=(HOST, 0))
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.sendto(b"x", st.get_extra_info("sockname"))
            for _ in range(100):
                if ctxs:
                    break
                await asyncio.sleep(0.005)
            first = (type(ctxs[0].get("exception")).__name__, "Exception in callback" in ctxs[0]["message"])
            st.sendto(b"x")  # no address, not connected
            exc = await asyncio.wait_for(lost, 5)
            c.close()
            second = (ctxs[1]["message"], type(ctxs[1]["exception"]).__name__)
            return first, second, type(exc).__name__, st.is_closing()

        return lp.run_until_complete(main())

    std, tl = run_scenario_on_both(scen)
    assert std[0] == ("ZeroDivisionError", True)
    assert tl == std


def test_udp_addresses_like_stdlib():
    """The address objects datagram_received gets (IPv4, IPv6, Unix path,
    unnamed and abstract Unix senders) and sendto() to host names and
    4-tuples match the stdlib loop's."""
    from conftest import run_scenario_on_both

    def scen(lp):
        async def main():
            out = []
            q = asyncio.Queue()

            class R(asyncio.DatagramProtocol):
                def datagram_received(self, data, addr):
                    q.put_nowait((data, addr))

            async def one(family, local, send):
                tr, _ = await lp.create_datagram_endpoint(R, local_addr=local, family=family)
                where = tr.get_extra_info("sockname")
                send(where)
                data, addr = await asyncio.wait_for(q.get(), 5)
                tr.close()
                return data, addr, where

            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((HOST, 0))
            data, addr, _ = await one(socket.AF_INET, (HOST, 0), lambda w: s.sendto(b"v4", w))
            out.append((data, addr == s.getsockname(), type(addr).__name__, len(addr)))
            # sendto() with a host name (resolved by the socket module) and back
            tr, _ = await lp.create_datagram_endpoint(R, local_addr=(HOST, 0))
            s.setblocking(False)
            tr.sendto(b"by name", ("localhost", s.getsockname()[1]))
            for _ in range(200):
                try:
                    out.append(s.recvfrom(100)[0])
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.005)
            tr.close()
            s.close()
            if has_ipv6():
                s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                s6.bind(("::1", 0))
                data, addr, _ = await one(socket.AF_INET6, ("::1", 0), lambda w: s6.sendto(b"v6", w))
                out.append((data, addr == s6.getsockname(), len(addr), addr[0]))
                s6.close()
            d = tempfile.mkdtemp()
            try:
                path = os.path.join(d, "srv")
                u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # unnamed sender
                out.append((await one(socket.AF_UNIX, path, lambda w: u.sendto(b"unnamed", w)))[:2])
                u.close()
                os.unlink(path)
                u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                u.bind(os.path.join(d, "named"))
                data, addr, _ = await one(socket.AF_UNIX, path, lambda w: u.sendto(b"named", w))
                out.append((data, addr == os.path.join(d, "named"), type(addr).__name__))
                u.close()
                os.unlink(path)
                u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                u.bind(b"\0tokioloop-test-%d" % os.getpid())
                out.append((await one(socket.AF_UNIX, path, lambda w: u.sendto(b"abstract", w)))[:2])
                u.close()
            finally:
                _cleanup(d)
            return out

        return lp.run_until_complete(main())

    std, tl = run_scenario_on_both(scen)
    assert std[0] == (b"v4", True, "tuple", 2)
    assert tl == std


def test_datagrams_interleave_with_callbacks_like_stdlib():
    """Several datagrams waiting at once: a callback scheduled by
    datagram_received runs before the next datagram, pause_reading() in
    datagram_received stops delivery at once, and a protocol scheduling
    nothing gets them all (tokioloop reads a batch per readiness then)."""
    from conftest import run_scenario_on_both

    def scen(lp):
        async def main():
            log = []

            class P(asyncio.DatagramProtocol):
                def connection_made(self, tr):
                    self.tr = tr

                def datagram_received(self, data, addr):
                    log.append(data)
                    if data.startswith(b"cb"):
                        lp.call_soon(log.append, b"after " + data)
                    if data == b"pause":
                        self.tr.pause_reading()
                        lp.call_later(0.05, self.tr.resume_reading)

            tr, _ = await lp.create_datagram_endpoint(P, local_addr=(HOST, 0))
            dst = tr.get_extra_info("sockname")
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for batch in ([b"cb1", b"cb2", b"cb3"], [b"x1", b"pause", b"x2", b"x3"], [b"y%d" % i for i in range(40)]):
                for d in batch:
                    c.sendto(d, dst)
                await asyncio.sleep(0.02)
                log.append(b"--")
            await asyncio.sleep(0.1)
            c.close()
            tr.close()
            return log

        return lp.run_until_complete(main())

    std, tl = run_scenario_on_both(scen)
    assert std[:7] == [b"cb1", b"after cb1", b"cb2", b"after cb2", b"cb3", b"after cb3", b"--"]
    assert std[7:10] == [b"x1", b"pause", b"--"]
    assert tl == std


def test_datagram_endpoints_leave_no_fds_or_objects(loop):
    """Endpoints created and closed (with traffic, some aborted with data
    queued) release their sockets, epoll registrations and transports."""
    import gc
    import weakref

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    async def main():
        refs = []
        for i in range(50):
            got = loop.create_future()

            class P(asyncio.DatagramProtocol):
                def datagram_received(self, data, addr):
                    if not got.done():
                        got.set_result(data)

            st, _ = await loop.create_datagram_endpoint(P, local_addr=(HOST, 0))
            ct, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=st.get_extra_info("sockname")
            )
            ct.sendto(b"%d" % i)
            assert await asyncio.wait_for(got, 5) == b"%d" % i
            refs += [weakref.ref(st), weakref.ref(ct)]
            (ct.abort if i % 2 else ct.close)()
            st.close()
            del st, ct, P
        await asyncio.sleep(0.01)
        return refs

    run(loop, asyncio.sleep(0))  # the loop's own lazily made fds
    run(loop, loop.getaddrinfo(HOST, 0))  # and the executor's
    before = open_fds()
    refs = run(loop, main())
    gc.collect()
    assert open_fds() <= before
    assert [r for r in refs if r() is not None] == []
