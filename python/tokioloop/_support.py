"""Pure-Python helpers the Rust core calls on rare paths (reprs, error reports,
debug logging). Kept out of the hot path on purpose."""

from __future__ import annotations

import asyncio
import sys
from asyncio import coroutines, events, format_helpers
from asyncio.log import logger


def format_handle_repr(kind, cancelled, callback, args, when, source_traceback=None):
    info = [kind]
    if cancelled:
        info.append("cancelled")
    if when is not None:
        info.append(f"when={when}")
    if callback is not None:
        info.append(format_helpers._format_callback_source(callback, args or ()))
    if source_traceback:
        frame = source_traceback[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    return "<{}>".format(" ".join(info))


def extract_stack():
    # Skip this helper and the Rust frame's caller chain down to user code:
    # the innermost Python frame is the one that called call_soon/call_later.
    return format_helpers.extract_stack(sys._getframe(1))


def _current_loop():
    loop = events._get_running_loop()
    if loop is None:
        loop = asyncio.get_event_loop_policy().get_event_loop()
    return loop


def report_callback_error(loop, handle, exc):
    if loop is None:
        loop = _current_loop()
    cb = format_helpers._format_callback_source(handle._callback, handle._args or ())
    context = {
        "message": f"Exception in callback {cb}",
        "exception": exc,
        "handle": handle,
    }
    loop.call_exception_handler(context)


def format_handle(handle):
    cb = handle._callback
    if isinstance(getattr(cb, "__self__", None), asyncio.Task):
        # format the task
        return repr(cb.__self__)
    return str(handle)


def log_slow_callback(handle, seconds):
    logger.warning("Executing %s took %.3f seconds", format_handle(handle), seconds)


def is_coroutine(obj):
    return coroutines.iscoroutine(obj)


def is_coroutine_function(obj):
    return coroutines.iscoroutinefunction(obj)


def transport_fatal_error(loop, transport, protocol, exc, message):
    if isinstance(exc, OSError):
        if loop.get_debug():
            logger.debug("%r: %s", transport, message, exc_info=(type(exc), exc, exc.__traceback__))
        return
    loop.call_exception_handler(
        {"message": message, "exception": exc, "transport": transport, "protocol": protocol}
    )


def protocol_callback_failed(loop, transport, protocol, exc, message):
    loop.call_exception_handler(
        {"message": message, "exception": exc, "transport": transport, "protocol": protocol}
    )


def log_warning(message):
    logger.warning(message)


def _code_location(obj):
    """file:line of the code behind a callback, unwrapping partials and methods."""
    import functools
    import inspect

    while isinstance(obj, functools.partial):
        obj = obj.func
    obj = getattr(obj, "__func__", obj)
    code = getattr(obj, "__code__", None)
    if code is not None:
        return f"{code.co_filename}:{code.co_firstlineno}"
    try:
        return f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"
    except (TypeError, OSError):
        return None


def report_blocking_call(loop, handle, seconds, hook):
    callback = handle._callback
    task = getattr(callback, "__self__", None)
    if not isinstance(task, asyncio.Future):
        task = None
    if task is not None and hasattr(task, "get_coro"):
        coro = task.get_coro()
        name = task.get_name() if hasattr(task, "get_name") else repr(task)
        frame = getattr(coro, "cr_frame", None)
        code = getattr(coro, "cr_code", None)
        if frame is not None:
            # The step ran up to here: the blocking code is before this await.
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        elif code is not None:
            where = f"{code.co_filename}:{code.co_firstlineno}"
        else:
            where = None
        what = f"task {name!r} ({getattr(coro, '__qualname__', coro)!r})"
    else:
        what = format_helpers._format_callback_source(callback, handle._args or ()) if callback else repr(handle)
        where = _code_location(callback) if callback is not None else None
    tb = handle._source_traceback
    created = f"{tb[-1][0]}:{tb[-1][1]}" if tb else None
    info = {
        "callback": what,
        "duration": seconds,
        "location": where,
        "created_at": created,
        "handle": handle,
        "task": task,
        "loop": loop,
    }
    if hook is not None:
        hook(info)
        return
    extra = []
    if where:
        extra.append(f"at {where}")
    if created:
        extra.append(f"created at {created}")
    suffix = f" ({', '.join(extra)})" if extra else ""
    logger.warning("Blocking call: %s took %.3f seconds%s", what, seconds, suffix)
