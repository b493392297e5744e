"""Futures, tasks, task factories, async generators."""

import asyncio
import contextvars
import gc
import sys
import time

import pytest

from conftest import outcome, run_once, run_scenario_on_both

pytestmark = pytest.mark.timeout(20)

cvar = contextvars.ContextVar("tasks_cvar", default="default")


def test_create_future(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    assert not fut.done()
    loop.call_soon(fut.set_result, 42)
    assert loop.run_until_complete(fut) == 42


def test_future_done_callbacks_scheduled_via_loop(loop):
    trace = []
    fut = loop.create_future()
    fut.add_done_callback(lambda f: trace.append(("cb", f.result())))
    fut.set_result(1)
    trace.append("after set_result")
    run_once(loop)
    assert trace == ["after set_result", ("cb", 1)]


def test_create_task_basic(loop):
    async def coro(x):
        await asyncio.sleep(0)
        return x + 1

    t = loop.create_task(coro(1))
    assert isinstance(t, asyncio.Task)
    assert t.get_loop() is loop
    assert loop.run_until_complete(t) == 2
    assert t.done() and t.result() == 2


def test_create_task_name(loop):
    async def coro():
        return asyncio.current_task().get_name()

    t = loop.create_task(coro(), name="my-task")
    assert t.get_name() == "my-task"
    assert loop.run_until_complete(t) == "my-task"
    t2 = loop.create_task(coro())
    assert t2.get_name().startswith("Task-")
    loop.run_until_complete(t2)


def test_create_task_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(cvar.set, "task-ctx")

    async def coro():
        v = cvar.get()
        cvar.set("modified")
        return v

    t = loop.create_task(coro(), context=ctx)
    assert loop.run_until_complete(t) == "task-ctx"
    assert ctx[cvar] == "modified"
    assert cvar.get() == "default"


def test_create_task_name_and_context_keyword(loop):
    ctx = contextvars.Context()
    t = loop.create_task(asyncio.sleep(0, result="r"), name="n", context=ctx)
    assert t.get_name() == "n"
    assert loop.run_until_complete(t) == "r"


def test_create_task_rejects_non_coroutine_like_stdlib():
    def scen(lp):
        return outcome(lp.create_task, 5)[:2]

    std, tl = run_scenario_on_both(scen)
    assert std == ("raise", TypeError)
    assert tl == std


def test_current_task_and_all_tasks(loop):
    async def child():
        await asyncio.sleep(0.01)

    async def main():
        me = asyncio.current_task()
        t = asyncio.create_task(child())
        await asyncio.sleep(0)
        tasks = asyncio.all_tasks()
        await t
        return me, t, tasks

    me, t, tasks = loop.run_until_complete(main())
    assert me in tasks and t in tasks
    assert asyncio.current_task(loop) is None
    assert asyncio.all_tasks(loop) == set()


def test_task_cancel(loop):
    trace = []

    async def victim():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            trace.append("cancelled")
            raise

    async def main():
        t = asyncio.create_task(victim())
        await asyncio.sleep(0.01)
        t.cancel("reason")
        try:
            await t
        except asyncio.CancelledError as e:
            trace.append(("raised", e.args))
        return t.cancelled()

    t0 = time.monotonic()
    assert loop.run_until_complete(main()) is True
    assert time.monotonic() - t0 < 1
    assert trace == ["cancelled", ("raised", ("reason",))]


def test_task_interleaving_trace_like_stdlib():
    """A mixed scenario of tasks, futures, call_soon and sleeps: identical
    event order on both loops."""

    def scen(lp):
        trace = []

        async def worker(name, n):
            for i in range(n):
                trace.append((name, i))
                if i % 2:
                    await asyncio.sleep(0)
                else:
                    fut = lp.create_future()
                    lp.call_soon(fut.set_result, None)
                    await fut
            return name

        async def main():
            lp.call_soon(trace.append, "cb1")
            t1 = lp.create_task(worker("A", 5))
            t2 = lp.create_task(worker("B", 3))
            lp.call_soon(trace.append, "cb2")
            t1.add_done_callback(lambda t: trace.append(("done", t.result())))
            trace.append("main-before-gather")
            res = await asyncio.gather(t1, t2, worker("C", 4))
            trace.append(("gathered", tuple(res)))
            await asyncio.sleep(0.001)
            trace.append("slept")
            return res

        lp.run_until_complete(main())
        return trace

    std, tl = run_scenario_on_both(scen)
    assert tl == std


def test_many_tasks(loop):
    async def one(i):
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        return i

    async def main():
        return await asyncio.gather(*(one(i) for i in range(5000)))

    t0 = time.monotonic()
    assert loop.run_until_complete(main()) == list(range(5000))
    assert time.monotonic() - t0 < 10


def test_wait_and_wait_for(loop):
    async def slow():
        await asyncio.sleep(5)

    async def fast():
        await asyncio.sleep(0.01)
        return "fast"

    async def main():
        t_fast = asyncio.create_task(fast())
        t_slow = asyncio.create_task(slow())
        done, pending = await asyncio.wait({t_fast, t_slow}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {t_fast} and pending == {t_slow}
        t_slow.cancel()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow(), 0.02)
        return t_fast.result()

    assert loop.run_until_complete(main()) == "fast"


def test_run_coroutine_threadsafe(loop):
    import threading

    results = []

    async def add(a, b):
        await asyncio.sleep(0.001)
        return a + b

    def worker():
        fut = asyncio.run_coroutine_threadsafe(add(1, 2), loop)
        results.append(fut.result(timeout=5))
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=worker)
    t.start()
    loop.call_later(10, loop.stop)
    loop.run_forever()
    t.join(5)
    assert results == [3]


def test_wrap_future(loop):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        cf = ex.submit(lambda: "from-thread")
        fut = asyncio.wrap_future(cf, loop=loop)
        assert loop.run_until_complete(fut) == "from-thread"


# --------------------------------------------------------------------------
# Task factory
# --------------------------------------------------------------------------


def test_task_factory(loop):
    calls = []

    class MyTask(asyncio.Task):
        pass

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return MyTask(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def main():
        t = asyncio.create_task(asyncio.sleep(0, result=1), name="named")
        assert isinstance(t, MyTask)
        assert t.get_name() == "named"
        return await t

    t = loop.create_task(main())
    assert isinstance(t, MyTask)
    assert loop.run_until_complete(t) == 1
    assert len(calls) == 2 and all(lp is loop for lp, _ in calls)

    ctx = contextvars.Context()
    t = loop.create_task(asyncio.sleep(0), context=ctx)
    assert calls[-1][1].get("context") is ctx
    loop.run_until_complete(t)

    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    t = loop.create_task(asyncio.sleep(0))
    assert type(t) is asyncio.Task
    loop.run_until_complete(t)


def test_task_factory_used_by_run_until_complete(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append(1)
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    loop.run_until_complete(asyncio.sleep(0))
    assert calls == [1]


def test_set_task_factory_bad_like_stdlib():
    def scen(lp):
        return outcome(lp.set_task_factory, 1)

    std, tl = run_scenario_on_both(scen)
    assert std == ("raise", TypeError, "task factory must be a callable or None")
    assert tl == std


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks need Python 3.12+")
def test_eager_task_factory(loop):
    trace = []

    async def child():
        trace.append("child-start")
        await asyncio.sleep(0)
        trace.append("child-end")
        return 5

    async def main():
        t = asyncio.create_task(child())
        trace.append("after-create")
        return await t

    loop.set_task_factory(asyncio.eager_task_factory)
    assert loop.run_until_complete(main()) == 5
    assert trace == ["child-start", "after-create", "child-end"]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks need Python 3.12+")
def test_eager_task_completes_synchronously(loop):
    async def quick():
        return "q"

    async def main():
        t = asyncio.create_task(quick())
        return t.done(), await t

    loop.set_task_factory(asyncio.eager_task_factory)
    assert loop.run_until_complete(main()) == (True, "q")


# --------------------------------------------------------------------------
# Async generators
# --------------------------------------------------------------------------


def test_asyncgen_hooks_installed_while_running(loop):
    before = sys.get_asyncgen_hooks()
    seen = []

    async def main():
        seen.append(sys.get_asyncgen_hooks())

    loop.run_until_complete(main())
    assert seen[0].firstiter is not None and seen[0].finalizer is not None
    assert sys.get_asyncgen_hooks() == before


def test_shutdown_asyncgens_runs_finally(loop):
    trace = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            trace.append("finally")
            await asyncio.sleep(0)
            trace.append("finally-after-await")

    gens = []

    async def main():
        g = agen()
        gens.append(g)
        assert await g.__anext__() == 1

    loop.run_until_complete(main())
    assert trace == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert trace == ["finally", "finally-after-await"]


def test_abandoned_asyncgen_finalized_by_loop(loop):
    trace = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            trace.append(("finally", asyncio.get_running_loop() is loop))

    async def main():
        g = agen()
        await g.__anext__()
        del g
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert trace == [("finally", True)]


def test_shutdown_asyncgens_via_run():
    import tokioloop

    trace = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            trace.append("finally")

    keep = []

    async def main():
        g = agen()
        keep.append(g)
        await g.__anext__()

    tokioloop.run(main())
    assert trace == ["finally"]


def test_shutdown_asyncgens_error_reported(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def agen():
        try:
            yield 1
        finally:
            raise ValueError("in finally")

    keep = []

    async def main():
        g = agen()
        keep.append(g)
        await g.__anext__()

    loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ValueError)
    assert "asyncgen" in contexts[0]


def test_asyncgen_after_shutdown_asyncgens_like_stdlib():
    def scen(lp):
        trace = []

        async def agen():
            yield 1

        async def main():
            g = agen()
            try:
                trace.append(await g.__anext__())
            except BaseException as e:  # noqa: BLE001
                trace.append(type(e).__name__)
            await g.aclose()

        lp.run_until_complete(lp.shutdown_asyncgens())
        import warnings

        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            lp.run_until_complete(main())
        trace.append(sorted({str(x.category.__name__) for x in w}))
        return trace

    std, tl = run_scenario_on_both(scen)
    assert tl == std


def test_pending_task_collected_after_close_like_stdlib(caplog):
    """A task suspended in asyncio.sleep() when its loop is closed forms a
    cycle task -> coroutine -> TimerHandle -> future -> task; the stdlib frees
    it and logs 'Task was destroyed but it is pending!'."""
    import logging
    import weakref

    def scen(lp):
        async def forever():
            await asyncio.sleep(3600)

        t = lp.create_task(forever())
        run_once(lp)
        wr = weakref.ref(t)
        del t
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            lp.close()
            gc.collect()
        msgs = [r.getMessage().splitlines()[0] for r in caplog.records if r.name == "asyncio"]
        return wr() is None, msgs

    std, tl = run_scenario_on_both(scen)
    assert std == (True, ["Task was destroyed but it is pending!"])
    assert tl == std
