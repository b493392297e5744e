"""Networking API of the tokioloop loop: streams, servers, TLS, sendfile,
pipes and datagrams.

`NetworkMixin` is a base class of `tokioloop.Loop`.  Byte streams (TCP,
Unix sockets, pipes) are carried by the native ``_tokioloop.StreamTransport``;
this module creates the sockets, resolves addresses, accepts connections,
wires protocols and layers TLS (``asyncio.sslproto.SSLProtocol``) over the
native transport.  Datagram endpoints use the native
``_tokioloop.DatagramTransport`` (src/datagram.rs).

Signatures, error types and messages follow asyncio of the running
interpreter (3.11, 3.12 or 3.13).
"""

from __future__ import annotations

import asyncio
import collections.abc
import errno
import functools
import io
import itertools
import os
import socket
import stat
import sys

from asyncio import constants, exceptions, sslproto, staggered, trsock
from asyncio.log import logger

from . import _tokioloop
from ._server import Server

try:
    import ssl as _ssl
except ImportError:  # pragma: no cover - CPython builds we support have ssl
    _ssl = None

__all__ = ("NetworkMixin",)

_PY312 = sys.version_info >= (3, 12)
_PY313 = sys.version_info >= (3, 13)

_HAS_IPv6 = hasattr(socket, "AF_INET6")

# The native stream transport.  Looked up leniently so that the package still
# imports against a core built before the transport existed.
StreamTransport = getattr(_tokioloop, "StreamTransport", None)
from ._transports import new_datagram_transport, new_stream_transport  # noqa: E402

_KIND_SOCKET = 0
_KIND_READ_PIPE = 1
_KIND_WRITE_PIPE = 2

# Chunk sizes of the sendfile fallbacks (the stdlib's values).
_TRANSPORT_FALLBACK_CHUNK = 16 * 1024


# --------------------------------------------------------------------- helpers


def _native_transport_class():
    if StreamTransport is None:
        raise NotImplementedError(
            "this build of tokioloop has no native stream transport "
            "(tokioloop._tokioloop.StreamTransport)"
        )
    return StreamTransport


def _check_ssl_socket(sock):
    if _ssl is not None and isinstance(sock, _ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


def _set_reuseport(sock):
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        )


def _set_result_unless_cancelled(fut, result):
    if not fut.cancelled():
        fut.set_result(result)


def _numeric_port(port):
    """The port as an int, 0 for "no port", or None if it needs a lookup."""
    if port is None or port == b"" or port == "":
        return 0
    try:
        return int(port)
    except (TypeError, ValueError):
        return None


def _literal_addrinfo(host, port, family, type, proto, flowinfo=0, scopeid=0):
    """An addrinfo tuple for a numeric IP host, or None when a real
    getaddrinfo() is needed (names, scoped IPv6, unusual types/protocols)."""
    if host is None or proto not in (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        return None
    if type == socket.SOCK_STREAM:
        proto = socket.IPPROTO_TCP
    elif type == socket.SOCK_DGRAM:
        proto = socket.IPPROTO_UDP
    else:
        return None
    port = _numeric_port(port)
    if port is None:
        return None
    if family == socket.AF_UNSPEC:
        families = (socket.AF_INET, socket.AF_INET6) if _HAS_IPv6 else (socket.AF_INET,)
    else:
        families = (family,)
    if isinstance(host, bytes):
        host = host.decode("idna")
    # A non-string host raises TypeError here, as in the stdlib.
    if "%" in host:
        return None
    for fam in families:
        try:
            socket.inet_pton(fam, host)
        except (OSError, ValueError):
            continue
        if _HAS_IPv6 and fam == socket.AF_INET6:
            return fam, type, proto, "", (host, port, flowinfo, scopeid)
        return fam, type, proto, "", (host, port)
    return None


def _interleave_by_family(addrinfos, first_family_count=1):
    """Reorder addrinfos so that families alternate (RFC 8305), keeping
    `first_family_count` addresses of the first family in front."""
    groups = {}
    for info in addrinfos:
        groups.setdefault(info[0], []).append(info)
    lists = list(groups.values())
    result = []
    if first_family_count > 1 and lists:
        result.extend(lists[0][: first_family_count - 1])
        lists[0] = lists[0][first_family_count - 1 :]
    for round_ in itertools.zip_longest(*lists):
        result.extend(info for info in round_ if info is not None)
    return result


def _is_socket_transport(transport):
    """A native stream transport over a socket (not over a pipe)."""
    return (
        StreamTransport is not None
        and isinstance(transport, StreamTransport)
        and isinstance(getattr(transport, "_sock", None), socket.socket)
    )


def _transport_extra(sock, extra):
    info = {} if extra is None else dict(extra)
    info["socket"] = trsock.TransportSocket(sock)
    try:
        info["sockname"] = sock.getsockname()
    except OSError:
        info["sockname"] = None
    if "peername" not in info:
        try:
            info["peername"] = sock.getpeername()
        except OSError:
            info["peername"] = None
    return info


def _retrieve_and_close_on_error(transport, loop, protocol):
    """Done-callback of an accepted connection's waiter (TLS handshake)."""

    def done(fut):
        if fut.cancelled():
            transport.close()
            return
        exc = fut.exception()
        if exc is None:
            return
        transport.close()
        if loop.get_debug():
            loop.call_exception_handler(
                {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                    "protocol": protocol,
                    "transport": transport,
                }
            )

    return done


class _FallbackSendfileProtocol:
    """Stands in for the user's protocol while the sendfile fallback writes,
    turning pause_writing/resume_writing into an awaitable."""

    def __init__(self, loop, transport, paused):
        self._loop = loop
        self._transport = transport
        self._proto = transport.get_protocol()
        self._should_resume_reading = transport.is_reading()
        self._should_resume_writing = paused
        transport.pause_reading()
        transport.set_protocol(self)
        self._write_ready_fut = loop.create_future() if paused else None

    async def drain(self):
        if self._transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        fut = self._write_ready_fut
        if fut is None:
            return
        await fut

    def connection_made(self, transport):
        raise RuntimeError("Invalid state: connection should have been established already.")

    def connection_lost(self, exc):
        fut = self._write_ready_fut
        if fut is not None and not fut.done():
            if exc is None:
                fut.set_exception(ConnectionError("Connection is closed by peer"))
            else:
                fut.set_exception(exc)
        self._proto.connection_lost(exc)

    def pause_writing(self):
        if self._write_ready_fut is not None:
            return
        self._write_ready_fut = self._loop.create_future()

    def resume_writing(self):
        fut = self._write_ready_fut
        if fut is None:
            return
        if not fut.done():
            fut.set_result(False)
        self._write_ready_fut = None

    def data_received(self, data):
        raise RuntimeError("Invalid state: reading should be paused")

    def eof_received(self):
        raise RuntimeError("Invalid state: reading should be paused")

    async def restore(self):
        self._transport.set_protocol(self._proto)
        if self._should_resume_reading:
            self._transport.resume_reading()
        fut = self._write_ready_fut
        if fut is not None:
            fut.cancel()
            # Nobody awaits it any more; keep a set exception from being logged.
            if fut.done() and not fut.cancelled():
                fut.exception()
        if self._should_resume_writing:
            self._proto.resume_writing()


# ----------------------------------------------------------------------- mixin


class NetworkMixin:
    """Networking methods of `tokioloop.Loop` (see the module docstring)."""

    # ------------------------------------------------------ transport wiring

    def _unix_server_inodes(self):
        try:
            return self.__dict__["_tokioloop_unix_server_sockets"]
        except KeyError:
            table = self.__dict__["_tokioloop_unix_server_sockets"] = {}
            return table

    def _new_stream_transport(self, sock, protocol, extra, server, kind):
        _native_transport_class()
        transport = new_stream_transport(self, sock, protocol, extra, server, kind)
        if server is not None:
            server._attach(transport)
        return transport

    def _start_stream_transport(self, transport, protocol, waiter, attach_reader=True):
        self.call_soon(protocol.connection_made, transport)
        if attach_reader:
            # Only start reading once connection_made() has run.
            self.call_soon(transport._attach_reader)
        if waiter is not None:
            self.call_soon(_set_result_unless_cancelled, waiter, None)

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        transport = self._new_stream_transport(
            sock, protocol, _transport_extra(sock, extra), server, _KIND_SOCKET
        )
        self._start_stream_transport(transport, protocol, waiter)
        return transport

    def _make_ssl_transport(
        self,
        rawsock,
        protocol,
        sslcontext,
        waiter=None,
        *,
        server_side=False,
        server_hostname=None,
        extra=None,
        server=None,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        ssl_protocol = sslproto.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    async def _create_connection_transport(
        self,
        sock,
        protocol_factory,
        ssl,
        server_hostname,
        server_side=False,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        sock.setblocking(False)
        protocol = protocol_factory()
        waiter = self.create_future()
        if ssl:
            sslcontext = None if isinstance(ssl, bool) else ssl
            transport = self._make_ssl_transport(
                sock,
                protocol,
                sslcontext,
                waiter,
                server_side=server_side,
                server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
            )
        else:
            transport = self._make_socket_transport(sock, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            waiter = None  # no cycle through the traceback
            raise
        return transport, protocol

    # -------------------------------------------------------- name lookups

    async def _ensure_resolved(
        self, address, *, family=0, type=socket.SOCK_STREAM, proto=0, flags=0, loop=None
    ):
        host, port = address[:2]
        info = _literal_addrinfo(host, port, family, type, proto, *address[2:])
        if info is not None:
            return [info]
        loop = self if loop is None else loop
        return await loop.getaddrinfo(host, port, family=family, type=type, proto=proto, flags=flags)

    # ---------------------------------------------------- create_connection

    async def _connect_sock(self, exceptions, addr_info, local_addr_infos=None):
        """Create, bind and connect one socket; its errors go to `exceptions`."""
        my_exceptions = []
        exceptions.append(my_exceptions)
        family, type_, proto, _, address = addr_info
        sock = None
        try:
            sock = socket.socket(family=family, type=type_, proto=proto)
            sock.setblocking(False)
            if local_addr_infos is not None:
                for lfamily, _, _, _, laddr in local_addr_infos:
                    if lfamily != family:
                        continue  # other family
                    try:
                        sock.bind(laddr)
                        break
                    except OSError as exc:
                        reason = str(exc).lower() if _PY313 else exc.strerror.lower()
                        my_exceptions.append(
                            OSError(
                                exc.errno,
                                f"error while attempting to bind on address {laddr!r}: {reason}",
                            )
                        )
                else:
                    if my_exceptions:
                        raise my_exceptions.pop()
                    raise OSError(f"no matching local address with {family=} found")
            await self.sock_connect(sock, address)
            return sock
        except OSError as exc:
            my_exceptions.append(exc)
            if sock is not None:
                sock.close()
            raise
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        finally:
            exceptions = my_exceptions = None

    async def _create_connection_impl(
        self,
        protocol_factory,
        host,
        port,
        ssl,
        family,
        proto,
        flags,
        sock,
        local_addr,
        server_hostname,
        ssl_handshake_timeout,
        ssl_shutdown_timeout,
        happy_eyeballs_delay,
        interleave,
        all_errors,
    ):
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if server_hostname is None and ssl:
            # The host is the default server_hostname; pass server_hostname=''
            # to skip the check.
            if not host:
                raise ValueError("You must set server_hostname when using ssl without a host")
            server_hostname = host
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if sock is not None:
            _check_ssl_socket(sock)
        if happy_eyeballs_delay is not None and interleave is None:
            interleave = 1  # happy eyeballs interleaves families by default

        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            infos = await self._ensure_resolved(
                (host, port), family=family, type=socket.SOCK_STREAM, proto=proto, flags=flags, loop=self
            )
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            if local_addr is not None:
                laddr_infos = await self._ensure_resolved(
                    local_addr,
                    family=family,
                    type=socket.SOCK_STREAM,
                    proto=proto,
                    flags=flags,
                    loop=self,
                )
                if not laddr_infos:
                    raise OSError("getaddrinfo() returned empty list")
            else:
                laddr_infos = None
            if interleave:
                infos = _interleave_by_family(infos, interleave)

            exceptions = []
            if happy_eyeballs_delay is None:
                for addrinfo in infos:
                    try:
                        sock = await self._connect_sock(exceptions, addrinfo, laddr_infos)
                        break
                    except OSError:
                        continue
            else:
                sock = await self._happy_eyeballs(exceptions, infos, laddr_infos, happy_eyeballs_delay)

            if sock is None:
                errors = [exc for sub in exceptions for exc in sub]
                try:
                    if all_errors:
                        raise ExceptionGroup("create_connection failed", errors)
                    if len(errors) == 1:
                        raise errors[0]
                    model = str(errors[0])
                    if all(str(exc) == model for exc in errors):
                        raise errors[0]
                    raise OSError("Multiple exceptions: {}".format(", ".join(str(exc) for exc in errors)))
                finally:
                    errors = exceptions = None
        else:
            if sock is None:
                raise ValueError("host and port was not specified and no sock specified")
            if sock.type != socket.SOCK_STREAM:
                # AF_UNIX stream sockets are accepted here too.
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")

        transport, protocol = await self._create_connection_transport(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if self.get_debug():
            sock = transport.get_extra_info("socket")
            logger.debug("%r connected to %s:%r: (%r, %r)", sock, host, port, transport, protocol)
        return transport, protocol

    async def _happy_eyeballs(self, exceptions, infos, laddr_infos, delay):
        """Race staggered connection attempts; close the sockets of attempts
        that also connected but lost the race."""
        connected = []

        async def attempt(addrinfo):
            s = await self._connect_sock(exceptions, addrinfo, laddr_infos)
            connected.append(s)
            return s

        winner, _, _ = await staggered.staggered_race(
            (functools.partial(attempt, addrinfo) for addrinfo in infos), delay, loop=self
        )
        for s in connected:
            if s is not winner:
                s.close()
        return winner

    if _PY312:

        async def create_connection(
            self,
            protocol_factory,
            host=None,
            port=None,
            *,
            ssl=None,
            family=0,
            proto=0,
            flags=0,
            sock=None,
            local_addr=None,
            server_hostname=None,
            ssl_handshake_timeout=None,
            ssl_shutdown_timeout=None,
            happy_eyeballs_delay=None,
            interleave=None,
            all_errors=False,
        ):
            """Connect to a TCP server; returns (transport, protocol)."""
            return await self._create_connection_impl(
                protocol_factory, host, port, ssl, family, proto, flags, sock, local_addr,
                server_hostname, ssl_handshake_timeout, ssl_shutdown_timeout,
                happy_eyeballs_delay, interleave, all_errors,
            )  # fmt: skip

    else:

        async def create_connection(
            self,
            protocol_factory,
            host=None,
            port=None,
            *,
            ssl=None,
            family=0,
            proto=0,
            flags=0,
            sock=None,
            local_addr=None,
            server_hostname=None,
            ssl_handshake_timeout=None,
            ssl_shutdown_timeout=None,
            happy_eyeballs_delay=None,
            interleave=None,
        ):
            """Connect to a TCP server; returns (transport, protocol)."""
            return await self._create_connection_impl(
                protocol_factory, host, port, ssl, family, proto, flags, sock, local_addr,
                server_hostname, ssl_handshake_timeout, ssl_shutdown_timeout,
                happy_eyeballs_delay, interleave, False,
            )  # fmt: skip

    async def create_unix_connection(
        self,
        protocol_factory,
        path=None,
        *,
        ssl=None,
        sock=None,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        assert server_hostname is None or isinstance(server_hostname, str)
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            if server_hostname is not None:
                raise ValueError("server_hostname is only meaningful with ssl")
            if ssl_handshake_timeout is not None:
                raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
            if ssl_shutdown_timeout is not None:
                raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")

        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("no path and sock were specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
            sock.setblocking(False)

        return await self._create_connection_transport(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    async def connect_accepted_socket(
        self, protocol_factory, sock, *, ssl=None, ssl_handshake_timeout=None, ssl_shutdown_timeout=None
    ):
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A Stream Socket was expected, got {sock!r}")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        _check_ssl_socket(sock)
        transport, protocol = await self._create_connection_transport(
            sock,
            protocol_factory,
            ssl,
            "",
            server_side=True,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if self.get_debug():
            sock = transport.get_extra_info("socket")
            logger.debug("%r handled: (%r, %r)", sock, transport, protocol)
        return transport, protocol

    # --------------------------------------------------------------- servers

    async def _create_server_getaddrinfo(self, host, port, family, flags):
        infos = await self._ensure_resolved(
            (host, port), family=family, type=socket.SOCK_STREAM, flags=flags, loop=self
        )
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned empty list")
        return infos

    async def _create_server_impl(
        self,
        protocol_factory,
        host,
        port,
        family,
        flags,
        sock,
        backlog,
        ssl,
        reuse_address,
        reuse_port,
        keep_alive,
        ssl_handshake_timeout,
        ssl_shutdown_timeout,
        start_serving,
    ):
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and ssl is None:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and ssl is None:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if sock is not None:
            _check_ssl_socket(sock)

        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            if reuse_address is None:
                reuse_address = os.name == "posix" and sys.platform != "cygwin"
            if host == "":
                hosts = [None]
            elif isinstance(host, str) or not isinstance(host, collections.abc.Iterable):
                hosts = [host]
            else:
                hosts = host
            infos = await asyncio.gather(
                *[self._create_server_getaddrinfo(h, port, family=family, flags=flags) for h in hosts]
            )
            infos = set(itertools.chain.from_iterable(infos))

            sockets = []
            completed = False
            try:
                for af, socktype, proto, _canonname, sa in infos:
                    try:
                        sock = socket.socket(af, socktype, proto)
                    except OSError:
                        # Most likely a family/type/protocol this host lacks.
                        if self.get_debug():
                            logger.warning(
                                "create_server() failed to create socket.socket(%r, %r, %r)",
                                af,
                                socktype,
                                proto,
                                exc_info=True,
                            )
                        continue
                    sockets.append(sock)
                    if reuse_address:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
                    if reuse_port:
                        _set_reuseport(sock)
                    if keep_alive:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
                    # One socket per family: no IPv4-mapped addresses on the
                    # IPv6 socket (Linux enables dual stack by default).
                    if _HAS_IPv6 and af == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
                    try:
                        sock.bind(sa)
                    except OSError as err:
                        reason = str(err).lower() if _PY313 else err.strerror.lower()
                        msg = "error while attempting to bind on address %r: %s" % (sa, reason)
                        if _PY313 and err.errno == errno.EADDRNOTAVAIL:
                            # The family is most likely not enabled (bpo-30945).
                            sockets.pop()
                            sock.close()
                            if self.get_debug():
                                logger.warning(msg)
                            continue
                        raise OSError(err.errno, msg) from None
                if _PY313 and not sockets:
                    raise OSError(
                        "could not bind on any address out of %r" % ([info[4] for info in infos],)
                    )
                completed = True
            finally:
                if not completed:
                    for s in sockets:
                        s.close()
        else:
            if sock is None:
                raise ValueError("Neither host/port nor sock were specified")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")
            sockets = [sock]

        for s in sockets:
            s.setblocking(False)

        server = Server(self, sockets, protocol_factory, ssl, backlog, ssl_handshake_timeout, ssl_shutdown_timeout)
        if start_serving:
            server._start_serving()
            # One loop iteration so that the add_reader calls take effect.
            await asyncio.sleep(0)
        if self.get_debug():
            logger.info("%r is serving", server)
        return server

    if _PY313:

        async def create_server(
            self,
            protocol_factory,
            host=None,
            port=None,
            *,
            family=socket.AF_UNSPEC,
            flags=socket.AI_PASSIVE,
            sock=None,
            backlog=100,
            ssl=None,
            reuse_address=None,
            reuse_port=None,
            keep_alive=None,
            ssl_handshake_timeout=None,
            ssl_shutdown_timeout=None,
            start_serving=True,
        ):
            """Create a TCP server bound to host (a str or a sequence) and port."""
            return await self._create_server_impl(
                protocol_factory, host, port, family, flags, sock, backlog, ssl,
                reuse_address, reuse_port, keep_alive, ssl_handshake_timeout,
                ssl_shutdown_timeout, start_serving,
            )  # fmt: skip

    else:

        async def create_server(
            self,
            protocol_factory,
            host=None,
            port=None,
            *,
            family=socket.AF_UNSPEC,
            flags=socket.AI_PASSIVE,
            sock=None,
            backlog=100,
            ssl=None,
            reuse_address=None,
            reuse_port=None,
            ssl_handshake_timeout=None,
            ssl_shutdown_timeout=None,
            start_serving=True,
        ):
            """Create a TCP server bound to host (a str or a sequence) and port."""
            return await self._create_server_impl(
                protocol_factory, host, port, family, flags, sock, backlog, ssl,
                reuse_address, reuse_port, None, ssl_handshake_timeout,
                ssl_shutdown_timeout, start_serving,
            )  # fmt: skip

    async def _create_unix_server_impl(
        self,
        protocol_factory,
        path,
        sock,
        backlog,
        ssl,
        ssl_handshake_timeout,
        ssl_shutdown_timeout,
        start_serving,
        cleanup_socket,
    ):
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")

        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Remove a stale socket file (not for abstract sockets, str or bytes).
            if path[0] not in (0, "\x00"):
                try:
                    if stat.S_ISSOCK(os.stat(path).st_mode):
                        os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    # The directory may allow creating the socket only.
                    logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    msg = f"Address {path!r} is already in use"
                    raise OSError(errno.EADDRINUSE, msg) from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("path was not specified, and no sock specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")

        if cleanup_socket:
            bound = sock.getsockname()
            if bound and bound[0] not in (0, "\x00"):
                try:
                    self._unix_server_inodes()[sock] = os.stat(bound).st_ino
                except FileNotFoundError:
                    pass

        sock.setblocking(False)
        server = Server(self, [sock], protocol_factory, ssl, backlog, ssl_handshake_timeout, ssl_shutdown_timeout)
        if start_serving:
            server._start_serving()
            await asyncio.sleep(0)
        return server

    if _PY313:

        async def create_unix_server(
            self,
            protocol_factory,
            path=None,
            *,
            sock=None,
            backlog=100,
            ssl=None,
            ssl_handshake_timeout=None,
            ssl_shutdown_timeout=None,
            start_serving=True,
            cleanup_socket=True,
        ):
            return await self._create_unix_server_impl(
                protocol_factory, path, sock, backlog, ssl, ssl_handshake_timeout,
                ssl_shutdown_timeout, start_serving, cleanup_socket,
            )  # fmt: skip

    else:

        async def create_unix_server(
            self,
            protocol_factory,
            path=None,
            *,
            sock=None,
            backlog=100,
            ssl=None,
            ssl_handshake_timeout=None,
            ssl_shutdown_timeout=None,
            start_serving=True,
        ):
            return await self._create_unix_server_impl(
                protocol_factory, path, sock, backlog, ssl, ssl_handshake_timeout,
                ssl_shutdown_timeout, start_serving, False,
            )  # fmt: skip

    # ------------------------------------------------------------ accepting

    def _start_serving(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        self.add_reader(
            sock.fileno(),
            self._accept_connection,
            protocol_factory,
            sock,
            sslcontext,
            server,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )

    def _retry_serving(self, protocol_factory, sock, sslcontext, server, backlog, hs_timeout, sd_timeout):
        # After an out-of-resources pause: only if that server still listens.
        if sock.fileno() == -1 or (server is not None and server._sockets is None):
            return
        self._start_serving(protocol_factory, sock, sslcontext, server, backlog, hs_timeout, sd_timeout)

    def _accept_connection(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        # Called once per readiness of the listening socket: accept what is
        # queued, up to `backlog` connections.
        debug = self.get_debug()
        for _ in range(backlog):
            try:
                conn, addr = sock.accept()
                if debug:
                    logger.debug("%r got a new connection from %r: %r", server, addr, conn)
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Nowhere to report it but the handler.  The fd stays
                    # readable, so stop watching it for a while.
                    self.call_exception_handler(
                        {
                            "message": "socket.accept() out of system resource",
                            "exception": exc,
                            "socket": trsock.TransportSocket(sock),
                        }
                    )
                    self.remove_reader(sock.fileno())
                    self.call_later(
                        constants.ACCEPT_RETRY_DELAY,
                        self._retry_serving,
                        protocol_factory,
                        sock,
                        sslcontext,
                        server,
                        backlog,
                        ssl_handshake_timeout,
                        ssl_shutdown_timeout,
                    )
                    return
                raise  # logged by the loop's exception handler
            else:
                self._accept_one(
                    protocol_factory,
                    conn,
                    {"peername": addr},
                    sslcontext,
                    server,
                    ssl_handshake_timeout,
                    ssl_shutdown_timeout,
                )

    def _accept_one(
        self,
        protocol_factory,
        conn,
        extra,
        sslcontext,
        server,
        ssl_handshake_timeout,
        ssl_shutdown_timeout,
    ):
        protocol = None
        transport = None
        try:
            protocol = protocol_factory()
            if sslcontext:
                waiter = self.create_future()
                transport = self._make_ssl_transport(
                    conn,
                    protocol,
                    sslcontext,
                    waiter,
                    server_side=True,
                    extra=extra,
                    server=server,
                    ssl_handshake_timeout=ssl_handshake_timeout,
                    ssl_shutdown_timeout=ssl_shutdown_timeout,
                )
                waiter.add_done_callback(_retrieve_and_close_on_error(transport, self, protocol))
            else:
                transport = self._make_socket_transport(conn, protocol, extra=extra, server=server)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            else:
                transport.close()
            if self.get_debug():
                context = {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                }
                if protocol is not None:
                    context["protocol"] = protocol
                if transport is not None:
                    context["transport"] = transport
                self.call_exception_handler(context)

    def _stop_serving(self, sock):
        table = self.__dict__.get("_tokioloop_unix_server_sockets")
        path = None
        if table and sock in table:
            try:
                path = sock.getsockname()
            except OSError:
                path = None
        if sock.fileno() != -1:
            self.remove_reader(sock.fileno())
        sock.close()
        if table and sock in table:
            prev_ino = table.pop(sock)
            if path:
                try:
                    if os.stat(path).st_ino == prev_ino:
                        os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)

    # ------------------------------------------------------------------- TLS

    async def start_tls(
        self,
        transport,
        protocol,
        sslcontext,
        *,
        server_side=False,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        """Upgrade `transport` to TLS; returns the new (TLS) transport."""
        if _ssl is None:
            raise RuntimeError("Python ssl module is not available")
        if not isinstance(sslcontext, _ssl.SSLContext):
            raise TypeError(
                f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
            )
        if not (getattr(transport, "_start_tls_compatible", False) or _is_socket_transport(transport)):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")

        waiter = self.create_future()
        ssl_protocol = sslproto.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=False,
        )
        # Pause first so that no data reaches the SSL protocol before its
        # connection_made().
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        conmade_cb = self.call_soon(ssl_protocol.connection_made, transport)
        resume_cb = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            conmade_cb.cancel()
            resume_cb.cancel()
            raise
        return ssl_protocol._app_transport

    # -------------------------------------------------------------- sendfile

    def _check_sendfile_params(self, sock, file, offset, count):
        if "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if not sock.type == socket.SOCK_STREAM:
            raise ValueError("only SOCK_STREAM type sockets are supported")
        if count is not None:
            if not isinstance(count, int):
                raise TypeError(f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(f"count must be a positive integer (got {count!r})")
        if not isinstance(offset, int):
            raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
        if offset < 0:
            raise ValueError(f"offset must be a non-negative integer (got {offset!r})")

    async def sock_sendfile(self, sock, file, offset=0, count=None, *, fallback=True):
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        _check_ssl_socket(sock)
        self._check_sendfile_params(sock, file, offset, count)
        try:
            return await self._sock_sendfile_native(sock, file, offset, count)
        except exceptions.SendfileNotAvailableError:
            if not fallback:
                raise
        return await self._sock_sendfile_fallback(sock, file, offset, count)

    async def _sock_sendfile_native(self, sock, file, offset, count):
        if not hasattr(os, "sendfile"):
            raise exceptions.SendfileNotAvailableError("os.sendfile() is not available")
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise exceptions.SendfileNotAvailableError("not a regular file")
        try:
            fsize = os.fstat(fileno).st_size
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file")
        blocksize = count if count else fsize
        if not blocksize:
            return 0  # empty file
        # On 32-bit builds, stay below 1 GiB per call (OverflowError).
        blocksize = min(blocksize, sys.maxsize // 2 + 1)

        fd = sock.fileno()
        fut = self.create_future()
        state = {"offset": offset, "total": 0, "watching": False}

        def update_filepos():
            if state["total"] > 0:
                os.lseek(fileno, state["offset"], os.SEEK_SET)

        def step():
            if fut.done():
                return
            total = state["total"]
            size = blocksize
            if count:
                size = min(blocksize, count - total)
                if size <= 0:
                    update_filepos()
                    fut.set_result(total)
                    return
            try:
                sent = os.sendfile(fd, fileno, state["offset"], size)
            except (BlockingIOError, InterruptedError):
                watch()
                return
            except OSError as exc:
                if state["watching"] and exc.errno == errno.ENOTCONN and type(exc) is not ConnectionError:
                    # The peer went away in the middle: report it the same
                    # way on every platform.
                    new_exc = ConnectionError("socket is not connected", errno.ENOTCONN)
                    new_exc.__cause__ = exc
                    exc = new_exc
                update_filepos()
                if total == 0:
                    # Typically a file that sendfile() cannot map: fall back
                    # to plain send().
                    fut.set_exception(exceptions.SendfileNotAvailableError("os.sendfile call failed"))
                else:
                    fut.set_exception(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                update_filepos()
                fut.set_exception(exc)
                return
            if sent == 0:  # end of file
                update_filepos()
                fut.set_result(total)
                return
            state["offset"] += sent
            state["total"] = total + sent
            watch()

        def watch():
            if not state["watching"]:
                state["watching"] = True
                self._add_writer(fd, step)

        def on_done(_fut):
            if state["watching"]:
                state["watching"] = False
                if sock.fileno() != -1:
                    self._remove_writer(fd)
            if _fut.cancelled():
                update_filepos()

        fut.add_done_callback(on_done)
        step()
        try:
            return await fut
        finally:
            fut = None

    async def _sock_sendfile_fallback(self, sock, file, offset, count):
        if offset:
            file.seek(offset)
        blocksize = (
            min(count, constants.SENDFILE_FALLBACK_READBUFFER_SIZE)
            if count
            else constants.SENDFILE_FALLBACK_READBUFFER_SIZE
        )
        buf = bytearray(blocksize)
        total_sent = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        break
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    break  # EOF
                await self.sock_sendall(sock, view[:read])
                total_sent += read
            return total_sent
        finally:
            if total_sent > 0 and hasattr(file, "seek"):
                file.seek(offset + total_sent)

    def _sendfile_mode(self, transport):
        mode = getattr(transport, "_sendfile_compatible", None)
        if mode is not None:
            return mode
        if _is_socket_transport(transport):
            return constants._SendfileMode.TRY_NATIVE
        return constants._SendfileMode.UNSUPPORTED

    async def sendfile(self, transport, file, offset=0, count=None, *, fallback=True):
        """Send a file over a transport; returns the number of bytes sent.

        Uses os.sendfile() on tokioloop's socket transports, reads and writes
        otherwise (TLS) unless fallback is false.
        """
        if transport.is_closing():
            raise RuntimeError("Transport is closing")
        mode = self._sendfile_mode(transport)
        if mode is constants._SendfileMode.UNSUPPORTED:
            raise RuntimeError(f"sendfile is not supported for transport {transport!r}")
        if mode is constants._SendfileMode.TRY_NATIVE:
            try:
                return await self._sendfile_native(transport, file, offset, count)
            except exceptions.SendfileNotAvailableError:
                if not fallback:
                    raise
        if not fallback:
            raise RuntimeError(
                f"fallback is disabled and native sendfile is not supported for transport {transport!r}"
            )
        return await self._sendfile_fallback(transport, file, offset, count)

    async def _sendfile_native(self, transp, file, offset, count):
        if not (StreamTransport is not None and isinstance(transp, StreamTransport)):
            raise exceptions.SendfileNotAvailableError("sendfile syscall is not supported")
        resume_reading = transp.is_reading()
        transp.pause_reading()
        transp._set_sendfile_active(True)
        try:
            await transp._flush_waiter()
            return await self.sock_sendfile(transp._sock, file, offset, count, fallback=False)
        finally:
            transp._set_sendfile_active(False)
            if resume_reading:
                transp.resume_reading()

    async def _sendfile_fallback(self, transp, file, offset, count):
        if offset:
            file.seek(offset)
        blocksize = min(count, _TRANSPORT_FALLBACK_CHUNK) if count else _TRANSPORT_FALLBACK_CHUNK
        buf = bytearray(blocksize)
        total_sent = 0
        paused = getattr(transp, "_protocol_paused", None)
        if paused is None:
            # The transport does not tell whether its protocol is paused:
            # let the buffer drain (the transport resumes the protocol
            # itself) so that it is not when we take over.
            flush = getattr(transp, "_flush_waiter", None)
            if flush is not None and transp.get_write_buffer_size():
                await flush()
            paused = False
        proto = _FallbackSendfileProtocol(self, transp, bool(paused))
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        break
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    break  # EOF
                await proto.drain()
                transp.write(view[:read])
                total_sent += read
            # Give the protocol back unpaused, so that it never sees a
            # resume_writing() without the pause_writing() we swallowed.
            fut = proto._write_ready_fut
            if fut is not None and not proto._should_resume_writing and not transp.is_closing():
                try:
                    await fut
                except ConnectionError:
                    pass
            return total_sent
        finally:
            if total_sent > 0 and hasattr(file, "seek"):
                file.seek(offset + total_sent)
            await proto.restore()

    # ----------------------------------------------------------------- pipes

    async def connect_read_pipe(self, protocol_factory, pipe):
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = self._make_read_pipe_transport(pipe, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        if self.get_debug():
            logger.debug("Read pipe %r connected: (%r, %r)", pipe.fileno(), transport, protocol)
        return transport, protocol

    async def connect_write_pipe(self, protocol_factory, pipe):
        protocol = protocol_factory()
        waiter = self.create_future()
        transport = self._make_write_pipe_transport(pipe, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        if self.get_debug():
            logger.debug("Write pipe %r connected: (%r, %r)", pipe.fileno(), transport, protocol)
        return transport, protocol

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        fileno = pipe.fileno()
        mode = os.fstat(fileno).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            raise ValueError("Pipe transport is for pipes/sockets only.")
        os.set_blocking(fileno, False)
        info = {} if extra is None else dict(extra)
        info["pipe"] = pipe
        transport = self._new_stream_transport(pipe, protocol, info, None, _KIND_READ_PIPE)
        self._start_stream_transport(transport, protocol, waiter)
        return transport

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        fileno = pipe.fileno()
        mode = os.fstat(fileno).st_mode
        is_socket = stat.S_ISSOCK(mode)
        is_fifo = stat.S_ISFIFO(mode)
        if not (stat.S_ISCHR(mode) or is_fifo or is_socket):
            raise ValueError("Pipe transport is only for pipes, sockets and character devices")
        os.set_blocking(fileno, False)
        info = {} if extra is None else dict(extra)
        info["pipe"] = pipe
        transport = self._new_stream_transport(pipe, protocol, info, None, _KIND_WRITE_PIPE)
        # Readability of a pipe's or socket's write end means the reader went
        # away; a character device (a tty) would report typed input instead.
        watch = is_socket or (is_fifo and not sys.platform.startswith("aix"))
        self._start_stream_transport(transport, protocol, waiter, attach_reader=watch)
        return transport

    # ------------------------------------------------------------- datagrams

    async def create_datagram_endpoint(
        self,
        protocol_factory,
        local_addr=None,
        remote_addr=None,
        *,
        family=0,
        proto=0,
        flags=0,
        reuse_port=None,
        allow_broadcast=None,
        sock=None,
    ):
        """Create a datagram endpoint; returns (transport, protocol)."""
        if sock is not None:
            if _PY313:
                if sock.type == socket.SOCK_STREAM:
                    raise ValueError(f"A datagram socket was expected, got {sock!r}")
            elif sock.type != socket.SOCK_DGRAM:
                raise ValueError(f"A UDP Socket was expected, got {sock!r}")
            if local_addr or remote_addr or family or proto or flags or reuse_port or allow_broadcast:
                opts = dict(
                    local_addr=local_addr,
                    remote_addr=remote_addr,
                    family=family,
                    proto=proto,
                    flags=flags,
                    reuse_port=reuse_port,
                    allow_broadcast=allow_broadcast,
                )
                problems = ", ".join(f"{k}={v}" for k, v in opts.items() if v)
                raise ValueError(
                    f"socket modifier keyword arguments can not be used "
                    f"when sock is specified. ({problems})"
                )
            sock.setblocking(False)
            r_addr = None
        else:
            if not (local_addr or remote_addr):
                if family == 0:
                    raise ValueError("unexpected address family")
                addr_pairs_info = (((family, proto), (None, None)),)
            elif hasattr(socket, "AF_UNIX") and family == socket.AF_UNIX:
                for addr in (local_addr, remote_addr):
                    if addr is not None and not isinstance(addr, str):
                        raise TypeError("string is expected")
                if local_addr and local_addr[0] not in (0, "\x00"):
                    try:
                        if stat.S_ISSOCK(os.stat(local_addr).st_mode):
                            os.remove(local_addr)
                    except FileNotFoundError:
                        pass
                    except OSError as err:
                        logger.error(
                            "Unable to check or remove stale UNIX socket %r: %r", local_addr, err
                        )
                addr_pairs_info = (((family, proto), (local_addr, remote_addr)),)
            else:
                # Addresses grouped by (family, protocol), in resolution order.
                addr_infos = {}
                for idx, addr in ((0, local_addr), (1, remote_addr)):
                    if addr is None:
                        continue
                    if not (isinstance(addr, tuple) and len(addr) == 2):
                        raise TypeError("2-tuple is expected")
                    infos = await self._ensure_resolved(
                        addr, family=family, type=socket.SOCK_DGRAM, proto=proto, flags=flags, loop=self
                    )
                    if not infos:
                        raise OSError("getaddrinfo() returned empty list")
                    for fam, _, pro, _, address in infos:
                        addr_infos.setdefault((fam, pro), [None, None])[idx] = address
                # Keep the (family, protocol) pairs that have every address asked for.
                addr_pairs_info = [
                    (key, pair)
                    for key, pair in addr_infos.items()
                    if not ((local_addr and pair[0] is None) or (remote_addr and pair[1] is None))
                ]
                if not addr_pairs_info:
                    raise ValueError("can not get address information")

            errors = []
            for (fam, pro), (local_address, remote_address) in addr_pairs_info:
                sock = None
                r_addr = None
                try:
                    sock = socket.socket(family=fam, type=socket.SOCK_DGRAM, proto=pro)
                    if reuse_port:
                        _set_reuseport(sock)
                    if allow_broadcast:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                    sock.setblocking(False)
                    if local_addr:
                        sock.bind(local_address)
                    if remote_addr:
                        if not allow_broadcast:
                            await self.sock_connect(sock, remote_address)
                        r_addr = remote_address
                except OSError as exc:
                    if sock is not None:
                        sock.close()
                    errors.append(exc)
                except BaseException:
                    if sock is not None:
                        sock.close()
                    raise
                else:
                    break
            else:
                raise errors[0]

        protocol = protocol_factory()
        waiter = self.create_future()
        transport = self._make_datagram_transport(sock, protocol, r_addr, waiter)
        if self.get_debug():
            if local_addr:
                logger.info(
                    "Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)",
                    local_addr,
                    remote_addr,
                    transport,
                    protocol,
                )
            else:
                logger.debug(
                    "Datagram endpoint remote_addr=%r created: (%r, %r)", remote_addr, transport, protocol
                )
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        transport = new_datagram_transport(self, sock, protocol, address, extra)
        self.call_soon(protocol.connection_made, transport)
        self.call_soon(transport._start)  # read only after connection_made()
        if waiter is not None:
            self.call_soon(_set_result_unless_cancelled, waiter, None)
        return transport

