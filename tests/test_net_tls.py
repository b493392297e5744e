"""TLS: ssl= on create_connection / create_server / connect_accepted_socket /
Unix sockets, streams over TLS, start_tls on both sides, handshake failures.

A self-signed certificate is made for the session with the openssl command.
Runs on the stdlib loop (oracle) and on tokioloop.
"""

import asyncio
import os
import socket
import ssl
import tempfile

import pytest

from net_helpers import HOST, CollectProtocol, certs, run  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)


def port_of(server):
    return server.sockets[0].getsockname()[1]


class TLSEcho(asyncio.Protocol):
    def connection_made(self, tr):
        self.tr = tr

    def data_received(self, data):
        self.tr.write(data)


def test_tls_echo_protocol(loop, certs):
    async def main():
        server = await loop.create_server(TLSEcho, HOST, 0, ssl=certs.server_context())
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_connection(
            lambda: proto, HOST, port_of(server), ssl=certs.client_context(), server_hostname="localhost"
        )
        assert tr.get_extra_info("sslcontext") is not None
        assert tr.get_extra_info("peercert")["subject"] == ((("commonName", "localhost"),),)
        assert tr.get_extra_info("cipher") is not None
        assert isinstance(tr.get_extra_info("ssl_object"), ssl.SSLObject)
        assert tr.get_extra_info("peername") == (HOST, port_of(server))
        assert tr.get_extra_info("socket") is not None
        payload = os.urandom(300_000)
        tr.write(payload)
        await proto.wait_for_bytes(len(payload))
        assert bytes(proto.data) == payload
        tr.close()
        await proto.done
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_tls_default_server_hostname_is_host(loop, certs):
    async def main():
        server = await loop.create_server(TLSEcho, HOST, 0, ssl=certs.server_context())
        # host "127.0.0.1" is in the certificate's subjectAltName
        tr, _ = await loop.create_connection(asyncio.Protocol, HOST, port_of(server), ssl=certs.client_context())
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_tls_streams(loop, certs):
    async def handle(reader, writer):
        data = await reader.readline()
        writer.write(data[:-1][::-1] + b"\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, HOST, 0, ssl=certs.server_context())
        async with server:
            reader, writer = await asyncio.open_connection(
                HOST, port_of(server), ssl=certs.client_context(), server_hostname="localhost"
            )
            writer.write(b"!sdrawkcab\n")
            line = await reader.readline()
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
        return line

    assert run(loop, main()) == b"backwards!\n"


def test_tls_verify_failed(loop, certs):
    async def main():
        server = await loop.create_server(TLSEcho, HOST, 0, ssl=certs.server_context())
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.create_connection(
                asyncio.Protocol,
                HOST,
                port_of(server),
                ssl=certs.untrusting_client_context(),
                server_hostname="localhost",
            )
        server.close()
        await server.wait_closed()

    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    run(loop, main())


def test_tls_hostname_mismatch(loop, certs):
    async def main():
        server = await loop.create_server(TLSEcho, HOST, 0, ssl=certs.server_context())
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch|doesn't match"):
            await loop.create_connection(
                asyncio.Protocol, HOST, port_of(server), ssl=certs.client_context(), server_hostname="wrong.example"
            )
        server.close()
        await server.wait_closed()

    loop.set_exception_handler(lambda lp, ctx: None)
    run(loop, main())


def test_tls_handshake_timeout(loop, certs):
    """A server that accepts but never speaks TLS: the client's handshake times out."""

    async def main():
        class Mute(asyncio.Protocol):
            pass

        server = await loop.create_server(Mute, HOST, 0)
        with pytest.raises(ConnectionAbortedError, match="SSL handshake is taking longer than 0.2 seconds"):
            await loop.create_connection(
                asyncio.Protocol,
                HOST,
                port_of(server),
                ssl=certs.client_context(),
                server_hostname="localhost",
                ssl_handshake_timeout=0.2,
            )
        server.close()

    loop.set_exception_handler(lambda lp, ctx: None)
    run(loop, main(), timeout=5)


def test_tls_bad_timeouts(loop, certs):
    for kw in (dict(ssl_handshake_timeout=0), dict(ssl_shutdown_timeout=-1)):
        s = socket.socket()
        try:
            with pytest.raises(ValueError):
                run(loop, loop.create_connection(
                    asyncio.Protocol, sock=s, ssl=certs.client_context(), server_hostname="x", **kw))  # fmt: skip
        finally:
            s.close()


def test_connect_accepted_socket_tls(loop, certs):
    lsock = socket.socket()
    lsock.bind((HOST, 0))
    lsock.listen()
    client = socket.create_connection(lsock.getsockname())
    conn, _ = lsock.accept()
    lsock.close()
    cctx = certs.client_context()

    def client_side():
        with cctx.wrap_socket(client, server_hostname="localhost") as tls:
            tls.sendall(b"over tls")
            return tls.recv(100)

    async def main():
        proto = CollectProtocol(loop)
        fut = loop.run_in_executor(None, client_side)
        tr, _ = await loop.connect_accepted_socket(lambda: proto, conn, ssl=certs.server_context())
        await proto.wait_for_bytes(8)
        tr.write(b"reply")
        got = await fut
        tr.close()
        await proto.done
        return bytes(proto.data), got

    try:
        assert run(loop, main()) == (b"over tls", b"reply")
    finally:
        client.close()


def test_start_tls_both_sides(loop, certs):
    """A plain connection negotiates, then both ends upgrade with start_tls."""

    async def main():
        upgraded = loop.create_future()

        class Srv(asyncio.Protocol):
            def connection_made(self, tr):
                self.tr = tr
                self.buf = b""

            def data_received(self, data):
                self.buf += data
                if self.buf == b"STARTTLS\n":
                    self.tr.write(b"GO\n")
                    upgraded.set_result((self.tr, self))

            def connection_lost(self, exc):
                pass

        server = await loop.create_server(Srv, HOST, 0)
        proto = CollectProtocol(loop)
        tr, _ = await loop.create_connection(lambda: proto, HOST, port_of(server))
        tr.write(b"STARTTLS\n")
        str_, sproto = await upgraded
        await proto.wait_for_bytes(3)
        assert bytes(proto.data) == b"GO\n"

        class SrvTLS(asyncio.Protocol):
            # start_tls() does not call connection_made(): the protocol
            # learns its transport from start_tls()'s result.
            tr = None

            def connection_made(self, tr):
                raise AssertionError("not called by start_tls")

            def data_received(self, data):
                self.tr.write(b"secret reply to " + data)

        stls_proto = SrvTLS()
        cproto = CollectProtocol(loop)
        server_tls, client_tls = await asyncio.gather(
            loop.start_tls(str_, stls_proto, certs.server_context(), server_side=True),
            loop.start_tls(tr, cproto, certs.client_context(), server_hostname="localhost"),
        )
        stls_proto.tr = server_tls
        cproto.transport = client_tls
        assert server_tls.get_protocol() is stls_proto
        assert client_tls.get_extra_info("peercert") is not None
        client_tls.write(b"hello")
        await cproto.wait_for_bytes(len(b"secret reply to hello"))
        assert bytes(cproto.data) == b"secret reply to hello"
        client_tls.close()
        await cproto.done
        server_tls.close()
        server.close()
        await server.wait_closed()

    run(loop, main())


def test_start_tls_streams(loop, certs):
    async def handle(reader, writer):
        assert await reader.readline() == b"upgrade\n"
        writer.write(b"ok\n")
        await writer.drain()
        await writer.start_tls(certs.server_context())
        line = await reader.readline()
        writer.write(b"tls:" + line)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, HOST, 0)
        async with server:
            reader, writer = await asyncio.open_connection(HOST, port_of(server))
            writer.write(b"upgrade\n")
            assert await reader.readline() == b"ok\n"
            await writer.start_tls(certs.client_context(), server_hostname="localhost")
            assert writer.get_extra_info("peercert") is not None
            writer.write(b"ping\n")
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
        return line

    assert run(loop, main()) == b"tls:ping\n"


def test_start_tls_wrong_args(loop, certs):
    async def main():
        class Srv(asyncio.Protocol):
            pass

        server = await loop.create_server(Srv, HOST, 0)
        tr, proto = await loop.create_connection(asyncio.Protocol, HOST, port_of(server))
        with pytest.raises(TypeError, match="SSLContext, got"):
            await loop.start_tls(tr, proto, None)
        with pytest.raises(TypeError, match="is not supported by start_tls"):
            await loop.start_tls(object(), proto, certs.client_context())
        tr.close()
        server.close()

    run(loop, main())


def test_tls_unix_socket(loop, certs):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "tls.sock")

    async def main():
        server = await loop.create_unix_server(TLSEcho, path, ssl=certs.server_context())
        proto = CollectProtocol(loop)
        with pytest.raises(ValueError, match="you have to pass server_hostname when using ssl"):
            await loop.create_unix_connection(lambda: proto, path, ssl=certs.client_context())
        tr, _ = await loop.create_unix_connection(
            lambda: proto, path, ssl=certs.client_context(), server_hostname="localhost"
        )
        tr.write(b"unix tls")
        await proto.wait_for_bytes(8)
        tr.close()
        await proto.done
        server.close()
        await server.wait_closed()

    try:
        run(loop, main())
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(d)


def test_tls_large_bidirectional_with_flow_control(loop, certs):
    payload = os.urandom(3 * 1024 * 1024)

    async def handle(reader, writer):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, HOST, 0, ssl=certs.server_context())
        reader, writer = await asyncio.open_connection(
            HOST, port_of(server), ssl=certs.client_context(), server_hostname="localhost"
        )

        async def send():
            for i in range(0, len(payload), 100_000):
                writer.write(payload[i : i + 100_000])
                await writer.drain()
            writer.write_eof() if writer.can_write_eof() else None

        sender = asyncio.ensure_future(send())
        got = await reader.readexactly(len(payload))
        await sender
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
        server.close()
        await server.wait_closed()
        return got == payload

    assert run(loop, main(), timeout=50)
