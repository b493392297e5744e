"""Type stubs for tokioloop's public API (checked against the module by mypy.stubtest
in tests/test_typing.py)."""

import asyncio
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from ._loop import Loop as Loop
from ._tokioloop import Handle as Handle
from ._tokioloop import TimerHandle as TimerHandle
from ._tokioloop import __version__ as __version__

__all__ = ("Loop", "new_event_loop", "EventLoopPolicy", "run", "install", "__version__")

_T = TypeVar("_T")

def new_event_loop() -> Loop:
    """Return a new tokioloop event loop."""

if sys.version_info >= (3, 14):
    _BasePolicy = asyncio.events._BaseDefaultEventLoopPolicy
else:
    # the stdlib's Unix default policy (get_child_watcher/set_child_watcher)
    from asyncio.unix_events import _UnixDefaultEventLoopPolicy as _BasePolicy

class EventLoopPolicy(_BasePolicy):
    """An asyncio event loop policy whose loops are tokioloop loops."""

    def _loop_factory(self) -> Loop: ...
    if sys.version_info < (3, 14) and sys.platform != "win32":
        # Inherited from asyncio.AbstractEventLoopPolicy, where they raise
        # NotImplementedError (as uvloop's policy does); declared so that the class is
        # not abstract for mypy.
        def get_child_watcher(self) -> asyncio.AbstractChildWatcher: ...
        def set_child_watcher(self, watcher: asyncio.AbstractChildWatcher | None) -> None: ...

def install() -> None:
    """Make tokioloop the loop of every new asyncio event loop (sets the policy)."""

if sys.version_info >= (3, 14):
    def run(
        main: Awaitable[_T],
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = ...,
        debug: bool | None = None,
        **run_kwargs: Any,
    ) -> _T:
        """Run a coroutine on a fresh tokioloop loop, like asyncio.run()."""

else:
    def run(
        main: Coroutine[Any, Any, _T],
        *,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = ...,
        debug: bool | None = None,
        **run_kwargs: Any,
    ) -> _T:
        """Run a coroutine on a fresh tokioloop loop, like asyncio.run()."""
