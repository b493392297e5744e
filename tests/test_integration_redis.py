"""redis-py's asyncio client (``redis.asyncio``) against a real redis-server on
127.0.0.1 (and on its Unix socket), on tokioloop and on the stdlib loop (the oracle).

The server comes from Debian's ``redis-server`` package, started by ``.ci/run`` with
``scripts/test_services.sh``, which exports ``TOKIOLOOP_TEST_REDIS_URL`` (and
``TOKIOLOOP_TEST_REDIS_UNIX_URL``).
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse
import uuid

import pytest

from integration_support import SERVICES_HINT, require_module, run, tcp_reachable, unavailable  # noqa: F401

URL_VAR = "TOKIOLOOP_TEST_REDIS_URL"


@pytest.fixture(scope="module")
def redis_url():
    require_module("redis")
    url = os.environ.get(URL_VAR)
    if not url:
        unavailable(f"no Redis server: {URL_VAR} is not set; {SERVICES_HINT}")
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if not tcp_reachable(host, port):
        unavailable(f"no Redis server answers at {host}:{port} ({URL_VAR}); {SERVICES_HINT}")
    return url


@pytest.fixture
def prefix():
    return f"tokioloop-test:{uuid.uuid4().hex}:"


def client(url):
    import redis.asyncio as aioredis

    # A blocking pool: 500 concurrent commands wait for one of 50 connections.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=50, timeout=20, socket_timeout=20, socket_connect_timeout=10
    )
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) the pool


async def cleanup(r, prefix):
    keys = [k async for k in r.scan_iter(match=prefix + "*", count=500)]
    if keys:
        await r.delete(*keys)


def test_commands_pipeline_large_values(run, redis_url, prefix):
    async def main():
        r = client(redis_url)
        try:
            assert await r.ping() is True
            await r.set(prefix + "a", "1")
            assert await r.get(prefix + "a") == b"1"
            assert await r.incrby(prefix + "a", 41) == 42

            big = os.urandom(8 * 1024 * 1024)
            await r.set(prefix + "big", big)
            assert await r.get(prefix + "big") == big

            async with r.pipeline(transaction=True) as pipe:
                for i in range(2000):
                    pipe.rpush(prefix + "list", i)
                pipe.llen(prefix + "list")
                results = await pipe.execute()
            assert results[-1] == 2000
            assert await r.lrange(prefix + "list", 0, 2) == [b"0", b"1", b"2"]

            await r.hset(prefix + "h", mapping={f"f{i}": i for i in range(500)})
            assert len(await r.hgetall(prefix + "h")) == 500
            keys = [k async for k in r.scan_iter(match=prefix + "*", count=10)]
            assert sorted(keys) == sorted(k.encode() for k in (prefix + "a", prefix + "big", prefix + "list", prefix + "h"))

            assert await r.set(prefix + "ttl", "x", px=100)
            await asyncio.sleep(0.25)
            assert await r.get(prefix + "ttl") is None
            await cleanup(r, prefix)
        finally:
            await r.aclose()

    run(main())


def test_concurrent_clients_and_blocking_pop(run, redis_url, prefix):
    async def main():
        r = client(redis_url)
        try:
            t0 = time.monotonic()
            # A blocking pop with a timeout returns None when nothing comes.
            assert await r.blpop([prefix + "empty"], timeout=0.2) is None
            assert 0.15 < time.monotonic() - t0 < 3

            # 20 consumers blocked in BLPOP (each on a pooled connection), 200 values.
            async def consumer():
                got = []
                while True:
                    item = await r.blpop([prefix + "q"], timeout=2)
                    if item is None or item[1] == b"stop":
                        return got
                    got.append(int(item[1]))

            consumers = [asyncio.create_task(consumer()) for _ in range(20)]
            await asyncio.sleep(0.1)
            for i in range(200):
                await r.rpush(prefix + "q", i)
            for _ in range(20):
                await r.rpush(prefix + "q", "stop")
            results = await asyncio.gather(*consumers)
            assert sorted(x for got in results for x in got) == list(range(200))

            # 500 concurrent commands over the pool.
            values = await asyncio.gather(*(r.incr(prefix + "counter") for _ in range(500)))
            assert sorted(values) == list(range(1, 501))
            await cleanup(r, prefix)
        finally:
            await r.aclose()

    run(main())


def test_pubsub(run, redis_url, prefix):
    async def main():
        r = client(redis_url)
        pubsub = r.pubsub()
        try:
            await pubsub.subscribe(prefix + "news")
            await pubsub.psubscribe(prefix + "pat.*")
            msg = await pubsub.get_message(timeout=5)
            assert msg["type"] == "subscribe"
            msg = await pubsub.get_message(timeout=5)
            assert msg["type"] == "psubscribe"

            async def publisher():
                for i in range(50):
                    await r.publish(prefix + "news", f"n{i}")
                    await r.publish(prefix + "pat.x", f"p{i}")

            task = asyncio.create_task(publisher())
            got = []
            while len(got) < 100:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                assert msg is not None, f"only {len(got)} messages arrived"
                got.append(msg["data"].decode())
            await task
            assert [m for m in got if m[0] == "n"] == [f"n{i}" for i in range(50)]
            assert [m for m in got if m[0] == "p"] == [f"p{i}" for i in range(50)]
            # Nothing more: get_message times out and returns None.
            assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1) is None
            await pubsub.unsubscribe()
            await pubsub.punsubscribe()
        finally:
            await pubsub.aclose()
            await r.aclose()

    run(main())


def test_cancelled_command_leaves_client_usable(run, redis_url, prefix):
    async def main():
        r = client(redis_url)
        try:
            with pytest.raises((asyncio.TimeoutError, TimeoutError)):
                await asyncio.wait_for(r.blpop([prefix + "never"], timeout=5), 0.2)
            assert await r.ping() is True
            await r.set(prefix + "k", "v")
            assert await r.get(prefix + "k") == b"v"
            await cleanup(r, prefix)
        finally:
            await r.aclose()

    run(main())


def test_unix_socket(run, redis_url, prefix):
    url = os.environ.get("TOKIOLOOP_TEST_REDIS_UNIX_URL")
    if not url or not os.path.exists(urllib.parse.urlsplit(url).path):
        unavailable(f"no Redis Unix socket (TOKIOLOOP_TEST_REDIS_UNIX_URL); {SERVICES_HINT}")

    async def main():
        r = client(url)
        try:
            value = os.urandom(1024 * 1024)
            await r.set(prefix + "u", value)
            assert await r.get(prefix + "u") == value
            info = await r.client_info()
            assert "U" in str(info.get("flags", "")), info  # U: a Unix-socket client
            await cleanup(r, prefix)
        finally:
            await r.aclose()

    run(main())
