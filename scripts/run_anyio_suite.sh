#!/usr/bin/env bash
# Run anyio's own test suite, from its PyPI source distribution, with anyio's asyncio
# backend on tokioloop. Not part of CI (a few minutes); docs/ecosystem.md records
# the results.
#
#   bash scripts/run_anyio_suite.sh            # tokioloop params only (-k tokioloop)
#   bash scripts/run_anyio_suite.sh --all      # also the stdlib loop params, as oracle
#   bash scripts/run_anyio_suite.sh -- -x ...  # extra pytest arguments after --
#
# Environment:
#   TOKIOLOOP_PYTHON  an interpreter that imports the tokioloop to test
#                     (default: .venv/bin/python if present, else python3)
#   ANYIO_VERSION     the anyio release to test (default: the newest on PyPI)
#   WORK_DIR          where to unpack and build the venv (default: a new temp dir)
#
# How tokioloop is put in: tests/conftest.py of the unpacked sdist gets two more
# anyio_backend params, ("asyncio", {"debug": True, "loop_factory": tokioloop.new_event_loop})
# with id "asyncio+tokioloop" (and "asyncio+tokioloop+eager" on 3.12+, with
# asyncio.eager_task_factory), beside anyio's own "asyncio" (stdlib loop) param.
# anyio's blockbuster fixture exempts os.read in asyncio's base_events.subprocess_exec
# (subprocess.Popen's exec-error pipe); the same exemption is added for tokioloop's
# subprocess_exec/subprocess_shell. Nothing else of the suite is changed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

mode=tokioloop
extra=()
while (($#)); do
  case "$1" in
    --all) mode=all; shift ;;
    --) shift; extra=("$@"); break ;;
    *) extra+=("$1"); shift ;;
  esac
done

py=${TOKIOLOOP_PYTHON:-}
if [[ -z "$py" ]]; then
  if [[ -x .venv/bin/python ]]; then py=$repo/.venv/bin/python; else py=python3; fi
fi
work=${WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/anyio-suite.XXXXXX")}
mkdir -p "$work"
echo "== work dir $work; tokioloop from $py"

# The tokioloop under test, copied out of its environment so that the suite's venv
# sees it and nothing else of that environment.
pkg=$("$py" -c 'import os, tokioloop; print(os.path.dirname(tokioloop.__file__))')
rm -rf "$work/tokioloop-pkg" && mkdir -p "$work/tokioloop-pkg"
cp -r "$pkg" "$work/tokioloop-pkg/tokioloop"
find "$work/tokioloop-pkg" -name __pycache__ -prune -exec rm -rf {} +

echo "== anyio sdist"
spec=anyio${ANYIO_VERSION:+==$ANYIO_VERSION}
rm -rf "$work/sdist" && mkdir -p "$work/sdist"
"$py" -m pip download -q --no-binary :all: --no-deps -d "$work/sdist" "$spec"
tar -xzf "$work"/sdist/anyio-*.tar.gz -C "$work/sdist"
src=$(ls -d "$work"/sdist/anyio-*/ | head -n 1)
echo "   $(basename "$src")"

echo "== venv with anyio's test dependencies"
"$py" -m venv --clear "$work/venv"
vpy=$work/venv/bin/python
deps=$("$vpy" - "$src/pyproject.toml" <<'EOF'
import sys, tomllib
data = tomllib.load(open(sys.argv[1], "rb"))
for req in data.get("dependency-groups", {}).get("test", []):
    if isinstance(req, str) and not req.strip().startswith(("uvloop", "winloop")):
        print(" ".join(req.split()))
EOF
)
mapfile -t dep_list <<<"$deps"
"$vpy" -m pip install -q --disable-pip-version-check "${dep_list[@]}" "$src"
site=$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$work/tokioloop-pkg" >"$site/tokioloop-under-test.pth"
"$vpy" -c 'import tokioloop, anyio, importlib.metadata as m; print("   tokioloop", tokioloop.__version__, "from", tokioloop.__file__); print("   anyio", m.version("anyio"))'

echo "== inject the tokioloop params into tests/conftest.py"
"$vpy" - "$src/tests/conftest.py" <<'EOF'
import sys
path = sys.argv[1]
s = open(path).read()
if "tokioloop (injected)" not in s:
    anchor = "backend_params = asyncio_params.copy()\n"
    inject = '''# --- tokioloop (injected): the asyncio backend on tokioloop ---
import tokioloop as _tokioloop

asyncio_params.append(
    pytest.param(
        ("asyncio", {"debug": True, "loop_factory": _tokioloop.new_event_loop}),
        id="asyncio+tokioloop",
    )
)
if sys.version_info >= (3, 12):

    def _tokioloop_eager_factory() -> asyncio.AbstractEventLoop:
        loop = _tokioloop.new_event_loop()
        loop.set_task_factory(asyncio.eager_task_factory)
        return loop

    asyncio_params.append(
        pytest.param(
            ("asyncio", {"debug": True, "loop_factory": _tokioloop_eager_factory}),
            id="asyncio+tokioloop+eager",
        )
    )
# --- end of tokioloop injection ---
'''
    bb_anchor = '''        bb.functions["socket.socket.accept"].can_block_in(
            "anyio/_core/_asyncio_selector_thread.py", {"get_selector"}
        )
'''
    bb_inject = bb_anchor + '''        # tokioloop (injected): Popen's exec-error pipe read, exempted as blockbuster
        # exempts asyncio's own base_events.subprocess_exec/subprocess_shell.
        bb.functions["os.read"].can_block_in(
            "tokioloop/_subprocess.py", {"subprocess_exec", "subprocess_shell"}
        )
'''
    if anchor not in s:
        sys.exit("anyio's tests/conftest.py changed: no 'backend_params = asyncio_params.copy()' line")
    s = s.replace(anchor, inject + anchor)
    if bb_anchor in s:
        s = s.replace(bb_anchor, bb_inject)
    else:
        print("   note: blockbuster fixture not found; no os.read exemption added")
    open(path, "w").write(s)
EOF

echo "== run"
select=()
if [[ $mode == tokioloop ]]; then select=(-k tokioloop); fi
t0=$SECONDS
set +e
(cd "$src" && "$vpy" -m pytest -q -p no:cacheprovider --junitxml="$work/results.xml" "${select[@]}" "${extra[@]}" >"$work/pytest.log" 2>&1)
rc=$?
set -e
tail -n 1 "$work/pytest.log"
echo "   ($((SECONDS - t0)) s; full log $work/pytest.log)"

echo "== summary by loop"
"$vpy" - "$work/results.xml" <<'EOF'
import collections, re, sys
import xml.etree.ElementTree as ET

def loop_of(name):
    m = re.search(r"\[(.*)\]$", name)
    params = m.group(1) if m else ""
    for kind in ("asyncio+tokioloop+eager", "asyncio+tokioloop", "asyncio+eager", "asyncio+uvloop", "trio"):
        if kind in params.split("-"):
            return kind
    return "asyncio" if "asyncio" in params.split("-") else "(no backend)"

counts = collections.Counter()
failures = collections.defaultdict(dict)
for tc in ET.parse(sys.argv[1]).iter("testcase"):
    name = f"{tc.get('classname')}::{tc.get('name')}"
    loop = loop_of(tc.get("name"))
    status = "passed"
    for child in tc:
        if child.tag in ("failure", "error"):
            status = "failed" if child.tag == "failure" else "error"
            msg = (child.get("message") or "").splitlines()[0:1]
            failures[loop][re.sub(r"asyncio\+tokioloop(\+eager)?|asyncio(\+eager)?", "LOOP", name)] = msg[0][:160] if msg else ""
        elif child.tag == "skipped":
            status = "xfailed" if "xfail" in (child.get("type") or "") else "skipped"
    counts[loop, status] += 1
for loop in sorted({l for l, _ in counts}):
    parts = ", ".join(f"{counts[loop, s]} {s}" for s in ("passed", "failed", "error", "skipped", "xfailed") if counts[loop, s])
    print(f"   {loop:26} {parts}")
stdlib = failures.get("asyncio", {})
for loop in ("asyncio+tokioloop", "asyncio+tokioloop+eager"):
    fails = failures.get(loop, {})
    if not fails:
        continue
    if stdlib:
        both = {k: v for k, v in fails.items() if k in stdlib}
        only = {k: v for k, v in fails.items() if k not in stdlib}
        print(f"\n   {loop}: {len(fails)} failed or errored, {len(both)} of them on the stdlib loop too;"
              f" on {loop} only:")
        for k, v in sorted(only.items()):
            print(f"     {k}: {v}")
    else:
        print(f"\n   {loop}: {len(fails)} failed or errored (--all compares with the stdlib loop), by message:")
        by_msg = collections.Counter(re.sub(r"\d+", "N", v)[:100] for v in fails.values())
        for msg, n in by_msg.most_common():
            print(f"     {n:4}  {msg}")
EOF
exit $rc
