"""call_later / call_at / TimerHandle / timing guarantees."""

import asyncio
import gc
import math
import random
import time
import weakref

import pytest

from conftest import outcome, run_once, run_scenario_on_both

pytestmark = pytest.mark.timeout(30)

# The stdlib fires a timer when ``when <= time() + clock_resolution``; on Linux
# the monotonic clock resolution is 1 ns.  Anything more is "early".
EARLY_SLACK = 1e-9 + time.get_clock_info("monotonic").resolution


def test_call_later_fires(loop):
    res = []
    t0 = loop.time()
    h = loop.call_later(0.02, lambda: res.append(loop.time()))
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert len(res) == 1
    assert res[0] >= h.when() - EARLY_SLACK
    assert res[0] - t0 >= 0.02 - EARLY_SLACK


def test_call_at_fires_and_when_is_exact(loop):
    res = []
    when = loop.time() + 0.02
    h = loop.call_at(when, lambda: res.append(loop.time()))
    assert h.when() == when
    loop.call_at(when + 0.02, loop.stop)
    loop.run_forever()
    assert len(res) == 1 and res[0] >= when - EARLY_SLACK


def test_call_at_arbitrary_when_preserved(loop):
    h = loop.call_at(123.456, print)
    assert h.when() == 123.456
    h.cancel()
    h2 = loop.call_at(10**9, print)
    assert h2.when() == 10**9
    h2.cancel()


@pytest.mark.parametrize("delay", [0, 0.0, -1, -0.5, -1e9])
def test_zero_and_negative_delay_return_timerhandle(loop, delay):
    res = []
    before = loop.time()
    h = loop.call_later(delay, res.append, delay)
    after = loop.time()
    assert type(h).__name__ == "TimerHandle"
    w = h.when()
    assert isinstance(w, float)
    assert before + delay - 1e-6 <= w <= after + delay + 1e-6
    assert not h.cancelled()
    loop.call_later(0.01, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert res == [delay]
    assert time.monotonic() - t0 < 1


def test_call_at_in_past_runs_next_iteration(loop):
    res = []
    loop.call_at(loop.time() - 100, res.append, "past")
    run_once(loop)
    assert res == ["past"]


def test_timers_ordered_by_deadline(loop):
    res = []
    for d in [0.03, 0.01, 0.05, 0.02, 0.04, 0.0]:
        loop.call_later(d, res.append, d)
    loop.call_later(0.08, loop.stop)
    loop.run_forever()
    assert res == [0.0, 0.01, 0.02, 0.03, 0.04, 0.05]


@pytest.mark.tokioloop_only
def test_equal_deadlines_fire_in_insertion_order(tloop):
    # The stdlib's heapq does not guarantee this; tokioloop's spec does.
    res = []
    when = tloop.time() + 0.05
    past = tloop.time() - 1.0
    for i in range(50):
        tloop.call_at(when, res.append, i)
    for i in range(50, 60):
        tloop.call_at(past, res.append, i)
    tloop.call_at(when + 0.02, tloop.stop)
    tloop.run_forever()
    assert res == list(range(50, 60)) + list(range(50))


def test_many_random_timers_in_deadline_order(loop):
    rnd = random.Random(1234)
    fired = []
    handles = []
    for i in range(2000):
        d = rnd.uniform(0, 0.05)
        handles.append(loop.call_later(d, lambda i=i: fired.append((loop.time(), i))))
    loop.call_later(0.1, loop.stop)
    loop.run_forever()
    assert len(fired) == 2000
    whens = [handles[i].when() for _, i in fired]
    assert whens == sorted(whens)
    for (t, i) in fired:
        assert t >= handles[i].when() - EARLY_SLACK


def test_timer_vs_ready_queue_order_like_stdlib():
    def scen(lp):
        trace = []
        lp.call_later(0, trace.append, "later0")
        lp.call_soon(trace.append, "soon1")
        lp.call_at(lp.time() - 1, trace.append, "at-past")
        lp.call_soon(trace.append, "soon2")

        def nested():
            trace.append("nested")
            lp.call_later(0, trace.append, "nested-later0")
            lp.call_soon(trace.append, "nested-soon")

        lp.call_soon(nested)
        lp.call_later(0.02, lp.stop)
        lp.run_forever()
        return trace

    std, tl = run_scenario_on_both(scen)
    assert tl == std


def test_timer_scheduling_timer_for_now_runs_next_iteration_like_stdlib():
    def scen(lp):
        trace = []
        it = [0]

        def tick():
            it[0] += 1
            trace.append(("tick", it[0]))
            if it[0] < 5:
                lp.call_soon(tick)

        def t1():
            trace.append(("t1", it[0]))
            lp.call_at(lp.time() - 1, lambda: trace.append(("t2", it[0])))

        lp.call_soon(tick)
        lp.call_at(lp.time() - 1, t1)
        lp.call_later(0.02, lp.stop)
        lp.run_forever()
        return trace

    std, tl = run_scenario_on_both(scen)
    assert tl == std


# --------------------------------------------------------------------------
# Never early
# --------------------------------------------------------------------------


def test_timer_never_fires_before_deadline(loop):
    deltas = [i * 0.0001 for i in range(1, 60)] + [0.001 * i for i in range(1, 20)]
    fired = {}
    handles = {}
    for i, d in enumerate(deltas):
        handles[i] = loop.call_later(d, lambda i=i: fired.__setitem__(i, (loop.time(), time.monotonic())))
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert len(fired) == len(deltas)
    early = []
    for i, (lt, mt) in fired.items():
        w = handles[i].when()
        if lt < w - EARLY_SLACK or mt < w - EARLY_SLACK:
            early.append((deltas[i], w - lt, w - mt))
    assert not early, f"timers fired early (delay, by loop.time, by monotonic): {early[:10]}"


def test_sleep_never_returns_early(loop):
    async def main():
        early = []
        for i in range(60):
            d = 0.0001 * (i % 20 + 1) + (0.002 if i % 3 == 0 else 0)
            m0 = time.monotonic()
            l0 = loop.time()
            await asyncio.sleep(d)
            m1 = time.monotonic()
            l1 = loop.time()
            if m1 - m0 < d - EARLY_SLACK or l1 - l0 < d - EARLY_SLACK:
                early.append((d, m1 - m0, l1 - l0))
        return early

    early = loop.run_until_complete(main())
    assert not early, f"asyncio.sleep returned early (d, by monotonic, by loop.time): {early[:10]}"


def test_concurrent_sleeps_never_early(loop):
    async def one(d):
        t0 = time.monotonic()
        await asyncio.sleep(d)
        return d, time.monotonic() - t0

    async def main():
        return await asyncio.gather(*(one(0.0005 * (i % 30 + 1)) for i in range(150)))

    res = loop.run_until_complete(main())
    early = [(d, e) for d, e in res if e < d - EARLY_SLACK]
    assert not early, early[:10]


def test_timer_not_grossly_late(loop):
    # Loose upper bound: a 10 ms timer on an idle loop fires within 100 ms.
    lates = []
    for _ in range(5):
        res = []
        h = loop.call_later(0.01, lambda: (res.append(loop.time()), loop.stop()))
        loop.run_forever()
        lates.append(res[0] - h.when())
    assert min(lates) < 0.1, lates


def test_sleep_zero_yields(loop):
    trace = []

    async def a():
        for i in range(3):
            trace.append(("a", i))
            await asyncio.sleep(0)

    async def b():
        for i in range(3):
            trace.append(("b", i))
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(a(), b())

    loop.run_until_complete(main())
    assert trace == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


# --------------------------------------------------------------------------
# Cancellation and memory
# --------------------------------------------------------------------------


def test_cancelled_timer_never_runs(loop):
    res = []
    h = loop.call_later(0.01, res.append, "cancelled")
    h2 = loop.call_later(0.01, res.append, "kept")
    h.cancel()
    assert h.cancelled() and not h2.cancelled()
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert res == ["kept"]


def test_timer_cancelled_by_earlier_callback_same_iteration(loop):
    res = []
    when = loop.time() + 0.01
    handles = {}

    def first():
        res.append("first")
        handles["second"].cancel()

    handles["first"] = loop.call_at(when, first)
    handles["second"] = loop.call_at(when + 1e-7, res.append, "second")
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert res == ["first"]


def test_cancel_timer_from_other_thread_prevents_run(loop):
    import threading

    res = []
    h = loop.call_later(0.1, res.append, "x")

    def other():
        h.cancel()
        loop.call_soon_threadsafe(loop.call_later, 0.2, loop.stop)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    loop.run_forever()
    assert res == []


class _Payload:
    def method(self):
        pass


@pytest.mark.parametrize("keep_handle", [False, True])
def test_cancelled_timer_does_not_pin_memory(loop, keep_handle):
    o = _Payload()
    wr = weakref.ref(o)
    h = loop.call_later(3600, o.method)
    arg = _Payload()
    wr_arg = weakref.ref(arg)
    h2 = loop.call_later(3600, print, arg)
    del o, arg
    h.cancel()
    h2.cancel()
    if not keep_handle:
        del h, h2
    run_once(loop)
    run_once(loop)
    gc.collect()
    assert wr() is None, "cancelled timer's callback still referenced"
    assert wr_arg() is None, "cancelled timer's args still referenced"


def test_many_cancelled_timers_release_memory(loop):
    refs = []
    for i in range(5000):
        o = _Payload()
        refs.append(weakref.ref(o))
        loop.call_later(3600 + i, o.method).cancel()
        del o
    run_once(loop)
    run_once(loop)
    gc.collect()
    alive = sum(1 for r in refs if r() is not None)
    assert alive == 0


def test_fired_timer_releases_callback(loop):
    o = _Payload()
    wr = weakref.ref(o)
    loop.call_later(0, o.method)
    del o
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    gc.collect()
    assert wr() is None


def test_loop_with_only_cancelled_timers_stops_promptly(loop):
    for i in range(100):
        loop.call_later(0.5, print).cancel()
    t0 = time.monotonic()
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert time.monotonic() - t0 < 0.4


# --------------------------------------------------------------------------
# TimerHandle API
# --------------------------------------------------------------------------


def test_timerhandle_comparison_like_stdlib():
    def cb():
        pass

    def scen(lp):
        base = 1000.0
        h1 = lp.call_at(base + 1, cb)
        h2 = lp.call_at(base + 2, cb)
        h1b = lp.call_at(base + 1, cb)
        h_other = lp.call_at(base + 1, print)
        r = {
            "lt": (h1 < h2, h2 < h1, h1 < h1b),
            "le": (h1 <= h2, h2 <= h1, h1 <= h1b),
            "gt": (h2 > h1, h1 > h2, h1 > h1b),
            "ge": (h2 >= h1, h1 >= h2, h1 >= h1b),
            "eq": (h1 == h1, h1 == h2, h1 == h1b, h1 == h_other),
            "ne": (h1 != h2, h1 != h1b),
            "sorted": [h.when() for h in sorted([h2, h1, h_other])],
            "hash": hash(h1) == hash(h1b),
            "lt_int": outcome(lambda: h1 < 5)[:2],
            "eq_int": h1 == 5,
        }
        h1b.cancel()
        r["eq_after_cancel"] = h1 == h1b
        for h in (h1, h2, h1b, h_other):
            h.cancel()
        return r

    std, tl = run_scenario_on_both(scen)
    assert std["lt"] == (True, False, False)
    diffs = {k: (std[k], tl[k]) for k in std if std[k] != tl[k]}
    assert not diffs, diffs


def test_timerhandle_repr(loop):
    def my_timer_cb():
        pass

    h = loop.call_at(1234.5, my_timer_cb)
    r = repr(h)
    assert "TimerHandle" in r
    assert "when=1234.5" in r
    assert "my_timer_cb" in r
    h.cancel()
    assert "cancelled" in repr(h)


def test_timerhandle_repr_like_stdlib():
    def my_timer_cb(a):
        pass

    def scen(lp):
        h = lp.call_at(1234.5, my_timer_cb, "arg")
        r1 = repr(h)
        h.cancel()
        return r1, repr(h)

    std, tl = run_scenario_on_both(scen)
    assert tl == std


# --------------------------------------------------------------------------
# Odd delays
# --------------------------------------------------------------------------


def test_nan_delay_like_stdlib():
    def scen(lp):
        trace = []
        r = outcome(lp.call_later, float("nan"), trace.append, "nan")
        if r[0] == "ok":
            lp.call_soon(trace.append, "soon")
            lp.call_later(0.02, lp.stop)
            lp.run_forever()
        return r, trace

    std, tl = run_scenario_on_both(scen)
    assert tl == std


def test_nan_call_at_when_like_stdlib():
    def scen(lp):
        h = lp.call_at(float("nan"), print)
        w = h.when()
        h.cancel()
        return math.isnan(w)

    std, tl = run_scenario_on_both(scen)
    assert tl == std


@pytest.mark.parametrize("delay", [float("inf"), 1e300, 10**12, 2**70])
def test_huge_delay_does_not_crash(loop, delay):
    res = []
    h = loop.call_later(delay, res.append, "never")
    assert h.when() >= 10**9
    loop.call_later(0.01, loop.stop)
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 1
    assert res == []
    h.cancel()


def test_minus_inf_call_at_like_stdlib():
    def scen(lp):
        trace = []
        r = outcome(lp.call_at, float("-inf"), trace.append, "x")
        lp.call_later(0.01, lp.stop)
        lp.run_forever()
        return r, trace

    std, tl = run_scenario_on_both(scen)
    assert tl == std


def test_int_and_bool_delays(loop):
    res = []
    h = loop.call_later(0, res.append, 1)
    h2 = loop.call_later(False, res.append, 2)
    h3 = loop.call_at(int(loop.time()) - 1, res.append, 3)
    assert isinstance(h.when(), float) and isinstance(h2.when(), float)
    assert h3.when() == int(h3.when())
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert sorted(res) == [1, 2, 3]


def test_throughput_sanity_timers(loop):
    # Not a benchmark: schedule and cancel many timers, fire many more.
    t0 = time.monotonic()
    hs = [loop.call_later(10 + i * 1e-4, print) for i in range(100_000)]
    for h in hs:
        h.cancel()
    fired = [0]

    def cb():
        fired[0] += 1

    for i in range(50_000):
        loop.call_later((i % 100) * 1e-4, cb)
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert fired[0] == 50_000
    assert time.monotonic() - t0 < 8
