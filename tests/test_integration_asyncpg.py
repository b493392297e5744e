"""asyncpg against a real PostgreSQL server on 127.0.0.1, on tokioloop (and on the stdlib
loop as the oracle).

The server comes from Debian's ``postgresql`` package, started by ``.ci/run`` with
``scripts/test_services.sh``, which exports ``TOKIOLOOP_TEST_PG_DSN`` (and
``TOKIOLOOP_TEST_PG_SOCKET``). It has TLS on with a self-signed certificate, so the
TLS test covers asyncpg's upgrade of a plain connection (``loop.start_tls``).
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import io
import json
import os
import time
import urllib.parse

import pytest

from integration_support import SERVICES_HINT, require_module, run, tcp_reachable, unavailable  # noqa: F401

DSN_VAR = "TOKIOLOOP_TEST_PG_DSN"


@pytest.fixture(scope="module")
def pg_dsn():
    require_module("asyncpg")
    dsn = os.environ.get(DSN_VAR)
    if not dsn:
        unavailable(f"no PostgreSQL server: {DSN_VAR} is not set; {SERVICES_HINT}")
    parts = urllib.parse.urlsplit(dsn)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    if not tcp_reachable(host, port):
        unavailable(f"no PostgreSQL server answers at {host}:{port} ({DSN_VAR}); {SERVICES_HINT}")
    return dsn


def test_queries_types_transactions(run, pg_dsn):
    import asyncpg

    async def main():
        conn = await asyncpg.connect(pg_dsn, ssl=False)
        try:
            assert await conn.fetchval("SELECT 1 + 1") == 2
            await conn.execute(
                "CREATE TEMP TABLE items (id int PRIMARY KEY, name text, price numeric,"
                " tags text[], meta jsonb, blob bytea, at timestamptz)"
            )
            now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
            rows = [
                (i, f"item {i}", decimal.Decimal(i) / 100, [f"t{i}", "x"], json.dumps({"i": i}), bytes([i % 256]) * i, now)
                for i in range(1000)
            ]
            await conn.executemany("INSERT INTO items VALUES ($1, $2, $3, $4, $5, $6, $7)", rows)
            assert await conn.fetchval("SELECT count(*) FROM items") == 1000

            row = await conn.fetchrow("SELECT * FROM items WHERE id = $1", 777)
            assert row["name"] == "item 777"
            assert row["price"] == decimal.Decimal("7.77")
            assert row["tags"] == ["t777", "x"]
            assert json.loads(row["meta"]) == {"i": 777}
            assert row["blob"] == bytes([777 % 256]) * 777
            assert row["at"] == now

            big = os.urandom(4 * 1024 * 1024)
            assert await conn.fetchval("SELECT $1::bytea", big) == big

            stmt = await conn.prepare("SELECT name FROM items WHERE id > $1 ORDER BY id LIMIT 3")
            assert [r[0] for r in await stmt.fetch(995)] == ["item 996", "item 997", "item 998"]

            async with conn.transaction():
                names = [r["name"] async for r in conn.cursor("SELECT name FROM items ORDER BY id", prefetch=50)]
            assert len(names) == 1000 and names[0] == "item 0"

            with pytest.raises(ZeroDivisionError):
                async with conn.transaction():
                    await conn.execute("DELETE FROM items")
                    raise ZeroDivisionError
            assert await conn.fetchval("SELECT count(*) FROM items") == 1000

            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute("INSERT INTO items (id) VALUES (1)")

            series = await conn.fetch("SELECT generate_series(1, 200000) AS n")
            assert len(series) == 200000 and series[-1]["n"] == 200000
        finally:
            await conn.close()

    run(main())


def test_copy_in_and_out(run, pg_dsn):
    import asyncpg

    async def main():
        conn = await asyncpg.connect(pg_dsn, ssl=False)
        try:
            await conn.execute("CREATE TEMP TABLE c (a int, b text)")
            records = [(i, f"row{i}") for i in range(20000)]
            await conn.copy_records_to_table("c", records=records)
            assert await conn.fetchval("SELECT sum(a) FROM c") == sum(range(20000))
            out = io.BytesIO()
            await conn.copy_from_query("SELECT * FROM c ORDER BY a", output=out, format="csv")
            lines = out.getvalue().decode().splitlines()
            assert len(lines) == 20000 and lines[5] == "5,row5"
        finally:
            await conn.close()

    run(main())


def test_pool_concurrency(run, pg_dsn):
    import asyncpg

    async def main():
        async with asyncpg.create_pool(pg_dsn, ssl=False, min_size=2, max_size=8) as pool:
            t0 = time.monotonic()

            async def one(i):
                async with pool.acquire() as conn:
                    return await conn.fetchval("SELECT $1::int + 0 FROM pg_sleep(0.02)", i)

            assert await asyncio.gather(*(one(i) for i in range(200))) == list(range(200))
            # 200 x 20 ms over 8 connections: about 0.5 s, far from 4 s in series.
            assert time.monotonic() - t0 < 3.5

    run(main())


def test_listen_notify(run, pg_dsn):
    import asyncpg

    async def main():
        listener = await asyncpg.connect(pg_dsn, ssl=False)
        sender = await asyncpg.connect(pg_dsn, ssl=False)
        try:
            got = []
            done = asyncio.Event()

            def on_notify(conn, pid, channel, payload):
                got.append((channel, payload))
                if len(got) == 20:
                    done.set()

            await listener.add_listener("tokio_chan", on_notify)
            for i in range(20):
                await sender.execute(f"NOTIFY tokio_chan, 'msg {i}'")
            await asyncio.wait_for(done.wait(), 10)
            assert got == [("tokio_chan", f"msg {i}") for i in range(20)]
            await listener.remove_listener("tokio_chan", on_notify)
        finally:
            await listener.close()
            await sender.close()

    run(main())


def test_query_cancelled_by_timeout(run, pg_dsn):
    import asyncpg

    async def main():
        conn = await asyncpg.connect(pg_dsn, ssl=False)
        try:
            t0 = time.monotonic()
            with pytest.raises((asyncio.TimeoutError, TimeoutError)):
                await asyncio.wait_for(conn.fetchval("SELECT pg_sleep(10)"), 0.3)
            # asyncpg cancels the query on the server (over a second connection).
            assert await conn.fetchval("SELECT 42") == 42
            assert time.monotonic() - t0 < 5
            with pytest.raises(asyncpg.QueryCanceledError):
                await conn.execute("SET statement_timeout = 100; SELECT pg_sleep(5)")
            await conn.execute("SET statement_timeout = 0")
            assert await conn.fetchval("SELECT 'still usable'") == "still usable"
        finally:
            await conn.close()

    run(main())


def test_tls_connection(run, pg_dsn):
    import asyncpg

    async def main():
        try:
            conn = await asyncpg.connect(pg_dsn, ssl="require")
        except (ConnectionError, asyncpg.PostgresError, OSError) as exc:
            if "does not support SSL" in str(exc) or "rejected SSL" in str(exc):
                unavailable(f"this PostgreSQL server has no TLS ({exc}); {SERVICES_HINT}")
            raise
        try:
            assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
            payload = os.urandom(2 * 1024 * 1024)
            assert await conn.fetchval("SELECT $1::bytea", payload) == payload
            rows = await conn.fetch("SELECT generate_series(1, 50000) AS n")
            assert len(rows) == 50000
        finally:
            await conn.close()

    run(main())


def test_unix_socket(run, pg_dsn):
    import asyncpg

    socket_path = os.environ.get("TOKIOLOOP_TEST_PG_SOCKET")
    if not socket_path or not os.path.exists(socket_path):
        unavailable(f"no PostgreSQL Unix socket (TOKIOLOOP_TEST_PG_SOCKET); {SERVICES_HINT}")
    directory, name = os.path.split(socket_path)
    port = int(name.rsplit(".", 1)[1])

    async def main():
        conn = await asyncpg.connect(host=directory, port=port, user="postgres", database="postgres")
        try:
            assert await conn.fetchval("SELECT inet_client_addr() IS NULL") is True
            assert await conn.fetchval("SELECT repeat('x', 100000)") == "x" * 100000
        finally:
            await conn.close()

    run(main())
