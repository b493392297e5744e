"""The Python faces of the native stream transport.

`_tokioloop.StreamTransport` is a Rust class; it cannot inherit from
`asyncio.Transport` (whose `__slots__` layout conflicts with a native base),
yet code written for asyncio checks `isinstance(t, asyncio.Transport)`.
`isinstance()` falls back to an object's `__class__` when the real type does
not match, so each subclass here reports a stand-in class deriving from the
right asyncio ABC-like base (the technique `unittest.mock` uses for `spec`).
`type(t)` stays the real class. The subclasses also add what asyncio's own
transports have in Python: the "unclosed transport" ResourceWarning and the
capability flags that asyncio's start_tls and sendfile look at.
"""

from __future__ import annotations

import asyncio
import warnings
from asyncio import constants

from asyncio import trsock

from ._tokioloop import DatagramTransport as _NativeDatagramTransport
from ._tokioloop import StreamTransport as _NativeStreamTransport


def _stand_in(name, base):
    cls = type(name, (base,), {"__slots__": (), "__module__": "tokioloop"})
    cls.__doc__ = f"What isinstance() sees for tokioloop's {name}."
    return cls


_AS_SOCKET = _stand_in("SocketTransport", asyncio.Transport)
_AS_READ_PIPE = _stand_in("ReadPipeTransport", asyncio.ReadTransport)
_AS_WRITE_PIPE = _stand_in("WritePipeTransport", asyncio.WriteTransport)
# As the stdlib's selector datagram transport, also an asyncio.Transport
# (code and CPython's tests check isinstance(tr, asyncio.Transport)).
_AS_DATAGRAM = type(
    "DatagramTransport",
    (asyncio.Transport, asyncio.DatagramTransport),
    {"__slots__": (), "__module__": "tokioloop", "__doc__": "What isinstance() sees for tokioloop's DatagramTransport."},
)


class _PyStreamTransport(_NativeStreamTransport):
    __slots__ = ()

    def __del__(self, _warn=warnings.warn):
        sock = self._sock
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.close()


class SocketTransport(_PyStreamTransport):
    __slots__ = ()
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    @property
    def __class__(self):
        return _AS_SOCKET


class ReadPipeTransport(_PyStreamTransport):
    __slots__ = ()

    @property
    def __class__(self):
        return _AS_READ_PIPE


class WritePipeTransport(_PyStreamTransport):
    __slots__ = ()

    @property
    def __class__(self):
        return _AS_WRITE_PIPE


_BY_KIND = {0: SocketTransport, 1: ReadPipeTransport, 2: WritePipeTransport}


def new_stream_transport(loop, sock, protocol, extra=None, server=None, kind=0):
    """Create the native transport of `kind` (0 socket, 1 read pipe, 2 write pipe)."""
    return _BY_KIND[kind](loop, sock, protocol, extra, server, kind)


class DatagramTransport(_NativeDatagramTransport):
    """UDP / Unix datagram transport; reads and writes run in Rust (src/datagram.rs)."""

    __slots__ = ()
    max_size = 256 * 1024  # bytes asked of recvfrom() per readiness, as asyncio

    @property
    def __class__(self):
        return _AS_DATAGRAM

    def __del__(self, _warn=warnings.warn):
        sock = self._sock
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.close()

    # The stream half of asyncio.Transport, which a datagram transport lacks.
    def write(self, data):
        raise NotImplementedError

    def writelines(self, list_of_data):
        raise NotImplementedError

    def write_eof(self):
        raise NotImplementedError

    def can_write_eof(self):
        raise NotImplementedError


def new_datagram_transport(loop, sock, protocol, address=None, extra=None):
    """The native datagram transport, with asyncio's extra info filled in."""
    extra = {} if extra is None else dict(extra)
    extra["socket"] = trsock.TransportSocket(sock)
    try:
        extra["sockname"] = sock.getsockname()
    except OSError:
        extra["sockname"] = None
    if "peername" not in extra:
        try:
            extra["peername"] = sock.getpeername()
        except OSError:
            extra["peername"] = None
    return DatagramTransport(loop, sock, protocol, address, extra)
