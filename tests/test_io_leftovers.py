"""Data left behind by one readiness event must be read without new data
arriving. tokioloop parks without looking at its epoll set again when the
last poll left nothing ready that will not wake tokio by itself (see
CoreLoop::set_settled in src/event_loop.rs); every handler that may leave
an fd readable has to say so. Each scenario sends everything at once and
then nothing more: a handler that wrongly claimed to have drained its fd
makes the loop sleep on the rest, and the test time out.
"""

import asyncio
import os
import socket
import threading
import time

import pytest

from net_helpers import HOST, run

pytestmark = pytest.mark.timeout(60)


def test_buffered_protocol_tiny_buffer(loop_factory):
    """Every read fills a 16-byte buffer: data is always left behind."""
    loop = loop_factory()
    total = 64 * 1024

    class Tiny(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(16)
            self.got = 0
            self.done = loop.create_future()

        def get_buffer(self, hint):
            return self.buf

        def buffer_updated(self, n):
            self.got += n
            if self.got == total and not self.done.done():
                self.done.set_result(None)

    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        a.sendall(b"x" * total)  # fits the socket buffers at once
        tr, pr = await loop.connect_accepted_socket(Tiny, b)
        await asyncio.wait_for(pr.done, 10)
        tr.close()
        a.close()
        return pr.got

    assert run(loop, main()) == total


def _fill(sock):
    """Sends into `sock` (non-blocking) until its buffers are full; returns
    how much went in. Nothing is sent after that."""
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 * 1024 * 1024)
    total = 0
    chunk = b"y" * 65536
    while True:
        try:
            total += sock.send(chunk)
        except BlockingIOError:
            return total


def test_protocol_burst_over_one_read(loop_factory):
    """More than one read's worth (256 KiB) queued at once, nothing after."""
    loop = loop_factory()

    class Sink(asyncio.Protocol):
        def __init__(self, total):
            self.total = total
            self.got = 0
            self.done = loop.create_future()

        def data_received(self, data):
            self.got += len(data)
            if self.got == self.total and not self.done.done():
                self.done.set_result(None)

    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        total = _fill(a)
        assert total > 256 * 1024, total
        tr, pr = await loop.connect_accepted_socket(lambda: Sink(total), b)
        await asyncio.wait_for(pr.done, 10)
        tr.close()
        a.close()
        return pr.got == total

    assert run(loop, main(), timeout=30)


def test_read_pipe_full_batch_then_eof(loop_factory):
    """A read pipe holding exactly one batch (1 MiB) and then EOF: the batch
    read fills up, so the EOF behind it must still be seen."""
    import fcntl

    loop = loop_factory()
    size = 1024 * 1024
    r, w = os.pipe()
    try:
        got_size = fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        got_size = 0
    if got_size < size:
        os.close(r)
        os.close(w)
        pytest.skip("cannot make a 1 MiB pipe here")
    os.set_blocking(w, False)
    assert os.write(w, b"z" * size) == size
    os.close(w)

    async def main():
        reader = asyncio.StreamReader(limit=4 * size)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb", 0)
        )
        return len(await reader.read(-1))

    assert run(loop, main(), timeout=30) == size


def test_datagrams_queued_at_once(loop_factory):
    loop = loop_factory()
    count = 200

    class Receiver(asyncio.DatagramProtocol):
        def __init__(self):
            self.n = 0
            self.done = loop.create_future()

        def datagram_received(self, data, addr):
            self.n += 1
            if self.n == count and not self.done.done():
                self.done.set_result(None)

    async def main():
        tr, pr = await loop.create_datagram_endpoint(Receiver, local_addr=(HOST, 0))
        addr = tr.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(count):
                s.sendto(b"%d" % i, addr)
        await asyncio.wait_for(pr.done, 10)
        tr.close()
        return pr.n

    assert run(loop, main()) == count


def test_add_reader_that_reads_one_byte(loop_factory):
    """asyncio's add_reader is level-triggered: a callback that reads one
    byte per call is called again while data is left."""
    loop = loop_factory()
    total = 300

    async def main():
        a, b = socket.socketpair()
        b.setblocking(False)
        got = bytearray()
        done = loop.create_future()

        def on_readable():
            got.extend(b.recv(1))
            if len(got) == total and not done.done():
                loop.remove_reader(b)
                done.set_result(None)

        loop.add_reader(b, on_readable)
        a.sendall(b"q" * total)
        await asyncio.wait_for(done, 10)
        a.close()
        b.close()
        return len(got)

    assert run(loop, main()) == total


def test_streams_echo_many_connections_then_quiet(loop_factory):
    """Request/response on many connections, each round sent at once; the
    loop sleeps between rounds with nothing left behind."""
    loop = loop_factory()

    async def main():
        async def echo(reader, writer):
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        conns = [await asyncio.open_connection(HOST, port) for _ in range(20)]
        for rnd in range(30):
            for _, w in conns:
                w.write(b"%04d" % rnd * 100)
            for r, _ in conns:
                assert await r.readexactly(400) == b"%04d" % rnd * 100
            await asyncio.sleep(0.002)
        for _, w in conns:
            w.close()
        server.close()
        await server.wait_closed()
        return True

    assert run(loop, main(), timeout=30)


@pytest.mark.parametrize("buffered", [False, True])
def test_data_and_fin_arriving_together(loop_factory, buffered):
    """Data and the peer's FIN queued together: the read takes the data and
    stops short of the EOF behind it, which no new wake-up will announce."""
    loop = loop_factory()

    class Proto(asyncio.BufferedProtocol if buffered else asyncio.Protocol):
        def __init__(self):
            self.got = b""
            self.buf = bytearray(65536)
            self.first = loop.create_future()
            self.eof = loop.create_future()

        def get_buffer(self, hint):
            return self.buf

        def buffer_updated(self, n):
            self.data_received(bytes(self.buf[:n]))

        def data_received(self, data):
            self.got += data
            if not self.first.done():
                self.first.set_result(None)

        def eof_received(self):
            self.eof.set_result(None)

    a, b = socket.socketpair()
    b.setblocking(False)

    async def connect():
        tr, pr = await loop.connect_accepted_socket(Proto, b)
        a.sendall(b"first")
        await asyncio.wait_for(pr.first, 10)
        return tr, pr

    tr, pr = run(loop, connect())

    def send_rest():
        # While the loop sleeps: data and FIN back to back, so that both are
        # queued by the time the loop, woken by the data, reads.
        time.sleep(0.05)
        a.sendall(b"second")
        a.shutdown(socket.SHUT_WR)

    # A plain thread: nothing but the socket may wake the loop.
    sender = threading.Thread(target=send_rest)
    t0 = time.monotonic()
    sender.start()
    # 5 s: the EOF must come with the data, not with the timeout's wake-up.
    run(loop, asyncio.wait_for(pr.eof, 5))
    elapsed = time.monotonic() - t0
    sender.join()
    assert elapsed < 2.5, elapsed
    assert pr.got == b"firstsecond"
    tr.close()
    a.close()
    run(loop, asyncio.sleep(0))


def test_busy_loop_still_sees_new_data_within_two_iterations(loop_factory):
    """Right after a poll that left the epoll set settled, tokioloop runs the
    callbacks that poll's handlers scheduled before polling again (uvloop's
    order), so a busy loop looks at its fds every other iteration at least.
    Here data_received schedules a callback and makes the peer answer at
    once; a call_soon chain counts the iterations until the answer is read.
    The stdlib polls every iteration (1); tokioloop may take one more."""
    loop = loop_factory()
    ticks = []
    arrivals = []

    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        done = loop.create_future()
        running = [True]

        def tick():
            ticks.append(None)
            if running[0]:
                loop.call_soon(tick)

        class P(asyncio.Protocol):
            def data_received(self, data):
                arrivals.append((len(ticks), data))
                if len(arrivals) < 20:
                    loop.call_soon(lambda: None)
                    a.send(b"n")  # ready before the next iteration starts
                elif not done.done():
                    done.set_result(None)

        tr, _ = await loop.connect_accepted_socket(P, b)
        loop.call_soon(tick)
        a.send(b"0")
        await asyncio.wait_for(done, 10)
        running[0] = False
        tr.close()
        a.close()

    run(loop, main())
    assert len(arrivals) == 20
    gaps = [t2 - t1 for (t1, _), (t2, _) in zip(arrivals, arrivals[1:])]
    limit = 1 if loop_factory.kind == "asyncio" else 2
    assert max(gaps) <= limit, gaps
