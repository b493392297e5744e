"""How the parked loop waits (src/driver.rs): by default in epoll_wait on the
loop's own set, with tokio's driver fd a member of it ("driver inside");
with TOKIOLOOP_NESTED_WAIT=1 (and as the fallback) inside the runtime's
block_on, our set registered in tokio's ("nested").

What must hold in both: a wake-up from another thread is never lost, the
loop does not spin after one (the driver's set must be drained), timers,
I/O and signals wake it, and nothing leaks per loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import tokioloop

MODES = {"driver inside": "0", "nested": "1"}


def test_default_mode_is_driver_inside_and_gone_after_close():
    loop = tokioloop.new_event_loop()
    try:
        assert loop._wait_mode() == "driver inside"
    finally:
        loop.close()
    assert loop._wait_mode() is None


def test_driver_fd_joins_once_and_loops_free_their_fds():
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        loop = tokioloop.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
    assert len(os.listdir("/proc/self/fd")) == before


def _idle_iterations(loop, seconds):
    start = loop._stats()["iterations"]
    loop.run_until_complete(asyncio.sleep(seconds))
    # The sleep's own timer and the run_until_complete plumbing: a handful.
    return loop._stats()["iterations"] - start


def test_no_spin_after_wakeups_from_other_threads():
    loop = tokioloop.new_event_loop()
    try:
        async def wake_a_few_times():
            done = loop.create_future()
            count = 0

            def bump():
                nonlocal count
                count += 1
                if count == 20 and not done.done():
                    done.set_result(None)

            def producer():
                for _ in range(20):
                    time.sleep(0.002)
                    loop.call_soon_threadsafe(bump)

            threading.Thread(target=producer).start()
            await asyncio.wait_for(done, 10)

        loop.run_until_complete(wake_a_few_times())
        # A driver set left readable would make every wait return at once:
        # thousands of iterations in 0.2 s instead of a few.
        assert _idle_iterations(loop, 0.2) < 20
        loop._write_to_self()  # a wake-up asked for while the loop is not parked
        assert _idle_iterations(loop, 0.2) < 20
    finally:
        loop.close()


def test_every_wakeup_from_another_thread_arrives_promptly():
    loop = tokioloop.new_event_loop()
    lags = []
    try:
        async def main():
            for i in range(300):
                fut = loop.create_future()
                sent = []

                def fire():
                    # Varying delays hit the loop before, while and after it parks.
                    time.sleep((i % 7) * 0.0003)
                    sent.append(time.monotonic())
                    loop.call_soon_threadsafe(fut.set_result, None)

                t = threading.Thread(target=fire)
                t.start()
                await asyncio.wait_for(fut, 5)
                lags.append(time.monotonic() - sent[0])
                t.join()

        loop.run_until_complete(main())
    finally:
        loop.close()
    assert len(lags) == 300
    assert max(lags) < 1.0


SCRIPT = textwrap.dedent(
    r"""
    import asyncio, os, signal, socket, sys, threading, time
    import tokioloop

    async def main():
        loop = asyncio.get_running_loop()
        mode = loop._wait_mode()
        # Timer wakes the parked loop on time.
        t0 = time.monotonic(); await asyncio.sleep(0.05)
        assert 0.045 < time.monotonic() - t0 < 0.5
        # I/O wakes it.
        a, b = socket.socketpair()
        a.setblocking(False); b.setblocking(False)
        threading.Timer(0.05, lambda: b.send(b"x")).start()
        assert await loop.sock_recv(a, 1) == b"x"
        a.close(); b.close()
        # A thread wakes it, many times.
        got = []
        def producer():
            for i in range(2000):
                loop.call_soon_threadsafe(got.append, i)
                if i % 100 == 0:
                    time.sleep(0.001)
        th = threading.Thread(target=producer); th.start()
        while len(got) < 2000:
            await asyncio.sleep(0.001)
        th.join()
        assert got == list(range(2000))
        # An executor result wakes it.
        assert await loop.run_in_executor(None, lambda: (time.sleep(0.02), 5)[1]) == 5
        # A signal wakes it.
        hit = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, hit.set_result, "sig")
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        assert await asyncio.wait_for(hit, 5) == "sig"
        # Idle afterwards: no spinning.
        n0 = loop._stats()["iterations"]
        await asyncio.sleep(0.2)
        assert loop._stats()["iterations"] - n0 < 20, loop._stats()
        print(mode)

    tokioloop.run(main())
    """
)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_wakeups_in_both_modes(mode):
    env = dict(os.environ, TOKIOLOOP_NESTED_WAIT=MODES[mode])
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == mode


FORK_SCRIPT = textwrap.dedent(
    r"""
    import asyncio, os, threading
    import tokioloop

    loop = tokioloop.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            asyncio.events._set_running_loop(None)
            child = tokioloop.new_event_loop()
            got = []

            async def main():
                lp = asyncio.get_running_loop()
                threading.Timer(0.02, lp.call_soon_threadsafe, (got.append, 1)).start()
                await asyncio.sleep(0.1)

            child.run_until_complete(main())
            mode = child._wait_mode()
            child.close()
            code = 0 if got == [1] and mode == "driver inside" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    # The parent's loop still works after the child used (and left) its copies.
    async def later():
        lp = asyncio.get_running_loop()
        f = lp.create_future()
        threading.Timer(0.02, lp.call_soon_threadsafe, (f.set_result, 9)).start()
        return await asyncio.wait_for(f, 5)

    assert loop.run_until_complete(later()) == 9
    loop.close()
    print(os.waitstatus_to_exitcode(status))
    """
)


def test_child_after_fork_runs_a_new_loop():
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    # In a fresh interpreter: forking this multi-threaded test process would
    # warn on 3.12+ (and could deadlock the child).
    out = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"
