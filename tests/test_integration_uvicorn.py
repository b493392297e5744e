"""uvicorn serving a Starlette app on tokioloop, queried over real sockets by httpx
(and by a websockets client for the WebSocket route).

Recipes checked here:

* the command line, ``uvicorn app:app --loop tokioloop:new_event_loop`` (uvicorn >= 0.36
  takes ``--loop module:callable`` as the loop factory);
* programmatic, ``uvicorn.run(app, loop="tokioloop:new_event_loop")``;
* ``uvicorn.Config(app, loop="none")`` and ``tokioloop.run(uvicorn.Server(config).serve())``,
  for code that owns the loop.

The command-line test runs once with ``--loop asyncio`` too, as the oracle for what a
graceful shutdown looks like (exit status, log lines).
"""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import threading
import time

import pytest

from integration_support import (
    HOST,
    PYTHON,
    TOKIOLOOP_LOOP,
    ServerProcess,
    free_port,
    loop_name,
    require_module,
    run_on_tokioloop,
)

APP = textwrap.dedent(
    '''
    import asyncio, contextlib, os
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route, WebSocketRoute

    def loop_name():
        loop = asyncio.get_running_loop()
        return f"{type(loop).__module__}.{type(loop).__qualname__}"

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.started_on = loop_name()
        yield
        marker = os.environ.get("SHUTDOWN_MARKER")
        if marker:
            with open(marker, "w") as f:
                f.write(loop_name())

    async def loop(request):
        return JSONResponse({"loop": loop_name(), "lifespan": request.app.state.started_on})

    async def echo(request):
        body = await request.body()
        return Response(body, media_type="application/octet-stream",
                        headers={"x-length": str(len(body))})

    async def stream(request):
        n = int(request.query_params.get("n", "100"))
        async def chunks():
            for i in range(n):
                await asyncio.sleep(0)
                yield (b"%05d" % i) * 2000
        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def sleep(request):
        t = float(request.query_params.get("t", "0.1"))
        await asyncio.sleep(t)
        return JSONResponse({"slept": t})

    async def ws(websocket):
        await websocket.accept()
        await websocket.send_text(loop_name())
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                break
            if msg.get("text") is not None:
                await websocket.send_text(msg["text"][::-1])
            else:
                await websocket.send_bytes(msg["bytes"])

    app = Starlette(
        routes=[
            Route("/loop", loop),
            Route("/echo", echo, methods=["POST"]),
            Route("/stream", stream),
            Route("/sleep", sleep),
            WebSocketRoute("/ws", ws),
        ],
        lifespan=lifespan,
    )
    '''
)


@pytest.fixture
def app_dir(tmp_path):
    require_module("uvicorn")
    require_module("starlette")
    require_module("httpx")
    (tmp_path / "tl_app.py").write_text(APP)
    return tmp_path


def exercise_server(port: int, expected_loop: str) -> None:
    """Drive every route of the app over real sockets."""
    import httpx

    base = f"http://{HOST}:{port}"
    with httpx.Client(base_url=base, timeout=20) as client:
        info = client.get("/loop").json()
        assert info == {"loop": expected_loop, "lifespan": expected_loop}

        body = os.urandom(3 * 1024 * 1024 + 17)
        r = client.post("/echo", content=body)
        assert r.status_code == 200
        assert r.headers["x-length"] == str(len(body))
        assert r.content == body

        with client.stream("GET", "/stream", params={"n": 300}) as r:
            data = b"".join(r.iter_bytes())
        assert data == b"".join((b"%05d" % i) * 2000 for i in range(300))

        assert client.get("/missing").status_code == 404

    # 50 concurrent requests that each sleep 0.3 s on the server: served together.
    async def concurrent():
        async with httpx.AsyncClient(base_url=base, timeout=20) as aclient:
            t0 = time.monotonic()
            replies = await asyncio.gather(
                *(aclient.get("/sleep", params={"t": 0.3}) for _ in range(50))
            )
            elapsed = time.monotonic() - t0
        assert all(r.status_code == 200 and r.json() == {"slept": 0.3} for r in replies)
        assert elapsed < 5, f"50 concurrent 0.3 s requests took {elapsed:.2f} s"

    run_on_tokioloop(concurrent())

    from websockets.sync.client import connect

    with connect(f"ws://{HOST}:{port}/ws", open_timeout=10, close_timeout=5) as ws:
        assert ws.recv(timeout=10) == expected_loop
        ws.send("hello tokioloop")
        assert ws.recv(timeout=10) == "hello tokioloop"[::-1]
        blob = os.urandom(256 * 1024)
        ws.send(blob)
        assert ws.recv(timeout=10) == blob


@pytest.mark.parametrize(
    "loop_option, expected_loop",
    [
        ("tokioloop:new_event_loop", TOKIOLOOP_LOOP),
        ("asyncio", "asyncio.unix_events._UnixSelectorEventLoop"),
    ],
    ids=["tokioloop", "asyncio"],
)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_uvicorn_command_line(app_dir, loop_option, expected_loop, sig):
    require_module("websockets")
    port = free_port()
    marker = app_dir / "shutdown.txt"
    server = ServerProcess(
        [
            PYTHON, "-m", "uvicorn", "tl_app:app",
            "--loop", loop_option,
            "--host", HOST, "--port", str(port),
            "--app-dir", str(app_dir),
            "--lifespan", "on",
            "--ws", "auto",
            "--timeout-graceful-shutdown", "10",
        ],
        port=port,
        env={"SHUTDOWN_MARKER": str(marker)},
        log_path=app_dir / "uvicorn.log",
    )
    try:
        server.wait_ready()
        exercise_server(port, expected_loop)
        rc = server.stop(sig)
        out = server.output()
    finally:
        server.close()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    expected_rc = {signal.SIGTERM: -signal.SIGTERM, signal.SIGINT: 1}[sig]
    assert rc in (0, expected_rc), (rc, out)
    assert "Application startup complete." in out, out
    assert "Application shutdown complete." in out, out
    assert "Traceback" not in out.replace("KeyboardInterrupt", ""), out
    assert marker.read_text() == expected_loop


def test_uvicorn_run_programmatic(app_dir):
    require_module("websockets")
    port = free_port()
    script = app_dir / "serve.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, uvicorn
            sys.path.insert(0, {str(app_dir)!r})
            uvicorn.run("tl_app:app", host={HOST!r}, port={port}, loop="tokioloop:new_event_loop",
                        ws="auto", log_level="info")
            """
        )
    )
    server = ServerProcess([PYTHON, str(script)], port=port, log_path=app_dir / "serve.log")
    try:
        server.wait_ready()
        exercise_server(port, TOKIOLOOP_LOOP)
        server.stop(signal.SIGTERM)
        out = server.output()
    finally:
        server.close()
    assert "Application shutdown complete." in out, out


def test_uvicorn_server_serve_on_tokioloop_run(app_dir, monkeypatch):
    """Config(loop="none") + tokioloop.run(Server.serve()), in a thread of this process."""
    import importlib
    import sys

    import uvicorn

    require_module("websockets")
    monkeypatch.syspath_prepend(str(app_dir))
    sys.modules.pop("tl_app", None)
    app_module = importlib.import_module("tl_app")
    port = free_port()
    config = uvicorn.Config(
        app_module.app, host=HOST, port=port, loop="none", ws="auto", log_level="warning"
    )
    server = uvicorn.Server(config)
    result = {}

    def serve():
        import tokioloop

        try:
            tokioloop.run(server.serve())
            result["ok"] = True
        except BaseException as exc:  # reported by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, result
        exercise_server(port, TOKIOLOOP_LOOP)
    finally:
        server.should_exit = True
        thread.join(20)
    assert not thread.is_alive(), "uvicorn did not stop on should_exit"
    assert result == {"ok": True}, result
    sys.modules.pop("tl_app", None)


def test_loop_name_helper():
    import tokioloop

    loop = tokioloop.new_event_loop()
    try:
        assert loop_name(loop) == TOKIOLOOP_LOOP
    finally:
        loop.close()
