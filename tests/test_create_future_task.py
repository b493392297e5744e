"""loop.create_future() is native on tokioloop (src/futures.rs); it must stay
what the stdlib's `futures.Future(loop=self)` is: read at call time, so a
replaced asyncio.futures.Future is used, and overridable by subclasses (the
sock_* operations and streams then get the subclass's futures)."""

import asyncio
import asyncio.futures
import socket
import sys

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


async def _coro(value=1):
    return value


def test_create_task_names_and_context(loop):
    import contextvars

    var = contextvars.ContextVar("var", default="outer")

    async def read():
        return var.get()

    ctx = contextvars.copy_context()
    ctx.run(var.set, "inner")
    plain = loop.create_task(read())
    named = loop.create_task(read(), name="job")
    in_ctx = loop.create_task(read(), context=ctx)
    both = loop.create_task(read(), name=None, context=None)
    assert named.get_name() == "job"
    assert plain.get_name().startswith("Task-")
    got = loop.run_until_complete(asyncio.gather(plain, named, in_ctx, both))
    assert got == ["outer", "outer", "inner", "outer"]
    assert type(plain) is asyncio.Task and plain.get_loop() is loop


@pytest.mark.parametrize("how", ["set_task_factory", "attribute"])
def test_task_factory_honoured(loop, how):
    made = []

    def factory(lp, coro, **kwargs):
        task = asyncio.Task(coro, loop=lp, **kwargs)
        made.append(task)
        return task

    if how == "set_task_factory":
        loop.set_task_factory(factory)
    else:
        loop._task_factory = factory
    assert loop.get_task_factory() is factory
    task = loop.create_task(_coro(3))
    assert made == [task]
    assert loop.run_until_complete(task) == 3
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None and loop._task_factory is None
    task = loop.create_task(_coro(4))
    assert made == made[:1]
    assert loop.run_until_complete(task) == 4


def test_replaced_task_class_is_used(loop, monkeypatch):
    class MyTask(asyncio.Task):
        pass

    monkeypatch.setattr(asyncio.tasks, "Task", MyTask)
    task = loop.create_task(_coro())
    assert type(task) is MyTask
    assert loop.run_until_complete(task) == 1


def test_debug_source_traceback_like_stdlib(loop_factory):
    loop = loop_factory()
    loop.set_debug(True)
    task = loop.create_task(_coro())
    frame = task._source_traceback[-1]
    loop.run_until_complete(task)
    # The caller's line, not create_task's own frame.
    assert frame.name == "test_debug_source_traceback_like_stdlib", frame


def test_create_task_on_closed_loop(loop):
    loop.close()
    coro = _coro()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        loop.create_task(coro)
    coro.close()


@pytest.mark.parametrize("base", [asyncio.SelectorEventLoop, tokioloop.Loop])
def test_subclass_create_task_used_by_gather(base):
    seen = []

    class Traced(base):
        def create_task(self, coro, **kwargs):
            seen.append(coro)
            return super().create_task(coro, **kwargs)

    loop = Traced()
    try:

        async def main():
            return await asyncio.gather(_coro(1), _coro(2))

        assert loop.run_until_complete(main()) == [1, 2]
    finally:
        loop.close()
    assert len(seen) >= 3  # main() and the two gathered coroutines


def test_unknown_create_task_keyword_is_a_type_error(loop):
    coro = _coro()
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'|'bogus'"):
        loop.create_task(coro, bogus=1)
    coro.close()


def test_task_factory_receives_what_the_stdlib_passes(loop):
    """Up to 3.13.2 a task factory gets (loop, coro) and context= only when
    one is given; the name is set on the task afterwards."""
    import contextvars

    seen = []

    def factory(lp, coro, **kwargs):
        seen.append(sorted(kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    ctx = contextvars.copy_context()
    named = loop.create_task(_coro(), name="n")
    in_ctx = loop.create_task(_coro(), context=ctx)
    loop.run_until_complete(asyncio.gather(named, in_ctx))
    assert named.get_name() == "n"
    if sys.version_info[:3] < (3, 13, 3):
        assert seen == [[], ["context"]]
    elif sys.version_info[:3] == (3, 13, 3) or sys.version_info >= (3, 14):
        assert seen == [["name"], ["context"]]
    else:
        assert seen == [[], ["context"]]


def test_factory_task_without_set_name(loop):
    """3.11 and 3.12 warn when a factory's task cannot be named; 3.13 raises."""

    class Unnamed(asyncio.Future):
        def __init__(self, lp, coro):
            super().__init__(loop=lp)
            coro.close()

    loop.set_task_factory(lambda lp, coro: Unnamed(lp, coro))
    if sys.version_info >= (3, 13):
        with pytest.raises(AttributeError, match="set_name"):
            loop.create_task(_coro(), name="x")
    else:
        with pytest.warns(DeprecationWarning, match="set_name") as rec:
            task = loop.create_task(_coro(), name="x")
        assert type(task) is Unnamed
        # Pointed at the caller, as the stdlib's stacklevel does.
        assert rec[0].filename == __file__
