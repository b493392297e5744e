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
