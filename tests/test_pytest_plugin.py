"""tokioloop's pytest plugin (python/tokioloop/pytest_plugin.py), exercised on a small
sample suite run by pytest in a subprocess (pytester), with pytest-asyncio and anyio's
plugin, and with neither.

Every sample test records the class of the loop it ran on in a JSON-lines file, so the
checks below see which loop each test id really ran on, on top of the samples' own
assertions (a sample that expects tokioloop asserts it while it runs).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import textwrap

import pytest

pytest_plugins = ["pytester"]

pytest_asyncio = pytest.importorskip("pytest_asyncio", reason="pytest-asyncio is in the test extra")
anyio = pytest.importorskip("anyio", reason="anyio is in the test extra")


def _entry_point_installed() -> bool:
    for ep in importlib.metadata.entry_points(group="pytest11"):
        if ep.name == "tokioloop" and ep.value == "tokioloop.pytest_plugin":
            return True
    return False


ENTRY_POINT = _entry_point_installed()
# An editable install made before the entry point was added lacks it: load the
# plugin by name then (loading it both ways would register it twice).
PLUGIN_ARGS = [] if ENTRY_POINT else ["-p", "tokioloop.pytest_plugin"]


def test_entry_point_is_installed():
    if not ENTRY_POINT:
        msg = (
            "tokioloop's pytest11 entry point is not installed: reinstall tokioloop "
            "(pip install -e .) so that pytest loads the plugin on its own"
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


RECORDER = '''
import asyncio, json, os

def record(request, where="test"):
    loop = asyncio.get_running_loop()
    with open(os.environ["LOOP_RECORD"], "a") as f:
        f.write(json.dumps({"id": request.node.nodeid, "where": where,
                            "loop": type(loop).__module__ + "." + type(loop).__qualname__}) + "\\n")
    return loop

def expected_tokioloop(request):
    """Whether this test is meant to run on tokioloop (from LOOP_EXPECT and its id)."""
    expect = os.environ.get("LOOP_EXPECT", "")
    if expect == "by-id":
        return "[asyncio" not in request.node.name
    return expect == "tokioloop"
'''

ASYNCIO_SAMPLES = '''
import asyncio
import pytest
import pytest_asyncio
import tokioloop
from recorder import record, expected_tokioloop

@pytest_asyncio.fixture
async def server_port():
    # An async fixture on the test's loop: a real TCP echo server.
    async def echo(reader, writer):
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()

@pytest.mark.asyncio
async def test_running_loop(request):
    loop = record(request)
    assert isinstance(loop, tokioloop.Loop) is expected_tokioloop(request), type(loop)

@pytest.mark.asyncio
async def test_fixture_on_same_loop(request, server_port):
    record(request)
    reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
    writer.write(b"ping\\n")
    assert await reader.readline() == b"ping\\n"
    writer.close()
    await writer.wait_closed()

@pytest.mark.asyncio
async def test_timers_and_tasks(request):
    record(request)
    results = await asyncio.gather(*(asyncio.sleep(0.01 * i, result=i) for i in range(5)))
    assert results == [0, 1, 2, 3, 4]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.sleep(10), 0.01)

@pytest.mark.asyncio
async def test_fails(request):
    record(request)
    await asyncio.sleep(0)
    assert 1 + 1 == 3, "this sample test fails on purpose"

@pytest.mark.asyncio
async def test_raises_in_task(request):
    record(request)
    async def boom():
        raise ValueError("boom from a task")
    await asyncio.create_task(boom())

def test_sync():
    assert True
'''

ANYIO_SAMPLES = '''
import asyncio
import anyio
import pytest
import tokioloop
from recorder import record, expected_tokioloop

pytestmark = pytest.mark.anyio

@pytest.fixture
async def value():
    await anyio.sleep(0)
    return 42

async def test_anyio_running_loop(request, value):
    loop = record(request)
    assert value == 42
    assert isinstance(loop, tokioloop.Loop) is expected_tokioloop(request), type(loop)

async def test_anyio_task_group(request):
    record(request)
    out = []
    async def worker(i):
        await anyio.sleep(0.01 * i)
        out.append(i)
    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(worker, i)
    assert out == [0, 1, 2]

async def test_anyio_fails(request):
    record(request)
    await anyio.sleep(0)
    raise AssertionError("this anyio sample test fails on purpose")
'''

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
{extra}
"""


@pytest.fixture
def sample(pytester, monkeypatch):
    """A sample project; returns run(*args, ini_extra="", expect=...) -> (result, records)."""
    pytester.makepyfile(recorder=RECORDER)
    pytester.makepyfile(test_asyncio_samples=ASYNCIO_SAMPLES, test_anyio_samples=ANYIO_SAMPLES)
    record_path = pytester.path / "loops.jsonl"

    def run(*args, ini_extra="", expect="tokioloop", conftest=None):
        if record_path.exists():
            record_path.unlink()
        pytester.makefile(".ini", pytest=INI.format(extra=ini_extra))
        if conftest is not None:
            pytester.makeconftest(conftest)
        monkeypatch.setenv("LOOP_RECORD", str(record_path))
        monkeypatch.setenv("LOOP_EXPECT", expect)
        monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
        result = pytester.runpytest_subprocess(
            *PLUGIN_ARGS, "-p", "no:cacheprovider", "-v", *args, timeout=120
        )
        records = []
        if record_path.exists():
            records = [json.loads(line) for line in record_path.read_text().splitlines()]
        return result, records

    return run


def _loops_by_test(records):
    out = {}
    for rec in records:
        out.setdefault(rec["id"].split("::", 1)[1], set()).add(rec["loop"])
    return out


TOKIO = "tokioloop._loop.Loop"


def _only_tokioloop(records):
    loops = {rec["loop"] for rec in records}
    assert loops == {TOKIO}, loops


def test_off_by_default_runs_stdlib_loop(sample):
    result, records = sample(expect="asyncio")
    # 5 pytest-asyncio samples (2 fail), 1 sync, 3 anyio samples (1 fails).
    result.assert_outcomes(passed=6, failed=3)
    assert records and all(TOKIO != rec["loop"] for rec in records)
    result.stdout.no_fnmatch_line("*tokioloop*async tests run on*")


def test_switch_on_runs_everything_on_tokioloop(sample):
    result, records = sample("--tokioloop")
    result.assert_outcomes(passed=6, failed=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["tokioloop *: async tests run on tokioloop (via pytest-asyncio, anyio)"])
    result.stdout.fnmatch_lines_random(
        [
            "*test_fails FAILED*",
            "*AssertionError: this sample test fails on purpose*",
            "*test_raises_in_task FAILED*",
            "*ValueError: boom from a task*",
            "*test_anyio_fails?tokioloop? FAILED*",
        ]
    )
    _only_tokioloop(records)
    by_test = _loops_by_test(records)
    assert set(by_test) >= {
        "test_running_loop",
        "test_fixture_on_same_loop",
        "test_timers_and_tasks",
        "test_fails",
        "test_raises_in_task",
        "test_anyio_running_loop[tokioloop]",
        "test_anyio_task_group[tokioloop]",
        "test_anyio_fails[tokioloop]",
    }, by_test


def test_ini_option_true(sample):
    result, records = sample(ini_extra="tokioloop = true")
    result.assert_outcomes(passed=6, failed=3)
    _only_tokioloop(records)


def test_switch_before_a_path_keeps_the_path(sample):
    # argparse would read the path as --tokioloop's value; the plugin keeps it a path.
    result, records = sample("--tokioloop", "test_asyncio_samples.py::test_running_loop")
    result.assert_outcomes(passed=1)
    assert [rec["id"] for rec in records] == ["test_asyncio_samples.py::test_running_loop"]
    _only_tokioloop(records)


def test_invalid_mode_is_a_usage_error(sample):
    result, records = sample("--tokioloop=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--tokioloop: invalid mode 'sometimes'*"])


def test_both_runs_each_async_test_on_both_loops(sample):
    result, records = sample("--tokioloop=both", expect="by-id")
    # Each async test twice; the sync test once.
    result.assert_outcomes(passed=11, failed=6)
    result.stdout.fnmatch_lines_random(
        [
            "*test_running_loop?tokioloop? PASSED*",
            "*test_running_loop?asyncio? PASSED*",
            "*test_fails?tokioloop? FAILED*",
            "*test_fails?asyncio? FAILED*",
            "*test_anyio_running_loop?tokioloop? PASSED*",
            "*test_anyio_running_loop?asyncio? PASSED*",
        ]
    )
    by_test = _loops_by_test(records)
    for name, loops in by_test.items():
        if "[tokioloop]" in name:
            assert loops == {TOKIO}, (name, loops)
        else:
            assert "[asyncio]" in name, name
            assert TOKIO not in loops, (name, loops)
    assert len(by_test) == 16, sorted(by_test)


def test_both_with_marker_selection(sample, pytester):
    pytester.makepyfile(
        test_selected="""
        import asyncio, pytest, tokioloop

        @pytest.mark.asyncio(loop_factories=["asyncio"])
        async def test_stdlib_only():
            assert not isinstance(asyncio.get_running_loop(), tokioloop.Loop)
        """
    )
    result, _ = sample("--tokioloop=both", "test_selected.py")
    result.assert_outcomes(passed=1)


def test_project_hook_takes_precedence(sample):
    conftest = """
    import asyncio

    def pytest_asyncio_loop_factories(config, item):
        return {"project": asyncio.SelectorEventLoop}
    """
    result, records = sample("--tokioloop", "test_asyncio_samples.py", expect="asyncio", conftest=conftest)
    result.assert_outcomes(passed=4, failed=2)
    assert records and all(TOKIO != rec["loop"] for rec in records)


def test_documented_anyio_backend_without_the_switch(sample):
    # The recipe the docs give for anyio users: an anyio_backend fixture in conftest.py.
    conftest = """
    import pytest
    from tokioloop.pytest_plugin import ANYIO_BACKEND

    @pytest.fixture
    def anyio_backend():
        return ANYIO_BACKEND
    """
    result, records = sample("test_anyio_samples.py", conftest=conftest)
    result.assert_outcomes(passed=2, failed=1)
    _only_tokioloop(records)


def test_literal_anyio_backend_value(sample):
    # The same value written out, as README shows it.
    conftest = """
    import pytest
    import tokioloop

    @pytest.fixture
    def anyio_backend():
        return "asyncio", {"loop_factory": tokioloop.new_event_loop}
    """
    result, records = sample("test_anyio_samples.py", conftest=conftest)
    result.assert_outcomes(passed=2, failed=1)
    _only_tokioloop(records)


def test_without_pytest_asyncio_and_anyio(pytester, monkeypatch):
    """A project with neither plugin: tokioloop's plugin loads and stays out of the way."""
    pytester.makepyfile(
        test_plain="""
        import asyncio, tokioloop

        def test_plain_sync():
            assert tokioloop.run(asyncio.sleep(0, result=5)) == 5

        def test_plain_fails():
            assert False, "fails on purpose"
        """
    )
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    base = ["-p", "tokioloop.pytest_plugin", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*base, timeout=120)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.no_fnmatch_line("*PytestConfigWarning*")

    result = pytester.runpytest_subprocess(*base, "--tokioloop", timeout=120)
    result.assert_outcomes(passed=1, failed=1, warnings=1)
    result.stdout.fnmatch_lines(["*--tokioloop has no effect*"])


def test_help_lists_the_option(pytester):
    result = pytester.runpytest_subprocess(*PLUGIN_ARGS, "--help", timeout=120)
    result.stdout.fnmatch_lines(["*--tokioloop*MODE*"])
    result.stdout.fnmatch_lines(["*tokioloop (string)*"])


def test_plugin_module_api():
    import asyncio

    import tokioloop
    from tokioloop import pytest_plugin

    assert pytest_plugin.ANYIO_BACKEND == ("asyncio", {"loop_factory": tokioloop.new_event_loop})
    assert list(pytest_plugin.LOOP_FACTORIES) == ["tokioloop", "asyncio"]
    loop = pytest_plugin.stdlib_loop_factory()
    try:
        assert isinstance(loop, asyncio.BaseEventLoop)
        assert not isinstance(loop, tokioloop.Loop)
    finally:
        loop.close()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--tokioloop", "tests/"], ["--tokioloop=on", "tests/"]),
        (["--tokioloop", "both", "x.py"], ["--tokioloop", "both", "x.py"]),
        (["--tokioloop", "-x"], ["--tokioloop", "-x"]),
        (["--tokioloop"], ["--tokioloop"]),
        (["--", "--tokioloop", "a"], ["--", "--tokioloop", "a"]),
        (["--tokioloop=off", "a"], ["--tokioloop=off", "a"]),
    ],
)
def test_rewrite_args(argv, expected):
    from tokioloop.pytest_plugin import _rewrite_args

    _rewrite_args(argv)
    assert argv == expected
