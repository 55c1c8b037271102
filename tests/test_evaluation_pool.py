"""The isolated worker pool: a crash, hang or exception costs one job, recorded; setup errors stop
the run loudly."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mofasa.evaluation.compat import EvaluationSetupError
from mofasa.evaluation.pool import IsolatedPool

# ---- jobs (module level: workers import them by name)


def square(x: int) -> int:
    return x * x


def segfault(_: int) -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def hang(_: int) -> None:
    time.sleep(600)


def hard_exit(_: int) -> None:
    os._exit(3)


def raise_value_error(_: int) -> None:
    raise ValueError("bad structure")


def broken_install(_: int) -> None:
    raise EvaluationSetupError("pyeqeq cannot be imported")


def test_crash_hang_and_error_cost_one_job_each():
    jobs = [
        ("a", square, (3,)),
        ("segv", segfault, (0,)),
        ("b", square, (4,)),
        ("hang", hang, (0,), 1.5),
        ("exit", hard_exit, (0,)),
        ("err", raise_value_error, (0,)),
        ("c", square, (5,)),
    ]
    start = time.monotonic()
    with IsolatedPool(workers=2, timeout=60) as pool:
        results = {r.key: r for r in pool.imap(jobs)}
        assert pool.restarts == 3
    assert time.monotonic() - start < 40
    assert set(results) == {k for k, *_ in jobs}
    assert [results[k].value for k in "abc"] == [9, 16, 25]
    assert results["segv"].status == "crash"
    assert "SIGSEGV" in results["segv"].error
    assert results["hang"].status == "timeout"
    assert "1.5 s" in results["hang"].error
    assert results["exit"].status == "crash" and "code 3" in results["exit"].error
    assert results["err"].status == "error" and "bad structure" in results["err"].error


def test_setup_error_in_a_worker_is_raised():
    with IsolatedPool(workers=1, timeout=30) as pool, pytest.raises(EvaluationSetupError):
        list(pool.imap([("x", broken_install, (0,))]))


def test_pool_rejects_zero_workers():
    with pytest.raises(ValueError):
        IsolatedPool(workers=0)
