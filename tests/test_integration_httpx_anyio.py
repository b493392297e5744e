"""httpx and anyio on tokioloop, the anyio way:

    anyio.run(main, backend="asyncio", backend_options={"loop_factory": tokioloop.new_event_loop})

The server is a Starlette app under uvicorn started in the same loop (``Server.serve``
in an anyio task group); httpx's AsyncClient talks to it over 127.0.0.1. anyio's own
networking (TCP, TLS, Unix, UDP), threads, subprocesses and cancel scopes are driven
as well. Each scenario runs on tokioloop and on the stdlib loop (the oracle).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time

import pytest

from integration_support import HOST, LOOP_FACTORIES, TOKIOLOOP_LOOP, loop_name, require_module, tls_contexts  # noqa: F401


@pytest.fixture(params=list(LOOP_FACTORIES))
def anyio_run(request):
    """anyio.run(fn, *args) with backend_options={"loop_factory": <loop under test>}."""
    anyio = require_module("anyio")
    factory = LOOP_FACTORIES[request.param]

    def runner(fn, *args):
        async def guarded():
            with anyio.fail_after(60):
                return await fn(*args)

        return anyio.run(guarded, backend="asyncio", backend_options={"loop_factory": factory})

    runner.kind = request.param
    return runner


def make_app():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def info(request):
        return JSONResponse({"loop": loop_name(asyncio.get_running_loop())})

    async def upload(request):
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
        return JSONResponse({"received": total})

    async def download(request):
        size = int(request.query_params["size"])

        async def gen():
            sent = 0
            while sent < size:
                n = min(65536, size - sent)
                sent += n
                yield b"z" * n

        return StreamingResponse(gen())

    async def slow(request):
        await asyncio.sleep(float(request.query_params.get("t", "0.2")))
        return Response(b"slow")

    return Starlette(
        routes=[
            Route("/", info),
            Route("/upload", upload, methods=["POST"]),
            Route("/download", download),
            Route("/slow", slow),
        ]
    )


def test_httpx_against_uvicorn_under_anyio_run(anyio_run):
    anyio = require_module("anyio")
    httpx = require_module("httpx")
    uvicorn = require_module("uvicorn")
    require_module("starlette")

    async def main():
        sock = socket.socket()
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(make_app(), loop="none", log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: server.serve(sockets=[sock]))
            while not server.started:
                await anyio.sleep(0.01)
            try:
                base = f"http://{HOST}:{port}"
                async with httpx.AsyncClient(base_url=base, timeout=20) as client:
                    r = await client.get("/")
                    assert r.json() == {"loop": loop_name(asyncio.get_running_loop())}

                    async def body():
                        for _ in range(64):
                            yield os.urandom(32 * 1024)

                    r = await client.post("/upload", content=body())
                    assert r.json() == {"received": 64 * 32 * 1024}

                    total = 0
                    async with client.stream("GET", "/download", params={"size": 8_000_000}) as r:
                        async for chunk in r.aiter_bytes():
                            total += len(chunk)
                    assert total == 8_000_000

                    t0 = time.monotonic()
                    replies = await asyncio.gather(
                        *(client.get("/slow", params={"t": 0.3}) for _ in range(60))
                    )
                    assert [r.content for r in replies] == [b"slow"] * 60
                    assert time.monotonic() - t0 < 5

                    with pytest.raises(httpx.ReadTimeout):
                        await client.get("/slow", params={"t": 2}, timeout=0.2)
                    assert (await client.get("/")).status_code == 200
            finally:
                server.should_exit = True
        return "done"

    assert anyio_run(main) == "done"


def test_anyio_tcp_tls_unix_udp(anyio_run, tls_contexts, tmp_path):
    anyio = require_module("anyio")
    from anyio.streams.tls import TLSListener

    server_ctx, client_ctx = tls_contexts
    unix_path = str(tmp_path / "anyio.sock")

    async def echo(stream):
        async with stream:
            try:
                async for data in stream:
                    await stream.send(data)
            except anyio.EndOfStream:
                pass

    async def roundtrip(stream, payload):
        received = bytearray()
        async with anyio.create_task_group() as tg:

            async def sender():
                for i in range(0, len(payload), 65536):
                    await stream.send(payload[i : i + 65536])

            tg.start_soon(sender)
            while len(received) < len(payload):
                received += await stream.receive()
        return bytes(received)

    async def main():
        payload = os.urandom(2 * 1024 * 1024)
        async with anyio.create_task_group() as tg:
            tcp = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
            tls = TLSListener(await anyio.create_tcp_listener(local_host=HOST, local_port=0), server_ctx)
            unix = await anyio.create_unix_listener(unix_path)
            for listener in (tcp, tls, unix):
                tg.start_soon(listener.serve, echo)

            tcp_port = tcp.extra(anyio.abc.SocketAttribute.local_port)
            async with await anyio.connect_tcp(HOST, tcp_port) as s:
                assert await roundtrip(s, payload) == payload

            tls_port = tls.listener.extra(anyio.abc.SocketAttribute.local_port)
            async with await anyio.connect_tcp("localhost", tls_port, ssl_context=client_ctx) as s:
                assert await roundtrip(s, payload) == payload

            async with await anyio.connect_unix(unix_path) as s:
                assert await roundtrip(s, payload[:100_000]) == payload[:100_000]

            async with await anyio.create_udp_socket(local_host=HOST) as a, await anyio.create_udp_socket(
                local_host=HOST
            ) as b:
                b_port = b.extra(anyio.abc.SocketAttribute.local_port)
                await a.sendto(b"datagram", HOST, b_port)
                data, (host, port) = await b.receive()
                assert data == b"datagram" and host == HOST

            tg.cancel_scope.cancel()

    anyio_run(main)


def test_anyio_threads_processes_cancellation(anyio_run):
    anyio = require_module("anyio")

    async def main():
        loop = asyncio.get_running_loop()

        # Worker threads, and calls back into the loop from them.
        def in_thread(x):
            assert anyio.from_thread.run(anyio.sleep, 0.01) is None
            return anyio.from_thread.run_sync(lambda: x * 2)

        results = []
        async with anyio.create_task_group() as tg:
            for i in range(20):

                async def one(i=i):
                    results.append(await anyio.to_thread.run_sync(in_thread, i))

                tg.start_soon(one)
        assert sorted(results) == [i * 2 for i in range(20)]

        # Subprocesses.
        out = await anyio.run_process([sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"], input=b"abc")
        assert out.stdout.strip() == b"ABC"
        async with await anyio.open_process([sys.executable, "-c", "print('x' * 300000)"]) as proc:
            chunks = [chunk async for chunk in proc.stdout]
        assert len(b"".join(chunks).strip()) == 300_000

        # Cancel scopes and timeouts.
        with anyio.move_on_after(0.1) as scope:
            await anyio.sleep(10)
        assert scope.cancelled_caught
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.05):
                await anyio.sleep(10)

        # Memory object streams between tasks.
        send, receive = anyio.create_memory_object_stream[int](10)
        async with anyio.create_task_group() as tg:

            async def producer():
                async with send:
                    for i in range(1000):
                        await send.send(i)

            tg.start_soon(producer)
            async with receive:
                assert [i async for i in receive] == list(range(1000))

        # Events, locks, semaphores, and a deadline honoured by the loop's clock.
        sem = anyio.Semaphore(3)
        peak = current = 0

        async def worker():
            nonlocal peak, current
            async with sem:
                current += 1
                peak = max(peak, current)
                await anyio.sleep(0.01)
                current -= 1

        async with anyio.create_task_group() as tg:
            for _ in range(30):
                tg.start_soon(worker)
        assert peak == 3
        assert anyio.current_time() == pytest.approx(loop.time(), abs=0.5)
        return loop_name(loop)

    name = anyio_run(main)
    if anyio_run.kind == "tokioloop":
        assert name == TOKIOLOOP_LOOP


def test_sniffio_and_current_async_library(anyio_run):
    anyio = require_module("anyio")
    sniffio = require_module("sniffio")

    async def main():
        return sniffio.current_async_library(), anyio.get_current_task().name is not None

    assert anyio_run(main) == ("asyncio", True)


# The two tokioloop bugs anyio's own test suite found (docs/ecosystem.md) are fixed;
# the tests below pin the fixes.


def test_anyio_unix_stream_closed_during_receive(anyio_run, tmp_path, request):
    """anyio's UNIX stream: aclose() while another task waits in receive()."""
    anyio = require_module("anyio")
    path = str(tmp_path / "close.sock")

    async def main():
        # anyio unregisters the socket in a future's done-callback: an error there goes
        # to the loop's exception handler, recorded here.
        errors = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))

        async def serve(stream):
            async with stream:
                await anyio.sleep(5)

        listener = await anyio.create_unix_listener(path)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, serve)
            stream = await anyio.connect_unix(path)

            async def receiver():
                with pytest.raises(anyio.ClosedResourceError):
                    await stream.receive()

            tg.start_soon(receiver)
            await anyio.wait_all_tasks_blocked()
            await stream.aclose()
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        assert not errors, [ctx.get("exception", ctx.get("message")) for ctx in errors]

    anyio_run(main)


def test_failed_connect_leaves_no_reference_cycle(anyio_run, request):
    """A refused connection's exception is referred to by nothing but its catcher."""
    import gc

    anyio = require_module("anyio")

    async def main():
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        exc = None
        try:
            async with await anyio.connect_tcp(HOST, port):
                pass
        except OSError as e:
            exc = e.__cause__
        assert isinstance(exc, OSError), exc
        return [type(r).__name__ for r in gc.get_referrers(exc)]

    assert anyio_run(main) == []
