"""Differential testing: hypothesis generates random asyncio programs, each runs
on the stdlib loop and on tokioloop, and the two traces of events must match.

Three kinds of programs:

* iteration-exact programs (no real time involved): call_soon, call_at with
  deadlines in the past that collide, call_later(0 or negative), cancel,
  call_soon_threadsafe from the loop thread and from another thread (joined
  inside the callback, so the order is defined), futures created, resolved,
  failed and cancelled from callbacks and tasks, tasks that sleep(0), await
  futures, wait_for(timeout=0/None/100), gather (with and without
  return_exceptions), task.cancel(), ValueError / KeyboardInterrupt /
  SystemExit raised in callbacks and tasks, loop.stop() from callbacks.  The
  driver runs the loop one iteration per run_forever() (stop and restart), so
  the trace records iteration boundaries, the exception handler's calls,
  contextvars seen by each callback and task, and the final state of every
  task, future and handle (with its repr).  Half of the programs run in
  debug mode.  All deadlines are due at once, so nothing depends on time.

  Equal deadlines: asyncio does not define their order (its heapq is not
  stable, see test_stdlib_heap_is_not_insertion_stable); tokioloop documents
  insertion order.  Programs with colliding deadlines are compared against
  the stdlib loop patched to break ties by insertion (StableTieLoop); programs
  with distinct deadlines against the unmodified stdlib loop.

* timed programs: tasks sleeping until quantised deadlines, wait_for with
  timeouts, futures resolved or cancelled by timers, a thread calling
  call_soon_threadsafe at a given time, task cancellation by timers, gather,
  loop.stop() from a timer followed by run_until_complete() again.  Every
  time-driven event gets its own slot (a multiple of QUANTUM seconds after
  the start, absolute, so latencies do not accumulate); only the order of
  events is compared.  A mismatch is re-run (scheduler noise on a loaded
  machine); a test fails only when the traces never agree.

* stream traffic programs (at the end of the file): random writes, buffer
  limits, reader pauses, Protocol/BufferedProtocol with tiny to large buffers.

CI runs a fixed, derandomized set (500 + 12 + 25 examples, ~15 s).
TOKIOLOOP_FUZZ_EXAMPLES=5000 runs 5000 random iteration-exact programs, 250
timed ones and 500 stream ones, with a new seed every run (hypothesis prints
the failing program); TOKIOLOOP_FUZZ_QUANTUM=0.05 widens the time slots of
timed programs on a slow machine.
"""

import asyncio
import contextvars
import functools
import itertools
import re
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, assume, currently_in_test_context, given, note, settings
from hypothesis import strategies as st

from reliability_helpers import env_int, new_loop

FUZZ = env_int("TOKIOLOOP_FUZZ_EXAMPLES", 0)
QUANTUM = float(__import__("os").environ.get("TOKIOLOOP_FUZZ_QUANTUM", "0.03"))

pytestmark = pytest.mark.timeout(max(120, FUZZ // 2) if FUZZ else 120)


def _settings(ci_examples, fuzz_share=1):
    """CI: a fixed, derandomized set.  With TOKIOLOOP_FUZZ_EXAMPLES=N: N random
    examples (N // fuzz_share for the slower kinds of program), a new seed
    every run."""
    if FUZZ:
        return settings(
            max_examples=max(1, FUZZ // fuzz_share),
            deadline=None,
            database=None,
            derandomize=False,
            print_blob=True,
            suppress_health_check=list(HealthCheck),
        )
    return settings(
        max_examples=ci_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


EXC_TYPES = {
    "ValueError": ValueError,
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
}
_exc_kind = st.sampled_from(tuple(EXC_TYPES))

cv = contextvars.ContextVar("cv", default="-")


def _outcome(fut):
    if not fut.done():
        return "pending"
    if fut.cancelled():
        return "cancelled"
    exc = fut.exception()
    if exc is not None:
        return ("exc", type(exc).__name__, str(exc))
    res = fut.result()
    if isinstance(res, (int, str, type(None), tuple, list)):
        return ("ok", repr(res))
    return ("ok", type(res).__name__)


def _norm_repr(h):
    # a timer's deadline differs between runs; everything else must match
    r = repr(h).replace("<_StableTimerHandle ", "<TimerHandle ")  # the oracle's class
    return re.sub(r"when=[-+0-9.e]+", "when=?", r)


def _summ(x):
    if isinstance(x, BaseException):
        return ("exc", type(x).__name__)
    return repr(x)


# ====================================================== iteration-exact programs

_fut_idx = st.integers(0, 5)
_leaf = st.one_of(
    st.just(("stop",)),
    st.tuples(st.just("cancel"), st.integers(0, 15)),
    st.just(("newfut",)),
    st.tuples(st.just("resolve"), _fut_idx, st.sampled_from(("result", "exc", "cancel"))),
    st.tuples(st.just("tcancel"), st.integers(0, 5)),
    st.tuples(st.just("raise"), _exc_kind),
    st.just(("reenter",)),
    st.tuples(st.just("bulk"), st.integers(20, 160), st.integers(2, 4)),
)
_step_leaf = st.one_of(
    st.just(("rec",)),
    st.just(("sleep0",)),
    st.tuples(st.just("await"), _fut_idx),
    st.tuples(st.just("waitfor"), _fut_idx, st.sampled_from((0, None, 100))),
    st.tuples(st.just("resolve"), _fut_idx, st.sampled_from(("result", "exc", "cancel"))),
    st.tuples(st.just("raise"), _exc_kind),
)


def _extend(action):
    body = st.lists(action, max_size=3)
    simple_steps = st.lists(_step_leaf, max_size=4)
    step = st.one_of(
        _step_leaf,
        st.tuples(st.just("spawn"), body),
        st.tuples(st.just("gather"), st.lists(simple_steps, min_size=1, max_size=3), st.booleans()),
    )
    return st.one_of(
        st.tuples(st.just("soon"), body),
        st.tuples(st.just("at"), st.integers(0, 3), body),
        st.tuples(st.just("later"), st.sampled_from((0.0, -1.0)), body),
        st.tuples(st.just("ts_self"), body),
        st.tuples(st.just("ts_thread"), body),
        st.tuples(st.just("task"), st.lists(step, max_size=5)),
        st.tuples(st.just("far"), body),
        st.tuples(st.just("donecb"), _fut_idx, body),
    )


_action = st.recursive(_leaf, _extend, max_leaves=30)
# (colliding deadlines allowed?, debug mode?, the top-level body)
_program = st.tuples(st.booleans(), st.booleans(), st.lists(_action, min_size=1, max_size=8))

ROUNDS = 12
CLEANUP_ROUNDS = 6


class _ExactRun:
    def __init__(self, loop, ties):
        self.loop = loop
        self.ties = ties
        self.trace = []
        self.handles = []
        self.futs = []
        self.tasks = []  # created by "task" actions (targets of tcancel)
        self.all_tasks = []  # every task, gather's children included (task factory)
        self.labels = itertools.count()
        self.base = loop.time() - 1000.0
        loop.set_exception_handler(self._handler)
        loop.set_task_factory(self._task_factory)

    def _task_factory(self, loop, coro, **kwargs):
        t = asyncio.Task(coro, loop=loop, **kwargs)
        self.all_tasks.append(t)
        return t

    def rec(self, *ev):
        self.trace.append(ev)

    def _handler(self, loop, ctx):
        exc = ctx.get("exception")
        self.rec("handler", ctx.get("message"), type(exc).__name__ if exc is not None else None)

    # --- actions (callback bodies)

    def exec_body(self, body, who):
        for act in body:
            self.exec_action(act, who)

    def exec_action(self, act, who):
        kind = act[0]
        loop = self.loop
        if kind == "stop":
            loop.stop()
        elif kind == "cancel":
            if act[1] < len(self.handles):
                self.handles[act[1]].cancel()
        elif kind == "newfut":
            j = len(self.futs)
            f = loop.create_future()
            self.futs.append(f)
            f.add_done_callback(functools.partial(self._fut_done, j))
        elif kind == "resolve":
            self.resolve(act[1], act[2], who)
        elif kind == "tcancel":
            if act[1] < len(self.tasks):
                self.rec("tcancel", who, act[1], self.tasks[act[1]].cancel())
        elif kind == "raise":
            raise EXC_TYPES[act[1]](f"from {who}")
        elif kind == "task":
            label = next(self.labels)
            self.tasks.append(loop.create_task(self.coro(label, act[1])))
        elif kind == "reenter":
            # Not allowed while running (RuntimeError, reported to the handler);
            # allowed at top level, where it runs one iteration.
            loop.call_soon(loop.stop)
            loop.run_forever()
        elif kind == "bulk":
            # Enough cancelled timers to make both heaps compact themselves;
            # the survivors must still run in (deadline, insertion) order.
            n, mod = act[1], act[2]
            label = next(self.labels)
            for i in range(n):
                when = self.base + (i % 3)
                if not self.ties:
                    # never equal to another deadline ("at" ones have no 0.5)
                    when += 0.5 + (label % 400) * 1e-3 + i * 1e-7
                h = loop.call_at(when, self.rec, "bulk", label, i)
                if i % mod:
                    h.cancel()
        elif kind == "donecb":
            if act[1] < len(self.futs):
                label = next(self.labels)
                cb = self.make_cb(label, act[2])
                self.futs[act[1]].add_done_callback(lambda fut, cb=cb: cb())
        else:
            label = next(self.labels)
            cb = self.make_cb(label, act[-1])
            if kind == "soon":
                h = loop.call_soon(cb)
            elif kind == "at":
                when = self.base + act[1]
                if not self.ties:
                    when += label * 1e-6
                h = loop.call_at(when, cb)
            elif kind == "later":
                h = loop.call_later(act[1], cb)
            elif kind == "far":
                h = loop.call_later(1000.0, cb)
            elif kind == "ts_self":
                h = loop.call_soon_threadsafe(cb)
            elif kind == "ts_thread":
                box = []
                th = threading.Thread(target=lambda: box.append(loop.call_soon_threadsafe(cb)))
                th.start()
                th.join()
                h = box[0]
            else:  # pragma: no cover - generator and interpreter out of sync
                raise AssertionError(kind)
            self.handles.append(h)

    def resolve(self, j, how, who):
        if j >= len(self.futs):
            self.rec("resolve-nofut", who, j)
            return
        f = self.futs[j]
        if f.done():
            self.rec("resolve-done", who, j)
            return
        if how == "result":
            f.set_result(f"r{j}")
        elif how == "exc":
            f.set_exception(ValueError(f"f{j}"))
        else:
            self.rec("fcancel", who, j, f.cancel())

    def _fut_done(self, j, fut):
        self.rec("fdone", j, _outcome(fut), cv.get())

    def make_cb(self, label, body):
        def cb():
            self.rec("cb", label, cv.get())
            cv.set(label)
            self.exec_body(body, label)

        return cb

    # --- tasks

    async def coro(self, label, steps):
        self.rec("task", label, cv.get())
        cv.set(label)
        for i, step in enumerate(steps):
            await self.exec_step(label, i, step)
        self.rec("tend", label)
        return label

    async def exec_step(self, label, i, step):
        kind = step[0]
        if kind == "rec":
            self.rec("t", label, i)
        elif kind == "sleep0":
            await asyncio.sleep(0)
            self.rec("t", label, i, "woke")
        elif kind in ("await", "waitfor"):
            j = step[1]
            if j >= len(self.futs):
                self.rec("t", label, i, "nofut")
                return
            try:
                if kind == "await":
                    r = await self.futs[j]
                else:
                    r = await asyncio.wait_for(self.futs[j], step[2])
                self.rec("t", label, i, "ok", r)
            except (Exception, asyncio.CancelledError) as e:
                self.rec("t", label, i, "err", type(e).__name__)
        elif kind == "spawn":
            self.exec_action(("soon", step[1]), label)
        elif kind == "resolve":
            self.resolve(step[1], step[2], label)
        elif kind == "raise":
            raise EXC_TYPES[step[1]](f"from task {label}")
        elif kind == "gather":
            subs = [self.coro(next(self.labels), s) for s in step[1]]
            try:
                r = await asyncio.gather(*subs, return_exceptions=step[2])
                self.rec("t", label, i, "gathered", [_summ(x) for x in r])
            except (Exception, asyncio.CancelledError) as e:
                self.rec("t", label, i, "err", type(e).__name__)
        else:  # pragma: no cover
            raise AssertionError(kind)

    # --- driver

    def one_round(self):
        self.loop.call_soon(self.loop.stop)
        try:
            self.loop.run_forever()
        except BaseException as e:  # noqa: BLE001 - KeyboardInterrupt/SystemExit escape
            self.rec("escaped", type(e).__name__, str(e))
        self.rec("|")

    def drive(self, body):
        try:
            self.exec_body(body, "top")
        except BaseException as e:  # noqa: BLE001
            self.rec("top-raised", type(e).__name__)
        for _ in range(ROUNDS):
            self.one_round()
        for _ in range(CLEANUP_ROUNDS):
            for t in self.all_tasks:
                if not t.done():
                    t.cancel()
            self.one_round()
        self.rec("tasks", [_outcome(t) for t in self.all_tasks])
        self.rec("futures", [_outcome(f) for f in self.futs])
        self.rec("handles", [(h.cancelled(), _norm_repr(h)) for h in self.handles])

    def dispose(self):
        # Nothing may reach this run's trace after the snapshot (GC of pending
        # tasks or unretrieved exceptions would log through the handler).
        self.loop.set_exception_handler(lambda loop, ctx: None)
        for t in self.all_tasks:
            if not t.done():
                t._log_destroy_pending = False
                t.get_coro().close()


def run_exact(kind, program):
    ties, debug, body = program
    loop = new_loop(kind)
    loop.set_debug(debug)
    run = _ExactRun(loop, ties)
    try:
        contextvars.Context().run(run.drive, body)
        return run.trace
    finally:
        run.dispose()
        asyncio.set_event_loop(None)
        loop.close()


# CPython 3.13.0's run_forever() runs its cleanup even when its setup refused a
# re-entrant call: the refused call resets the running loop's thread id, running-
# loop registration and asyncgen hooks, so what follows differs (a second attempt
# really re-enters and fails with IndexError from the ready deque). Fixed in
# 3.13.1. The oracle is wrong there, so re-entrant programs are not compared on 3.13.0.
_ORACLE_REENTRY_BUG = sys.version_info[:3] == (3, 13, 0)


def _check_exact(program):
    if _ORACLE_REENTRY_BUG and "'reenter'" in repr(program):
        # assume() only inside a property test (hypothesis deprecates it
        # elsewhere); the fixed programs are skipped instead.
        if currently_in_test_context():
            assume(False)
        pytest.skip("CPython 3.13.0's run_forever() re-entry bug (oracle side)")
    ties = program[0]
    oracle = "asyncio-stable-ties" if ties else "asyncio"
    expected = run_exact(oracle, program)
    got = run_exact("tokioloop", program)
    if got != expected:
        for i, (a, b) in enumerate(zip(expected, got)):
            if a != b:
                note(f"first difference at event {i}: {oracle}={a!r} tokioloop={b!r}")
                break
        else:
            note(f"lengths differ: {len(expected)} vs {len(got)}")
    assert got == expected


@_settings(500)
@given(_program)
def test_random_programs_match_stdlib(program):
    _check_exact(program)


# A few fixed programs: readable regressions, and proof the oracle is not vacuous.

_FIXED = {
    "timers-collide": (
        True,
        False,
        [("at", 1, [("soon", [])]), ("at", 0, []), ("at", 1, [("stop",)]), ("at", 1, []), ("soon", [])],
    ),
    "futures-and-tasks": (
        False,
        True,
        [
            ("newfut",),
            ("newfut",),
            ("task", [("await", 0), ("rec",), ("waitfor", 1, 0), ("sleep0",)]),
            ("task", [("gather", [[("sleep0",), ("raise", "ValueError")], [("await", 1)]], True)]),
            ("soon", [("resolve", 0, "exc"), ("tcancel", 0)]),
        ],
    ),
    "exit-exceptions": (
        False,
        True,
        [
            ("soon", [("raise", "KeyboardInterrupt")]),
            ("soon", [("soon", [("raise", "SystemExit")])]),
            ("task", [("sleep0",), ("raise", "KeyboardInterrupt")]),
            ("soon", [("raise", "ValueError")]),
        ],
    ),
    "debug-cancelled-repr": (
        False,
        True,
        [("soon", []), ("cancel", 0), ("far", []), ("cancel", 1), ("soon", [("raise", "ValueError")])],
    ),
    "threadsafe-order": (
        False,
        False,
        [("soon", [("ts_thread", []), ("soon", []), ("ts_self", []), ("ts_thread", [("stop",)])])],
    ),
}


@pytest.mark.parametrize("name", sorted(_FIXED))
def test_fixed_programs_match_stdlib(name):
    program = _FIXED[name]
    trace = run_exact("tokioloop", program)
    assert len(trace) > ROUNDS  # the trace is not empty
    _check_exact(program)


def test_oracle_detects_a_difference():
    """The comparison is not vacuous: programs differing in one action give different traces."""
    a = run_exact("asyncio", (False, False, [("soon", []), ("at", 0, [])]))
    b = run_exact("asyncio", (False, False, [("at", 0, []), ("soon", [])]))
    assert a != b


def test_stdlib_heap_is_not_insertion_stable():
    """Why colliding deadlines use the StableTieLoop oracle: the stdlib's own
    order for equal deadlines is heap order, not insertion order, and
    tokioloop's (deadline, insertion) order matches StableTieLoop."""
    program = (True, False, [("at", w, []) for w in (1, 1, 1, 1, 0, 1, 1)])
    std = [ev[1] for ev in run_exact("asyncio", program) if ev[0] == "cb"]
    stable = [ev[1] for ev in run_exact("asyncio-stable-ties", program) if ev[0] == "cb"]
    tl = [ev[1] for ev in run_exact("tokioloop", program) if ev[0] == "cb"]
    assert stable == [4, 0, 1, 2, 3, 5, 6]
    assert std != stable
    assert tl == stable


# ================================================================ timed programs

MAX_SLOTS = 8

_t_actor = st.one_of(
    st.tuples(st.just("sleeper"), st.integers(1, 3), st.sampled_from((None, "ValueError", "KeyboardInterrupt"))),
    st.tuples(st.just("waiter"), st.integers(0, 2)),
    st.tuples(st.just("resolver"), st.integers(0, 2), st.sampled_from(("result", "exc", "cancel"))),
    st.tuples(st.just("thread"), st.sampled_from((None, 0, 1))),
    st.tuples(st.just("stopper")),
    st.tuples(st.just("canceller"), st.integers(0, 5)),
    st.tuples(st.just("gather"), st.lists(st.integers(1, 2), min_size=1, max_size=3), st.booleans(), st.integers(-1, 2)),
    st.tuples(st.just("wf_sleep")),
)
_timed_program = st.tuples(
    st.lists(_t_actor, min_size=1, max_size=7),
    st.permutations(range(1, MAX_SLOTS + 1)),
)


def _slots_needed(actor):
    kind = actor[0]
    if kind == "sleeper":
        return actor[1]
    if kind == "gather":
        return sum(actor[1])
    if kind == "wf_sleep":
        return 2
    return 1


def assign_slots(program):
    """Give every time-driven event its own slot; drop actors once slots run out."""
    actors, perm = program
    supply = list(perm)
    out = []
    for actor in actors:
        n = _slots_needed(actor)
        if n > len(supply):
            continue
        mine, supply = supply[:n], supply[n:]
        out.append((actor, mine))
    return out


class _TimedRun:
    def __init__(self, loop):
        self.loop = loop
        self.trace = []
        self.futs = []
        self.task_actors = []
        self.threads = []
        loop.set_exception_handler(self._handler)

    def rec(self, *ev):
        self.trace.append(ev)

    def _handler(self, loop, ctx):
        exc = ctx.get("exception")
        self.rec("handler", ctx.get("message"), type(exc).__name__ if exc is not None else None)

    def at(self, k):
        return self.t0 + k * QUANTUM

    async def until(self, k):
        await asyncio.sleep(max(0.0, self.at(k) - self.loop.time()))

    def resolve(self, a, j, how):
        f = self.futs[j]
        if f.done():
            self.rec("res-done", a, j)
        elif how == "result":
            f.set_result(f"r{j}")
        elif how == "exc":
            f.set_exception(ValueError(f"f{j}"))
        else:
            self.rec("res-cancel", a, j, f.cancel())

    async def sleeper(self, a, slots, raise_kind):
        for k in sorted(slots):
            await self.until(k)
            self.rec("sl", a, k)
        if raise_kind:
            raise EXC_TYPES[raise_kind](f"sleeper {a}")
        return a

    async def waiter(self, a, j, kt):
        try:
            r = await asyncio.wait_for(self.futs[j], self.at(kt) - self.loop.time())
            self.rec("w", a, "ok", r)
        except (Exception, asyncio.CancelledError) as e:
            self.rec("w", a, "err", type(e).__name__)

    async def gather(self, a, sizes, ret_exc, fail, slots):
        children = []
        it = iter(slots)
        for i, n in enumerate(sizes):
            mine = [next(it) for _ in range(n)]
            children.append(self.sleeper(f"{a}.{i}", mine, "ValueError" if i == fail else None))
        try:
            r = await asyncio.gather(*children, return_exceptions=ret_exc)
            self.rec("g", a, "ok", [_summ(x) for x in r])
        except (Exception, asyncio.CancelledError) as e:
            self.rec("g", a, "err", type(e).__name__)

    async def wf_sleep(self, a, k_inner, k_timeout):
        try:
            await asyncio.wait_for(self.until(k_inner), self.at(k_timeout) - self.loop.time())
            self.rec("wf", a, "ok")
        except (Exception, asyncio.CancelledError) as e:
            self.rec("wf", a, "err", type(e).__name__)

    def thread_main(self, a, k, j):
        time.sleep(max(0.0, self.at(k) - time.monotonic()))
        if j is None:
            self.loop.call_soon_threadsafe(self.rec, "thr", a)
        else:
            self.loop.call_soon_threadsafe(self.resolve, a, j, "result")

    def setup(self, assigned):
        loop = self.loop
        self.t0 = loop.time() + QUANTUM
        for j in range(3):
            f = loop.create_future()
            f.add_done_callback(functools.partial(lambda j, fut: self.rec("fdone", j, _outcome(fut)), j))
            self.futs.append(f)
        last = 0
        cancellers = []
        for a, (actor, slots) in enumerate(assigned):
            kind = actor[0]
            last = max([last] + list(slots))
            if kind == "sleeper":
                self.task_actors.append(loop.create_task(self.sleeper(a, slots, actor[2])))
            elif kind == "waiter":
                self.task_actors.append(loop.create_task(self.waiter(a, actor[1], slots[0])))
            elif kind == "resolver":
                loop.call_at(self.at(slots[0]), self.resolve, a, actor[1], actor[2])
            elif kind == "thread":
                th = threading.Thread(target=self.thread_main, args=(a, slots[0], actor[1]))
                self.threads.append(th)
            elif kind == "stopper":
                loop.call_at(self.at(slots[0]), lambda a=a: (self.rec("stop", a), loop.stop()))
            elif kind == "canceller":
                cancellers.append((a, actor[1], slots[0]))
            elif kind == "gather":
                self.task_actors.append(loop.create_task(self.gather(a, actor[1], actor[2], actor[3], slots)))
            elif kind == "wf_sleep":
                self.task_actors.append(loop.create_task(self.wf_sleep(a, slots[0], slots[1])))
        for a, target, k in cancellers:
            if target < len(self.task_actors):
                t = self.task_actors[target]
                loop.call_at(self.at(k), lambda a=a, t=t, target=target: self.rec("cancel", a, target, t.cancel()))
        self.last = last

    async def main(self):
        res = await asyncio.gather(*self.task_actors, return_exceptions=True)
        self.rec("all", [_summ(x) for x in res])
        await self.until(self.last + 0.5)

    def drive(self, assigned):
        self.setup(assigned)
        for th in self.threads:
            th.start()
        main = self.loop.create_task(self.main())
        try:
            for _ in range(20):
                try:
                    self.loop.run_until_complete(main)
                    break
                except RuntimeError as e:
                    self.rec("restart", str(e))
                except BaseException as e:  # noqa: BLE001
                    self.rec("escaped", type(e).__name__)
            self.rec("tasks", [_outcome(t) for t in self.task_actors])
            self.rec("futures", [_outcome(f) for f in self.futs])
        finally:
            for th in self.threads:
                th.join(5)
            if not main.done():
                main._log_destroy_pending = False
            for t in self.task_actors:
                if not t.done():
                    t._log_destroy_pending = False
            self.loop.set_exception_handler(lambda loop, ctx: None)
        return self.trace


def run_timed(kind, assigned):
    loop = new_loop(kind)
    try:
        return contextvars.Context().run(_TimedRun(loop).drive, assigned)
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def _check_timed(assigned, attempts=3):
    std_seen, tl_seen = [], []
    for _ in range(attempts):
        std = run_timed("asyncio", assigned)
        tl = run_timed("tokioloop", assigned)
        std_seen.append(std)
        tl_seen.append(tl)
        if any(t == s for t in tl_seen for s in std_seen):
            return
    note(f"stdlib traces: {std_seen}")
    note(f"tokioloop traces: {tl_seen}")
    assert tl_seen[-1] == std_seen[-1]


@_settings(12, fuzz_share=20)
@given(_timed_program)
def test_random_timed_programs_match_stdlib(program):
    assigned = assign_slots(program)
    note(f"assigned: {assigned}")
    _check_timed(assigned)


def test_timed_fixed_program():
    assigned = [
        (("sleeper", 2, "ValueError"), [3, 1]),
        (("waiter", 0), [5]),
        (("resolver", 0, "result"), [2]),
        (("thread", 1), [4]),
        (("waiter", 1), [6]),
        (("stopper",), [7]),
        (("wf_sleep",), [9, 8]),
    ]
    trace = run_timed("tokioloop", assigned)
    assert ("sl", 0, 1) in trace and ("w", 1, "ok", "r0") in trace
    assert ("wf", 6, "err", "TimeoutError") in trace
    assert any(ev[0] == "restart" for ev in trace)
    _check_timed(assigned)


# ======================================================= stream traffic programs
#
# Random traffic through a TCP connection on one loop: writes and writelines
# of random sizes, small or default write-buffer limits with a writer that
# honours pause_writing, a reader (Protocol or BufferedProtocol with a tiny to
# large buffer) that pauses and resumes reading at random, and the end by
# write_eof() or close().  Timing decides how the bytes are chunked, so the
# two loops are compared on what must not depend on it: every byte arrives,
# in order, once; the protocol call sequences are well formed and identical
# once chunking is abstracted away.

_PATTERN = bytes((i * 131 + (i >> 8)) % 256 for i in range(1 << 20))

_stream_program = st.fixed_dictionaries(
    {
        "buffered": st.booleans(),
        "bufsize": st.sampled_from([1, 7, 1000, 65536]),
        "limits": st.one_of(st.none(), st.tuples(st.integers(0, 200_000), st.integers(0, 100_000))),
        "ops": st.lists(
            st.tuples(st.sampled_from(["write", "writelines", "sleep0", "wait_resume"]), st.integers(1, 300_000)),
            min_size=1,
            max_size=12,
        ),
        "pause_every": st.integers(0, 4),
        "end": st.sampled_from(["write_eof", "close"]),
    }
)


def run_stream(kind, prog):
    loop = new_loop(kind)
    reader_ev, writer_ev = [], []
    received = bytearray()
    sent = bytearray()
    done = {}

    class ReaderBase:
        def connection_made(self, t):
            self.t = t
            self.n = 0
            reader_ev.append("made")

        def on_data(self, data):
            received.extend(data)
            self.n += 1
            if reader_ev[-1] != "data":
                reader_ev.append("data")
            if prog["pause_every"] and self.n % prog["pause_every"] == 0 and self.t.is_reading():
                self.t.pause_reading()
                if self.t.is_reading():
                    reader_ev.append("still-reading-after-pause")
                loop.call_soon(self.resume)

        def resume(self):
            if not self.t.is_closing():
                self.t.resume_reading()

        def eof_received(self):
            reader_ev.append("eof")

        def connection_lost(self, exc):
            reader_ev.append(("lost", type(exc).__name__ if exc else None))
            done["reader"] = True

    class R(ReaderBase, asyncio.Protocol):
        def data_received(self, data):
            self.on_data(data)

    class BR(ReaderBase, asyncio.BufferedProtocol):
        def get_buffer(self, hint):
            self.buf = bytearray(prog["bufsize"])
            return self.buf

        def buffer_updated(self, n):
            self.on_data(bytes(self.buf[:n]))

    class W(asyncio.Protocol):
        def __init__(self):
            self.resumed = None
            self.paused = False

        def connection_made(self, t):
            if prog["limits"] is not None:
                high, low = prog["limits"]
                t.set_write_buffer_limits(high=max(high, low), low=min(high, low))

        def pause_writing(self):
            writer_ev.append("pause")
            self.paused = True
            self.resumed = loop.create_future()

        def resume_writing(self):
            writer_ev.append("resume")
            self.paused = False
            self.resumed.set_result(None)

        def connection_lost(self, exc):
            writer_ev.append(("lost", type(exc).__name__ if exc else None))
            done["writer"] = True

    async def main():
        srv = await loop.create_server(BR if prog["buffered"] else R, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        t, w = await loop.create_connection(W, "127.0.0.1", port)
        off = 0
        for op, n in prog["ops"]:
            if prog["buffered"] and prog["bufsize"] < 1000:
                n = min(n, 3000)  # a read per byte or seven: keep it quick
            if op in ("write", "writelines"):
                chunk = bytes(_PATTERN[off % len(_PATTERN):][:n])
                off += len(chunk)
                sent.extend(chunk)
                if op == "write":
                    t.write(chunk)
                else:
                    k = len(chunk) // 3
                    t.writelines([chunk[:k], bytearray(chunk[k : 2 * k]), memoryview(chunk[2 * k :])])
            elif op == "sleep0":
                await asyncio.sleep(0)
            elif op == "wait_resume" and w.paused:
                await w.resumed
        if prog["end"] == "write_eof":
            t.write_eof()
        else:
            t.close()
        for _ in range(2000):  # up to 10 s
            if len(done) == 2 or (prog["end"] == "write_eof" and "reader" in done):
                break
            await asyncio.sleep(0.005)
        if not t.is_closing():
            t.close()
        await asyncio.sleep(0.01)
        srv.close()
        await srv.wait_closed()

    try:
        loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        loop.close()
    return bytes(received) == bytes(sent), len(sent), reader_ev, writer_ev


def _check_stream_invariants(result):
    same, n, reader_ev, writer_ev = result
    assert same, f"{n} bytes sent, received differ"
    expected = ["made", "data", "eof", ("lost", None)] if n else ["made", "eof", ("lost", None)]
    assert reader_ev == expected, reader_ev
    flow = [e for e in writer_ev if e in ("pause", "resume")]
    assert flow == ["pause", "resume"] * (len(flow) // 2) + ["pause"] * (len(flow) % 2), writer_ev
    assert sum(1 for e in writer_ev if isinstance(e, tuple)) <= 1


@_settings(25, fuzz_share=10)
@given(_stream_program)
def test_random_stream_traffic_loses_nothing(prog):
    std = run_stream("asyncio", prog)
    tl = run_stream("tokioloop", prog)
    _check_stream_invariants(std)
    _check_stream_invariants(tl)
    # Chunking aside, the same story: reader events and how the writer ended.
    assert tl[2] == std[2]
    assert [e for e in tl[3] if isinstance(e, tuple)] == [e for e in std[3] if isinstance(e, tuple)]
