"""Child-exit watching strategies of tokioloop: pidfd, SIGCHLD, thread."""

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import tokioloop
from tokioloop import _subprocess

PIPE = asyncio.subprocess.PIPE
PY = sys.executable
HAVE_PIDFD = _subprocess._have_pidfd()


def child_pids():
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            out.append((int(name), fields[0]))
    return out


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    monkeypatch.setattr(_subprocess, "CHILD_WATCHER", "auto")
    yield
    deadline = time.monotonic() + 5
    while child_pids() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child_pids() == []
    assert signal.getsignal(signal.SIGCHLD) in (signal.SIG_DFL, None)


def run(coro_fn, timeout=30):
    loop = tokioloop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(), timeout))
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        asyncio.set_event_loop(None)


async def spawn_watched(*args, **kwargs):
    """A Process plus the watch kind used for it."""
    proc = await asyncio.create_subprocess_exec(*args, **kwargs)
    return proc, proc._transport._watch_kind


async def workout():
    """Exit codes, signals, pipes and concurrency: what every watcher must get right."""
    kinds = set()
    proc, kind = await spawn_watched("sh", "-c", "exit 3")
    kinds.add(kind)
    rc1 = await proc.wait()
    proc, kind = await spawn_watched(PY, "-c", "import time; time.sleep(60)")
    kinds.add(kind)
    proc.kill()
    rc2 = await proc.wait()
    proc, kind = await spawn_watched("cat", stdin=PIPE, stdout=PIPE)
    kinds.add(kind)
    out, _ = await proc.communicate(b"data")

    async def one(i):
        p, k = await spawn_watched("sh", "-c", f"exit {i}")
        kinds.add(k)
        return await p.wait()

    many = await asyncio.gather(*(one(i) for i in range(30)))
    return kinds, rc1, rc2, out, many


def check_workout(result, kind):
    kinds, rc1, rc2, out, many = result
    assert kinds == {kind}
    assert (rc1, rc2, out, many) == (3, -signal.SIGKILL, b"data", list(range(30)))


@pytest.mark.parametrize("mode", ["pidfd", "sigchld", "thread"])
def test_forced_watcher(mode, monkeypatch):
    if mode == "pidfd" and not HAVE_PIDFD:
        pytest.skip("no pidfd here")
    monkeypatch.setattr(_subprocess, "CHILD_WATCHER", mode)
    check_workout(run(workout), mode)


def test_auto_is_pidfd_and_installs_no_sigchld_handler():
    if not HAVE_PIDFD:
        pytest.skip("no pidfd here")

    async def scenario():
        res = await workout()
        return res, signal.getsignal(signal.SIGCHLD)

    res, handler = run(scenario)
    check_workout(res, "pidfd")
    assert handler in (signal.SIG_DFL, None)


def test_auto_without_pidfd_uses_sigchld_in_main_thread(monkeypatch):
    monkeypatch.setattr(_subprocess, "_pidfd_supported", False)
    check_workout(run(workout), "sigchld")


def test_auto_without_pidfd_uses_thread_elsewhere(monkeypatch):
    monkeypatch.setattr(_subprocess, "_pidfd_supported", False)
    box = {}

    def target():
        box["res"] = run(workout)

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    check_workout(box["res"], "thread")


def test_pidfd_in_other_threads_no_extra_threads():
    if not HAVE_PIDFD:
        pytest.skip("no pidfd here")
    box = {}

    def target():
        async def scenario():
            before = threading.active_count()
            procs = [await asyncio.create_subprocess_exec("sleep", "0.3") for _ in range(20)]
            during = threading.active_count()
            rcs = [await p.wait() for p in procs]
            return before, during, rcs

        box["res"] = run(scenario)

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    before, during, rcs = box["res"]
    assert during == before
    assert rcs == [0] * 20


def test_sigchld_handler_lifetime(monkeypatch):
    monkeypatch.setattr(_subprocess, "CHILD_WATCHER", "sigchld")

    async def scenario():
        loop = asyncio.get_running_loop()
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(0.2)")
        installed = signal.SIGCHLD in loop._signal_handlers
        rc = await proc.wait()
        await asyncio.sleep(0.05)
        removed = signal.SIGCHLD not in loop._signal_handlers
        return installed, rc, removed

    assert run(scenario) == (True, 0, True)


@pytest.mark.parametrize("mode", ["pidfd", "sigchld", "thread"])
def test_foreign_children_keep_their_status(mode, monkeypatch):
    """The watcher reaps only the loop's own children."""
    if mode == "pidfd" and not HAVE_PIDFD:
        pytest.skip("no pidfd here")
    monkeypatch.setattr(_subprocess, "CHILD_WATCHER", mode)
    foreign = subprocess.Popen(["sh", "-c", "sleep 0.2; exit 5"])

    async def scenario():
        procs = [
            await asyncio.create_subprocess_exec("sh", "-c", "sleep 0.4; exit 1") for _ in range(5)
        ]
        return [await p.wait() for p in procs]

    try:
        assert run(scenario) == [1] * 5
    finally:
        assert foreign.wait(5) == 5


def test_user_sigchld_handler_is_not_replaced(monkeypatch):
    """Without pidfd, a SIGCHLD handler of the application wins: thread fallback."""
    monkeypatch.setattr(_subprocess, "_pidfd_supported", False)
    calls = []

    async def scenario():
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, calls.append, "chld")
        try:
            res = await workout()
            await asyncio.sleep(0.05)
            return res, loop._signal_handlers[signal.SIGCHLD]._callback
        finally:
            loop.remove_signal_handler(signal.SIGCHLD)

    res, callback = run(scenario)
    check_workout(res, "thread")
    assert callback == calls.append
    assert calls


def test_user_sigchld_handler_with_pidfd_no_fight():
    if not HAVE_PIDFD:
        pytest.skip("no pidfd here")
    calls = []

    async def scenario():
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, calls.append, "chld")
        try:
            res = await workout()
            await asyncio.sleep(0.05)
            return res
        finally:
            loop.remove_signal_handler(signal.SIGCHLD)

    check_workout(run(scenario), "pidfd")
    assert calls  # the application still hears every SIGCHLD burst


def test_sigchld_safety_poll_when_handler_stolen(monkeypatch):
    monkeypatch.setattr(_subprocess, "CHILD_WATCHER", "sigchld")
    monkeypatch.setattr(_subprocess, "SIGCHLD_SAFETY_POLL", 0.1)

    async def scenario():
        loop = asyncio.get_running_loop()
        proc = await asyncio.create_subprocess_exec("sleep", "0.2")
        # user code replaces the watcher's handler behind its back
        loop.add_signal_handler(signal.SIGCHLD, lambda: None)
        try:
            return await asyncio.wait_for(proc.wait(), 5)
        finally:
            loop.remove_signal_handler(signal.SIGCHLD)

    assert run(scenario) == 0


def test_pid_already_reaped_before_pidfd_open(monkeypatch, caplog):
    if not HAVE_PIDFD:
        pytest.skip("no pidfd here")
    real_open = os.pidfd_open

    def racing_pidfd_open(pid, *args):
        os.waitpid(pid, 0)  # someone else reaps it first
        raise ProcessLookupError(3, "No such process")

    async def scenario():
        monkeypatch.setattr(os, "pidfd_open", racing_pidfd_open)
        try:
            proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 4")
        finally:
            monkeypatch.setattr(os, "pidfd_open", real_open)
        return await proc.wait()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        assert run(scenario) == 255  # what the stdlib's watchers report
    assert "255" in caplog.text


def test_pidfd_open_failure_falls_back(monkeypatch):
    if not HAVE_PIDFD:
        pytest.skip("no pidfd here")

    def failing_pidfd_open(pid, *args):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "pidfd_open", failing_pidfd_open)
    check_workout(run(workout), "sigchld")


def test_popen_wait_in_another_thread(monkeypatch):
    """A thread blocked in Popen.wait() holds the Popen's waitpid lock."""
    for mode in (["pidfd"] if HAVE_PIDFD else []) + ["sigchld", "thread"]:
        monkeypatch.setattr(_subprocess, "CHILD_WATCHER", mode)

        async def scenario():
            proc = await asyncio.create_subprocess_exec("sh", "-c", "sleep 0.2; exit 6")
            popen = proc._transport.get_extra_info("subprocess")
            box = {}
            t = threading.Thread(target=lambda: box.setdefault("rc", popen.wait()))
            t.start()
            rc = await proc.wait()
            t.join(5)
            return rc, box.get("rc")

        assert run(scenario) == (6, 6), mode


def test_loop_closed_with_running_child_does_not_hang(monkeypatch):
    async def scenario():
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)")
        return proc

    loop = tokioloop.new_event_loop()
    proc = loop.run_until_complete(scenario())
    popen = proc._transport.get_extra_info("subprocess")
    loop.close()
    popen.kill()
    assert popen.wait(5) == -signal.SIGKILL
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # expected: never closed
        del proc, loop
        gc.collect()


def test_transport_abandoned_with_closed_loop():
    """Loop closed under a running child with pipes: GC warns, closes, kills."""
    import gc
    import warnings

    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import time; time.sleep(60)", stdin=PIPE, stdout=PIPE, stderr=PIPE
        )
        return proc.pid

    def pipe_fds():
        out = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                out += os.readlink(f"/proc/self/fd/{fd}").startswith(("pipe:", "anon_inode:[pidfd]"))
            except OSError:
                pass
        return out

    messages = []
    unraisable = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    gc.collect()  # earlier tests' closed loops and their pipes
    base = pipe_fds()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            # keep only the text: a recorded warning would keep its source alive
            warnings.showwarning = lambda message, *a, **k: messages.append(str(message))
            loop = tokioloop.new_event_loop()
            pid = loop.run_until_complete(scenario())
            assert pipe_fds() == base + 4, sorted(os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd"))
            loop.close()
            del loop
            gc.collect()
    finally:
        sys.unraisablehook = old_hook
    assert unraisable == []
    assert any(m.startswith("unclosed transport") for m in messages), messages
    assert pipe_fds() == base
    # killed, and reaped by subprocess's own clean-up of abandoned Popens
    deadline = time.monotonic() + 5
    while pid in [p for p, _ in child_pids()] and time.monotonic() < deadline:
        subprocess._cleanup()
        time.sleep(0.01)
    assert pid not in [p for p, _ in child_pids()]
