"""Tests for mofasa.models: GNS backbone, autoencoder, bottlenecks, losses, configs.

Fast by design (the whole file takes well under a minute on 2 CPU cores): tiny models, a few
small real QMOF structures (canonicalised), one thread (small matmuls on a shared machine are
much faster single-threaded), fixed seeds.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mofasa.config import ConfigError, from_dict, merge, to_dict
from mofasa.data import Crystal, CrystalBatch, canonicalize, collate, read_cif
from mofasa.data.elements import NUM_TOKENS
from mofasa.geometry.lattice import lattice_from_parameters
from mofasa.geometry.lattice_torch import lattice_from_parameters_torch
from mofasa.models import (
    GNS,
    AutoencoderConfig,
    BackboneConfig,
    BottleneckConfig,
    CrystalAutoencoder,
    GaussianBottleneck,
    ResidualVQ,
    attend,
    autoencoder_presets,
    get_preset,
    kl_divergence,
    periodic_displacement,
    translate_batch,
)
from mofasa.models.gns import GraphMessagePassing, MultiHeadAttention

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "qmof_cifs"
# the four smallest example MOFs (26, 27, 28 and 32 atoms)
SMALL_IDS = ["qmof-a0e80c5", "qmof-7344c24", "qmof-f528aef", "qmof-1150e7f"]


# --------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def crystals() -> list[Crystal]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [canonicalize(read_cif(EXAMPLES / f"{name}.cif")) for name in SMALL_IDS]


def _tiny(**overrides) -> AutoencoderConfig:
    return merge(get_preset("tiny"), overrides)


def _model(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> CrystalAutoencoder:
    """A tiny model in eval mode whose parameters are all perturbed: the zero-initialised
    output layers would otherwise make every residual branch (message passing, attention,
    global node) the identity, and symmetry tests would pass trivially."""
    torch.manual_seed(seed)
    model = CrystalAutoencoder(_tiny(**overrides)).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _permuted(c: Crystal, perm: np.ndarray) -> Crystal:
    return Crystal(c.numbers[perm], c.frac[perm], c.lattice, id=c.id)


def _naive_attention(q, k, v, key_mask, bias=None, factors=None):
    """Reference: explicit (B, H, N, N) softmax with masks."""
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, Nq, Nk)
    if bias is not None:
        logits = logits + bias
    if factors is not None:
        logits = logits + factors[0] @ factors[1].transpose(-1, -2)
    logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1) @ v


class _MaxNumel(TorchDispatchMode):
    """Records the largest tensor produced by any aten op (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() > self.max_numel:
                self.max_numel, self.op = t.numel(), func
        return out


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------


def test_config_round_trip_and_presets(tmp_path):
    assert autoencoder_presets() == ["base", "large", "small", "tiny"]
    for name in autoencoder_presets():  # every shipped YAML preset loads and round-trips
        cfg = get_preset(name)
        d = to_dict(cfg)
        assert from_dict(AutoencoderConfig, d) == cfg, name
        assert from_dict(AutoencoderConfig, json.loads(json.dumps(d))) == cfg, name
    assert AutoencoderConfig() == get_preset("small")  # the defaults are the small preset
    # partial override on top of a base, nested
    cfg = merge(get_preset("small"), {"decoder": {"depth": 5}, "bottleneck": {"kind": "rvq"},
                                      "fourier_frequencies": [1, 3]})
    assert cfg.decoder.depth == 5 and cfg.decoder.width == get_preset("small").decoder.width
    assert cfg.bottleneck.kind == "rvq" and cfg.fourier_frequencies == (1, 3)
    with pytest.raises(ConfigError, match="no_such_key"):
        from_dict(AutoencoderConfig, {"no_such_key": 1})
    with pytest.raises(ConfigError, match="shipped"):
        get_preset("huge")
    with pytest.raises(ValueError):
        BackboneConfig(width=30, heads=4)
    with pytest.raises(ValueError):
        BottleneckConfig(kind="vae")
    # a checkpoint-like file with the config as a plain dict loads under weights_only=True
    model = _model(dtype=torch.float32)
    torch.save({"config": to_dict(model.config), "model": model.state_dict()}, tmp_path / "c.pt")
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)
    clone = CrystalAutoencoder(from_dict(AutoencoderConfig, ckpt["config"]))
    clone.load_state_dict(ckpt["model"])
    assert clone.config == model.config


def test_models_import_without_pymatgen_ase_spglib():
    code = (
        "import sys\n"
        "for m in ('pymatgen', 'ase', 'spglib'): sys.modules[m] = None\n"
        "import mofasa.models as M\n"
        "M.CrystalAutoencoder(M.get_preset('tiny'))\n"
        "assert not any(k.startswith(('pymatgen', 'ase.', 'spglib')) and sys.modules[k]\n"
        "               for k in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------------------------
# backbone
# --------------------------------------------------------------------------------------------


def test_attend_matches_naive_reference_with_padding_bias_and_low_rank():
    g = torch.Generator().manual_seed(0)
    B, H, N, d, r = 3, 2, 7, 5, 3
    q, k, v = (torch.randn(B, H, N, d, generator=g, dtype=torch.float64) for _ in range(3))
    key_mask = torch.ones(B, N, dtype=torch.bool)
    key_mask[1, 4:] = False  # padding
    key_mask[2, 1:] = False  # a single real atom
    bias = torch.randn(B, H, N, N, generator=g, dtype=torch.float64)
    u, w = (torch.randn(B, H, N, r, generator=g, dtype=torch.float64) for _ in range(2))
    for kwargs in ({}, {"bias": bias}, {"factors": (u, w)}, {"bias": bias, "factors": (u, w)}):
        got = attend(q, k, v, key_mask, **kwargs)
        ref = _naive_attention(q, k, v, key_mask, kwargs.get("bias"), kwargs.get("factors"))
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_dense_attention_module_matches_naive_reference():
    torch.manual_seed(0)
    B, N, D, H = 2, 6, 12, 3
    attn = MultiHeadAttention(D, H).double()
    torch.nn.init.normal_(attn.out.weight)  # zero-initialised by default
    x = torch.randn(B, N, D, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    bias = torch.randn(B, H, N, N, dtype=torch.float64)
    q, k, v = attn.qkv(x).view(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
    ref = _naive_attention(q, k, v, mask, bias)  # (B, H, N, d)
    ref = attn.out(ref.transpose(1, 2).reshape(B, N, D))
    torch.testing.assert_close(attn(x, mask, bias), ref, rtol=1e-10, atol=1e-10)


def test_graph_message_passing_matches_loop_reference():
    torch.manual_seed(0)
    B, N, D = 2, 5, 8
    mp = GraphMessagePassing(D, 16).double()
    for lin in (mp.edge_out, mp.node_out):
        torch.nn.init.normal_(lin.weight)
    x = torch.randn(B, N, D, dtype=torch.float64)
    edge_index = torch.tensor([[0, 0, 1, 2, 2, 2, 5, 6], [1, 2, 0, 0, 1, 1, 6, 5]])
    edges = torch.randn(edge_index.shape[1], D, dtype=torch.float64)
    upd, new_edges = mp(x, edge_index, edges)
    flat = x.reshape(B * N, D)
    ref = torch.zeros(B * N, D, dtype=torch.float64)
    for node in range(B * N):
        sel = (edge_index[0] == node).nonzero().flatten().tolist()
        msgs = []
        for e in sel:
            i, j = edge_index[:, e].tolist()
            pre = mp.edge_norm(edges[e]) + mp.edge_dst(flat[i]) + mp.edge_src(flat[j])
            msgs.append(edges[e] + mp.edge_out(torch.nn.functional.silu(pre)))
            torch.testing.assert_close(new_edges[e], msgs[-1])
        agg = torch.stack(msgs).mean(0) if msgs else torch.zeros(D, dtype=torch.float64)
        a = mp.node_in(flat[node]) + mp.node_msg(agg)
        ref[node] = mp.node_out(torch.nn.functional.silu(a))
    torch.testing.assert_close(upd, ref.view(B, N, D))


def test_dense_step_memory_is_not_n2_times_width():
    torch.manual_seed(0)
    B, N, D, H = 1, 400, 64, 4
    gns = GNS(BackboneConfig(width=D, depth=1, heads=H, local="dense"))
    for p in gns.parameters():  # make every branch non-trivial (zero-init outputs)
        torch.nn.init.normal_(p, std=0.05)
    h = torch.randn(B, N, D, requires_grad=True)
    g = torch.randn(B, D)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[:, -17:] = False
    with _MaxNumel() as probe:
        out_h, out_g = gns(h, g, mask)
        (out_h.square().sum() + out_g.sum()).backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()
    # at most one (B, heads, N, N) attention matrix; a materialised pair tensor would be
    # B * N * N * D = 10.2 M scalars (16x more)
    assert probe.max_numel <= B * H * N * N, (probe.max_numel, probe.op)
    assert probe.max_numel * 8 <= B * N * N * D


def test_conditioning_starts_neutral_but_is_trainable():
    torch.manual_seed(0)
    cfg = BackboneConfig(width=16, depth=2, heads=2, local="dense")
    gns = GNS(cfg, cond_dim=4).double()
    h, g = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.bool)
    c1, c2 = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    out1, out2 = gns(h, g, mask, cond=c1), gns(h, g, mask, cond=c2)
    torch.testing.assert_close(out1, out2)  # zero-initialised modulation: cond ignored at init
    # zero output layers get a gradient at once; the modulation from the second step on
    opt = torch.optim.SGD(gns.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        (gns(h, g, mask, cond=c1)[0] - 1.0).square().sum().backward()
        opt.step()
    mod = gns.layers[0].modulation
    assert mod is not None and mod.weight.grad is not None and mod.weight.grad.abs().sum() > 0
    assert not torch.allclose(gns(h, g, mask, cond=c1)[0], gns(h, g, mask, cond=c2)[0])


# --------------------------------------------------------------------------------------------
# autoencoder symmetries
# --------------------------------------------------------------------------------------------


def test_encoder_permutation_equivariant_latents(crystals):
    model = _model()
    batch = collate(crystals[:2], dtype=torch.float64)
    rng = np.random.default_rng(0)
    perms = [rng.permutation(c.num_atoms) for c in crystals[:2]]
    pbatch = collate([_permuted(c, p) for c, p in zip(crystals[:2], perms, strict=True)],
                     dtype=torch.float64)
    with torch.no_grad():
        zl, zg = model.latents(batch)
        pzl, pzg = model.latents(pbatch)
    for b, p in enumerate(perms):
        torch.testing.assert_close(pzl[b, : len(p)], zl[b, torch.from_numpy(p)])
    torch.testing.assert_close(pzg, zg)
    assert pzl[0, crystals[0].num_atoms :].abs().max() == 0  # padding rows are zero
    # message passing is active: a different neighbourhood gives a different latent for
    # the same (type, position) atom
    moved = collate([Crystal(c.numbers, c.frac, c.lattice, id=c.id) for c in crystals[:2]],
                    dtype=torch.float64)
    moved.frac[0, 1] = (moved.frac[0, 1] + 0.05) % 1.0
    with torch.no_grad():
        mzl, _ = model.latents(moved)
    assert not torch.allclose(mzl[0, 0], zl[0, 0])


def test_encoder_invariant_to_rotating_the_cartesian_frame(crystals):
    model = _model()
    q, r = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    rot = q * np.sign(np.diag(r))
    rotated = [Crystal(c.numbers, c.frac, c.lattice @ rot, id=c.id) for c in crystals[:2]]
    with torch.no_grad():
        zl, zg = model.latents(collate(crystals[:2], dtype=torch.float64))
        rzl, rzg = model.latents(collate(rotated, dtype=torch.float64))
    torch.testing.assert_close(rzl, zl)
    torch.testing.assert_close(rzg, zg)
    # ... while it does see the geometry: a strained cell changes the latents
    strained = [Crystal(c.numbers, c.frac, c.lattice * 1.05, id=c.id) for c in crystals[:2]]
    with torch.no_grad():
        szl, szg = model.latents(collate(strained, dtype=torch.float64))
    assert not torch.allclose(szl, zl) and not torch.allclose(szg, zg)


def test_decoder_permutation_equivariant_and_order_embeddings_break_it():
    torch.manual_seed(0)
    B, N = 2, 9
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 6:] = False
    perm = torch.tensor([4, 0, 7, 2, 8, 1, 3, 6, 5])
    perm1 = torch.cat([torch.tensor([5, 3, 0, 1, 4, 2]), torch.arange(6, N)])  # keeps padding
    for order in (False, True):
        model = _model(seed=1, use_order_embeddings=order)
        zl = torch.randn(B, N, model.config.latent_dim, dtype=torch.float64)
        zg = torch.randn(B, model.config.global_latent_dim, dtype=torch.float64)
        idx = torch.stack([perm, perm1])  # (B, N)
        pzl = torch.stack([zl[b, idx[b]] for b in range(B)])
        with torch.no_grad():
            out, pout = model.decode(zl, zg, mask), model.decode(pzl, zg, mask)
        same = all(
            torch.allclose(pout.type_logits[b], out.type_logits[b, idx[b]], atol=1e-9)
            and torch.allclose(pout.frac[b], out.frac[b, idx[b]], atol=1e-9)
            for b in range(B)
        )
        assert same != order
        if not order:
            torch.testing.assert_close(pout.lengths, out.lengths)
            torch.testing.assert_close(pout.angles, out.angles)


def test_padding_never_influences_real_atoms(crystals):
    model = _model()
    small = crystals[0]
    alone = collate([small], dtype=torch.float64)
    padded = collate([small, crystals[3]], dtype=torch.float64)
    n = small.num_atoms
    # garbage in the padding rows of crystal 0: only the mask may matter
    padded.frac[0, n:] = torch.rand(padded.max_atoms - n, 3, dtype=torch.float64)
    padded.atom_types[0, n:] = 6
    with torch.no_grad():
        zl, zg = model.latents(alone)
        pzl, pzg = model.latents(padded)
        torch.testing.assert_close(pzl[:1, :n], zl)
        torch.testing.assert_close(pzg[:1], zg)
        out = model.decode(zl, zg, alone.mask)
        junk = torch.randn_like(pzl[:1, n:])
        zl_pad = torch.cat([zl, junk], dim=1)
        pout = model.decode(zl_pad, zg, padded.mask[:1])
    torch.testing.assert_close(pout.type_logits[:, :n], out.type_logits)
    torch.testing.assert_close(pout.frac[:, :n], out.frac)
    torch.testing.assert_close(pout.lengths, out.lengths)
    assert pout.frac[:, n:].abs().max() == 0


# --------------------------------------------------------------------------------------------
# geometry of the outputs
# --------------------------------------------------------------------------------------------


def test_lattice_matrix_matches_geometry_and_reconstruct_is_valid(crystals):
    params = torch.tensor(
        [[7.0, 9.0, 11.0, 70.0, 100.0, 115.0], [5.0, 5.0, 5.0, 60.1, 60.1, 119.8]],
        dtype=torch.float64,
    )
    got = lattice_from_parameters_torch(params[:, :3], params[:, 3:])
    for b in range(2):
        ref = lattice_from_parameters(*params[b].tolist())
        np.testing.assert_allclose(got[b].numpy(), ref, atol=1e-10)
    model = _model(dtype=torch.float32)
    batch = collate(crystals)
    rec = model.reconstruct(batch)
    assert isinstance(rec, CrystalBatch) and rec.ids == batch.ids
    real = rec.mask
    assert (rec.atom_types[real] >= 1).all() and (rec.atom_types[~real] == 0).all()
    assert rec.atom_types.max() < NUM_TOKENS
    assert (rec.frac >= 0).all() and (rec.frac < 1).all()
    assert (torch.linalg.det(rec.lattice.double()) > 0).all()
    lengths, angles = rec.lattice_parameters()
    assert (lengths > 0).all() and (angles > 60).all() and (angles < 120).all()
    torch.testing.assert_close(rec.num_atoms, batch.num_atoms)


def test_translate_batch_and_periodic_displacement():
    frac = torch.tensor([[[0.95, 0.5, 0.0], [0.1, 0.2, 0.3]]], dtype=torch.float64)
    lat = torch.diag(torch.tensor([10.0, 20.0, 5.0], dtype=torch.float64)).unsqueeze(0)
    batch = CrystalBatch(torch.tensor([[6, 8]]), frac, lat, torch.tensor([[True, False]]),
                         torch.tensor([1]))
    moved = translate_batch(batch, torch.tensor([[0.1, 0.6, 1.0]], dtype=torch.float64))
    expected = torch.tensor([0.05, 0.1, 0.0], dtype=torch.float64)
    torch.testing.assert_close(moved.frac[0, 0], expected)
    assert moved.frac[0, 1].abs().max() == 0  # padding stays zero
    d = periodic_displacement(moved.frac, frac, lat)  # wrap-aware: small, not ~ the cell
    torch.testing.assert_close(d[0, 0], torch.tensor([1.0, -8.0, 0.0], dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# bottlenecks
# --------------------------------------------------------------------------------------------


def test_kl_bottleneck():
    mean = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    logvar = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    kl = kl_divergence(mean, logvar)
    assert kl.abs().max() == 0
    kl.sum().backward()
    assert mean.grad.abs().max() == 0 and logvar.grad.abs().max() == 0  # stationary point
    for dm, dl in ((0.1, 0.0), (0.0, 0.3), (0.0, -0.3), (-0.2, 0.1)):
        assert (kl_divergence(mean.detach() + dm, logvar.detach() + dl) > 0).all()
    torch.manual_seed(0)
    bn = GaussianBottleneck(3, kl_weight=0.5).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    det = bn(x, mask, deterministic=True)
    torch.testing.assert_close(det.z, x[..., :3])  # the mean
    torch.testing.assert_close(det.continuous, x[..., :3])
    ref = kl_divergence(x[..., :3], x[..., 3:])[mask].mean()
    torch.testing.assert_close(det.loss, 0.5 * ref)
    sampled = bn(x, mask)
    assert not torch.allclose(sampled.z, det.z)
    # the autoencoder is deterministic in eval mode and samples in training mode
    assert get_preset("tiny").bottleneck.kind == "kl"


def _rvq(threshold: float = 0.0) -> ResidualVQ:
    cfg = BottleneckConfig(
        kind="rvq", num_codebooks=3, codebook_size=8, ema_decay=0.9, dead_code_threshold=threshold
    )
    torch.manual_seed(0)
    return ResidualVQ(4, cfg).double()


def test_rvq_output_is_sum_of_codewords_with_straight_through_gradient():
    rvq = _rvq().eval()
    x = torch.randn(3, 6, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 2:] = False
    out = rvq(x, mask)
    codes = out.codes[mask]  # (M, Q)
    expected = sum(rvq.embed[q][codes[:, q]] for q in range(3))
    torch.testing.assert_close(out.z[mask], expected)
    assert (out.codes[~mask] == -1).all()
    torch.testing.assert_close(out.z[~mask], x[~mask])
    torch.testing.assert_close(rvq.from_continuous(x.detach(), mask), out.z.detach())
    (out.z * torch.arange(4, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(x.grad, torch.arange(4, dtype=torch.float64).expand(3, 6, 4))
    # residual quantisation: each stage reduces the error on average
    err1 = (x.detach()[mask] - rvq.embed[0][codes[:, 0]]).norm(dim=-1).mean()
    assert (x.detach()[mask] - expected).norm(dim=-1).mean() < err1
    for q in range(3):
        assert 0 < out.metrics[f"usage_{q}"] <= 1
        assert 1 <= out.metrics[f"perplexity_{q}"] <= 8


def test_rvq_ema_update_moves_used_codewords_only():
    rvq = _rvq(threshold=0.0).train()
    x = torch.randn(40, 4, dtype=torch.float64)
    before = rvq.embed.clone()
    cs, es = rvq.cluster_size.clone(), rvq.embed_sum.clone()
    out = rvq(x)
    codes = out.codes
    used = torch.bincount(codes[:, 0], minlength=8) > 0
    moved = (rvq.embed[0] - before[0]).norm(dim=-1) > 1e-6
    assert moved[used].all() and not moved[~used].any()
    # exact EMA formula for codebook 0 (residual of stage 0 is x itself)
    k = int(codes[0, 0])
    sel = codes[:, 0] == k
    n_k = 0.9 * cs[0, k] + 0.1 * sel.sum()
    s_k = 0.9 * es[0, k] + 0.1 * x[sel].sum(0)
    n = (0.9 * cs[0] + 0.1 * torch.bincount(codes[:, 0], minlength=8)).sum()
    smoothed = (n_k + 1e-5) / (n + 8e-5) * n
    torch.testing.assert_close(rvq.embed[0, k], s_k / smoothed)
    assert not any(f"restarted_{q}" in out.metrics and out.metrics[f"restarted_{q}"] > 0
                   for q in range(3))


def test_rvq_dead_codes_restart_from_batch_vectors():
    rvq = _rvq(threshold=1.0).train()
    x = torch.randn(2, 10, 4, dtype=torch.float64) + 5.0  # far from every initial codeword
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    rows = x[mask]  # stage-0 residuals are the inputs
    err_before = torch.cdist(rows, rvq.embed[0]).min(dim=1).values.mean()
    out = rvq(x, mask)
    used = torch.bincount(out.codes[mask][:, 0], minlength=8) > 0
    dead = ~used  # unused on the first step -> EMA count 0.9 < 1 -> restarted
    assert dead.any()
    for k in dead.nonzero().flatten().tolist():
        assert (rows - rvq.embed[0, k]).norm(dim=-1).min() < 1e-12
    assert out.metrics["restarted_0"] == dead.float().mean()
    # restarted codes now sit on data: the stage-0 quantisation error is much smaller
    err_after = torch.cdist(rows, rvq.embed[0]).min(dim=1).values.mean()
    assert err_after < 0.5 * err_before


def test_rvq_autoencoder_straight_through_reaches_encoder(crystals):
    model = _model(dtype=torch.float32, bottleneck={"kind": "rvq", "codebook_size": 16}).train()
    batch = collate(crystals[:2])
    enc = model.encode(batch)
    out = model.decode(enc.z_local, enc.z_global, batch.mask)
    (out.frac.sum() + out.type_logits.logsumexp(-1).sum() + out.lengths.sum()).backward()
    for p in (model.local_head.weight, model.global_head.weight, model.type_embed.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    model.zero_grad()
    loss, metrics = model(batch)
    loss.backward()
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    for q in range(model.config.bottleneck.num_codebooks):
        assert f"local_usage_{q}" in metrics and f"global_perplexity_{q}" in metrics
    zl, _ = model.latents(batch)  # continuous pre-quantisation latents
    assert not torch.allclose(zl, model.encode(batch, deterministic=True).z_local)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["none", "kl", "rvq"])
def test_training_step_all_bottlenecks(crystals, kind):
    torch.manual_seed(0)
    model = CrystalAutoencoder(_tiny(bottleneck={"kind": kind, "codebook_size": 16})).train()
    loss, metrics = model(collate(crystals))
    loss.backward()
    assert math.isfinite(loss.item())
    for key in ("loss", "type_acc", "coord_rmsd", "lattice_loss", "length_mae", "angle_mae"):
        assert key in metrics
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kind", ["kl", "rvq"])
def test_decoder_fine_tuning_keeps_the_encoder_and_its_latents(crystals, kind):
    """freeze_encoder + decoder_noise: only the decoder learns; latents stay bit-identical."""
    torch.manual_seed(0)
    cfg = _tiny(bottleneck={"kind": kind, "codebook_size": 16}, freeze_encoder=True,
                decoder_noise=0.3)
    model = CrystalAutoencoder(cfg).train()
    batch = collate(crystals)
    before = model.latents(batch)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    loss, _ = model(batch)
    loss.backward()
    dec = [p.grad for n, p in model.named_parameters() if n.startswith("decoder")]
    enc = [p.grad for n, p in model.named_parameters() if n.startswith("encoder")]
    assert dec and all(g is not None for g in dec)
    assert enc and all(g is None for g in enc)
    for k, v in model.named_buffers():  # no codebook EMA update, no statistics drift
        assert torch.equal(v, buffers[k]), k
    after = model.latents(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert model.training  # the frozen pass restores the training mode


def test_decoder_noise_perturbs_training_only(crystals):
    batch = collate(crystals)
    model = _model(decoder_noise=0.5)
    torch.manual_seed(1)
    clean = model.loss_terms(batch)[0]  # eval mode: no noise, deterministic
    torch.manual_seed(2)
    assert torch.equal(clean, model.loss_terms(batch)[0])
    model.train()
    torch.manual_seed(3)
    with torch.no_grad():
        zl, zg = model.latents(batch)
        nl, ng = model._perturb_latents(zl, zg, batch.mask)
    assert not torch.equal(ng, zg)
    assert not torch.equal(nl, zl) and torch.equal(nl[~batch.mask], zl[~batch.mask])
    rel = ((nl - zl)[batch.mask].std(0) / zl[batch.mask].std(0)).mean()
    assert 0.05 < float(rel) < 0.5  # per-crystal scale U(0, 0.5) x channel std
    with pytest.raises(ValueError, match="decoder_noise"):
        _tiny(decoder_noise=-1.0)


def test_bf16_autocast_keeps_latents_and_outputs_fp32(crystals):
    torch.manual_seed(0)
    model = CrystalAutoencoder(_tiny(bottleneck={"kind": "rvq", "codebook_size": 16})).train()
    batch = collate(crystals[:2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = model(batch)
        enc = model.encode(batch)
        out = model.decode(enc.z_local, enc.z_global, batch.mask)
    loss.backward()
    assert enc.z_local_continuous.dtype == torch.float32 and out.frac.dtype == torch.float32
    assert out.lengths.dtype == torch.float32 and out.type_logits.dtype == torch.float32
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_overfit_two_structures_and_decode_translated_input(crystals):
    torch.manual_seed(0)
    cfg = _tiny(encoder={"width": 64}, decoder={"width": 64}, latent_dim=16)  # KL bottleneck
    model = CrystalAutoencoder(cfg).train()
    batch = collate(crystals[:2])
    graph = model.build_graph(batch)  # valid under translation (uses distances only)
    steps, lr = 200, 5e-3
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (0.1 + 0.9 * (1 - s / steps))
    )
    for _ in range(steps):
        loss, metrics = model(batch, graph)  # random translation each step
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert metrics["type_acc"] == 1.0, metrics
    assert metrics["coord_rmsd"] < 0.15, metrics

    model.eval()
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        shift = torch.rand(2, 3, generator=gen)
        moved = translate_batch(batch, shift)
        rec = model.reconstruct(moved)  # fresh graph from the translated input
        assert torch.equal(rec.atom_types, moved.atom_types)
        err = periodic_displacement(
            rec.frac.double(), moved.frac.double(), moved.lattice.double()
        ).norm(dim=-1)[moved.mask]  # Å
        assert err.square().mean().sqrt() < 0.15 and err.max() < 0.4, err
        rl, ra = rec.lattice_parameters()
        ml, ma = moved.lattice_parameters()
        # well inside StructureMatcher's tolerances (ltol 0.2, angle_tol 5 degrees)
        assert ((rl - ml).abs() / ml).max() < 0.03 and (ra - ma).abs().max() < 1.5
