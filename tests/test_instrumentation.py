"""loop.stats() and the blocking-call detector (tokioloop extensions)."""

import asyncio
import logging
import socket
import time

import pytest

import tokioloop


def run(main):
    return tokioloop.run(main())


def test_stats_counts_callbacks_timers_and_io():
    async def main():
        loop = asyncio.get_running_loop()
        before = loop.stats()
        for _ in range(10):
            loop.call_soon(lambda: None)
        handles = [loop.call_later(100, lambda: None) for _ in range(5)]
        for h in handles[:3]:
            h.cancel()
        await asyncio.sleep(0)
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=a)
        b.sendall(b"x" * 1000)
        data = await reader.readexactly(1000)
        writer.write(b"y" * 500)
        await writer.drain()
        assert len(b.recv(1000)) == 500
        after = loop.stats()
        writer.close()
        b.close()
        for h in handles:
            h.cancel()
        return before, after, data

    before, after, data = run(main)
    assert after["callbacks"] - before["callbacks"] >= 10
    assert after["iterations"] > before["iterations"]
    assert after["timers_scheduled"] - before["timers_scheduled"] >= 5
    assert after["timers_cancelled"] - before["timers_cancelled"] == 3
    assert after["timers_pending"] >= 2
    assert after["io_events"] > before["io_events"]
    assert after["bytes_read"] - before["bytes_read"] == 1000
    assert after["bytes_written"] - before["bytes_written"] == 500
    assert set(after) >= {"ready", "longest_callback", "blocking_reports"}


def test_detector_off_by_default_and_no_timing():
    async def main():
        loop = asyncio.get_running_loop()
        assert loop.get_blocking_detector() == (None, None)
        loop.call_soon(time.sleep, 0.02)
        await asyncio.sleep(0.03)
        return loop.stats()

    stats = run(main)
    assert stats["blocking_reports"] == 0
    assert stats["longest_callback"] == 0.0


def test_detector_reports_task_with_location_through_hook():
    reports = []

    async def blocker():
        await asyncio.sleep(0)
        time.sleep(0.05)
        await asyncio.sleep(0)

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_blocking_detector(0.02, reports.append)
        assert not loop.get_debug()
        await asyncio.create_task(blocker(), name="slowpoke")
        return loop.stats()

    stats = run(main)
    assert len(reports) == 1
    info = reports[0]
    assert "slowpoke" in info["callback"] and "blocker" in info["callback"]
    assert info["duration"] >= 0.04
    assert info["location"].endswith(f"test_instrumentation.py:{blocker.__code__.co_firstlineno + 3}")
    assert isinstance(info["task"], asyncio.Task)
    assert stats["blocking_reports"] == 1
    assert stats["longest_callback"] >= 0.04


def test_detector_logs_plain_callback_by_default(caplog):
    def slow_callback():
        time.sleep(0.03)

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_blocking_detector(0.02)
        loop.call_soon(slow_callback)
        loop.call_soon(lambda: None)
        await asyncio.sleep(0.05)
        loop.set_blocking_detector(None)
        loop.call_soon(slow_callback)
        await asyncio.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run(main)
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(msgs) == 1, msgs
    assert "Blocking call: " in msgs[0] and "slow_callback" in msgs[0]
    assert "test_instrumentation.py" in msgs[0]


def test_detector_rejects_bad_arguments():
    loop = tokioloop.new_event_loop()
    try:
        with pytest.raises(ValueError):
            loop.set_blocking_detector(-1)
        with pytest.raises(TypeError):
            loop.set_blocking_detector(0.1, hook=5)
        with pytest.raises((TypeError, ValueError)):
            loop.set_blocking_detector("soon")
    finally:
        loop.close()
