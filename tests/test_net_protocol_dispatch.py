"""How a stream transport reaches its protocol: the methods are looked up on
every call (an instance attribute set later, a class attribute replaced and
set_protocol() all take effect at the next read), the context the callbacks
run in, and transport.write()'s call shapes.

Each scenario runs on the stdlib selector loop (the oracle) and on the
parametrized loop, and the traces must match.
"""

import asyncio
import contextvars

import pytest

from net_helpers import HOST, EchoProtocol, run

pytestmark = pytest.mark.timeout(60)


class Client(asyncio.Protocol):
    """Sends the next message once the echo of the previous one is in, so each
    read brings one message; `steps[i]` runs after the i-th echo."""

    def __init__(self, loop, messages, steps, trace):
        self.loop = loop
        self.messages = list(messages)
        self.steps = steps
        self.trace = trace
        self.done = loop.create_future()
        self.got = b""
        self.i = 0

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.messages[0])

    def data_received(self, data):
        self.trace.append(("class", data))
        self.advance(data)

    def advance(self, data, owner=None):
        owner = owner or self
        owner.got += data
        if len(owner.got) < len(self.messages[self.i]):
            return
        owner.got = b""
        step = self.steps.get(self.i)
        self.i += 1
        if step is not None:
            step(self)
        if self.i == len(self.messages):
            if not self.done.done():
                self.done.set_result(None)
        else:
            self.transport.write(self.messages[self.i])

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("lost"))


def scenario(loop, steps, n=4, cls=Client):
    trace = []

    async def main():
        server = await loop.create_server(EchoProtocol, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        messages = [bytes([65 + i]) * (10 + i) for i in range(n)]
        tr, pr = await loop.create_connection(
            lambda: cls(loop, messages, steps, trace), HOST, port
        )
        await asyncio.wait_for(pr.done, 10)
        tr.close()
        server.close()
        await server.wait_closed()

    run(loop, main())
    return trace


def oracle(steps, n=4):
    lp = asyncio.SelectorEventLoop()
    try:
        return scenario(lp, steps, n)
    finally:
        lp.close()


def test_instance_attribute_set_after_connection_made(loop):
    def override(client):
        def data_received(data):
            client.trace.append(("instance", data))
            client.advance(data)

        client.data_received = data_received

    def remove(client):
        del client.data_received

    steps = {0: override, 2: remove}
    got = scenario(loop, steps)
    assert got == oracle(steps)
    assert [k for k, _ in got] == ["class", "instance", "instance", "class"]


def test_class_attribute_replaced(loop):
    def replace(client):
        cls = type(client)

        def data_received(self, data):
            self.trace.append(("replaced", data))
            self.advance(data)

        cls.data_received = data_received

    # A subclass per run, so the replacement stays local to that run.
    def run_on(lp):
        return scenario(lp, {1: replace}, cls=type("Sub", (Client,), {}))

    got = run_on(loop)
    lp = asyncio.SelectorEventLoop()
    try:
        expected = run_on(lp)
    finally:
        lp.close()
    assert got == expected
    assert [k for k, _ in got] == ["class", "class", "replaced", "replaced"]


class Buffered(asyncio.BufferedProtocol):
    """Takes over a Client's transport for some reads, then hands it back."""

    def __init__(self, client, back_after):
        self.client = client
        self.back_after = back_after
        self.buf = bytearray(64)
        self.got = b""

    def get_buffer(self, sizehint):
        self.client.trace.append(("get_buffer", sizehint > 0 or sizehint == -1))
        return self.buf

    def buffer_updated(self, nbytes):
        data = bytes(self.buf[:nbytes])
        self.client.trace.append(("buffer_updated", data))
        before = self.client.i
        self.client.advance(data, owner=self)
        if self.client.i != before and self.client.i == self.back_after:
            self.client.transport.set_protocol(self.client)

    def connection_lost(self, exc):
        self.client.connection_lost(exc)


def test_set_protocol_to_buffered_and_back(loop):
    def to_buffered(client):
        client.transport.set_protocol(Buffered(client, back_after=3))

    steps = {0: to_buffered}
    got = scenario(loop, steps, n=5)
    assert got == oracle(steps, n=5)
    kinds = [k for k, _ in got]
    assert kinds[0] == "class" and kinds[-1] == "class"
    assert "buffer_updated" in kinds


VAR = contextvars.ContextVar("VAR", default="unset")


def test_callbacks_run_in_the_transport_context(loop):
    """Protocol callbacks see the context copied when the transport was made,
    not what connection_made set (asyncio schedules them separately)."""

    async def main(lp):
        seen = []

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
                seen.append(("made", VAR.get()))
                VAR.set("from connection_made")
                transport.write(b"ping")

            def data_received(self, data):
                seen.append(("data", VAR.get()))
                VAR.set("from data_received")
                self.transport.close()

            def connection_lost(self, exc):
                seen.append(("lost", VAR.get()))
                done.set_result(None)

        done = lp.create_future()
        server = await lp.create_server(EchoProtocol, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        VAR.set("caller")
        await lp.create_connection(P, HOST, port)
        await asyncio.wait_for(done, 10)
        server.close()
        await server.wait_closed()
        return seen

    got = run(loop, main(loop))
    lp = asyncio.SelectorEventLoop()
    try:
        expected = run(lp, main(lp))
    finally:
        lp.close()
    assert got == expected


def test_write_call_shapes(loop):
    async def main():
        server = await loop.create_server(EchoProtocol, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        got = bytearray()
        done = loop.create_future()

        class P(asyncio.Protocol):
            def data_received(self, data):
                got.extend(data)
                if len(got) >= 9 and not done.done():
                    done.set_result(None)

        tr, _ = await loop.create_connection(P, HOST, port)
        tr.write(b"abc")
        tr.write(data=bytearray(b"def"))
        tr.write(memoryview(b"xghix")[1:4])
        with pytest.raises(TypeError):
            tr.write()
        with pytest.raises(TypeError):
            tr.write(b"a", b"b")
        with pytest.raises(TypeError, match="data argument must be a bytes-like object, not 'int'"):
            tr.write(1)
        with pytest.raises(TypeError):
            tr.write(b"a", bogus=1)
        await asyncio.wait_for(done, 10)
        tr.close()
        server.close()
        await server.wait_closed()
        return bytes(got)

    assert run(loop, main()) == b"abcdefghi"


def test_protocol_error_in_data_received_closes(loop):
    """An exception from data_received is a fatal error of the transport:
    connection_lost follows with it, as on the stdlib loop."""

    async def main():
        server = await loop.create_server(EchoProtocol, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        lost = loop.create_future()
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx["message"]))

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                transport.write(b"boom")

            def data_received(self, data):
                raise ZeroDivisionError

            def connection_lost(self, exc):
                lost.set_result(type(exc).__name__)

        await loop.create_connection(P, HOST, port)
        name = await asyncio.wait_for(lost, 10)
        server.close()
        await server.wait_closed()
        return name, errors

    name, errors = run(loop, main())
    assert name == "ZeroDivisionError"
    assert errors == ["Fatal error: protocol.data_received() call failed."]


def _same_size_round_trips(loop, on_data, n=6, size=700):
    """n messages of one size and distinct contents, one at a time; returns
    what `on_data(data)` returned for each read (each read is one message)."""
    results = []

    async def main():
        server = await loop.create_server(EchoProtocol, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        messages = [bytes([48 + i]) * size for i in range(n)]
        done = loop.create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
                self.i = 0
                transport.write(messages[0])

            def data_received(self, data):
                assert data == messages[self.i], (self.i, data[:5])
                results.append(on_data(data))
                self.i += 1
                if self.i == n:
                    done.set_result(None)
                else:
                    self.transport.write(messages[self.i])

        tr, _ = await loop.create_connection(P, HOST, port)
        await asyncio.wait_for(done, 10)
        tr.close()
        server.close()
        await server.wait_closed()
        return messages

    messages = run(loop, main())
    return messages, results


# A small message's reuse is filled by a copy after recv(), a larger one's by
# readv() straight into it (stream.rs, SPARE_COPY_MAX): both paths.
RECYCLED_SIZES = [700, 20000]


@pytest.mark.parametrize("size", RECYCLED_SIZES)
def test_received_bytes_kept_by_the_protocol_stay_intact(loop, size):
    """Data objects the protocol keeps (directly or through a memoryview) are
    never reused for later reads."""
    kept = []
    views = []

    def keep(data):
        kept.append(data)
        views.append(memoryview(data))
        return None

    messages, _ = _same_size_round_trips(loop, keep, size=size)
    assert kept == messages
    assert [bytes(v) for v in views] == messages


@pytest.mark.parametrize("size", RECYCLED_SIZES)
def test_received_bytes_hash_matches_contents(loop, size):
    """A hash taken of one message and then dropped does not stick to the
    next message of the same size."""
    messages, hashes = _same_size_round_trips(
        loop, lambda data: (hash(data), data[:3]), size=size
    )
    assert [h for h, _ in hashes] == [hash(bytes(m)) for m in messages]
    assert len({h for h, _ in hashes}) == len(messages)
