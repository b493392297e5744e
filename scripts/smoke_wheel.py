#!/usr/bin/env python3
"""Smoke-test built tokioloop wheels, each in a clean virtual environment.

    python scripts/smoke_wheel.py dist/tokioloop-*.whl [--python PATH] [--keep]
    python scripts/smoke_wheel.py --installed        # the checks only, on this interpreter

For each wheel: pick an interpreter matching its tag (cp311 -> a CPython 3.11 found
as python3.11 on PATH or under pyenv, or --python), create a fresh venv in a temp dir
(no system site-packages), ``pip install --no-index --no-deps`` the wheel (tokioloop
has no runtime dependencies, so nothing else is fetched), then run a small program
from an empty directory (so the source tree cannot be imported by mistake) that:

* imports tokioloop from the venv and checks its version against the wheel's;
* runs coroutines with tokioloop.run, asyncio.Runner(loop_factory=...), and
  asyncio.run(loop_factory=...) on 3.12+;
* schedules callbacks and timers, and calls back from a thread;
* serves and connects over TCP on 127.0.0.1 (streams), and over a socketpair;
* runs a subprocess and reads its output;
* runs a script with ``python -m tokioloop``;
* finds the type stubs (py.typed, *.pyi) and the pytest11 entry point installed.

Exit status 0 when every wheel passes. Nothing here builds a wheel: build them first
(``maturin build --release -i python3.11 -i python3.12 -i python3.13``).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WHEEL_RE = re.compile(
    r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-(?P<build>\d[^-]*))?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$"
)

SMOKE_PROGRAM = r'''
import asyncio
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import tokioloop

expected_version = os.environ.get("SMOKE_EXPECT_VERSION")
expected_prefix = os.environ.get("SMOKE_EXPECT_PREFIX")
checks = []


def check(name, ok, detail=""):
    checks.append((name, bool(ok), detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)


pkg_dir = Path(tokioloop.__file__).resolve().parent
check("imported from the environment under test", expected_prefix is None
      or str(pkg_dir).startswith(str(Path(expected_prefix).resolve())), str(pkg_dir))
check("version", expected_version is None or tokioloop.__version__ == expected_version,
      tokioloop.__version__)


async def main():
    loop = asyncio.get_running_loop()
    assert isinstance(loop, tokioloop.Loop), type(loop)

    # Callbacks, timers, thread wake-ups.
    order = []
    done = loop.create_future()
    loop.call_later(0.02, order.append, "later")
    loop.call_soon(order.append, "soon")
    threading.Thread(target=lambda: loop.call_soon_threadsafe(done.set_result, "thread")).start()
    assert await asyncio.wait_for(done, 5) == "thread"
    await asyncio.sleep(0.05)
    assert order == ["soon", "later"], order

    # TCP streams on loopback.
    async def echo(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x" * 50000 + b"\n")
    line = await reader.readline()
    assert line == b"x" * 50000 + b"\n", len(line)
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()

    # A subprocess.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "print('from the child')", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert out.strip() == b"from the child" and proc.returncode == 0, (out, proc.returncode)

    # Executor.
    assert await loop.run_in_executor(None, sum, [1, 2, 3]) == 6
    return "main done"


try:
    check("tokioloop.run", tokioloop.run(main()) == "main done")
except Exception as exc:  # reported, not raised: every check runs
    check("tokioloop.run", False, repr(exc))

try:
    with asyncio.Runner(loop_factory=tokioloop.new_event_loop) as runner:
        check("asyncio.Runner(loop_factory=tokioloop.new_event_loop)", runner.run(main()) == "main done")
except Exception as exc:
    check("asyncio.Runner(loop_factory=tokioloop.new_event_loop)", False, repr(exc))

if sys.version_info >= (3, 12):
    try:
        ok = asyncio.run(main(), loop_factory=tokioloop.new_event_loop) == "main done"
        check("asyncio.run(loop_factory=tokioloop.new_event_loop)", ok)
    except Exception as exc:
        check("asyncio.run(loop_factory=tokioloop.new_event_loop)", False, repr(exc))

with tempfile.TemporaryDirectory() as d:
    script = Path(d) / "hello.py"
    script.write_text(
        "import asyncio\n"
        "async def main():\n"
        "    await asyncio.sleep(0.01)\n"
        "    print(type(asyncio.get_running_loop()).__module__)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.run([sys.executable, "-m", "tokioloop", str(script)],
                          capture_output=True, text=True, timeout=60)
    check("python -m tokioloop script.py", proc.returncode == 0 and proc.stdout.strip() == "tokioloop._loop",
          (proc.stdout + proc.stderr).strip()[-300:])

check("py.typed installed", (pkg_dir / "py.typed").is_file())
stubs = sorted(p.name for p in pkg_dir.glob("*.pyi"))
check("type stubs installed", "_tokioloop.pyi" in stubs, ", ".join(stubs))
eps = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "tokioloop"]
check("pytest11 entry point", len(eps) == 1 and eps[0].value == "tokioloop.pytest_plugin",
      ", ".join(ep.value for ep in eps))
try:
    import tokioloop.pytest_plugin  # noqa: F401  (pytest may be absent: then skipped)
    check("tokioloop.pytest_plugin imports", True)
except ImportError as exc:
    if "pytest" in str(exc):
        check("tokioloop.pytest_plugin imports", True, "skipped: pytest not installed")
    else:
        check("tokioloop.pytest_plugin imports", False, repr(exc))

failed = [name for name, ok, _ in checks if not ok]
print(f"{len(checks) - len(failed)} passed, {len(failed)} failed", flush=True)
sys.exit(1 if failed else 0)
'''


def log(msg):
    print(f"smoke_wheel: {msg}", flush=True)


def python_for_tag(pytag, explicit=None):
    """An interpreter for a wheel's python tag (cp311, cp312, ...)."""
    if explicit:
        return explicit
    m = re.match(r"cp(\d)(\d+)", pytag)
    if not m:
        return sys.executable
    major, minor = m.group(1), m.group(2)
    want = f"{major}.{minor}"
    candidates = []
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == want:
        candidates.append(sys.executable)
    found = shutil.which(f"python{want}")
    if found:
        candidates.append(found)
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", f"{want}.*", "bin", f"python{want}")), reverse=True)
    for cand in candidates:
        try:
            out = subprocess.run([cand, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == want:
            return cand
    raise SystemExit(f"smoke_wheel: no CPython {want} found for a {pytag} wheel (pass --python)")


def run_program(python, env_extra, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(env_extra)
    prog = Path(cwd) / "smoke_program.py"
    prog.write_text(SMOKE_PROGRAM)
    proc = subprocess.run([python, str(prog)], cwd=cwd, env=env, timeout=300)
    return proc.returncode


def smoke_wheel(wheel, python=None, keep=False):
    wheel = Path(wheel).resolve()
    m = WHEEL_RE.match(wheel.name)
    if not m:
        raise SystemExit(f"smoke_wheel: not a wheel file name: {wheel.name}")
    interpreter = python_for_tag(m["py"], python)
    work = Path(tempfile.mkdtemp(prefix="tokioloop-smoke-"))
    venv = work / "venv"
    log(f"{wheel.name}: clean venv with {interpreter} in {venv}")
    try:
        subprocess.run([interpreter, "-m", "venv", str(venv)], check=True, timeout=300)
        vpython = venv / "bin" / "python"
        subprocess.run([str(vpython), "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--disable-pip-version-check", str(wheel)], check=True, timeout=600)
        run_dir = work / "run"
        run_dir.mkdir()
        rc = run_program(str(vpython), {"SMOKE_EXPECT_VERSION": m["version"],
                                        "SMOKE_EXPECT_PREFIX": str(venv)}, run_dir)
        log(f"{wheel.name}: {'passed' if rc == 0 else 'FAILED'}")
        return rc == 0
    finally:
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheels", nargs="*", help="wheel files (globs allowed)")
    parser.add_argument("--python", help="interpreter for the venv (default: from the wheel's tag)")
    parser.add_argument("--keep", action="store_true", help="keep the temp venvs")
    parser.add_argument("--installed", action="store_true",
                        help="run the smoke program on this interpreter's tokioloop instead")
    args = parser.parse_args(argv)
    if args.installed:
        with tempfile.TemporaryDirectory(prefix="tokioloop-smoke-") as d:
            return run_program(args.python or sys.executable, {}, d)
    paths = []
    for pattern in args.wheels:
        matches = sorted(glob.glob(pattern))
        paths += matches or [pattern]
    if not paths:
        parser.error("give wheel files, or --installed")
    results = {p: smoke_wheel(p, args.python, args.keep) for p in paths}
    failed = [p for p, ok in results.items() if not ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
