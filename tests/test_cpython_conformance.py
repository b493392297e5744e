"""CPython's own ``test.test_asyncio`` run against tokioloop.

Each module group runs ``tests/conformance/run_cpython.py`` in a subprocess
with the interpreter running pytest (every test module in its own worker
process, per-test faulthandler watchdog, per-module and per-group time
limits).  A test fails when a CPython test fails that is not listed in
``tests/conformance/expected_failures_<X.Y>.txt``, or (the list only shrinks)
when a listed test now passes.

Timing (2 cores): the five groups take ~60-100 s in total when nothing hangs (plus
~10 s of harness self-tests);
the worst case is bounded by ``--budget`` per group (5 x 110 s).

Environment knobs:

* ``TOKIOLOOP_CONFORMANCE_FACTORY``: loop factory "module:callable"
  (default ``tokioloop:new_event_loop``; ``asyncio:SelectorEventLoop``
  validates the harness itself);
* ``TOKIOLOOP_CONFORMANCE_STRICT=0``: only report, do not fail, on expected
  failures that now pass;
* ``TOKIOLOOP_CONFORMANCE_PYTHONS``: extra interpreters (``os.pathsep``
  separated) to run all groups with; pyenv's 3.12/3.13 are tried by default
  and skipped with a message when ``import tokioloop`` fails under them.

To see/refresh results by hand::

    python tests/conformance/run_cpython.py -j 2            # all groups
    python tests/conformance/run_cpython.py -j 2 --update-expected
"""

import glob
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "conformance", "run_cpython.py")
FACTORY = os.environ.get("TOKIOLOOP_CONFORMANCE_FACTORY", "tokioloop:new_event_loop")
STRICT = os.environ.get("TOKIOLOOP_CONFORMANCE_STRICT", "1") != "0"
GROUPS = ["core", "events", "net", "tls", "subprocess"]
PER_TEST_TIMEOUT = 30     # faulthandler watchdog inside the worker
GROUP_BUDGET = 110        # wall clock per group (driver --budget)


def _probe(python):
    """None if `python` can run the conformance suite with FACTORY, else why not."""
    code = "\n".join([
        "import sys, importlib",
        "try:",
        "    import test.test_asyncio.utils",
        "except Exception as e:",
        "    print('no CPython test suite (test.test_asyncio): %r' % (e,)); sys.exit(1)",
        "mod, _, attr = " + repr(FACTORY) + ".partition(':')",
        "try:",
        "    f = getattr(importlib.import_module(mod), attr or 'new_event_loop')",
        "    f().close()",
        "except Exception as e:",
        "    print('import %s / creating a loop failed: %r' % (mod, e)); sys.exit(1)",
    ])
    try:
        p = subprocess.run([python, "-c", code], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True,
                           timeout=120, cwd=os.path.dirname(RUNNER))
    except (OSError, subprocess.TimeoutExpired) as e:
        return "cannot run %s: %r" % (python, e)
    if p.returncode != 0:
        return "%s under %s" % ((p.stdout.strip().splitlines() or ["?"])[-1], python)
    return None


def _run(python, groups, tmp_path, budget):
    report = tmp_path / "report.json"
    cmd = [sys.executable, RUNNER, "--python", python, "--factory", FACTORY,
           "-j", "2", "--timeout", str(PER_TEST_TIMEOUT), "--module-timeout", "300",
           "--budget", str(budget), "--json", str(report),
           "--log-dir", str(tmp_path / "logs"), "--require-loop"]
    for g in groups:
        cmd += ["--group", g]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=budget + 420)
    print(p.stdout)
    assert report.exists(), "runner produced no report (rc=%s):\n%s" % (p.returncode, p.stdout)
    with open(report) as f:
        data = json.load(f)
    return p, data


def _check(p, data):
    unexpected = data["unexpected"]
    now_passing = data["now_passing"]
    msg = []
    if unexpected:
        msg.append("%d unexpected failure(s) of CPython's test_asyncio on %s:"
                   % (len(unexpected), FACTORY))
    if now_passing and STRICT:
        msg.append("%d expected failure(s) now pass: remove them from %s "
                   "(or run run_cpython.py --update-expected):\n  %s"
                   % (len(now_passing), data["expected_file"], "\n  ".join(now_passing)))
    if msg:
        # the runner's own summary (table + one line per failure) says the rest
        tail = p.stdout[p.stdout.find("\nmodule "):] if "\nmodule " in p.stdout else p.stdout
        tbs = []
        for tid in unexpected[:5]:
            mod = tid.split(".")[0]
            detail = data["modules"].get(mod, {}).get("tests", {}).get(tid, {}).get("detail", "")
            lines = detail.rstrip().splitlines()
            tbs.append("--- %s\n%s" % (tid, "\n".join(lines[-25:])))
        if tbs:
            tail += "\nfirst tracebacks:\n" + "\n".join(tbs)
        pytest.fail("\n".join(msg) + "\n" + tail, pytrace=False)
    assert p.returncode == 0, p.stdout


@pytest.fixture(scope="module")
def this_python():
    why = _probe(sys.executable)
    if why:
        pytest.skip("CPython conformance skipped: " + why)
    return sys.executable


@pytest.mark.timeout(GROUP_BUDGET + 480)
@pytest.mark.parametrize("group", GROUPS)
def test_cpython_asyncio(group, this_python, tmp_path):
    p, data = _run(this_python, [group], tmp_path, GROUP_BUDGET)
    _check(p, data)


def _other_pythons():
    found = []
    env = os.environ.get("TOKIOLOOP_CONFORMANCE_PYTHONS")
    if env:
        found += [x for x in env.split(os.pathsep) if x]
    else:
        root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
        for minor in ("3.12", "3.13"):
            cands = sorted(glob.glob(os.path.join(root, "versions", minor + ".*",
                                                  "bin", "python" + minor)))
            if cands:
                found.append(cands[-1])
    me = os.path.realpath(sys.executable)
    return [x for x in found if os.path.realpath(x) != me]


@pytest.mark.timeout(5 * GROUP_BUDGET + 480)
@pytest.mark.parametrize("python", _other_pythons() or [None])
def test_cpython_asyncio_other_python(python, tmp_path):
    if python is None:
        pytest.skip("no other interpreter (set TOKIOLOOP_CONFORMANCE_PYTHONS)")
    why = _probe(python)
    if why:
        pytest.skip("CPython conformance skipped: " + why)
    p, data = _run(python, GROUPS, tmp_path, 5 * GROUP_BUDGET)
    _check(p, data)


# -- the harness itself (independent of tokioloop being built) -------------

def _harness(tmp_path, factory, modules, *extra):
    report = tmp_path / "r.json"
    cmd = [sys.executable, RUNNER, "--factory", factory, "--expected", "none",
           "--json", str(report), "--log-dir", str(tmp_path / "logs")]
    for m in modules:
        cmd += ["-m", m]
    cmd += list(extra)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=300)
    with open(report) as f:
        return p, json.load(f)


@pytest.mark.timeout(300)
def test_harness_selector_loop_passes(tmp_path):
    """With CPython's own loop plugged in through the same hooks (policy patch
    + Tokioloop* mixin classes) everything passes and the loop under test is
    really used."""
    if _probe_suite():
        pytest.skip(_probe_suite())
    p, data = _harness(tmp_path, "asyncio:SelectorEventLoop",
                       ["test_locks", "test_sock_lowlevel", "test_buffered_proto"])
    assert p.returncode == 0, p.stdout
    mods = data["modules"]
    assert mods["test_locks"]["onloop"] > 0
    assert any(t.startswith("test_sock_lowlevel.TokioloopEventLoopTests.")
               for t in mods["test_sock_lowlevel"]["tests"])
    assert data["totals"]["passed"] > 80


@pytest.mark.timeout(300)
def test_harness_reports_hangs_crashes_and_module_timeouts(tmp_path):
    if _probe_suite():
        pytest.skip(_probe_suite())
    # a per-test hang (create_server never returns) and a hard crash
    p, data = _harness(tmp_path, "selftest_loops:hanging", ["test_buffered_proto"],
                       "--timeout", "3")
    assert p.returncode == 1
    (tid,) = data["unexpected"]
    assert tid.endswith("test_buffered_proto_create_connection")
    assert "hang" in data["modules"]["test_buffered_proto"]["tests"][tid]["detail"]

    p, data = _harness(tmp_path, "selftest_loops:crashing", ["test_sock_lowlevel"],
                       "--timeout", "10")
    assert p.returncode == 1
    tests = data["modules"]["test_sock_lowlevel"]["tests"]
    crashed = [t for t in data["unexpected"] if "SIGSEGV" in tests[t]["detail"]]
    assert crashed and len(crashed) == len(data["unexpected"])
    # the worker was restarted after each crash and the rest still ran
    assert any(v["outcome"] == "pass" for v in tests.values())

    # a hang longer than the module limit is reported naming the module
    p, data = _harness(tmp_path, "selftest_loops:hanging", ["test_server"],
                       "--timeout", "100", "--module-timeout", "4")
    assert p.returncode == 1
    assert "test_server.<module-timeout>" in data["unexpected"]


def _probe_suite():
    p = subprocess.run([sys.executable, "-c", "import test.test_asyncio.utils"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, cwd=os.path.dirname(RUNNER))
    return None if p.returncode == 0 else "no CPython test suite: " + p.stdout.strip()[-200:]
