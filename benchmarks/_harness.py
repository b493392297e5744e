"""What the benchmark scripts share: loop factories and versions, the child-process
environment, CPU pinning, the worker-result protocol and small formatting helpers.

Each benchmark runs every measurement in a fresh child process (pinned to one CPU
with taskset when it can), so a loop's import or a previous case cannot skew the
next; the child prints one line ``<mark><json>`` that the parent reads back.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys


def get_loop_factory(name):
    """A zero-argument callable creating a new loop of `name` (no policies).

    "asyncio" is what asyncio.new_event_loop() returns on Unix, without the
    policy; "tokioloop+detector" is tokioloop with its blocking-call detector on;
    "tokioloop+nested" is tokioloop waiting the pre-0.8 way (TOKIOLOOP_NESTED_WAIT=1:
    parked in tokio's block_on with the loop's epoll set nested in tokio's);
    "tokioloop@base" is another build of tokioloop, imported from the directory
    TOKIOLOOP_BASE_PATH names (a copy of python/ with its extension), for an A/B
    of two builds in the same run.
    """
    if name == "asyncio":
        return asyncio.SelectorEventLoop
    if name in ("uvloop", "rloop", "tokioloop"):
        return importlib.import_module(name).new_event_loop
    if name == "tokioloop+detector":
        tokioloop = importlib.import_module("tokioloop")

        def factory():
            loop = tokioloop.new_event_loop()
            loop.set_blocking_detector(0.1)
            return loop

        return factory
    if name == "tokioloop+nested":
        os.environ["TOKIOLOOP_NESTED_WAIT"] = "1"
        return importlib.import_module("tokioloop").new_event_loop
    if name == "tokioloop@base":
        return _base_build().new_event_loop
    raise ValueError(f"unknown loop {name!r}")


def _base_build():
    """tokioloop imported from TOKIOLOOP_BASE_PATH (in a process that has not
    imported another tokioloop)."""
    base = os.environ.get("TOKIOLOOP_BASE_PATH")
    if not base:
        raise ValueError("tokioloop@base needs TOKIOLOOP_BASE_PATH (a directory holding a "
                         "tokioloop package with its extension)")
    if "tokioloop" not in sys.modules:
        sys.path.insert(0, os.path.abspath(base))
    mod = importlib.import_module("tokioloop")
    if not os.path.abspath(mod.__file__).startswith(os.path.abspath(base)):
        raise RuntimeError(f"tokioloop@base has {mod.__file__}, not one from {base} "
                           "(was tokioloop imported before?)")
    return mod


def loop_version(name, build_time=False):
    """The loop's version; for tokioloop optionally when its extension was built
    (it is rebuilt often during development: say which build ran)."""
    if name == "asyncio":
        return platform.python_version()
    if name == "tokioloop@base":
        _base_build()
        name = "tokioloop"
    if name in ("tokioloop+detector", "tokioloop+nested"):
        name = "tokioloop"
    mod = importlib.import_module(name)
    version = getattr(mod, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version(name)
        except Exception:
            version = "?"
    version = str(version)
    if build_time and name == "tokioloop":
        try:
            ext = importlib.import_module("tokioloop._tokioloop").__file__
            built = datetime.datetime.fromtimestamp(os.path.getmtime(ext)).astimezone()
            version += f" (extension built {built.strftime('%Y-%m-%d %H:%M:%S %Z')})"
        except Exception:
            pass
    return version


def child_env(drop=()):
    """The environment for measured children: no debug or dev mode, no malloc
    debugging (and no variable named in `drop`)."""
    env = dict(os.environ)
    for var in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE", "PYTHONMALLOC", *drop):
        env.pop(var, None)
    return env


def setup_pinning(cpu, no_pin):
    """Return (command prefix, extra worker args, description, cpu used or None)
    pinning children to `cpu`."""
    if no_pin:
        return [], [], "none (--no-pin)", None
    avail = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    note = ""
    if avail is not None and cpu not in avail:
        note = f" (CPU {cpu} not available, using CPU {avail[-1]})"
        cpu = avail[-1]
    if shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)], [], f"taskset -c {cpu}{note}", cpu
    if hasattr(os, "sched_setaffinity"):
        return [], ["--pin-self", str(cpu)], (
            f"os.sched_setaffinity -> CPU {cpu} (taskset not found){note}"
        ), cpu
    return [], [], "none (taskset and sched_setaffinity unavailable)", None


def run_worker(cmd, mark, timeout, env=None):
    """Run a worker command; return the dict it printed after `mark`, or an error dict."""
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env or child_env()
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(mark):
            res = json.loads(line[len(mark):])
            if "error" in res:
                res["stderr"] = proc.stderr[-3000:]
            return res
    if proc.returncode < 0:
        err = f"crashed (signal {-proc.returncode})"
    else:
        err = f"exited with status {proc.returncode} and no result"
    return {"error": err, "stderr": proc.stderr[-3000:]}


def emit_result(mark, out):
    """Worker side of run_worker: print the result line last."""
    sys.stdout.flush()
    print(mark + json.dumps(out), flush=True)


def scaled(params, factor, size_keys):
    """`params` with its size parameters multiplied by `factor` (for warm-up runs)."""
    out = dict(params)
    for k in size_keys & out.keys():
        out[k] = max(1, int(out[k] * factor))
    return out


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_list(value, allowed, what):
    items = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items
