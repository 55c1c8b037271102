"""Impossible `mofasa evaluate` settings fail at once (exit 2, one line naming the problem),
before any work, and the same check guards the Python API; an internal error is never reported
as a usage error. Needs no evaluation extra: validation runs before the checkers are loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mofasa.cli import main
from mofasa.data.prepare import UsageError
from mofasa.evaluation import runner
from mofasa.evaluation.compat import EvaluationUsageError
from mofasa.evaluation.runner import EvaluationConfig, evaluate

BAD = Path(__file__).resolve().parent / "data" / "bad"


def run_cli(*argv: object) -> int:
    return main([str(a) for a in argv])


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if evaluation starts (the checkers load first thing after validation)."""

    def started():
        raise AssertionError("work started before the settings were checked")

    monkeypatch.setattr(runner, "require_checkers", started)


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(BAD / "good_symmetry_p21c.cif", folder)
    return folder


@pytest.fixture
def no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


CASES = {
    "timeout_zero": (["--timeout", "0"], "--timeout must be > 0 seconds, not 0.0"),
    "timeout_nan": (["--timeout", "nan"], "--timeout must be > 0 seconds, not nan"),
    "reference_missing": (["--reference", "/nonexistent"],
                          "--reference /nonexistent: no such file or folder"),
    "cuda_absent": (["--relax", "--device", "cuda"], "--device cuda: CUDA is not available"),
    "device_unknown": (["--device", "gpu7"], "--device 'gpu7': unknown device"),
    "workers_zero": (["--workers", "0"], "--workers must be >= 1, not 0"),
    "threads_negative": (["--threads", "-2"], "--threads must be >= 1, not -2"),
    "max_atoms_negative": (["--max-atoms", "-1"], "--max-atoms must be >= 1, not -1"),
    "mode_unknown": (["--modes", "default,fast"], "--modes: unknown ['fast']"),
    "relax_timeout_zero": (["--relax-timeout", "0"], "--relax-timeout must be > 0 seconds"),
    "calculator_unknown": (["--calculator", "vasp"], "--calculator 'vasp': unknown"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_impossible_setting_is_a_usage_error(case, inputs, tmp_path, capsys, no_work, no_cuda):
    extra, message = CASES[case]
    out = tmp_path / "out"
    assert run_cli("evaluate", inputs, "--out", out, "--no-progress", *extra) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mofasa evaluate: error: "), lines
    assert message in lines[0]
    assert captured.out == "" and not out.exists()  # nothing was written


def test_unusable_input_is_a_usage_error(tmp_path, capsys, no_work):
    empty = tmp_path / "empty"
    empty.mkdir()
    for source, message in ((tmp_path / "nope", "no such file or folder"),
                            (empty, "folder holds no .cif files")):  # fmt: skip
        assert run_cli("evaluate", source, "--out", tmp_path / "out", "--no-progress") == 2
        err = capsys.readouterr().err.strip()
        assert err == f"mofasa evaluate: error: input {source}: {message}"


def test_reference_with_an_empty_split(inputs, tmp_path, no_work):
    ref = tmp_path / "prepared"
    ref.mkdir()
    (ref / "manifest.json").write_text(json.dumps({"splits": {"train": 3, "val": 0, "test": 0}}))
    with pytest.raises(EvaluationUsageError, match="split 'val' holds no structures"):
        evaluate(inputs, reference=ref, reference_split="val", progress=False)
    with pytest.raises(EvaluationUsageError, match="no split 'dev'"):
        evaluate(inputs, reference=ref, reference_split="dev", progress=False)


def test_python_api_gets_the_same_checks(inputs, no_work):
    with pytest.raises(EvaluationUsageError, match="--timeout must be > 0") as info:
        evaluate(inputs, timeout=0, progress=False)
    # a usage error for `mofasa`'s command line, and a ValueError as before for API users
    assert isinstance(info.value, UsageError) and isinstance(info.value, ValueError)
    EvaluationConfig().validate()  # the defaults are possible
    with pytest.raises(EvaluationUsageError, match="--n-requested must be >= 1"):
        EvaluationConfig(n_requested=0).validate()


def test_cuda_device_is_accepted_where_cuda_exists(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    EvaluationConfig(relax=True, device="cuda").validate()
    EvaluationConfig(relax=True, device="cuda:0").validate()
    with pytest.raises(EvaluationUsageError, match="has 1 CUDA device"):
        EvaluationConfig(relax=True, device="cuda:1").validate()


def test_internal_error_is_not_a_usage_error(inputs, tmp_path, monkeypatch):
    """A ValueError from deep inside a step (cKDTree's "data must be finite") is a bug to
    report with its traceback, not `error: ...` with exit 2 as if the user had erred."""
    monkeypatch.setattr(runner, "require_checkers", lambda: {})

    def broken_reader(*args, **kwargs):
        raise ValueError("data must be finite")

    monkeypatch.setattr(runner, "iter_inputs", broken_reader)
    with pytest.raises(ValueError, match="data must be finite"):
        run_cli("evaluate", inputs, "--out", tmp_path / "out", "--no-progress")
