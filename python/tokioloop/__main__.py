"""`python -m tokioloop script.py [args...]` or `python -m tokioloop -m module [args...]`:
run a program as __main__ with tokioloop as asyncio's event loop."""

from __future__ import annotations

import os
import runpy
import sys
import warnings

USAGE = "usage: python -m tokioloop script.py [args...] | python -m tokioloop -m module [args...]"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0

    import asyncio

    import tokioloop

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(tokioloop.EventLoopPolicy())

    if argv[0] == "-m":
        if len(argv) < 2:
            print("python -m tokioloop -m: a module name is required\n" + USAGE, file=sys.stderr)
            return 2
        module = argv[1]
        sys.argv = [module, *argv[2:]]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script = argv[0]
        sys.argv = [script, *argv[1:]]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
