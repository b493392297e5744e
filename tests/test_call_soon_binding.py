"""`loop.call_soon` as an attribute: asyncio's C Future and Task look it up
on the loop for every callback they schedule, and tokioloop serves it from
one bound method per loop (src/bound_method.rs). What code can observe of
the attribute must stay as on the stdlib loop: replacing it on the instance
(mock.patch.object) reaches the C futures, deleting it restores the method,
subclasses can override it, and the cached method never keeps a closed loop
alive.
"""

import asyncio
import gc
import unittest.mock as mock
import warnings
import weakref

import pytest

import tokioloop


def test_bound_method_of_the_loop(loop):
    cs = loop.call_soon
    assert cs.__self__ is loop
    assert cs.__name__ == "call_soon"
    assert loop.call_soon == cs
    got = []
    cs(got.append, 1)
    type(loop).call_soon(loop, got.append, 2)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert got == [1, 2]


def test_class_attribute_checks_its_receiver():
    with pytest.raises(TypeError, match="doesn't apply to a 'int' object"):
        tokioloop.Loop.call_soon(3, print)


def test_patch_object_reaches_c_futures(loop_factory):
    """asyncio's C Future calls loop.call_soon by attribute: a patch on the
    instance sees every callback it schedules, then goes away cleanly."""
    loop = loop_factory()
    fut = loop.create_future()
    fut.add_done_callback(lambda f: None)
    with mock.patch.object(loop, "call_soon") as patched:
        fut.set_result(1)
    assert patched.call_count == 1
    assert "call_soon" not in vars(loop)
    got = []
    fut2 = loop.create_future()
    fut2.add_done_callback(lambda f: got.append(f.result()))
    fut2.set_result(2)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert got == [2]


def test_assign_and_delete_like_stdlib(loop_factory):
    loop = loop_factory()
    with pytest.raises(AttributeError) as exc:
        del loop.call_soon
    assert str(exc.value) == f"'{type(loop).__name__}' object has no attribute 'call_soon'"
    calls = []
    loop.call_soon = lambda *a, **k: calls.append(a)
    loop.call_soon(print)
    assert calls == [(print,)]
    del loop.call_soon
    assert loop.call_soon.__self__ is loop
    with pytest.raises(AttributeError):
        del loop.call_soon


def test_subclass_override_used_by_tasks():
    seen = []

    class Traced(tokioloop.Loop):
        def call_soon(self, callback, *args, context=None):
            seen.append(callback)
            return super().call_soon(callback, *args, context=context)

    loop = Traced()
    try:

        async def main():
            await asyncio.sleep(0)
            return 7

        assert loop.run_until_complete(main()) == 7
    finally:
        loop.close()
    assert len(seen) >= 2  # the task's first step and its wake-up after sleep(0)


@pytest.mark.parametrize("use", ["run a task", "create_future"])
def test_closed_loop_freed_without_the_gc(use):
    """What the loop keeps that refers back to it (the call_soon binding, the
    keywords of create_future) goes at close(): no cycle left for the GC."""
    gc.disable()
    try:
        loop = tokioloop.new_event_loop()
        if use == "create_future":
            loop.create_future()
        else:

            async def main():
                await asyncio.sleep(0)

            loop.run_until_complete(main())
            assert loop.call_soon.__self__ is loop
        loop.close()
        ref = weakref.ref(loop)
        del loop
        assert ref() is None
    finally:
        gc.enable()


def test_unclosed_loop_collected_with_warning():
    loop = tokioloop.new_event_loop()
    loop.call_soon
    ref = weakref.ref(loop)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del loop
        gc.collect()
    assert ref() is None
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
