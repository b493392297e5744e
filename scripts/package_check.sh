#!/usr/bin/env bash
# Packaging check (issue 5): `maturin build --release` makes one wheel per
# interpreter found here (CPython 3.11 as python3, pyenv's 3.12.1 and 3.13.0),
# `maturin sdist` makes the source distribution, pip builds a wheel from that
# sdist (as a user without a wheel for their platform would), and every wheel is
# installed into its own clean venv and smoke-tested (scripts/smoke_wheel.py).
#   usage: bash scripts/package_check.sh [OUT_DIR]     (default: dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
rm -rf "$out" && mkdir -p "$out"

tools=$(mktemp -d "${TMPDIR:-/tmp}/tokioloop-pkg.XXXXXX")
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install -q maturin

interps=(-i "$(python3 -c 'import sys; print(sys.executable)')")
for v in 3.12.1 3.13.0; do
  if exe=$(PYENV_VERSION=$v python3 -c 'import sys; print(sys.executable)' 2>/dev/null); then
    interps+=(-i "$exe")
  fi
done

t0=$SECONDS
"$tools/venv/bin/maturin" build --release --quiet -o "$out" "${interps[@]}"
echo "wheels built in $((SECONDS - t0)) s:"; ls -1 "$out"/*.whl

t0=$SECONDS
"$tools/venv/bin/maturin" sdist -o "$out"
sdist=$(ls "$out"/tokioloop-*.tar.gz)
# Build from the sdist alone, in a directory without the source tree.
mkdir -p "$tools/from-sdist"
"$tools/venv/bin/pip" wheel -q --no-deps -w "$tools/from-sdist" "$sdist"
echo "sdist $(basename "$sdist") built into $(ls "$tools/from-sdist") in $((SECONDS - t0)) s"

python3 scripts/smoke_wheel.py "$out"/*.whl "$tools"/from-sdist/*.whl
