"""The classic "introduction to asyncio" examples, run on tokioloop three ways:

* ``tokioloop.run(main())``
* ``asyncio.Runner(loop_factory=tokioloop.new_event_loop)``
* the event loop policy (``asyncio.set_event_loop_policy(tokioloop.EventLoopPolicy())``
  then ``asyncio.run``)

plus the stdlib loop (``asyncio.run``) as the reference.
"""

import asyncio
import contextvars
import logging
import time

import pytest

import tokioloop

pytestmark = pytest.mark.timeout(20)

RUNNERS = ["tokioloop.run", "Runner", "policy", "stdlib"]


@pytest.fixture(params=RUNNERS)
def run(request):
    how = request.param

    def runner(coro, *, debug=None):
        async def checked():
            lp = asyncio.get_running_loop()
            if how == "stdlib":
                assert not isinstance(lp, tokioloop.Loop)
            else:
                assert isinstance(lp, tokioloop.Loop), type(lp)
            return await coro

        if how == "tokioloop.run":
            return tokioloop.run(checked(), debug=debug)
        if how == "Runner":
            with asyncio.Runner(loop_factory=tokioloop.new_event_loop, debug=debug) as r:
                return r.run(checked())
        if how == "policy":
            old = asyncio.get_event_loop_policy()
            asyncio.set_event_loop_policy(tokioloop.EventLoopPolicy())
            try:
                return asyncio.run(checked(), debug=debug)
            finally:
                asyncio.set_event_loop_policy(old)
        old = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(None)
        try:
            return asyncio.run(checked(), debug=debug)
        finally:
            asyncio.set_event_loop_policy(old)

    runner.how = how
    return runner


def test_hello_world(run, capsys):
    async def main():
        print("Hello ...")
        await asyncio.sleep(0.01)
        print("... World!")

    assert run(main()) is None
    assert capsys.readouterr().out == "Hello ...\n... World!\n"


def test_greeting(run):
    async def greet(name):
        await asyncio.sleep(0.001)
        return f"Hello, {name}!"

    async def main():
        return [await greet("Alice"), await greet("Bob")]

    assert run(main()) == ["Hello, Alice!", "Hello, Bob!"]


def test_sleep_sequential(run, capsys):
    async def say_after(delay, what):
        await asyncio.sleep(delay)
        print(what)

    async def main():
        t0 = time.monotonic()
        await say_after(0.05, "hello")
        await say_after(0.1, "world")
        return time.monotonic() - t0

    elapsed = run(main())
    assert capsys.readouterr().out == "hello\nworld\n"
    assert 0.15 <= elapsed < 0.6


def test_gather_two_tasks_concurrently(run):
    async def compute(x, delay):
        await asyncio.sleep(delay)
        return x * x

    async def main():
        t0 = time.monotonic()
        res = await asyncio.gather(compute(3, 0.15), compute(4, 0.15))
        return res, time.monotonic() - t0

    res, elapsed = run(main())
    assert res == [9, 16]
    assert 0.15 <= elapsed < 0.28  # sequential would be >= 0.3


def test_create_task(run, capsys):
    async def say_after(delay, what):
        await asyncio.sleep(delay)
        print(what)

    async def main():
        t0 = time.monotonic()
        task1 = asyncio.create_task(say_after(0.15, "hello"))
        task2 = asyncio.create_task(say_after(0.1, "world"))
        await task1
        await task2
        return time.monotonic() - t0

    elapsed = run(main())
    assert capsys.readouterr().out == "world\nhello\n"
    assert 0.15 <= elapsed < 0.24  # sequential would be >= 0.25


def test_try_except_around_failing_coroutine(run):
    async def fails():
        await asyncio.sleep(0.001)
        raise ValueError("bad value")

    async def main():
        try:
            await fails()
        except ValueError as e:
            return f"caught: {e}"

    assert run(main()) == "caught: bad value"


def test_exception_escapes_run(run):
    async def main():
        await asyncio.sleep(0)
        raise LookupError("escaped")

    with pytest.raises(LookupError, match="escaped"):
        run(main())


def test_wait_for_timeout(run):
    state = {}

    async def eternity():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise

    async def main():
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(eternity(), timeout=0.05)
        except asyncio.TimeoutError:
            return "timeout", time.monotonic() - t0

    res, elapsed = run(main())
    assert res == "timeout"
    assert state == {"cancelled": True}
    assert 0.05 <= elapsed < 0.5


def test_semaphore_limits_concurrency(run):
    async def main():
        sem = asyncio.Semaphore(3)
        current = 0
        max_seen = 0
        done = []

        async def worker(i):
            nonlocal current, max_seen
            async with sem:
                current += 1
                max_seen = max(max_seen, current)
                await asyncio.sleep(0.01)
                current -= 1
                done.append(i)

        await asyncio.gather(*(worker(i) for i in range(12)))
        return max_seen, sorted(done)

    max_seen, done = run(main())
    assert max_seen == 3
    assert done == list(range(12))


def test_queue_producer_consumer(run):
    async def main():
        q = asyncio.Queue(maxsize=5)
        consumed = []

        async def producer():
            for i in range(100):
                await q.put(i)

        async def consumer(name):
            while True:
                item = await q.get()
                consumed.append((name, item))
                if item % 7 == 0:
                    await asyncio.sleep(0.001)
                q.task_done()

        consumers = [asyncio.create_task(consumer(n)) for n in range(3)]
        await producer()
        await q.join()
        for c in consumers:
            c.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        return consumed

    consumed = run(main())
    items = [i for _, i in consumed]
    assert sorted(items) == list(range(100))
    assert len({n for n, _ in consumed}) > 1


def test_event(run):
    async def main():
        ev = asyncio.Event()
        woke = []

        async def waiter(i):
            await ev.wait()
            woke.append(i)

        tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
        await asyncio.sleep(0.02)
        assert woke == []
        ev.set()
        await asyncio.gather(*tasks)
        return sorted(woke)

    assert run(main()) == list(range(5))


def test_as_completed(run):
    async def job(delay):
        await asyncio.sleep(delay)
        return delay

    async def main():
        order = []
        for fut in asyncio.as_completed([job(0.06), job(0.02), job(0.04)]):
            order.append(await fut)
        return order

    assert run(main()) == [0.02, 0.04, 0.06]


def test_taskgroup(run):
    async def main():
        async with asyncio.TaskGroup() as tg:
            t1 = tg.create_task(asyncio.sleep(0.01, result="one"))
            t2 = tg.create_task(asyncio.sleep(0.02, result="two"))
        return t1.result(), t2.result()

    assert run(main()) == ("one", "two")


def test_taskgroup_failure_cancels_siblings(run):
    cancelled = []

    async def sibling():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def failing():
        await asyncio.sleep(0.01)
        raise ValueError("child failed")

    async def main():
        caught = []
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sibling())
                tg.create_task(failing())
        except* ValueError as eg:
            caught.extend(str(e) for e in eg.exceptions)
        return caught

    t0 = time.monotonic()
    assert run(main()) == ["child failed"]
    assert cancelled == [True]
    assert time.monotonic() - t0 < 2


def test_asyncio_timeout(run):
    async def main():
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(10)
        except TimeoutError:
            return time.monotonic() - t0

    elapsed = run(main())
    assert elapsed is not None and 0.05 <= elapsed < 0.5


def test_asyncio_timeout_not_triggered_and_reschedule(run):
    async def main():
        async with asyncio.timeout(1) as cm:
            await asyncio.sleep(0.01)
            cm.reschedule(asyncio.get_running_loop().time() + 5)
            await asyncio.sleep(0.01)
        return cm.expired()

    assert run(main()) is False


def test_shield(run):
    async def main():
        inner_done = []

        async def inner():
            await asyncio.sleep(0.05)
            inner_done.append(True)
            return "inner result"

        inner_task = asyncio.ensure_future(inner())
        outer = asyncio.ensure_future(asyncio.shield(inner_task))
        await asyncio.sleep(0.01)
        outer.cancel()
        try:
            await outer
        except asyncio.CancelledError:
            pass
        res = await inner_task
        return outer.cancelled(), res, inner_done

    assert run(main()) == (True, "inner result", [True])


request_id = contextvars.ContextVar("request_id", default=None)


def test_contextvars_propagation(run):
    async def child():
        seen = request_id.get()
        request_id.set("changed-in-child")
        return seen

    async def main():
        request_id.set("req-42")
        loop = asyncio.get_running_loop()
        from_task = await asyncio.create_task(child())
        after_child = request_id.get()

        fut = loop.create_future()
        loop.call_soon(lambda: fut.set_result(request_id.get()))
        from_call_soon = await fut

        fut2 = loop.create_future()
        loop.call_later(0.001, lambda: fut2.set_result(request_id.get()))
        from_call_later = await fut2

        ctx = contextvars.Context()
        ctx.run(request_id.set, "explicit")
        fut3 = loop.create_future()
        loop.call_soon(lambda: fut3.set_result(request_id.get()), context=ctx)
        from_explicit = await fut3

        from_thread = await asyncio.to_thread(request_id.get)
        return from_task, after_child, from_call_soon, from_call_later, from_explicit, from_thread

    assert run(main()) == ("req-42", "req-42", "req-42", "req-42", "explicit", "req-42")


def test_async_generators(run):
    finalized = []

    async def ticker(n, delay):
        try:
            for i in range(n):
                await asyncio.sleep(delay)
                yield i
        finally:
            finalized.append(n)

    async def main():
        values = [i async for i in ticker(5, 0.001)]
        evens = [i async for i in ticker(6, 0) if i % 2 == 0]
        g = ticker(100, 0)
        first = await g.__anext__()
        await g.aclose()
        partial = ticker(50, 0)
        await partial.__anext__()  # left suspended: finalized at shutdown
        main.partial = partial
        return values, evens, first

    assert run(main()) == ([0, 1, 2, 3, 4], [0, 2, 4], 0)
    assert sorted(finalized) == [5, 6, 50, 100]


def test_debug_mode_reports_slow_callback(run, caplog):
    async def main():
        loop = asyncio.get_running_loop()
        assert loop.get_debug()
        loop.slow_callback_duration = 0.05

        def blocking_callback():
            time.sleep(0.08)

        loop.call_soon(blocking_callback)
        await asyncio.sleep(0.01)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run(main(), debug=True)
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any(
        m.startswith("Executing") and "blocking_callback" in m and "took" in m and m.endswith("seconds")
        for m in msgs
    ), msgs


def test_run_in_executor_example(run):
    def blocking_io():
        time.sleep(0.02)
        return "io done"

    async def main():
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, blocking_io)

    assert run(main()) == "io done"


def test_future_set_after_example(run):
    async def set_after(fut, delay, value):
        await asyncio.sleep(delay)
        fut.set_result(value)

    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.create_task(set_after(fut, 0.01, "... world"))
        return await fut

    assert run(main()) == "... world"


def test_lock_and_condition(run):
    async def main():
        lock = asyncio.Lock()
        cond = asyncio.Condition()
        log = []

        async def locked(i):
            async with lock:
                log.append(("in", i))
                await asyncio.sleep(0.001)
                log.append(("out", i))

        await asyncio.gather(*(locked(i) for i in range(3)))

        ready = []

        async def consumer():
            async with cond:
                await cond.wait_for(lambda: ready)
                return ready[0]

        c = asyncio.create_task(consumer())
        await asyncio.sleep(0.005)
        async with cond:
            ready.append("go")
            cond.notify_all()
        return log, await c

    log, got = run(main())
    assert got == "go"
    for k in range(0, 6, 2):
        assert log[k][0] == "in" and log[k + 1] == ("out", log[k][1])


def test_streams_echo(run):
    async def handle(reader, writer):
        data = await reader.readline()
        writer.write(data.upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hello streams\n")
            await writer.drain()
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
        return line

    assert run(main()) == b"HELLO STREAMS\n"
