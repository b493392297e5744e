"""Helpers shared by the tests/test_reliability_*.py files (not a test module).

* measurement: RSS (``VmRSS`` from /proc/self/status) and open fd counts;
* ``run_child``: run a snippet in a fresh interpreter and read back the JSON
  it prints on its last stdout line (a clean baseline for leak measurements,
  and a crash or a KeyboardInterrupt there cannot take pytest down);
* ``StableTieLoop``: the stdlib selector loop with one change, equal timer
  deadlines broken by insertion order (tokioloop's documented order).  The
  stdlib's heapq gives *some* order for ties, not necessarily insertion order,
  so programs with colliding deadlines are compared against this oracle, and
  programs without ties against the unmodified stdlib loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))


def env_int(name, default):
    """An integer from the environment (used to enlarge fuzz and soak runs)."""
    value = os.environ.get(name)
    if not value:
        return default
    return int(value)


def rss_kb():
    """Resident set size of this process in KiB (VmRSS in /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def fd_count():
    return len(os.listdir("/proc/self/fd"))


# Code prepended to every child snippet: the same measurement helpers.
CHILD_PRELUDE = textwrap.dedent(
    """
    import asyncio, gc, json, os, sys, time
    sys.path.insert(0, {here!r})

    def rss_kb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    def fd_count():
        return len(os.listdir("/proc/self/fd"))

    def make_loop(kind):
        if kind == "asyncio":
            return asyncio.SelectorEventLoop()
        import tokioloop
        return tokioloop.new_event_loop()

    def emit(obj):
        sys.stdout.write("\\n" + json.dumps(obj) + "\\n")
        sys.stdout.flush()
    """
).format(here=HERE)


class ChildError(AssertionError):
    pass


def run_child(code, *, timeout=60, env=None, expect_rc=0, prelude=True):
    """Run ``code`` in a fresh interpreter (the venv's); return (json_or_None, proc).

    The JSON is read from the last non-empty stdout line when it parses.
    ``expect_rc=None`` accepts any exit status.
    """
    full_env = dict(os.environ)
    full_env.pop("PYTHONASYNCIODEBUG", None)
    full_env.pop("PYTHONDEVMODE", None)
    if env:
        full_env.update(env)
    src = (CHILD_PRELUDE if prelude else "") + textwrap.dedent(code)
    proc = subprocess.run(
        [sys.executable, "-c", src],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if expect_rc is not None and proc.returncode != expect_rc:
        raise ChildError(
            f"child exited with {proc.returncode} (expected {expect_rc})\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
        )
    data = None
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if lines:
        try:
            data = json.loads(lines[-1])
        except ValueError:
            data = None
    return data, proc


# ------------------------------------------------------------ stable-tie oracle

_tie_counter = itertools.count()


class _StableTimerHandle(asyncio.TimerHandle):
    __slots__ = ("_seq",)

    def __lt__(self, other):
        if self._when == other._when:
            return self._seq < other._seq
        return self._when < other._when

    def __gt__(self, other):
        return other.__lt__(self)


class StableTieLoop(asyncio.SelectorEventLoop):
    """The stdlib selector loop, except that equal deadlines pop in insertion order."""

    def call_at(self, when, callback, *args, context=None):
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_at")
        timer = _StableTimerHandle(when, callback, args, self, context)
        timer._seq = next(_tie_counter)
        if timer._source_traceback:
            del timer._source_traceback[-1]
        heapq.heappush(self._scheduled, timer)
        timer._scheduled = True
        return timer


def new_loop(kind):
    if kind == "asyncio":
        return asyncio.SelectorEventLoop()
    if kind == "asyncio-stable-ties":
        return StableTieLoop()
    if kind == "tokioloop":
        import tokioloop

        return tokioloop.new_event_loop()
    raise ValueError(kind)


def dump(obj):
    return json.dumps(obj, default=repr)
