"""Unix domain stream sockets: create_unix_server / create_unix_connection,
stale socket files, cleanup_socket (3.13), abstract namespace, errors.

Runs on the stdlib loop (oracle) and on tokioloop.
"""

import asyncio
import errno
import os
import socket
import sys
import tempfile

import pytest

from net_helpers import CollectProtocol, EchoProtocol, run

pytestmark = pytest.mark.timeout(60)

PY313 = sys.version_info >= (3, 13)


@pytest.fixture
def sock_path():
    d = tempfile.mkdtemp(prefix="tl-unix-")
    path = os.path.join(d, "s.sock")
    yield path
    if os.path.exists(path):
        os.unlink(path)
    os.rmdir(d)


def test_unix_echo(loop, sock_path):
    async def main():
        server = await loop.create_unix_server(EchoProtocol, sock_path)
        assert server.sockets[0].family == socket.AF_UNIX
        assert server.sockets[0].getsockname() == sock_path
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_unix_connection(lambda: proto, sock_path)
        assert tr.get_extra_info("peername") == sock_path
        assert tr.can_write_eof()
        tr.write(b"unix")
        await proto.wait_for_bytes(4)
        tr.write_eof()
        await proto.done
        assert bytes(proto.data) == b"unix"
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_streams(loop, sock_path):
    async def handle(reader, writer):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_unix_server(handle, sock_path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(sock_path)
            writer.write(b"quiet\n")
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
        return line

    assert run(loop, main()) == b"QUIET\n"


def test_unix_pathlike(loop, sock_path):
    import pathlib

    async def main():
        server = await loop.create_unix_server(EchoProtocol, pathlib.Path(sock_path))
        tr, _ = await loop.create_unix_connection(asyncio.Protocol, pathlib.Path(sock_path))
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_stale_socket_file_is_replaced(loop, sock_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)
    stale.close()  # the file stays behind
    assert os.path.exists(sock_path)

    async def main():
        server = await loop.create_unix_server(EchoProtocol, sock_path)
        tr, _ = await loop.create_unix_connection(asyncio.Protocol, sock_path)
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_regular_file_is_not_removed(loop, sock_path):
    with open(sock_path, "w") as f:
        f.write("keep me")

    async def main():
        with pytest.raises(OSError) as info:
            await loop.create_unix_server(EchoProtocol, sock_path)
        return info.value

    exc = run(loop, main())
    assert exc.errno == errno.EADDRINUSE
    assert str(exc) == f"[Errno {errno.EADDRINUSE}] Address {sock_path!r} is already in use"
    with open(sock_path) as f:
        assert f.read() == "keep me"


def test_socket_file_after_close(loop, sock_path):
    """3.13 removes the socket file when the server closes (cleanup_socket);
    3.11/3.12 leave it."""

    async def main():
        server = await loop.create_unix_server(EchoProtocol, sock_path)
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert os.path.exists(sock_path) is (not PY313)


@pytest.mark.skipif(not PY313, reason="cleanup_socket is 3.13+")
def test_cleanup_socket_false(loop, sock_path):
    async def main():
        server = await loop.create_unix_server(EchoProtocol, sock_path, cleanup_socket=False)
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert os.path.exists(sock_path)


@pytest.mark.skipif(not PY313, reason="cleanup_socket is 3.13+")
def test_cleanup_socket_keeps_replaced_file(loop, sock_path):
    async def main():
        server = await loop.create_unix_server(EchoProtocol, sock_path)
        os.unlink(sock_path)
        with open(sock_path, "w"):
            pass  # someone else's file now
        server.close()
        await server.wait_closed()

    run(loop, main())
    assert os.path.isfile(sock_path)


def test_abstract_namespace(loop):
    name = f"\0tokioloop-test-{os.getpid()}-{id(loop)}"

    async def main():
        server = await loop.create_unix_server(EchoProtocol, name)
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_unix_connection(lambda: proto, name)
        tr.write(b"abstract")
        await proto.wait_for_bytes(8)
        tr.close()
        await proto.done
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_connection_with_sock(loop, sock_path):
    async def main():
        server = await loop.create_unix_server(EchoProtocol, sock_path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock_path)
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_unix_connection(lambda: proto, sock=s)
        tr.write(b"x")
        await proto.wait_for_bytes(1)
        tr.close()
        await proto.done
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_server_with_sock(loop, sock_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(sock_path)

    async def main():
        server = await loop.create_unix_server(EchoProtocol, sock=s)
        tr, _ = await loop.create_unix_connection(asyncio.Protocol, sock_path)
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_unix_errors(loop, sock_path):
    tcp = socket.socket()
    try:
        cases = [
            (loop.create_unix_connection(asyncio.Protocol), ValueError, "no path and sock were specified"),
            (loop.create_unix_connection(asyncio.Protocol, sock_path, sock=tcp), ValueError,
             "path and sock can not be specified at the same time"),
            (loop.create_unix_connection(asyncio.Protocol, sock=tcp), ValueError,
             "A UNIX Domain Stream Socket was expected, got"),
            (loop.create_unix_connection(asyncio.Protocol, sock_path, server_hostname="x"), ValueError,
             "server_hostname is only meaningful with ssl"),
            (loop.create_unix_connection(asyncio.Protocol, sock_path, ssl_handshake_timeout=1), ValueError,
             "ssl_handshake_timeout is only meaningful with ssl"),
            (loop.create_unix_server(asyncio.Protocol), ValueError, "path was not specified, and no sock specified"),
            (loop.create_unix_server(asyncio.Protocol, sock=tcp), ValueError,
             "A UNIX Domain Stream Socket was expected, got"),
            (loop.create_unix_server(asyncio.Protocol, sock_path, ssl=True), TypeError,
             "ssl argument must be an SSLContext or None"),
            (loop.create_unix_server(asyncio.Protocol, sock_path, ssl_shutdown_timeout=1), ValueError,
             "ssl_shutdown_timeout is only meaningful with ssl"),
            (loop.create_unix_connection(asyncio.Protocol, sock_path), FileNotFoundError, ""),
        ]  # fmt: skip
        for coro, exc, msg in cases:
            with pytest.raises(exc) as info:
                run(loop, coro)
            assert str(info.value).startswith(msg), (str(info.value), msg)
    finally:
        tcp.close()


def test_unix_many_connections_no_fd_leak(loop, sock_path):
    from net_helpers import open_fds

    async def main():
        server = await loop.create_unix_server(EchoProtocol, sock_path)

        async def one():
            r, w = await asyncio.open_unix_connection(sock_path)
            w.write(b"1")
            await r.readexactly(1)
            w.close()
            await w.wait_closed()

        for _ in range(5):
            await asyncio.gather(*(one() for _ in range(100)))
        server.close()
        await server.wait_closed()
        for _ in range(10):
            await asyncio.sleep(0.01)

    asyncio.set_event_loop(loop)
    run(loop, main())
    before = open_fds()
    run(loop, main())
    assert open_fds() <= before
