"""The websockets library (its asyncio implementation, websockets >= 13) on tokioloop:
a real server and real clients over TCP, TLS and a Unix socket on this machine.

Each scenario runs on tokioloop and on the stdlib loop (the oracle) via ``run``.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from integration_support import HOST, loop_name, require_module, run, tls_contexts  # noqa: F401


@pytest.fixture(autouse=True)
def _websockets():
    ws = require_module("websockets")
    try:
        import websockets.asyncio.client  # noqa: F401
        import websockets.asyncio.server  # noqa: F401
    except ImportError:
        pytest.skip(f"websockets {ws.__version__} has no websockets.asyncio (needs >= 13)")


async def echo_handler(ws):
    await ws.send(loop_name(asyncio.get_running_loop()))
    async for message in ws:
        if message == "close-me":
            await ws.close(4002, "asked to")
            return
        await ws.send(message)


def test_echo_text_binary_fragments_ping(run):
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    async def main():
        async with serve(echo_handler, HOST, 0, max_size=8 * 1024 * 1024) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://{HOST}:{port}", max_size=8 * 1024 * 1024) as ws:
                assert await ws.recv() == loop_name(asyncio.get_running_loop())
                await ws.send("hello")
                assert await ws.recv() == "hello"
                big = os.urandom(4 * 1024 * 1024)
                await ws.send(big)
                assert await ws.recv() == big

                async def fragments():
                    for i in range(10):
                        yield f"part{i};"

                await ws.send(fragments())
                assert await ws.recv() == "".join(f"part{i};" for i in range(10))
                pong = await ws.ping(b"x")
                latency = await asyncio.wait_for(pong, 5)
                assert latency >= 0
                await ws.send("close-me")
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 4002
                assert ws.close_reason == "asked to"

    run(main())


def test_many_clients_and_broadcast(run):
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import broadcast, serve

    async def main():
        connected = set()
        all_in = asyncio.Event()

        async def handler(ws):
            connected.add(ws)
            if len(connected) == 50:
                all_in.set()
            try:
                await ws.wait_closed()
            finally:
                connected.discard(ws)

        async with serve(handler, HOST, 0) as server:
            port = server.sockets[0].getsockname()[1]

            async def client(i):
                async with connect(f"ws://{HOST}:{port}") as ws:
                    return [await ws.recv() for _ in range(20)]

            clients = [asyncio.create_task(client(i)) for i in range(50)]
            await asyncio.wait_for(all_in.wait(), 20)
            for n in range(20):
                broadcast(connected, f"news {n}")
            results = await asyncio.gather(*clients)
        assert all(r == [f"news {n}" for n in range(20)] for r in results)

    run(main())


def test_tls(run, tls_contexts):
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    server_ctx, client_ctx = tls_contexts

    async def main():
        async with serve(echo_handler, HOST, 0, ssl=server_ctx) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"wss://localhost:{port}", ssl=client_ctx) as ws:
                assert await ws.recv() == loop_name(asyncio.get_running_loop())
                payload = os.urandom(900 * 1024)
                await ws.send(payload)
                assert await ws.recv() == payload
                for i in range(100):
                    await ws.send(f"m{i}")
                assert [await ws.recv() for _ in range(100)] == [f"m{i}" for i in range(100)]

    run(main())


def test_unix_socket(run, tmp_path):
    from websockets.asyncio.client import unix_connect
    from websockets.asyncio.server import unix_serve

    path = str(tmp_path / "ws.sock")

    async def main():
        async with unix_serve(echo_handler, path):
            async with unix_connect(path, uri="ws://localhost/") as ws:
                assert await ws.recv() == loop_name(asyncio.get_running_loop())
                await ws.send(b"\x00" * 100_000)
                assert await ws.recv() == b"\x00" * 100_000

    run(main())


def test_server_close_closes_clients_with_1001(run):
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    async def main():
        server = await serve(echo_handler, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://{HOST}:{port}") as ws:
            await ws.recv()
            server.close()
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1001
        await server.wait_closed()

    run(main())
