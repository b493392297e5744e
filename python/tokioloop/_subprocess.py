"""Subprocesses on tokioloop: ``subprocess_exec`` / ``subprocess_shell``.

The child is started with :class:`subprocess.Popen` (so every argument Popen
takes on POSIX works: cwd, env, close_fds, pass_fds, start_new_session,
process_group, user, group, extra_groups, umask, preexec_fn, restore_signals,
executable, pipesize...).  Its pipes are native Rust pipe transports
(``StreamTransport`` kind 1 = read pipe, kind 2 = write pipe) with the
stdlib's flow control.

Child exit is watched without a thread per child.  The watcher is chosen per
child, in this order:

1. ``pidfd``: ``os.pidfd_open(pid)`` registered with ``loop.add_reader``.  The
   pidfd turns readable once the child has exited; the child is then reaped
   with ``waitpid(pid, WNOHANG)``.  Works in any thread, touches no signal
   disposition and never reaps a child that is not ours.  Linux >= 5.3.
2. ``sigchld`` (only when pidfds are unavailable and the loop runs in the main
   thread, and SIGCHLD has no handler installed by someone else): a SIGCHLD
   handler installed through the loop's own signal handling
   (``loop.add_signal_handler``) that calls ``waitpid(pid, WNOHANG)`` for the
   pids this loop started -- and only those, so children started by other code
   (``subprocess.run`` in a thread, another loop) keep their exit status.  A
   1 s safety poll covers a handler replaced later by user code.  The handler
   is removed again when the loop has no child left.
3. ``thread`` (last resort: no pidfd, and not the main thread or SIGCHLD taken):
   a daemon thread blocked in ``Popen.wait()`` that hands the status back with
   ``call_soon_threadsafe`` -- what the stdlib's ThreadedChildWatcher does.

``TOKIOLOOP_CHILD_WATCHER=pidfd|sigchld|thread`` (or the module attribute
``CHILD_WATCHER``) forces one strategy where it can work (else the thread
watcher is used); ``auto`` (default) picks as above.  tokioloop never consults
asyncio's (deprecated) child watchers, like uvloop; a process-wide
``waitpid(-1)`` reaper installed by other code steals exit statuses (reported
as 255 with a warning, as the stdlib's own watchers do).

Event order is the stdlib's: ``connection_made`` first (after the pipe
protocols got theirs), then pipe data / ``pipe_connection_lost`` /
``process_exited`` as they happen, and ``connection_lost`` last, only once the
child has exited *and* every pipe has closed.  ``_wait()`` (``Process.wait()``)
returns the exit code at once when it is already known, otherwise when
``connection_lost`` has been delivered, as the stdlib does.
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import os
import signal
import subprocess
import threading
import typing
import warnings
import weakref

from asyncio import protocols, transports
from asyncio.log import logger

from ._transports import new_stream_transport


def _default_pipe_size():
    # 1 MiB, or less where the system allows less to unprivileged processes
    # (F_SETPIPE_SZ fails above /proc/sys/fs/pipe-max-size).
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return min(1 << 20, int(f.read()))
    except (OSError, ValueError):
        return -1


_DEFAULT_PIPE_SIZE = _default_pipe_size() if hasattr(fcntl, "F_SETPIPE_SZ") else -1

# Open pipes of this process enlarged by _enlarge_pipes (weakly held: a pipe
# file closed or collected no longer counts), at most this many at a time:
# 16 MiB of pipe buffers, a quarter of Linux's default per-user soft quota.
_MAX_ENLARGED_PIPES = 16
_enlarged_pipes: "weakref.WeakSet[typing.IO[bytes]]" = weakref.WeakSet()

__all__ = ("SubprocessMixin", "SubprocessTransport")

_READ_PIPE = 1
_WRITE_PIPE = 2

#: "auto", "pidfd", "sigchld" or "thread" (see the module docstring).
CHILD_WATCHER = os.environ.get("TOKIOLOOP_CHILD_WATCHER", "auto")

#: Seconds between the safety polls of the SIGCHLD watcher.
SIGCHLD_SAFETY_POLL = 1.0

_pidfd_supported = None
_NATIVE_PIPES_BY_CLASS = weakref.WeakKeyDictionary()


def _have_pidfd():
    """Whether pidfd_open works here (kernel, seccomp); probed once."""
    global _pidfd_supported
    if _pidfd_supported is None:
        ok = False
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            try:
                os.close(pidfd_open(os.getpid()))
                ok = True
            except OSError:
                ok = False
        _pidfd_supported = ok
    return _pidfd_supported


def _enlarge_pipes(proc):
    """Bigger pipes than the 64 KiB default, when the caller did not pick a
    size: a child streaming output (or input) blocks, and wakes the loop, 16x
    less often (100 MB from a child: about half the wall-clock time and CPU).
    The child still gets real pipes (a program can open /dev/stdout, unlike
    with the socketpairs uvloop uses); only their capacity differs.

    Done here rather than through Popen(pipesize=), which raises when the
    kernel refuses the size (an unprivileged user past
    /proc/sys/fs/pipe-user-pages-soft, 64 MiB of pipe buffers by default):
    a refused size leaves the pipe as the stdlib would have made it. The child
    may already be running, which is harmless: growing a pipe keeps its data.
    """
    # Enlarged pipes count against the user's pipe quota, shared with every
    # other process of that user (past pipe-user-pages-soft the kernel gives
    # new pipes 2 pages): only a bounded number of open pipes is enlarged.
    for f in [f for f in _enlarged_pipes if f.closed]:
        _enlarged_pipes.discard(f)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is None or len(_enlarged_pipes) >= _MAX_ENLARGED_PIPES:
            continue
        try:
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _DEFAULT_PIPE_SIZE)
        except (OSError, ValueError):
            continue
        _enlarged_pipes.add(pipe)


def _describe_stdio(value):
    if value == subprocess.PIPE:
        return "<pipe>"
    if value == subprocess.STDOUT:
        return "<stdout>"
    return repr(value)


# ---------------------------------------------------------------- pipe protocols


class _PipeEndpoint(protocols.BaseProtocol):
    """Protocol of one child pipe; forwards its events to the process transport."""

    def __init__(self, owner, fd):
        self.proc = owner  # the SubprocessTransport (None once disconnected)
        self.fd = fd
        self.pipe = None  # the pipe transport
        self.disconnected = False

    def __repr__(self):
        return f"<{self.__class__.__name__} fd={self.fd} pipe={self.pipe!r}>"

    def connection_made(self, transport):
        self.pipe = transport

    def connection_lost(self, exc):
        self.disconnected = True
        owner, self.proc = self.proc, None
        if owner is not None:
            owner._pipe_connection_lost(self.fd, exc)

    def pause_writing(self):
        owner = self.proc
        if owner is not None and owner._protocol is not None:
            owner._protocol.pause_writing()

    def resume_writing(self):
        owner = self.proc
        if owner is not None and owner._protocol is not None:
            owner._protocol.resume_writing()


class _ReadPipeEndpoint(_PipeEndpoint, protocols.Protocol):
    def data_received(self, data):
        owner = self.proc
        if owner is not None:
            owner._pipe_data_received(self.fd, data)


# ---------------------------------------------------------------- exit watchers


def _reap(transport):
    """Collect the child's exit status without blocking.

    Returns the return code (negative signal number when killed), or None while
    the child runs or while another thread holds the Popen's waitpid lock.
    A status already consumed by someone else is taken from the Popen object
    when it has it, else reported as 255 with a warning, like the stdlib's
    child watchers.
    """
    proc = transport._proc
    if proc is None:
        return transport._returncode
    if proc.returncode is not None:
        return proc.returncode
    lock = getattr(proc, "_waitpid_lock", None)
    if lock is not None and not lock.acquire(False):
        return None
    try:
        if proc.returncode is not None:
            return proc.returncode
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            logger.warning(
                "child process pid %d exit status already read: will report returncode 255",
                proc.pid,
            )
            proc.returncode = 255
            return 255
        if pid == 0:
            return None
        returncode = os.waitstatus_to_exitcode(status)
        proc.returncode = returncode
        return returncode
    finally:
        if lock is not None:
            lock.release()


class _PidfdWatch:
    """Exit watch through a pidfd in the loop's epoll set."""

    kind = "pidfd"

    def __init__(self, loop, transport, pidfd):
        self._loop = loop
        self._transport = transport
        self._fd = pidfd
        self._retry = None
        loop.add_reader(pidfd, self._on_ready)

    def _on_ready(self):
        transport = self._transport
        if transport is None:
            return
        returncode = _reap(transport)
        if returncode is None:
            # Readable means exited, but another thread is inside Popen.wait()
            # for this child: let it finish instead of spinning on the
            # level-triggered pidfd.
            self._loop.remove_reader(self._fd)
            self._retry = self._loop.call_later(0.005, self._rearm)
            return
        self.close()
        # One hop through the ready queue, like the stdlib's watchers
        # (call_soon_threadsafe(transport._process_exited, returncode)).
        self._loop.call_soon(transport._process_exited, returncode)

    def _rearm(self):
        self._retry = None
        if self._fd >= 0 and self._transport is not None:
            self._loop.add_reader(self._fd, self._on_ready)

    def send_signal(self, sig):
        if self._fd < 0:
            return False
        try:
            signal.pidfd_send_signal(self._fd, sig)
        except ProcessLookupError:
            pass
        return True

    def close(self):
        self._transport = None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        fd, self._fd = self._fd, -1
        if fd >= 0:
            if not self._loop.is_closed():
                self._loop.remove_reader(fd)
            os.close(fd)

    def __del__(self):
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class _SigchldWatcher:
    """Per-loop SIGCHLD-driven reaping of this loop's own children (main thread)."""

    kind = "sigchld"

    def __init__(self, loop):
        self._loop = loop
        self._children = {}
        self._installed = False
        self._timer = None

    def _is_ours(self):
        handle = getattr(self._loop, "_signal_handlers", {}).get(signal.SIGCHLD)
        return handle is not None and getattr(handle, "_callback", None) == self._poll

    def can_watch(self):
        if threading.current_thread() is not threading.main_thread():
            return False
        if self._installed and self._is_ours():
            return True
        if signal.SIGCHLD in getattr(self._loop, "_signal_handlers", {}):
            return False  # the application's own SIGCHLD handler: leave it alone
        current = signal.getsignal(signal.SIGCHLD)
        return current in (signal.SIG_DFL, None)

    def add(self, transport):
        loop = self._loop
        if not (self._installed and self._is_ours()):
            loop.add_signal_handler(signal.SIGCHLD, self._poll)
            self._installed = True
        self._children[transport._pid] = transport
        # The child may have exited before the handler was there.
        loop.call_soon(self._poll)
        if self._timer is None:
            self._timer = loop.call_later(SIGCHLD_SAFETY_POLL, self._safety_poll)

    def discard(self, pid):
        self._children.pop(pid, None)
        self._maybe_uninstall()

    def _safety_poll(self):
        self._timer = None
        self._poll()
        if self._children:
            self._timer = self._loop.call_later(SIGCHLD_SAFETY_POLL, self._safety_poll)

    def _poll(self):
        for pid, transport in list(self._children.items()):
            returncode = _reap(transport)
            if returncode is None:
                continue
            del self._children[pid]
            transport._watch = None
            self._loop.call_soon(transport._process_exited, returncode)
        self._maybe_uninstall()

    def _maybe_uninstall(self):
        if self._children:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._installed:
            self._installed = False
            if self._is_ours() and not self._loop.is_closed():
                self._loop.remove_signal_handler(signal.SIGCHLD)


class _SigchldWatch:
    kind = "sigchld"

    def __init__(self, watcher, pid):
        self._watcher = watcher
        self._pid = pid

    def send_signal(self, sig):
        return False

    def close(self):
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.discard(self._pid)


class _ThreadWatch:
    """Last resort: one daemon thread blocked in Popen.wait()."""

    kind = "thread"

    def __init__(self, loop, transport):
        self._loop = loop
        self._transport = transport
        proc = transport._proc
        thread = threading.Thread(
            target=self._wait,
            args=(proc,),
            name=f"tokioloop-waitpid-{proc.pid}",
            daemon=True,
        )
        thread.start()

    def _wait(self, proc):
        try:
            proc.wait()
        except BaseException:  # pragma: no cover - waitpid does not fail on our own child
            pass
        try:
            self._loop.call_soon_threadsafe(self._done)
        except RuntimeError:
            pass  # the loop is closed: the Popen object holds the status

    def _done(self):
        transport, self._transport = self._transport, None
        if transport is None:
            return
        returncode = _reap(transport)
        if returncode is None:  # pragma: no cover - Popen.wait() returned
            returncode = 255
        transport._process_exited(returncode)

    def send_signal(self, sig):
        return False

    def close(self):
        self._transport = None


# ---------------------------------------------------------------- the transport


class SubprocessTransport(transports.SubprocessTransport):
    """asyncio.SubprocessTransport for one child process of a tokioloop loop."""

    def __init__(
        self, loop, protocol, args, shell, stdin, stdout, stderr, bufsize,
        waiter=None, extra=None, **kwargs,
    ):
        super().__init__(extra)
        self._closed = False
        self._loop = loop
        self._protocol = protocol
        self._proc = None
        self._pid = None
        self._returncode = None
        self._exit_waiters = []
        # Events that arrive before protocol.connection_made() are held here.
        self._pending_calls = collections.deque()
        self._pipes = {}
        self._finished = False
        self._watch = None

        for fd, value in ((0, stdin), (1, stdout), (2, stderr)):
            if value == subprocess.PIPE:
                self._pipes[fd] = None

        enlarge = self._pipes and kwargs.get("pipesize", -1) == -1 and _DEFAULT_PIPE_SIZE > 0
        try:
            # Looked up at call time (tests patch subprocess.Popen).
            self._proc = subprocess.Popen(
                args, shell=shell, stdin=stdin, stdout=stdout, stderr=stderr,
                universal_newlines=False, bufsize=bufsize, **kwargs,
            )
        except BaseException:
            self.close()
            raise

        if enlarge:
            _enlarge_pipes(self._proc)
        self._pid = self._proc.pid
        self._extra["subprocess"] = self._proc
        if loop.get_debug():
            program = args if isinstance(args, (bytes, str)) else args[0]
            logger.debug("process %r created: pid %s", program, self._pid)

        try:
            self._watch = loop._subprocess_watch(self)
        except BaseException:
            # Nobody would ever reap the child: kill it and collect it now.
            self._closed = True
            self._abandon_child()
            raise
        # "pidfd", "sigchld" or "thread" (None: the child was gone already).
        self._watch_kind = getattr(self._watch, "kind", None)
        if loop._subprocess_native_pipes():
            self._connect_native_pipes(waiter)
        else:
            loop.create_task(self._connect_pipes_via_loop(waiter))

    # ------------------------------------------------------------- set-up

    def _abandon_child(self):
        proc = self._proc
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        try:
            proc.kill()
        except OSError:
            pass
        proc.wait()

    def _connect_native_pipes(self, waiter):
        loop = self._loop
        proc = self._proc
        try:
            for fd, pipe in ((0, proc.stdin), (1, proc.stdout), (2, proc.stderr)):
                if pipe is None:
                    continue
                if fd == 0:
                    endpoint = _PipeEndpoint(self, fd)
                    kind = _WRITE_PIPE
                else:
                    endpoint = _ReadPipeEndpoint(self, fd)
                    kind = _READ_PIPE
                transport = new_stream_transport(loop, pipe, endpoint, {"pipe": pipe}, None, kind)
                endpoint.pipe = transport
                self._pipes[fd] = endpoint
                loop.call_soon(endpoint.connection_made, transport)
                loop.call_soon(transport._attach_reader)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            loop.call_soon(self._pipes_connected, waiter, exc)
        else:
            loop.call_soon(self._pipes_connected, waiter, None)

    async def _connect_pipes_via_loop(self, waiter):
        """The stdlib's way: through the loop's public connect_*_pipe methods.

        Used only when those were overridden (subclass or instance attribute),
        so an override sees the child's pipes as with the stdlib loop.
        """
        loop = self._loop
        proc = self._proc
        try:
            if proc.stdin is not None:
                _, self._pipes[0] = await loop.connect_write_pipe(
                    lambda: _PipeEndpoint(self, 0), proc.stdin
                )
            if proc.stdout is not None:
                _, self._pipes[1] = await loop.connect_read_pipe(
                    lambda: _ReadPipeEndpoint(self, 1), proc.stdout
                )
            if proc.stderr is not None:
                _, self._pipes[2] = await loop.connect_read_pipe(
                    lambda: _ReadPipeEndpoint(self, 2), proc.stderr
                )
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._pipes_connected(waiter, exc)
        else:
            self._pipes_connected(waiter, None)

    def _pipes_connected(self, waiter, exc):
        loop = self._loop
        if exc is not None:
            # The protocol hears nothing more, but _wait() must still end.
            self._protocol = protocols.SubprocessProtocol()
        else:
            loop.call_soon(self._protocol.connection_made, self)
        pending, self._pending_calls = self._pending_calls, None
        for callback, args in pending:
            loop.call_soon(callback, *args)
        if waiter is not None and not waiter.cancelled():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    # ------------------------------------------------------------- public API

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._closed:
            info.append("closed")
        if self._pid is not None:
            info.append(f"pid={self._pid}")
        if self._returncode is not None:
            info.append(f"returncode={self._returncode}")
        elif self._pid is not None:
            info.append("running")
        else:
            info.append("not started")
        stdin = self._pipes.get(0)
        stdout = self._pipes.get(1)
        stderr = self._pipes.get(2)
        if stdin is not None:
            info.append(f"stdin={stdin.pipe}")
        if stdout is not None and stderr is stdout:
            info.append(f"stdout=stderr={stdout.pipe}")
        else:
            if stdout is not None:
                info.append(f"stdout={stdout.pipe}")
            if stderr is not None:
                info.append(f"stderr={stderr.pipe}")
        return "<{}>".format(" ".join(info))

    def get_pid(self):
        return self._pid

    def get_returncode(self):
        return self._returncode

    def get_pipe_transport(self, fd):
        if fd in self._pipes:
            return self._pipes[fd].pipe
        return None

    def set_protocol(self, protocol):
        self._protocol = protocol

    def get_protocol(self):
        return self._protocol

    def is_closing(self):
        return self._closed

    def close(self):
        if self._closed:
            return
        self._closed = True
        for endpoint in self._pipes.values():
            if endpoint is not None and endpoint.pipe is not None:
                endpoint.pipe.close()
        proc = self._proc
        # proc.poll() also notices a child whose status was read elsewhere
        # (Popen.wait()) before our watcher told us: it must not be killed.
        if proc is not None and self._returncode is None and proc.poll() is None:
            if self._loop.get_debug():
                logger.warning("Close running child process: kill %r", self)
            try:
                proc.kill()
            except (ProcessLookupError, PermissionError):
                pass
            # The watcher stays: the exit still has to be reported.

    def __del__(self, _warn=warnings.warn):
        if not getattr(self, "_closed", True):
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            loop = self._loop
            if loop is not None and loop.is_closed():
                # Pipe transports cannot schedule anything on a closed loop:
                # close the pipes' files directly.  A child still running is
                # killed; Popen.__del__ then leaves it to subprocess's own
                # reaping of abandoned children.
                self._closed = True
                for endpoint in self._pipes.values():
                    if endpoint is not None and endpoint.pipe is not None:
                        pipe = endpoint.pipe.get_extra_info("pipe")
                        if pipe is not None:
                            pipe.close()
                proc = self._proc
                if proc is not None and proc.poll() is None:
                    try:
                        proc.kill()
                    except OSError:
                        pass
                return
            self.close()

    def _check_proc(self):
        if self._proc is None:
            raise ProcessLookupError()

    def send_signal(self, signal):
        # Like the stdlib from 3.13 on: never poll/reap here, and a child that
        # has exited is silently left alone.  With a pidfd the signal cannot
        # reach a recycled pid.
        self._check_proc()
        if self._returncode is not None or self._proc.returncode is not None:
            return
        watch = self._watch
        if watch is not None and watch.send_signal(signal):
            return
        try:
            os.kill(self._proc.pid, signal)
        except ProcessLookupError:
            pass

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    # ------------------------------------------------------------- events

    def _call(self, callback, *args):
        if self._pending_calls is not None:
            self._pending_calls.append((callback, args))
        else:
            self._loop.call_soon(callback, *args)

    def _pipe_data_received(self, fd, data):
        self._call(self._protocol.pipe_data_received, fd, data)

    def _pipe_connection_lost(self, fd, exc):
        self._call(self._protocol.pipe_connection_lost, fd, exc)
        self._try_finish()

    def _process_exited(self, returncode):
        if self._returncode is not None:
            return
        self._watch = None
        if self._loop.get_debug():
            logger.info("%r exited with return code %r", self, returncode)
        self._returncode = returncode
        proc = self._proc
        if proc.returncode is None:
            proc.returncode = returncode
        self._call(self._protocol.process_exited)
        self._try_finish()

    async def _wait(self):
        """The exit code: at once if known, else once connection_lost ran."""
        if self._returncode is not None:
            return self._returncode
        waiter = self._loop.create_future()
        self._exit_waiters.append(waiter)
        return await waiter

    def _try_finish(self):
        if self._finished or self._returncode is None:
            return
        for endpoint in self._pipes.values():
            if endpoint is None or not endpoint.disconnected:
                return
        self._finished = True
        self._call(self._call_connection_lost, None)

    def _call_connection_lost(self, exc):
        try:
            self._protocol.connection_lost(exc)
        finally:
            waiters, self._exit_waiters = self._exit_waiters, None
            for waiter in waiters:
                if not waiter.cancelled():
                    waiter.set_result(self._returncode)
            self._loop = None
            self._proc = None
            self._protocol = None


# ---------------------------------------------------------------- the loop mixin


class SubprocessMixin:
    """subprocess_exec / subprocess_shell for tokioloop's Loop."""

    async def subprocess_shell(
        self, protocol_factory, cmd, *,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=False, shell=True, bufsize=0,
        encoding=None, errors=None, text=None, **kwargs,
    ):
        if not isinstance(cmd, (bytes, str)):
            raise ValueError("cmd must be a string")
        if universal_newlines:
            raise ValueError("universal_newlines must be False")
        if not shell:
            raise ValueError("shell must be True")
        _check_binary_mode(bufsize, text, encoding, errors)
        protocol = protocol_factory()
        debug_log = None
        if self.get_debug():
            # As the stdlib: the command line, but none of the other
            # arguments (env, input...), which may hold secrets.
            debug_log = f"run shell command {cmd!r}"
            self._log_subprocess(debug_log, stdin, stdout, stderr)
        transport = await self._make_subprocess_transport(
            protocol, cmd, True, stdin, stdout, stderr, bufsize, **kwargs
        )
        if debug_log is not None:
            logger.info("%s: %r", debug_log, transport)
        return transport, protocol

    async def subprocess_exec(
        self, protocol_factory, program, *args,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=False, shell=False, bufsize=0,
        encoding=None, errors=None, text=None, **kwargs,
    ):
        if universal_newlines:
            raise ValueError("universal_newlines must be False")
        if shell:
            raise ValueError("shell must be False")
        _check_binary_mode(bufsize, text, encoding, errors)
        popen_args = (program,) + args
        protocol = protocol_factory()
        debug_log = None
        if self.get_debug():
            debug_log = f"execute program {program!r}"
            self._log_subprocess(debug_log, stdin, stdout, stderr)
        transport = await self._make_subprocess_transport(
            protocol, popen_args, False, stdin, stdout, stderr, bufsize, **kwargs
        )
        if debug_log is not None:
            logger.info("%s: %r", debug_log, transport)
        return transport, protocol

    def _log_subprocess(self, msg, stdin, stdout, stderr):
        parts = [msg]
        if stdin is not None:
            parts.append(f"stdin={_describe_stdio(stdin)}")
        if stdout is not None and stderr == subprocess.STDOUT:
            parts.append(f"stdout=stderr={_describe_stdio(stdout)}")
        else:
            if stdout is not None:
                parts.append(f"stdout={_describe_stdio(stdout)}")
            if stderr is not None:
                parts.append(f"stderr={_describe_stdio(stderr)}")
        logger.debug(" ".join(parts))

    async def _make_subprocess_transport(
        self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs
    ):
        waiter = self.create_future()
        transport = SubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            waiter=waiter, extra=extra, **kwargs,
        )
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            # Cancelled (or the pipes failed): kill the child and wait for it,
            # so that nothing is left behind.
            transport.close()
            await transport._wait()
            raise
        return transport

    # ------------------------------------------------------------- helpers

    def _subprocess_native_pipes(self):
        """True unless connect_read_pipe/connect_write_pipe were overridden
        (by a subclass, or on the instance as CPython's tests do)."""
        own = self.__dict__
        if "connect_read_pipe" in own or "connect_write_pipe" in own:
            return False
        cls = type(self)
        native = _NATIVE_PIPES_BY_CLASS.get(cls)
        if native is None:
            native = True
            for name in ("connect_read_pipe", "connect_write_pipe"):
                for klass in cls.__mro__:
                    if name in klass.__dict__:
                        if not (
                            klass is asyncio.AbstractEventLoop
                            or klass.__module__.startswith("tokioloop.")
                        ):
                            native = False
                        break
            _NATIVE_PIPES_BY_CLASS[cls] = native
        return native

    def _subprocess_watch(self, transport):
        """Start watching the exit of transport's child; returns the watch."""
        mode = CHILD_WATCHER
        pid = transport._pid
        if mode in ("auto", "pidfd") and _have_pidfd():
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                # Reaped by someone else already: report it on the next turn.
                self.call_soon(_report_vanished, transport)
                return None
            except OSError:
                pass  # ENOSYS/EPERM (seccomp), EMFILE...: fall back
            else:
                return _PidfdWatch(self, transport, pidfd)
        if mode in ("auto", "sigchld"):
            watcher = self.__dict__.get("_subprocess_sigchld")
            if watcher is None:
                watcher = _SigchldWatcher(self)
                self.__dict__["_subprocess_sigchld"] = watcher
            if watcher.can_watch():
                watcher.add(transport)
                return _SigchldWatch(watcher, pid)
        # Forced modes that cannot be honoured here (pidfd_open failing, SIGCHLD
        # outside the main thread or taken) end up here too: the thread watcher
        # works everywhere.
        return _ThreadWatch(self, transport)


def _report_vanished(transport):
    returncode = _reap(transport)
    if returncode is None:  # pragma: no cover - pidfd_open said the pid is gone
        returncode = 255
    transport._process_exited(returncode)


def _check_binary_mode(bufsize, text, encoding, errors):
    if bufsize != 0:
        raise ValueError("bufsize must be 0")
    if text:
        raise ValueError("text must be False")
    if encoding is not None:
        raise ValueError("encoding must be None")
    if errors is not None:
        raise ValueError("errors must be None")
