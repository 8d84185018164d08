"""The contract every reader of user files is fuzzed against, and the budget of the fuzz tests.

A reader given any input returns a result or raises one of the library's errors
(:class:`~resdense.errors.ResdenseError`) whose message is one line; any other exception, a hang or a wrong
result fails the test. :func:`outcome` runs one call under that contract; :func:`case` counts a generated case for
its reader.

Budget: each test runs ``examples`` cases (the CI default, about two minutes for the whole module on two cores);
``RESDENSE_FUZZ_EXAMPLES=N`` runs N per test instead, and ``RESDENSE_FUZZ_SECONDS=S`` runs each test module for S
seconds (shared evenly by its tests). ``RESDENSE_FUZZ_REPORT=FILE`` writes the cases run per reader and the failed
tests to FILE (JSON) at the end of the session (``benchmarks/fuzz.py`` reads it).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

from resdense.errors import ResdenseError

# Cases run per reader in this process, the test module of each reader and the failed tests (written to
# $RESDENSE_FUZZ_REPORT by conftest.py).
CASES: Counter = Counter()
MODULE_OF: dict[str, str] = {}
FAILED: list[str] = []
# One call of a reader on a tiny input takes milliseconds; this long is a hang.
HANG_SECONDS = 30.0
# The settings all fuzz tests share: no deadline (the machine is shared, so wall time per case is no property of
# the reader; hangs are caught by :func:`outcome`), no example database (nothing written into the repository), and
# no health check on slow or large cases (files on disk are both).
settings.register_profile("resdense-fuzz", deadline=None, database=None, print_blob=True, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much, HealthCheck.large_base_example])
_TESTS_PER_MODULE: Counter = Counter()


def fuzz(examples: int):
    """Decorator of a ``@given`` test: the ``resdense-fuzz`` profile with ``examples`` cases (the CI budget), or
    ``$RESDENSE_FUZZ_EXAMPLES``; with ``$RESDENSE_FUZZ_SECONDS``, runs of a tenth of ``examples`` cases (each with a
    fresh seed) repeated until the test has used its share of the module's time."""
    seconds = float(os.environ.get("RESDENSE_FUZZ_SECONDS") or 0)
    n = max(5, examples // 10) if seconds else int(os.environ.get("RESDENSE_FUZZ_EXAMPLES") or examples)

    def decorate(test):
        test = settings(settings.get_profile("resdense-fuzz"), max_examples=n)(test)
        if not seconds:
            return test
        _TESTS_PER_MODULE[test.__module__] += 1

        @functools.wraps(test)
        def timed(*args, **kwargs):
            end = time.monotonic() + seconds / _TESTS_PER_MODULE[test.__module__]
            test(*args, **kwargs)
            while time.monotonic() < end:
                test(*args, **kwargs)

        return timed

    return decorate


class Hang(AssertionError):
    pass


def _alarm(signum, frame):
    raise Hang(f"no result after {HANG_SECONDS:g} s: the reader hangs")


def case(reader: str) -> None:
    """Count one generated case (one hypothesis example) for ``reader``."""
    CASES[reader] += 1
    MODULE_OF.setdefault(reader, sys._getframe(1).f_globals["__name__"])


def outcome(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` under the contract: its result, or the ResdenseError it raised (returned, after
    checking that its message is one non-empty line). Any other exception propagates and fails the test."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        return fn(*args, **kwargs)
    except ResdenseError as err:
        check_message(err)
        return err
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_message(err: BaseException | str) -> None:
    msg = str(err)
    assert msg.strip(), f"{type(err).__name__} with an empty message"
    assert "\n" not in msg and "\r" not in msg, f"{type(err).__name__} message is not one line: {msg!r}"


@contextlib.contextmanager
def scratch(base: Path) -> Iterator[Path]:
    """A fresh folder below ``base`` for one case, removed after it (hypothesis runs many cases per test, so the
    function-scoped ``tmp_path`` cannot be used)."""
    d = Path(tempfile.mkdtemp(dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
