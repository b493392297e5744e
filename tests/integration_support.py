"""Helpers shared by tests/test_integration_*.py (not a test module).

Each integration test drives a real library against a real server on 127.0.0.1.
Servers that the test suite cannot start itself (PostgreSQL, Redis) are started by
``.ci/run`` through ``scripts/test_services.sh``, which exports their addresses:

* ``TOKIOLOOP_TEST_PG_DSN``         e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``
* ``TOKIOLOOP_TEST_REDIS_URL``      e.g. ``redis://127.0.0.1:6379/0``
* ``TOKIOLOOP_TEST_REDIS_UNIX_URL`` e.g. ``unix:///tmp/x/redis.sock?db=0`` (optional)

Outside CI a missing server or library skips the test with a message that says how
to provide it; in CI (``CI`` set to a true value) it fails the test instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import tokioloop

HOST = "127.0.0.1"
TOKIOLOOP_LOOP = "tokioloop._loop.Loop"

SERVICES_HINT = 'start them with: eval "$(bash scripts/test_services.sh start)"'


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(message: str):
    """Skip outside CI; fail in CI, where every integration test must run."""
    if in_ci():
        pytest.fail(f"{message} (CI is set: integration tests must not be skipped)", pytrace=False)
    pytest.skip(message)


def require_module(name: str):
    try:
        return __import__(name)
    except ImportError as exc:
        unavailable(f"{name} is not installed ({exc}); pip install '.[test]'")


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return f"{type(loop).__module__}.{type(loop).__qualname__}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tcp_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def run_on_tokioloop(coro, timeout: float = 60):
    """Run ``coro`` on a fresh tokioloop loop, with a deadline so a hang fails."""

    async def guarded():
        loop = asyncio.get_running_loop()
        assert loop_name(loop) == TOKIOLOOP_LOOP, loop
        return await asyncio.wait_for(coro, timeout)

    return tokioloop.run(guarded())


LOOP_FACTORIES = {
    "tokioloop": tokioloop.new_event_loop,
    # The stdlib loop runs the same scenario as a reference: a failure on both is the
    # test's (or the library's), a failure on tokioloop alone is tokioloop's.
    "asyncio": asyncio.SelectorEventLoop,
}


@pytest.fixture(params=list(LOOP_FACTORIES))
def run(request):
    """``run(coro, timeout=60)`` on a fresh loop: tokioloop, then the stdlib loop as oracle."""
    factory = LOOP_FACTORIES[request.param]

    def runner(coro, timeout: float = 60):
        async def guarded():
            return await asyncio.wait_for(coro, timeout)

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(guarded())

    runner.kind = request.param  # type: ignore[attr-defined]
    return runner


class ServerProcess:
    """A server started in a child process, stopped with a signal at the end."""

    def __init__(self, argv, *, port: int, cwd=None, env=None, log_path=None):
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited early with {self.proc.returncode}:\n{self.output()}"
                )
            if tcp_reachable(HOST, self.port, timeout=0.5):
                return
            time.sleep(0.05)
        raise AssertionError(f"server not listening on {HOST}:{self.port} after {timeout}s:\n{self.output()}")

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"server ignored {sig!r} for {timeout}s:\n{self.output()}")
        return self.proc.returncode

    def output(self) -> str:
        if hasattr(self._log, "flush"):
            self._log.flush()
        if self.log_path and os.path.exists(self.log_path):
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        return ""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        if hasattr(self._log, "close"):
            self._log.close()


PYTHON = sys.executable


@pytest.fixture(scope="session")
def tls_contexts(tmp_path_factory):
    """(server_context, client_context) for a throw-away self-signed 127.0.0.1/localhost cert."""
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        unavailable("the openssl command is needed to make a test certificate (apt-get install openssl)")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(cert), str(key))
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(str(cert))
    return server, client
