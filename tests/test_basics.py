"""Public API surface, loop life-cycle, running-loop registration."""

import asyncio
import gc
import sys
import time
import weakref

import pytest

import tokioloop

from conftest import make_loop, outcome, run_once, run_scenario_on_both

pytestmark = pytest.mark.timeout(20)


# --------------------------------------------------------------------------
# Public API surface
# --------------------------------------------------------------------------


def test_public_names():
    for name in ("Loop", "new_event_loop", "EventLoopPolicy", "run", "install", "__version__"):
        assert hasattr(tokioloop, name), name
    assert issubclass(tokioloop.Loop, asyncio.AbstractEventLoop)
    assert issubclass(tokioloop.EventLoopPolicy, asyncio.AbstractEventLoopPolicy)
    assert callable(tokioloop.run) and callable(tokioloop.install)


def test_version():
    v = tokioloop.__version__
    assert isinstance(v, str) and v
    assert v[0].isdigit(), v
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return
    try:
        dist_version = version("tokioloop")
    except PackageNotFoundError:
        pytest.skip("tokioloop not installed as a distribution")
    assert v == dist_version


def test_new_event_loop_type(tloop):
    assert isinstance(tloop, tokioloop.Loop)
    assert isinstance(tloop, asyncio.AbstractEventLoop)
    assert not tloop.is_running()
    assert not tloop.is_closed()
    assert tloop.get_debug() is False


def test_loop_class_constructible_directly():
    lp = tokioloop.Loop()
    try:
        assert isinstance(lp, asyncio.AbstractEventLoop)
        assert lp.run_until_complete(asyncio.sleep(0, result=7)) == 7
    finally:
        lp.close()


def test_loops_are_distinct():
    a, b = tokioloop.new_event_loop(), tokioloop.new_event_loop()
    try:
        assert a is not b
        assert a != b
    finally:
        a.close()
        b.close()


def test_loop_hashable_and_weakrefable(loop):
    d = {loop: 1}
    assert d[loop] == 1
    assert hash(loop) == hash(loop)
    assert loop == loop
    s = {loop, loop}
    assert len(s) == 1
    wr = weakref.ref(loop)
    assert wr() is loop
    wkd = weakref.WeakKeyDictionary()
    wkd[loop] = "x"
    assert wkd[loop] == "x"


def test_loop_is_garbage_collectable():
    lp = tokioloop.new_event_loop()
    lp.run_until_complete(asyncio.sleep(0))
    lp.close()
    wr = weakref.ref(lp)
    del lp
    gc.collect()
    assert wr() is None


def test_default_executor_attribute(loop):
    assert hasattr(loop, "_default_executor")
    assert loop._default_executor is None


def test_policy_creates_tokioloop():
    policy = tokioloop.EventLoopPolicy()
    lp = policy.new_event_loop()
    try:
        assert isinstance(lp, tokioloop.Loop)
    finally:
        lp.close()


def test_install_sets_policy():
    old = asyncio.get_event_loop_policy()
    try:
        tokioloop.install()
        policy = asyncio.get_event_loop_policy()
        assert isinstance(policy, tokioloop.EventLoopPolicy)

        async def main():
            return asyncio.get_running_loop()

        lp = asyncio.run(main())
        assert isinstance(lp, tokioloop.Loop)
        assert lp.is_closed()
        lp2 = asyncio.new_event_loop()
        try:
            assert isinstance(lp2, tokioloop.Loop)
        finally:
            lp2.close()
    finally:
        asyncio.set_event_loop_policy(old)


def test_policy_get_event_loop_in_main_thread():
    old = asyncio.get_event_loop_policy()
    try:
        asyncio.set_event_loop_policy(tokioloop.EventLoopPolicy())
        policy = asyncio.get_event_loop_policy()
        lp = policy.new_event_loop()
        policy.set_event_loop(lp)
        try:
            assert policy.get_event_loop() is lp
        finally:
            policy.set_event_loop(None)
            lp.close()
    finally:
        asyncio.set_event_loop_policy(old)


def test_run_returns_value_and_closes_loop():
    seen = []

    async def main(x):
        lp = asyncio.get_running_loop()
        seen.append(lp)
        await asyncio.sleep(0.001)
        return x * 2

    assert tokioloop.run(main(21)) == 42
    assert isinstance(seen[0], tokioloop.Loop)
    assert seen[0].is_closed()
    assert asyncio._get_running_loop() is None


def test_run_propagates_exception():
    async def main():
        await asyncio.sleep(0)
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom"):
        tokioloop.run(main())


def test_run_debug_flag():
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert tokioloop.run(main(), debug=True) is True
    assert tokioloop.run(main(), debug=False) is False
    assert tokioloop.run(main()) is False


def test_run_rejects_non_coroutine():
    async def main():
        pass

    with pytest.raises(ValueError) as ei_std:
        asyncio.run(main)
    with pytest.raises(ValueError) as ei_tl:
        tokioloop.run(main)
    assert str(ei_tl.value) == str(ei_std.value)


def test_run_from_running_loop_raises():
    async def outer():
        coro = asyncio.sleep(0)
        try:
            tokioloop.run(coro)
        except RuntimeError as e:
            return str(e)
        finally:
            coro.close()
        return None

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        msg = tokioloop.run(outer())
    assert msg is not None and "loop" in msg


# --------------------------------------------------------------------------
# Clock
# --------------------------------------------------------------------------


def test_time_is_monotonic_clock(loop):
    for _ in range(100):
        t1 = time.monotonic()
        lt = loop.time()
        t2 = time.monotonic()
        assert t1 <= lt <= t2
    assert isinstance(loop.time(), float)


def test_time_not_cached_during_callback(loop):
    # The stdlib loop's time() is always "now"; it is never cached per iteration.
    res = []

    def cb():
        a = loop.time()
        time.sleep(0.02)
        b = loop.time()
        res.append(b - a)
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert res[0] >= 0.02


# --------------------------------------------------------------------------
# Life-cycle
# --------------------------------------------------------------------------


def test_run_until_complete_result(loop):
    async def coro():
        await asyncio.sleep(0)
        return "result"

    assert loop.run_until_complete(coro()) == "result"
    fut = loop.create_future()
    loop.call_soon(fut.set_result, 5)
    assert loop.run_until_complete(fut) == 5
    assert not loop.is_running()


def test_run_until_complete_exception(loop):
    async def coro():
        raise KeyError("k")

    with pytest.raises(KeyError):
        loop.run_until_complete(coro())
    # loop still usable
    assert loop.run_until_complete(asyncio.sleep(0, result=3)) == 3


def test_run_until_complete_awaitable_object(loop):
    class Aw:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "aw"

    assert loop.run_until_complete(Aw()) == "aw"


def test_run_until_complete_bad_argument_like_stdlib():
    def scen(lp):
        return outcome(lp.run_until_complete, 5)

    std, tl = run_scenario_on_both(scen)
    assert std[0] == "raise"
    assert tl == std


def test_run_until_complete_future_of_other_loop_like_stdlib():
    def scen(lp):
        other = make_loop("asyncio")
        try:
            fut = other.create_future()
            return outcome(lp.run_until_complete, fut)
        finally:
            other.close()

    std, tl = run_scenario_on_both(scen)
    assert std[0] == "raise"
    assert tl == std


def test_run_until_complete_stopped_before_done_like_stdlib():
    def scen(lp):
        fut = lp.create_future()
        lp.call_soon(lp.stop)
        return outcome(lp.run_until_complete, fut)

    std, tl = run_scenario_on_both(scen)
    assert std == ("raise", RuntimeError, "Event loop stopped before Future completed.")
    assert tl == std


def test_is_running_inside(loop):
    seen = []

    def cb():
        seen.append(loop.is_running())
        seen.append(asyncio.get_running_loop() is loop)
        seen.append(asyncio.get_event_loop() is loop)
        loop.stop()

    assert not loop.is_running()
    loop.call_soon(cb)
    loop.run_forever()
    assert seen == [True, True, True]
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None


def test_get_running_loop_in_coroutine(loop):
    async def main():
        return asyncio.get_running_loop(), asyncio.get_event_loop(), asyncio.current_task()

    rl, el, task = loop.run_until_complete(main())
    assert rl is loop and el is loop
    assert isinstance(task, asyncio.Task)
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_stop_before_run_forever_runs_one_iteration(loop):
    order = []

    def a():
        order.append("a")
        loop.call_soon(order.append, "c")

    loop.call_soon(a)
    loop.call_soon(order.append, "b")
    loop.stop()
    loop.run_forever()
    assert order == ["a", "b"]
    run_once(loop)
    assert order == ["a", "b", "c"]


def test_stop_semantics_like_stdlib():
    def scen(lp):
        order = []

        def a():
            order.append("a")
            lp.call_soon(order.append, "a-child")

        def b():
            order.append("b")
            lp.stop()
            lp.call_soon(order.append, "b-child")

        lp.call_soon(a)
        lp.call_soon(b)
        lp.call_soon(order.append, "after-stop")
        lp.run_forever()
        order.append("|")
        lp.call_soon(lp.stop)
        lp.run_forever()
        return order

    std, tl = run_scenario_on_both(scen)
    assert std == ["a", "b", "after-stop", "|", "a-child", "b-child"]
    assert tl == std


def test_stop_twice_then_run_forever_twice(loop):
    loop.stop()
    loop.stop()
    loop.run_forever()
    # the stop request was consumed: a new run_forever needs a new stop
    hit = []
    loop.call_later(0.01, lambda: (hit.append(1), loop.stop()))
    loop.run_forever()
    assert hit == [1]


def test_run_forever_restartable(loop):
    for i in range(5):
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert loop.run_until_complete(asyncio.sleep(0, result="ok")) == "ok"


def test_close_semantics(loop):
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()  # idempotent
    assert loop.is_closed()


def test_close_running_loop_raises_like_stdlib():
    def scen(lp):
        res = []

        def cb():
            res.append(outcome(lp.close))
            lp.stop()

        lp.call_soon(cb)
        lp.run_forever()
        res.append(lp.is_closed())
        return res

    std, tl = run_scenario_on_both(scen)
    assert std == [("raise", RuntimeError, "Cannot close a running event loop"), False]
    assert tl == std


def test_closed_loop_api_like_stdlib():
    """Every public method on a closed loop: same outcome as the stdlib."""
    import signal
    import socket

    def scen(lp):
        lp.close()
        a, b = socket.socketpair()
        try:
            ops = {
                "call_soon": lambda: lp.call_soon(print),
                "call_soon_threadsafe": lambda: lp.call_soon_threadsafe(print),
                "call_later": lambda: lp.call_later(1, print),
                "call_at": lambda: lp.call_at(lp.time() + 1, print),
                "create_task": lambda: lp.create_task(asyncio.sleep(0)),
                "run_until_complete": lambda: lp.run_until_complete(asyncio.sleep(0)),
                "run_forever": lambda: lp.run_forever(),
                "run_in_executor": lambda: lp.run_in_executor(None, print),
                "add_reader": lambda: lp.add_reader(a.fileno(), print),
                "add_writer": lambda: lp.add_writer(a.fileno(), print),
                "remove_reader": lambda: lp.remove_reader(a.fileno()),
                "remove_writer": lambda: lp.remove_writer(a.fileno()),
                "add_signal_handler": lambda: lp.add_signal_handler(signal.SIGUSR1, print),
                "remove_signal_handler": lambda: lp.remove_signal_handler(signal.SIGUSR1),
                "create_future": lambda: lp.create_future().done(),
                "stop": lambda: lp.stop(),
                "close": lambda: lp.close(),
                "is_closed": lambda: lp.is_closed(),
                "is_running": lambda: lp.is_running(),
                "get_debug": lambda: lp.get_debug(),
                "time_is_float": lambda: isinstance(lp.time(), float),
            }
            out = {}
            for name, fn in ops.items():
                out[name] = outcome(fn)
            return out
        finally:
            a.close()
            b.close()

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # never-awaited coroutines
        std, tl = run_scenario_on_both(scen)
    assert std["call_soon"] == ("raise", RuntimeError, "Event loop is closed")
    diffs = {k: (std[k], tl.get(k)) for k in std if std[k] != tl.get(k)}
    assert not diffs, diffs


# --------------------------------------------------------------------------
# Re-entrancy
# --------------------------------------------------------------------------


def test_reentrant_run_until_complete_like_stdlib():
    def scen(lp):
        async def main():
            coro = asyncio.sleep(0)
            try:
                return outcome(lp.run_until_complete, coro)
            finally:
                coro.close()

        res = lp.run_until_complete(main())

        async def main2():
            return outcome(lp.run_forever)

        return res, lp.run_until_complete(main2()), lp.is_running()

    std, tl = run_scenario_on_both(scen)
    assert std[0] == ("raise", RuntimeError, "This event loop is already running")
    assert tl == std


@pytest.mark.parametrize("outer_kind", ["asyncio", "tokioloop"])
@pytest.mark.parametrize("inner_kind", ["asyncio", "tokioloop"])
def test_running_another_loop_in_same_thread_raises(outer_kind, inner_kind):
    outer = make_loop(outer_kind)
    inner = make_loop(inner_kind)
    try:

        async def main():
            coro = asyncio.sleep(0)
            try:
                r1 = outcome(inner.run_until_complete, coro)
            finally:
                coro.close()
            r2 = outcome(inner.run_forever)
            return r1, r2, asyncio.events._get_running_loop() is outer

        r1, r2, still_outer = outer.run_until_complete(main())
        expected = ("raise", RuntimeError, "Cannot run the event loop while another loop is running")
        assert r1 == expected
        assert r2 == expected
        if not (inner_kind == "asyncio" and sys.version_info >= (3, 13)):
            # 3.13's stdlib loop resets the running loop even when it refused to run.
            assert still_outer
        assert not inner.is_running()
        # inner is still usable afterwards
        assert inner.run_until_complete(asyncio.sleep(0, result=1)) == 1
    finally:
        outer.close()
        inner.close()


def test_loop_usable_after_previous_loop_closed():
    for _ in range(20):
        lp = tokioloop.new_event_loop()
        assert lp.run_until_complete(asyncio.sleep(0.0001, result=1)) == 1
        lp.close()


# --------------------------------------------------------------------------
# Third-party detection
# --------------------------------------------------------------------------


def test_sniffio_detects_asyncio(loop):
    sniffio = pytest.importorskip("sniffio")
    res = []

    async def main():
        res.append(sniffio.current_async_library())
        await asyncio.sleep(0.001)
        res.append(await asyncio.create_task(child()))

    async def child():
        return sniffio.current_async_library()

    loop.run_until_complete(main())
    assert res == ["asyncio", "asyncio"]
    with pytest.raises(sniffio.AsyncLibraryNotFoundError):
        sniffio.current_async_library()


def test_anyio_on_tokioloop():
    anyio = pytest.importorskip("anyio")
    results = []

    async def child(i):
        await anyio.sleep(0.01)
        results.append(i)

    async def main():
        assert isinstance(asyncio.get_running_loop(), tokioloop.Loop)
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(child, i)
        r = await anyio.to_thread.run_sync(lambda: 40 + 2)
        with anyio.move_on_after(0.02) as scope:
            await anyio.sleep(5)
        return r, scope.cancelled_caught

    r = anyio.run(main, backend="asyncio", backend_options={"loop_factory": tokioloop.new_event_loop})
    assert r == (42, True)
    assert sorted(results) == list(range(5))


def test_python_version_supported():
    assert sys.version_info >= (3, 11)


def test_unclosed_loop_resource_warning_like_stdlib():
    import warnings

    def scen(kind):
        lp = make_loop(kind)
        lp.run_until_complete(asyncio.sleep(0))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            del lp
            gc.collect()
        return [(x.category, str(x.message).split(" ", 2)[:2]) for x in w]

    std = scen("asyncio")
    tl = scen("tokioloop")
    assert std == [(ResourceWarning, ["unclosed", "event"])]
    assert tl == std


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="child watchers were removed in 3.14")
def test_policy_child_watcher_api_like_stdlib_policy():
    # Code written for the stdlib policy calls get_child_watcher(); it must get
    # what asyncio's default policy gives (a watcher, plus the 3.12+ deprecation
    # warning), and subprocesses must keep working whatever watcher is set.
    import warnings

    results = {}
    for name, policy in (("stdlib", asyncio.DefaultEventLoopPolicy()), ("tokioloop", tokioloop.EventLoopPolicy())):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            watcher = policy.get_child_watcher()
        results[name] = (
            isinstance(watcher, asyncio.AbstractChildWatcher),
            sorted({w.category.__name__ for w in caught}),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            policy.set_child_watcher(asyncio.ThreadedChildWatcher())
            lp = policy.new_event_loop()
            policy.set_event_loop(lp)

        async def child():
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "print(6*7)", stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            return proc.returncode, out.strip()

        try:
            assert lp.run_until_complete(child()) == (0, b"42")
        finally:
            policy.set_event_loop(None)
            lp.close()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                policy.set_child_watcher(None)
    assert results["tokioloop"] == results["stdlib"]
    assert results["tokioloop"][0] is True
