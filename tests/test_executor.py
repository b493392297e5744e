"""run_in_executor and the default executor."""

import asyncio
import concurrent.futures
import sys
import threading
import time
import warnings

import pytest

import tokioloop

from conftest import outcome, run_scenario_on_both

pytestmark = pytest.mark.timeout(30)


def test_run_in_executor_default(loop):
    main_thread = threading.get_ident()

    def work(a, b):
        return a + b, threading.get_ident()

    res, tid = loop.run_until_complete(loop.run_in_executor(None, work, 2, 3))
    assert res == 5
    assert tid != main_thread
    assert isinstance(loop._default_executor, concurrent.futures.ThreadPoolExecutor)
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_returns_future(loop):
    fut = loop.run_in_executor(None, lambda: 1)
    assert asyncio.isfuture(fut)
    assert loop.run_until_complete(fut) == 1
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_exception(loop):
    def boom():
        raise ValueError("from thread")

    with pytest.raises(ValueError, match="from thread"):
        loop.run_until_complete(loop.run_in_executor(None, boom))
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_concurrency(loop):
    async def main():
        t0 = time.monotonic()
        await asyncio.gather(*(loop.run_in_executor(None, time.sleep, 0.1) for _ in range(4)))
        return time.monotonic() - t0

    assert loop.run_until_complete(main()) < 0.35
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_explicit_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="custom-ex") as ex:
        name = loop.run_until_complete(loop.run_in_executor(ex, lambda: threading.current_thread().name))
    assert name.startswith("custom-ex")
    assert loop._default_executor is None


def test_set_default_executor(loop):
    ex = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="my-default")
    loop.set_default_executor(ex)
    assert loop._default_executor is ex
    name = loop.run_until_complete(loop.run_in_executor(None, lambda: threading.current_thread().name))
    assert name.startswith("my-default")
    loop.run_until_complete(loop.shutdown_default_executor())
    # shutdown_default_executor shut the executor down
    with pytest.raises(RuntimeError):
        ex.submit(print)


def test_set_default_executor_bad_like_stdlib():
    def scen(lp):
        pe = concurrent.futures.ProcessPoolExecutor(1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return [outcome(lp.set_default_executor, pe)[:2], outcome(lp.set_default_executor, object())[:2]]
        finally:
            pe.shutdown(wait=False)

    std, tl = run_scenario_on_both(scen)
    assert tl == std


def test_run_in_executor_after_shutdown_like_stdlib():
    def scen(lp):
        lp.run_until_complete(lp.run_in_executor(None, lambda: None))
        lp.run_until_complete(lp.shutdown_default_executor())
        r = outcome(lp.run_in_executor, None, print)
        # an explicit executor still works
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            r2 = lp.run_until_complete(lp.run_in_executor(ex, lambda: "explicit"))
        return r, r2

    std, tl = run_scenario_on_both(scen)
    assert std[0] == ("raise", RuntimeError, "Executor shutdown has been called")
    assert tl == std


def test_shutdown_default_executor_without_executor(loop):
    loop.run_until_complete(loop.shutdown_default_executor())
    assert loop._default_executor is None


def test_shutdown_default_executor_joins_threads(loop):
    loop.run_until_complete(loop.run_in_executor(None, time.sleep, 0.05))
    threads_before = {t for t in threading.enumerate() if t is not threading.main_thread()}
    assert threads_before
    loop.run_until_complete(loop.shutdown_default_executor())
    ex = loop._default_executor
    if ex is not None:
        for t in getattr(ex, "_threads", ()):
            assert not t.is_alive()


@pytest.mark.tokioloop_only
def test_shutdown_default_executor_timeout_positional(tloop):
    # asyncio.Runner (3.12+) calls loop.shutdown_default_executor(timeout)
    # positionally; tokioloop must accept it on every Python version.
    tloop.run_until_complete(tloop.run_in_executor(None, lambda: None))
    tloop.run_until_complete(tloop.shutdown_default_executor(5))
    tloop.run_until_complete(tloop.shutdown_default_executor(timeout=5))


@pytest.mark.skipif(sys.version_info < (3, 12), reason="stdlib timeout parameter is 3.12+")
def test_shutdown_default_executor_timeout_like_stdlib():
    def scen(lp):
        lp.run_until_complete(lp.run_in_executor(None, lambda: None))
        return outcome(lp.run_until_complete, lp.shutdown_default_executor(1))

    std, tl = run_scenario_on_both(scen)
    assert tl == std


def test_run_in_executor_debug_rejects_coroutine_function_like_stdlib():
    async def cf():
        pass

    def scen(lp):
        lp.set_debug(True)
        return outcome(lp.run_in_executor, None, cf)

    std, tl = run_scenario_on_both(scen)
    assert std == ("raise", TypeError, "coroutines cannot be used with run_in_executor()")
    assert tl == std


def test_to_thread(loop):
    async def main():
        return await asyncio.to_thread(lambda x: x * 2, 21)

    assert loop.run_until_complete(main()) == 42
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_shuts_down_default_executor():
    holder = {}

    async def main():
        lp = asyncio.get_running_loop()
        await lp.run_in_executor(None, time.sleep, 0.01)
        holder["ex"] = lp._default_executor

    tokioloop.run(main())
    ex = holder["ex"]
    assert ex is not None
    with pytest.raises(RuntimeError):
        ex.submit(print)
