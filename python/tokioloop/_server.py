"""`Server`: asyncio.AbstractServer for the listening sockets of a tokioloop loop.

The accept loop itself lives in the loop (``NetworkMixin._start_serving``);
this object owns the listening sockets, counts the live connections (the
native transports call ``_attach``/``_detach``) and implements the public
lifecycle (close, wait_closed, serve_forever, start_serving, async with).

Version differences follow the running interpreter:

* ``wait_closed()``: on 3.11 it returns at once once the server is closed,
  even if connections are still alive; from 3.12 it waits until the server is
  closed *and* every connection has gone.
* ``close_clients()`` / ``abort_clients()`` exist from 3.13 on.
"""

from __future__ import annotations

import asyncio
import sys
import weakref

from asyncio import events, exceptions, trsock

_PY312 = sys.version_info >= (3, 12)
_PY313 = sys.version_info >= (3, 13)


class _ClientSet:
    """The live connections of a server.

    Weak references when the transport type supports them (as the stdlib's
    3.13 Server does, so an abandoned transport can still be collected and
    warn), strong ones otherwise.
    """

    __slots__ = ("_weak", "_strong")

    def __init__(self):
        self._weak = weakref.WeakSet()
        self._strong = {}

    def add(self, transport):
        try:
            self._weak.add(transport)
        except TypeError:
            self._strong[id(transport)] = transport

    def discard(self, transport):
        try:
            self._weak.discard(transport)
        except TypeError:
            pass
        self._strong.pop(id(transport), None)

    def __len__(self):
        return len(self._weak) + len(self._strong)

    def copy(self):
        return list(self._weak) + list(self._strong.values())


class Server(events.AbstractServer):
    """A listening server created by ``create_server``/``create_unix_server``."""

    def __init__(
        self,
        loop,
        sockets,
        protocol_factory,
        ssl_context,
        backlog,
        ssl_handshake_timeout,
        ssl_shutdown_timeout=None,
    ):
        self._loop = loop
        self._sockets = sockets
        self._clients = _ClientSet()
        self._waiters = []
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        self._ssl_context = ssl_context
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._serving = False
        self._serving_forever_fut = None

    def __repr__(self):
        return f"<{self.__class__.__name__} sockets={self.sockets!r}>"

    # ----------------------------------------------------- connection count

    @property
    def _active_count(self):
        # The name of the counter in the stdlib's 3.11/3.12 Server.
        return len(self._clients)

    def _attach(self, transport=None):
        assert self._sockets is not None
        self._clients.add(transport)

    def _detach(self, transport=None):
        self._clients.discard(transport)
        if len(self._clients) == 0 and self._sockets is None:
            self._wakeup()

    def _wakeup(self):
        waiters = self._waiters
        self._waiters = None
        if not waiters:
            return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None if _PY312 else waiter)

    # ------------------------------------------------------------ serving

    def _start_serving(self):
        if self._serving:
            return
        self._serving = True
        for sock in self._sockets:
            sock.listen(self._backlog)
            self._loop._start_serving(
                self._protocol_factory,
                sock,
                self._ssl_context,
                self,
                self._backlog,
                self._ssl_handshake_timeout,
                self._ssl_shutdown_timeout,
            )

    def get_loop(self):
        return self._loop

    def is_serving(self):
        return self._serving

    @property
    def sockets(self):
        if self._sockets is None:
            return ()
        return tuple(trsock.TransportSocket(s) for s in self._sockets)

    def close(self):
        sockets = self._sockets
        if sockets is None:
            return
        self._sockets = None
        for sock in sockets:
            self._loop._stop_serving(sock)
        self._serving = False
        fut = self._serving_forever_fut
        if fut is not None and not fut.done():
            fut.cancel()
            self._serving_forever_fut = None
        if len(self._clients) == 0:
            self._wakeup()

    if _PY313:

        def close_clients(self):
            for transport in self._clients.copy():
                transport.close()

        def abort_clients(self):
            for transport in self._clients.copy():
                transport.abort()

    async def start_serving(self):
        self._start_serving()
        # One loop iteration so that the add_reader calls take effect.
        await asyncio.sleep(0)

    async def serve_forever(self):
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except exceptions.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self):
        if _PY312:
            # Wait until the server is closed and every connection has gone.
            if self._waiters is None:
                return
        else:
            # 3.11: returns at once when the server is already closed.
            if self._sockets is None or self._waiters is None:
                return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter
