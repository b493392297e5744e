"""Shared fixtures for the tokioloop test-suite.

Most behavioural tests are parametrized over two loop implementations:

* ``asyncio``   -- the stdlib selector event loop, which acts as the oracle;
* ``tokioloop`` -- the loop under test.

Tests that compare both loops directly use :func:`run_scenario_on_both`.
"""

import asyncio
import faulthandler
import os
import subprocess
import sys
import textwrap
import threading

import pytest

# ---------------------------------------------------------------------------
# TEMPORARY HACK (to be removed once tokioloop builds): with
# TOKIOLOOP_TEST_FAKE=1, "tokioloop" is a tiny stand-in package built on the
# stdlib loop so that the tests themselves can be validated.
# ---------------------------------------------------------------------------
if os.environ.get("TOKIOLOOP_TEST_FAKE") == "1":
    import tempfile

    _fake_dir = tempfile.mkdtemp(prefix="fake_tokioloop_")
    os.makedirs(os.path.join(_fake_dir, "tokioloop"))
    with open(os.path.join(_fake_dir, "tokioloop", "__init__.py"), "w") as f:
        f.write(textwrap.dedent('''
            import asyncio, threading, warnings
            __version__ = "0.0.0+fake"

            class Loop(asyncio.SelectorEventLoop):
                async def shutdown_default_executor(self, timeout=None):
                    self._executor_shutdown_called = True
                    if self._default_executor is None:
                        return
                    future = self.create_future()
                    thread = threading.Thread(target=self._do_shutdown, args=(future,))
                    thread.start()
                    try:
                        await asyncio.wait_for(asyncio.shield(future), timeout)
                    except asyncio.TimeoutError:
                        warnings.warn("The executor did not finishing joining "
                                      f"its threads within {timeout} seconds.",
                                      RuntimeWarning, stacklevel=2)
                        self._default_executor.shutdown(wait=False)
                    else:
                        thread.join()

            def new_event_loop():
                return Loop()

            class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
                _loop_factory = Loop

            def install():
                asyncio.set_event_loop_policy(EventLoopPolicy())

            def run(main, *, debug=None):
                with asyncio.Runner(loop_factory=new_event_loop, debug=debug) as r:
                    return r.run(main)
        '''))
    with open(os.path.join(_fake_dir, "tokioloop", "__main__.py"), "w") as f:
        f.write(textwrap.dedent('''
            import os, runpy, sys
            import tokioloop
            args = sys.argv[1:]
            if not args:
                sys.exit("usage: python -m tokioloop script.py [args] | -m module [args]")
            tokioloop.install()
            if args[0] == "-m":
                sys.argv = [args[1]] + args[2:]
                runpy.run_module(args[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = args
                sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
                runpy.run_path(args[0], run_name="__main__")
        '''))
    sys.path.insert(0, _fake_dir)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [_fake_dir] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
# --------------------------- end of temporary hack -------------------------

import tokioloop  # noqa: E402

LOOP_KINDS = ["asyncio", "tokioloop"]


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
