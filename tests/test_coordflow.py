"""Explicit-coordinate hybrid (bake-off arm c): invariances, an oracle sampler run, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mofasa.checkpoint import export_coordflow, load_coordflow
from mofasa.data import collate
from mofasa.diffusion.coordflow import CoordFlow, CoordFlowConfig
from mofasa.geometry.lattice_torch import min_image_frac_torch
from mofasa.models.coord_denoiser import (
    CoordDenoiser,
    CoordDenoiserConfig,
    LatticeCoder,
    batch_state,
    type_codes,
)
from mofasa.training.coordflow import load_coordflow_config, train_coordflow

from .conftest import prepare_examples

FAST = ["run.threads=1", "run.log_every=2", "run.ckpt_every=100", "run.val_every=100",
        "data.batch_size=4"]


def _tiny_model() -> CoordFlow:
    cfg = load_coordflow_config("tiny")
    torch.manual_seed(0)
    return CoordFlow(CoordDenoiser(cfg.model), cfg.flow).double().eval()


def _batch(example_crystals, k: int = 3):
    return collate(sorted(example_crystals, key=lambda c: c.num_atoms)[:k], dtype=torch.float64)


def test_type_codes_and_lattice_coder_round_trip(example_crystals):
    codes = type_codes(7)
    assert codes.shape == (101, 7) and len({tuple(r.tolist()) for r in codes}) == 101
    batch = _batch(example_crystals)
    coder = LatticeCoder(0.8, 0.3)
    back = coder.decode(coder.encode(batch.lattice, batch.num_atoms), batch.num_atoms)
    got = [torch.linalg.det(m) for m in back]
    want = [torch.linalg.det(m) for m in batch.lattice]
    assert all(abs(float(a) - float(b)) < 1e-6 * float(b) for a, b in zip(got, want, strict=True))


def test_predictions_are_translation_invariant_and_permutation_equivariant(example_crystals):
    model = _tiny_model()
    batch = _batch(example_crystals, 2)
    x, c, lcode = batch_state(batch, model.codes.double(), model.coder)
    t = torch.tensor([0.4, 0.9], dtype=torch.float64)
    out = model.denoiser(x, c, lcode, batch.lattice, t, batch.mask)
    shifted = (x + torch.tensor([0.31, 0.77, 0.05], dtype=torch.float64)) % 1.0 * \
        batch.mask.unsqueeze(-1)
    moved = model.denoiser(shifted, c, lcode, batch.lattice, t, batch.mask)
    for a, b in zip(out, moved, strict=True):
        assert torch.allclose(a, b, atol=1e-8)
    n = int(batch.num_atoms[1])  # permute the real atoms of crystal 1 only
    perm = torch.arange(x.shape[1])
    perm[:n] = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    px, pc = x.clone(), c.clone()
    px[1], pc[1] = x[1, perm], c[1, perm]
    pout = model.denoiser(px, pc, lcode, batch.lattice, t, batch.mask)
    assert torch.allclose(pout[0][1], out[0][1, perm], atol=1e-8)
    assert torch.allclose(pout[2], out[2], atol=1e-8)


def test_order_features_start_as_the_old_model_and_then_break_equivariance(example_crystals):
    import dataclasses

    base = _tiny_model()
    cfg = dataclasses.replace(base.denoiser.config, order_features=True)
    torch.manual_seed(0)
    ordered = CoordDenoiser(cfg).double().eval()
    missing = ordered.load_state_dict(base.denoiser.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["order_in.bias", "order_in.weight"]
    batch = _batch(example_crystals, 2)
    x, c, lcode = batch_state(batch, base.codes.double(), base.coder)
    t = torch.tensor([0.4, 0.9], dtype=torch.float64)
    args = (batch.lattice, t, batch.mask)
    for a, b in zip(base.denoiser(x, c, lcode, *args), ordered(x, c, lcode, *args), strict=True):
        assert torch.equal(a, b)  # zero-initialised: a warm start keeps the function
    torch.nn.init.normal_(ordered.order_in.weight, std=0.5)
    out = ordered(x, c, lcode, *args)
    n = int(batch.num_atoms[1])
    perm = torch.arange(x.shape[1])
    perm[:n] = torch.arange(n).flip(0)
    px, pc = x.clone(), c.clone()
    px[1], pc[1] = x[1, perm], c[1, perm]
    pout = ordered(px, pc, lcode, *args)
    assert not torch.allclose(pout[1][1], out[1][1, perm], atol=1e-4)  # the index now counts
    assert torch.allclose(pout[1][0], out[1][0], atol=1e-8)  # crystal 0 untouched
    assert torch.isfinite(pout[0]).all() and not pout[0][~batch.mask].any()


def test_a_deeper_model_warm_started_from_a_shallower_one_keeps_its_function(example_crystals):
    """Growing the stacks (campaign warm starts with more layers): the new layers' residual
    branches start at zero, so the grown model computes the old one's function exactly and
    only then learns."""
    import dataclasses

    base = _tiny_model()
    with torch.no_grad():  # a trained-like model: no branch of it still at zero
        for p in base.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = base.denoiser.config
    grown_cfg = dataclasses.replace(
        cfg, local=dataclasses.replace(cfg.local, depth=cfg.local.depth + 2),
        dense=dataclasses.replace(cfg.dense, depth=cfg.dense.depth + 1))
    torch.manual_seed(1)
    grown = CoordDenoiser(grown_cfg).double().eval()
    missing = grown.load_state_dict(base.denoiser.state_dict(), strict=False).missing_keys
    new_layers = {k.split(".")[0] + "." + k.split(".")[2] for k in missing}
    assert new_layers == {f"local.{cfg.local.depth}", f"local.{cfg.local.depth + 1}",
                          f"dense.{cfg.dense.depth}"}
    batch = _batch(example_crystals, 2)
    x, c, lcode = batch_state(batch, base.codes.double(), base.coder)
    t = torch.tensor([0.4, 0.9], dtype=torch.float64)
    args = (batch.lattice, t, batch.mask)
    for a, b in zip(base.denoiser(x, c, lcode, *args), grown(x, c, lcode, *args), strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    out = grown(x, c, lcode, *args)[0]
    out[batch.mask].square().sum().backward()
    last = grown.local.layers[-1]
    assert last.ffn_out.weight.grad.abs().sum() > 0  # the new layer learns from step one


def test_self_conditioning_starts_as_the_old_model_and_stays_translation_invariant(
        example_crystals):
    import dataclasses

    base = _tiny_model()
    cfg = dataclasses.replace(base.denoiser.config, self_condition=True)
    torch.manual_seed(0)
    sc = CoordDenoiser(cfg).double().eval()
    missing = sc.load_state_dict(base.denoiser.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("sc_") for k in missing)
    batch = _batch(example_crystals, 2)
    x, c, lcode = batch_state(batch, base.codes.double(), base.coder)
    t = torch.tensor([0.4, 0.9], dtype=torch.float64)
    args = (batch.lattice, t, batch.mask)
    noisy = (x + 0.02 * torch.randn_like(x)) % 1.0
    est = x * batch.mask.unsqueeze(-1)  # an estimate: the clean coordinates
    old = base.denoiser(noisy, c, lcode, *args)
    for a, b in zip(old, sc(noisy, c, lcode, *args, self_cond=est), strict=True):
        assert torch.allclose(a, b, atol=1e-12)  # zero-initialised: a warm start keeps it
    for p in sc.parameters():  # wake the new maps up: the estimate now counts
        if p.dim() > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.3)
    out = sc(noisy, c, lcode, *args, self_cond=est)
    assert not torch.allclose(out[0], sc(noisy, c, lcode, *args)[0], atol=1e-6)
    shift = torch.tensor([0.3, -0.2, 0.45], dtype=torch.float64)
    moved = sc((noisy + shift) % 1.0, c, lcode, *args, self_cond=(est + shift) % 1.0)
    m = batch.mask.unsqueeze(-1)
    assert torch.allclose(moved[0] * m, out[0] * m, atol=1e-8)  # a shift of all changes nothing
    assert torch.isfinite(out[0]).all() and not out[0][~batch.mask].any()


def test_a_self_conditioning_model_trains_and_samples(tmp_path_factory, tmp_path):
    data = prepare_examples(tmp_path_factory, 6)
    over = [f"data.path={data}", f"run.out_dir={tmp_path / 'sc'}", "optim.total_steps=4",
            "model.self_condition=true", "probes.every=0", *FAST]
    metrics = train_coordflow(load_coordflow_config("tiny", over), resume=False)
    assert np.isfinite(metrics["loss"])
    model = load_coordflow(tmp_path / "sc" / "checkpoint.pt")
    assert model.self_conditioning
    seen = []
    forward = model.denoiser.forward

    def spy(*a, **k):
        seen.append(k.get("self_cond") is not None)
        return forward(*a, **k)

    model.denoiser.forward = spy
    out = model.generate(torch.ones(2, 7, dtype=torch.bool), steps=3, refine=2).unbatch()
    assert seen == [False, True, True, False, True]  # each pass starts without an estimate
    assert all(np.isfinite(c.frac).all() for c in out)


def test_an_oracle_denoiser_is_sampled_onto_its_target(example_crystals):
    model = _tiny_model().float()
    batch = _batch(example_crystals, 2)
    x1, c1, l1 = batch_state(batch, model.codes, model.coder)

    class Oracle(torch.nn.Module):  # predicts the target exactly
        def forward(self, x, c, lcode, lattice, t, mask):
            return min_image_frac_torch(x1 - x) * mask.unsqueeze(-1), c1, l1

    model.denoiser = Oracle()
    out = model.generate(batch.mask, steps=4, generator=torch.Generator().manual_seed(0))
    m = batch.mask
    assert torch.equal(out.atom_types[m], batch.atom_types[m])
    assert float(min_image_frac_torch(out.frac.double() - x1).abs()[m].max()) < 1e-5
    assert torch.allclose(out.lattice.double(), batch.lattice, rtol=1e-4, atol=1e-4)
    grid = model.time_grid(4)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and all(np.diff(grid) > 0)
    assert grid[-1] - grid[-2] < grid[1] - grid[0]  # denser near t = 1


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        CoordFlowConfig(time_power=0.0)
    with pytest.raises(ValueError, match="contact"):
        CoordFlowConfig(contact_weight=-1.0)
    with pytest.raises(ValueError, match="bond_weight"):
        CoordFlowConfig(bond_weight=-1.0)
    with pytest.raises(ValueError):
        CoordDenoiserConfig(type_bits=5)


def test_training_resumes_and_the_checkpoint_samples(tmp_path_factory, tmp_path):
    data = prepare_examples(tmp_path_factory, 6)
    over = [f"data.path={data}", f"run.out_dir={tmp_path / 'cf'}", "optim.total_steps=3",
            "probes.every=3", "probes.samples=2", "probes.steps=2", "probes.structures=2",
            "flow.contact_weight=1.0", "flow.bond_weight=1.0", "model.order_features=true",
            *FAST]
    metrics = train_coordflow(load_coordflow_config("tiny", over), resume=False)
    assert np.isfinite(metrics["loss"]) and metrics["loss_coord"] > 0
    assert np.isfinite(metrics["loss_contact"]) and metrics["loss_contact"] >= 0
    assert np.isfinite(metrics["loss_bond"]) and metrics["loss_bond"] > 0
    over5 = [o.replace("total_steps=3", "total_steps=5") for o in over]
    train_coordflow(load_coordflow_config("tiny", over5))
    model = load_coordflow(tmp_path / "cf" / "checkpoint.pt")
    assert model.checkpoint_info["step"] == 5 and model.num_atoms_hist.sum() == 6
    slim = export_coordflow(tmp_path / "cf" / "checkpoint.pt", tmp_path / "slim.pt", steps=4,
                            refine=7, refine_t=0.995, restarts=2)
    cfg = load_coordflow(slim).config
    assert (cfg.steps, cfg.refine, cfg.refine_t, cfg.restarts) == (4, 7, 0.995, 2)
    with pytest.raises(ValueError, match="refine_t"):
        export_coordflow(tmp_path / "cf" / "checkpoint.pt", tmp_path / "bad.pt", refine_t=1.5)
    with pytest.raises(ValueError, match="restarts"):
        export_coordflow(tmp_path / "cf" / "checkpoint.pt", tmp_path / "bad.pt", restarts=-1)
    crystals = model.generate(torch.ones(2, 7, dtype=torch.bool), steps=3).unbatch()
    assert all(c.num_atoms == 7 and (c.numbers >= 1).all() and np.isfinite(c.frac).all()
               and np.linalg.det(c.lattice) > 0 for c in crystals)
    import csv

    with open(tmp_path / "cf" / "metrics.csv", newline="") as fh:
        probes = {r["name"] for r in csv.DictReader(fh) if r["split"] == "probe"}
    assert {"sdedit_bonded", "sdedit_floor", "denovo_bonded"} <= probes


def test_pair_distances_and_the_overlap_penalty(example_crystals):
    from mofasa.data.quality import nearest_neighbours
    from mofasa.geometry.lattice_torch import pair_distances_torch

    crystals = sorted(example_crystals, key=lambda c: c.num_atoms)[:3]
    batch = collate(crystals, dtype=torch.float64)
    d = pair_distances_torch(batch.frac, batch.lattice)
    for k, c in enumerate(crystals):
        n = c.num_atoms
        off = d[k, :n, :n] + torch.eye(n, dtype=d.dtype) * 1e9
        nn_dist = off.min(1).values.numpy()
        assert np.allclose(nn_dist, nearest_neighbours(c)[0], atol=1e-6)
    model = _tiny_model()
    t = torch.ones(batch.batch_size, dtype=torch.float64)
    dist = lambda x: pair_distances_torch(x, batch.lattice)  # noqa: E731
    assert float(model._overlap_penalty(dist(batch.frac), batch, t)) == 0.0  # real: no overlaps
    x = batch.frac.clone()
    x[0, 1] = x[0, 0] + 0.001  # two atoms on one site
    assert float(model._overlap_penalty(dist(x), batch, t)) > 0.0
    assert float(model._contact_penalty(dist(batch.frac), batch, t)) == 0.0  # data: none
    bonded = d[0] < model.radii[batch.atom_types[0]].unsqueeze(0) + \
        model.radii[batch.atom_types[0]].unsqueeze(1) + 0.45
    i = int(torch.nonzero(batch.atom_types[0] == 1)[0])  # an H atom
    far = int(torch.nonzero(batch.mask[0] & ~bonded[i] & (d[0, i] > 3.0))[0])
    near = int(torch.nonzero(bonded[i] & (torch.arange(d.shape[1]) != i))[0])
    y = batch.frac.clone()
    y[0, far] = batch.frac[0, i] + 0.01  # a non-bonded atom brought onto the H
    assert float(model._contact_penalty(dist(y), batch, t)) > 0.0
    z = batch.frac.clone()  # a bonded partner moved to 0.9 x its distance: not a contact
    step = min_image_frac_torch(batch.frac[0, near] - batch.frac[0, i])
    z[0, near] = batch.frac[0, i] + 0.9 * step
    assert float(model._contact_penalty(dist(z), batch, t)) == 0.0
    assert float(model._contact_penalty(dist(y), batch, 0.0 * t)) == 0.0


def test_the_bond_length_loss_scores_the_data_bonds_only(example_crystals):
    from mofasa.geometry.lattice_torch import pair_distances_torch

    batch = collate(sorted(example_crystals, key=lambda c: c.num_atoms)[:2], dtype=torch.float64)
    model = _tiny_model()
    t = torch.ones(batch.batch_size, dtype=torch.float64)
    scored = batch.mask
    dist = lambda x: pair_distances_torch(x, batch.lattice)  # noqa: E731
    assert float(model._bond_length_loss(dist(batch.frac), batch, t, scored)) == 0.0  # data
    d = dist(batch.frac)
    r = model.radii[batch.atom_types[0]]
    bonded = (d[0] < r.unsqueeze(0) + r.unsqueeze(1) + 0.45) & ~torch.eye(d.shape[1]).bool()
    i = int(torch.nonzero(batch.atom_types[0] == 1)[0])  # an H atom and its partner
    near = int(torch.nonzero(bonded[i])[0])
    y = batch.frac.clone()
    step = min_image_frac_torch(batch.frac[0, i] - batch.frac[0, near])
    y[0, i] = batch.frac[0, near] + 1.2 * step  # the H pulled off by 20%: one bond, twice
    y.requires_grad_(True)
    loss = model._bond_length_loss(dist(y), batch, t, scored)
    expect = 2 * (0.2 * float(d[0, i, near])) ** 2 / float(scored.sum())
    assert float(loss.detach()) == pytest.approx(expect, rel=1e-6)
    loss.backward()
    assert float(y.grad[0, i].abs().sum()) > 0 and float(y.grad[1].abs().sum()) == 0
    y = y.detach()
    assert float(model._bond_length_loss(dist(y), batch, 0.0 * t, scored)) == 0.0
    none = torch.zeros_like(scored)  # nothing scored (inpainting keeps it): no loss
    assert float(model._bond_length_loss(dist(y), batch, t, none)) == 0.0
    far = int(torch.nonzero(batch.mask[0] & ~bonded[i] & (d[0, i] > 3.0))[0])
    e = d.clone()  # a non-bonded pair brought into contact: the contact penalty's business
    e[0, i, far] = e[0, far, i] = 1.0
    assert float(model._bond_length_loss(e, batch, t, scored)) == 0.0


def test_input_perturbation_moves_inputs_by_a_noise_draw_scaled_by_one_minus_t(
        example_crystals):
    from mofasa.diffusion.coordflow import _perturbed, batch_state

    batch = _batch(example_crystals, 3)
    model = _tiny_model()
    clean = batch_state(batch, model.codes, model.coder)
    m = batch.mask.unsqueeze(-1).double()  # (B, N, 1)
    torch.manual_seed(1)
    scale = torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64)
    x, c, lcode = _perturbed(clean, clean, scale, m)
    step = min_image_frac_torch(x - clean[0]) * m  # (B, N, 3)
    assert float(step[0].abs().max()) == 0.0 and float((c[0] - clean[1][0]).abs().max()) == 0
    assert float((x * (1 - m)).abs().max()) == 0.0 and float((c * (1 - m)).abs().max()) == 0
    for b in (1, 2):  # a uniform draw's displacement has RMS 1 / sqrt(12) per axis
        rms = float(step[b][batch.mask[b]].pow(2).mean().sqrt())
        assert rms == pytest.approx(float(scale[b]) / 12 ** 0.5, rel=0.25)
    assert float((lcode[2] - clean[2][2]).abs().max()) > 0
    with pytest.raises(ValueError, match="input_perturb"):
        CoordFlowConfig(input_perturb=-0.1)
    cfg = load_coordflow_config("tiny")  # on in training: a finite loss that differs
    torch.manual_seed(0)
    loss0 = CoordFlow(CoordDenoiser(cfg.model), cfg.flow).double()(batch)[0]
    flow = CoordFlowConfig(**{**cfg.flow.__dict__, "input_perturb": 0.5})
    torch.manual_seed(0)
    loss1 = CoordFlow(CoordDenoiser(cfg.model), flow).double()(batch)[0]
    assert torch.isfinite(loss1) and float(loss1.detach()) != float(loss0.detach())


def test_rollouts_follow_the_noising_path_for_an_oracle_and_train_the_real_model(
        example_crystals):
    from mofasa.diffusion.coordflow import _interpolate, batch_state

    model = _tiny_model()
    batch = _batch(example_crystals, 3)
    clean = batch_state(batch, model.codes, model.coder)
    m = batch.mask.unsqueeze(-1).double()  # (B, N, 1)

    class Oracle(torch.nn.Module):  # predicts the clean state exactly
        def forward(self, x, c, lcode, lattice, t, mask):
            return min_image_frac_torch(clean[0] - x) * mask.unsqueeze(-1), clean[1], clean[2]

    oracle = model
    oracle.config = CoordFlowConfig(**{**model.config.__dict__, "rollout_steps": 3})
    oracle.denoiser = Oracle()
    g = torch.Generator().manual_seed(0)
    noise = (torch.rand(clean[0].shape, generator=g, dtype=torch.float64),
             torch.randn(clean[1].shape, generator=g, dtype=torch.float64),
             torch.randn(clean[2].shape, generator=g, dtype=torch.float64))
    t0, t1 = torch.tensor([0.0, 0.3, 0.85], dtype=torch.float64), \
        torch.tensor([0.1, 0.5, 0.95], dtype=torch.float64)
    start = _interpolate(noise, clean, t0.view(-1, 1, 1), m)
    rolled, est = oracle._rollout(start, t0, t1, batch.mask, None)
    want = _interpolate(noise, clean, t1.view(-1, 1, 1), m)
    dx = min_image_frac_torch(rolled[0] - want[0]) * m  # an exact model stays on the path
    assert float(dx.abs().max()) < 1e-9
    assert torch.allclose(rolled[1], want[1]) and torch.allclose(rolled[2], want[2])
    assert float((min_image_frac_torch(est - clean[0]) * m).abs().max()) < 1e-9
    start = oracle.rollout_start(torch.tensor([0.2, 0.9, 0.99], dtype=torch.float64))
    assert torch.allclose(start, torch.tensor([0.0, 0.8, 0.98], dtype=torch.float64))
    for bad in ({"rollout_share": 1.5}, {"rollout_span": 0.0}, {"rollout_steps": 0}):
        with pytest.raises(ValueError, match="rollout"):
            CoordFlowConfig(**bad)
    cfg = load_coordflow_config("tiny")  # on in training: finite, differs, and trains
    losses, nets = [], []
    for share in (0.0, 1.0):
        flow = CoordFlowConfig(**{**cfg.flow.__dict__, "rollout_share": share})
        torch.manual_seed(0)
        net = CoordFlow(CoordDenoiser(cfg.model), flow).double()
        loss = net(batch)[0]
        loss.backward()
        losses.append(float(loss.detach()))
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
        nets.append(net)
    assert np.isfinite(losses).all() and losses[0] != losses[1]
    evals = []  # validation (eval mode) scores the plain noising path: the same loss
    for net in nets:
        torch.manual_seed(1)
        evals.append(float(net.eval()(batch)[0].detach()))
    assert evals[0] == pytest.approx(evals[1], rel=1e-12)


def test_ot_coupling_permutes_noise_within_elements_and_lowers_the_cost(example_crystals):
    from mofasa.diffusion.coordflow import ot_coupled_noise

    batch = _batch(example_crystals, 3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch.frac.shape, generator=g, dtype=torch.float64) * \
        batch.mask.unsqueeze(-1)
    y = ot_coupled_noise(x0, batch.frac, batch.lattice, batch.atom_types, batch.mask)

    def cost(x):
        d = min_image_frac_torch(batch.frac - x)
        return float(((d.unsqueeze(-2) @ batch.lattice.unsqueeze(1)).squeeze(-2).square()
                      .sum(-1) * batch.mask).sum())

    assert cost(y) < cost(x0)
    for b in range(3):
        for z in batch.atom_types[b][batch.mask[b]].unique():
            sel = (batch.atom_types[b] == z) & batch.mask[b]
            assert torch.equal(torch.sort(x0[b][sel], 0)[0], torch.sort(y[b][sel], 0)[0])
    assert torch.equal(y[~batch.mask], x0[~batch.mask])
    with pytest.raises(ValueError, match="coupling"):
        CoordFlowConfig(coupling="sinkhorn")


def test_churn_makes_the_sampler_stochastic_per_structure(example_crystals):
    import dataclasses

    from mofasa.sampling.api import CoordNoise

    model = _tiny_model().float()
    mask = torch.ones(2, 9, dtype=torch.bool)

    def run(churn, idx=(0, 1)):
        model.config = dataclasses.replace(model.config, churn=churn)
        noise = CoordNoise(list(idx), [9] * len(idx), 0, (7, 6))
        return model.generate(mask[: len(idx)], steps=4, noise_fn=noise).frac

    calm, noisy = run(0.0), run(0.3)
    assert not torch.allclose(calm, noisy) and torch.isfinite(noisy).all()
    assert torch.allclose(run(0.3, (1,))[0], noisy[1], atol=1e-5)  # same index, same noise
    with pytest.raises(ValueError, match="churn"):
        CoordFlowConfig(churn=-1.0)


def test_refine_moves_free_atoms_onto_the_prediction_and_holds_the_rest(example_crystals):
    model = _tiny_model().float()
    batch = _batch(example_crystals, 2)
    x1, c1, l1 = batch_state(batch, model.codes, model.coder)

    class Oracle(torch.nn.Module):  # a half-way oracle: one corrector step halves the error
        def forward(self, x, c, lcode, lattice, t, mask):
            return 0.5 * min_image_frac_torch(x1 - x) * mask.unsqueeze(-1), c1, l1

    model.denoiser = Oracle()
    m = batch.mask
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    err = lambda out: float(min_image_frac_torch(out.frac - x1).abs()[m].max())  # noqa: E731
    plain = model.generate(m, steps=3, generator=g())
    assert torch.equal(model.generate(m, steps=3, generator=g(), refine=0).frac, plain.frac)
    refined = model.generate(m, steps=3, generator=g(), refine=3)
    assert err(refined) < 0.2 * err(plain) and err(plain) > 1e-3
    assert torch.equal(refined.atom_types, plain.atom_types)
    assert torch.equal(refined.lattice, plain.lattice)
    with pytest.raises(ValueError, match="refine"):
        CoordFlowConfig(refine=-1)


def test_restarts_renoise_to_restart_t_and_integrate_back(example_crystals):
    import dataclasses

    from mofasa.sampling.api import CoordNoise

    model = _tiny_model().float()
    batch = _batch(example_crystals, 2)
    x1, c1, l1 = batch_state(batch, model.codes, model.coder)
    m = batch.mask

    class Exact(torch.nn.Module):  # the true clean state from anywhere
        def forward(self, x, c, lcode, lattice, t, mask):
            return min_image_frac_torch(x1 - x) * mask.unsqueeze(-1), c1, l1

    class Still(torch.nn.Module):  # predicts no change: only the re-noising moves atoms
        def forward(self, x, c, lcode, lattice, t, mask):
            return torch.zeros_like(x), c, lcode

    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    gap = lambda a, b: float(min_image_frac_torch(a.frac - b.frac).abs()[m].max())  # noqa: E731
    model.denoiser = Exact()
    plain = model.generate(m, steps=3, generator=g())
    assert torch.equal(model.generate(m, steps=3, generator=g(), restarts=0).frac, plain.frac)
    back = model.generate(m, steps=3, generator=g(), restarts=2)
    assert gap(back, plain) < 1e-5 and torch.equal(back.atom_types, plain.atom_types)
    model.denoiser = Still()
    model.config = dataclasses.replace(model.config, restart_t=0.8)
    still = model.generate(m, steps=3, generator=g())
    moved = model.generate(m, steps=3, generator=g(), restarts=1)
    assert 1e-3 < gap(moved, still) <= 0.2 * 0.5 + 1e-5  # (1 - restart_t) x half a cell
    noise = lambda idx: CoordNoise(list(idx), [m.shape[1]] * len(idx), 0, (7, 6))  # noqa: E731
    both = model.generate(m, steps=3, noise_fn=noise((0, 1)), restarts=1).frac
    one = model.generate(m[1:], steps=3, noise_fn=noise((1,)), restarts=1).frac
    assert torch.allclose(one[0], both[1], atol=1e-5)  # same index, same restart noise
    with pytest.raises(ValueError, match="restart"):
        CoordFlowConfig(restart_t=1.0)


def test_the_noising_formula_hits_both_ends_and_is_never_cached(example_crystals):
    from mofasa.diffusion.coordflow import _interpolate

    model = _tiny_model()
    batch = _batch(example_crystals, 2)
    clean = batch_state(batch, model.codes, model.coder)
    m = batch.mask.unsqueeze(-1).double()  # (B, N, 1)
    noise = tuple(torch.rand_like(v) for v in clean)
    at = lambda t: _interpolate(noise, clean, t, m)  # noqa: E731
    for got, want in zip(at(0.0), noise, strict=True):
        assert torch.allclose(got, want * (m if got.dim() == 3 else 1))
    assert float(min_image_frac_torch(at(1.0)[0] - clean[0]).abs().max()) < 1e-9
    before = at(0.5)[2].clone()
    clean[2].add_(1.0)  # same tensor objects, new values: a cache would return stale states
    assert torch.allclose(at(0.5)[2], before + 0.5)


def test_wsd_schedule_is_flat_then_linear_to_the_floor():
    from mofasa.training.loop import OptimConfig, lr_factor

    f = [lr_factor(s, 10, 1000, 0.05, "wsd", 200) for s in (5, 10, 500, 800, 900, 1000, 1200)]
    assert f[0] == pytest.approx(0.6) and f[1] == f[2] == f[3] == 1.0
    assert f[4] == pytest.approx(0.05 + 0.95 * 0.5) and f[5] == f[6] == pytest.approx(0.05)
    assert lr_factor(500, 10, 1000, 0.05) < 1.0  # cosine unchanged by default
    with pytest.raises(ValueError, match="schedule"):
        OptimConfig(schedule="step")


def test_velocity_weighting_has_mean_one_and_grows_towards_the_data(example_crystals):
    import dataclasses

    model = _tiny_model()
    model.config = dataclasses.replace(model.config, coord_weighting="velocity")
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = model.coord_weight(u.pow(model.config.time_power) * model.config.t_max)
    assert float(w.mean()) == pytest.approx(1.0, rel=0.02)
    t = torch.tensor([0.1, 0.5, 0.9, 0.99, 0.999], dtype=torch.float64)
    wt = model.coord_weight(t)
    assert torch.all(wt[1:] >= wt[:-1]) and wt[-1] == wt[-2]  # capped at the floor
    assert float(wt[2] / wt[0]) == pytest.approx((0.9 / 0.1) ** 2, rel=1e-6)
    model.config = dataclasses.replace(model.config, coord_weight_power=1.0)
    half = model.coord_weight(t)
    assert float(half[2] / half[0]) == pytest.approx(0.9 / 0.1, rel=1e-6)
    torch.manual_seed(0)
    loss, metrics = model.train()(_batch(example_crystals, 2))
    assert torch.isfinite(loss) and "loss_coord_weighted" in metrics
    with pytest.raises(ValueError, match="coord_weighting"):
        CoordFlowConfig(coord_weighting="sigma")


def test_close_pair_share_counts_structures_with_a_pair_below_the_cutoff(example_crystals):
    from mofasa.data.quality import close_pair_share

    real = sorted(example_crystals, key=lambda c: c.num_atoms)[:2]
    bad = real[0].copy(frac=np.vstack([real[0].frac, real[0].frac[:1] + 0.001]),
                       numbers=np.append(real[0].numbers, real[0].numbers[0]))
    assert close_pair_share(real) == 0.0 and close_pair_share([bad, *real]) == pytest.approx(1 / 3)
    assert close_pair_share([]) == 0.0
