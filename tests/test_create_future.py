"""loop.create_future() is native on tokioloop (src/futures.rs); it must stay
what the stdlib's `futures.Future(loop=self)` is: read at call time, so a
replaced asyncio.futures.Future is used, and overridable by subclasses (the
sock_* operations and streams then get the subclass's futures)."""

import asyncio
import asyncio.futures
import socket

import pytest

import tokioloop


def test_future_attached_to_loop(loop):
    fut = loop.create_future()
    assert type(fut) is asyncio.Future
    assert fut.get_loop() is loop
    assert not fut.done()


def test_replaced_future_class_is_used(loop, monkeypatch):
    class MyFuture(asyncio.Future):
        pass

    monkeypatch.setattr(asyncio.futures, "Future", MyFuture)
    fut = loop.create_future()
    assert type(fut) is MyFuture and fut.get_loop() is loop


def test_missing_future_class_raises_like_stdlib(loop, monkeypatch):
    monkeypatch.delattr(asyncio.futures, "Future")
    with pytest.raises(AttributeError, match="Future"):
        loop.create_future()


def test_closed_loop_still_creates_futures_like_stdlib(loop):
    loop.close()
    assert loop.create_future().get_loop() is loop


@pytest.mark.parametrize("base", [asyncio.SelectorEventLoop, tokioloop.Loop])
def test_subclass_override_used_by_sock_ops(base):
    made = []

    class Traced(base):
        def create_future(self):
            fut = super().create_future()
            made.append(fut)
            return fut

    loop = Traced()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:

        async def main():
            reader = asyncio.ensure_future(loop.sock_recv(a, 10))
            await asyncio.sleep(0.01)
            b.send(b"hi")
            return await reader

        assert loop.run_until_complete(main()) == b"hi"
    finally:
        a.close()
        b.close()
        loop.close()
    assert made, "sock_recv did not go through the subclass's create_future"
