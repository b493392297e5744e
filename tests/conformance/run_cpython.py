#!/usr/bin/env python3
"""Run CPython's own ``test.test_asyncio`` suite against tokioloop.

Two roles live in this one file:

* **driver** (default): for every selected test module it starts a *worker*
  subprocess with the interpreter under test (``--python``, default: the
  current one), enforces a per-module wall-clock timeout, restarts the worker
  after a hang/crash (skipping what already ran), compares the outcome with
  ``expected_failures_<X.Y>.txt`` and prints a per-module summary.

* **worker** (``--worker``): bootstraps the loop factory, imports one
  ``test.test_asyncio.<module>``, adds the loop-level mixin test classes bound
  to the loop under test, and runs everything with ``unittest``, streaming one
  JSON line per event to a results file.  A ``faulthandler`` watchdog
  (``dump_traceback_later(exit=True)``) is re-armed around every test so a
  hang kills the worker and is attributed to the test that hung.

How the loop under test gets in:

1. *Policy patch* -- the default policy **class** (``asyncio.DefaultEventLoopPolicy``,
   i.e. ``asyncio.unix_events._UnixDefaultEventLoopPolicy``) gets
   ``_loop_factory = staticmethod(factory)``.  Every module's
   ``tearDownModule`` calls ``set_event_loop_policy(None)`` which creates a fresh
   instance of that class, so patching the class (not an instance) survives.
   ``asyncio.new_event_loop()``, ``asyncio.run()``, ``asyncio.Runner()`` and
   ``IsolatedAsyncioTestCase`` all go through it.  Tests that construct
   ``asyncio.SelectorEventLoop()`` / ``test_utils.TestLoop`` / mocks of
   ``base_events`` directly are not affected and keep testing CPython's own
   code (they are still run, they just do not say anything about our loop).

2. *Mixins* -- for the loop-level mixins (``test_events.EventLoopTestsMixin``
   (+ ``UnixEventLoopTestsMixin``, ``SubprocessTestsMixin``),
   ``test_sock_lowlevel.BaseSockTestsMixin``, ``test_sendfile.SendfileTestsBase``
   (= ``SendfileMixin`` + ``SockSendfileMixin``), ``test_server.BaseStartServer``
   (via ``SelectorStartServerTests``, which adds a unix-socket test),
   ``test_buffered_proto.BaseTestBufferedProtocol``, ``test_sslproto.BaseStartTLS``)
   a ``Tokioloop*`` TestCase class is injected into the module, mirroring the
   module's own concrete ``SelectEventLoopTests``/``EPollEventLoopTests``/...
   classes, with ``create_event_loop``/``new_loop`` returning the loop under
   test.  The module's own selector/proactor concrete classes are dropped
   (they test CPython's selector loop; ``--keep-native`` keeps them).
   ``test_ssl.TestSSL`` and ``test_subprocess.SubprocessThreadedWatcherTests``
   (``SubprocessMixin``) already take their loop from the policy, so they run
   on the loop under test as they are; the other child-watcher variants of
   ``SubprocessMixin`` only with ``--variants``.

3. *Mirrors of mock/TestLoop-based classes* -- ``test_runners``
   (``RunTests``/``RunnerTests`` use mocked ``BaseEventLoop``s),
   ``test_pep492`` (same) and the ``test_tasks``/``test_futures`` classes whose
   ``setUp`` calls ``new_test_loop()`` (virtual-time ``test_utils.TestLoop``)
   get ``Tokioloop<Name>`` twins that use the loop under test
   (``new_test_loop(gen)`` with a virtual-time generator still returns a
   TestLoop).  The originals run too.  All twins pass on CPython's own loop
   (``--factory asyncio:SelectorEventLoop``, 3.11-3.13).

The summary's ``onloop`` column counts the tests that created at least one
loop under test -- the rest (``test_utils.TestLoop``, mocked ``BaseEventLoop``,
explicit ``SelectorEventLoop()``) exercise CPython's own code only.

Shim: CPython's ``test_utils.TestCase.close_loop`` reads the private
``loop._default_executor``; for loops without it (uvloop) the runner closes
the loop through public API instead (``--no-shims`` to disable).  tokioloop
has the attribute, so the shim is inactive for it.

Examples::

    python tests/conformance/run_cpython.py                       # default groups, tokioloop
    python tests/conformance/run_cpython.py --group all -j 2
    python tests/conformance/run_cpython.py --factory asyncio:SelectorEventLoop --group all
    python tests/conformance/run_cpython.py --factory uvloop:new_event_loop -m test_tasks
    python tests/conformance/run_cpython.py --python /root/.pyenv/versions/3.12.1/bin/python3.12
    python tests/conformance/run_cpython.py -m test_events -k 'test_create_connection*'
    python tests/conformance/run_cpython.py --update-expected      # (re)write the list

Expected-failures file format (one entry per line)::

    test_tasks.CTask_CFuture_Tests.test_foo  # reason
    test_sslproto.TokioloopStartTLSTests.*   # patterns (fnmatch) are allowed
    test_events.TokioloopEventLoopTests.test_bar  # SKIP: hangs (reason)

An entry whose reason starts with ``SKIP`` is not run at all (use it for
hangs/crashes that would cost a full timeout each); ``--run-skipped`` runs them.
"""

import argparse
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = 'test.test_asyncio'
DEFAULT_FACTORY = 'tokioloop:new_event_loop'

# --------------------------------------------------------------------------
# module selection
# --------------------------------------------------------------------------

GROUPS = {
    # modules that reach the loop only through the (patched) policy
    'core': [
        'test_tasks', 'test_futures', 'test_futures2', 'test_locks',
        'test_queues', 'test_timeouts', 'test_waitfor', 'test_taskgroups',
        'test_runners', 'test_context', 'test_pep492', 'test_threads',
        'test_base_events', 'test_eager_task_factory', 'test_staggered',
        'test_protocols', 'test_transports',
    ],
    # EventLoopTestsMixin (+ SubprocessTestsMixin) on the loop under test
    'events': ['test_events'],
    # networking: policy-based + mixins
    'net': [
        'test_sock_lowlevel', 'test_server', 'test_buffered_proto',
        'test_streams', 'test_sendfile',
    ],
    # TLS
    'tls': ['test_sslproto', 'test_ssl'],
    # subprocesses / unix specifics
    'subprocess': ['test_subprocess', 'test_unix_events'],
}
GROUPS['all'] = [m for g in ('core', 'events', 'net', 'tls', 'subprocess')
                 for m in GROUPS[g]]
GROUPS['default'] = GROUPS['all']

# Concrete classes of a module that pin CPython's own selector/proactor loop
# and are replaced by the Tokioloop* classes below (dropped unless
# --keep-native).  test_subprocess's Safe/Fast/Pidfd watcher variants are
# duplicates of SubprocessThreadedWatcherTests once the policy is patched (each
# re-runs the whole SubprocessMixin on the loop under test with another child
# watcher) -- run only with --variants.
NATIVE_CLASSES = {
    'test_events': ['SelectEventLoopTests', 'EPollEventLoopTests',
                    'PollEventLoopTests', 'KqueueEventLoopTests',
                    'ProactorEventLoopTests'],
    'test_sock_lowlevel': ['SelectEventLoopTests', 'EPollEventLoopTests',
                           'PollEventLoopTests', 'KqueueEventLoopTests',
                           'ProactorEventLoopTests'],
    'test_sendfile': ['SelectEventLoopTests', 'EPollEventLoopTests',
                      'PollEventLoopTests', 'KqueueEventLoopTests',
                      'ProactorEventLoopTests'],
    'test_server': ['SelectorStartServerTests', 'ProactorStartServerTests'],
    'test_buffered_proto': ['BufferedProtocolSelectorTests',
                            'BufferedProtocolProactorTests'],
    'test_sslproto': ['SelectorStartTLSTests', 'ProactorStartTLSTests'],
    'test_subprocess': ['SubprocessProactorTests'],
}
VARIANT_CLASSES = {
    'test_subprocess': ['SubprocessMultiLoopWatcherTests',
                        'SubprocessSafeWatcherTests',
                        'SubprocessFastWatcherTests',
                        'SubprocessPidfdWatcherTests'],
}


# --------------------------------------------------------------------------
# worker
# --------------------------------------------------------------------------

def resolve_factory(spec):
    import importlib
    modname, _, attr = spec.partition(':')
    mod = importlib.import_module(modname)
    obj = mod
    for part in (attr or 'new_event_loop').split('.'):
        obj = getattr(obj, part)
    return obj


def bootstrap(factory_spec):
    """sitecustomize-like: patch the default policy class before tests import."""
    import asyncio
    factory = resolve_factory(factory_spec)
    classes = set()
    for name in ('DefaultEventLoopPolicy', '_DefaultEventLoopPolicy'):
        cls = getattr(asyncio, name, None) or getattr(asyncio.events, name, None)
        if isinstance(cls, type):
            classes.add(cls)
    if sys.platform != 'win32':
        from asyncio import unix_events
        cls = getattr(unix_events, '_UnixDefaultEventLoopPolicy', None)
        if isinstance(cls, type):
            classes.add(cls)
    counted = _counting(factory)
    for cls in classes:
        cls._loop_factory = staticmethod(counted)
    # drop any policy instance created before the patch (there should be none)
    asyncio.set_event_loop_policy(None)
    return counted


LOOPS_CREATED = [0]


def _counting(factory):
    def new_loop_under_test():
        LOOPS_CREATED[0] += 1
        return factory()
    new_loop_under_test.wrapped = factory
    return new_loop_under_test


def install_shims():
    """Compatibility shims for CPython's *test helpers* (not for asyncio).

    ``test_utils.TestCase.close_loop`` reads the private
    ``loop._default_executor`` of every loop it closes; a loop that is not a
    ``BaseEventLoop`` (uvloop, tokioloop) would fail *every* such test in its
    cleanup.  For such loops do the same thing through public API.
    """
    from test.test_asyncio import utils as test_utils
    orig = test_utils.TestCase.close_loop

    def close_loop(loop):
        if hasattr(loop, '_default_executor'):
            return orig(loop)
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        # the child-watcher join of the original
        try:
            orig(_ClosedLoopProxy())
        except Exception:
            pass

    class _ClosedLoopProxy:
        _default_executor = None

        def is_closed(self):
            return True

        def close(self):
            pass

    test_utils.TestCase.close_loop = staticmethod(close_loop)


def make_loop_classes(modname, mod, factory):
    """Tokioloop* TestCase classes mirroring the module's concrete classes."""
    import unittest
    from test.test_asyncio import utils as test_utils

    def create_event_loop(self):
        return factory()

    new = {}

    def add(name, bases, ns=None):
        ns = dict(ns or {})
        ns['__module__'] = mod.__name__
        ns['__qualname__'] = name
        new[name] = type(name, tuple(bases), ns)

    if modname == 'test_events':
        # like EPollEventLoopTests: UnixEventLoopTestsMixin (installs a
        # SafeChildWatcher attached to the loop) + SubprocessTestsMixin.
        # On 3.14+ (no watchers) UnixEventLoopTestsMixin is absent.
        base = getattr(mod, 'UnixEventLoopTestsMixin', None) or mod.EventLoopTestsMixin
        if sys.platform == 'win32':
            base = mod.EventLoopTestsMixin
        add('TokioloopEventLoopTests',
            [base, mod.SubprocessTestsMixin, test_utils.TestCase],
            {'create_event_loop': create_event_loop})
    elif modname == 'test_sock_lowlevel':
        add('TokioloopEventLoopTests',
            [mod.BaseSockTestsMixin, test_utils.TestCase],
            {'create_event_loop': create_event_loop})
    elif modname == 'test_sendfile':
        base = getattr(mod, 'SendfileTestsBase', None)
        bases = [base] if base else [mod.SendfileMixin, mod.SockSendfileMixin]
        add('TokioloopEventLoopTests', bases + [test_utils.TestCase],
            {'create_event_loop': create_event_loop})
    elif modname == 'test_server':
        # SelectorStartServerTests = BaseStartServer + a unix-socket test;
        # subclass it so the extra test runs on our loop too.
        base = getattr(mod, 'SelectorStartServerTests', None)
        bases = [base] if base else [mod.BaseStartServer, unittest.TestCase]
        add('TokioloopStartServerTests', bases, {'new_loop': create_event_loop})
    elif modname == 'test_buffered_proto':
        add('TokioloopBufferedProtocolTests',
            [mod.BaseTestBufferedProtocol, unittest.TestCase],
            {'new_loop': create_event_loop})
    elif modname == 'test_sslproto':
        if getattr(mod, 'ssl', None) is not None:
            add('TokioloopStartTLSTests', [mod.BaseStartTLS, unittest.TestCase],
                {'new_loop': create_event_loop})
    elif modname == 'test_runners':
        # RunTests/RunnerTests drive asyncio.run()/Runner through a TestPolicy
        # whose loops are mocked BaseEventLoops (onloop = 0).  Mirror them
        # with the loop under test; BaseTest.tearDown checks that
        # shutdown_asyncgens() ran, so wrap it the same way new_loop() does.
        def new_loop(self):
            loop = factory()
            orig = loop.shutdown_asyncgens
            loop.shutdown_ag_run = False

            async def shutdown_asyncgens():
                loop.shutdown_ag_run = True
                await orig()
            loop.shutdown_asyncgens = shutdown_asyncgens
            return loop
        for base in ('RunTests', 'RunnerTests'):
            if hasattr(mod, base):
                add('Tokioloop' + base, [getattr(mod, base)], {'new_loop': new_loop})
    elif modname == 'test_pep492':
        # BaseTest.setUp uses a BaseEventLoop with a mocked selector; mirror
        # every concrete class with the loop under test instead.
        def setUp(self):
            test_utils.TestCase.setUp(self)
            self.loop = factory()
            self.set_event_loop(self.loop)
        for name, obj in sorted(vars(mod).items()):
            if (isinstance(obj, type) and issubclass(obj, mod.BaseTest)
                    and obj is not mod.BaseTest):
                add('Tokioloop' + name, [obj], {'setUp': setUp})
    elif modname == 'test_subprocess':
        # 3.11-3.13: SubprocessThreadedWatcherTests (the default watcher) gets
        # its loop from policy.new_event_loop(), i.e. the loop under test, so
        # it is kept as is; the other watcher variants are duplicates (see
        # VARIANT_CLASSES).  Without child watchers (3.14+) mirror the plain
        # SubprocessMixin setUp.
        if sys.platform != 'win32' and not hasattr(mod, 'SubprocessWatcherMixin'):
            def setUp(self):
                test_utils.TestCase.setUp(self)
                self.loop = factory()
                self.set_event_loop(self.loop)
            add('TokioloopSubprocessTests',
                [mod.SubprocessMixin, test_utils.TestCase], {'setUp': setUp})
    if modname in MIRROR_TESTLOOP:
        mirror_testloop_classes(mod, factory, add)
    return new


# Modules whose tests mostly run on test_utils.TestLoop (a virtual-time
# BaseEventLoop): their classes whose setUp() calls self.new_test_loop() are
# mirrored as Tokioloop<Name> with new_test_loop() returning the loop under
# test -- except when called with a virtual-time generator, which only
# TestLoop can honour.
MIRROR_TESTLOOP = {'test_tasks', 'test_futures'}
# ... but not these: they step the loop by reading the private loop._ready
MIRROR_EXCLUDE = {'FutureGatherTests', 'CoroutineGatherTests'}


def mirror_testloop_classes(mod, factory, add):
    import unittest
    from test.test_asyncio import utils as test_utils

    def uses_new_test_loop(cls):
        for klass in cls.__mro__:
            if klass.__module__ != mod.__name__:
                continue
            su = klass.__dict__.get('setUp')
            if su is not None and 'new_test_loop' in getattr(su, '__code__', None).co_names:
                return True
        return False

    def new_test_loop(self, gen=None):
        if gen is not None:
            return test_utils.TestCase.new_test_loop(self, gen)
        loop = factory()
        self.set_event_loop(loop)
        return loop

    for name, obj in sorted(vars(mod).items()):
        if (isinstance(obj, type) and issubclass(obj, test_utils.TestCase)
                and obj.__module__ == mod.__name__
                and not name.startswith('Tokioloop')
                and name not in MIRROR_EXCLUDE
                and any(a.startswith('test') for a in dir(obj))
                and uses_new_test_loop(obj)):
            add('Tokioloop' + name, [obj], {'new_test_loop': new_test_loop})


class JsonlResult:
    """unittest result that streams events as JSON lines (one file per worker)."""

    def __init__(self, path, timeout, prefix):
        import unittest
        import faulthandler
        self._unittest = unittest
        self._fh = faulthandler
        self.f = open(path, 'a', buffering=1)
        self.timeout = timeout
        self.prefix = prefix
        self.cur = None
        self.t0 = None
        self.outcome = None
        self.detail = ''

    def tid(self, test):
        tid = test.id()
        if tid.startswith(self.prefix):
            tid = tid[len(self.prefix):]
        return tid

    def emit(self, **kw):
        self.f.write(json.dumps(kw) + '\n')
        self.f.flush()

    def arm(self):
        self._fh.cancel_dump_traceback_later()
        self._fh.dump_traceback_later(self.timeout, exit=True)


def make_result_class():
    import unittest
    import traceback

    def _fmt(err):
        try:
            return ''.join(traceback.format_exception(*err))
        except Exception:
            return repr(err)

    def _normalize_holder(desc, prefix):
        # "setUpClass (test.test_asyncio.test_x.Cls)" -> "test_x.Cls.setUpClass"
        m = re.match(r'(\w+) \((.*)\)$', desc)
        if m:
            where = m.group(2)
            if where.startswith(prefix):
                where = where[len(prefix):]
            return '%s.%s' % (where, m.group(1))
        return desc

    class Result(unittest.TestResult):
        def __init__(self, jsonl, *a, **kw):
            super().__init__(*a, **kw)
            self.j = jsonl
            self._st = None

        def startTest(self, test):
            super().startTest(test)
            self._st = {'id': self.j.tid(test), 'outcome': 'pass',
                        'detail': '', 't0': time.monotonic(),
                        'loops0': LOOPS_CREATED[0]}
            self.j.emit(event='start', id=self._st['id'])
            self.j.arm()

        def stopTest(self, test):
            super().stopTest(test)
            st = self._st
            self._st = None
            if st is not None:
                self.j.emit(event='end', id=st['id'], outcome=st['outcome'],
                            detail=st['detail'][-6000:],
                            duration=round(time.monotonic() - st['t0'], 3),
                            loops=LOOPS_CREATED[0] - st['loops0'])
            # keep the watchdog armed between tests (class/module fixtures)
            self.j.arm()

        def _set(self, test, outcome, detail):
            tid = self.j.tid(test)
            if self._st is not None and self._st['id'] == tid:
                rank = {'pass': 0, 'skip': 1, 'xfail_ok': 1, 'fail': 2, 'error': 2,
                        'unexpected_success': 2}
                if rank.get(outcome, 2) >= rank.get(self._st['outcome'], 0):
                    if self._st['outcome'] in ('fail', 'error') and detail:
                        self._st['detail'] += '\n' + detail
                    else:
                        self._st['detail'] = detail
                    if rank.get(outcome, 2) > rank.get(self._st['outcome'], 0):
                        self._st['outcome'] = outcome
            else:
                # _ErrorHolder (setUpClass/setUpModule/tearDown* failures)
                if isinstance(test, unittest.case._SubTest):
                    tid = self.j.tid(test.test_case)
                else:
                    tid = _normalize_holder(str(test), self.j.prefix)
                self.j.emit(event='end', id=tid, outcome=outcome,
                            detail=detail[-6000:], duration=0)

        def addSuccess(self, test):
            super().addSuccess(test)

        def addError(self, test, err):
            super().addError(test, err)
            self._set(test, 'error', _fmt(err))

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self._set(test, 'fail', _fmt(err))

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            self._set(test, 'skip', str(reason))

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)
            self._set(test, 'xfail_ok', 'CPython @expectedFailure')

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            self._set(test, 'unexpected_success',
                      'unexpected success of a CPython @expectedFailure test')

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is not None:
                kind = 'fail' if issubclass(err[0], test.failureException) else 'error'
                self._set(test, kind, '[subtest %s]\n%s' % (subtest._subDescription(), _fmt(err)))

    return Result


def iter_tests(suite):
    import unittest
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


def worker_main(args):
    import faulthandler
    faulthandler.enable()
    # A shell starts background jobs with SIGINT ignored and Python then keeps
    # SIG_IGN: asyncio.Runner would not install its SIGINT handler and every
    # test interrupting itself with _thread.interrupt_main() would hang.
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # watchdog during bootstrap/import too
    faulthandler.dump_traceback_later(args.timeout, exit=True)

    results = open(args.results, 'a', buffering=1)

    def emit(**kw):
        results.write(json.dumps(kw) + '\n')
        results.flush()

    emit(event='worker', pid=os.getpid(), python=sys.version.split()[0])
    try:
        factory = bootstrap(args.factory)
        # a smoke check: the factory must give a usable loop, and the patched
        # policy must hand out the same kind of loop
        import asyncio
        loop = factory()
        loop.close()
        loop2 = asyncio.new_event_loop()
        loop2.close()
        asyncio.set_event_loop_policy(None)
        if type(loop2) is not type(loop):
            raise RuntimeError('policy patch ineffective: asyncio.new_event_loop() '
                               'returned %r, factory returns %r' % (type(loop2), type(loop)))
        LOOPS_CREATED[0] = 0
    except BaseException as e:  # noqa
        import traceback
        emit(event='fatal', kind='factory',
             detail='cannot create a loop with %s: %s' % (
                 args.factory, ''.join(traceback.format_exception(type(e), e, e.__traceback__))))
        return 3

    import importlib
    import unittest
    prefix = PKG + '.'
    modname = args.worker
    if not args.no_shims:
        install_shims()
    try:
        mod = importlib.import_module(prefix + modname)
    except unittest.SkipTest as e:
        emit(event='end', id=modname + '.<module>', outcome='skip',
             detail='module skipped: %s' % e, duration=0)
        emit(event='done')
        return 0
    except BaseException as e:  # noqa
        import traceback
        emit(event='end', id=modname + '.<module>', outcome='error',
             detail='import failed:\n' + ''.join(
                 traceback.format_exception(type(e), e, e.__traceback__)),
             duration=0)
        emit(event='done')
        return 0

    drop = set()
    if not args.keep_native:
        drop.update(NATIVE_CLASSES.get(modname, []))
    if not args.variants:
        drop.update(VARIANT_CLASSES.get(modname, []))
    for name, cls in make_loop_classes(modname, mod, factory).items():
        setattr(mod, name, cls)

    loader = unittest.TestLoader()
    suite = loader.loadTestsFromModule(mod)
    skip_ids = set()
    if args.skip_file and os.path.exists(args.skip_file):
        with open(args.skip_file) as f:
            skip_ids = {line.strip() for line in f if line.strip()}
    patterns = [p for p in (args.k or [])]

    selected = []
    excluded = 0
    for t in iter_tests(suite):
        tid = t.id()
        if tid.startswith(prefix):
            tid = tid[len(prefix):]
        parts = tid.split('.')
        if len(parts) >= 2 and parts[1] in drop:
            continue
        if tid in skip_ids:
            continue
        if any(fnmatch.fnmatchcase(tid, p) for p in (args.exclude or [])):
            excluded += 1
            continue
        if patterns and not any(fnmatch.fnmatchcase(tid, p) or
                                fnmatch.fnmatchcase(tid.split('.')[-1], p)
                                for p in patterns):
            continue
        selected.append(t)
    emit(event='selected', count=len(selected), excluded=excluded)

    jr = JsonlResult(args.results, args.timeout, prefix)
    Result = make_result_class()
    result = Result(jr)
    jr.arm()
    unittest.TestSuite(selected).run(result)
    # give interpreter shutdown the same watchdog (a hang there is a bug too)
    emit(event='done')
    jr.arm()
    jr.f.close()
    results.close()
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


# --------------------------------------------------------------------------
# expected failures
# --------------------------------------------------------------------------

class Expected:
    def __init__(self, path):
        self.path = path
        self.entries = []   # (pattern, reason, lineno)
        if path and os.path.exists(path):
            with open(path) as f:
                for i, line in enumerate(f, 1):
                    raw = line.rstrip('\n')
                    s = raw.strip()
                    if not s or s.startswith('#'):
                        continue
                    pat, _, reason = s.partition('#')
                    self.entries.append((pat.strip(), reason.strip(), i))

    def match(self, tid):
        for pat, reason, _ in self.entries:
            if pat == tid or (('*' in pat or '?' in pat or '[' in pat)
                              and fnmatch.fnmatchcase(tid, pat)):
                return pat, reason
        return None

    def skip_ids_for(self, module, run_skipped):
        """Exact ids (and patterns) whose reason starts with SKIP."""
        if run_skipped:
            return []
        return [pat for pat, reason, _ in self.entries
                if reason.upper().startswith('SKIP')
                and pat.split('.')[0] == module]


# --------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------

def first_line_of_error(detail):
    """A one-line summary of a failure: the final 'Exc: message' line of the
    traceback; a bare NotImplementedError names the loop method that raised."""
    if detail.startswith('[harness] '):
        return detail.splitlines()[0][len('[harness] '):][:200]
    lines = [l for l in detail.strip().splitlines() if l.strip()]
    exc_line = None
    idx = None
    for i in range(len(lines) - 1, -1, -1):
        l = lines[i]
        if re.match(r'^[\w.]+(Error|Exception|Failure|Exit|Interrupt|Warning|Timeout\w*|Cancelled\w*)\b', l) \
                or re.match(r'^[\w.]+: ', l):
            exc_line, idx = l.strip(), i
            break
    if exc_line is None:
        return (lines[-1].strip() if lines else '')[:200]
    if exc_line in ('NotImplementedError', 'NotImplementedError: '):
        for l in reversed(lines[:idx]):
            m = re.match(r'\s*File "([^"]+)", line \d+, in (\w+)', l)
            if m:
                where = os.path.basename(m.group(1))
                return 'NotImplementedError: %s() (%s)' % (m.group(2), where)
    return exc_line[:200]


_AREAS = [
    (('create_server', 'create_connection', 'connect_accepted_socket', 'sendfile'),
     'networking not implemented yet'),
    (('create_unix_server', 'create_unix_connection'), 'unix sockets not implemented yet'),
    (('create_datagram_endpoint',), 'UDP not implemented yet'),
    (('subprocess_exec', 'subprocess_shell'), 'subprocesses not implemented yet'),
    (('connect_read_pipe', 'connect_write_pipe'), 'pipes not implemented yet'),
    (('start_tls',), 'TLS not implemented yet'),
]


def auto_reason(detail):
    """Reason for a new expected-failures entry (reviewed by a human after)."""
    line = first_line_of_error(detail)
    m = re.match(r'NotImplementedError: (\w+)\(\) \(events\.py\)$', line)
    if m:
        for names, area in _AREAS:
            if m.group(1) in names:
                return '%s (%s)' % (area, m.group(1))
        return 'not implemented yet (%s)' % m.group(1)
    m = re.match(r"AttributeError: '\w+' object has no attribute '(_\w+)'", line)
    if m:
        return 'test uses private asyncio loop API %s' % m.group(1)
    return 'TODO: ' + line


def python_version_of(python):
    out = subprocess.run([python, '-c', 'import sys; print("%d.%d" % sys.version_info[:2]); print(sys.version.split()[0])'],
                         stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout.split()
    return out[0], out[1]


def check_factory(python, factory):
    modname = factory.partition(':')[0]
    code = ('import sys; sys.path.insert(0, %r); import run_cpython as r; '
            'f = r.resolve_factory(%r); l = f(); l.close()' % (HERE, factory))
    p = subprocess.run([python, '-c', code], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True,
                       cwd=tempfile.gettempdir(), timeout=120)
    if p.returncode != 0:
        tail = p.stdout.strip().splitlines()[-1:] or ['']
        return 'import %s / creating a loop with %s failed under %s: %s' % (
            modname, factory, python, tail[0])
    return None


def available_modules(python):
    code = ('import os, test.test_asyncio as t; '
            'print(" ".join(sorted(f[:-3] for f in os.listdir(os.path.dirname(t.__file__)) '
            'if f.startswith("test_") and f.endswith(".py"))))')
    p = subprocess.run([python, '-c', code], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True,
                       cwd=tempfile.gettempdir())
    return set(p.stdout.split())


class ModuleRun:
    def __init__(self, module):
        self.module = module
        self.tests = {}     # id -> (outcome, detail, duration)
        self.problems = []  # module-level problems (strings)
        self.elapsed = 0.0
        self.restarts = 0
        self.loops = {}     # id -> loops of the loop under test created by it
        self.deselected = 0


def run_module(module, opts, expected, log_dir):
    mr = ModuleRun(module)
    t_start = time.monotonic()
    results = os.path.join(log_dir, module + '.jsonl')
    skip_file = os.path.join(log_dir, module + '.skip')
    log_path = os.path.join(log_dir, module + '.log')
    for p in (results, skip_file, log_path):
        if os.path.exists(p):
            os.unlink(p)
    pre_skip = expected.skip_ids_for(module, opts.run_skipped)
    limit = opts.module_timeout
    if opts.deadline is not None:
        limit = round(max(1.0, min(limit, opts.deadline - t_start)), 1)

    def write_skip():
        with open(skip_file, 'w') as f:
            for tid in sorted(mr.tests):
                f.write(tid + '\n')

    env = dict(os.environ)
    env.pop('PYTHONPATH', None)
    env['PYTHONFAULTHANDLER'] = '1'
    env.setdefault('PYTHONUNBUFFERED', '1')
    env['TOKIOLOOP_CONFORMANCE'] = '1'

    attempts = 0
    while True:
        attempts += 1
        write_skip()
        offset = os.path.getsize(results) if os.path.exists(results) else 0
        cmd = [opts.python, os.path.join(HERE, 'run_cpython.py'), '--worker', module,
               '--factory', opts.factory, '--results', results,
               '--skip-file', skip_file, '--timeout', str(opts.timeout)]
        for p in opts.k or []:
            cmd += ['-k', p]
        for p in pre_skip:   # SKIP entries (ids or patterns): deselected in the worker
            cmd += ['--exclude', p]
        if opts.keep_native:
            cmd.append('--keep-native')
        if opts.variants:
            cmd.append('--variants')
        if opts.no_shims:
            cmd.append('--no-shims')
        remaining = limit - (time.monotonic() - t_start)
        with open(log_path, 'a') as log:
            log.write('\n===== attempt %d: %s\n' % (attempts, ' '.join(cmd)))
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL,
                                    cwd=opts.workdir, env=env,
                                    start_new_session=True)
            timed_out = False
            try:
                rc = proc.wait(timeout=max(remaining, 1))
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGABRT)  # faulthandler dumps stacks
                    proc.wait(timeout=10)
                except Exception:
                    pass
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except Exception:
                    pass
                rc = proc.wait()
            # reap anything left in the worker's session (leaked children)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except Exception:
                pass

        # parse new events
        in_progress = None
        done = False
        fatal = None
        progressed = False
        with open(results) if os.path.exists(results) else open(os.devnull) as f:
            f.seek(offset)
            for line in f:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                kind = ev.get('event')
                if kind == 'start':
                    in_progress = ev['id']
                elif kind == 'end':
                    if in_progress == ev['id']:
                        in_progress = None
                    prev = mr.tests.get(ev['id'])
                    if prev is None or prev[0] in ('pass', 'skip', 'xfail_ok'):
                        mr.tests[ev['id']] = (ev['outcome'], ev.get('detail', ''),
                                              ev.get('duration', 0))
                        mr.loops[ev['id']] = ev.get('loops', 0)
                    progressed = True
                elif kind == 'selected':
                    if attempts == 1:
                        mr.deselected = ev.get('excluded', 0)
                elif kind == 'done':
                    done = True
                elif kind == 'fatal':
                    fatal = ev
        log_tail = tail_file(log_path, 60)

        if fatal is not None:
            mr.problems.append('%s.<module>: %s' % (module, fatal.get('detail', '')[-2000:]))
            mr.tests[module + '.<module>'] = ('error', fatal.get('detail', ''), 0)
            break
        if in_progress is not None:
            why = ('hang: killed after module timeout %ss' % limit if timed_out
                   else describe_exit(rc, opts.timeout, log_tail))
            mr.tests[in_progress] = ('error', '[harness] ' + why + '\n--- worker output tail ---\n'
                                     + log_tail, opts.timeout)
            mr.restarts += 1
            if timed_out:
                mr.problems.append('%s: module timeout (%ss) while running %s'
                                   % (module, limit, in_progress))
                mr.tests[module + '.<module-timeout>'] = (
                    'error', '[harness] module exceeded %ss' % limit, 0)
                break
            if mr.restarts > opts.max_restarts:
                mr.problems.append('%s: too many hangs/crashes (%d), giving up'
                                   % (module, mr.restarts))
                mr.tests[module + '.<module-restarts>'] = (
                    'error', '[harness] gave up after %d hangs/crashes' % mr.restarts, 0)
                break
            continue  # restart, skipping what already ran
        if done:
            if rc != 0 or timed_out:
                why = ('hang at interpreter shutdown (killed after module timeout)' if timed_out
                       else 'worker finished all tests but exited with %s at shutdown (%s)'
                       % (rc, describe_exit(rc, opts.timeout, log_tail)))
                mr.tests[module + '.<shutdown>'] = ('error', '[harness] ' + why + '\n' + log_tail, 0)
            break
        # died/hung outside any test (fixtures, import, collection)
        why = ('module timeout (%ss)' % limit if timed_out
               else describe_exit(rc, opts.timeout, log_tail))
        if timed_out or not progressed or attempts > opts.max_restarts:
            mr.problems.append('%s: worker died outside a test: %s' % (module, why))
            mr.tests[module + '.<module>'] = ('error', '[harness] worker died outside a test: '
                                              + why + '\n' + log_tail, 0)
            break
        mr.restarts += 1
    mr.elapsed = time.monotonic() - t_start
    return mr


def describe_exit(rc, timeout, log_tail=''):
    if rc is None:
        return 'unknown exit'
    if rc == 1 and re.search(r'^Timeout \(\d+:\d\d:\d\d', log_tail, re.M):
        return 'hang: no progress for %ss (faulthandler watchdog)' % timeout
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except Exception:
            name = str(-rc)
        return 'crash: worker killed by %s' % name
    if rc == 1:
        return 'hang or crash: worker exited with 1 (faulthandler watchdog fires after %ss per test)' % timeout
    return 'worker exited with code %s' % rc


def tail_file(path, n):
    try:
        with open(path, errors='replace') as f:
            lines = f.readlines()
        return ''.join(lines[-n:])
    except OSError:
        return ''


def classify(mr, expected):
    """Return per-module counts and lists."""
    c = dict(run=0, passed=0, failed=0, xfail=0, unexpected=0, skipped=0, now_passing=0,
             onloop=sum(1 for n in mr.loops.values() if n), deselected=mr.deselected)
    unexpected, xfails, passing_matches = [], [], {}
    for tid, (outcome, detail, _dur) in sorted(mr.tests.items()):
        m = expected.match(tid)
        if outcome == 'skip':
            c['skipped'] += 1
            c['run'] += 1
            continue
        c['run'] += 1
        if outcome in ('pass', 'xfail_ok'):
            c['passed'] += 1
            if m:
                passing_matches.setdefault(m[0], []).append(tid)
        else:
            c['failed'] += 1
            if m:
                c['xfail'] += 1
                xfails.append((tid, m))
                passing_matches.setdefault(m[0], None)
                # an entry with any failing match is not "now passing"
                passing_matches[m[0]] = False
            else:
                c['unexpected'] += 1
                unexpected.append((tid, outcome, detail))
    now_passing = []
    for pat, val in passing_matches.items():
        if val:   # list of passing tests and no failing one
            now_passing.append((pat, val))
    c['now_passing'] = len(now_passing)
    return c, unexpected, xfails, now_passing


def expected_path_for(opts, pyver, for_writing=False):
    if opts.expected:
        return None if opts.expected == 'none' else opts.expected
    if opts.factory == DEFAULT_FACTORY:
        return os.path.join(HERE, 'expected_failures_%s.txt' % pyver)
    slug = re.sub(r'[^A-Za-z0-9]+', '_', opts.factory.partition(':')[0]).strip('_')
    p = os.path.join(HERE, 'expected_failures_%s_%s.txt' % (pyver, slug))
    return p if (for_writing or os.path.exists(p)) else None


def update_expected(path, runs, expected, modules_run):
    """Rewrite the list: keep entries (and reasons) for tests that still fail,
    drop entries that now pass, add new failures with an auto reason."""
    # re-read: someone may have edited the file while the suite ran
    expected = Expected(path)
    failing = {}
    for mr in runs:
        for tid, (outcome, detail, _d) in mr.tests.items():
            if outcome not in ('pass', 'skip', 'xfail_ok'):
                failing[tid] = detail
    kept = []
    covered = set()
    for pat, reason, _ in expected.entries:
        mod = pat.split('.')[0]
        if mod not in modules_run:
            kept.append((pat, reason))
            continue
        hits = [t for t in failing if t == pat or fnmatch.fnmatchcase(t, pat)]
        if hits or reason.upper().startswith('SKIP'):
            if pat in failing and 'not implemented yet (' in reason:
                # an auto reason that may be stale now that the API exists
                new_reason = auto_reason(failing[pat])
                if 'not implemented yet (' not in new_reason or new_reason not in reason:
                    reason = new_reason
            kept.append((pat, reason))
            covered.update(hits)
    for tid, detail in sorted(failing.items()):
        if tid in covered:
            continue
        kept.append((tid, auto_reason(detail).replace('#', '')))
    kept.sort(key=lambda x: x[0])
    header = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.startswith('#'):
                    header.append(line.rstrip('\n'))
                else:
                    break
    if not header:
        header = ['# Expected failures of CPython test.test_asyncio against tokioloop.',
                  '# One test id per line, then "  # reason".  fnmatch patterns allowed.',
                  '# A reason starting with SKIP means the test is not run at all.',
                  '# This list only shrinks: remove entries reported as "now passing".']
    width = min(max([len(p) for p, _ in kept] + [10]), 100)
    with open(path, 'w') as f:
        f.write('\n'.join(header) + '\n')
        for pat, reason in kept:
            f.write('%s  # %s\n' % (pat.ljust(width), reason))


def driver_main(opts):
    t0 = time.monotonic()
    opts.python = os.path.abspath(opts.python) if os.sep in opts.python else (
        shutil.which(opts.python) or opts.python)
    pyver, pyfull = python_version_of(opts.python)
    problem = check_factory(opts.python, opts.factory)
    if problem:
        print('SKIPPED: %s' % problem)
        return 4 if opts.require_loop else 0

    avail = available_modules(opts.python)
    modules = []
    for g in opts.group or []:
        for m in GROUPS[g]:
            if m not in modules:
                modules.append(m)
    for m in opts.modules or []:
        for mm in m.split(','):
            mm = mm.strip()
            if mm and not mm.startswith('test_'):
                mm = 'test_' + mm
            if mm and mm not in modules:
                modules.append(mm)
    if not modules:
        modules = list(GROUPS['default'])
    missing = [m for m in modules if m not in avail]
    modules = [m for m in modules if m in avail]

    exp_path = expected_path_for(opts, pyver)
    expected = Expected(exp_path)
    log_dir = opts.log_dir or tempfile.mkdtemp(prefix='tokioloop-conformance-')
    os.makedirs(log_dir, exist_ok=True)
    opts.workdir = os.path.join(log_dir, 'cwd')
    os.makedirs(opts.workdir, exist_ok=True)

    print('python %s (%s), factory %s' % (pyfull, opts.python, opts.factory))
    print('expected failures: %s (%d entries)' % (exp_path or '(none)', len(expected.entries)))
    print('logs: %s' % log_dir)
    if missing:
        print('not in this CPython: %s' % ', '.join(missing))
    sys.stdout.flush()

    opts.deadline = (t0 + opts.budget) if opts.budget else None
    runs = []
    lock = threading.Lock()
    queue = list(modules)

    def work():
        while True:
            with lock:
                if not queue:
                    return
                m = queue.pop(0)
            if opts.deadline is not None and time.monotonic() >= opts.deadline - 1:
                mr = ModuleRun(m)
                mr.problems.append('%s: not run, --budget %ss exhausted' % (m, opts.budget))
                mr.tests[m + '.<not-run>'] = (
                    'error', '[harness] not run: --budget %ss exhausted' % opts.budget, 0)
            else:
                try:
                    mr = run_module(m, opts, expected, log_dir)
                except Exception:
                    import traceback
                    mr = ModuleRun(m)
                    tb = traceback.format_exc()
                    mr.problems.append('%s: harness error: %s' % (m, tb.strip().splitlines()[-1]))
                    mr.tests[m + '.<harness>'] = ('error', '[harness] driver error\n' + tb, 0)
            with lock:
                runs.append(mr)
                c, unexp, _x, _np = classify(mr, expected)
                print('  %-24s %4d run %4d passed %4d failed (%d unexpected) %4d skipped  %6.1fs%s'
                      % (m, c['run'], c['passed'], c['failed'], c['unexpected'],
                         c['skipped'], mr.elapsed,
                         ('  [%d restarts]' % mr.restarts) if mr.restarts else ''))
                sys.stdout.flush()

    threads = [threading.Thread(target=work) for _ in range(max(1, opts.jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runs.sort(key=lambda r: modules.index(r.module))

    total = dict(run=0, passed=0, failed=0, xfail=0, unexpected=0, skipped=0, now_passing=0,
                 onloop=0, deselected=0)
    all_unexp, all_np, summary = [], [], []
    for mr in runs:
        c, unexp, xf, np_ = classify(mr, expected)
        for k in total:
            total[k] += c[k]
        all_unexp += unexp
        all_np += np_
        summary.append((mr, c))

    print()
    hdr = ('module', 'run', 'passed', 'failed', 'xfail', 'UNEXP', 'skip', 'SKIP*', 'onloop', 'time')
    fmt = '%-24s %6d %6d %6d %6d %6d %6d %6d %6d %7.1fs'
    print('%-24s %6s %6s %6s %6s %6s %6s %6s %6s %8s' % hdr)
    for mr, c in summary:
        print(fmt % (mr.module, c['run'], c['passed'], c['failed'], c['xfail'],
                     c['unexpected'], c['skipped'], c['deselected'], c['onloop'], mr.elapsed))
    print(fmt % ('TOTAL', total['run'], total['passed'], total['failed'], total['xfail'],
                 total['unexpected'], total['skipped'], total['deselected'], total['onloop'],
                 time.monotonic() - t0))
    print('(failed = xfail + UNEXP; xfail = listed in the expected-failures file; '
          'SKIP* = listed as SKIP, not run; onloop = tests that created >= 1 loop under test)')

    problems = [p for mr in runs for p in mr.problems]
    if problems:
        print('\nMODULE-LEVEL PROBLEMS:')
        for p in problems:
            print('  ' + p.splitlines()[0][:300])
    if all_np:
        print('\nNOW PASSING, remove from %s:' % (exp_path,))
        for pat, tids in all_np:
            print('  %s%s' % (pat, ('   (%d tests)' % len(tids)) if pat not in tids else ''))
    if all_unexp:
        print('\nUNEXPECTED FAILURES (%d):' % len(all_unexp))
        for tid, outcome, detail in all_unexp:
            print('  %s  [%s] %s' % (tid, outcome, first_line_of_error(detail)))
        if opts.verbose:
            for tid, outcome, detail in all_unexp:
                print('\n' + '=' * 70 + '\n%s [%s]\n' % (tid, outcome) + '-' * 70)
                print(detail.rstrip())

    if opts.json:
        data = {'python': pyfull, 'factory': opts.factory, 'expected_file': exp_path,
                'elapsed': time.monotonic() - t0, 'totals': total,
                'modules': {mr.module: dict(c, elapsed=mr.elapsed, restarts=mr.restarts,
                                            problems=mr.problems,
                                            tests={t: {'outcome': o, 'detail': d, 'duration': du}
                                                   for t, (o, d, du) in mr.tests.items()})
                            for mr, c in summary},
                'unexpected': [t for t, _o, _d in all_unexp],
                'now_passing': [p for p, _ in all_np]}
        with open(opts.json, 'w') as f:
            json.dump(data, f, indent=1)

    if opts.update_expected:
        path = exp_path or expected_path_for(opts, pyver, for_writing=True)
        if path is None:
            print('\n--update-expected: nothing to write with --expected none')
            return 1
        update_expected(path, runs, expected, {mr.module for mr in runs})
        print('\nwrote %s' % path)

    print()
    # plain closing line
    print('conformance: %d passed, %d failed, %d skipped' % (
        total['passed'], total['unexpected'], total['skipped']))
    if total['xfail']:
        print('(%d expected failures listed in %s)' % (total['xfail'], exp_path))
    if all_unexp:
        return 1
    if all_np and opts.strict:
        print('strict: expected failures now pass -- shrink the list')
        return 2
    return 0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--python', default=sys.executable,
                   help='interpreter under test (default: this one)')
    p.add_argument('--factory', default=DEFAULT_FACTORY,
                   help='"module:callable" returning a new loop (default %(default)s); '
                        'e.g. asyncio:SelectorEventLoop, uvloop:new_event_loop')
    p.add_argument('-g', '--group', action='append', choices=sorted(GROUPS),
                   help='module group(s): %s' % ', '.join(
                       '%s=[%s]' % (k, ' '.join(v)) for k, v in GROUPS.items()
                       if k not in ('all', 'default')))
    p.add_argument('-m', '--modules', action='append',
                   help='module(s), comma separated (test_ prefix optional)')
    p.add_argument('-k', action='append',
                   help='only test ids / method names matching this fnmatch pattern')
    p.add_argument('--timeout', type=float, default=60,
                   help='per-test timeout in seconds (faulthandler watchdog), default %(default)s')
    p.add_argument('--module-timeout', type=float, default=900,
                   help='wall-clock limit per module incl. restarts, default %(default)s')
    p.add_argument('--budget', type=float, default=0,
                   help='overall wall-clock budget in seconds: modules still queued '
                        'afterwards fail as "not run" (default: none)')
    p.add_argument('--max-restarts', type=int, default=15,
                   help='restarts per module after hangs/crashes (default %(default)s)')
    p.add_argument('-j', '--jobs', type=int, default=1, help='modules in parallel')
    p.add_argument('--expected', help='expected-failures file, or "none" '
                   '(default: expected_failures_<X.Y>.txt next to this script for tokioloop; '
                   'expected_failures_<X.Y>_<module>.txt for other factories if present)')
    p.add_argument('--update-expected', action='store_true',
                   help='rewrite the expected-failures file from this run')
    p.add_argument('--strict', action='store_true',
                   help='exit non-zero when listed failures now pass')
    p.add_argument('--run-skipped', action='store_true',
                   help='also run entries marked SKIP in the expected file')
    p.add_argument('--keep-native', action='store_true',
                   help="also run the modules' own Selector*/EPoll*/... classes")
    p.add_argument('--variants', action='store_true',
                   help='also run test_subprocess child-watcher variants on the loop under test')
    p.add_argument('--no-shims', action='store_true',
                   help='do not patch test_utils.TestCase.close_loop for loops without '
                        'the private _default_executor attribute')
    p.add_argument('--require-loop', action='store_true',
                   help='exit 4 (instead of skipping) when the factory cannot be imported')
    p.add_argument('--json', help='write a JSON report here')
    p.add_argument('--log-dir', help='directory for worker logs (default: a temp dir)')
    p.add_argument('-v', '--verbose', action='store_true', help='print tracebacks')
    # worker
    p.add_argument('--worker', help=argparse.SUPPRESS)
    p.add_argument('--results', help=argparse.SUPPRESS)
    p.add_argument('--skip-file', help=argparse.SUPPRESS)
    p.add_argument('--exclude', action='append', help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts.worker:
        return worker_main(opts)
    return driver_main(opts)


if __name__ == '__main__':
    sys.exit(main())
