"""Exception handlers and the stdlib-compatible logging of errors."""

import asyncio
import gc
import logging

import pytest

import tokioloop

from conftest import make_loop, outcome, run_once, run_scenario_on_both

pytestmark = pytest.mark.timeout(20)


def _records(caplog):
    return [
        (r.name, r.levelname, r.getMessage(), r.exc_info[0] if r.exc_info else None)
        for r in caplog.records
        if r.name == "asyncio"
    ]


def _capture(caplog, scenario):
    """Run scenario on both loops, returning the asyncio log records of each."""

    def wrapped(lp):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            res = scenario(lp)
        return res, _records(caplog)

    return run_scenario_on_both(wrapped)


def test_default_handler_logging_like_stdlib(caplog):
    def scen(lp):
        lp.call_exception_handler({"message": "hello", "foo": 42, "bar": "x", "exception": ValueError("v")})
        lp.call_exception_handler({"message": "no exception here", "zzz": [1, 2]})
        lp.call_exception_handler({})
        lp.default_exception_handler({"message": "direct", "exception": KeyError("k")})

    std, tl = _capture(caplog, scen)
    assert std[1] == [
        ("asyncio", "ERROR", "hello\nbar: 'x'\nfoo: 42", ValueError),
        ("asyncio", "ERROR", "no exception here\nzzz: [1, 2]", None),
        ("asyncio", "ERROR", "Unhandled exception in event loop", None),
        ("asyncio", "ERROR", "direct", KeyError),
    ]
    assert tl == std


def test_custom_handler_receives_loop_and_context(loop):
    calls = []

    def handler(lp, ctx):
        calls.append((lp, ctx))

    assert loop.get_exception_handler() is None
    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    ctx = {"message": "m", "exception": RuntimeError("r")}
    loop.call_exception_handler(ctx)
    assert len(calls) == 1
    assert calls[0][0] is loop
    assert calls[0][1] == ctx
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_set_exception_handler_bad_like_stdlib():
    def scen(lp):
        return outcome(lp.set_exception_handler, 1)

    std, tl = run_scenario_on_both(scen)
    assert std == ("raise", TypeError, "A callable object or None is expected, got 1")
    assert tl == std


def test_handler_raising_falls_back_to_default_like_stdlib(caplog):
    def scen(lp):
        def bad_handler(l, c):
            raise ZeroDivisionError("handler broke")

        lp.set_exception_handler(bad_handler)
        lp.call_exception_handler({"message": "orig"})

    std, tl = _capture(caplog, scen)
    assert len(std[1]) == 1
    assert std[1][0][2].startswith("Unhandled error in exception handler")
    assert std[1][0][3] is ZeroDivisionError
    assert tl == std


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_handler_raising_base_exception_propagates_like_stdlib(exc):
    def scen(lp):
        def bad_handler(l, c):
            raise exc("stop")

        lp.set_exception_handler(bad_handler)
        return outcome(lp.call_exception_handler, {"message": "m"})

    std, tl = run_scenario_on_both(scen)
    assert std == ("raise", exc, "stop")
    assert tl == std


def test_callback_exception_logged_like_stdlib(caplog):
    def failing_callback():
        raise ValueError("cb failed")

    def scen(lp):
        lp.call_soon(failing_callback)
        lp.call_later(0, failing_callback)
        lp.call_later(0.01, lp.stop)
        lp.run_forever()

    std, tl = _capture(caplog, scen)
    assert len(std[1]) == 2
    assert len(tl[1]) == 2, tl[1]
    for (_, level, msg, exc_type), (_, s_level, s_msg, s_exc) in zip(tl[1], std[1]):
        assert (level, exc_type) == (s_level, s_exc) == ("ERROR", ValueError)
        assert msg.startswith("Exception in callback")
        assert "failing_callback" in msg.splitlines()[0]
        assert "handle:" in msg


def test_callback_exception_message_exact_like_stdlib(caplog):
    def failing_callback(a):
        raise ValueError("cb failed")

    def scen(lp):
        lp.call_soon(failing_callback, 1)
        run_once(lp)

    std, tl = _capture(caplog, scen)
    assert tl[1][0][2].splitlines()[0] == std[1][0][2].splitlines()[0]


def test_timer_callback_exception_context(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def boom():
        raise OSError("timer boom")

    h = loop.call_later(0, boom)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], OSError)
    assert contexts[0]["handle"] is h


def test_task_exception_never_retrieved_like_stdlib(caplog):
    def scen(lp):
        async def failing():
            raise ValueError("never retrieved")

        async def main():
            asyncio.ensure_future(failing())
            await asyncio.sleep(0)
            await asyncio.sleep(0)

        lp.run_until_complete(main())
        gc.collect()

    std, tl = _capture(caplog, scen)
    assert len(std[1]) == 1
    assert std[1][0][2].startswith("Task exception was never retrieved")
    assert len(tl[1]) == 1
    assert tl[1][0][2].splitlines()[0] == std[1][0][2].splitlines()[0]
    assert tl[1][0][3] is ValueError


def test_future_exception_never_retrieved(loop, caplog):
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        fut = loop.create_future()
        fut.set_exception(KeyError("lost"))
        del fut
        gc.collect()
    recs = _records(caplog)
    assert len(recs) == 1
    assert recs[0][2].startswith("Future exception was never retrieved")


def test_subclass_default_exception_handler_override():
    class MyLoop(tokioloop.Loop):
        def __init__(self):
            super().__init__()
            self.seen = []

        def default_exception_handler(self, context):
            self.seen.append(context["message"])

    lp = MyLoop()
    try:
        lp.call_exception_handler({"message": "via subclass"})

        def bad():
            raise ValueError()

        lp.call_soon(bad)
        run_once(lp)
        assert lp.seen[0] == "via subclass"
        assert len(lp.seen) == 2 and lp.seen[1].startswith("Exception in callback")
    finally:
        lp.close()


def test_custom_handler_can_delegate_to_default(loop, caplog):
    seen = []

    def handler(lp, ctx):
        seen.append(ctx["message"])
        lp.default_exception_handler(ctx)

    loop.set_exception_handler(handler)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        loop.call_exception_handler({"message": "delegated"})
    assert seen == ["delegated"]
    assert _records(caplog) == [("asyncio", "ERROR", "delegated", None)]


def test_exception_in_coroutine_propagates_from_run_until_complete(loop):
    class MyError(Exception):
        pass

    async def main():
        await asyncio.sleep(0)
        raise MyError("x")

    with pytest.raises(MyError):
        loop.run_until_complete(main())


def test_keyboard_interrupt_in_task_propagates(loop):
    async def main():
        await asyncio.sleep(0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(main())
    assert not loop.is_running()
    # usable afterwards
    assert loop.run_until_complete(asyncio.sleep(0, result=1)) == 1


def test_exception_handler_called_in_loop_thread_for_threadsafe_callbacks(loop):
    import threading

    threads = []
    loop.set_exception_handler(lambda lp, ctx: threads.append(threading.get_ident()))

    def bad():
        raise ValueError

    t = threading.Thread(target=lambda: loop.call_soon_threadsafe(bad))
    t.start()
    t.join()
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert threads == [threading.get_ident()]


def test_no_spurious_log_output_for_clean_run(loop, caplog):
    async def main():
        t = asyncio.create_task(asyncio.sleep(0.001))
        await t
        fut = loop.create_future()
        loop.call_later(0.001, fut.set_result, 1)
        await fut

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_asyncgens())
    bad = [r for r in _records(caplog) if r[1] in ("ERROR", "WARNING", "CRITICAL")]
    assert bad == []


def test_system_exit_in_coroutine_propagates_like_stdlib():
    def scen(lp):
        async def main():
            await asyncio.sleep(0)
            raise SystemExit(5)

        try:
            lp.run_until_complete(main())
        except SystemExit as e:
            return "SystemExit", e.code, lp.is_running()
        return None

    std, tl = run_scenario_on_both(scen)
    assert std == ("SystemExit", 5, False)
    assert tl == std


def test_system_exit_via_run_exit_code():
    from conftest import run_python

    p = run_python(
        """
        import asyncio, sys, tokioloop
        async def main():
            await asyncio.sleep(0.001)
            sys.exit(5)
        tokioloop.run(main())
        """
    )
    assert p.returncode == 5, p.stderr


def test_rust_panic_becomes_a_python_exception_and_the_loop_keeps_running():
    # A panic in Rust code must never abort the interpreter or wedge the loop.
    from tokioloop import _tokioloop

    with pytest.raises(BaseException) as info:
        _tokioloop._panic_for_tests("boom from rust")
    assert type(info.value).__name__ == "PanicException"
    assert "boom from rust" in str(info.value)

    lp = tokioloop.new_event_loop()
    seen = []
    lp.set_exception_handler(lambda loop, ctx: seen.append(type(ctx.get("exception")).__name__))
    try:
        lp.call_soon(_tokioloop._panic_for_tests, "in a callback")
        lp.call_soon(seen.append, "next callback ran")
        lp.run_until_complete(asyncio.sleep(0.01))
        assert seen == ["PanicException", "next callback ran"]
        assert lp.run_until_complete(asyncio.sleep(0, "still usable")) == "still usable"
    finally:
        lp.close()


def test_rust_panic_inside_a_protocol_callback_is_a_fatal_transport_error_like_stdlib():
    # The panic surfaces in data_received (Python code called by the Rust
    # transport): the transport must treat it as the stdlib treats any
    # BaseException there — report "Fatal error", close, connection_lost once.
    import socket

    from tokioloop import _tokioloop

    lp = tokioloop.new_event_loop()
    seen = []
    lp.set_exception_handler(lambda loop, ctx: seen.append((ctx["message"], type(ctx.get("exception")).__name__)))

    async def main():
        lost = lp.create_future()

        class P(asyncio.Protocol):
            def data_received(self, data):
                _tokioloop._panic_for_tests("in data_received")

            def connection_lost(self, exc):
                lost.set_result(type(exc).__name__ if exc else None)

        a, b = socket.socketpair()
        with b:
            await lp.connect_accepted_socket(P, a)
            b.send(b"x")
            return await asyncio.wait_for(lost, 5)

    try:
        assert lp.run_until_complete(main()) == "PanicException"
        assert seen == [("Fatal error: protocol.data_received() call failed.", "PanicException")]
    finally:
        lp.close()
