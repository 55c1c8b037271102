"""Pair terms of the latent denoiser (bake-off arm b): invariances, known values, zero start."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mofasa.config import merge
from mofasa.geometry.lattice_torch import lattice_from_parameters_torch
from mofasa.models.denoiser import Denoiser, get_denoiser_preset
from mofasa.models.pair_terms import GeometryReadout, PairBias, readout_loss


def _cell(b: int = 2) -> torch.Tensor:
    lengths = torch.tensor([[9.0, 10.0, 11.0]]).expand(b, 3)
    angles = torch.tensor([[80.0, 95.0, 105.0]]).expand(b, 3)
    return lattice_from_parameters_torch(lengths.double(), angles.double())  # (B, 3, 3)


def test_pair_bias_is_translation_invariant_and_symmetric_in_distance():
    torch.manual_seed(0)
    pb = PairBias(heads=4).double()
    torch.nn.init.normal_(pb.mlp[-1].weight)  # a trained-looking head
    frac = torch.rand(2, 7, 3, dtype=torch.float64)
    lat = _cell()
    bias = pb(frac, lat)  # (B, H, N, N)
    assert bias.shape == (2, 4, 7, 7)
    shifted = (frac + torch.tensor([0.3, -0.7, 0.55], dtype=torch.float64)) % 1.0
    assert torch.allclose(pb(shifted, lat), bias, atol=1e-9)
    perm = torch.randperm(7)
    assert torch.allclose(pb(frac[:, perm], lat), bias[:, :, perm][:, :, :, perm], atol=1e-9)


def test_pair_distances_are_minimum_image():
    pb = PairBias(heads=1, frequencies=1, rbf=4, cutoff=6.0).double()
    frac = torch.tensor([[[0.05, 0.0, 0.0], [0.95, 0.0, 0.0]]], dtype=torch.float64)
    lat = torch.eye(3, dtype=torch.float64).unsqueeze(0) * 10.0
    feats = {}
    pb.mlp.register_forward_hook(lambda m, i, o: feats.setdefault("x", i[0]))
    pb(frac, lat)
    rbf = feats["x"][0, 0, 1, 6:]  # features of the pair (0, 1): 1.0 Å apart across the face
    centres = torch.linspace(0.0, 6.0, 4, dtype=torch.float64)
    assert torch.allclose(rbf, torch.exp(-pb.gamma * (1.0 - centres) ** 2))


def test_fresh_pair_model_equals_the_model_without_pair_terms():
    base = dataclasses.replace(get_denoiser_preset("tiny"), latent_dim=4, global_latent_dim=3)
    torch.manual_seed(0)
    with_pairs = Denoiser(merge(base, {"pair_terms": True})).eval()
    plain = Denoiser(base).eval()
    plain.load_state_dict({k: v for k, v in with_pairs.state_dict().items()
                           if not k.startswith(("readout.", "pair_bias."))})
    zl, zg = torch.randn(2, 5, 4), torch.randn(2, 3)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    t = torch.tensor([0.3, 0.7])
    a = with_pairs(zl, zg, t, mask)
    b = plain(zl, zg, t, mask)
    assert torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])  # zero-initialised head
    *_, readout = with_pairs(zl, zg, t, mask, return_readout=True)
    assert readout[1].shape == (2, 5, 3) and ((readout[1] >= 0) & (readout[1] < 1)).all()
    assert ((readout[3] > 60) & (readout[3] < 120)).all()


def test_readout_loss_is_zero_for_the_true_structure_and_trains():
    frac = torch.rand(2, 6, 3, dtype=torch.float64)
    lat = _cell()
    mask = torch.ones(2, 6, dtype=torch.bool)
    cs = torch.stack([torch.cos(2 * math.pi * frac), torch.sin(2 * math.pi * frac)], -1)
    n = torch.tensor([6.0, 6.0], dtype=torch.float64)
    log_len = (torch.tensor([[9.0, 10.0, 11.0]] * 2, dtype=torch.float64) / n.unsqueeze(-1)
               .pow(1 / 3)).log()
    angles = torch.tensor([[80.0, 95.0, 105.0]] * 2, dtype=torch.float64)
    alpha = torch.ones(2, dtype=torch.float64)
    exact = readout_loss((cs, frac, log_len, angles), frac, lat, mask, alpha)
    assert float(exact) == pytest.approx(0.0, abs=1e-12)
    off = readout_loss((cs, frac, log_len + 0.1, angles), frac, lat, mask, alpha)
    assert float(off) == pytest.approx(2 * 3 * 0.01 / 2, rel=1e-6)  # mean over B of 3 * 0.1^2
    assert torch.allclose(GeometryReadout.lattice_matrix(log_len, angles, n), lat, atol=1e-9)


def test_the_geometry_loss_trains_the_readout_through_loss_terms(example_crystals):
    from mofasa.checkpoint import build_diffusion
    from mofasa.data import collate
    from mofasa.diffusion.schedule import DiffusionConfig
    from mofasa.models import CrystalAutoencoder, get_preset

    torch.manual_seed(0)
    ae = CrystalAutoencoder(get_preset("tiny"))
    den = merge(get_denoiser_preset("tiny"), {"pair_terms": True})
    model = build_diffusion(den, DiffusionConfig(geometry_weight=0.5), ae).train()
    batch = collate(sorted(example_crystals, key=lambda c: c.num_atoms)[:3])
    loss, metrics = model.loss_terms(batch)
    assert "loss_geometry" in metrics and float(metrics["loss_geometry"]) > 0
    loss.backward()
    assert model.denoiser.readout.pos.weight.grad.abs().sum() > 0
    assert model.denoiser.readout.lattice.weight.grad.abs().sum() > 0
    plain = build_diffusion(get_denoiser_preset("tiny"), DiffusionConfig(), ae)
    assert "loss_geometry" not in plain.loss_terms(batch)[1]
