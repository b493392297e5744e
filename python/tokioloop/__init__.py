"""tokioloop: a drop-in replacement for asyncio's event loop, in Rust on tokio.

Use it like uvloop::

    import tokioloop
    tokioloop.run(main())                                        # any Python >= 3.11
    asyncio.run(main(), loop_factory=tokioloop.new_event_loop)   # 3.12+
    asyncio.set_event_loop_policy(tokioloop.EventLoopPolicy())
    python -m tokioloop app.py
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from asyncio import events as _events

from ._loop import Loop
from ._tokioloop import Handle, TimerHandle, __version__

__all__ = ("Loop", "new_event_loop", "EventLoopPolicy", "run", "install", "__version__")


def new_event_loop() -> Loop:
    """Return a new tokioloop event loop."""
    return Loop()


if sys.version_info < (3, 14):
    # The stdlib's Unix policy, so get_child_watcher()/set_child_watcher() behave
    # (and warn on 3.12+) as asyncio's own default policy does.  Our loop reaps
    # its children natively and never consults the watcher, as uvloop does.
    from asyncio.unix_events import _UnixDefaultEventLoopPolicy as _BasePolicy
else:  # child watchers are gone in 3.14
    _BasePolicy = getattr(_events, "BaseDefaultEventLoopPolicy", None) or getattr(
        _events, "_BaseDefaultEventLoopPolicy"
    )


class EventLoopPolicy(_BasePolicy):
    """An asyncio event loop policy whose loops are tokioloop loops."""

    def _loop_factory(self) -> Loop:
        return new_event_loop()

    def __repr__(self) -> str:
        return f"<{self.__class__.__module__}.{self.__class__.__name__}>"


def install() -> None:
    """Make tokioloop the loop of every new asyncio event loop (sets the policy)."""
    if sys.version_info >= (3, 14):
        warnings.warn(
            "tokioloop.install() relies on asyncio's event loop policy system, "
            "which is deprecated since Python 3.14; use tokioloop.run() or "
            "asyncio.run(..., loop_factory=tokioloop.new_event_loop) instead",
            DeprecationWarning,
            stacklevel=2,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main, *, loop_factory=new_event_loop, debug=None, **run_kwargs):
    """Run a coroutine on a fresh tokioloop loop, like asyncio.run()."""
    with asyncio.Runner(loop_factory=loop_factory, debug=debug, **run_kwargs) as runner:
        return runner.run(main)
