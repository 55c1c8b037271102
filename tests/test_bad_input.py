"""Hostile input: every broken CIF in ``tests/data/bad`` is refused with its exact reason code,
good files (symmetry operations, uncertainties, CR line ends) are accepted, and `mofasa data
prepare` neither crashes nor loses a good structure on a folder that mixes them.

The corpus is made by ``tests/data/bad/make_corpus.py`` (mostly edited copies of real QMOF
CIFs from ``examples/``).
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from mofasa.cli import main
from mofasa.data import prepare
from mofasa.data.checks import CheckLimits, check_crystal
from mofasa.data.cif import read_cif
from mofasa.data.errors import REASONS, CrystalError
from mofasa.data.prepare import PrepareConfig, UsageError, iter_sources, prepare_dataset

BAD = Path(__file__).resolve().parent / "data" / "bad"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MAX_ATOMS = 100  # above every good file used here (<= 43 atoms), below too_many_atoms.cif (148)

#: corpus file -> reason code that `read_cif` + `check_crystal` (and `process_one`) must give
EXPECTED: dict[str, str] = {
    "unreadable_binary.cif": "unreadable",  # PNG magic + random bytes
    "unreadable_empty.cif": "unreadable",  # 0 bytes
    "unreadable_not_cif.cif": "unreadable",  # an XYZ file
    "truncated_mid_line.cif": "truncated",  # real CIF cut in the middle of an atom line
    "truncated_missing_atoms.cif": "truncated",  # cut at a line end: atoms < formula_sum
    "disordered_half_occupancy.cif": "disordered",  # C and N share a site, occupancy 0.5
    "unknown_element_Xx.cif": "unknown_element",
    "unknown_element_dummy_X.cif": "unknown_element",  # pymatgen DummySpecies
    "unknown_element_Z102.cif": "unknown_element",  # nobelium, beyond the Z <= 100 vocabulary
    "no_atoms.cif": "no_atoms",  # cell, symmetry, no atom_site loop
    "non_finite_nan_coordinate.cif": "non_finite",
    "non_finite_nan_cell.cif": "non_finite",  # b = nan
    "non_finite_nan_angle.cif": "non_finite",  # beta = nan
    "degenerate_zero_length.cif": "degenerate_cell",  # b = 0
    "degenerate_flat_angles.cif": "degenerate_cell",  # 60/60/120: coplanar vectors, P1 path
    "degenerate_flat_angles_p21c.cif": "degenerate_cell",  # same, through pymatgen's parser
    "degenerate_impossible_angles.cif": "degenerate_cell",  # 60/60/130: no real cell
    "degenerate_tiny_volume.cif": "degenerate_cell",  # c = 0.3 Å
    "huge_cell.cif": "huge_cell",  # b = 600 Å
    "overlapping_atoms.cif": "overlapping_atoms",  # real CIF plus an H 0.1 Å from another
    "too_many_atoms.cif": "too_many_atoms",  # real 148-atom QMOF structure, MAX_ATOMS = 100
}
#: good corpus files -> atom count after reading (symmetry expanded)
GOOD: dict[str, int] = {
    "good_symmetry_p21c.cif": 14,  # P2_1/c: 3 general sites x 4 + 1 site on -1 x 2
    "good_uncertainties.cif": 36,  # real CIF with 6.00465405(3), 0.1336(5), ...
    "good_cr_line_endings.cif": 36,  # real CIF with CR-only line ends (legal in CIF 1.1)
    "checksum_mismatch.cif": 28,  # a valid CIF: only its sha256 disagrees with the index
}
CHECKSUM_FILE = "checksum_mismatch.cif"
CHECKSUM_INDEX = BAD / "checksum_index.csv"
CONFIG = PrepareConfig(max_atoms=MAX_ATOMS, workers=1)


def _read_and_check(path: Path):
    return check_crystal(read_cif(path), CheckLimits(max_atoms=MAX_ATOMS))


def _index_sha(ident: str) -> str:
    with open(CHECKSUM_INDEX, newline="") as fh:
        return next(r["cif_sha256"] for r in csv.DictReader(fh) if r["qmof_id"] == ident)


def _small_examples(n: int) -> list[dict]:
    with open(EXAMPLES / "qmof_index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return sorted(rows, key=lambda r: (int(r["n_atoms"]), r["qmof_id"]))[:n]


# ------------------------------------------------------------------------------ the corpus
def test_corpus_is_complete():
    on_disk = {p.name for p in BAD.glob("*.cif")}
    assert on_disk == set(EXPECTED) | set(GOOD)
    covered = set(EXPECTED.values()) | {"checksum_mismatch"}
    # canonicalization_failed needs a structure that spglib/Niggli cannot reduce; none known.
    # timeout depends on the limit, not on a file: see test_slow_file_is_rejected_as_timeout
    assert set(REASONS) - covered == {"canonicalization_failed", "timeout"}
    assert all(p.stat().st_size < 20_000 for p in BAD.iterdir())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_file_is_refused_with_its_reason(name):
    reason = EXPECTED[name]
    with pytest.raises(CrystalError) as info:
        _read_and_check(BAD / name)
    err = info.value
    assert err.reason == reason, str(err)
    assert Path(name).stem in str(err)  # the message names the file
    assert "\n" not in str(err)
    # the pipeline's per-file step agrees and does not raise
    status, payload = prepare.process_one(name, (BAD / name).read_bytes(), None, CONFIG)
    assert (status, payload[0]) == ("rejected", reason), payload
    assert payload[1] == err.detail  # the same diagnosis, not a crash caught generically


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_corpus_file_is_accepted(name):
    crystal = _read_and_check(BAD / name)
    assert crystal.num_atoms == GOOD[name]
    status, payload = prepare.process_one(name, (BAD / name).read_bytes(), None, CONFIG)
    assert status == "ok", payload


def test_symmetry_expansion():
    crystal = read_cif(BAD / "good_symmetry_p21c.cif")
    counts = dict(zip(*np.unique(crystal.numbers, return_counts=True), strict=True))
    assert counts == {1: 4, 6: 4, 8: 4, 30: 2}
    zn = np.sort(crystal.frac[crystal.numbers == 30], axis=0)
    np.testing.assert_allclose(zn, [[0.0, 0.0, 0.0], [0.0, 0.5, 0.5]], atol=1e-8)
    np.testing.assert_allclose(crystal.parameters, (8, 9, 10, 90, 105, 90), atol=1e-6)


def test_uncertainties_are_dropped_not_refused():
    crystal = read_cif(BAD / "good_uncertainties.cif")
    reference = read_cif(EXAMPLES / "qmof_cifs" / "qmof-de7a226.cif")
    np.testing.assert_allclose(crystal.parameters, reference.parameters, atol=1e-6)
    np.testing.assert_allclose(crystal.frac[0], [0.0145, 0.00012454, 0.99997408], atol=1e-8)
    np.testing.assert_array_equal(crystal.numbers, reference.numbers)


def test_line_endings_do_not_matter():
    reference = read_cif(EXAMPLES / "qmof_cifs" / "qmof-de7a226.cif")
    data = (BAD / "good_cr_line_endings.cif").read_bytes()
    for raw in (data, data.replace(b"\r", b"\r\n")):
        status, crystal = prepare.process_one("x.cif", raw, None, CONFIG)
        assert status == "ok", crystal
        np.testing.assert_allclose(read_cif(raw.decode()).frac, reference.frac, atol=1e-12)


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_unreadable_path(tmp_path, kind):
    path = tmp_path / "nope.cif"
    if kind == "folder":
        path.mkdir()
    with pytest.raises(CrystalError) as info:
        read_cif(path)
    assert info.value.reason == "unreadable"
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["", "garbage\x00bytes", "\x89PNG\r\x1a"])
def test_garbage_text_is_never_opened_as_a_path(text):
    # process_one hands decoded file content to read_cif; content must not be read as a path
    with pytest.raises(CrystalError) as info:
        read_cif(text, id="blob")
    assert info.value.reason == "unreadable"
    assert "cannot read file" not in info.value.detail


def test_checksum_mismatch():
    data = (BAD / CHECKSUM_FILE).read_bytes()
    sha = _index_sha("checksum_mismatch")
    status, payload = prepare.process_one(CHECKSUM_FILE, data, sha, CONFIG)
    assert (status, payload[0]) == ("rejected", "checksum_mismatch")
    original = (EXAMPLES / "qmof_cifs" / "qmof-f528aef.cif").read_bytes()
    assert hashlib.sha256(original).hexdigest() == sha
    assert prepare.process_one(CHECKSUM_FILE, original, sha, CONFIG)[0] == "ok"
    no_verify = PrepareConfig(max_atoms=MAX_ATOMS, workers=1, verify_checksums=False)
    assert prepare.process_one(CHECKSUM_FILE, data, None, no_verify)[0] == "ok"


# ------------------------------------------------------------------------------ end to end
def _mixed_folder(root: Path, n_good: int) -> tuple[Path, Path, list[str]]:
    """Folder with ``n_good`` real QMOF CIFs plus the whole corpus, and an index CSV."""
    folder = root / "in"
    folder.mkdir()
    rows = _small_examples(n_good)
    for r in rows:
        shutil.copy(EXAMPLES / "qmof_cifs" / f"{r['qmof_id']}.cif", folder)
    for p in BAD.glob("*.cif"):
        shutil.copy(p, folder)
    index = root / "index.csv"
    lines = ["qmof_id,split,cif_sha256"]
    lines += [f"{r['qmof_id']},{r['split']},{r['cif_sha256']}" for r in rows]
    lines += [f"checksum_mismatch,val,{_index_sha('checksum_mismatch')}"]
    index.write_text("\n".join(lines) + "\n")
    good = [r["qmof_id"] for r in rows] + [Path(n).stem for n in GOOD if n != CHECKSUM_FILE]
    return folder, index, good


def test_prepare_mixed_folder(tmp_path):
    folder, index, good = _mixed_folder(tmp_path, 10)
    out = tmp_path / "out"
    manifest = prepare_dataset(folder, out, index=index, config=CONFIG, progress=False)

    expected = {**EXPECTED, CHECKSUM_FILE: "checksum_mismatch"}
    assert manifest["n_inputs"] == 10 + len(EXPECTED) + len(GOOD)
    got = {r["source"]: r["reason"] for r in manifest["rejected"]}
    assert got == expected
    assert all(r["detail"] for r in manifest["rejected"])
    assert sum(manifest["rejected_by_reason"].values()) == len(expected)
    assert manifest["n_accepted"] == len(good)  # nothing good lost
    ids = []
    for split in ("train", "val", "test"):
        ids += (out / f"{split}_ids.txt").read_text().split()
    assert sorted(ids) == sorted(good)
    assert sum(manifest["splits"].values()) == len(good)
    assert not (out / "parts").exists()


# ------------------------------------------------------------------------------ usage errors
def _usage_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no CIFs here\n")
    not_cif = tmp_path / "notes.txt"
    not_cif.write_text("just text\n")
    return {
        "missing": (tmp_path / "does_not_exist", "no such file or folder"),
        "empty_folder": (empty, "folder holds no .cif files"),
        "not_cif_or_tar": (not_cif, "not a folder of CIFs, a .cif file or a tar archive"),
    }


@pytest.mark.parametrize("case", ["missing", "empty_folder", "not_cif_or_tar"])
def test_unusable_input_is_a_usage_error(tmp_path, capsys, case):
    path, message = _usage_cases(tmp_path)[case]
    with pytest.raises(UsageError, match=message) as info:
        list(iter_sources(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(UsageError, match=message):
        prepare_dataset(path, tmp_path / "out_api", config=CONFIG, progress=False)

    argv = ["data", "prepare", "--input", str(path), "--out", str(tmp_path / "out_cli")]
    code = main([*argv, "--workers", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mofasa data: error: --input ")
    assert message in lines[0]
    assert captured.out == ""


def test_corrected_input_reuses_out(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UsageError):
        prepare_dataset(tmp_path / "typo", out, config=CONFIG, progress=False)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(BAD / "good_symmetry_p21c.cif", folder)
    assert prepare_dataset(folder, out, config=CONFIG, progress=False)["n_accepted"] == 1


# ------------------------------------------------------------------------------ resume
class _KilledError(Exception):
    pass


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for r in _small_examples(6):
        shutil.copy(EXAMPLES / "qmof_cifs" / f"{r['qmof_id']}.cif", folder)
    bad = ["huge_cell.cif", "no_atoms.cif", "truncated_mid_line.cif", "unreadable_empty.cif"]
    for name in bad:
        shutil.copy(BAD / name, folder)
    out = tmp_path / "out"
    monkeypatch.setattr(prepare, "CHUNK", 4)  # 10 inputs -> chunks of 4, 4, 2
    real_save = prepare._save_chunk
    saved: list[str] = []

    def save_then_die(path, results, splits):
        if len(saved) == 2:
            raise _KilledError  # the process dies while chunk 3 is in flight
        real_save(path, results, splits)
        saved.append(path.name)

    monkeypatch.setattr(prepare, "_save_chunk", save_then_die)
    with pytest.raises(_KilledError):
        prepare_dataset(folder, out, config=CONFIG, progress=False)
    assert sorted(p.name for p in (out / "parts").glob("chunk_*.npz")) == saved
    assert not (out / "manifest.json").exists()

    # resuming with other settings would mix chunks: refused
    other = PrepareConfig(max_atoms=MAX_ATOMS + 1, workers=1)
    with pytest.raises(UsageError, match="unfinished run with other settings"):
        prepare_dataset(folder, out, config=other, progress=False)

    def save_counted(path, results, splits):
        real_save(path, results, splits)
        saved.append(path.name)

    monkeypatch.setattr(prepare, "_save_chunk", save_counted)
    manifest = prepare_dataset(folder, out, config=CONFIG, progress=False)
    assert saved == ["chunk_00000.npz", "chunk_00001.npz", "chunk_00002.npz"]  # chunk 3 only redone
    assert manifest["n_inputs"] == 10
    assert manifest["n_accepted"] == 6
    assert {r["source"]: r["reason"] for r in manifest["rejected"]} == {
        n: EXPECTED[n] for n in bad
    }
    assert not (out / "parts").exists()


# ------------------------------------------------------------------------------ empty loops
_SITE_COLUMNS = "".join(f" _atom_site_{c}\n" for c in ("type_symbol", "label", "fract_x",
                                                        "fract_y", "fract_z", "occupancy"))
_HEAD = "data_x\n" + "".join(f"_cell_length_{a} 10.0\n" for a in "abc") + "".join(
    f"_cell_angle_{a} 90.0\n" for a in ("alpha", "beta", "gamma"))
_SYMOPS = "loop_\n _symmetry_equiv_pos_as_xyz\n  'x, y, z'\n"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (_HEAD + _SYMOPS + "loop_\n" + _SITE_COLUMNS, "no_atoms"),  # columns, no rows, at EOF
        (_HEAD + "loop_\n" + _SITE_COLUMNS + _SYMOPS, "no_atoms"),  # ... then another loop
        (_HEAD + "loop_\n _symmetry_equiv_pos_as_xyz\nloop_\n" + _SITE_COLUMNS
         + "  C C1 0.5 0.5 0.5 1\n", "truncated"),  # an empty symmetry loop: not "no atoms"
    ],
    ids=["site_loop_at_end", "site_loop_then_symops", "empty_symop_loop"],
)
def test_empty_loop_is_named_not_a_crash(text, reason):
    # pymatgen's tokeniser divides by zero on a loop with fewer values than columns; that used
    # to surface as "unreadable: ZeroDivisionError: integer modulo by zero"
    with pytest.raises(CrystalError) as info:
        read_cif(text, id="empty_loop")
    assert info.value.reason == reason, str(info.value)
    assert "ZeroDivision" not in str(info.value)
    status, payload = prepare.process_one("empty_loop.cif", text.encode(), None, CONFIG)
    assert (status, payload[0]) == ("rejected", reason), payload


# ------------------------------------------------------------------------------ huge inputs
def write_many_atoms_cif(path: Path, n_cells: tuple[int, int, int] = (6, 8, 5)) -> int:
    """A P1 supercell of a 50-atom QMOF structure (6x8x5: 12,000 atoms); returns the count."""
    base = read_cif(EXAMPLES / "qmof_cifs" / "qmof-010dd4a.cif")
    reps = np.array(n_cells)
    shifts = np.stack(np.meshgrid(*(np.arange(r) for r in reps), indexing="ij"), -1)
    frac = ((base.frac[None] + shifts.reshape(-1, 1, 3)) / reps).reshape(-1, 3)
    symbols = base.symbols * int(np.prod(reps))
    a, b, c, al, be, ga = base.parameters
    head = [
        "data_many_atoms", f"_cell_length_a {a * reps[0]:.6f}", f"_cell_length_b {b * reps[1]:.6f}",
        f"_cell_length_c {c * reps[2]:.6f}", f"_cell_angle_alpha {al:.6f}",
        f"_cell_angle_beta {be:.6f}", f"_cell_angle_gamma {ga:.6f}",
        "loop_", " _symmetry_equiv_pos_as_xyz", "  'x, y, z'", "loop_", _SITE_COLUMNS.rstrip(),
    ]  # fmt: skip
    rows = [f"  {s} {s}{i} {x:.8f} {y:.8f} {z:.8f} 1"
            for i, (s, (x, y, z)) in enumerate(zip(symbols, frac, strict=True))]  # fmt: skip
    path.write_text("\n".join(head + rows) + "\n")
    return len(rows)


def test_atom_limit_applies_before_any_structure_is_built(tmp_path, monkeypatch):
    path = tmp_path / "many_atoms.cif"
    assert write_many_atoms_cif(path) == 12_000
    from mofasa.data import cif

    def must_not_run(*args, **kwargs):
        raise AssertionError("the atom limit must be applied before building the structure")

    monkeypatch.setattr(cif, "_fast_p1", must_not_run)
    monkeypatch.setattr(cif, "_parse_structure", must_not_run)
    with pytest.raises(CrystalError) as info:
        read_cif(path, max_atoms=1000)
    assert info.value.reason == "too_many_atoms" and info.value.num_atoms == 12_000
    assert "many_atoms" in str(info.value) and "\n" not in str(info.value)


def test_prepare_rejects_a_huge_file_before_symmetry_work(tmp_path, monkeypatch):
    path = tmp_path / "many_atoms.cif"
    write_many_atoms_cif(path)

    def must_not_run(*args, **kwargs):
        raise AssertionError("canonicalize must not run on a 12,000-atom input")

    monkeypatch.setattr(prepare, "canonicalize", must_not_run)
    status, payload = prepare.process_one(path.name, path.read_bytes(), None, PrepareConfig())
    assert (status, payload[0]) == ("rejected", "too_many_atoms"), payload
    assert "max_input_atoms=4000" in payload[1]


# ------------------------------------------------------------------------------ time limit
def test_slow_file_is_rejected_as_timeout(monkeypatch):
    import time

    def hang(crystal, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(prepare, "canonicalize", hang)
    data = (BAD / "good_symmetry_p21c.cif").read_bytes()
    start = time.perf_counter()
    config = PrepareConfig(max_atoms=MAX_ATOMS, workers=1, file_timeout=0.5)
    status, payload = prepare.process_one("slow.cif", data, None, config)
    assert (status, payload[0]) == ("rejected", "timeout"), payload
    assert "file_timeout=0.5" in payload[1]
    assert time.perf_counter() - start < 10


def test_time_limit_in_workers_and_the_run_goes_on(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("good_symmetry_p21c.cif", "no_atoms.cif"):
        shutil.copy(BAD / name, folder)
    # 0.1 ms: no CIF parses that fast, so every file hits the limit inside the worker
    config = PrepareConfig(max_atoms=MAX_ATOMS, workers=1, file_timeout=1e-4)
    manifest = prepare_dataset(folder, tmp_path / "out", config=config, progress=False)
    assert manifest["n_inputs"] == 2 and manifest["n_accepted"] == 0
    assert manifest["rejected_by_reason"] == {"timeout": 2}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"file_timeout": 0}, "file_timeout must be > 0"),
        ({"max_atoms": 0}, "max_atoms must be >= 1"),
        ({"max_atoms": 600, "max_input_atoms": 500}, "max_input_atoms (500) must be >="),
        ({"workers": -1}, "workers must be >= 0"),
    ],
)
def test_impossible_prepare_settings(changes, message):
    with pytest.raises(UsageError) as info:
        PrepareConfig(**changes)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_dataset_from_before_the_new_settings_still_resumes(tmp_path):
    import json

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(BAD / "good_symmetry_p21c.cif", folder)
    out = tmp_path / "out"
    prepare_dataset(folder, out, config=CONFIG, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("max_input_atoms", "file_timeout"):  # an older version did not write them
        del manifest["config"][key]
    (out / "manifest.json").write_text(json.dumps(manifest))
    again = prepare_dataset(folder, out, config=CONFIG, progress=False)
    assert again["n_accepted"] == 1
