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


def test_checks_of_a_relaxed_structure_jump_the_queue():
    """A row is written once its relaxed structure is checked: those follow-up jobs go first,
    so a long relaxation run writes rows as it goes (and a killed run keeps them)."""
    from collections import deque

    from mofasa.data.crystal import Crystal
    from mofasa.evaluation.pool import JobResult
    from mofasa.evaluation.runner import EvaluationConfig, _Run

    run = _Run(EvaluationConfig(modes=("default", "strict"), relax=True), None, None)
    queue = deque([((1, "raw", "default"), None, ()), ((1, "relax"), None, ())])
    crystal = Crystal.from_parameters([1], [[0.0, 0.0, 0.0]], (5.0, 5.0, 5.0, 90.0, 90.0, 90.0))
    value = {"crystal": crystal, "converged": True, "steps": 3, "seconds": 1.0, "rmsd": 0.1,
             "energy_per_atom": -1.0, "fmax_final": 0.01, "calculator": "emt"}
    added = run._take({}, JobResult((0, "relax"), "ok", value), queue, {})
    assert added == 2
    assert [job[0][:2] for job in list(queue)[:2]] == [(0, "relaxed"), (0, "relaxed")]
    assert queue[-1][0] == (1, "relax")
