"""Deliberately broken loops used to self-test run_cpython.py's hang/crash
handling (``--factory selftest_loops:hanging`` etc.).  Not for real use."""
import asyncio
import os
import signal
import time


class _Hanging(asyncio.SelectorEventLoop):
    def create_server(self, *a, **kw):          # a hang inside one test
        time.sleep(10 ** 6)


class _Crashing(asyncio.SelectorEventLoop):
    def sock_sendall(self, *a, **kw):            # a hard crash inside one test
        os.kill(os.getpid(), signal.SIGSEGV)


def hanging():
    return _Hanging()


def crashing():
    return _Crashing()
