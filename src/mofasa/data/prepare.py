"""`mofasa data prepare`: CIFs -> canonical, filtered, memory-mappable train/val/test arrays.

Layout of the output folder::

    manifest.json                 counts, histogram, elements, config, checksums, rejections
    {split}_numbers.npy           (A,) uint8 atomic numbers of all atoms of the split
    {split}_frac.npy              (A, 3) uint16 fractional coordinates, x * 65536 (0.5 mÅ at 30 Å)
    {split}_lattice.npy           (S, 6) float32 (a, b, c, alpha, beta, gamma), Å and degrees
    {split}_offsets.npy           (S + 1,) int64 start of each structure in the atom arrays
    {split}_ids.txt               one id per line

Work is done in chunks of `CHUNK` inputs; each finished chunk is saved under ``parts/`` at once,
so a killed run resumes where it stopped and nothing finished is lost.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import signal
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mofasa.data.canonical import (
    ANGLE_TOL_DEG,
    BOND_TOL,
    COORD_GRID,
    LENGTH_RTOL,
    NIGGLI_EPS,
    PRIMITIVE_SYMPREC,
    canonicalize,
)
from mofasa.data.checks import CheckLimits, read_checked_cif
from mofasa.data.crystal import Crystal
from mofasa.data.dataset import FRAC_SCALE
from mofasa.data.elements import SYMBOLS
from mofasa.data.errors import CrystalError
from mofasa.data.sizes import SIZE_BINS
from mofasa.data.split import SPLITS, hash_split
from mofasa.geometry.lattice import lattice_to_parameters

__all__ = ["FRAC_SCALE", "PrepareConfig", "UsageError", "iter_sources", "prepare_dataset"]

CHUNK = 512


class UsageError(RuntimeError):
    """A problem with the command's arguments (one line, no traceback)."""


#: PrepareConfig fields that change how a run goes, never which structures it keeps (a file that
#: hits ``file_timeout`` is the exception, and a rare one): left out of the resume comparisons
_OPERATIONAL = ("workers", "file_timeout")


@dataclass(frozen=True)
class PrepareConfig:
    """Settings of `prepare_dataset`.

    Attributes:
        max_atoms: most atoms in the primitive (canonical) cell.
        min_distance: Å; closer atoms are overlapping.
        max_length: Å; longest cell edge.
        symprec: Å; spglib tolerance of the primitive reduction.
        workers: processes (0: all cores).
        verify_checksums: compare each file with the index's sha256.
        max_input_atoms: most atoms in the cell as read, tested right after tokenising (atom-site
            rows) and after symmetry expansion, before any symmetry work: 8 x max_atoms, so a
            centred conventional cell (x2-x4) or a 2x2x2 supercell of an allowed structure still
            reaches the primitive reduction, while a 12,000-atom file costs ~0.1 s, not minutes.
        file_timeout: seconds one file may take (None: no limit); a slower file is rejected with
            reason ``timeout`` and the run goes on. QMOF files take ~0.1 s, 800 atoms ~0.3 s.
    """

    max_atoms: int = 500
    min_distance: float = 0.5
    max_length: float = 500.0
    symprec: float = PRIMITIVE_SYMPREC
    workers: int = 0  # 0: all cores
    verify_checksums: bool = True
    max_input_atoms: int = 4000
    file_timeout: float | None = 120.0

    def __post_init__(self) -> None:
        problems = [
            (self.max_atoms < 1, f"max_atoms must be >= 1, not {self.max_atoms}"),
            (self.max_input_atoms < self.max_atoms,
             f"max_input_atoms ({self.max_input_atoms}) must be >= max_atoms ({self.max_atoms})"),
            (not self.min_distance >= 0, f"min_distance must be >= 0, not {self.min_distance}"),
            (not self.max_length > 0, f"max_length must be > 0, not {self.max_length}"),
            (self.workers < 0, f"workers must be >= 0 (0: all cores), not {self.workers}"),
            (self.file_timeout is not None and not self.file_timeout > 0,
             f"file_timeout must be > 0 seconds (or None), not {self.file_timeout}"),
        ]  # fmt: skip
        for bad, message in problems:
            if bad:
                raise UsageError(message)


# ---------------------------------------------------------------------------- input sources
def iter_sources(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """Yield (name, CIF bytes) from a folder, a .tar[.gz|.xz|.bz2] archive, or ``core-mof``."""
    spec = str(path)
    if spec.startswith("core-mof"):
        yield from _iter_coremof(spec)
        return
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".cif")
        if not files:
            raise UsageError(f"--input {path}: folder holds no .cif files")
        for p in files:
            yield str(p.relative_to(path)), p.read_bytes()
        return
    if path.is_file() and tarfile.is_tarfile(path):
        yield from _iter_tar(path)
        return
    if path.is_file() and path.suffix.lower() == ".cif":
        yield path.name, path.read_bytes()
        return
    if not path.exists():
        raise UsageError(f"--input {path}: no such file or folder")
    raise UsageError(f"--input {path}: not a folder of CIFs, a .cif file or a tar archive")


def _iter_tar(path: Path) -> Iterator[tuple[str, bytes]]:
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(".cif"):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        yield member.name, handle.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UsageError(f"--input {path}: archive unreadable ({exc})") from exc


def _iter_coremof(spec: str) -> Iterator[tuple[str, bytes]]:
    """CoRE MOF 2019 from the optional PyPI package ``core-mof`` (``core-mof[:SUBSET]``)."""
    import importlib

    core_mof = None
    for module in ("CoRE_MOF", "core_mof"):  # the wheel's module is CoRE_MOF
        try:
            core_mof = importlib.import_module(module)
            break
        except ImportError:
            continue
    if core_mof is None:
        raise UsageError("--input core-mof: install the optional package `core-mof`")
    root = Path(core_mof.__file__).parent
    subset = spec.split(":", 1)[1].lower() if ":" in spec else ""
    archives = sorted(
        p for p in root.rglob("*") if p.is_file() and (p.suffix == ".zip" or tarfile.is_tarfile(p))
    )
    for arc in archives:
        if subset and subset not in arc.name.lower():
            continue
        if arc.suffix == ".zip":
            import zipfile

            with zipfile.ZipFile(arc) as zf:
                for name in sorted(zf.namelist()):
                    if name.lower().endswith(".cif"):
                        yield f"{arc.name}/{name}", zf.read(name)
        else:
            for name, data in _iter_tar(arc):
                yield f"{arc.name}/{name}", data


def _stem(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base[:-4] if base.lower().endswith(".cif") else base


# ---------------------------------------------------------------------------- one structure
class _FileTimeout(BaseException):
    """Raised by SIGALRM inside a slow file's processing; a BaseException so that the libraries'
    own ``except Exception`` fallbacks cannot swallow it."""


_ARMED: list[bool] = [False]


def _on_alarm(signum: int, frame: object) -> None:
    if _ARMED[0]:  # a signal that arrives after the file finished is ignored
        raise _FileTimeout


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise `_FileTimeout` in this thread after ``seconds`` (no limit off the main thread or
    without setitimer). Python code is interrupted at once; a long C call at its return."""
    usable = (
        seconds is not None and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )  # fmt: skip
    if not usable:
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    _ARMED[0] = True
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        _ARMED[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def process_one(
    name: str, data: bytes, expected_sha: str | None, config: PrepareConfig
) -> tuple[str, object]:
    """Parse, check and canonicalise one CIF: ('ok', Crystal) or ('rejected', (reason, detail)).

    A file that takes longer than ``config.file_timeout`` is rejected with reason ``timeout``.
    """
    try:
        with _time_limit(config.file_timeout):
            return "ok", _process(name, data, expected_sha, config)
    except _FileTimeout:
        return "rejected", ("timeout", f"took longer than file_timeout={config.file_timeout:g} s")
    except CrystalError as err:
        return "rejected", (err.reason, err.detail)
    except Exception as exc:  # a bug or a library crash must cost this structure only
        return "rejected", ("unreadable", f"{type(exc).__name__}: {exc}"[:300])


def _process(name: str, data: bytes, expected_sha: str | None, config: PrepareConfig) -> Crystal:
    if expected_sha and hashlib.sha256(data).hexdigest() != expected_sha:
        raise CrystalError("checksum_mismatch", "sha256 differs from the index")
    text = data.decode("utf-8", errors="replace")
    # the input-size limit comes first: the overlap test and the reduction grow with N^2
    limits = CheckLimits(config.max_input_atoms, config.min_distance, config.max_length)
    try:
        crystal = read_checked_cif(text, _stem(name), limits)
    except CrystalError as err:
        if err.reason != "too_many_atoms":
            raise
        detail = f"{err.num_atoms} atoms as read > max_input_atoms={config.max_input_atoms}"
        raise CrystalError("too_many_atoms", detail, num_atoms=err.num_atoms) from None
    crystal = canonicalize(crystal, symprec=config.symprec)
    if crystal.num_atoms > config.max_atoms:
        detail = f"{crystal.num_atoms} atoms > max_atoms={config.max_atoms}"
        raise CrystalError("too_many_atoms", detail, num_atoms=crystal.num_atoms)
    return crystal


def _worker(job: tuple[str, bytes, str | None, PrepareConfig]) -> tuple[str, str, object]:
    name, data, sha, config = job
    status, payload = process_one(name, data, sha, config)
    return name, status, payload


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe


# ---------------------------------------------------------------------------- chunks on disk
def _save_chunk(path: Path, results: list[tuple[str, str, object]], splits: dict) -> None:
    accepted = [(n, p) for n, s, p in results if s == "ok"]
    rejected = [
        {"source": n, "reason": p[0], "detail": p[1]} for n, s, p in results if s != "ok"
    ]
    crystals = [c for _, c in accepted]
    counts = np.array([c.num_atoms for c in crystals], dtype=np.int64)
    arrays = {
        "numbers": np.concatenate([c.numbers for c in crystals]).astype(np.uint8)
        if crystals
        else np.zeros(0, np.uint8),
        "frac": _quantise(np.concatenate([c.frac for c in crystals]))
        if crystals
        else np.zeros((0, 3), np.uint16),
        "lattice": np.array([lattice_to_parameters(c.lattice) for c in crystals], np.float32)
        .reshape(-1, 6),
        "counts": counts,
    }
    meta = {
        "ids": [c.id for c in crystals],
        "splits": [splits.get(c.id) or hash_split(c.id) for c in crystals],
        "rejected": rejected,
        "n_inputs": len(results),
    }
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)


def _quantise(frac: np.ndarray) -> np.ndarray:
    q = np.rint(frac * FRAC_SCALE).astype(np.int64) % FRAC_SCALE  # 0.99999.. wraps to 0
    return q.astype(np.uint16)


def _read_index(path: Path | None) -> tuple[dict[str, str], dict[str, str]]:
    if path is None:
        return {}, {}
    if not path.is_file():
        raise UsageError(f"--index {path}: no such file")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        key = next((k for k in ("qmof_id", "id", "name", "filename") if k in fields), None)
        if key is None or "split" not in fields:
            raise UsageError(f"--index {path}: needs an id column (qmof_id/id) and a split column")
        splits, shas = {}, {}
        for row in reader:
            ident = _stem(row[key])
            split = row["split"].strip().lower()
            if split not in SPLITS:
                raise UsageError(f"--index {path}: split {split!r} for {ident} is not {SPLITS}")
            splits[ident] = split
            if row.get("cif_sha256"):
                shas[ident] = row["cif_sha256"].strip()
    return splits, shas


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- driver
def prepare_dataset(
    input: str | Path,
    out: str | Path,
    *,
    index: str | Path | None = None,
    config: PrepareConfig | None = None,
    progress: bool = True,
) -> dict:
    """Run the whole pipeline; returns the manifest (also written to ``out/manifest.json``).

    Raises:
        UsageError: for an unusable ``input``, ``index`` or ``out``.
    """
    config = config or PrepareConfig()
    out = Path(out)
    parts = out / "parts"
    splits, shas = _read_index(Path(index) if index else None)
    _check_input(input)
    done = _finished_manifest(out, config, input, index)
    if done is not None:  # nothing to redo: the same command already finished here
        return done
    try:
        parts.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create ({exc.strerror})") from exc
    _check_resume_config(out, config, input, index)
    start = time.perf_counter()
    n_inputs = _run_chunks(input, parts, splits, shas, config, len(splits) or None, progress)
    manifest = _finalise(out, parts, config, input, index, n_inputs)
    manifest["wall_time_s"] = round(time.perf_counter() - start, 1)
    _write_json(out / "manifest.json", manifest)
    for p in parts.glob("chunk_*.npz"):
        p.unlink()
    (out / "parts" / "config.json").unlink(missing_ok=True)
    parts.rmdir()
    return manifest


def _check_input(input: str | Path) -> None:
    """Fail fast (before anything is written) on an unusable --input."""
    if next(iter_sources(input), None) is None:
        raise UsageError(f"--input {input}: holds no .cif files")


def _finished_manifest(out: Path, config: PrepareConfig, input: object, index: object
                       ) -> dict | None:
    """The manifest of a finished run of the same command in ``out``, else None.

    Raises:
        UsageError: ``out`` holds a finished dataset made with other settings or inputs.
    """
    path = out / "manifest.json"
    if not path.exists() or (out / "parts").exists():
        return None
    manifest = json.loads(path.read_text())
    have, want = _comparable(manifest.get("config", {}), config), _comparable({}, config)
    sources = _source_checksums(input, index)
    same_sources = all(manifest.get("sources", {}).get(k) == v
                       for k, v in sources.items() if k.endswith("sha256"))
    if have != want or not same_sources or ("input_sha256" not in sources
                                           and manifest["sources"]["input"] != str(input)):
        raise UsageError(f"--out {out}: holds a finished dataset made with other settings or "
                         "inputs; choose another --out or remove it")
    return manifest


def _comparable(stored: dict, config: PrepareConfig) -> dict:
    """The settings of ``stored`` (a manifest's or stamp's config) that decide which structures
    a run keeps, with ``config``'s value for fields it predates (written by an older version)."""
    current = asdict(config)
    out = {k: stored.get(k, v) for k, v in current.items()}
    for key in _OPERATIONAL:
        out.pop(key)
    return out


def _check_resume_config(out: Path, config: PrepareConfig, input: object, index: object) -> None:
    """Refuse to resume a run with different settings (its chunks would mix)."""
    stamp = {"config": _comparable({}, config), "input": str(input), "index": str(index)}
    path = out / "parts" / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        old["config"] = _comparable(old.get("config", {}), config)
        if old != stamp:
            raise UsageError(
                f"--out {out}: holds an unfinished run with other settings; remove {out / 'parts'}"
            )
    else:
        _write_json(path, stamp)


def _run_chunks(
    input: str | Path,
    parts: Path,
    splits: dict,
    shas: dict,
    config: PrepareConfig,
    total: int | None,
    progress: bool,
) -> int:
    import multiprocessing as mp

    from tqdm import tqdm

    workers = config.workers or os.cpu_count() or 1
    bar = tqdm(total=total, unit="cif", disable=not progress, desc="prepare", smoothing=0.05)
    ctx = mp.get_context("spawn" if os.name == "nt" else "forkserver")
    n_inputs = 0
    with ctx.Pool(workers, initializer=_init_worker) as pool:
        for k, chunk in enumerate(_chunks(iter_sources(input))):
            n_inputs += len(chunk)
            path = parts / f"chunk_{k:05d}.npz"
            if path.exists():  # finished in an earlier run
                bar.update(len(chunk))
                continue
            jobs = [(n, d, shas.get(_stem(n)) if config.verify_checksums else None, config)
                    for n, d in chunk]
            results = []
            for res in pool.imap(_worker, jobs, chunksize=8):
                results.append(res)
                bar.update(1)
            _save_chunk(path, results, splits)
    bar.close()
    return n_inputs


def _chunks(items: Iterator[tuple[str, bytes]]) -> Iterator[list[tuple[str, bytes]]]:
    chunk: list[tuple[str, bytes]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _finalise(
    out: Path, parts: Path, config: PrepareConfig, input: object, index: object, n_inputs: int
) -> dict:
    files = sorted(parts.glob("chunk_*.npz"))
    per_split: dict[str, dict[str, list]] = {s: {k: [] for k in ("numbers", "frac", "lattice",
                                                                 "counts", "ids")} for s in SPLITS}
    rejected: list[dict] = []
    for f in files:
        with np.load(f) as z:
            meta = json.loads(str(z["meta"]))
            rejected.extend(meta["rejected"])
            starts = np.concatenate([[0], np.cumsum(z["counts"])])
            for i, (ident, split) in enumerate(zip(meta["ids"], meta["splits"], strict=True)):
                d = per_split[split]
                d["numbers"].append(z["numbers"][starts[i] : starts[i + 1]])
                d["frac"].append(z["frac"][starts[i] : starts[i + 1]])
                d["lattice"].append(z["lattice"][i])
                d["counts"].append(int(z["counts"][i]))
                d["ids"].append(ident)
    for split, d in per_split.items():
        _write_split(out, split, d)
    return _manifest(per_split, rejected, config, input, index, n_inputs)


def _write_split(out: Path, split: str, d: dict) -> None:
    counts = np.array(d["counts"], dtype=np.int64)
    arrays = {
        "numbers": np.concatenate(d["numbers"]) if d["numbers"] else np.zeros(0, np.uint8),
        "frac": np.concatenate(d["frac"]) if d["frac"] else np.zeros((0, 3), np.uint16),
        "lattice": np.array(d["lattice"], np.float32).reshape(-1, 6),
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    }
    for key, arr in arrays.items():
        tmp = out / f"{split}_{key}.tmp.npy"
        np.save(tmp, arr)
        os.replace(tmp, out / f"{split}_{key}.npy")
    (out / f"{split}_ids.txt").write_text("".join(f"{i}\n" for i in d["ids"]))


def _manifest(
    per_split: dict, rejected: list, config: PrepareConfig, input: object, index: object,
    n_inputs: int,
) -> dict:
    from mofasa import __version__

    all_counts = [n for d in per_split.values() for n in d["counts"]]
    all_numbers = [a for d in per_split.values() for a in d["numbers"]]
    return {
        "format": "mofasa-prepared-v1",
        "mofasa_version": __version__,
        "n_inputs": n_inputs,
        "n_accepted": len(all_counts),
        "n_rejected": len(rejected),
        "splits": {s: len(d["counts"]) for s, d in per_split.items()},
        "rejected_by_reason": dict(Counter(r["reason"] for r in rejected).most_common()),
        "atom_count_histogram": _histograms(all_counts),
        "elements": _element_table(all_numbers),
        "config": {
            **asdict(config),
            "frac_scale": FRAC_SCALE,
            "canonical": {
                "primitive_symprec_A": config.symprec,
                "niggli_eps": NIGGLI_EPS,
                "length_rtol": LENGTH_RTOL,
                "angle_tol_deg": ANGLE_TOL_DEG,
                "coord_grid": COORD_GRID,
                "bond_tol_A": BOND_TOL,
            },
        },
        "sources": _source_checksums(input, index),
        "rejected": rejected,
    }


def _histograms(counts: list[int]) -> dict:
    counts_arr = np.asarray(counts, dtype=np.int64)
    edges = list(range(0, int(counts_arr.max(initial=0)) + 11, 10))
    hist, _ = np.histogram(counts_arr, bins=edges)
    protocol = {
        label: int(((counts_arr >= lo) & (counts_arr <= hi)).sum()) for label, lo, hi in SIZE_BINS
    }
    exact = dict(zip(*np.unique(counts_arr, return_counts=True), strict=True))
    return {
        "bin_width": 10,
        "bin_edges": edges,
        "counts": hist.tolist(),
        "protocol_bins": protocol,
        "per_n": {int(k): int(v) for k, v in exact.items()},
        "min": int(counts_arr.min()) if len(counts_arr) else 0,
        "median": float(np.median(counts_arr)) if len(counts_arr) else 0.0,
        "max": int(counts_arr.max()) if len(counts_arr) else 0,
    }


def _element_table(numbers: list[np.ndarray]) -> dict:
    atoms: Counter = Counter()
    structures: Counter = Counter()
    for arr in numbers:
        zs, cnt = np.unique(arr, return_counts=True)
        atoms.update(dict(zip(zs.tolist(), cnt.tolist(), strict=True)))
        structures.update(zs.tolist())
    return {
        SYMBOLS[z]: {"Z": int(z), "atoms": int(atoms[z]), "structures": int(structures[z])}
        for z in sorted(atoms)
    }


def _source_checksums(input: object, index: object) -> dict:
    out: dict = {"input": str(input)}
    path = Path(str(input))
    if path.is_file():
        out["input_sha256"] = _sha256_of(path)
    if index:
        out["index"] = str(index)
        out["index_sha256"] = _sha256_of(Path(str(index)))
    return out


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
