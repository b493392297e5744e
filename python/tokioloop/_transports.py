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

from ._tokioloop import StreamTransport as _NativeStreamTransport


def _stand_in(name, base):
    cls = type(name, (base,), {"__slots__": (), "__module__": "tokioloop"})
    cls.__doc__ = f"What isinstance() sees for tokioloop's {name}."
    return cls


_AS_SOCKET = _stand_in("SocketTransport", asyncio.Transport)
_AS_READ_PIPE = _stand_in("ReadPipeTransport", asyncio.ReadTransport)
_AS_WRITE_PIPE = _stand_in("WritePipeTransport", asyncio.WriteTransport)


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
