"""``python -m tokioloop script.py [args]`` and ``python -m tokioloop -m module [args]``."""

import json
import os
import sys
import textwrap

import pytest

from conftest import run_python

pytestmark = pytest.mark.timeout(30)

_PROBE_BODY = """
import asyncio, json, os, sys
import tokioloop

report = {
    "name": __name__,
    "argv": sys.argv,
    "policy_is_tokioloop": isinstance(asyncio.get_event_loop_policy(), tokioloop.EventLoopPolicy),
    "file": os.path.abspath(__file__) if "__file__" in globals() else None,
    "main_module_file": os.path.abspath(getattr(sys.modules["__main__"], "__file__", "") or ""),
}

async def main():
    loop = asyncio.get_running_loop()
    report["running_loop_is_tokioloop"] = isinstance(loop, tokioloop.Loop)
    report["loop_type"] = type(loop).__module__ + "." + type(loop).__qualname__
    await asyncio.sleep(0.001)
    return "done"

if __name__ == "__main__":
    report["result"] = asyncio.run(main())
    print("REPORT " + json.dumps(report))
"""


def _report(p):
    for line in p.stdout.splitlines():
        if line.startswith("REPORT "):
            return json.loads(line[len("REPORT "):])
    raise AssertionError(f"no report; rc={p.returncode}\nstdout={p.stdout}\nstderr={p.stderr}")


def test_cli_script(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(_PROBE_BODY)
    p = run_python(["-m", "tokioloop", str(script), "a", "b"], cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    r = _report(p)
    assert r["name"] == "__main__"
    assert r["argv"] == [str(script), "a", "b"]
    assert r["policy_is_tokioloop"] is True
    assert r["running_loop_is_tokioloop"] is True
    assert r["result"] == "done"
    assert r["file"] == str(script)


def test_cli_script_relative_path_and_sibling_import(tmp_path):
    pkg = tmp_path / "proj"
    pkg.mkdir()
    (pkg / "helper_mod_for_cli.py").write_text("VALUE = 'sibling-ok'\n")
    (pkg / "app.py").write_text(
        textwrap.dedent(
            """
            import asyncio, sys, tokioloop
            import helper_mod_for_cli
            async def main():
                assert isinstance(asyncio.get_running_loop(), tokioloop.Loop)
                return helper_mod_for_cli.VALUE
            if __name__ == "__main__":
                print(asyncio.run(main()), sys.argv)
            """
        )
    )
    p = run_python(["-m", "tokioloop", "proj/app.py", "--flag", "x y"], cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "sibling-ok ['proj/app.py', '--flag', 'x y']"


def test_cli_module(tmp_path):
    pkg = tmp_path / "cli_probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "probe.py").write_text(_PROBE_BODY)
    p = run_python(["-m", "tokioloop", "-m", "cli_probe_pkg.probe", "x", "--y"], cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    r = _report(p)
    assert r["name"] == "__main__"
    # like `python -m`: argv[0] is the module's full path
    assert r["argv"][1:] == ["x", "--y"]
    assert os.path.abspath(r["argv"][0]) == str(pkg / "probe.py")
    assert r["policy_is_tokioloop"] is True
    assert r["running_loop_is_tokioloop"] is True
    assert r["result"] == "done"


def test_cli_package_main(tmp_path):
    pkg = tmp_path / "cli_probe_pkg2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(_PROBE_BODY)
    p = run_python(["-m", "tokioloop", "-m", "cli_probe_pkg2", "arg"], cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    r = _report(p)
    assert r["name"] == "__main__"
    assert r["argv"][1:] == ["arg"]
    assert r["running_loop_is_tokioloop"] is True


def test_cli_same_as_plain_python_except_loop(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(_PROBE_BODY)
    plain = _report(run_python([str(script), "1", "2"], cwd=str(tmp_path)))
    via = _report(run_python(["-m", "tokioloop", str(script), "1", "2"], cwd=str(tmp_path)))
    assert plain["running_loop_is_tokioloop"] is False
    assert via["running_loop_is_tokioloop"] is True
    for key in ("name", "argv", "file", "result"):
        assert plain[key] == via[key], key


def test_cli_script_exception_exit_code(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio
            async def main():
                raise RuntimeError("script failed on purpose")
            asyncio.run(main())
            """
        )
    )
    p = run_python(["-m", "tokioloop", str(script)])
    assert p.returncode == 1
    assert "RuntimeError: script failed on purpose" in p.stderr


def test_cli_sys_exit_code_propagates(tmp_path):
    script = tmp_path / "exit.py"
    script.write_text("import sys\nsys.exit(7)\n")
    p = run_python(["-m", "tokioloop", str(script)])
    assert p.returncode == 7


def test_cli_missing_script(tmp_path):
    p = run_python(["-m", "tokioloop", str(tmp_path / "does_not_exist.py")])
    assert p.returncode != 0
    assert "does_not_exist.py" in p.stderr


def test_cli_missing_module():
    p = run_python(["-m", "tokioloop", "-m", "no_such_module_xyz_123"])
    assert p.returncode != 0
    assert "no_such_module_xyz_123" in p.stderr


def test_cli_no_arguments():
    p = run_python(["-m", "tokioloop"])
    assert p.returncode != 0
    assert "usage" in (p.stderr + p.stdout).lower()


def test_cli_get_event_loop_in_script(tmp_path):
    # old-style scripts that use the policy's loop directly
    script = tmp_path / "old_style.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, tokioloop
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            async def main():
                return type(asyncio.get_running_loop()).__name__
            print(isinstance(loop, tokioloop.Loop), loop.run_until_complete(main()))
            loop.close()
            """
        )
    )
    p = run_python(["-m", "tokioloop", str(script)])
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0] == "True"


def test_cli_stdin_passthrough(tmp_path):
    script = tmp_path / "echo.py"
    script.write_text("import sys\nprint(sys.stdin.read().upper(), end='')\n")
    p = run_python(["-m", "tokioloop", str(script)], input="piped input\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "PIPED INPUT\n"
