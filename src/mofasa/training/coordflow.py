"""`mofasa train coordflow`-style training of the explicit-coordinate hybrid (bake-off arm c).

Trains `CoordFlow` on prepared crystals with the shared `Trainer` (EMA, resume, DDP, metrics,
probes). The lattice code's statistics are measured on the training split and stored in the
config the checkpoint carries, so `mofasa.checkpoint.load_coordflow` needs no other file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mofasa.config import load_config, to_dict
from mofasa.data.atom_counts import AtomCountModel
from mofasa.data.dataset import CrystalDataset
from mofasa.data.quality import close_pair_share, pooled_bonded_share
from mofasa.diffusion.coordflow import CoordFlow, CoordFlowConfig
from mofasa.models.coord_denoiser import CoordDenoiser, CoordDenoiserConfig
from mofasa.training.autoencoder import atom_count_histogram
from mofasa.training.diffusion import ProbeConfig
from mofasa.training.loop import DataConfig, OptimConfig, RunConfig, Trainer, split_datasets
from mofasa.training.probes import probe_structures

__all__ = ["CoordFlowTrainConfig", "coordflow_probes", "data_stats", "load_coordflow_config",
           "structure_numbers", "train_coordflow"]

KIND = "coordflow"


@dataclass(frozen=True)
class CoordFlowTrainConfig:
    """Sections ``model`` (network), ``flow`` (process), ``data``, ``optim``, ``run``,
    ``probes``."""

    model: CoordDenoiserConfig = field(default_factory=CoordDenoiserConfig)
    flow: CoordFlowConfig = field(default_factory=CoordFlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/coordflow"))
    probes: ProbeConfig = field(default_factory=ProbeConfig)


def load_coordflow_config(source: str | Path | dict | None,
                          overrides: list[str] | None = None) -> CoordFlowTrainConfig:
    """A shipped config name (tiny, small), a YAML path or a dict, + dotted overrides."""
    return load_config(CoordFlowTrainConfig, source, overrides, kind=KIND)


def structure_numbers(ds: CrystalDataset) -> list[np.ndarray]:
    """(N_i,) atomic numbers of every structure of a split (no coordinates read)."""
    numbers, offsets = np.asarray(ds._numbers), np.asarray(ds._offsets)
    return [numbers[offsets[j]:offsets[j + 1]].astype(np.int64) for j in ds._index]


def data_stats(ds: CrystalDataset, max_atoms: int | None) -> dict:
    """What sampling needs from the training split: the atom-count histogram, p(N | condition)
    (`AtomCountModel`) and the elements seen (the conditions' vocabulary)."""
    numbers = structure_numbers(ds)
    seen = np.unique(np.concatenate(numbers)) if numbers else np.zeros(0, np.int64)
    return {"num_atoms_hist": atom_count_histogram(ds, max_atoms), "n_train": len(ds),
            "atom_counts": AtomCountModel.fit(numbers).to_dict(),
            "elements_seen": [int(z) for z in seen]}


def lattice_statistics(ds: CrystalDataset) -> tuple[float, float]:
    """Mean and std of log(length / N^(1/3)) over the split's cells (all three lengths)."""
    params = np.asarray(ds._lattice)[ds._index]  # (S, 6) a, b, c, alpha, beta, gamma
    n = ds.num_atoms.astype(np.float64)[:, None]
    logs = np.log(params[:, :3] / n ** (1.0 / 3.0))
    return float(logs.mean()), float(max(logs.std(), 1e-3))


@torch.no_grad()
def coordflow_probes(model: CoordFlow, crystals: list, sizes: np.ndarray, samples: int,
                     steps: int, seed: int, t0: float = 0.8) -> dict[str, float]:
    """SDEdit from t0 (the real structures noised, integrated back) with its floor (the
    noised input itself); the pooled bonded share of de novo samples and their share with a
    pair closer than 0.8 Å. A conditional model is probed on its unconditional path."""
    from mofasa.data.batch import collate

    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    batch = collate(crystals).to(model.device)
    torch.manual_seed(seed)  # _noised draws from the global RNG (the trainer restores it)
    t = torch.full((batch.mask.shape[0],), t0, device=model.device)
    (xt, ct, lt), _ = model._noised(batch, t)
    noisy = dataclasses.replace(batch, frac=xt)
    out = {"sdedit_floor": pooled_bonded_share(noisy.unbatch())}
    x, c, lcode, mask = xt, ct, lt, batch.mask
    grid = [tk for tk in model.time_grid(steps) if tk > t0]
    for ta, tb in zip([t0, *grid[:-1]], grid, strict=True):
        tt = torch.full((mask.shape[0],), ta, device=model.device)
        d, ch, lh = model.denoiser(x, c, lcode, model.coder.decode(lcode, mask.sum(1)), tt, mask)
        r = (tb - ta) / (1.0 - ta)
        x = (x + r * d) % 1.0 * mask.unsqueeze(-1)
        c, lcode = c + r * (ch - c), lcode + r * (lh - lcode)
    restored = dataclasses.replace(batch, frac=x)  # types and lattice of the reference
    out["sdedit_bonded"] = pooled_bonded_share(restored.unbatch())
    if samples:
        rng = np.random.default_rng(seed)
        counts = rng.choice(sizes, samples)
        made = []
        for n in np.unique(counts):
            mask = torch.ones(int((counts == n).sum()), int(n), dtype=torch.bool)
            made += model.generate(mask.to(model.device), steps=steps, generator=g).unbatch()
        out["denovo_bonded"] = pooled_bonded_share(made)
        out["denovo_pair_below_0.8A"] = close_pair_share(made)
    model.train(was)
    return out


def _probe_fn(cfg: CoordFlowTrainConfig, hist: torch.Tensor):
    if not cfg.probes.every:
        return None
    crystals = probe_structures(cfg.data.path, cfg.data.val_split, cfg.data.max_atoms,
                                cfg.probes.structures)
    if not crystals:
        return None
    sizes = np.flatnonzero(hist.numpy())
    return lambda model: coordflow_probes(model, crystals, sizes, cfg.probes.samples,
                                          cfg.probes.steps, cfg.probes.seed)


def train_coordflow(cfg: CoordFlowTrainConfig, *, resume: bool = True,
                    stop_after: int | None = None) -> dict[str, float]:
    """Train (or resume) the explicit-coordinate model; returns the last logged metrics."""
    train, val = split_datasets(cfg.data, cfg.run.seed)
    mean, std = lattice_statistics(train)
    cfg = dataclasses.replace(cfg, flow=dataclasses.replace(cfg.flow, log_len_mean=mean,
                                                            log_len_std=std))
    torch.manual_seed(cfg.run.seed)
    stats = data_stats(train, cfg.data.max_atoms)
    hist = stats["num_atoms_hist"]
    model = CoordFlow(CoordDenoiser(cfg.model), cfg.flow, hist)
    trainer = Trainer(model, kind=KIND, config=to_dict(cfg), data=cfg.data, optim=cfg.optim,
                      run=cfg.run, extra_state={"data_stats": stats},
                      probe_fn=_probe_fn(cfg, hist), probe_every=cfg.probes.every)
    if resume:
        trainer.resume()
    return trainer.fit(train, val if len(val) else None, stop_after=stop_after)
