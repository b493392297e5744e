"""aiohttp's server and client on tokioloop, over real sockets on 127.0.0.1.

* ``web.run_app`` in a child process, both ways a user would write it:
  ``web.run_app(app, loop=tokioloop.new_event_loop())`` and a plain ``web.run_app(app)``
  started with ``python -m tokioloop``; stopped by SIGINT/SIGTERM, which run_app
  handles with ``loop.add_signal_handler`` for a graceful shutdown.
* ``AppRunner`` + ``TCPSite``/``UnixSite`` in process, driven by ``ClientSession``:
  JSON, large bodies both ways, chunked streaming, WebSocket (text, binary, ping,
  close codes), timeouts, many concurrent requests. These run on tokioloop and on
  the stdlib loop (the oracle) through the ``run`` fixture.
"""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
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
    run,  # noqa: F401  (fixture)
    run_on_tokioloop,
)



def _aiohttp():
    return require_module("aiohttp")


def make_app(state):
    from aiohttp import WSMsgType, web

    async def index(request):
        return web.json_response({"loop": loop_name(asyncio.get_running_loop())})

    async def echo(request):
        body = await request.read()
        return web.Response(body=body, headers={"x-length": str(len(body))})

    async def stream(request):
        n = int(request.query.get("n", "100"))
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(n):
            await resp.write((b"%05d" % i) * 1000)
        await resp.write_eof()
        return resp

    async def slow(request):
        await asyncio.sleep(float(request.query.get("t", "0.2")))
        return web.Response(text="done")

    async def ws_handler(request):
        ws = web.WebSocketResponse(heartbeat=None)
        await ws.prepare(request)
        state["ws"].add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    if msg.data == "close-me":
                        await ws.close(code=4001, message=b"bye")
                        break
                    await ws.send_str(msg.data.upper())
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data[::-1])
        finally:
            state["ws"].discard(ws)
        return ws

    async def on_shutdown(app):
        for ws in set(state["ws"]):
            await ws.close(code=1001, message=b"server shutdown")

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/", index)
    app.router.add_post("/echo", echo)
    app.router.add_get("/stream", stream)
    app.router.add_get("/slow", slow)
    app.router.add_get("/ws", ws_handler)
    app.on_shutdown.append(on_shutdown)
    return app


async def exercise_client(base_url, *, connector=None, expected_loop=None):
    from aiohttp import ClientSession, ClientTimeout, WSMsgType

    async with ClientSession(base_url=base_url, connector=connector) as session:
        async with session.get("/") as r:
            assert r.status == 200
            info = await r.json()
        if expected_loop is not None:
            assert info == {"loop": expected_loop}

        body = os.urandom(5 * 1024 * 1024 + 3)
        async with session.post("/echo", data=body) as r:
            assert r.status == 200
            assert r.headers["x-length"] == str(len(body))
            assert await r.read() == body

        async with session.get("/stream", params={"n": "500"}) as r:
            chunks = []
            async for chunk in r.content.iter_chunked(7000):
                chunks.append(chunk)
        assert b"".join(chunks) == b"".join((b"%05d" % i) * 1000 for i in range(500))

        # Concurrency: 100 requests sleeping 0.2 s each on the server.
        t0 = time.monotonic()

        async def one():
            async with session.get("/slow", params={"t": "0.2"}) as r:
                return await r.text()

        assert await asyncio.gather(*(one() for _ in range(100))) == ["done"] * 100
        assert time.monotonic() - t0 < 5

        # A client timeout on a slow response, then the session is still usable.
        with pytest.raises(asyncio.TimeoutError):
            async with session.get("/slow", params={"t": "1"}, timeout=ClientTimeout(total=0.2)) as r:
                await r.text()
        async with session.get("/") as r:
            assert r.status == 200

        async with session.ws_connect("/ws", autoping=True) as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=10)).data == "HELLO"
            blob = os.urandom(300 * 1024)
            await ws.send_bytes(blob)
            msg = await ws.receive(timeout=10)
            assert msg.type == WSMsgType.BINARY and msg.data == blob[::-1]
            await ws.ping(b"are you there")
            await ws.send_str("close-me")
            msg = await ws.receive(timeout=10)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
            assert ws.close_code == 4001


def test_app_runner_tcp_and_client_session(run):
    _aiohttp()
    from aiohttp import web

    async def main():
        state = {"ws": set()}
        runner = web.AppRunner(make_app(state), shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            await exercise_client(
                f"http://{HOST}:{port}", expected_loop=loop_name(asyncio.get_running_loop())
            )
        finally:
            await runner.cleanup()

    run(main())


def test_app_runner_unix_socket(run, tmp_path):
    _aiohttp()
    from aiohttp import UnixConnector, web

    path = str(tmp_path / "aiohttp.sock")

    async def main():
        runner = web.AppRunner(make_app({"ws": set()}), shutdown_timeout=5)
        await runner.setup()
        await web.UnixSite(runner, path).start()
        try:
            await exercise_client("http://localhost", connector=UnixConnector(path=path))
        finally:
            await runner.cleanup()

    run(main())


def test_websocket_closed_by_server_shutdown(run):
    _aiohttp()
    from aiohttp import ClientSession, WSMsgType, web

    async def main():
        state = {"ws": set()}
        runner = web.AppRunner(make_app(state), shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        port = runner.addresses[0][1]
        async with ClientSession() as session:
            async with session.ws_connect(f"http://{HOST}:{port}/ws") as ws:
                await ws.send_str("x")
                assert (await ws.receive(timeout=10)).data == "X"
                cleanup = asyncio.ensure_future(runner.cleanup())
                msg = await ws.receive(timeout=10)
                assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED), msg
                assert ws.close_code == 1001
                await cleanup

    run(main())


RUN_APP = textwrap.dedent(
    '''
    import asyncio, os, sys
    sys.path.insert(0, {tests_dir!r})
    from aiohttp import web
    from test_integration_aiohttp import make_app

    async def on_startup(app):
        loop = asyncio.get_running_loop()
        print("STARTED ON", type(loop).__module__ + "." + type(loop).__qualname__, flush=True)

    async def on_cleanup(app):
        with open(os.environ["CLEANUP_MARKER"], "w") as f:
            f.write("cleaned up")

    app = make_app({{"ws": set()}})
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    if {explicit_loop!r}:
        import tokioloop
        web.run_app(app, host={host!r}, port={port}, loop=tokioloop.new_event_loop(), shutdown_timeout=5)
    else:
        web.run_app(app, host={host!r}, port={port}, shutdown_timeout=5)
    print("RUN_APP RETURNED", flush=True)
    '''
)


@pytest.mark.parametrize("how", ["loop-argument", "python-m-tokioloop"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_web_run_app(tmp_path, how, sig):
    _aiohttp()
    port = free_port()
    script = tmp_path / "serve.py"
    script.write_text(
        RUN_APP.format(
            tests_dir=os.path.dirname(os.path.abspath(__file__)),
            explicit_loop=how == "loop-argument",
            host=HOST,
            port=port,
        )
    )
    marker = tmp_path / "cleanup.txt"
    argv = [PYTHON, str(script)] if how == "loop-argument" else [PYTHON, "-m", "tokioloop", str(script)]
    server = ServerProcess(argv, port=port, env={"CLEANUP_MARKER": str(marker)}, log_path=tmp_path / "log")
    try:
        server.wait_ready()
        run_on_tokioloop(exercise_client(f"http://{HOST}:{port}", expected_loop=TOKIOLOOP_LOOP))
        rc = server.stop(sig)
        out = server.output()
    finally:
        server.close()
    assert f"STARTED ON {TOKIOLOOP_LOOP}" in out, out
    assert rc == 0, (rc, out)
    assert "RUN_APP RETURNED" in out, out
    assert "Traceback" not in out, out
    assert marker.read_text() == "cleaned up"
