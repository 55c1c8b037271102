"""Shared fixtures: the example set in the repo and the QMOF archive beside it (../shared)."""

from __future__ import annotations

import tarfile
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "qmof_cifs"
SHARED_DATA = ROOT.parent / "shared" / "data"
QMOF_ARCHIVE = SHARED_DATA / "qmof_cifs.tar.xz"
QMOF_INDEX = SHARED_DATA / "qmof_index.csv"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if QMOF_ARCHIVE.is_file() and QMOF_INDEX.is_file():
        return
    skip = pytest.mark.skip(
        reason=f"shared_data: {SHARED_DATA} not found (QMOF archive lives beside the repo in CI)"
    )
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.cif"))


@pytest.fixture(scope="session")
def example_crystals(example_files: list[Path]) -> list:
    from mofasa.data import read_cif

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [read_cif(p) for p in example_files]


def read_archive_members(count: int, max_atoms: int = 200, skip: int = 0) -> list[tuple[str, str]]:
    """The first ``count`` CIFs (name, text) of the QMOF archive with at most ``max_atoms``."""
    import csv

    with open(QMOF_INDEX, newline="") as fh:
        sizes = {r["qmof_id"]: int(r["n_atoms"]) for r in csv.DictReader(fh)}
    out: list[tuple[str, str]] = []
    seen = 0
    with tarfile.open(QMOF_ARCHIVE, "r:xz") as tar:
        for member in tar:
            stem = Path(member.name).stem
            if not member.isfile() or sizes.get(stem, 10**9) > max_atoms:
                continue
            seen += 1
            if seen <= skip:
                continue
            out.append((stem, tar.extractfile(member).read().decode()))
            if len(out) == count:
                break
    return out


def prepare_examples(tmp_path_factory, count: int):
    """The first ``count`` example QMOF structures, prepared; val = train (validation logging
    needs a split)."""
    import shutil

    from mofasa.data.prepare import PrepareConfig, prepare_dataset

    src = tmp_path_factory.mktemp("cifs")
    for f in sorted(EXAMPLES.glob("*.cif"))[:count]:
        shutil.copy(f, src / f.name)
    out = tmp_path_factory.mktemp("prepared")
    prepare_dataset(src, out, config=PrepareConfig(workers=1), progress=False)
    for key in ("numbers", "frac", "lattice", "offsets"):
        shutil.copy(out / f"train_{key}.npy", out / f"val_{key}.npy")
    shutil.copy(out / "train_ids.txt", out / "val_ids.txt")
    return out
