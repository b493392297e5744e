"""pytest plugin: run a project's async tests on tokioloop with one switch.

Installed with tokioloop as a ``pytest11`` entry point, so pytest loads it on
its own. It does nothing until it is switched on:

* ``pytest --tokioloop`` (or ``tokioloop = true`` in the ini options) runs the
  async tests on tokioloop;
* ``pytest --tokioloop=both`` (or ``tokioloop = both``) runs each async test
  twice, on tokioloop and on the stdlib loop, with test ids ``[tokioloop]`` and
  ``[asyncio]``;
* ``--tokioloop=off`` (or ``tokioloop = false``, the default) leaves pytest alone.

What is switched:

* pytest-asyncio >= 1.4: the plugin implements the ``pytest_asyncio_loop_factories``
  hook (registered only when switched on, so a project's own implementation of the
  hook in a conftest.py takes precedence). A test may still pick factories with
  ``@pytest.mark.asyncio(loop_factories=["asyncio"])``.
* pytest-asyncio 0.23 to 1.3 (no hook yet): the ``event_loop_policy`` fixture is
  overridden with tokioloop's policy (parametrized for ``both``).
* anyio's pytest plugin: anyio's default ``anyio_backend`` fixture is replaced by one
  whose ``asyncio`` parameter is :data:`ANYIO_BACKEND`, i.e.
  ``("asyncio", {"loop_factory": tokioloop.new_event_loop})``. An ``anyio_backend``
  fixture defined in a conftest.py wins over it; write it with :data:`ANYIO_BACKEND`::

      import pytest
      from tokioloop.pytest_plugin import ANYIO_BACKEND

      @pytest.fixture
      def anyio_backend():
          return ANYIO_BACKEND

Neither pytest-asyncio nor anyio is needed for the plugin to load: without them
(and switched off) it registers nothing but its option.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import sys
import types
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import pytest

import tokioloop

__all__ = ("ANYIO_BACKEND", "LOOP_FACTORIES", "get_mode", "stdlib_loop_factory")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

#: The ``anyio_backend`` value that runs anyio's asyncio backend on tokioloop.
ANYIO_BACKEND: Final[tuple[str, dict[str, Any]]] = (
    "asyncio",
    {"loop_factory": tokioloop.new_event_loop},
)

_ON = "on"
_OFF = "off"
_BOTH = "both"
_TRUE_WORDS = frozenset({"on", "true", "yes", "1", "tokioloop", "only"})
_FALSE_WORDS = frozenset({"off", "false", "no", "0", ""})
_BOTH_WORDS = frozenset({"both"})

_MODE_KEY = pytest.StashKey[str]()
_SWITCHED_KEY = pytest.StashKey[list[str]]()

_OPTION_HELP = (
    "run async tests (pytest-asyncio, anyio) on tokioloop; "
    "--tokioloop=both runs each on tokioloop and on the stdlib loop; "
    "--tokioloop=off disables (default: the 'tokioloop' ini option)"
)


def stdlib_loop_factory() -> asyncio.AbstractEventLoop:
    """A new stdlib event loop of the platform's default class, whatever policy is set."""
    cls = getattr(asyncio, "EventLoop", None)  # 3.13+
    if cls is None:
        cls = asyncio.ProactorEventLoop if sys.platform == "win32" else asyncio.SelectorEventLoop  # type: ignore[attr-defined,unused-ignore]
    loop: asyncio.AbstractEventLoop = cls()
    return loop


#: Loop factories by test id, in the order ``--tokioloop=both`` runs them.
LOOP_FACTORIES: Final[Mapping[str, LoopFactory]] = {
    "tokioloop": tokioloop.new_event_loop,
    "asyncio": stdlib_loop_factory,
}


def _parse_mode(value: object, source: str) -> str:
    if isinstance(value, bool):
        return _ON if value else _OFF
    word = str(value).strip().lower()
    if word in _TRUE_WORDS:
        return _ON
    if word in _FALSE_WORDS:
        return _OFF
    if word in _BOTH_WORDS:
        return _BOTH
    raise pytest.UsageError(
        f"{source}: expected one of on/true, off/false or both, got {value!r}"
    )


_MODE_WORDS = _TRUE_WORDS | _FALSE_WORDS | _BOTH_WORDS
_STRICT_ATTR = "_tokioloop_strict"
_SWALLOWED_ATTR = "_tokioloop_swallowed"


class _ModeAction(argparse.Action):
    """``--tokioloop`` with an optional value (``--tokioloop``, ``--tokioloop=both``).

    argparse gives an optional value the next word, so ``pytest --tokioloop tests/``
    would read ``tests/`` as the mode. :func:`pytest_load_initial_conftests` rewrites
    such a command line to ``--tokioloop=on tests/`` before pytest's final parse;
    the early parses before it must not fail on the word, so they accept it here
    (and remember it, so that a word lost anyway is reported, not dropped).
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if values is None:
            setattr(namespace, self.dest, _ON)
            return
        word = str(values).strip().lower()
        if word in _MODE_WORDS:
            setattr(namespace, self.dest, word)
            return
        if getattr(namespace, _STRICT_ATTR, False):
            parser.error(
                f"argument --tokioloop: invalid mode {values!r} (expected on, off or both)"
            )
        setattr(namespace, self.dest, _ON)
        setattr(namespace, _SWALLOWED_ATTR, str(values))


def _rewrite_args(args: list[str]) -> None:
    """``--tokioloop WORD`` where WORD is no mode -> ``--tokioloop=on WORD`` (in place)."""
    i = 0
    while i < len(args):
        if args[i] == "--":
            return
        if (
            args[i] == "--tokioloop"
            and i + 1 < len(args)
            and not args[i + 1].startswith("-")
            and args[i + 1].strip().lower() not in _MODE_WORDS
        ):
            args[i] = "--tokioloop=on"
        i += 1


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    _rewrite_args(args)
    setattr(early_config.option, _STRICT_ATTR, True)
    namespace = getattr(early_config, "known_args_namespace", None)
    if namespace is not None and getattr(namespace, _SWALLOWED_ATTR, None) is not None:
        # The early parse read a path as the mode: parse again, so that the initial
        # conftests are looked up under that path too.
        early_config.known_args_namespace = parser.parse_known_args(
            args, namespace=copy.copy(early_config.option)
        )


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tokioloop", "tokioloop event loop")
    group.addoption(
        "--tokioloop",
        action=_ModeAction,
        nargs="?",
        const=_ON,
        default=None,
        dest="tokioloop",
        metavar="MODE",
        help=_OPTION_HELP,
    )
    parser.addini(
        "tokioloop",
        help="run async tests on tokioloop: true, false (default) or both",
        default="false",
    )


def get_mode(config: pytest.Config) -> str:
    """The mode in force for this run: ``"on"``, ``"off"`` or ``"both"``."""
    mode = config.stash.get(_MODE_KEY, None)
    if mode is not None:
        return mode
    value = config.getoption("tokioloop", default=None)
    if value is not None:
        return _parse_mode(value, "--tokioloop")
    return _parse_mode(config.getini("tokioloop"), "ini option 'tokioloop'")


def _factories_for(mode: str) -> dict[str, LoopFactory]:
    if mode == _BOTH:
        return dict(LOOP_FACTORIES)
    return {"tokioloop": LOOP_FACTORIES["tokioloop"]}


def _plugin_loaded(config: pytest.Config, module_prefix: str) -> bool:
    for plugin in config.pluginmanager.get_plugins():
        name = getattr(plugin, "__name__", "")
        if isinstance(name, str) and (name == module_prefix or name.startswith(module_prefix + ".")):
            return True
    return False


class _AsyncioLoopFactoriesPlugin:
    """pytest-asyncio >= 1.4: provide the loop factories through its hook."""

    def __init__(self, mode: str) -> None:
        self._factories = _factories_for(mode)

    # trylast: a project's own conftest implementation of this firstresult hook wins.
    @pytest.hookimpl(trylast=True, optionalhook=True)
    def pytest_asyncio_loop_factories(
        self, config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, LoopFactory]:
        return dict(self._factories)


def _make_policy(name: str) -> asyncio.AbstractEventLoopPolicy:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if name == "tokioloop":
            return tokioloop.EventLoopPolicy()
        return asyncio.DefaultEventLoopPolicy()


def _fixture_holder(name: str, **fixtures: object) -> types.ModuleType:
    """A plugin object holding fixtures (a module, so they are plain functions)."""
    holder = types.ModuleType(f"{__name__}.{name}")
    for attr, value in fixtures.items():
        setattr(holder, attr, value)
    return holder


def _legacy_asyncio_plugin(mode: str) -> object:
    """pytest-asyncio 0.23 to 1.3: override its ``event_loop_policy`` fixture."""
    names = list(_factories_for(mode))
    if len(names) == 1:

        @pytest.fixture(scope="session")
        def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
            return _make_policy(names[0])

    else:
        # pytest-asyncio's fixture is autouse: every test of the session runs once
        # per policy, sync tests included (as with pytest-asyncio's own recipe).
        @pytest.fixture(scope="session", params=names, ids=names)
        def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
            return _make_policy(getattr(request, "param"))

    return _fixture_holder("legacy_asyncio", event_loop_policy=event_loop_policy)


def _anyio_params(mode: str) -> tuple[list[object], list[str]]:
    try:
        from anyio import get_available_backends

        backends: Sequence[str] = tuple(get_available_backends())
    except Exception:  # pragma: no cover - anyio without the function
        backends = ("asyncio",)
    params: list[object] = []
    ids: list[str] = []
    for backend in backends:
        if backend == "asyncio":
            params.append(ANYIO_BACKEND)
            ids.append("tokioloop")
            if mode == _BOTH:
                params.append("asyncio")
                ids.append("asyncio")
        else:
            params.append(backend)
            ids.append(backend)
    return params, ids


def _anyio_plugin(mode: str) -> object:
    """anyio's plugin: an ``anyio_backend`` fixture registered after anyio's, so it wins."""
    params, ids = _anyio_params(mode)

    # Module scope, like anyio's own fixture.
    @pytest.fixture(scope="module", params=params, ids=ids)
    def anyio_backend(request: pytest.FixtureRequest) -> object:
        return getattr(request, "param")

    return _fixture_holder("anyio", anyio_backend=anyio_backend)


def pytest_configure(config: pytest.Config) -> None:
    swallowed = getattr(config.option, _SWALLOWED_ATTR, None)
    if swallowed is not None:
        raise pytest.UsageError(
            f"--tokioloop read {swallowed!r} as its mode; write --tokioloop=on {swallowed}"
        )
    mode = get_mode(config)
    config.stash[_MODE_KEY] = mode
    if mode == _OFF:
        return
    pm = config.pluginmanager
    switched = []
    caller = getattr(config.hook, "pytest_asyncio_loop_factories", None)
    if caller is not None and getattr(caller, "spec", None) is not None:
        pm.register(_AsyncioLoopFactoriesPlugin(mode), "tokioloop-asyncio-loop-factories")
        switched.append("pytest-asyncio")
    elif _plugin_loaded(config, "pytest_asyncio"):
        pm.register(_legacy_asyncio_plugin(mode), "tokioloop-asyncio-policy")
        switched.append("pytest-asyncio (event_loop_policy)")
    if _plugin_loaded(config, "anyio"):
        pm.register(_anyio_plugin(mode), "tokioloop-anyio-backend")
        switched.append("anyio")
    config.stash[_SWITCHED_KEY] = switched
    if not switched:
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(
                "--tokioloop has no effect: neither pytest-asyncio nor anyio's pytest "
                "plugin is active"
            ),
            stacklevel=2,
        )


def pytest_report_header(config: pytest.Config) -> Iterator[str] | list[str]:
    mode = config.stash.get(_MODE_KEY, _OFF)
    if mode == _OFF:
        return []
    switched = config.stash.get(_SWITCHED_KEY, [])
    what = ", ".join(switched) if switched else "nothing"
    loops = "tokioloop and asyncio" if mode == _BOTH else "tokioloop"
    return [f"tokioloop {tokioloop.__version__}: async tests run on {loops} (via {what})"]
