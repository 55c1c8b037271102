"""`evaluate`: validity, symmetry, novelty, uniqueness, relaxation, pores, topology -> records +
summary.

Flow, per chunk of inputs: read (parent) -> jobs in isolated workers (validity in each mode,
symmetry + novelty, relaxation, pores, topology; then validity of the relaxed structure) -> one
row per input in ``results.db``, written as soon as all of that input's jobs are done. After the
last chunk: uniqueness over all rows, ``summary.json``, plots and ``report.html``. A killed run
resumes from ``results.db``: inputs whose row exists are skipped, and each row is written in its
own transaction, so none is lost or written twice.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mofasa.data.crystal import Crystal
from mofasa.data.database import from_db_values, to_db_values
from mofasa.evaluation import jobs
from mofasa.evaluation.compat import EvaluationUsageError, checker_versions, require_checkers
from mofasa.evaluation.inputs import InputItem, is_ase_db, iter_inputs, reader_limits
from mofasa.evaluation.novelty import MATCHER_SETTINGS, Matcher, uniqueness
from mofasa.evaluation.pool import IsolatedPool, JobResult
from mofasa.evaluation.relax import RelaxSettings, calculator_name
from mofasa.evaluation.store import MemoryStore, ResultStore, open_store
from mofasa.evaluation.summary import PREFIXES, VALID_KEY, size_bin, summarize
from mofasa.evaluation.validity import MODES, SCREEN_ORDER

__all__ = ["EvaluationConfig", "EvaluationResult", "evaluate", "relax_structures"]

#: most atoms of an evaluated input (`EvaluationConfig.max_atoms`): keeps the protocol's ">500"
#: size bin while a 12,000-atom file (5 min per check) becomes a row at once
DEFAULT_MAX_ATOMS = 1000
_CALCULATORS = ("chgnet", "emt")


@dataclass
class EvaluationConfig:
    """Settings of one evaluation run (defaults follow the protocol).

    Attributes:
        reference: training data for novelty: a prepared dataset folder (or CIFs / ASE db).
        reference_split: split of a prepared reference.
        modes: validity modes ("default": headline, mofchecker defaults; "strict": as given).
        relax: relax each structure and re-check validity.
        calculator: None / "chgnet" (default), "emt", a factory, or an ASE calculator.
        fmax, steps: optimiser limits (eV/Å, steps).
        device: relaxation device (None: CUDA when present).
        pores: Zeo++ pore metrics (slow: 17-65 s per MOF).
        topology: RCSR net through moffragmentor + Systre (needs java; 5-15 s per MOF).
        topology_timeout: seconds per topology job (fragmentation + Systre).
        screen: validity checks stop at the first failing one (same verdicts, fewer flags).
        workers: worker processes.
        timeout: seconds per check job (validity, symmetry/novelty, pores).
        relax_timeout: seconds per relaxation job.
        threads: torch / OpenMP threads per worker.
        max_atoms: larger inputs are not checked: a row with reason ``too_many_atoms`` (None:
            no limit).
        n_requested: denominator of every rate (default: number of inputs).
        thumbnails: structures drawn in report.html (first N).
        report: write plots and report.html.
        progress: show a progress bar.
        chunk: inputs read ahead and queued at a time.
    """

    reference: str | None = None
    reference_split: str = "train"
    modes: tuple[str, ...] = ("default", "strict")
    relax: bool = False
    calculator: Any = None
    fmax: float = 0.02
    steps: int = 200
    device: str | None = None
    pores: bool = False
    topology: bool = False
    topology_timeout: float = 180.0
    screen: bool = False
    workers: int = 1
    timeout: float = 300.0
    relax_timeout: float = 1800.0
    threads: int = 1
    max_atoms: int | None = DEFAULT_MAX_ATOMS
    n_requested: int | None = None
    thumbnails: int = 100
    report: bool = True
    progress: bool = True
    chunk: int = 0  # 0: 4 x workers

    def validate(self) -> None:
        """Refuse impossible settings before any work (`evaluate` calls it first), so that none
        runs to a meaningless result (every check "timed out", novelty against nothing).

        Raises:
            EvaluationUsageError: naming the first impossible setting, in one line.
        """
        for problem in (_value_problem(self), _reference_problem(self), _device_problem(self)):
            if problem:
                raise EvaluationUsageError(problem)

    def fingerprint(self) -> dict[str, Any]:
        """Settings that must match for a run to resume in the same folder."""
        out = {
            "reference": str(self.reference) if self.reference else None,
            "reference_split": self.reference_split,
            "modes": list(self.modes),
            "relax": self.relax,
            "calculator": calculator_name(self.calculator) if self.relax else None,
            "fmax": self.fmax if self.relax else None,
            "steps": self.steps if self.relax else None,
            "pores": self.pores,
        }
        # only when on, so that folders written before these options existed still resume
        if self.topology:
            out["topology"] = True
        if self.screen:
            out["screen"] = True
        if self.max_atoms != DEFAULT_MAX_ATOMS:
            out["max_atoms"] = self.max_atoms
        return out


# ---------------------------------------------------------------------------- settings
def _positive(value: float | None) -> bool:
    """A finite number > 0 (NaN and inf are not)."""
    return value is not None and 0 < value < float("inf")


def _value_problem(c: EvaluationConfig) -> str | None:
    """The first setting with an impossible value, in words, or None."""
    unknown = sorted(set(c.modes) - set(MODES))
    checks = [
        (not c.modes or bool(unknown),
         f"--modes: unknown {unknown or 'empty'}; choose from {', '.join(MODES)}"),
        (c.workers < 1, f"--workers must be >= 1, not {c.workers}"),
        (c.threads < 1, f"--threads must be >= 1, not {c.threads}"),
        (not _positive(c.timeout), f"--timeout must be > 0 seconds, not {c.timeout}"),
        (not _positive(c.relax_timeout),
         f"--relax-timeout must be > 0 seconds, not {c.relax_timeout}"),
        (not _positive(c.topology_timeout),
         f"--topology-timeout must be > 0 seconds, not {c.topology_timeout}"),
        (c.max_atoms is not None and c.max_atoms < 1,
         f"--max-atoms must be >= 1, not {c.max_atoms}"),
        (c.n_requested is not None and c.n_requested < 1,
         f"--n-requested must be >= 1, not {c.n_requested}"),
        (c.thumbnails < 0, f"--thumbnails must be >= 0, not {c.thumbnails}"),
        (c.chunk < 0, f"chunk must be >= 0 (0: 4 x workers), not {c.chunk}"),
        (not _positive(c.fmax), f"--fmax must be > 0 eV/Å, not {c.fmax}"),
        (c.steps < 1, f"--steps must be >= 1, not {c.steps}"),
        (isinstance(c.calculator, str) and c.calculator.lower() not in _CALCULATORS,
         f"--calculator {c.calculator!r}: unknown; use {' or '.join(_CALCULATORS)}"),
    ]  # fmt: skip
    return next((message for bad, message in checks if bad), None)


def _reference_problem(c: EvaluationConfig) -> str | None:
    """Why ``c.reference`` cannot serve for novelty (missing, empty, no such split), or None."""
    if c.reference is None:
        return None
    path = Path(str(c.reference))
    where = f"--reference {path}"
    if not path.exists() and not str(c.reference).startswith("core-mof"):
        return f"{where}: no such file or folder"
    if (path / "manifest.json").is_file():
        splits = json.loads((path / "manifest.json").read_text()).get("splits", {})
        if c.reference_split not in splits:
            return f"{where}: no split {c.reference_split!r} (has {', '.join(splits)})"
        if not splits[c.reference_split]:
            return f"{where}: split {c.reference_split!r} holds no structures"
        return None
    return _source_problem(c.reference, where)


def _source_problem(source: str | Path, where: str) -> str | None:
    """Why a folder / archive / CIF / ASE db cannot be read at all, or None."""
    from mofasa.data.prepare import UsageError, iter_sources

    if is_ase_db(source):
        return None
    files = iter_sources(source)
    try:
        if next(files, None) is None:
            return f"{where}: holds no .cif files"
    except UsageError as exc:  # its messages name "--input PATH"
        return f"{where}:{str(exc).split(':', 1)[-1]}"
    finally:
        files.close()
    return None


def _device_problem(c: EvaluationConfig) -> str | None:
    """Why ``c.device`` cannot run the relaxation here (unknown, or no such device), or None."""
    if c.device is None:
        return None
    import torch

    try:
        device = torch.device(c.device)
    except (RuntimeError, ValueError):
        return f"--device {c.device!r}: unknown device (use cpu, cuda, cuda:N or mps)"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"--device {c.device}: CUDA is not available on this machine (use cpu)"
        if device.index is not None and device.index >= count:
            return f"--device {c.device}: this machine has {count} CUDA device(s)"
    elif device.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {c.device}: MPS is not available on this machine (use cpu)"
    elif device.type not in ("cpu", "cuda", "mps"):
        return f"--device {c.device!r}: unknown device (use cpu, cuda, cuda:N or mps)"
    return None


@dataclass
class EvaluationResult:
    """Records (one dict per input, in input order) and the summary."""

    records: list[dict[str, Any]]
    summary: dict[str, Any]
    out: Path | None = None


# ---------------------------------------------------------------------------- records
def _base_record(item: InputItem) -> dict[str, Any]:
    rec: dict[str, Any] = {"input_index": item.index, "name": item.name}
    if item.crystal is None:  # refused by the reader: no check runs on it
        rec["read_error"] = item.error or "unreadable"
        rec["read_reason"] = item.reason or "unreadable"
        rec["valid"] = False
        if item.num_atoms is not None:  # too many atoms: still counted in its size bin
            rec.update(num_atoms=item.num_atoms, size_bin=size_bin(item.num_atoms))
        return rec
    c = item.crystal
    rec.update(num_atoms=c.num_atoms, composition=c.formula, size_bin=size_bin(c.num_atoms))
    return rec


def _put_validity(rec: dict, prefix: str, res: JobResult) -> None:
    rec[prefix + "check_status"] = res.status
    rec[prefix + "check_seconds"] = round(res.seconds, 3)
    if res.status != "ok":
        rec[prefix + "check_errors"] = json.dumps({"job": res.error})
        rec[VALID_KEY[prefix]] = False
        return
    v = res.value
    rec[VALID_KEY[prefix]] = v["valid"]
    for flag, value in v["flags"].items():
        if value is not None:
            rec[prefix + flag] = value
    if v["errors"]:
        rec[prefix + "check_errors"] = json.dumps(v["errors"])
    if v.get("not_computed"):  # screening: absent flags were not run, which is not "passed"
        rec[prefix + "flags_not_computed"] = json.dumps(v["not_computed"])
    if v.get("stopped_at"):
        rec[prefix + "screen_stopped_at"] = v["stopped_at"]
    if v.get("skipped"):  # mofchecker not run (coincident atoms): why
        rec[prefix + "check_skipped"] = v["skipped"]
    if v.get("checked_atoms") is not None:
        rec[prefix + "checked_atoms"] = v["checked_atoms"]


def _put_topology(rec: dict, res: JobResult) -> None:
    rec["topology_seconds"] = round(res.seconds, 3)
    if res.status != "ok":  # timeout / crash / error of the job itself: no net, and why
        rec.update(topology="", topology_status=res.status, topology_error=res.error or "")
        return
    rec.update(res.value)


def _put_job(rec: dict, name: str, res: JobResult, keep: Iterable[str] | None = None) -> None:
    rec[f"{name}_status"] = res.status
    if res.status != "ok":
        rec[f"{name}_error"] = res.error or res.status
        return
    for key, value in res.value.items():
        if keep is None or key in keep:
            rec[key] = value


# ---------------------------------------------------------------------------- the run
class _Run:
    def __init__(self, config: EvaluationConfig, store: ResultStore, pool: IsolatedPool) -> None:
        self.config = config
        self.store = store
        self.pool = pool
        # stop a slow relaxation itself (kept, not converged) before the pool kills the job
        wall = max(config.relax_timeout - 60.0, 0.8 * config.relax_timeout)
        self.relax_settings = RelaxSettings(config.fmax, config.steps, wall, config.device)
        self.reference = (
            (str(config.reference), config.reference_split) if config.reference else None
        )

    def _jobs(self, item: InputItem) -> list[tuple]:
        """The first jobs of one readable input."""
        cfg, c, i = self.config, item.crystal, item.index
        out: list[tuple] = [
            ((i, "raw", m), jobs.validity_job, (c, m, cfg.screen)) for m in cfg.modes
        ]
        out.append(((i, "analysis"), jobs.analysis_job, (c, self.reference)))
        if cfg.relax:
            args = (c, cfg.calculator, self.relax_settings)
            out.append(((i, "relax"), jobs.relax_job, args, cfg.relax_timeout))
        if cfg.pores:
            out.append(((i, "pores"), jobs.pores_job, (c,)))
        if cfg.topology:  # its own time limit: a Java hang costs this one job
            args = (c, cfg.topology_timeout)
            out.append(((i, "topology"), jobs.topology_job, args, cfg.topology_timeout))
        return out

    def _take(self, rec: dict, res: JobResult, queue: deque, relaxed: dict) -> int:
        """Put one job result into its record; queue follow-up jobs and return their number."""
        i, kind = res.key[0], res.key[1]
        if kind in ("raw", "relaxed"):
            _put_validity(rec, PREFIXES[(kind, res.key[2])], res)
        elif kind in ("analysis", "pores"):
            _put_job(rec, kind, res)
        elif kind == "topology":
            _put_topology(rec, res)
        elif kind == "relax":
            _put_job(rec, "relax", res, keep=())
            if res.status == "ok" and _refuse_relaxed(rec, res.value["crystal"]):
                res = replace(res, status="error")
            if res.status == "ok":
                relaxed[i] = res.value["crystal"]
                rec.update(_relax_fields(res.value))
                for mode in self.config.modes:  # next in line: the row completes now, so a
                    args = (relaxed[i], mode, self.config.screen)  # killed run keeps it
                    queue.appendleft(((i, "relaxed", mode), jobs.validity_job, args))
                return len(self.config.modes)
            for mode in self.config.modes:  # not relaxed: not valid after relaxation
                rec[VALID_KEY[PREFIXES[("relaxed", mode)]]] = False
        return 0

    def process(self, items: list[InputItem]) -> list[dict[str, Any]]:
        """Evaluate ``items``; each row is written as soon as all its jobs are done."""
        records = {item.index: _base_record(item) for item in items}
        crystals = {item.index: item.crystal for item in items}
        queue: deque = deque()
        pending: dict[int, int] = {}
        for item in items:
            if item.crystal is None:
                self.store.add(records[item.index], None, None)
                continue
            first = self._jobs(item)
            queue.extend(first)
            pending[item.index] = len(first)
        relaxed: dict[int, Crystal] = {}
        if not queue:  # every input refused by the reader: no worker needs to start
            return [records[item.index] for item in items]
        for res in self.pool.imap(queue):
            i = res.key[0]
            pending[i] += self._take(records[i], res, queue, relaxed) - 1
            if pending[i] == 0:
                self.store.add(records[i], crystals[i], relaxed.pop(i, None))
        return [records[item.index] for item in items]


def _refuse_relaxed(rec: dict, crystal: Crystal) -> bool:
    """True (and the reason in ``rec``) when a relaxed structure fails the input checks (a
    relaxation that blew up: NaN positions, a collapsed cell); it is then not checked again."""
    from mofasa.data.checks import check_crystal
    from mofasa.data.errors import CrystalError

    try:
        check_crystal(crystal, reader_limits())
    except CrystalError as err:
        rec.update(relax_status="error", relax_error=f"relaxed structure: {err.reason}: "
                   f"{err.detail}"[:300])  # fmt: skip
        return True
    return False


def _relax_fields(v: dict[str, Any]) -> dict[str, Any]:
    """Record fields of a `relax.relax_crystal` result."""
    return {
        "relax_converged": v["converged"],
        "relax_steps": v["steps"],
        "relax_seconds": round(v["seconds"], 3),
        "relax_rmsd": round(v["rmsd"], 5),
        "relax_energy_per_atom": v["energy_per_atom"],
        "relax_fmax_final": v["fmax_final"],
        "relax_calculator": v["calculator"],
    }


def _chunks(items: Iterator[InputItem], size: int) -> Iterator[list[InputItem]]:
    chunk: list[InputItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _count_inputs(source: Any) -> int | None:
    """Number of inputs when cheap to know (lists, folders, ASE dbs), else None."""
    if isinstance(source, (list, tuple)):
        return len(source)
    path = Path(str(source))
    if path.is_dir():
        return sum(1 for p in path.rglob("*") if p.suffix.lower() == ".cif")
    if is_ase_db(path):
        from ase.db import connect

        return connect(str(path)).count()
    if path.suffix.lower() == ".cif":
        return 1
    return None


def _apply_uniqueness(store: ResultStore, records: list[dict]) -> None:
    """Uniqueness over all rows, in the parent. Refused inputs (``read_error``) take no part;
    a structure whose matcher step fails gets ``unique_error`` and counts as not unique."""
    crystals = [store.crystal(r) for r in records]
    errors: dict[int, str] = {}
    flags = uniqueness(crystals, Matcher(), errors=errors)
    for k, (rec, (unique, match)) in enumerate(zip(records, flags, strict=True)):
        rec["unique"] = bool(unique) if unique is not None and k not in errors else False
        if match is not None:
            rec["unique_match"] = records[match]["name"]
        if k in errors:
            rec["unique_error"] = errors[k]
        rec["vnu"] = bool(rec.get("valid") and rec.get("novel") and rec["unique"])
    store.update_many(records, ("unique", "unique_match", "unique_error", "vnu"))


def evaluate(
    source: str | Path | Iterable[Any],
    out: str | Path | None = None,
    config: EvaluationConfig | None = None,
    **overrides: Any,
) -> EvaluationResult:
    """Evaluate structures by the protocol.

    Args:
        source: folder or archive of CIFs, a CIF, an ASE database, or a list of `Crystal`
            (or ASE ``Atoms`` / pymatgen ``Structure``).
        out: output folder (``summary.json``, ``results.db``, plots, ``report.html``); None
            keeps everything in memory (no resume, no report).
        config: settings; keyword ``overrides`` replace its fields.

    Returns:
        `EvaluationResult` with one record per input, in input order, and the summary.

    Every input gets a row: one that cannot be read or fails the input checks (reason in
    ``read_reason``) counts as invalid, and a failure in one structure's step is recorded in its
    row; the run goes on and writes the summary and the report.

    Raises:
        EvaluationUsageError: an impossible setting or an unusable ``source`` / reference
            (before any work).
        EvaluationSetupError: the checkers are missing or broken (never a silent 0%).
    """
    config = replace(config or EvaluationConfig(), **overrides)
    config.validate()
    if isinstance(source, (str, Path)):
        problem = _source_problem(source, f"input {source}")
        if problem:
            raise EvaluationUsageError(problem)
    versions = require_checkers()
    if config.topology:  # before any structure: a missing java must not read as "no net"
        from mofasa.evaluation.topology import require_topology

        versions.update(require_topology())
    start = time.perf_counter()
    source_spec = str(source) if isinstance(source, (str, Path)) else "<objects>"
    store = _open_store(out, source_spec, config) if out else MemoryStore()
    done = store.done()
    total = _count_inputs(source)
    chunk = config.chunk or max(4, 4 * config.workers)
    bar = _progress(total, len(done), config.progress)
    try:
        with IsolatedPool(config.workers, config.timeout, config.threads) as pool:
            run = _Run(config, store, pool)
            items = iter_inputs(source, max_atoms=config.max_atoms)
            todo = (item for item in items if item.index not in done)
            for items in _chunks(todo, chunk):
                run.process(items)
                if bar is not None:
                    bar.update(len(items))
    finally:
        if bar is not None:
            bar.close()
    records = store.records()
    _apply_uniqueness(store, records)
    summary = summarize(records, config.n_requested, relaxed=config.relax, modes=config.modes,
                        screen=config.screen)  # fmt: skip
    wall = time.perf_counter() - start
    summary["settings"] = {
        **config.fingerprint(),
        "workers": config.workers,
        "timeout_s": config.timeout,
        "max_atoms": config.max_atoms,
        "topology_timeout_s": config.topology_timeout if config.topology else None,
        "screen_order": ["composition", *SCREEN_ORDER] if config.screen else None,
        "validity_modes": {m: MODES[m] or "mofchecker constructor defaults" for m in config.modes},
        "matcher": MATCHER_SETTINGS,
        "source": source_spec,
    }
    summary["versions"] = {**checker_versions(), **versions}
    summary["timing"] = {
        "wall_s_this_session": round(wall, 2),
        "structures_this_session": len(records) - len(done),
        "structures_per_s": round((len(records) - len(done)) / wall, 4) if wall > 0 else None,
        "resumed_from": len(done),
    }
    result = EvaluationResult(records, summary, Path(out) if out else None)
    if out:
        _write_outputs(Path(out), records, summary, store, config)
    return result


def _open_store(out: str | Path, source: str, config: EvaluationConfig) -> ResultStore:
    try:
        return open_store(out, source, config.fingerprint())
    except ValueError as exc:  # a folder holding another run: the user's to resolve
        raise EvaluationUsageError(str(exc)) from None


def _write_outputs(
    out: Path, records: list[dict], summary: dict, store: ResultStore, config: EvaluationConfig
) -> None:
    """summary.json, then the report; a failing report is noted in the summary, not fatal
    (every figure is in summary.json and results.db already)."""
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    if not config.report:
        return
    from mofasa.evaluation.report import write_report

    try:
        write_report(out, records, summary, store, thumbnails=config.thumbnails)
    except Exception as exc:
        summary["report_error"] = f"{type(exc).__name__}: {exc}"[:300]
        path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
        print(f"mofasa evaluate: warning: report.html not written ({summary['report_error']})",
              file=sys.stderr)  # fmt: skip


def _progress(total: int | None, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="structure", desc="evaluate", dynamic_ncols=True)


def relax_structures(
    source: str | Path | Iterable[Any],
    out: str | Path,
    *,
    calculator: Any = None,
    fmax: float = 0.02,
    steps: int = 200,
    device: str | None = None,
    workers: int = 1,
    timeout: float = 1800.0,
    threads: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Relax structures only (``mofasa relax``): ``out/relaxed.db`` (ASE database, one row per
    input: the relaxed atoms, or the input atoms with ``relax_status`` != "ok"), ``out/cifs/``
    (relaxed CIFs) and ``out/summary.json``. Resumable like `evaluate`."""
    from ase import Atoms
    from ase.db import connect

    from mofasa.data.cif import write_cif

    out = Path(out)
    (out / "cifs").mkdir(parents=True, exist_ok=True)
    db = connect(str(out / "relaxed.db"), type="db")
    done = {int(r.get("input_index")) for r in db.select(include_data=False)}
    settings = RelaxSettings(fmax, steps, None, device)
    start = time.perf_counter()
    bar = _progress(_count_inputs(source), len(done), progress)
    try:
        with IsolatedPool(workers, timeout, threads) as pool:
            for items in _chunks(
                (i for i in iter_inputs(source) if i.index not in done), 4 * workers
            ):
                byindex = {item.index: item for item in items}
                todo = [(i.index, jobs.relax_job, (i.crystal, calculator, settings))
                        for i in items if i.crystal is not None]  # fmt: skip
                for item in items:
                    if item.crystal is None:
                        kv = {"input_index": item.index, "name": item.name}
                        kv.update(relax_status="unreadable", relax_error=item.error or "")
                        db.write(Atoms(), key_value_pairs=to_db_values(kv))
                for res in pool.imap(todo):  # each row as soon as its structure is done
                    item = byindex[res.key]
                    kv = {"input_index": item.index, "name": item.name, "relax_status": res.status}
                    atoms = item.crystal.to_ase()
                    if res.status != "ok":
                        kv["relax_error"] = res.error or ""
                    else:
                        atoms = res.value["crystal"].to_ase()
                        kv.update(_relax_fields(res.value))
                        cif = out / "cifs" / f"{item.index:06d}_{_safe(item.name)}.cif"
                        write_cif(res.value["crystal"], cif)
                    db.write(atoms, key_value_pairs=to_db_values(kv))
                if bar is not None:
                    bar.update(len(items))
    finally:
        if bar is not None:
            bar.close()
    from mofasa.evaluation.summary import _relaxation

    records = [from_db_values(r.key_value_pairs) for r in db.select(include_data=False)]
    summary = {
        "n_inputs": len(records),
        "relaxation": _relaxation(records),
        "settings": {
            "calculator": calculator_name(calculator),
            "fmax": fmax,
            "steps": steps,
            "optimizer": "FIRE",
            "filter": "FrechetCellFilter",
        },
        "wall_s_this_session": round(time.perf_counter() - start, 2),
        "versions": checker_versions(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))[:80]
