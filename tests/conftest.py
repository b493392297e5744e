"""Shared fixtures for the tokioloop test-suite.

Most behavioural tests are parametrized over two loop implementations:

* ``asyncio``   -- the stdlib selector event loop, which acts as the oracle;
* ``tokioloop`` -- the loop under test.

Tests that compare both loops directly use :func:`run_scenario_on_both`.
"""

import asyncio
import faulthandler
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import tokioloop

LOOP_KINDS = ["asyncio", "tokioloop"]

# A script that starts a job in the background without job control (`cmd &`)
# leaves SIGINT ignored in it and every process it starts, and Python then
# keeps it ignored: the Ctrl-C tests (here and in the scripts they run) would
# test nothing. Python's own handler is restored; exec() turns it back into
# the default disposition in child processes.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def make_loop(kind):
    if kind == "asyncio":
        return asyncio.SelectorEventLoop()
    if kind == "tokioloop":
        return tokioloop.new_event_loop()
    raise ValueError(kind)


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request):
    return request.param


@pytest.fixture
def loop_factory(loop_kind):
    """A zero-argument callable creating a fresh loop of the parametrized kind.

    Every loop created through it is closed at teardown.
    """
    created = []

    def factory():
        lp = make_loop(loop_kind)
        created.append(lp)
        return lp

    factory.kind = loop_kind
    yield factory
    for lp in created:
        if not lp.is_closed() and not lp.is_running():
            lp.close()
    asyncio.set_event_loop(None)


@pytest.fixture
def loop(loop_factory):
    """A fresh loop of the parametrized kind (closed at teardown)."""
    return loop_factory()


@pytest.fixture
def tloop():
    """A fresh tokioloop loop (not parametrized)."""
    lp = tokioloop.new_event_loop()
    yield lp
    if not lp.is_closed() and not lp.is_running():
        lp.close()
    asyncio.set_event_loop(None)


def run_scenario_on_both(scenario):
    """Run ``scenario(loop)`` on a fresh stdlib loop and a fresh tokioloop.

    Returns ``(stdlib_result, tokioloop_result)``; loops are closed afterwards.
    """
    results = []
    for kind in LOOP_KINDS:
        lp = make_loop(kind)
        try:
            results.append(scenario(lp))
        finally:
            if not lp.is_closed() and not lp.is_running():
                lp.close()
            asyncio.set_event_loop(None)
    return tuple(results)


def outcome(fn, *args, **kwargs):
    """Call fn and describe the outcome as a comparable tuple."""
    try:
        res = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - we want everything
        return ("raise", type(e), str(e))
    if asyncio.iscoroutine(res):
        res.close()
        return ("ok", "coroutine")
    if res is None or isinstance(res, (bool, int, float, str, tuple)):
        return ("ok", res)
    return ("ok", "<object>")


def run_once(loop):
    """Run exactly one full iteration of the loop."""
    loop.call_soon(loop.stop)
    loop.run_forever()


def run_python(code_or_args, *, env=None, timeout=30, cwd=None, input=None):
    """Run a Python subprocess with the venv interpreter."""
    full_env = dict(os.environ)
    full_env.pop("PYTHONASYNCIODEBUG", None)
    if env:
        full_env.update(env)
    if isinstance(code_or_args, str):
        args = [sys.executable, "-c", textwrap.dedent(code_or_args)]
    else:
        args = [sys.executable] + list(code_or_args)
    return subprocess.run(
        args,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        input=input,
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "tokioloop_only: behaviour required of tokioloop beyond stdlib 3.11")


@pytest.fixture(autouse=True)
def _hard_watchdog(request):
    """Backstop for hangs that pytest-timeout's SIGALRM cannot interrupt
    (e.g. the main thread blocked in native code that never checks signals):
    dump all stacks and exit the process."""
    if "conformance" in request.node.nodeid:
        # not ours: leave the CPython conformance tests alone
        yield
        return
    marker = request.node.get_closest_marker("timeout")
    if marker and marker.args:
        t = float(marker.args[0])
    else:
        try:
            t = float(request.config.getini("timeout") or 120)
        except (ValueError, KeyError):
            t = 120.0
    faulthandler.dump_traceback_later(t + 20, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def _no_leaked_running_loop(request):
    yield
    if "conformance" in request.node.nodeid:
        return
    # A test must never leave a running loop registered in this thread.
    leaked = asyncio._get_running_loop()
    if leaked is not None:
        asyncio._set_running_loop(None)
        pytest.fail(f"test left a running loop registered: {leaked!r}")
    assert threading.current_thread() is threading.main_thread()
