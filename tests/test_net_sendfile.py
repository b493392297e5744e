"""loop.sendfile() and loop.sock_sendfile(): native os.sendfile on socket
transports, the read+write fallback (TLS, forced), offsets/counts, errors.

Runs on the stdlib loop (oracle) and on tokioloop.
"""

import asyncio
import os
import socket
import tempfile

import pytest

from net_helpers import HOST, CollectProtocol, certs, run, rust_bug  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)

DATA = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4


@pytest.fixture
def datafile():
    fd, path = tempfile.mkstemp()
    os.write(fd, DATA)
    os.close(fd)
    f = open(path, "rb")
    yield f
    f.close()
    os.unlink(path)


class Sink(asyncio.Protocol):
    def __init__(self, loop):
        self.data = bytearray()
        self.done = loop.create_future()

    def connection_made(self, tr):
        self.tr = tr

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(exc)


async def pair(loop, ssl_ctx=None, client_ctx=None, sink=None):
    sink = sink or Sink(loop)
    server = await loop.create_server(lambda: sink, HOST, 0, ssl=ssl_ctx)
    proto = CollectProtocol(loop)
    kw = dict(ssl=client_ctx, server_hostname="localhost") if client_ctx else {}
    tr, _ = await loop.create_connection(lambda: proto, HOST, server.sockets[0].getsockname()[1], **kw)
    return server, sink, tr, proto


@pytest.mark.parametrize("fallback_only", [False, True], ids=["native", "forced-fallback"])
def test_sendfile_whole_file(loop, datafile, fallback_only, monkeypatch):
    if fallback_only:
        async def no_native(*args):
            raise asyncio.SendfileNotAvailableError("forced")

        monkeypatch.setattr(loop, "_sendfile_native", no_native, raising=False)

    async def main():
        server, sink, tr, proto = await pair(loop)
        tr.write(b"HEAD")
        n = await loop.sendfile(tr, datafile)
        tr.write(b"TAIL")
        tr.close()
        await sink.done
        await proto.done
        server.close()
        await server.wait_closed()
        return n, bytes(sink.data)

    n, got = run(loop, main())
    assert n == len(DATA)
    assert got == b"HEAD" + DATA + b"TAIL"
    assert datafile.tell() == len(DATA)


def test_sendfile_offset_count(loop, datafile):
    async def main():
        server, sink, tr, proto = await pair(loop)
        n = await loop.sendfile(tr, datafile, offset=1000, count=100_000)
        tr.close()
        await sink.done
        server.close()
        return n, bytes(sink.data)

    n, got = run(loop, main())
    assert n == 100_000
    assert got == DATA[1000:101_000]
    assert datafile.tell() == 101_000


def test_sendfile_keeps_reading_state_and_protocol(loop, datafile):
    async def main():
        server, sink, tr, proto = await pair(loop)
        assert tr.is_reading()
        await loop.sendfile(tr, datafile, count=10)
        assert tr.is_reading()
        assert tr.get_protocol() is proto
        sink.tr.write(b"still reading")
        await proto.wait_for_bytes(13)
        tr.close()
        await sink.done
        server.close()

    run(loop, main())


def test_sendfile_tls_uses_fallback(loop, datafile, certs):
    async def main():
        server, sink, tr, proto = await pair(loop, certs.server_context(), certs.client_context())
        n = await loop.sendfile(tr, datafile)
        with pytest.raises(RuntimeError, match="fallback is disabled"):
            await loop.sendfile(tr, datafile, fallback=False)
        tr.close()
        await sink.done
        server.close()
        return n, bytes(sink.data)

    n, got = run(loop, main())
    assert n == len(DATA) and got == DATA


def test_sendfile_closing_transport(loop, datafile):
    async def main():
        server, sink, tr, proto = await pair(loop)
        tr.close()
        with pytest.raises(RuntimeError, match="Transport is closing"):
            await loop.sendfile(tr, datafile)
        await sink.done
        server.close()

    run(loop, main())
    assert datafile.tell() == 0


def test_sendfile_datagram_not_supported(loop, datafile):
    async def main():
        tr, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, family=socket.AF_INET)
        try:
            with pytest.raises(RuntimeError, match="sendfile is not supported for transport"):
                await loop.sendfile(tr, datafile)
        finally:
            tr.close()

    run(loop, main())


def test_sendfile_pipe_not_supported(loop, datafile):
    async def main():
        r, w = os.pipe()
        wf = open(w, "wb", buffering=0)
        tr, _ = await loop.connect_write_pipe(asyncio.Protocol, wf)
        try:
            with pytest.raises(RuntimeError, match="sendfile is not supported for transport"):
                await loop.sendfile(tr, datafile)
        finally:
            tr.close()
            await asyncio.sleep(0)
            os.close(r)

    run(loop, main())


def test_sendfile_peer_closes_in_the_middle(loop, datafile):
    async def main():
        class Closer(Sink):
            def data_received(self, data):
                super().data_received(data)
                if len(self.data) >= 1024:
                    self.tr.close()

        server, sink, tr, proto = await pair(loop, sink=Closer(loop))
        tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = os.path.join(tempfile.gettempdir(), f"tl-big-{os.getpid()}")
        with open(big, "wb") as f:
            f.write(b"x" * (32 * 1024 * 1024))
        try:
            with open(big, "rb") as f, pytest.raises(ConnectionError):
                await loop.sendfile(tr, f)
        finally:
            os.unlink(big)
        await sink.done
        await proto.done
        assert tr.is_closing()
        server.close()

    run(loop, main(), timeout=30)


def test_sendfile_rejects_text_file_and_bad_args(loop, datafile):
    async def main():
        server, sink, tr, proto = await pair(loop)
        sock = tr.get_extra_info("socket")
        raw = socket.socket(fileno=os.dup(sock.fileno()))
        raw.setblocking(False)
        try:
            with open(datafile.name, "r") as tf:
                with pytest.raises(ValueError, match="file should be opened in binary mode"):
                    await loop.sock_sendfile(raw, tf)
            with pytest.raises(TypeError, match=r"count must be a positive integer \(got '1'\)"):
                await loop.sock_sendfile(raw, datafile, 0, "1")
            with pytest.raises(ValueError, match=r"count must be a positive integer \(got 0\)"):
                await loop.sock_sendfile(raw, datafile, 0, 0)
            with pytest.raises(TypeError, match=r"offset must be a non-negative integer \(got '1'\)"):
                await loop.sock_sendfile(raw, datafile, "1")
            with pytest.raises(ValueError, match=r"offset must be a non-negative integer \(got -1\)"):
                await loop.sock_sendfile(raw, datafile, -1)
            udp = socket.socket(type=socket.SOCK_DGRAM)
            udp.setblocking(False)
            with pytest.raises(ValueError, match="only SOCK_STREAM type sockets are supported"):
                await loop.sock_sendfile(udp, datafile)
            udp.close()
        finally:
            raw.close()
        tr.close()
        await sink.done
        server.close()

    run(loop, main())


# ------------------------------------------------------------- sock_sendfile


def _connected_socks():
    lsock = socket.socket()
    lsock.bind((HOST, 0))
    lsock.listen()
    a = socket.create_connection(lsock.getsockname())
    b, _ = lsock.accept()
    lsock.close()
    a.setblocking(False)
    return a, b


@pytest.mark.parametrize("fallback", [False, True])
def test_sock_sendfile(loop, datafile, fallback):
    a, b = _connected_socks()

    async def reader():
        got = bytearray()
        b.setblocking(False)
        while len(got) < len(DATA) - 10:
            got += await loop.sock_recv(b, 65536)
        return bytes(got)

    async def main():
        if fallback:
            # a file object without fileno(): native is not available
            import io

            f = io.BytesIO(DATA)
            n = await asyncio.gather(loop.sock_sendfile(a, f, 10), reader())
            return n, f.tell()
        n = await asyncio.gather(loop.sock_sendfile(a, datafile, 10), reader())
        return n, datafile.tell()

    try:
        (n, got), pos = run(loop, main())
        assert n == len(DATA) - 10
        assert got == DATA[10:]
        assert pos == len(DATA)
    finally:
        a.close()
        b.close()


def test_sock_sendfile_no_fallback(loop):
    import io

    a, b = _connected_socks()
    try:
        with pytest.raises(asyncio.SendfileNotAvailableError, match="not a regular file"):
            run(loop, loop.sock_sendfile(a, io.BytesIO(b"abc"), fallback=False))
    finally:
        a.close()
        b.close()


def test_sock_sendfile_empty_file(loop):
    a, b = _connected_socks()
    fd, path = tempfile.mkstemp()
    os.close(fd)
    try:
        with open(path, "rb") as f:
            assert run(loop, loop.sock_sendfile(a, f)) == 0
    finally:
        os.unlink(path)
        a.close()
        b.close()


def test_sock_sendfile_ssl_socket_rejected(loop, datafile):
    import ssl

    s = ssl.create_default_context().wrap_socket(socket.socket(), server_hostname="x", do_handshake_on_connect=False)
    try:
        with pytest.raises(TypeError, match="Socket cannot be of type SSLSocket"):
            run(loop, loop.sock_sendfile(s, datafile))
    finally:
        s.close()


def test_sendfile_write_during_native_sendfile_is_refused(loop, datafile, request):
    """The stdlib refuses transport.write() while a native sendfile runs."""

    async def main():
        server, sink, tr, proto = await pair(loop)
        started = loop.create_future()

        async def go():
            started.set_result(None)
            return await loop.sendfile(tr, datafile)

        t = asyncio.ensure_future(go())
        await started
        with pytest.raises(RuntimeError, match="sendfile is in progress"):
            tr.write(b"data")
        n = await t
        tr.close()
        await sink.done
        server.close()
        return n

    assert run(loop, main()) == len(DATA)


@pytest.mark.parametrize("native", [True, False], ids=["native", "fallback"])
def test_sendfile_after_unflushed_stream_write(loop, datafile, native, monkeypatch):
    """A stream writer with a paused protocol (big unflushed write) hands its
    transport to sendfile; afterwards drain() still works: the protocol got
    every resume_writing() it was owed and no unmatched one."""
    if not native:
        async def no_native(*args):
            raise asyncio.SendfileNotAvailableError("forced")

        monkeypatch.setattr(loop, "_sendfile_native", no_native, raising=False)

    async def main():
        total = loop.create_future()
        got = bytearray()

        async def handle(reader, writer):
            await asyncio.sleep(0.2)  # let the client's buffer fill up
            while chunk := await reader.read(1 << 20):
                got.extend(chunk)
            total.set_result(len(got))
            writer.close()

        server = await asyncio.start_server(handle, HOST, 0)
        reader, writer = await asyncio.open_connection(HOST, server.sockets[0].getsockname()[1])
        big = b"B" * (8 << 20)
        writer.write(big)  # far above the high-water mark: protocol paused
        n = await loop.sendfile(writer.transport, datafile)
        writer.write(b"after")
        await writer.drain()
        writer.write_eof()
        size = await total
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return n, size, bytes(got[: len(big)]) == big, bytes(got[len(big) : -5]) == DATA, bytes(got[-5:])

    n, size, big_ok, data_ok, tail = run(loop, main(), timeout=30)
    assert n == len(DATA)
    assert size == (8 << 20) + len(DATA) + 5
    assert big_ok and data_ok and tail == b"after"
