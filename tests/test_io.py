"""File-descriptor watchers, sock_* coroutines, name resolution."""

import asyncio
import errno
import os
import socket
import time

import pytest

from conftest import outcome, run_once, run_scenario_on_both

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def sockpair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def _run_until(loop, pred, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        loop.run_until_complete(asyncio.sleep(0.001))
    return pred()


# --------------------------------------------------------------------------
# add_reader / add_writer
# --------------------------------------------------------------------------


def test_add_reader_fires_on_data(loop, sockpair):
    a, b = sockpair
    got = []

    def on_readable(tag):
        got.append((tag, a.recv(100)))

    assert loop.add_reader(a.fileno(), on_readable, "tag") is None
    run_once(loop)
    assert got == []
    b.send(b"hello")
    assert _run_until(loop, lambda: got)
    assert got == [("tag", b"hello")]
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a.fileno()) is False


def test_add_reader_level_triggered(loop, sockpair):
    a, b = sockpair
    count = [0]

    def on_readable():
        count[0] += 1
        if count[0] == 3:
            a.recv(100)  # drain on the third call

    loop.add_reader(a.fileno(), on_readable)
    b.send(b"x")
    for _ in range(10):
        run_once(loop)
    loop.remove_reader(a.fileno())
    assert count[0] == 3


def test_add_writer_fires_when_writable(loop, sockpair):
    a, b = sockpair
    got = []
    assert loop.add_writer(a.fileno(), got.append, "w") is None
    assert _run_until(loop, lambda: got)
    assert loop.remove_writer(a.fileno()) is True
    n = len(got)
    run_once(loop)
    run_once(loop)
    assert len(got) == n
    assert loop.remove_writer(a.fileno()) is False


def test_add_reader_replaces_previous(loop, sockpair):
    a, b = sockpair
    got = []
    loop.add_reader(a.fileno(), got.append, "first")
    loop.add_reader(a.fileno(), lambda: (got.append("second"), a.recv(10)))
    b.send(b"x")
    assert _run_until(loop, lambda: got)
    assert got == ["second"]
    assert loop.remove_reader(a.fileno()) is True


def test_reader_and_writer_on_same_fd(loop, sockpair):
    a, b = sockpair
    events = []
    loop.add_reader(a.fileno(), lambda: (events.append("r"), a.recv(10)))
    loop.add_writer(a.fileno(), lambda: events.append("w"))
    b.send(b"x")
    assert _run_until(loop, lambda: "r" in events and "w" in events)
    assert loop.remove_writer(a.fileno()) is True
    events.clear()
    b.send(b"y")
    assert _run_until(loop, lambda: "r" in events)
    assert "w" not in events
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_writer(a.fileno()) is False


def test_add_reader_with_file_object(loop, sockpair):
    a, b = sockpair
    got = []
    loop.add_reader(a, lambda: got.append(a.recv(10)))
    b.send(b"obj")
    assert _run_until(loop, lambda: got)
    assert got == [b"obj"]
    assert loop.remove_reader(a) is True


def test_add_reader_on_pipe(loop):
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        got = []

        def on_read():
            data = os.read(r, 100)
            got.append(data)
            if not data:
                loop.remove_reader(r)

        loop.add_reader(r, on_read)
        os.write(w, b"pipe-data")
        assert _run_until(loop, lambda: got)
        os.close(w)
        w = None
        assert _run_until(loop, lambda: got and got[-1] == b"")
        assert got == [b"pipe-data", b""]
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


def test_reader_exception_goes_to_handler(loop, sockpair):
    a, b = sockpair
    ctxs = []
    loop.set_exception_handler(lambda lp, ctx: ctxs.append(ctx))

    def bad():
        a.recv(10)
        raise ValueError("reader failed")

    loop.add_reader(a.fileno(), bad)
    b.send(b"x")
    assert _run_until(loop, lambda: ctxs)
    loop.remove_reader(a.fileno())
    assert isinstance(ctxs[0]["exception"], ValueError)


def test_many_fds(loop):
    pairs = [socket.socketpair() for _ in range(100)]
    try:
        got = set()
        for i, (a, b) in enumerate(pairs):
            a.setblocking(False)
            loop.add_reader(a.fileno(), lambda i=i, a=a: (got.add(i), a.recv(10)))
        for a, b in pairs:
            b.send(b"x")
        assert _run_until(loop, lambda: len(got) == 100)
        for a, b in pairs:
            assert loop.remove_reader(a.fileno()) is True
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_remove_return_values_like_stdlib():
    def scen(lp):
        a, b = socket.socketpair()
        try:
            fd = a.fileno()
            return [
                outcome(lp.remove_reader, fd),
                outcome(lp.remove_writer, fd),
                outcome(lp.add_reader, fd, print),
                outcome(lp.remove_writer, fd),
                outcome(lp.remove_reader, fd),
                outcome(lp.remove_reader, fd),
                outcome(lp.add_writer, fd, print),
                outcome(lp.add_reader, fd, print),
                outcome(lp.remove_reader, fd),
                outcome(lp.remove_writer, fd),
                outcome(lp.remove_writer, fd),
                outcome(lp.remove_reader, 10**6),
            ]
        finally:
            a.close()
            b.close()

    std, tl = run_scenario_on_both(scen)
    assert tl == std


def _closed_fd():
    s = socket.socket()
    fd = s.fileno()
    s.close()
    return fd


@pytest.mark.parametrize(
    "bad",
    ["minus_one", "closed_fd", "str", "object", "float", "none", "huge", "negative_big"],
)
@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
def test_bad_fd_like_stdlib(method, bad):
    def scen(lp):
        fd = {
            "minus_one": -1,
            "closed_fd": _closed_fd(),
            "str": "abc",
            "object": None,  # replaced below
            "float": 3.5,
            "none": None,
            "huge": 10**6,
            "negative_big": -(2**40),
        }[bad]
        if bad == "object":
            fd = _NoFileno()
        fn = getattr(lp, method)
        if method.startswith("add"):
            r = outcome(fn, fd, print)
            # if it was accepted, undo it
            if r[0] == "ok":
                getattr(lp, method.replace("add", "remove"))(fd)
        else:
            r = outcome(fn, fd)
        if r[0] == "raise" and issubclass(r[1], OSError):
            return r[0], r[1]
        return r

    std, tl = run_scenario_on_both(scen)
    assert tl == std


class _NoFileno:
    def __repr__(self):
        return "<NoFileno>"


def test_closed_fd_while_registered_like_stdlib():
    def scen(lp):
        a, b = socket.socketpair()
        fd = a.fileno()
        lp.add_reader(fd, print)
        a.close()
        b.close()
        r = outcome(lp.remove_reader, fd)
        run_once(lp)
        return r

    std, tl = run_scenario_on_both(scen)
    assert tl == std


# --------------------------------------------------------------------------
# sock_* coroutines
# --------------------------------------------------------------------------


def test_sock_recv_sendall(loop, sockpair):
    a, b = sockpair

    async def main():
        await loop.sock_sendall(b, b"ping")
        data = await loop.sock_recv(a, 100)
        await loop.sock_sendall(a, b"pong")
        data2 = await loop.sock_recv(b, 100)
        return data, data2

    assert loop.run_until_complete(main()) == (b"ping", b"pong")


def test_sock_recv_waits_for_data(loop, sockpair):
    a, b = sockpair

    async def main():
        loop.call_later(0.05, b.send, b"late")
        t0 = time.monotonic()
        data = await loop.sock_recv(a, 100)
        return data, time.monotonic() - t0

    data, elapsed = loop.run_until_complete(main())
    assert data == b"late"
    assert elapsed >= 0.04


def test_sock_recv_into(loop, sockpair):
    a, b = sockpair
    buf = bytearray(10)

    async def main():
        loop.call_later(0.01, b.send, b"abc")
        n = await loop.sock_recv_into(a, buf)
        return n

    assert loop.run_until_complete(main()) == 3
    assert bytes(buf[:3]) == b"abc"


def test_sock_recv_eof(loop, sockpair):
    a, b = sockpair

    async def main():
        loop.call_later(0.01, b.shutdown, socket.SHUT_WR)
        return await loop.sock_recv(a, 10)

    assert loop.run_until_complete(main()) == b""


def test_sock_sendall_large(loop, sockpair):
    a, b = sockpair
    payload = os.urandom(4 * 1024 * 1024)

    async def reader():
        chunks = []
        n = 0
        while n < len(payload):
            c = await loop.sock_recv(a, 65536)
            if not c:
                break
            chunks.append(c)
            n += len(c)
        return b"".join(chunks)

    async def main():
        rt = asyncio.ensure_future(reader())
        await loop.sock_sendall(b, payload)
        return await rt

    assert loop.run_until_complete(main()) == payload


def test_sock_recv_cancel_unregisters(loop, sockpair):
    a, b = sockpair

    async def main():
        t = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        # fd no longer watched: a new reader can be installed and works
        got = loop.create_future()
        loop.add_reader(a.fileno(), lambda: got.done() or got.set_result(a.recv(10)))
        b.send(b"after")
        res = await asyncio.wait_for(got, 2)
        loop.remove_reader(a.fileno())
        return res

    assert loop.run_until_complete(main()) == b"after"


def test_udp_sendto_recvfrom(loop):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setblocking(False)
    tx.setblocking(False)
    rx.bind(("127.0.0.1", 0))
    tx.bind(("127.0.0.1", 0))
    try:

        async def main():
            n = await loop.sock_sendto(tx, b"dgram1", rx.getsockname())
            data, addr = await loop.sock_recvfrom(rx, 100)
            loop.call_later(0.01, tx.sendto, b"dgram2", rx.getsockname())
            buf = bytearray(100)
            nbytes, addr2 = await loop.sock_recvfrom_into(rx, buf)
            return n, data, addr, bytes(buf[:nbytes]), addr2

        n, data, addr, data2, addr2 = loop.run_until_complete(main())
        assert n == 6
        assert data == b"dgram1" and data2 == b"dgram2"
        assert addr == tx.getsockname() == addr2
    finally:
        rx.close()
        tx.close()


def test_sock_connect_accept(loop):
    srv = socket.socket()
    srv.setblocking(False)
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    cli = socket.socket()
    cli.setblocking(False)
    try:

        async def main():
            acc = asyncio.ensure_future(loop.sock_accept(srv))
            await asyncio.sleep(0.01)
            await loop.sock_connect(cli, srv.getsockname())
            conn, addr = await acc
            try:
                assert conn.gettimeout() == 0
                await loop.sock_sendall(cli, b"over tcp")
                data = await loop.sock_recv(conn, 100)
                return data, addr
            finally:
                conn.close()

        data, addr = loop.run_until_complete(main())
        assert data == b"over tcp"
        assert addr == cli.getsockname()
    finally:
        srv.close()
        cli.close()


def test_sock_connect_refused(loop):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cli = socket.socket()
    cli.setblocking(False)
    try:
        with pytest.raises(ConnectionRefusedError):
            loop.run_until_complete(loop.sock_connect(cli, ("127.0.0.1", port)))
    finally:
        cli.close()


def test_sock_connect_resolves_hostname(loop):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.socket()
    cli.setblocking(False)
    try:
        loop.run_until_complete(loop.sock_connect(cli, ("localhost", srv.getsockname()[1])))
        assert cli.getpeername() == srv.getsockname()
    finally:
        srv.close()
        cli.close()


@pytest.mark.parametrize(
    "op", ["sock_recv", "sock_recv_into", "sock_sendall", "sock_accept", "sock_connect", "sock_recvfrom", "sock_sendto"]
)
def test_blocking_socket_rejected_in_debug_like_stdlib(op):
    def scen(lp):
        lp.set_debug(True)
        kind = socket.SOCK_DGRAM if op in ("sock_recvfrom", "sock_sendto") else socket.SOCK_STREAM
        s = socket.socket(socket.AF_INET, kind)
        s.setblocking(True)
        try:
            coro = {
                "sock_recv": lambda: lp.sock_recv(s, 10),
                "sock_recv_into": lambda: lp.sock_recv_into(s, bytearray(10)),
                "sock_sendall": lambda: lp.sock_sendall(s, b"x"),
                "sock_accept": lambda: lp.sock_accept(s),
                "sock_connect": lambda: lp.sock_connect(s, ("127.0.0.1", 1)),
                "sock_recvfrom": lambda: lp.sock_recvfrom(s, 10),
                "sock_sendto": lambda: lp.sock_sendto(s, b"x", ("127.0.0.1", 9)),
            }[op]()
            return outcome(lp.run_until_complete, asyncio.wait_for(coro, 1))
        finally:
            s.close()

    std, tl = run_scenario_on_both(scen)
    assert std == ("raise", ValueError, "the socket must be non-blocking")
    assert tl == std


# --------------------------------------------------------------------------
# Name resolution
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host,port,kwargs",
    [
        ("127.0.0.1", 80, {"type": socket.SOCK_STREAM}),
        ("localhost", 8080, {"family": socket.AF_INET}),
        ("127.0.0.1", "http", {"proto": socket.IPPROTO_TCP}),
        (None, 0, {"flags": socket.AI_PASSIVE, "type": socket.SOCK_STREAM}),
        ("::1", 443, {"family": socket.AF_INET6, "type": socket.SOCK_DGRAM}),
    ],
)
def test_getaddrinfo_matches_socket_module(loop, host, port, kwargs):
    try:
        expected = socket.getaddrinfo(host, port, **kwargs)
    except socket.gaierror as e:
        pytest.skip(f"resolver cannot do this here: {e}")
    got = loop.run_until_complete(loop.getaddrinfo(host, port, **kwargs))
    assert got == expected


def test_getaddrinfo_error_like_stdlib():
    def scen(lp):
        r = outcome(lp.run_until_complete, lp.getaddrinfo("host.invalid", 80))
        return r[:2]

    std, tl = run_scenario_on_both(scen)
    assert std == ("raise", socket.gaierror)
    assert tl == std


def test_getnameinfo(loop):
    flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
    got = loop.run_until_complete(loop.getnameinfo(("127.0.0.1", 80), flags))
    assert got == ("127.0.0.1", "80") == socket.getnameinfo(("127.0.0.1", 80), flags)
    got2 = loop.run_until_complete(loop.getnameinfo(("127.0.0.1", 80)))
    assert got2 == socket.getnameinfo(("127.0.0.1", 80), 0)


def test_getaddrinfo_concurrent(loop):
    async def main():
        return await asyncio.gather(*(loop.getaddrinfo("127.0.0.1", p) for p in range(1000, 1020)))

    res = loop.run_until_complete(main())
    assert [r[0][4][1] for r in res] == list(range(1000, 1020))


# --------------------------------------------------------------------------
# I/O polling fairness
# --------------------------------------------------------------------------


def test_io_polled_every_iteration_like_stdlib():
    """The stdlib polls the selector (with timeout 0 when callbacks are ready)
    on every iteration, so a ready fd's callback runs in the very next
    iteration even if the ready queue is never empty."""

    def scen(lp):
        a, b = socket.socketpair()
        a.setblocking(False)
        try:
            counts = []
            n = [0]
            lp.add_reader(a.fileno(), lambda: n.__setitem__(0, n[0] + 1))
            b.send(b"x")
            time.sleep(0.01)
            for _ in range(4):
                run_once(lp)
                counts.append(n[0])
            lp.remove_reader(a.fileno())
            return counts
        finally:
            a.close()
            b.close()

    std, tl = run_scenario_on_both(scen)
    assert std == [1, 2, 3, 4]
    assert tl == std


def test_reader_not_starved_by_busy_callbacks(loop, sockpair):
    a, b = sockpair
    got = []
    spins = [0]

    def spin():
        spins[0] += 1
        if not got:
            loop.call_soon(spin)

    def on_read():
        got.append(a.recv(10))
        loop.stop()

    loop.add_reader(a.fileno(), on_read)
    loop.call_soon(spin)
    loop.call_later(0.02, b.send, b"data")
    watchdog = loop.call_later(3, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    watchdog.cancel()
    loop.remove_reader(a.fileno())
    assert got == [b"data"], f"reader starved (spins={spins[0]})"
    assert time.monotonic() - t0 < 1


def test_sock_recv_not_starved_by_busy_task(loop, sockpair):
    a, b = sockpair

    async def busy(stop):
        while not stop.is_set():
            await asyncio.sleep(0)

    async def main():
        stop = asyncio.Event()
        bt = asyncio.create_task(busy(stop))
        loop.call_later(0.02, b.send, b"hi")
        try:
            return await asyncio.wait_for(loop.sock_recv(a, 10), 2)
        finally:
            stop.set()
            await bt

    assert loop.run_until_complete(main()) == b"hi"


def test_io_timer_ready_order_in_one_iteration_like_stdlib():
    def scen(lp):
        a, b = socket.socketpair()
        a.setblocking(False)
        try:
            trace = []
            lp.add_reader(a.fileno(), lambda: (trace.append("io"), a.recv(10)))
            b.send(b"x")
            time.sleep(0.01)
            lp.call_at(lp.time() - 1, trace.append, "timer")
            lp.call_soon(trace.append, "soon")
            run_once(lp)
            run_once(lp)
            lp.remove_reader(a.fileno())
            return trace
        finally:
            a.close()
            b.close()

    std, tl = run_scenario_on_both(scen)
    assert tl == std
