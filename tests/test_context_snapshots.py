"""Callbacks scheduled without ``context=`` see a copy of their caller's context.

tokioloop does not allocate that copy per handle (src/contexts.rs): it keeps
the caller's variables and runs the callback in a context of the loop's own,
reused while nobody can see it. Every test here runs on the stdlib loop too
(the oracle): what a callback sees, what its changes reach, what
``get_context()`` shows before, during and after the run, and what Tokens do.
"""

import asyncio
import contextvars
import gc
import os
import subprocess
import sys
import textwrap
import threading
import weakref

import pytest

import tokioloop
from tokioloop import _tokioloop

var = contextvars.ContextVar("var", default="unset")
other = contextvars.ContextVar("other", default="unset")

SCHEDULERS = ["call_soon", "call_later", "call_soon_threadsafe"]


def schedule(loop, how, cb, *args):
    if how == "call_later":
        return loop.call_later(0, cb, *args)
    return getattr(loop, how)(cb, *args)


def get_context(h):
    # Handle.get_context() is 3.12+ on the stdlib loop; `_context` is what it returns.
    return h.get_context() if hasattr(h, "get_context") else h._context


def run_until_idle(loop, rounds=3):
    for _ in range(rounds):
        loop.call_soon(loop.stop)
        loop.run_forever()


def in_fresh_context(fn):
    """Runs `fn` in an empty context, so that the test's variables start unset."""
    return contextvars.Context().run(fn)


def test_the_scheme_is_on_here():
    # Otherwise every other test here would only test the per-handle copies.
    # The thread-state read is found on 3.11-3.13 (the versions CI runs).
    assert _tokioloop._context_snapshots() == "snapshot, thread state"


@pytest.mark.parametrize("how", SCHEDULERS)
def test_callback_sees_its_callers_variables_as_they_were(loop, how):
    seen = []

    def body():
        var.set("a")
        schedule(loop, how, lambda: seen.append(var.get()))
        var.set("b")
        schedule(loop, how, lambda: seen.append(var.get()))
        var.set("c")
        run_until_idle(loop)

    in_fresh_context(body)
    assert seen == ["a", "b"]


@pytest.mark.parametrize("how", SCHEDULERS)
def test_a_callbacks_changes_reach_no_other_callback_nor_the_caller(loop, how):
    seen = []

    def first():
        seen.append(("first", var.get()))
        var.set("changed")
        other.set("changed")

    def second():
        seen.append(("second", var.get(), other.get()))

    def body():
        var.set("caller")
        schedule(loop, how, first)
        schedule(loop, how, second)
        run_until_idle(loop)
        seen.append(("caller", var.get(), other.get()))

    in_fresh_context(body)
    assert seen == [
        ("first", "caller"),
        ("second", "caller", "unset"),
        ("caller", "caller", "unset"),
    ]


def test_a_failing_callback_leaves_nothing_behind(loop):
    seen = []
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(type(ctx["exception"])))

    def failing():
        var.set("from the failing one")
        raise ZeroDivisionError

    def body():
        loop.call_soon(failing)
        loop.call_soon(lambda: seen.append(var.get()))
        run_until_idle(loop)

    in_fresh_context(body)
    assert errors == [ZeroDivisionError]
    assert seen == ["unset"]


def test_a_token_belongs_to_the_callback_that_made_it(loop):
    tokens = []
    results = []

    def make():
        tokens.append(var.set("made"))

    def reset_elsewhere():
        try:
            var.reset(tokens[0])
        except ValueError as e:
            results.append(("elsewhere", "ValueError", "different Context" in str(e)))
        else:
            results.append(("elsewhere", "reset"))
        results.append(("elsewhere sees", var.get()))

    def set_and_reset_here():
        t = var.set("here")
        var.reset(t)
        results.append(("here", var.get()))

    def body():
        loop.call_soon(make)
        loop.call_soon(reset_elsewhere)
        loop.call_soon(set_and_reset_here)
        run_until_idle(loop)

    in_fresh_context(body)
    assert results == [
        ("elsewhere", "ValueError", True),
        ("elsewhere sees", "unset"),
        ("here", "unset"),
    ]
    # The kept Token's context holds what its callback set.
    assert tokens[0].var is var


@pytest.mark.parametrize("how", SCHEDULERS)
def test_get_context_before_the_run_is_the_context_it_runs_in(loop, how):
    seen = []

    def body():
        var.set("at scheduling")
        h = schedule(loop, how, lambda: seen.append((var.get(), other.get())))
        ctx = get_context(h)
        assert isinstance(ctx, contextvars.Context)
        assert ctx is get_context(h)
        assert ctx[var] == "at scheduling"
        ctx.run(other.set, "set through get_context")
        run_until_idle(loop)
        return ctx

    ctx = in_fresh_context(body)
    assert seen == [("at scheduling", "set through get_context")]
    assert ctx[other] == "set through get_context"


@pytest.mark.parametrize("how", SCHEDULERS)
def test_get_context_of_a_kept_handle_shows_the_callbacks_changes(loop, how):
    def body():
        h = schedule(loop, how, var.set, "set by the callback")
        run_until_idle(loop)
        return h

    h = in_fresh_context(body)
    ctx = get_context(h)
    assert ctx[var] == "set by the callback"
    assert ctx is get_context(h)


def test_get_context_inside_the_callback_is_the_running_context(loop):
    seen = []
    handles = []

    def cb():
        var.set("inside")
        ctx = get_context(handles[0])
        seen.append((ctx[var], ctx is get_context(handles[0])))
        seen.append(ctx.get(other))

    def body():
        other.set("outer")
        handles.append(loop.call_soon(cb))
        run_until_idle(loop)

    in_fresh_context(body)
    assert seen == [("inside", True), "outer"]
    assert get_context(handles[0])[var] == "inside"


def test_a_handle_run_by_hand_inside_a_callback(loop):
    seen = []
    handles = []

    def inner():
        seen.append(("inner", var.get()))
        var.set("inner changed")

    def outer():
        var.set("outer")
        handles[0]._run()
        seen.append(("outer", var.get()))

    def body():
        var.set("for inner")
        handles.append(loop.call_later(3600, inner))
        var.set("for outer")
        loop.call_soon(outer)
        run_until_idle(loop)
        handles[0].cancel()

    in_fresh_context(body)
    assert seen == [("inner", "for inner"), ("outer", "outer")]


@pytest.mark.parametrize("how", SCHEDULERS)
def test_a_value_set_by_a_callback_goes_with_its_handle(loop, how):
    class Value:
        pass

    refs = []

    def cb():
        v = Value()
        refs.append(weakref.ref(v))
        var.set(v)

    def body():
        schedule(loop, how, cb)
        run_until_idle(loop)

    in_fresh_context(body)
    # No handle is kept: its context went with it, no collection needed.
    assert refs[0]() is None


def test_context_of_the_calling_thread(loop):
    seen = []
    started = threading.Event()

    def producer():
        var.set("producer thread")
        loop.call_soon_threadsafe(lambda: seen.append(var.get()))
        var.set("after")
        loop.call_soon_threadsafe(lambda: seen.append(var.get()))
        loop.call_soon_threadsafe(loop.stop)
        started.set()

    t = threading.Thread(target=producer)
    t.start()
    loop.run_forever()
    t.join()
    assert seen == ["producer thread", "after"]


def test_a_thread_that_never_used_a_context(loop):
    # Its thread state has no context yet when it schedules.
    seen = []

    def producer():
        loop.call_soon_threadsafe(lambda: seen.append(var.get()))
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=producer)
    t.start()
    loop.run_forever()
    t.join()
    assert seen == ["unset"]


def test_scheduling_from_inside_another_context(loop):
    seen = []
    elsewhere = contextvars.Context()
    elsewhere.run(var.set, "elsewhere")

    def cb():
        var.set("cb")
        elsewhere.run(loop.call_soon, lambda: seen.append(("from elsewhere", var.get())))
        loop.call_soon(lambda: seen.append(("from cb", var.get())))

    in_fresh_context(lambda: (loop.call_soon(cb), run_until_idle(loop)))
    assert seen == [("from elsewhere", "elsewhere"), ("from cb", "cb")]


@pytest.mark.parametrize("n", [1, 1000])
def test_many_callbacks_each_see_their_own_value(loop, n):
    seen = []

    def body():
        for i in range(n):
            var.set(i)
            loop.call_soon(lambda: (seen.append(var.get()), var.set(-1)))
        run_until_idle(loop)

    in_fresh_context(body)
    assert seen == list(range(n))


def test_tasks_and_future_callbacks_keep_their_contexts(loop):
    async def main():
        var.set("main")
        seen = []

        async def child():
            seen.append(("child", var.get()))
            var.set("child changed")

        t = asyncio.ensure_future(child())
        fut = loop.create_future()
        var.set("at add_done_callback")
        fut.add_done_callback(lambda f: seen.append(("done", var.get())))
        var.set("main again")
        await t
        fut.set_result(None)
        await asyncio.sleep(0)
        seen.append(("main", var.get()))
        return seen

    seen = in_fresh_context(lambda: loop.run_until_complete(main()))
    assert seen == [
        ("child", "main"),
        ("done", "at add_done_callback"),
        ("main", "main again"),
    ]


def test_cycle_through_a_kept_context_is_collected(tloop):
    class Node:
        pass

    n = Node()
    wr = weakref.ref(n)
    box = [n]
    n.h = tloop.call_soon(lambda: var.set(box.pop()))
    del n
    run_until_idle(tloop)
    assert wr() is not None  # node -> handle -> its context -> node
    gc.collect()
    assert wr() is None


def test_copies_per_handle_when_turned_off():
    code = textwrap.dedent(
        """
        import contextvars, tokioloop
        from tokioloop import _tokioloop
        var = contextvars.ContextVar("var", default="unset")
        loop = tokioloop.new_event_loop()
        seen = []
        var.set("a")
        loop.call_soon(lambda: (seen.append(var.get()), var.set("x")))
        loop.call_soon(lambda: seen.append(var.get()))
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.close()
        print(_tokioloop._context_snapshots(), seen)
        """
    )
    env = dict(os.environ, TOKIOLOOP_CONTEXT_COPIES="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "off ['a', 'a']"


def test_each_loops_run_context_goes_with_the_loop():
    def contexts():
        gc.collect()
        return sum(isinstance(o, contextvars.Context) for o in gc.get_objects())

    before = contexts()
    for _ in range(20):
        lp = tokioloop.new_event_loop()
        lp.call_soon(var.set, "x")
        run_until_idle(lp)
        lp.close()
        del lp
    assert contexts() == before
