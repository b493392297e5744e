"""Loops in several threads; call_soon_threadsafe under contention."""

import asyncio
import collections
import threading
import time

import pytest

import tokioloop

pytestmark = pytest.mark.timeout(60)


def test_loops_in_several_threads_concurrently():
    n_threads = 4
    results = {}
    errors = []
    loops = {}
    barrier = threading.Barrier(n_threads)

    async def work(tid):
        loop = asyncio.get_running_loop()
        loops[tid] = loop
        assert isinstance(loop, tokioloop.Loop)

        async def one(i):
            await asyncio.sleep(0.2)
            assert asyncio.get_running_loop() is loop
            return i

        return await asyncio.gather(*(one(i) for i in range(50)))

    def thread_main(tid):
        try:
            barrier.wait(5)
            t0 = time.monotonic()
            res = tokioloop.run(work(tid))
            results[tid] = (res, time.monotonic() - t0)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(n_threads)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    total = time.monotonic() - t0
    assert not errors, errors
    assert len(results) == n_threads
    for tid, (res, _) in results.items():
        assert res == list(range(50))
    assert len({id(lp) for lp in loops.values()}) == n_threads
    # Concurrent, not serialised: 4 x 0.2 s sleeps would take >= 0.8 s in series.
    assert total < 0.7, f"threads appear serialised: {total:.2f}s"


def test_loop_in_thread_does_not_block_main_thread_loop():
    started = threading.Event()
    stop_flag = {}

    def bg():
        loop = tokioloop.new_event_loop()
        stop_flag["loop"] = loop
        loop.call_soon(started.set)
        loop.run_forever()
        loop.close()

    t = threading.Thread(target=bg)
    t.start()
    assert started.wait(5)
    try:
        # While the background loop idles, the main-thread loop runs fine.
        main = tokioloop.new_event_loop()
        try:
            t0 = time.monotonic()
            main.run_until_complete(asyncio.sleep(0.05))
            assert time.monotonic() - t0 < 0.5
        finally:
            main.close()
    finally:
        stop_flag["loop"].call_soon_threadsafe(stop_flag["loop"].stop)
        t.join(5)
    assert not t.is_alive()


def test_get_running_loop_is_per_thread():
    seen = {}
    ev = threading.Event()

    def bg():
        async def main():
            seen["bg"] = asyncio.get_running_loop()
            ev.set()
            await asyncio.sleep(0.1)

        tokioloop.run(main())

    t = threading.Thread(target=bg)
    t.start()
    assert ev.wait(5)
    # The main thread has no running loop although another thread has one.
    assert asyncio._get_running_loop() is None
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    t.join(5)


@pytest.mark.parametrize("n_threads,per_thread", [(8, 2000)])
def test_call_soon_threadsafe_many_threads_no_loss_no_dup(loop, n_threads, per_thread):
    received = collections.defaultdict(list)
    total = n_threads * per_thread
    count = [0]
    done = threading.Event()

    def cb(tid, i):
        received[tid].append(i)
        count[0] += 1
        if count[0] == total:
            loop.stop()

    start = threading.Barrier(n_threads + 1)

    def producer(tid):
        start.wait(5)
        for i in range(per_thread):
            loop.call_soon_threadsafe(cb, tid, i)
            if i % 500 == 0:
                time.sleep(0.001)

    threads = [threading.Thread(target=producer, args=(tid,)) for tid in range(n_threads)]
    for t in threads:
        t.start()
    loop.call_soon(start.wait, 5)
    watchdog = loop.call_later(30, loop.stop)
    loop.run_forever()
    watchdog.cancel()
    for t in threads:
        t.join(5)
    done.set()
    assert count[0] == total
    for tid in range(n_threads):
        # per-producer FIFO, nothing lost, nothing duplicated
        assert received[tid] == list(range(per_thread)), tid


def test_call_soon_threadsafe_while_loop_idle_from_many_threads(loop):
    # The loop blocks (no timers due soon); every wake-up must be noticed.
    hits = []
    n = 8

    def producer(i):
        for j in range(20):
            time.sleep(0.002)
            loop.call_soon_threadsafe(hits.append, (i, j))

    threads = [threading.Thread(target=producer, args=(i,)) for i in range(n)]
    loop.call_later(20, loop.stop)

    def check():
        if len(hits) == n * 20:
            loop.stop()
        else:
            loop.call_later(0.01, check)

    loop.call_soon(check)
    t0 = time.monotonic()
    for t in threads:
        t.start()
    loop.run_forever()
    for t in threads:
        t.join()
    assert len(hits) == n * 20
    assert len(set(hits)) == n * 20
    assert time.monotonic() - t0 < 5


def test_call_soon_threadsafe_on_closed_loop_from_thread():
    lp = tokioloop.new_event_loop()
    lp.close()
    out = []

    def worker():
        try:
            lp.call_soon_threadsafe(print)
        except RuntimeError as e:
            out.append(str(e))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert out == ["Event loop is closed"]


def test_stop_from_other_thread_via_threadsafe(loop):
    def worker():
        time.sleep(0.05)
        loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=worker).start()
    loop.call_later(30, lambda: None)
    t0 = time.monotonic()
    loop.run_forever()
    assert time.monotonic() - t0 < 1


def test_close_loop_from_other_thread_after_stop(loop):
    def worker():
        loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=worker).start()
    loop.run_forever()
    out = []
    t = threading.Thread(target=lambda: out.append((loop.close(), loop.is_closed())))
    t.start()
    t.join()
    assert out == [(None, True)]


def test_many_sequential_loops_in_threads():
    # Create/run/close many loops in short-lived threads: no leaks/crashes.
    errors = []

    def once():
        try:
            assert tokioloop.run(asyncio.sleep(0.001, result=5)) == 5
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    for _ in range(30):
        t = threading.Thread(target=once)
        t.start()
        t.join(5)
    assert not errors


def test_run_coroutine_threadsafe_between_two_tokioloops():
    ready = threading.Event()
    holder = {}

    def bg():
        lp = tokioloop.new_event_loop()
        holder["loop"] = lp
        lp.call_soon(ready.set)
        lp.run_forever()
        lp.close()

    t = threading.Thread(target=bg)
    t.start()
    assert ready.wait(5)
    bg_loop = holder["loop"]

    async def on_bg(x):
        assert asyncio.get_running_loop() is bg_loop
        await asyncio.sleep(0.01)
        return x * 3

    async def main():
        futs = [asyncio.wrap_future(asyncio.run_coroutine_threadsafe(on_bg(i), bg_loop)) for i in range(20)]
        return await asyncio.gather(*futs)

    try:
        assert tokioloop.run(main()) == [i * 3 for i in range(20)]
    finally:
        bg_loop.call_soon_threadsafe(bg_loop.stop)
        t.join(5)


def test_loop_releases_gil_while_idle(loop):
    # While the loop sleeps waiting for a timer, other Python threads must run.
    counter = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            counter[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.02)
        start = counter[0]
        loop.run_until_complete(asyncio.sleep(0.2))
        progressed = counter[0] - start
    finally:
        stop.set()
        t.join()
    assert progressed > 1000, progressed


def test_other_thread_python_work_while_loop_blocked_on_fd(loop):
    import socket

    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        result = []

        def worker():
            # pure-Python work, then wake the loop through the socket
            s = sum(i * i for i in range(200_000))
            result.append(s)
            b.send(b"x")

        fut = loop.create_future()
        loop.add_reader(a.fileno(), lambda: fut.done() or fut.set_result(a.recv(1)))
        t = threading.Thread(target=worker)
        t0 = time.monotonic()
        t.start()
        assert loop.run_until_complete(asyncio.wait_for(fut, 5)) == b"x"
        loop.remove_reader(a.fileno())
        t.join()
        assert result and time.monotonic() - t0 < 3
    finally:
        a.close()
        b.close()


def test_call_soon_threadsafe_wakeup_latency(loop):
    # A blocked loop must be woken immediately (self-pipe/eventfd style),
    # not on some polling interval.
    latencies = []

    def waker():
        for _ in range(20):
            time.sleep(0.01)
            sent = time.monotonic()
            loop.call_soon_threadsafe(lambda s=sent: latencies.append(time.monotonic() - s))
        loop.call_soon_threadsafe(loop.stop)

    loop.call_later(30, loop.stop)
    t = threading.Thread(target=waker)
    t.start()
    loop.run_forever()
    t.join()
    assert len(latencies) == 20
    latencies.sort()
    assert latencies[10] < 0.01, latencies
    assert latencies[-1] < 0.1, latencies


def test_mixed_workload_in_parallel_loops():
    """Several loops in several threads, each mixing sockets, timers,
    executor calls, cross-thread wake-ups and cancellations."""
    import socket

    errors = []
    results = {}

    async def echo_pair(loop, i):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        try:
            for j in range(5):
                msg = f"{i}:{j}".encode()
                await loop.sock_sendall(a, msg)
                got = await loop.sock_recv(b, 100)
                assert got == msg
                await asyncio.sleep(0.0005 * (j % 3))
            return i
        finally:
            a.close()
            b.close()

    async def canceller():
        t = asyncio.create_task(asyncio.sleep(10))
        await asyncio.sleep(0.001)
        t.cancel()
        try:
            await t
        except asyncio.CancelledError:
            return "cancelled"

    async def main(tid):
        loop = asyncio.get_running_loop()
        echo = await asyncio.gather(*(echo_pair(loop, i) for i in range(30)))
        ex = await asyncio.gather(*(loop.run_in_executor(None, pow, 2, k) for k in range(20)))
        fut = loop.create_future()
        threading.Thread(target=lambda: loop.call_soon_threadsafe(fut.set_result, tid)).start()
        woke = await asyncio.wait_for(fut, 5)
        canc = await asyncio.gather(*(canceller() for _ in range(20)))
        return echo == list(range(30)), ex == [2**k for k in range(20)], woke == tid, set(canc) == {"cancelled"}

    def runner(tid):
        try:
            results[tid] = tokioloop.run(main(tid))
        except BaseException as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert results == {i: (True, True, True, True) for i in range(3)}
