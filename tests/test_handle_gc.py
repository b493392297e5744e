"""The cyclic GC and the handles the loop owns.

Handles scheduled by call_soon / call_later / call_at / call_soon_threadsafe
are not tracked by the GC while the loop holds them; the loop's own traverse
accounts for the ones it alone holds, and a handle the loop lets go of while
someone else still holds it is tracked from then on. These tests pin the
observable consequences: every cycle the stdlib loop lets the GC collect is
collected here too, and nothing is freed while still reachable.
"""

import asyncio
import contextvars
import gc
import os
import subprocess
import sys
import textwrap
import warnings
import weakref

import pytest

import tokioloop


def run_once(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()


class Holder:
    def method(self, *args):
        pass


SCHEDULERS = {
    "call_soon": lambda loop, cb: loop.call_soon(cb),
    "call_soon_arg": lambda loop, cb: loop.call_soon(cb, 1, 2),
    "call_later": lambda loop, cb: loop.call_later(0, cb),
    "call_later_arg": lambda loop, cb: loop.call_later(0, cb, 1, 2),
    "call_at": lambda loop, cb: loop.call_at(loop.time(), cb),
    "call_soon_threadsafe": lambda loop, cb: loop.call_soon_threadsafe(cb),
}


@pytest.fixture
def loop():
    lp = tokioloop.new_event_loop()
    yield lp
    lp.close()


@pytest.mark.parametrize("how", list(SCHEDULERS))
def test_cycle_through_a_handle_is_collected_once_the_loop_ran_it(loop, how):
    o = Holder()
    o.h = SCHEDULERS[how](loop, o.method)
    wr = weakref.ref(o)
    del o
    gc.collect()
    assert wr() is not None, "freed while the loop still holds the handle"
    run_once(loop)
    run_once(loop)
    gc.collect()
    assert wr() is None, "a cycle through a handle the loop released was not collected"


def test_future_holding_its_own_timer_is_collected(loop):
    # The shape of asyncio.sleep()/wait_for(): a future keeps the TimerHandle
    # whose callback is bound to the future's owner.
    class Waiter:
        def __init__(self, loop):
            self.fut = loop.create_future()
            self.timer = loop.call_later(0, self.fire)

        def fire(self):
            self.fut.set_result(self)

    w = Waiter(loop)
    wr = weakref.ref(w)
    fut_wr = weakref.ref(w.fut)
    fut = w.fut
    del w
    assert loop.run_until_complete(fut) is wr()
    del fut
    gc.collect()
    assert wr() is None and fut_wr() is None


def test_cycle_through_a_cancelled_pruned_timer_is_collected(loop):
    o = Holder()
    o.h = loop.call_later(3600, o.method)
    wr = weakref.ref(o)
    o.h.cancel()
    # Cancel released the callback already: the cycle is gone with it.
    del o
    run_once(loop)
    gc.collect()
    assert wr() is None


def test_cycle_through_a_pending_timer_is_kept_while_pending(loop):
    o = Holder()
    o.h = loop.call_later(3600, o.method)
    wr = weakref.ref(o)
    del o
    for _ in range(3):
        run_once(loop)
        gc.collect()
    assert wr() is not None, "collected although the loop still holds the timer"
    assert wr().h._callback == wr().method
    wr().h.cancel()
    run_once(loop)
    gc.collect()
    assert wr() is None


_var = contextvars.ContextVar("_var")


@pytest.mark.parametrize("how", ["call_soon", "call_later", "call_soon_threadsafe"])
def test_cycle_through_a_handles_own_context_is_collected(loop, how):
    # node -> handle -> the handle's context copy -> (var set by the callback
    # inside that context) -> node: the only cycle runs through the context.
    n = Holder()
    wr = weakref.ref(n)
    schedule = getattr(loop, how)
    args = (0,) if how == "call_later" else ()
    box = [n]  # emptied by the callback: afterwards only the context holds n
    n.h = schedule(*args, lambda: _var.set(box.pop()))
    del n
    run_once(loop)
    run_once(loop)
    # (get_context() is not called: it would make the context visible itself)
    assert wr() is not None
    gc.collect()
    assert wr() is None, "a cycle through a handle's context was not collected"


def test_context_of_a_pending_handle_is_kept_alive(loop):
    o = Holder()
    h = loop.call_later(3600, o.method)
    ctx = h.get_context()
    ctx.run(_var.set, o)
    o.ctx = ctx
    wr = weakref.ref(o)
    del o, ctx
    gc.collect()
    assert wr() is not None and h.get_context()[_var] is wr()
    h.cancel()
    del h
    run_once(loop)
    gc.collect()
    assert wr() is None


def test_pending_sole_owned_handle_is_accounted_through_the_loop(loop):
    cb = Holder().method
    loop.call_later(3600, cb)
    loop.call_soon(cb)
    # The loop reports what its sole-owned handles reference, so a cycle
    # through the loop itself is visible to the GC.
    refs = gc.get_referents(loop)
    assert sum(1 for r in refs if r == cb) >= 2


def _drop_unclosed_loop_in_cycle(new_loop):
    lp = new_loop()
    lp.call_later(10, lp.stop)
    lp.call_soon(lp.stop)
    wr = weakref.ref(lp)
    del lp
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        gc.collect()
    return wr() is None, sorted({(x.category.__name__, str(x.message).split(" ")[0]) for x in w})


def test_unclosed_loop_in_a_cycle_with_its_own_timers_is_collected_like_stdlib():
    std = _drop_unclosed_loop_in_cycle(asyncio.new_event_loop)
    tl = _drop_unclosed_loop_in_cycle(tokioloop.new_event_loop)
    assert std[0] is True
    assert tl == std


def test_handle_kept_by_user_is_tracked_after_the_loop_lets_go(loop):
    h = loop.call_later(0, Holder().method)
    h2 = loop.call_soon(Holder().method)
    assert not gc.is_tracked(h) and not gc.is_tracked(h2)
    run_once(loop)
    run_once(loop)
    assert gc.is_tracked(h) and gc.is_tracked(h2)


def test_handle_kept_by_user_is_tracked_after_close():
    lp = tokioloop.new_event_loop()
    o = Holder()
    o.h = lp.call_later(3600, o.method)
    o.h2 = lp.call_soon(o.method)
    wr = weakref.ref(o)
    del o
    lp.close()
    gc.collect()
    assert wr() is None


def test_handle_kept_by_user_released_by_an_unclosed_loop():
    lp = tokioloop.new_event_loop()
    o = Holder()
    o.h = lp.call_later(3600, o.method)
    wr = weakref.ref(o)
    del o
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del lp
        gc.collect()
    assert wr() is None


def test_handle_held_elsewhere_keeps_its_referents_when_the_loop_is_garbage():
    # A loop in a cycle with a pending timer that the user also holds: the
    # loop is not garbage (user -> timer -> callback -> payload -> loop), so
    # nothing may be cleared. A loop subclass that does not close itself in
    # __del__ keeps the timer queued through the collection.
    class NoCloseLoop(tokioloop.Loop):
        def __del__(self):
            pass

    class Payload:
        def __init__(self, lp):
            self.data = [1, 2, 3]
            self.lp = lp

        def method(self):
            return self.data

    lp = NoCloseLoop()
    keep = lp.call_later(3600, Payload(lp).method)
    wr = weakref.ref(lp)
    del lp
    gc.collect()
    assert wr() is not None
    assert keep._callback() == [1, 2, 3]
    wr().close()
    del keep
    gc.collect()
    assert wr() is None


STRESS = textwrap.dedent(
    """
    import contextvars, gc, random, sys, weakref, warnings
    import tokioloop

    var = contextvars.ContextVar("var")
    warnings.simplefilter("ignore", ResourceWarning)
    rnd = random.Random(1234)

    class Node:
        def __init__(self, payload):
            self.payload = payload
            self.peer = self
        def method(self, *args):
            # Reach everything we reference: a freed object would crash here.
            assert self.payload[0] == len(self.payload) - 1
            if rnd.random() < 0.02:
                gc.collect(rnd.choice([0, 1, 2]))

    refs = []
    for round_ in range(30):
        lp = tokioloop.new_event_loop()
        for i in range(400):
            n = Node([2, round_, i])
            refs.append(weakref.ref(n))
            kind = rnd.randrange(6)
            if kind == 0:
                lp.call_soon(n.method, n)
            elif kind == 1:
                n.h = lp.call_soon(n.method)
            elif kind == 2:
                n.h = lp.call_later(rnd.random() * 0.002, n.method, [n])
            elif kind == 3:
                n.h = lp.call_later(3600, n.method)
                if rnd.random() < 0.5:
                    n.h.cancel()
            elif kind == 4:
                lp.call_soon_threadsafe(n.method, n)
                if rnd.random() < 0.3:
                    # a cycle through the handle's own context copy
                    n.h = lp.call_soon(lambda box=[n]: var.set(box.pop()))
            else:
                lp.call_later(3600, n.method, n)
            if rnd.random() < 0.01:
                gc.collect()
        del n
        lp.call_later(0.004, lp.stop)
        lp.run_forever()
        gc.collect()
        how = round_ % 3
        if how == 0:
            lp.close()
            del lp
        elif how == 1:
            lp.call_later(60, lp.stop)  # a cycle through the loop itself
            del lp
        else:
            del lp
        gc.collect()
    gc.collect()
    alive = sum(1 for r in refs if r() is not None)
    print("alive", alive)
    sys.exit(0 if alive == 0 else 1)
    """
)


def test_stress_under_debug_allocator():
    env = dict(os.environ, PYTHONMALLOC="debug", PYTHONDEVMODE="1")
    r = subprocess.run(
        [sys.executable, "-X", "dev", "-c", STRESS],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    assert "alive 0" in r.stdout
