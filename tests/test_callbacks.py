"""call_soon / call_soon_threadsafe / Handle API / ready-queue semantics."""

import asyncio
import contextvars
import gc
import sys
import threading
import time
import weakref

import pytest

from conftest import outcome, run_once, run_scenario_on_both

pytestmark = pytest.mark.timeout(20)

cvar = contextvars.ContextVar("cvar", default="default")


def get_ctx(h):
    """Handle.get_context() (public since 3.12); the stdlib 3.11 loop only has
    the private attribute.  tokioloop must provide get_context()."""
    if type(h).__module__.startswith("asyncio") and sys.version_info < (3, 12):
        return h._context
    return h.get_context()


def test_call_soon_runs_with_args(loop):
    res = []
    h = loop.call_soon(res.append, 1)
    loop.call_soon(lambda *a: res.append(a), 2, 3, "x")
    assert not h.cancelled()
    run_once(loop)
    assert res == [1, (2, 3, "x")]


def test_call_soon_fifo(loop):
    res = []
    for i in range(1000):
        loop.call_soon(res.append, i)
    run_once(loop)
    assert res == list(range(1000))


def test_call_soon_kwargs_rejected_like_stdlib():
    def scen(lp):
        r = outcome(lp.call_soon, print, x=1)
        return r[0], r[1]

    std, tl = run_scenario_on_both(scen)
    assert std == ("raise", TypeError)
    assert tl == std


def test_scheduled_during_iteration_runs_next_iteration_like_stdlib():
    def scen(lp):
        trace = []
        iteration = [0]

        def counter():
            # Marks iteration boundaries: re-schedules itself each iteration.
            iteration[0] += 1
            trace.append(f"iter{iteration[0]}")
            if iteration[0] < 4:
                lp.call_soon(counter)
            else:
                lp.stop()

        def a():
            trace.append("a")
            lp.call_soon(b)

        def b():
            trace.append("b")
            lp.call_soon(c)

        def c():
            trace.append("c")

        lp.call_soon(counter)
        lp.call_soon(a)
        lp.run_forever()
        return trace

    std, tl = run_scenario_on_both(scen)
    assert std == ["iter1", "a", "iter2", "b", "iter3", "c", "iter4"]
    assert tl == std


def test_self_rescheduling_callback_does_not_starve_loop(loop):
    # A callback re-scheduling itself forever must not prevent stop()
    # (and timers) from being processed: each runs one per iteration.
    count = [0]

    def spin():
        count[0] += 1
        loop.call_soon(spin)

    loop.call_soon(spin)
    loop.call_later(0.05, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 2
    assert count[0] > 10


def test_cancel_in_same_iteration_like_stdlib():
    def scen(lp):
        trace = []
        handles = {}

        def a():
            trace.append("a")
            handles["b"].cancel()

        handles["a"] = lp.call_soon(a)
        handles["b"] = lp.call_soon(trace.append, "b")
        lp.call_soon(trace.append, "c")
        run_once(lp)
        run_once(lp)
        return trace, handles["b"].cancelled(), handles["a"].cancelled()

    std, tl = run_scenario_on_both(scen)
    assert std == (["a", "c"], True, False)
    assert tl == std


def test_handle_cancel(loop):
    res = []
    h = loop.call_soon(res.append, 1)
    assert not h.cancelled()
    h.cancel()
    assert h.cancelled()
    h.cancel()  # idempotent
    assert h.cancelled()
    run_once(loop)
    assert res == []


def test_handle_cancel_after_run_is_harmless(loop):
    res = []
    h = loop.call_soon(res.append, 1)
    run_once(loop)
    h.cancel()
    assert h.cancelled()
    run_once(loop)
    assert res == [1]


def test_cancelled_handle_releases_callback(loop):
    class Obj:
        def meth(self):
            pass

    o = Obj()
    wr = weakref.ref(o)
    h = loop.call_soon(o.meth)
    del o
    h.cancel()
    run_once(loop)
    gc.collect()
    assert wr() is None


def test_executed_handle_releases_callback(loop):
    class Obj:
        def meth(self):
            pass

    o = Obj()
    wr = weakref.ref(o)
    loop.call_soon(o.meth)
    del o
    run_once(loop)
    gc.collect()
    assert wr() is None


def test_handle_repr(loop):
    def my_callback(x):
        pass

    h = loop.call_soon(my_callback, 42)
    r = repr(h)
    assert r.startswith("<") and r.endswith(">")
    assert "Handle" in r
    assert "my_callback" in r
    if sys.version_info < (3, 13):
        # 3.13 stopped showing callback arguments outside debug mode.
        assert "42" in r
    h.cancel()
    assert "cancelled" in repr(h)


def test_handle_repr_like_stdlib():
    def my_callback(x):
        pass

    def scen(lp):
        h = lp.call_soon(my_callback, 42)
        r1 = repr(h)
        h.cancel()
        r2 = repr(h)
        return r1, r2

    std, tl = run_scenario_on_both(scen)
    assert tl == std


def test_handle_type_names(loop, loop_kind):
    h = loop.call_soon(print)
    assert type(h).__name__ == "Handle"
    assert hasattr(h, "cancel") and hasattr(h, "cancelled")
    if loop_kind == "tokioloop" or sys.version_info >= (3, 12):
        assert hasattr(h, "get_context")
    h.cancel()


# --------------------------------------------------------------------------
# contextvars
# --------------------------------------------------------------------------


def test_call_soon_explicit_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(cvar.set, "in-ctx")
    seen = []

    def cb():
        seen.append(cvar.get())
        cvar.set("changed")

    h = loop.call_soon(cb, context=ctx)
    assert get_ctx(h) is ctx
    run_once(loop)
    assert seen == ["in-ctx"]
    assert ctx[cvar] == "changed"
    assert cvar.get() == "default"


def test_call_soon_implicit_context_is_copy(loop):
    token = cvar.set("outer")
    try:
        seen = []

        def cb():
            seen.append(cvar.get())
            cvar.set("inner")

        h = loop.call_soon(cb)
        ctx = get_ctx(h)
        assert isinstance(ctx, contextvars.Context)
        assert ctx[cvar] == "outer"
        cvar.set("later")  # must not affect the already captured context
        run_once(loop)
        assert seen == ["outer"]
        assert cvar.get() == "later"
    finally:
        cvar.reset(token)


def test_call_soon_threadsafe_context(loop):
    ctx = contextvars.Context()
    ctx.run(cvar.set, "ts")
    seen = []
    h = loop.call_soon_threadsafe(lambda: seen.append(cvar.get()), context=ctx)
    assert get_ctx(h) is ctx
    run_once(loop)
    assert seen == ["ts"]


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe"])
def test_implicit_contexts_are_separate_copies(loop, method):
    """Each callback runs in its own copy: what one sets, the next does not
    see (rloop's call_soon_threadsafe shares one context, and is faster by
    the copy it skips)."""
    schedule = getattr(loop, method)
    seen = []
    schedule(cvar.set, "first")
    schedule(lambda: seen.append(cvar.get(None)))
    run_once(loop)
    assert seen == [None]
    assert cvar.get(None) is None


def test_call_later_call_at_context(loop):
    ctx = contextvars.Context()
    ctx.run(cvar.set, "timer")
    seen = []
    h1 = loop.call_later(0, lambda: seen.append(("later", cvar.get())), context=ctx)
    h2 = loop.call_at(loop.time(), lambda: seen.append(("at", cvar.get())), context=ctx)
    assert get_ctx(h1) is ctx and get_ctx(h2) is ctx
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert sorted(seen) == [("at", "timer"), ("later", "timer")]


# --------------------------------------------------------------------------
# call_soon_threadsafe
# --------------------------------------------------------------------------


def test_call_soon_threadsafe_same_thread(loop):
    res = []
    h = loop.call_soon_threadsafe(res.append, "x")
    loop.call_soon(res.append, "y")
    run_once(loop)
    assert res == ["x", "y"]
    assert type(h).__name__ == "Handle"


def test_call_soon_threadsafe_wakes_blocked_loop(loop):
    loop.call_later(30, lambda: None)  # loop would otherwise block ~30 s

    def other():
        time.sleep(0.1)
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=other)
    t0 = time.monotonic()
    t.start()
    loop.run_forever()
    elapsed = time.monotonic() - t0
    t.join()
    assert elapsed < 1.0


def test_call_soon_threadsafe_cancel_from_other_thread(loop):
    res = []
    ev = threading.Event()

    def worker():
        h = loop.call_soon_threadsafe(res.append, "should-not-run")
        h.cancel()
        loop.call_soon_threadsafe(loop.stop)
        ev.set()

    def blocker():
        # Block the loop while the other thread schedules + cancels.
        t = threading.Thread(target=worker)
        t.start()
        assert ev.wait(5)
        t.join()

    loop.call_soon(blocker)
    loop.call_later(10, lambda: None)
    loop.run_forever()
    assert ev.is_set()
    assert res == []


# --------------------------------------------------------------------------
# Exceptions raised by callbacks
# --------------------------------------------------------------------------


def test_callback_exception_goes_to_handler_and_loop_continues(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))
    res = []

    def bad():
        raise ValueError("bad callback")

    loop.call_soon(bad)
    loop.call_soon(res.append, "after")
    run_once(loop)
    assert res == ["after"]
    assert len(contexts) == 1
    lp, ctx = contexts[0]
    assert lp is loop
    assert isinstance(ctx["exception"], ValueError)
    assert str(ctx["exception"]) == "bad callback"
    assert ctx["message"].startswith("Exception in callback")
    assert "bad" in ctx["message"]
    assert "handle" in ctx


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_base_exception_in_callback_propagates_like_stdlib(exc_type):
    def scen(lp):
        trace = []
        handled = []
        lp.set_exception_handler(lambda l, c: handled.append(c))

        def boom():
            trace.append("boom")
            raise exc_type("bye")

        lp.call_soon(trace.append, 1)
        lp.call_soon(boom)
        lp.call_soon(trace.append, 2)
        r = outcome(lp.run_forever)
        state = (lp.is_running(), asyncio._get_running_loop() is None)
        # The loop must be reusable afterwards; the leftover callback runs.
        lp.call_soon(lp.stop)
        lp.run_forever()
        return r, list(trace), state, len(handled)

    std, tl = run_scenario_on_both(scen)
    assert std[0] == ("raise", exc_type, "bye")
    assert tl == std


def test_base_exception_in_callback_inside_run_until_complete(loop):
    async def main():
        loop.call_soon(sys_exit)
        await asyncio.sleep(1)

    def sys_exit():
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        loop.run_until_complete(main())
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


async def _coro_fn():
    pass


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at", "call_soon_threadsafe"])
@pytest.mark.parametrize("bad", ["int", "coroutine_function", "coroutine"])
def test_bad_callback_debug_mode_like_stdlib(method, bad):
    """In debug mode the stdlib rejects non-callables and coroutines eagerly."""

    def scen(lp):
        lp.set_debug(True)
        cb = {"int": 5, "coroutine_function": _coro_fn, "coroutine": None}[bad]
        coro = None
        if bad == "coroutine":
            coro = cb = _coro_fn()
        try:
            if method == "call_soon":
                return outcome(lp.call_soon, cb)
            if method == "call_soon_threadsafe":
                return outcome(lp.call_soon_threadsafe, cb)
            if method == "call_later":
                return outcome(lp.call_later, 0, cb)
            return outcome(lp.call_at, lp.time(), cb)
        finally:
            if coro is not None:
                coro.close()

    std, tl = run_scenario_on_both(scen)
    assert std[0] == "raise" and std[1] is TypeError
    assert tl == std


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
def test_bad_callback_non_debug(tloop, method):
    """Without debug mode the stdlib defers the error to run time (the
    handle's call fails and the exception handler is invoked).  tokioloop
    may reject eagerly (TypeError with the stdlib's message) or defer like the
    stdlib -- but it must do one of the two, never crash or silently drop."""
    contexts = []
    tloop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    try:
        if method == "call_soon":
            tloop.call_soon(5)
        elif method == "call_later":
            tloop.call_later(0, 5)
        else:
            tloop.call_at(tloop.time(), 5)
    except TypeError as e:
        assert "a callable object was expected" in str(e)
        assert "got 5" in str(e)
        return
    tloop.call_later(0.01, tloop.stop)
    tloop.run_forever()
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], TypeError)


def test_call_later_none_delay_like_stdlib():
    def scen(lp):
        return [
            outcome(lp.call_later, None, print),
            outcome(lp.call_at, None, print),
            outcome(lp.call_later, "1", print)[:2],
        ]

    std, tl = run_scenario_on_both(scen)
    assert std[0] == ("raise", TypeError, "delay must not be None")
    assert std[1] == ("raise", TypeError, "when cannot be None")
    assert tl == std


class _CycleHolder:
    def method(self):
        pass


@pytest.mark.parametrize("kind", ["call_soon", "call_later", "call_soon_threadsafe"])
def test_reference_cycle_through_handle_is_collectable(loop, kind):
    # obj -> handle -> bound method -> obj: only the cyclic GC can free it, so
    # the Handle type must take part in garbage collection.
    o = _CycleHolder()
    if kind == "call_soon":
        o.h = loop.call_soon(o.method)
    elif kind == "call_soon_threadsafe":
        o.h = loop.call_soon_threadsafe(o.method)
    else:
        o.h = loop.call_later(0, o.method)
    wr = weakref.ref(o)
    del o
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    gc.collect()
    assert wr() is None, "reference cycle through a Handle was not collected"


def test_reference_cycle_through_pending_timer_collectable_after_close(loop):
    o = _CycleHolder()
    o.h = loop.call_later(3600, o.method)
    wr = weakref.ref(o)
    del o
    loop.close()
    gc.collect()
    assert wr() is None


def test_throughput_sanity_call_soon(loop):
    # Not a benchmark: only catches pathological (e.g. quadratic) behaviour.
    n = 200_000
    count = [0]

    def cb():
        count[0] += 1

    t0 = time.monotonic()
    for _ in range(n):
        loop.call_soon(cb)
    run_once(loop)
    assert count[0] == n
    assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------
# Re-entrancy from finalizers (a classic trap for native loops: a __del__
# triggered while the loop manipulates its queues schedules more work)
# --------------------------------------------------------------------------


class _SchedulesOnDel:
    def __init__(self, loop, trace, tag, how="call_soon"):
        self.loop, self.trace, self.tag, self.how = loop, trace, tag, how

    def __del__(self):
        try:
            if self.how == "call_soon":
                self.loop.call_soon(self.trace.append, ("from-del", self.tag))
            elif self.how == "call_later":
                self.loop.call_later(0, self.trace.append, ("from-del", self.tag))
            else:
                self.loop.call_soon_threadsafe(self.trace.append, ("from-del", self.tag))
        except RuntimeError as e:
            self.trace.append(("del-error", self.tag, str(e)))


@pytest.mark.parametrize("how", ["call_soon", "call_later", "call_soon_threadsafe"])
def test_finalizer_scheduling_during_loop_operations_like_stdlib(how):
    def scen(lp):
        trace = []

        def noop(arg):
            trace.append(("ran", arg.tag))

        # 1. args released after the handle ran
        lp.call_soon(noop, _SchedulesOnDel(lp, trace, "ran-handle", how))
        # 2. args released on cancel
        lp.call_later(3600, noop, _SchedulesOnDel(lp, trace, "cancelled-timer", how)).cancel()
        lp.call_soon(noop, _SchedulesOnDel(lp, trace, "cancelled-handle", how)).cancel()
        # 3. a fired timer
        lp.call_later(0, noop, _SchedulesOnDel(lp, trace, "fired-timer", how))
        for _ in range(3):
            lp.call_soon(lp.stop)
            lp.run_forever()
        gc.collect()
        for _ in range(2):
            lp.call_soon(lp.stop)
            lp.run_forever()
        # 4. released when the loop is closed
        lp.call_later(3600, noop, _SchedulesOnDel(lp, trace, "pending-at-close", how))
        lp.call_soon(noop, _SchedulesOnDel(lp, trace, "ready-at-close", how))
        lp.close()
        gc.collect()
        return sorted(map(repr, trace))

    std, tl = run_scenario_on_both(scen)
    assert tl == std


def test_cancel_own_handle_inside_callback_like_stdlib():
    def scen(lp):
        out = []
        hs = {}

        def cb():
            hs["h"].cancel()
            out.append(hs["h"].cancelled())

        hs["h"] = lp.call_soon(cb)
        hs["t"] = lp.call_later(0, lambda: (hs["t"].cancel(), out.append(hs["t"].cancelled())))
        lp.call_later(0.01, lp.stop)
        lp.run_forever()
        fired = lp.call_soon(lambda: None)
        run_once(lp)
        fired.cancel()
        out.append(fired.cancelled())
        return out

    std, tl = run_scenario_on_both(scen)
    assert tl == std


def test_callback_closing_over_loop_stop_and_reschedule_like_stdlib():
    def scen(lp):
        trace = []

        def cb(n):
            trace.append(n)
            if n < 6:
                lp.call_soon(cb, n + 1)
            if n % 2 == 0:
                lp.stop()

        lp.call_soon(cb, 0)
        for i in range(4):
            lp.run_forever()
            trace.append("|")
        return trace

    std, tl = run_scenario_on_both(scen)
    assert tl == std
