"""Conditional sampling through `mofasa.sample` and `mofasa sample` (issue 12 item 6)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mofasa.cli import main
from mofasa.data.canonical import canonicalize
from mofasa.data.cif import read_cif
from mofasa.data.conditions import formula_string
from mofasa.data.elements import IS_METAL
from mofasa.sampling import sample
from mofasa.sampling.settings import SampleSettings, SampleSettingsError
from mofasa.training.coordflow import load_coordflow_config, train_coordflow

from .conftest import EXAMPLES, prepare_examples

FAST = ["run.threads=1", "run.log_every=2", "run.ckpt_every=100", "run.val_every=100",
        "data.batch_size=4", "probes.every=0", "optim.total_steps=2"]
REF = sorted(EXAMPLES.glob("*.cif"))[1]  # Cu2Br2N10C18H18, among the 6 training structures


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(conditional, unconditional) tiny coordinate-family checkpoints on 6 examples."""
    data = prepare_examples(tmp_path_factory, 6)
    out = []
    for flag in ("true", "false"):
        run = tmp_path_factory.mktemp(f"cf_{flag}")
        over = [f"data.path={data}", f"run.out_dir={run}", f"model.conditional={flag}", *FAST]
        train_coordflow(load_coordflow_config("tiny", over), resume=False)
        out.append(run / "checkpoint.pt")
    return out


@pytest.fixture(scope="module")
def reference():
    return canonicalize(read_cif(REF))


def test_formula_samples_have_exactly_the_formula_and_are_reproducible(models, reference):
    formula = formula_string(reference.numbers)
    a = sample(str(models[0]), num=3, steps=2, formula=formula, device="cpu")
    b = sample(str(models[0]), num=3, steps=2, formula=formula, device="cpu", batch_size=1)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.numbers, reference.numbers)
        assert np.allclose(x.frac, y.frac, atol=1e-5)
        assert x.metadata["condition"] == "formula" and x.metadata["requested_formula"] == formula


def test_bonds_and_guidance_and_inpainting_run_through_the_api(models, reference):
    out = sample(str(models[0]), num=2, steps=2, bonds_from=REF, guidance=2.0, device="cpu")
    assert all(np.array_equal(c.numbers, reference.numbers) for c in out)
    assert out[0].metadata["reference"] == str(REF)
    kept = sample(str(models[0]), num=2, steps=2, inpaint=REF, keep="metal-node",
                  device="cpu")
    node = np.zeros(reference.num_atoms, bool)
    for c in kept:
        frame = json.loads(c.metadata["reference_frame"])
        assert len(frame["sites"]) == reference.num_atoms
        assert np.allclose(c.lattice, reference.lattice, atol=1e-3)
        same = np.abs(c.frac - reference.frac).max(1) < 1e-6
        node |= same
    assert node.sum() >= kept[0].metadata["kept_atoms"]


def test_bond_restraint_moves_bond_samples_toward_their_bonds_and_is_recorded(
        models, reference, tmp_path, capsys):
    from mofasa.data.canonical import bond_edges

    plain = sample(str(models[0]), num=2, steps=2, bonds_from=REF, device="cpu")
    held = sample(str(models[0]), num=2, steps=2, bonds_from=REF, device="cpu",
                  restrain_bonds=200)
    want = {(int(i), int(j)) for i, j in bond_edges(reference.lattice, reference.frac,
                                                    reference.numbers)[0] if i < j}

    def present(c) -> float:
        got = {(int(i), int(j)) for i, j in bond_edges(c.lattice, c.frac, c.numbers)[0]}
        return len(want & got) / len(want)

    for a, b in zip(plain, held, strict=True):
        assert np.array_equal(a.numbers, b.numbers) and np.allclose(a.lattice, b.lattice)
        # an untrained model: from near-random positions the restraint untangles part of it
        assert present(b) > present(a) + 0.3, (present(a), present(b))
        assert b.metadata["restrain_bonds"] == 200
    common = ["sample", "--model", str(models[0]), "--out", str(tmp_path / "o"), "--num", "1",
              "--steps", "2", "--no-progress", "--device", "cpu", "--bonds-from", str(REF)]
    assert main([*common, "--restrain-bonds", "20"]) == 0
    settings = json.loads((tmp_path / "o" / "settings.json").read_text())
    assert settings["identity"]["restrain_bonds"] == 20
    capsys.readouterr()
    assert main(common) == 2  # a resume without the restraint is another run
    assert "other settings" in capsys.readouterr().err


def test_corrector_steps_hold_kept_atoms_and_are_recorded(models, reference, tmp_path):
    kept = sample(str(models[0]), num=2, steps=2, refine=2, inpaint=REF, keep="metals",
                  device="cpu")
    metals = IS_METAL[reference.numbers]
    for c in kept:
        assert np.allclose(c.frac[metals], reference.frac[metals], atol=1e-6)  # float32
        assert c.metadata["refine"] == 2
    plain = sample(str(models[1]), num=2, steps=2, device="cpu")
    moved = sample(str(models[1]), num=2, steps=2, refine=1, device="cpu")
    assert plain[0].metadata["refine"] == 0  # the model's own count
    assert not np.allclose(plain[0].frac, moved[0].frac)


def test_element_sets_stay_within_the_set_and_draw_seen_counts(models, reference):
    out = sample(str(models[0]), num=4, steps=2, elements="Cu,Br,N,C,H", device="cpu")
    allowed = {29, 35, 7, 6, 1}
    assert all(set(c.numbers.tolist()) <= allowed for c in out)
    # the one training structure with exactly that set gives the only count
    assert {c.num_atoms for c in out} == {reference.num_atoms}
    assert out[0].metadata["atom_counts_from"] == "elements"


@pytest.mark.parametrize("kwargs, message", [
    ({"formula": "Zn4Xx"}, "unknown element"),
    ({"formula": "Cu2O", "atoms": 10}, "--atoms cannot be combined"),
    ({"keep": "metals"}, "--keep needs --inpaint"),
    ({"inpaint": str(REF)}, "--inpaint needs --keep"),
    ({"formula": "Cu2O", "metal": "Cu"}, "cannot be combined"),
    ({"metal": "C"}, "give one metal"),
    ({"bonds_from": "/nonexistent.cif"}, "no such file"),
    ({"formula": "Cu2O", "restrain_bonds": 10}, "--restrain-bonds needs --bonds-from"),
    ({"bonds_from": str(REF), "restrain_bonds": -1}, "restrain_bonds must be"),
])
def test_impossible_conditions_are_refused_before_any_work(kwargs, message):
    with pytest.raises(SampleSettingsError, match=message):
        SampleSettings(**kwargs).check()


def test_conditions_the_model_cannot_take_are_one_line_errors(models, tmp_path, capsys):
    with pytest.raises(SampleSettingsError, match="not trained with conditions"):
        sample(str(models[1]), num=1, steps=2, formula="Cu2Br2N10C18H18", device="cpu")
    with pytest.raises(SampleSettingsError, match="never occur in the model's training"):
        sample(str(models[0]), num=1, steps=2, formula="U2O4C8H4", device="cpu")
    code = main(["sample", "--model", str(models[0]), "--out", str(tmp_path / "o"),
                 "--no-progress", "--metal", "Pu"])
    err = capsys.readouterr().err
    assert code == 2 and "never occur" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_a_resume_refuses_a_changed_condition(models, tmp_path, capsys):
    common = ["sample", "--model", str(models[0]), "--out", str(tmp_path / "o"), "--num", "1",
              "--steps", "2", "--no-progress", "--device", "cpu"]
    assert main([*common, "--formula", "Cu2Br2N10C18H18"]) == 0
    settings = json.loads((tmp_path / "o" / "settings.json").read_text())
    assert settings["identity"]["formula"] == "Cu2Br2N10C18H18"
    capsys.readouterr()
    assert main([*common, "--formula", "Cu1Br1N5C9H9"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_restarts_hold_kept_atoms_are_recorded_and_a_resume_keeps_them(models, reference,
                                                                        tmp_path, capsys):
    kept = sample(str(models[0]), num=1, steps=2, restarts=2, inpaint=REF, keep="metals",
                  device="cpu")
    metals = IS_METAL[reference.numbers]
    assert np.allclose(kept[0].frac[metals], reference.frac[metals], atol=1e-6)
    assert kept[0].metadata["restarts"] == 2
    plain = sample(str(models[1]), num=1, steps=2, device="cpu")
    again = sample(str(models[1]), num=1, steps=2, restarts=1, device="cpu")
    assert plain[0].metadata["restarts"] == 0 and not np.allclose(plain[0].frac, again[0].frac)
    common = ["sample", "--model", str(models[1]), "--out", str(tmp_path / "o"), "--num", "1",
              "--steps", "2", "--no-progress", "--device", "cpu"]
    assert main(common) == 0
    identity = json.loads((tmp_path / "o" / "settings.json").read_text())["identity"]
    assert "restarts" not in identity  # none: as before the setting existed
    capsys.readouterr()
    assert main([*common, "--restarts", "1"]) == 2
    assert "other settings" in capsys.readouterr().err
