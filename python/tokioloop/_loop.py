"""The public `Loop` class: the Rust core plus asyncio's bookkeeping.

Everything on a hot path (call_soon, timers, the run loop, fd readiness) lives
in `_tokioloop.CoreLoop`; this layer adds the rarely called, argument-heavy API
(tasks, executors, exception handling, signals, async generators, sock_*).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import functools
import os
import signal
import socket
import sys
import threading
import warnings
import weakref

from asyncio import constants, coroutines, events, exceptions, futures, tasks
from asyncio import base_events as _base_events
from asyncio.log import logger

from ._net import NetworkMixin
from ._subprocess import SubprocessMixin
from ._tokioloop import CoreLoop, Handle
from ._tokioloop import (
    _sock_accept,
    _sock_cancel,
    _sock_connect,
    _sock_recv,
    _sock_recv_into,
    _sock_recvfrom,
    _sock_recvfrom_into,
    _sock_sendall,
    _sock_sendto,
)

_HAS_IPV6 = hasattr(socket, "AF_INET6")

_SSLSocket = None
try:
    import ssl

    _SSLSocket = ssl.SSLSocket
except ImportError:  # pragma: no cover - ssl is always there on CPython builds we support
    pass


def _run_until_complete_cb(fut):
    if not fut.cancelled():
        exc = fut.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # The loop is already unwinding with this exception.
            return
    fut.get_loop().stop()


def _check_plain_socket(sock):
    if _SSLSocket is not None and isinstance(sock, _SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


class _Again:
    """Returned by an I/O attempt that made progress but is not finished."""


_AGAIN = _Again()

# create_task's keywords by version (gh-128307, gh-133745): up to 3.13.2 only
# name and context; 3.13.3 passes every keyword to a task factory, name
# included; 3.13.4 and later 3.13 releases pass the others and set the name
# afterwards; 3.14 passes everything. From 3.13 on a factory's task must
# have set_name() (3.11 and 3.12 warn).
_PY = sys.version_info[:3]
_CREATE_TASK_TAKES_KWARGS = _PY >= (3, 13, 3)
_TASK_FACTORY_GETS_NAME = _PY >= (3, 14) or _PY == (3, 13, 3)
_FACTORY_TASK_NEEDS_SET_NAME = _PY >= (3, 13)


def _io_ready(fut, attempt):
    """Reader/writer callback of Loop._wait_io: one non-blocking attempt."""
    if fut.done():
        return
    try:
        result = attempt()
    except (BlockingIOError, InterruptedError):
        return
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        fut.set_exception(exc)
    else:
        if result is not _AGAIN:
            fut.set_result(result)
    finally:
        # The exception's traceback keeps this frame alive: it must not keep
        # the future (which holds the exception) alive in turn.
        fut = None


class Loop(CoreLoop, NetworkMixin, SubprocessMixin, asyncio.AbstractEventLoop):
    """An asyncio event loop running on a tokio current-thread runtime."""

    def __init__(self):
        self._default_executor = None
        self._executor_shutdown_called = False
        self._exception_handler = None
        self._task_factory = None
        self._current_handle = None
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._signal_handlers = {}
        self._clock_resolution = 1e-09
        self.set_debug(coroutines._is_debug_mode())

    def __repr__(self):
        return (
            f"<{self.__class__.__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    # ------------------------------------------------------------------ state

    def _check_closed(self):
        if self.is_closed():
            raise RuntimeError("Event loop is closed")

    def _check_running(self):
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def _check_thread(self):
        thread_id = self._thread_id
        if thread_id is None:
            return
        if threading.get_ident() != thread_id:
            raise RuntimeError(
                "Non-thread-safe operation invoked on an event loop other than the current one"
            )

    def _check_callback(self, callback, method):
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError(f"coroutines cannot be used with {method}()")
        if not callable(callback):
            raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")

    def _timer_handle_cancelled(self, handle):
        """asyncio API kept for code that calls it; the Rust heap keeps its own count."""

    # --------------------------------------------------------------- running

    def run_forever(self):
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        old_agen_hooks = sys.get_asyncgen_hooks()
        old_wakeup_fd = None
        try:
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            events._set_running_loop(self)
            if threading.current_thread() is threading.main_thread():
                # Signals must wake the loop while it sleeps with the GIL released.
                try:
                    old_wakeup_fd = signal.set_wakeup_fd(
                        self._signal_wakeup_fd(), warn_on_full_buffer=False
                    )
                except ValueError:
                    old_wakeup_fd = None
            self._run_forever_core()
        finally:
            if old_wakeup_fd is not None:
                try:
                    signal.set_wakeup_fd(old_wakeup_fd)
                except ValueError:
                    pass
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def run_until_complete(self, future):
        self._check_closed()
        self._check_running()
        new_task = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if new_task:
            # The caller cannot observe the task; it must not warn when destroyed.
            future._log_destroy_pending = False
        future.add_done_callback(_run_until_complete_cb)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                # Mark the exception retrieved: it propagates from here instead.
                future.exception()
            raise
        finally:
            future.remove_done_callback(_run_until_complete_cb)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def close(self):
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            logger.debug("Close %r", self)
        if self._signal_handlers:
            if sys.is_finalizing():
                warnings.warn(
                    f"Closing the loop {self!r} on interpreter shutdown "
                    f"stage, skipping signal handlers removal",
                    ResourceWarning,
                    source=self,
                )
                self._signal_handlers.clear()
            else:
                for sig in list(self._signal_handlers):
                    self.remove_signal_handler(sig)
        self._close_core()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    def __del__(self, _warn=warnings.warn):
        try:
            closed = self.is_closed()
        except Exception:
            return
        if not closed:
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # ----------------------------------------------------------------- debug

    def set_debug(self, enabled):
        self._set_debug_core(enabled)
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    def _set_coroutine_origin_tracking(self, enabled):
        if bool(enabled) == bool(self._coroutine_origin_tracking_enabled):
            return
        if enabled:
            self._coroutine_origin_tracking_saved_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(constants.DEBUG_STACK_DEPTH)
        else:
            sys.set_coroutine_origin_tracking_depth(self._coroutine_origin_tracking_saved_depth)
        self._coroutine_origin_tracking_enabled = enabled

    # ------------------------------------------------------- futures & tasks

    # create_future: CoreLoop's (src/futures.rs), futures.Future(loop=self)
    # without a Python frame.

    # create_task: CoreLoop's (src/fastcall.rs, src/futures.rs) makes the task
    # natively when there is no task factory, no debug mode and no keyword
    # beyond name/context; every other call comes here.
    def _create_task(self, coro, *, name=None, context=None, **kwargs):
        if kwargs and not _CREATE_TASK_TAKES_KWARGS:
            raise TypeError(
                f"Loop.create_task() got an unexpected keyword argument {next(iter(kwargs))!r}"
            )
        if self.is_closed():
            raise RuntimeError("Event loop is closed")
        factory = self._task_factory
        if factory is None:
            task = tasks.Task(coro, loop=self, name=name, context=context, **kwargs)
            if task._source_traceback:
                del task._source_traceback[-1]
            return task
        if context is not None:
            kwargs["context"] = context
        if _TASK_FACTORY_GETS_NAME:
            if name is not None:
                kwargs["name"] = name
            return factory(self, coro, **kwargs)
        task = factory(self, coro, **kwargs)
        if _FACTORY_TASK_NEEDS_SET_NAME:
            if name is not None:
                task.set_name(name)
        else:
            # Warns (DeprecationWarning) when the task has no set_name().
            tasks._set_task_name(task, name)
        return task

    # Argument errors name the public method, as before.
    _create_task.__qualname__ = "Loop.create_task"

    def set_task_factory(self, factory):
        if factory is not None and not callable(factory):
            raise TypeError("task factory must be a callable or None")
        self._task_factory = factory

    def get_task_factory(self):
        return self._task_factory

    # ------------------------------------------------------ async generators

    def _asyncgen_finalizer_hook(self, agen):
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    def _asyncgen_firstiter_hook(self, agen):
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                f"loop.shutdown_asyncgens() call",
                ResourceWarning,
                source=self,
            )
        self._asyncgens.add(agen)

    async def shutdown_asyncgens(self):
        self._asyncgens_shutdown_called = True
        if not len(self._asyncgens):
            return
        closing = list(self._asyncgens)
        self._asyncgens.clear()
        results = await tasks.gather(*[ag.aclose() for ag in closing], return_exceptions=True)
        for result, agen in zip(results, closing):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": f"an error occurred during closing of "
                        f"asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

    # -------------------------------------------------------------- executor

    def _check_default_executor(self):
        if self._executor_shutdown_called:
            raise RuntimeError("Executor shutdown has been called")

    def run_in_executor(self, executor, func, *args):
        self._check_closed()
        if self.get_debug():
            self._check_callback(func, "run_in_executor")
        if executor is None:
            executor = self._default_executor
            self._check_default_executor()
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        return futures.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor):
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor instance")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout=None):
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is None:
            return
        future = self.create_future()

        def join():
            try:
                executor.shutdown(wait=True)
                if not self.is_closed():
                    self.call_soon_threadsafe(_set_result_unless_done, future, None)
            except Exception as ex:
                if not self.is_closed():
                    self.call_soon_threadsafe(_set_exception_unless_done, future, ex)

        thread = threading.Thread(target=join, name="tokioloop-executor-shutdown")
        thread.start()
        try:
            await future
        finally:
            thread.join(timeout)
        if thread.is_alive():
            warnings.warn(
                "The executor did not finishing joining "
                f"its threads within {timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            executor.shutdown(wait=False)

    # ------------------------------------------------------ error handling

    def get_exception_handler(self):
        return self._exception_handler

    def set_exception_handler(self, handler):
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context):
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info = (type(exception), exception, exception.__traceback__) if exception is not None else False
        lines = [message]
        for key in sorted(context):
            if key in {"message", "exception"}:
                continue
            value = context[key]
            if key == "source_traceback":
                import traceback

                value = "Object created at (most recent call last):\n" + "".join(
                    traceback.format_list(value)
                ).rstrip()
            elif key == "handle_traceback":
                import traceback

                value = "Handle created at (most recent call last):\n" + "".join(
                    traceback.format_list(value)
                ).rstrip()
            else:
                value = repr(value)
            lines.append(f"{key}: {value}")
        # Looked up at call time: tests and tools patch asyncio.base_events.logger.
        _base_events.logger.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context):
        handler = self._exception_handler
        if handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error("Exception in default exception handler", exc_info=True)
            return
        try:
            ctx = None
            if sys.version_info >= (3, 12):
                # 3.12+ runs a custom handler in the context of what failed
                # (task, future or handle), so context variables are visible.
                thing = context.get("task") or context.get("future") or context.get("handle")
                if thing is not None and hasattr(thing, "get_context"):
                    ctx = thing.get_context()
            if ctx is not None and hasattr(ctx, "run"):
                ctx.run(handler, self, context)
            else:
                handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {
                        "message": "Unhandled error in exception handler",
                        "exception": exc,
                        "context": context,
                    }
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error(
                    "Exception in default exception handler while handling an "
                    "unexpected error in custom exception handler",
                    exc_info=True,
                )

    # --------------------------------------------------------------- signals

    def _check_signal(self, sig):
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def add_signal_handler(self, sig, callback, *args):
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("set_wakeup_fd only works in main thread of the main interpreter")
        handle = Handle(callback, args, self, None)
        previous = self._signal_handlers.get(sig)
        self._signal_handlers[sig] = handle
        loop_ref = weakref.ref(self)

        def deliver(signum, frame):
            loop = loop_ref()
            if loop is not None:
                loop._deliver_signal(signum)

        try:
            signal.signal(sig, deliver)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            if previous is None:
                del self._signal_handlers[sig]
            else:
                self._signal_handlers[sig] = previous
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise

    def _deliver_signal(self, sig):
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return
        if handle._cancelled:
            self.remove_signal_handler(sig)
        elif not self.is_closed():
            self._add_handle(handle)

    def remove_signal_handler(self, sig):
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught")
            raise
        return True

    # ---------------------------------------------------- low-level sockets

    def _check_nonblocking(self, sock):
        _check_plain_socket(sock)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    def _wait_io(self, sock, write, attempt):
        """A future resolved by retrying `attempt` whenever `sock` is ready.

        `attempt` raises BlockingIOError (or returns _AGAIN) while it cannot
        finish; its result or exception settles the future.
        """
        fut = self.create_future()
        fd = sock.fileno() if not isinstance(sock, int) else sock
        if write:
            self.add_writer(fd, _io_ready, fut, attempt)
        else:
            self.add_reader(fd, _io_ready, fut, attempt)
        handle = self._get_io_handle(fd, write)
        fut.add_done_callback(functools.partial(self._io_done, fd, write, handle))
        return fut

    def _io_done(self, fd, write, handle, fut):
        if handle is not None and not handle.cancelled():
            if write:
                self.remove_writer(fd)
            else:
                self.remove_reader(fd)

    # sock_recv, sock_recv_into, sock_sendall, sock_recvfrom,
    # sock_recvfrom_into, sock_sendto, sock_accept and sock_connect run
    # natively (src/sock_ops.rs)
    # for plain socket.socket objects: the Rust side tries the syscall and
    # returns its result, or a future it completes when the fd is ready, or
    # NotImplemented for anything else (SSL sockets, duck-typed objects,
    # unusual arguments), which takes the pure-Python path below.

    async def sock_recv(self, sock, n):
        r = _sock_recv(self, sock, n)
        if type(r) is bytes:
            return r
        if r is NotImplemented:
            return await self._sock_recv_py(sock, n)
        try:
            return await r
        except exceptions.CancelledError:
            _sock_cancel(self, sock, r)
            raise

    async def sock_recv_into(self, sock, buf):
        r = _sock_recv_into(self, sock, buf)
        if type(r) is int:
            return r
        if r is NotImplemented:
            return await self._sock_recv_into_py(sock, buf)
        try:
            return await r
        except exceptions.CancelledError:
            _sock_cancel(self, sock, r)
            raise

    async def _sock_recv_py(self, sock, n):
        self._check_nonblocking(sock)
        try:
            return sock.recv(n)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._wait_io(sock, False, lambda: sock.recv(n))

    async def _sock_recv_into_py(self, sock, buf):
        self._check_nonblocking(sock)
        try:
            return sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._wait_io(sock, False, lambda: sock.recv_into(buf))

    async def sock_recvfrom(self, sock, bufsize):
        r = _sock_recvfrom(self, sock, bufsize)
        if type(r) is tuple:
            return r
        if r is NotImplemented:
            return await self._sock_recvfrom_py(sock, bufsize)
        try:
            return await r
        except exceptions.CancelledError:
            _sock_cancel(self, sock, r)
            raise

    async def _sock_recvfrom_py(self, sock, bufsize):
        self._check_nonblocking(sock)
        try:
            return sock.recvfrom(bufsize)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._wait_io(sock, False, lambda: sock.recvfrom(bufsize))

    async def sock_recvfrom_into(self, sock, buf, nbytes=0):
        r = _sock_recvfrom_into(self, sock, buf, nbytes)
        if type(r) is tuple:
            return r
        if r is NotImplemented:
            return await self._sock_recvfrom_into_py(sock, buf, nbytes)
        try:
            return await r
        except exceptions.CancelledError:
            _sock_cancel(self, sock, r)
            raise

    async def _sock_recvfrom_into_py(self, sock, buf, nbytes=0):
        self._check_nonblocking(sock)
        if not nbytes:
            nbytes = len(buf)
        try:
            return sock.recvfrom_into(buf, nbytes)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._wait_io(sock, False, lambda: sock.recvfrom_into(buf, nbytes))

    async def sock_sendall(self, sock, data):
        r = _sock_sendall(self, sock, data)
        if r is None:
            return
        if r is NotImplemented:
            return await self._sock_sendall_py(sock, data)
        try:
            return await r
        except exceptions.CancelledError:
            _sock_cancel(self, sock, r)
            raise

    async def _sock_sendall_py(self, sock, data):
        self._check_nonblocking(sock)
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data).cast("B")
        progress = [sent]

        def attempt():
            start = progress[0]
            progress[0] = start + sock.send(view[start:])
            if progress[0] == len(view):
                return None
            return _AGAIN

        await self._wait_io(sock, True, attempt)

    async def sock_sendto(self, sock, data, address):
        r = _sock_sendto(self, sock, data, address)
        if type(r) is int:
            return r
        if r is NotImplemented:
            return await self._sock_sendto_py(sock, data, address)
        try:
            return await r
        except exceptions.CancelledError:
            _sock_cancel(self, sock, r)
            raise

    async def _sock_sendto_py(self, sock, data, address):
        self._check_nonblocking(sock)
        try:
            return sock.sendto(data, address)
        except (BlockingIOError, InterruptedError):
            pass
        return await self._wait_io(sock, True, lambda: sock.sendto(data, address))

    async def sock_connect(self, sock, address):
        # Literal addresses go straight to Rust; others are resolved here
        # first (as the stdlib's _ensure_resolved does).
        r = _sock_connect(self, sock, address)
        if r is NotImplemented:
            self._check_nonblocking(sock)
            family = sock.family
            if family == socket.AF_INET or (_HAS_IPV6 and family == socket.AF_INET6):
                resolved = await self._ensure_resolved(
                    address, family=family, type=sock.type, proto=sock.proto, loop=self
                )
                address = resolved[0][4]
                r = _sock_connect(self, sock, address)
            if r is NotImplemented:
                return await self._sock_connect_py(sock, address)
        if r is None:
            return
        try:
            return await r
        except exceptions.CancelledError:
            _sock_cancel(self, sock, r)
            raise
        finally:
            r = None  # break the reference cycle through the traceback

    async def _sock_connect_py(self, sock, address):
        sock.fileno()  # the stdlib asks first: its error for odd objects
        try:
            sock.connect(address)
            return
        except (BlockingIOError, InterruptedError):
            pass

        def finish():
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == errno.EINPROGRESS or err == errno.EAGAIN:
                raise BlockingIOError
            if err != 0:
                raise OSError(err, f"Connect call failed {address}")
            return None

        fut = self._wait_io(sock, True, finish)
        try:
            return await fut
        finally:
            fut = None  # break the reference cycle through the traceback

    async def sock_accept(self, sock):
        r = _sock_accept(self, sock)
        if type(r) is tuple:
            return r
        if r is NotImplemented:
            return await self._sock_accept_py(sock)
        try:
            return await r
        except exceptions.CancelledError:
            _sock_cancel(self, sock, r)
            raise

    async def _sock_accept_py(self, sock):
        self._check_nonblocking(sock)
        sock.fileno()  # the stdlib asks first: its error for odd objects

        def attempt():
            conn, address = sock.accept()
            conn.setblocking(False)
            return conn, address

        try:
            return attempt()
        except (BlockingIOError, InterruptedError):
            pass
        return await self._wait_io(sock, False, attempt)

    # ------------------------------------------------------------------- DNS

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        return await self.run_in_executor(
            None, socket.getaddrinfo, host, port, family, type, proto, flags
        )

    async def getnameinfo(self, sockaddr, flags=0):
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)

    # ---------------------------------------------------------- statistics

    def stats(self):
        """Counters about this loop's work since it was created.

        callbacks, iterations, timers_scheduled, timers_cancelled,
        timers_pending, io_events, bytes_read / bytes_written (native
        transports), ready (current ready-queue length), longest_callback
        (seconds; measured only while debug mode or the blocking-call
        detector is on) and blocking_reports.
        """
        return self._stats()

    def set_blocking_detector(self, threshold=0.1, hook=None):
        """Report callbacks that block the loop for `threshold` seconds or more.

        Works without debug mode and costs nothing while off (threshold=None).
        A report names the callback (for a task: its name, coroutine and the
        line it reached) and goes to `hook(info)` if given, else to the
        "asyncio" logger as a warning. `info` holds callback, duration,
        location, created_at (debug mode only), handle, task and loop.
        """
        if threshold is not None:
            threshold = float(threshold)
        if hook is not None and not callable(hook):
            raise TypeError(f"hook must be callable or None, got {hook!r}")
        self._set_blocking_detector(threshold, hook)

    def get_blocking_detector(self):
        """(threshold, hook) of the blocking-call detector; threshold None when off."""
        return self._get_blocking_detector()


def _set_result_unless_done(fut, result):
    if not fut.done():
        fut.set_result(result)


def _set_exception_unless_done(fut, exc):
    if not fut.done():
        fut.set_exception(exc)
