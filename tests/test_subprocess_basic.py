"""subprocess_exec / subprocess_shell: behaviour, with the stdlib loop as oracle.

Most tests run one scenario on the stdlib selector loop and on tokioloop and
compare what a program can observe (exit codes, output, exceptions, event
order).
"""

import asyncio
import gc
import grp
import os
import pwd
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings

import pytest

import tokioloop
from tokioloop import _subprocess

from conftest import LOOP_KINDS, make_loop

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL
STDOUT = asyncio.subprocess.STDOUT
PY = sys.executable
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def child_pids():
    """(pid, state) of every direct child of this process."""
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me:
            out.append((int(name), fields[0]))
    return out


@pytest.fixture(autouse=True)
def no_children_left():
    """Every test must leave no child behind: neither zombie nor running."""
    yield
    deadline = time.monotonic() + 5
    while True:
        left = child_pids()
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)  # the stdlib's ThreadedChildWatcher reaps in a thread
    assert left == [], f"children left behind: {left}"


def run(kind, coro_fn, timeout=30):
    """Run coro_fn() on a fresh loop of `kind`; return its result."""
    loop = make_loop(kind)
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(), timeout))
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        asyncio.set_event_loop(None)


def both(coro_fn, timeout=30):
    """Run the scenario on both loops, return {kind: result}."""
    return {kind: run(kind, coro_fn, timeout) for kind in LOOP_KINDS}


def same(coro_fn, timeout=30):
    """Run on both loops, assert equal results, return the result."""
    res = both(coro_fn, timeout)
    assert res["tokioloop"] == res["asyncio"], res
    return res["tokioloop"]


def outcome_of(exc):
    return (type(exc), str(exc))


# ---------------------------------------------------------------- exit codes


@pytest.mark.parametrize("code", [0, 1, 7, 100, 255])
def test_shell_exit_codes(code):
    async def scenario():
        proc = await asyncio.create_subprocess_shell(f"exit {code}")
        return await proc.wait(), proc.returncode

    assert same(scenario) == (code, code)


def test_exec_exit_code_and_returncode_attribute():
    async def scenario():
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import sys; sys.exit(3)")
        before = proc.returncode
        rc = await proc.wait()
        return before, rc, proc.returncode, await proc.wait()

    assert same(scenario) == (None, 3, 3, 3)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGUSR1, signal.SIGABRT])
def test_child_killed_by_signal_reports_negative(sig):
    code = (
        "import os, signal\n"
        f"if {int(sig)} != signal.SIGKILL:\n"
        f"    signal.signal({int(sig)}, signal.SIG_DFL)\n"
        f"os.kill(os.getpid(), {int(sig)})\n"
    )

    async def scenario():
        proc = await asyncio.create_subprocess_exec(PY, "-c", code)
        return await proc.wait()

    assert same(scenario) == -sig


# ---------------------------------------------------------------- signals


@pytest.mark.parametrize(
    "how,expected",
    [
        ("kill", -signal.SIGKILL),
        ("terminate", -signal.SIGTERM),
        ("SIGHUP", -signal.SIGHUP),
        ("SIGINT", -signal.SIGINT),
        ("SIGUSR2", -signal.SIGUSR2),
    ],
)
def test_send_signal_kill_terminate(how, expected):
    code = (
        "import signal, sys, time\n"
        "for s in (signal.SIGHUP, signal.SIGINT, signal.SIGUSR2, signal.SIGTERM):\n"
        "    signal.signal(s, signal.SIG_DFL)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )

    async def scenario():
        proc = await asyncio.create_subprocess_exec(PY, "-c", code, stdout=PIPE)
        assert await proc.stdout.readline() == b"ready\n"
        if how == "kill":
            proc.kill()
        elif how == "terminate":
            proc.terminate()
        else:
            proc.send_signal(getattr(signal, how))
        return await proc.wait()

    assert same(scenario) == expected


def test_signal_after_exit_is_silent_and_after_close_raises():
    async def scenario():
        proc = await asyncio.create_subprocess_exec("true")
        await proc.wait()
        # wait() may return as soon as the exit status is known, before
        # connection_lost (then signals are ignored); after it they raise.
        await asyncio.sleep(0.1)
        results = []
        # the transport is finished: the stdlib raises ProcessLookupError
        for action in (proc.kill, proc.terminate, lambda: proc.send_signal(signal.SIGHUP)):
            try:
                action()
                results.append("ok")
            except ProcessLookupError:
                results.append("ProcessLookupError")
        return results

    assert same(scenario) == ["ProcessLookupError"] * 3


def test_signal_to_exited_but_unreported_child_is_silent():
    async def scenario():
        transport, _ = await asyncio.get_running_loop().subprocess_exec(
            asyncio.SubprocessProtocol, "true", stdin=None, stdout=None, stderr=None
        )
        proc = transport.get_extra_info("subprocess")
        # wait until the child is a zombie, without reaping it
        while True:
            try:
                with open(f"/proc/{proc.pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except FileNotFoundError:
                break  # the stdlib's watcher thread reaped it already
            time.sleep(0.001)
        if getattr(transport, "_watch_kind", None) != "thread":
            # (a watcher thread may have finished the transport already)
            try:
                transport.send_signal(signal.SIGTERM)
                transport.kill()
            except ProcessLookupError:
                # The stdlib's watcher thread can reap the child between the
                # zombie check above and os.kill(): only there is this a race.
                if isinstance(asyncio.get_running_loop(), tokioloop.Loop):
                    raise
        rc = await transport._wait()
        transport.close()
        return rc

    res = both(scenario)
    # tokioloop signals like the stdlib of 3.13+ (os.kill, no reaping in
    # send_signal).  3.11's Popen.send_signal() reaps the zombie itself, and the
    # stdlib's child watcher then reports 255.
    assert res["tokioloop"] == 0
    assert res["asyncio"] in (0, 255)


def test_invalid_signal_number():
    async def scenario():
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)")
        try:
            proc.send_signal(100000)
        except Exception as exc:  # noqa: BLE001
            res = (type(exc).__name__, getattr(exc, "errno", None))
        else:
            res = "no error"
        proc.kill()
        await proc.wait()
        return res

    assert same(scenario) == ("OSError", 22)


# ---------------------------------------------------------------- stdio


def _target(kind, tmp, name):
    """Materialize a stdio argument; returns (arg, reader, closer)."""
    if kind == "PIPE":
        return PIPE, None, lambda: None
    if kind == "DEVNULL":
        return DEVNULL, None, lambda: None
    if kind == "STDOUT":
        return STDOUT, None, lambda: None
    path = os.path.join(tmp, name)
    if kind == "fd":
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

        def read():
            with open(path, "rb") as f:
                return f.read()

        return fd, read, lambda: os.close(fd)
    if kind == "file":
        f = open(path, "w+b")

        def read():
            with open(path, "rb") as g:
                return g.read()

        return f, read, f.close
    raise ValueError(kind)


STDIO_SCRIPT = (
    "d=$(cat); printf 'out:%s' \"$d\"; printf 'err:%s' \"$d\" >&2"
)


@pytest.mark.parametrize("stdin_kind", ["PIPE", "DEVNULL", "fd", "file"])
@pytest.mark.parametrize("stdout_kind", ["PIPE", "DEVNULL", "fd", "file"])
@pytest.mark.parametrize("stderr_kind", ["PIPE", "DEVNULL", "STDOUT", "fd", "file"])
def test_stdio_combinations(stdin_kind, stdout_kind, stderr_kind, tmp_path):
    async def scenario():
        with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
            if stdin_kind in ("fd", "file"):
                with open(os.path.join(tmp, "in"), "wb") as f:
                    f.write(b"from-file")
                if stdin_kind == "fd":
                    stdin = os.open(os.path.join(tmp, "in"), os.O_RDONLY)
                    close_in = lambda: os.close(stdin)  # noqa: E731
                else:
                    stdin = open(os.path.join(tmp, "in"), "rb")
                    close_in = stdin.close
            else:
                stdin, _, close_in = _target(stdin_kind, tmp, "in")
            stdout, read_out, close_out = _target(stdout_kind, tmp, "out")
            stderr, read_err, close_err = _target(stderr_kind, tmp, "err")
            try:
                proc = await asyncio.create_subprocess_shell(
                    STDIO_SCRIPT, stdin=stdin, stdout=stdout, stderr=stderr
                )
                pipes = (proc.stdin is not None, proc.stdout is not None, proc.stderr is not None)
                out, err = await proc.communicate(b"piped" if stdin_kind == "PIPE" else None)
                files = (read_out() if read_out else None, read_err() if read_err else None)
                return pipes, out, err, files, proc.returncode
            finally:
                close_in()
                close_out()
                close_err()

    result = same(scenario)
    pipes, out, err, files, rc = result
    assert rc == 0
    assert pipes == (stdin_kind == "PIPE", stdout_kind == "PIPE", stderr_kind == "PIPE")
    data = {"PIPE": b"piped", "DEVNULL": b"", "fd": b"from-file", "file": b"from-file"}[stdin_kind]
    if stdout_kind == "PIPE":
        expected_out = b"out:" + data + (b"err:" + data if stderr_kind == "STDOUT" else b"")
        assert out == expected_out
    if stderr_kind == "PIPE":
        assert err == b"err:" + data


def test_stderr_to_stdout_pipe_transports():
    async def scenario():
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, PY, "-c", "pass", stderr=STDOUT
        )
        kinds = [transport.get_pipe_transport(fd) is not None for fd in (0, 1, 2, 3)]
        await transport._wait()
        transport.close()
        return kinds

    assert same(scenario) == [True, True, False, False]


def test_no_pipes_at_all():
    async def scenario():
        loop = asyncio.get_running_loop()
        transport, _ = await loop.subprocess_shell(
            asyncio.SubprocessProtocol, "exit 4", stdin=None, stdout=None, stderr=None
        )
        pipes = [transport.get_pipe_transport(fd) for fd in (0, 1, 2)]
        rc = await transport._wait()
        transport.close()
        return pipes, rc, transport.get_returncode()

    assert same(scenario) == ([None, None, None], 4, 4)


_STDIO_INFO = (
    "import fcntl, os, stat\n"
    "info = [(stat.S_ISFIFO(os.fstat(fd).st_mode), fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ))"
    " for fd in (0, 1, 2)]\n"
    "os.write(1, repr(info).encode())\n"
)


def _pipe_max_size():
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


@pytest.mark.skipif(not hasattr(__import__("fcntl"), "F_GETPIPE_SZ"), reason="needs F_GETPIPE_SZ")
@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_child_stdio_pipes_are_enlarged_real_pipes(kind):
    """tokioloop makes the child's pipes 1 MiB (capped by pipe-max-size) when
    pipesize= is not given: the child still sees real pipes (FIFOs), only
    their capacity differs; an explicit pipesize= is obeyed, as by the stdlib."""

    async def scenario(**kwargs):
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", _STDIO_INFO, stdin=PIPE, stdout=PIPE, stderr=PIPE, **kwargs
        )
        out, _ = await proc.communicate()
        return eval(out), proc.returncode

    default, rc = run(kind, scenario)
    assert rc == 0
    assert [fifo for fifo, _ in default] == [True, True, True]
    if kind == "tokioloop" and _pipe_max_size():
        assert [size for _, size in default] == [min(1 << 20, _pipe_max_size())] * 3
    explicit, rc = run(kind, lambda: scenario(pipesize=65536))
    assert (explicit, rc) == ([(True, 65536)] * 3, 0)


@pytest.mark.skipif(not hasattr(__import__("fcntl"), "F_GETPIPE_SZ"), reason="needs F_GETPIPE_SZ")
@pytest.mark.skipif(not _pipe_max_size() or _pipe_max_size() <= 65536, reason="no bigger pipes here")
def test_enlarged_pipes_are_bounded():
    """At most _MAX_ENLARGED_PIPES open pipes are enlarged at a time (they
    count against the user's pipe quota, shared with the user's other
    processes); pipes closed since free their place for new children."""
    import fcntl
    from tokioloop import _subprocess as sp

    def sizes(procs):
        return [fcntl.fcntl(p.stdout._transport.get_extra_info("pipe").fileno(),
                            fcntl.F_GETPIPE_SZ) for p in procs]

    async def main():
        big = min(1 << 20, _pipe_max_size())
        procs = [await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
                 for _ in range(sp._MAX_ENLARGED_PIPES)]
        # 16 children with two pipes each: the first 8 children got both enlarged.
        first = sizes(procs)
        assert first.count(big) == sp._MAX_ENLARGED_PIPES // 2
        assert set(first) == {big, 65536}
        for p in procs:
            p.stdin.close()
        for p in procs:
            await p.communicate()
        # All closed: the next child gets big pipes again.
        p = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        again = sizes([p])
        p.stdin.close()
        await p.communicate()
        return again, big

    again, big = tokioloop.run(main())
    assert again == [big]


_QUOTA_SCRIPT = """
import asyncio, asyncio.subprocess, fcntl, os, subprocess, sys
import tokioloop, tokioloop._subprocess
os.setgid(65534)
os.setuid(65534)  # a user of our own: its pipe quota is not shared with anyone
held = []
try:
    while True:  # use up the user's pipe-buffer allowance
        r, w = os.pipe()
        held += [r, w]
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 1 << 20)
except OSError:
    pass

async def main():
    proc = await asyncio.create_subprocess_exec(
        "true", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    return (await proc.communicate()), proc.returncode

print(tokioloop.run(main()) == asyncio.run(main()) == ((b"", b""), 0))
"""


@pytest.mark.skipif(not IS_ROOT, reason="needs root to switch to a user with its own pipe quota")
def test_spawn_works_when_bigger_pipes_are_refused():
    """Past /proc/sys/fs/pipe-user-pages-soft the kernel refuses bigger pipes
    to unprivileged users: the child then gets default-sized pipes, and the
    spawn works as with the stdlib (Popen(pipesize=) would raise EPERM)."""
    try:
        with open("/proc/sys/fs/pipe-user-pages-soft") as f:
            if int(f.read()) == 0:
                pytest.skip("no soft limit on pipe buffers here")
    except OSError:
        pytest.skip("no /proc/sys/fs/pipe-user-pages-soft")
    res = subprocess.run([PY, "-c", _QUOTA_SCRIPT], capture_output=True, text=True, timeout=60)
    assert (res.stdout.strip(), res.returncode) == ("True", 0), res.stderr


def test_child_can_open_dev_stdin_stdout_stderr():
    """The child's stdio are real pipes, so /dev/stdin, /dev/stdout and
    /dev/stderr open (with socketpairs, as uvloop gives children, opening
    them fails with ENXIO: uvloop issues #505 and #532)."""

    async def scenario():
        proc = await asyncio.create_subprocess_shell(
            "cat /dev/stdin > /dev/stdout && echo err > /dev/stderr",
            stdin=PIPE, stdout=PIPE, stderr=PIPE,
        )
        out, err = await proc.communicate(b"through /dev/stdin and /dev/stdout\n")
        return out, err, proc.returncode

    assert same(scenario) == (b"through /dev/stdin and /dev/stdout\n", b"err\n", 0)


def test_communicate_large_roundtrip():
    payload = os.urandom(1 << 20) * 4

    async def scenario():
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate(payload)
        return out == payload, err, proc.returncode

    assert same(scenario) == (True, b"", 0)


def test_stream_readline_and_incremental_stdin():
    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            PY, "-u", "-c",
            "import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)",
            stdin=PIPE, stdout=PIPE,
        )
        got = []
        for word in (b"alpha", b"beta", b"gamma"):
            proc.stdin.write(word + b"\n")
            await proc.stdin.drain()
            got.append(await proc.stdout.readline())
        proc.stdin.close()
        await proc.stdin.wait_closed()
        got.append(await proc.stdout.read())
        return got, await proc.wait()

    assert same(scenario) == ([b"ALPHA\n", b"BETA\n", b"GAMMA\n", b""], 0)


def test_stdin_write_after_child_exit_raises_on_drain():
    async def scenario():
        proc = await asyncio.create_subprocess_exec(PY, "-c", "pass", stdin=PIPE)
        await proc.wait()
        try:
            for _ in range(64):
                proc.stdin.write(b"x" * 65536)
                await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            return "raised", isinstance(exc, OSError)
        return "no error"

    res = both(scenario)
    assert res["tokioloop"] == res["asyncio"] == ("raised", True)


# ---------------------------------------------------------------- Popen arguments


def test_cwd_and_env(tmp_path):
    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import os; print(os.getcwd()); print(os.environ.get('TOKIO_SP_TEST'))",
            stdout=PIPE, cwd=str(tmp_path), env={"TOKIO_SP_TEST": "yes", "PATH": os.environ["PATH"]},
        )
        out, _ = await proc.communicate()
        return out.decode().split()

    assert same(scenario) == [str(tmp_path), "yes"]


def test_cwd_pathlike_and_program_pathlike(tmp_path):
    import pathlib

    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            pathlib.Path(PY), "-c", "import os; print(os.getcwd())", stdout=PIPE, cwd=tmp_path
        )
        out, _ = await proc.communicate()
        return out.strip().decode()

    assert same(scenario) == str(tmp_path)


def test_pass_fds_and_close_fds():
    async def scenario():
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        os.set_inheritable(w2, True)  # inheritable, but close_fds closes it
        try:
            code = textwrap.dedent(f"""
                import os
                os.write({w1}, b"passed")
                try:
                    os.write({w2}, b"leaked")
                    print("leaked")
                except OSError:
                    print("closed")
            """)
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", code, stdout=PIPE, pass_fds=(w1,), close_fds=True
            )
            out, _ = await proc.communicate()
            os.close(w1)
            w1 = -1
            got = os.read(r1, 100)
            return out.strip(), got
        finally:
            for fd in (r1, w1, r2, w2):
                if fd >= 0:
                    os.close(fd)

    assert same(scenario) == (b"closed", b"passed")


def test_start_new_session():
    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import os; print(os.getsid(0) == os.getpid())",
            stdout=PIPE, start_new_session=True,
        )
        out, _ = await proc.communicate()
        return out.strip()

    assert same(scenario) == b"True"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="process_group is 3.11+")
def test_process_group():
    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import os; print(os.getpgid(0) == os.getpid(), os.getsid(0) == os.getpid())",
            stdout=PIPE, process_group=0,
        )
        out, _ = await proc.communicate()
        return out.strip()

    assert same(scenario) == b"True False"


def test_kill_process_group_reaches_grandchildren():
    async def scenario():
        proc = await asyncio.create_subprocess_shell(
            "sleep 30 & echo $!; wait", stdout=PIPE, start_new_session=True
        )
        grandchild = int(await proc.stdout.readline())
        os.killpg(proc.pid, signal.SIGKILL)
        rc = await proc.wait()
        await proc.stdout.read()
        # the grandchild is reparented to init/subreaper: just check it died
        for _ in range(200):
            try:
                with open(f"/proc/{grandchild}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except FileNotFoundError:
                break
            await asyncio.sleep(0.01)
        else:
            return rc, "grandchild alive"
        return rc, "ok"

    assert same(scenario) == (-signal.SIGKILL, "ok")


def test_umask():
    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import os; print(oct(os.umask(0)))", stdout=PIPE, umask=0o027
        )
        out, _ = await proc.communicate()
        return out.strip()

    assert same(scenario) == b"0o27"


def test_preexec_fn_and_restore_signals():
    def pre():
        os.environ["SET_BY_PREEXEC"] = "1"  # runs in the child, before exec

    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import os; print(os.environ.get('SET_BY_PREEXEC'), os.getpgid(0) == os.getpid())",
            stdout=PIPE, preexec_fn=pre, restore_signals=True, process_group=0,
        )
        out, _ = await proc.communicate()
        return out.strip()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert same(scenario) == b"1 True"


def test_executable_argument():
    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            "fake-argv0", "-c", "import sys; print(sys.argv[0] if False else 'ran')",
            stdout=PIPE, executable=PY,
        )
        out, _ = await proc.communicate()
        return out.strip()

    assert same(scenario) == b"ran"


@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_user_group_extra_groups_as_root():
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrgid(nobody.pw_gid)

    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", "echo $(id -u) $(id -g) [$(id -G)]",
            stdout=PIPE, user="nobody", group=nogroup.gr_name, extra_groups=[nogroup.gr_gid],
            cwd="/",
        )
        out, _ = await proc.communicate()
        return out.strip().decode()

    assert same(scenario) == f"{nobody.pw_uid} {nobody.pw_gid} [{nogroup.gr_gid}]"


@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_signal_to_child_running_as_other_user():
    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", "echo up; exec sleep 60",
            stdout=PIPE, user="nobody", cwd="/",
        )
        await proc.stdout.readline()
        proc.terminate()
        return await proc.wait()

    assert same(scenario) == -signal.SIGTERM


# ---------------------------------------------------------------- argument errors


BAD_EXEC_KWARGS = [
    dict(text=True),
    dict(encoding="utf-8"),
    dict(errors="strict"),
    dict(universal_newlines=True),
    dict(bufsize=1),
    dict(bufsize=4096),
    dict(bufsize=-1),
    dict(shell=True),
    dict(startupinfo=object()),
    dict(creationflags=1),
    dict(no_such_popen_argument=1),
    dict(cwd="/no/such/dir/for/tokioloop"),
    dict(user="no-such-user-tokioloop"),
    dict(pass_fds=(-5,)),
]


@pytest.mark.parametrize("kwargs", BAD_EXEC_KWARGS, ids=lambda k: ",".join(k))
def test_exec_rejects_what_stdlib_rejects(kwargs):
    async def scenario():
        try:
            await asyncio.create_subprocess_exec(PY, "-c", "pass", **kwargs)
        except Exception as exc:  # noqa: BLE001
            return outcome_of(exc)
        return "accepted"

    res = same(scenario)
    assert res != "accepted"


BAD_SHELL = [
    (["ls", "-l"], {}),
    (("ls",), {}),
    (None, {}),
    ("true", dict(shell=False)),
    ("true", dict(text=True)),
    ("true", dict(encoding="utf-8")),
    ("true", dict(errors="ignore")),
    ("true", dict(universal_newlines=True)),
    ("true", dict(bufsize=4096)),
]


@pytest.mark.parametrize("cmd,kwargs", BAD_SHELL)
def test_shell_rejects_what_stdlib_rejects(cmd, kwargs):
    async def scenario():
        try:
            await asyncio.get_running_loop().subprocess_shell(
                asyncio.SubprocessProtocol, cmd, **kwargs
            )
        except Exception as exc:  # noqa: BLE001
            return outcome_of(exc)
        return "accepted"

    res = same(scenario)
    assert res != "accepted" and res[0] is ValueError


def test_text_mode_false_values_accepted():
    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "pass", text=False, universal_newlines=None, bufsize=0, encoding=None,
            errors=None,
        )
        return await proc.wait()

    assert same(scenario) == 0


@pytest.mark.parametrize(
    "program", ["/no/such/program", "no-such-program-tokioloop", "/etc/hostname", "/tmp"]
)
def test_spawn_errors_match(program):
    async def scenario():
        try:
            await asyncio.create_subprocess_exec(program, stdin=PIPE, stdout=PIPE, stderr=PIPE)
        except OSError as exc:
            return type(exc), exc.errno
        return "spawned"

    assert same(scenario) != "spawned"


def test_spawn_error_leaks_no_fd_and_no_warning():
    async def scenario():
        for _ in range(20):
            with pytest.raises(FileNotFoundError):
                await asyncio.create_subprocess_exec(
                    "/no/such/program", stdin=PIPE, stdout=PIPE, stderr=PIPE
                )

    for kind in LOOP_KINDS:
        run(kind, scenario)  # warm up lazily created fds (watchers, executors)
        gc.collect()  # a closed tokioloop keeps its fds until it is freed
        before = len(os.listdir("/proc/self/fd"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run(kind, scenario)
            gc.collect()
        after = len(os.listdir("/proc/self/fd"))
        assert after == before, kind
        if kind == "tokioloop":
            assert [str(w.message) for w in caught] == []


# ---------------------------------------------------------------- protocol events


class Recorder(asyncio.SubprocessProtocol):
    def __init__(self):
        self.events = []
        self.data = {1: b"", 2: b""}
        self.done = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("connection_made")

    def pipe_data_received(self, fd, data):
        self.data[fd] += data
        if not self.events or self.events[-1] != f"data{fd}":
            self.events.append(f"data{fd}")

    def pipe_connection_lost(self, fd, exc):
        self.events.append(f"pipe_lost{fd}")

    def process_exited(self):
        self.events.append(f"exited={self.transport.get_returncode()}")

    def connection_lost(self, exc):
        self.events.append(f"connection_lost({exc})")
        self.done.set_result(None)


def check_order(events, returncode, fds):
    assert events[0] == "connection_made", events
    assert events[-1] == "connection_lost(None)", events
    assert events.count(f"exited={returncode}") == 1, events
    for fd in fds:
        assert events.count(f"pipe_lost{fd}") == 1, events
        # no data after the pipe is gone
        lost = events.index(f"pipe_lost{fd}")
        assert f"data{fd}" not in events[lost:], events


async def record(cmd, **kwargs):
    loop = asyncio.get_running_loop()
    transport, proto = await loop.subprocess_shell(Recorder, cmd, **kwargs)
    returned_after_connection_made = proto.events[:1] == ["connection_made"]
    await proto.done
    transport.close()
    return returned_after_connection_made, proto.events, proto.data, transport.get_returncode()


def test_event_order_plain_exit():
    res = both(lambda: record("printf out; printf err >&2; exit 3", stdin=None))
    for kind, (made_first, events, data, rc) in res.items():
        assert made_first, kind
        assert rc == 3
        assert data == {1: b"out", 2: b"err"}
        check_order(events, 3, (1, 2))


def test_event_order_pipes_close_before_exit():
    cmd = "exec >&- 2>&-; sleep 0.3; exit 5"
    res = both(lambda: record(cmd, stdin=None))
    for kind, (made_first, events, data, rc) in res.items():
        check_order(events, 5, (1, 2))
        assert events.index("exited=5") > events.index("pipe_lost1"), (kind, events)
        assert events.index("exited=5") > events.index("pipe_lost2"), (kind, events)
    # (stdout and stderr close at the same instant: their order may vary)


def test_event_order_exit_before_pipes_close():
    # The grandchild keeps stdout/stderr open after the shell exited.
    cmd = "(sleep 0.4; printf late) & exit 6"
    res = both(lambda: record(cmd, stdin=None))
    for kind, (made_first, events, data, rc) in res.items():
        check_order(events, 6, (1, 2))
        assert events.index("exited=6") < events.index("pipe_lost1"), (kind, events)
        assert data[1] == b"late"
    # (stdout and stderr close at the same instant: their order may vary)


def test_wait_returns_only_after_pipes_closed():
    async def scenario():
        proc = await asyncio.create_subprocess_shell(
            "(sleep 1; printf late) & sleep 0.3; exit 2", stdout=PIPE
        )
        t0 = time.monotonic()
        assert proc.returncode is None
        rc = await proc.wait()  # pending before the exit: ends with connection_lost
        waited = time.monotonic() - t0
        late = await proc.stdout.read()
        return rc, waited > 0.6, late

    assert same(scenario) == (2, True, b"late")


def test_wait_after_exit_known_returns_at_once():
    async def scenario():
        proc = await asyncio.create_subprocess_shell(
            "(sleep 0.5; printf late) & exit 2", stdout=PIPE
        )
        # let the exit be noticed (but not the pipe closing)
        while proc.returncode is None:
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        rc = await proc.wait()
        quick = time.monotonic() - t0 < 0.2
        await proc.stdout.read()
        await asyncio.sleep(0.05)
        return rc, quick

    assert same(scenario) == (2, True)


def test_communicate_waits_for_pipes_of_grandchildren():
    async def scenario():
        proc = await asyncio.create_subprocess_shell(
            "(sleep 0.3; printf late; printf e >&2) & printf early; exit 1",
            stdout=PIPE, stderr=PIPE,
        )
        out, err = await proc.communicate()
        return out, err, proc.returncode

    assert same(scenario) == (b"earlylate", b"e", 1)


def test_pipe_protocols_see_connection_made_before_subprocess_protocol():
    async def scenario():
        loop = asyncio.get_running_loop()
        seen = []

        class P(asyncio.SubprocessProtocol):
            def connection_made(self, transport):
                # every pipe transport is usable from connection_made
                seen.append([transport.get_pipe_transport(fd) is not None for fd in (0, 1, 2)])
                seen.append(transport.get_pipe_transport(0).is_closing())

        transport, _ = await loop.subprocess_exec(P, "cat")
        seen.append(transport.get_pid() is not None)
        transport.get_pipe_transport(0).close()
        await transport._wait()
        transport.close()
        return seen

    assert same(scenario) == [[True, True, True], False, True]


# ---------------------------------------------------------------- transport API


def test_transport_api():
    async def scenario():
        loop = asyncio.get_running_loop()
        transport, proto = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, PY, "-c", "import sys; sys.stdin.read()"
        )
        popen = transport.get_extra_info("subprocess")
        res = {
            "popen": isinstance(popen, subprocess.Popen),
            "pid": transport.get_pid() == popen.pid,
            "rc": transport.get_returncode(),
            "closing": transport.is_closing(),
            "protocol": transport.get_protocol() is proto,
            "repr_running": f"pid={popen.pid} running" in repr(transport),
            "pipe_extra": transport.get_pipe_transport(1).get_extra_info("pipe") is popen.stdout,
            "stdin_can_eof": transport.get_pipe_transport(0).can_write_eof(),
            "stdin_limits": transport.get_pipe_transport(0).get_write_buffer_limits(),
            "missing": transport.get_extra_info("nope", "dflt"),
        }
        transport.get_pipe_transport(0).write_eof()
        rc = await transport._wait()
        res["rc_after"] = (rc, transport.get_returncode())
        res["repr_done"] = f"returncode={rc}" in repr(transport)
        transport.close()
        transport.close()
        res["closing_after"] = transport.is_closing()
        res["repr_closed"] = repr(transport).split()[1]
        return res

    res = same(scenario)
    assert res["rc_after"] == (0, 0)
    assert res["repr_closed"] == "closed"


def test_close_kills_running_child():
    async def scenario():
        loop = asyncio.get_running_loop()
        transport, _ = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, PY, "-c", "import time; time.sleep(60)"
        )
        transport.close()
        return await transport._wait()

    assert same(scenario) == -signal.SIGKILL


def test_close_does_not_kill_child_reaped_elsewhere():
    async def scenario():
        loop = asyncio.get_running_loop()
        transport, _ = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, "sh", "-c", "exit 9", stdin=None, stdout=None, stderr=None
        )
        popen = transport.get_extra_info("subprocess")
        popen.wait()  # consume the status behind the loop's back
        transport.close()
        return popen.returncode, await transport._wait()

    res = both(scenario)
    # tokioloop takes the status from the Popen object that consumed it; the
    # stdlib's watchers get ECHILD and make up 255 (with a warning).
    # (With the stdlib's watcher thread racing Popen.wait(), either side may
    # get ECHILD there: the stdlib loop is no oracle for this one.)
    assert res["tokioloop"] == (9, 9)


def test_unclosed_transport_warns():
    async def scenario():
        loop = asyncio.get_running_loop()
        transport, proto = await loop.subprocess_exec(
            Recorder, "true", stdin=None, stdout=None, stderr=None
        )
        await proto.done  # _wait() may return before connection_lost ran
        proto.transport = None
        await asyncio.sleep(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del transport
            gc.collect()
        return [str(w.message).split()[:2] for w in caught if w.category is ResourceWarning]

    assert same(scenario) == [["unclosed", "transport"]]


def test_cancel_creation_kills_and_reaps_child():
    async def scenario():
        task = asyncio.ensure_future(
            asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)", stdout=PIPE)
        )
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "not cancelled"

    assert same(scenario) == "cancelled"


def test_cancel_wait_then_wait_again():
    async def scenario():
        proc = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.05)
        proc.kill()
        return await proc.wait()

    assert same(scenario) == -signal.SIGKILL


def test_debug_mode_logs(caplog):
    async def scenario():
        asyncio.get_running_loop().set_debug(True)
        proc = await asyncio.create_subprocess_exec("true", stdout=PIPE, stderr=STDOUT)
        await proc.communicate()

    import logging

    messages = {}
    for kind in LOOP_KINDS:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            run(kind, scenario)
        messages[kind] = [
            r.getMessage().split(":")[0]
            for r in caplog.records
            if "execute program" in r.getMessage() or "exited with return code" in r.getMessage()
        ]
    assert messages["tokioloop"][0] == "execute program 'true' stdout=stderr=<pipe>"
    assert len(messages["tokioloop"]) == len(messages["asyncio"])


def test_process_repr_and_pid():
    async def scenario():
        proc = await asyncio.create_subprocess_exec("true")
        ok = repr(proc) == f"<Process {proc.pid}>"
        await proc.wait()
        return ok

    assert same(scenario) is True


def test_watch_kind_is_pidfd_by_default():
    if not _subprocess._have_pidfd() or _subprocess.CHILD_WATCHER != "auto":
        pytest.skip("no pidfd here, or another watcher forced")

    async def scenario():
        loop = asyncio.get_running_loop()
        transport, _ = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, "sleep", "0.1", stdin=None, stdout=None, stderr=None
        )
        kind = transport._watch_kind
        await transport._wait()
        transport.close()
        return kind

    assert run("tokioloop", scenario) == "pidfd"


def test_overridden_connect_pipe_methods_are_used():
    """A subclass overriding connect_*_pipe sees the child's pipes (stdlib does)."""
    calls = []

    class MyLoop(tokioloop.Loop):
        async def connect_read_pipe(self, protocol_factory, pipe):
            calls.append(("read", pipe.fileno() >= 0))
            return await super().connect_read_pipe(protocol_factory, pipe)

        async def connect_write_pipe(self, protocol_factory, pipe):
            calls.append(("write", pipe.fileno() >= 0))
            return await super().connect_write_pipe(protocol_factory, pipe)

    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", "cat; echo e >&2", stdin=PIPE, stdout=PIPE, stderr=PIPE
        )
        return await proc.communicate(b"in"), proc.returncode

    loop = MyLoop()
    try:
        res = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert res == ((b"in", b"e\n"), 0)
    assert calls == [("write", True), ("read", True), ("read", True)]
    plain = tokioloop.new_event_loop()
    try:
        assert plain._subprocess_native_pipes()
        assert not loop._subprocess_native_pipes()
    finally:
        plain.close()
