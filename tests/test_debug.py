"""Debug mode."""

import asyncio
import logging
import sys
import threading
import time

import pytest

from conftest import outcome, run_once, run_python, run_scenario_on_both

pytestmark = pytest.mark.timeout(30)


def test_set_get_debug(loop):
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_set_debug_truthy_values_like_stdlib():
    def scen(lp):
        out = []
        for v in (1, 0, "yes", ""):
            lp.set_debug(v)
            out.append(bool(lp.get_debug()))
        return out

    std, tl = run_scenario_on_both(scen)
    assert tl == std


def test_slow_callback_duration_attribute(loop):
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 0.25
    assert loop.slow_callback_duration == 0.25


_PROBE = """
import asyncio, tokioloop
lp = tokioloop.new_event_loop()
print("new_event_loop", lp.get_debug())
lp.close()
async def main():
    return asyncio.get_running_loop().get_debug()
print("run", tokioloop.run(main()))
print("run_debug_false", tokioloop.run(main(), debug=False))
"""


@pytest.mark.parametrize(
    "how,expected",
    [
        ("none", "False"),
        ("env", "True"),
        ("xdev", "True"),
        ("env_empty", "False"),
    ],
)
def test_debug_from_environment(how, expected):
    env = {}
    args = []
    if how == "env":
        env["PYTHONASYNCIODEBUG"] = "1"
    elif how == "env_empty":
        env["PYTHONASYNCIODEBUG"] = ""
    elif how == "xdev":
        args = ["-X", "dev"]
    p = run_python(args + ["-c", _PROBE], env=env)
    assert p.returncode == 0, p.stderr
    lines = dict(line.split(" ", 1) for line in p.stdout.strip().splitlines())
    assert lines == {"new_event_loop": expected, "run": expected, "run_debug_false": "False"}


def test_ignore_environment_flag_disables_env_debug():
    p = run_python(["-E", "-c", _PROBE], env={"PYTHONASYNCIODEBUG": "1", "PYTHONPATH": ""})
    if p.returncode != 0 and "No module named 'tokioloop'" in p.stderr:
        pytest.skip("tokioloop only importable through PYTHONPATH here")
    assert p.returncode == 0, p.stderr
    assert "new_event_loop False" in p.stdout


def _slow_callback():
    time.sleep(0.06)


def test_slow_callback_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.03
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        loop.call_soon(_slow_callback)
        loop.call_soon(lambda: None)  # fast, must not be reported
        run_once(loop)
    warnings = [r for r in caplog.records if r.name == "asyncio" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    msg = warnings[0].getMessage()
    assert msg.startswith("Executing ")
    assert "_slow_callback" in msg
    assert " took " in msg and msg.endswith(" seconds")
    took = float(msg.rsplit(" took ", 1)[1].split()[0])
    assert 0.05 <= took < 1.0


def test_slow_callback_message_like_stdlib(caplog):
    def scen(lp):
        lp.set_debug(True)
        lp.slow_callback_duration = 0.03
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            lp.call_soon(_slow_callback)
            run_once(lp)
        msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
        # strip the measured duration
        return [m.rsplit(" took ", 1)[0] for m in msgs]

    std, tl = run_scenario_on_both(scen)
    assert len(std) == 1
    assert tl == std


def test_no_slow_callback_warning_without_debug(loop, caplog):
    loop.slow_callback_duration = 0.01
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        loop.call_soon(_slow_callback)
        run_once(loop)
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.WARNING]


def test_slow_task_step_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.03

    async def slow_coro_name():
        time.sleep(0.06)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_until_complete(slow_coro_name())
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any(m.startswith("Executing") and "slow_coro_name" in m and "took" in m for m in msgs), msgs


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
def test_non_threadsafe_call_from_other_thread_debug_like_stdlib(method):
    def scen(lp):
        lp.set_debug(True)
        result = []

        def in_thread():
            fn = {
                "call_soon": lambda: lp.call_soon(print),
                "call_later": lambda: lp.call_later(1, print),
                "call_at": lambda: lp.call_at(lp.time() + 1, print),
            }[method]
            result.append(outcome(fn))
            lp.call_soon_threadsafe(lp.stop)

        def start():
            t = threading.Thread(target=in_thread)
            t.start()
            threads.append(t)

        threads = []
        lp.call_soon(start)
        lp.call_later(5, lp.stop)
        lp.run_forever()
        threads[0].join()
        return result[0]

    std, tl = run_scenario_on_both(scen)
    assert std == (
        "raise",
        RuntimeError,
        "Non-thread-safe operation invoked on an event loop other than the current one",
    )
    assert tl == std


def test_call_soon_threadsafe_from_other_thread_ok_in_debug(loop):
    loop.set_debug(True)
    res = []

    def in_thread():
        loop.call_soon_threadsafe(res.append, "ok")
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(lambda: threading.Thread(target=in_thread).start())
    loop.call_later(5, loop.stop)
    loop.run_forever()
    assert res == ["ok"]


def test_call_soon_from_other_thread_when_not_running_debug(loop):
    # The stdlib only checks the thread while the loop is running.
    loop.set_debug(True)
    out = []
    t = threading.Thread(target=lambda: out.append(outcome(loop.call_soon, print)))
    t.start()
    t.join()
    assert out[0][0] == "ok"
    run_once(loop)


def test_coroutine_origin_tracking_like_stdlib():
    def scen(lp):
        lp.set_debug(True)

        async def main():
            return sys.get_coroutine_origin_tracking_depth()

        inside = lp.run_until_complete(main())
        return inside, sys.get_coroutine_origin_tracking_depth()

    std, tl = run_scenario_on_both(scen)
    assert std[0] > 0 and std[1] == 0
    assert tl == std


def test_debug_never_awaited_coroutine_warning_subprocess():
    code = """
    import asyncio, gc, warnings, tokioloop
    warnings.simplefilter("always")
    async def forgotten():
        pass
    async def main():
        forgotten()
        gc.collect()
    tokioloop.run(main(), debug=True)
    """
    p = run_python(code)
    assert p.returncode == 0, p.stderr
    assert "was never awaited" in p.stderr
    assert "Coroutine created at" in p.stderr


def test_debug_mode_reports_task_destroyed_pending(caplog):
    def scen(lp):
        lp.set_debug(True)

        async def forever():
            await asyncio.sleep(3600)

        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            t = lp.create_task(forever())
            run_once(lp)
            lp.close()
            del t
            import gc

            gc.collect()
        return [r.getMessage().splitlines()[0] for r in caplog.records if r.name == "asyncio"]

    std, tl = run_scenario_on_both(scen)
    assert std == ["Task was destroyed but it is pending!"]
    assert tl == std


def test_set_debug_while_running_like_stdlib():
    def scen(lp):
        async def main():
            before = sys.get_coroutine_origin_tracking_depth()
            lp.set_debug(True)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            during = sys.get_coroutine_origin_tracking_depth()
            lp.set_debug(False)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return before, during, sys.get_coroutine_origin_tracking_depth(), lp.get_debug()

        return lp.run_until_complete(main()), sys.get_coroutine_origin_tracking_depth()

    std, tl = run_scenario_on_both(scen)
    assert std[0][1] > 0
    assert tl == std
