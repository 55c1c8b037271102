"""`sample()`: crystals from a trained model of either family, reproducibly.

Every structure's randomness is a function of ``(seed, index)`` only: its atom count (drawn from
the training histogram unless fixed) and every noise tensor of its reverse chain come from its
own generators. A structure therefore comes out the same whatever the batch size, the batch it
lands in, or whether the run was interrupted and resumed (up to floating-point differences
between batch shapes and devices). Structures are batched by atom count, so padding stays small.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from mofasa.checkpoint import load_model
from mofasa.data.batch import CrystalBatch
from mofasa.data.crystal import Crystal
from mofasa.diffusion.conditions import ConditionBatch
from mofasa.diffusion.coordflow import CoordFlow
from mofasa.diffusion.latent import LatentDiffusion
from mofasa.diffusion.restraint import restrain_bonds
from mofasa.sampling.conditions import ConditionPlan, plan_conditions
from mofasa.sampling.settings import SampleSettings

__all__ = ["CoordNoise", "StructureNoise", "iter_samples", "plan_sizes", "sample", "size_histogram",
           "structure_id"]

def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), int(stream)])


def structure_id(index: int) -> str:
    """Name of the ``index``-th structure (also its CIF file stem)."""
    return f"sample_{int(index):06d}"


def plan_sizes(indices: Sequence[int], seed: int, hist: torch.Tensor | np.ndarray | None,
               atoms: int | None = None) -> list[int]:
    """Atom count of each structure: ``atoms`` if given, else a draw from ``hist``.

    Args:
        indices: structure indices.
        seed: run seed.
        hist: (M + 1,) counts of training structures per atom count.
        atoms: fixed atom count.

    Returns:
        One count per index (a function of ``(seed, index)`` only).
    """
    if atoms is not None:
        if atoms < 1:
            raise ValueError(f"atoms must be >= 1, got {atoms}")
        return [int(atoms)] * len(indices)
    h = np.asarray(torch.as_tensor(hist).cpu(), dtype=np.float64) if hist is not None else None
    if h is None or h.sum() <= 0:
        raise ValueError("the model stores no atom-count histogram: pass atoms=N")
    p = h / h.sum()
    return [int(_rng(seed, i, 0).choice(len(p), p=p)) for i in indices]


class StructureNoise:
    """Standard normal latent noise per structure from its own ``(seed, index)`` generator.

    Each call returns the next ``(Z_L (B, N_max, D_L), Z_G (B, G))`` draw for the batch, with
    zeros at padding; structure b's values depend only on (seed, index_b) and the call count.

    Args:
        indices: structure indices of the batch rows.
        sizes: their atom counts.
        seed: run seed.
        dims: ``(D_L, G)``.
    """

    def __init__(self, indices: Sequence[int], sizes: Sequence[int], seed: int,
                 dims: tuple[int, int]) -> None:
        self.sizes = list(sizes)
        self.dims = dims
        self.generators = []
        for i in indices:
            state = np.random.SeedSequence([int(seed), int(i), 1]).generate_state(1, np.uint64)
            self.generators.append(torch.Generator().manual_seed(int(state[0])))

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        dl, dg = self.dims
        zl = torch.zeros(len(self.sizes), max(self.sizes), dl)  # (B, N, D_L)
        zg = torch.empty(len(self.sizes), dg)  # (B, G)
        for b, (n, gen) in enumerate(zip(self.sizes, self.generators, strict=True)):
            draw = torch.randn(n * dl + dg, generator=gen)  # (n D_L + G,)
            zl[b, :n] = draw[: n * dl].view(n, dl)
            zg[b] = draw[n * dl :]
        return zl, zg


class CoordNoise(StructureNoise):
    """The coordinate family's initial state per structure from its own ``(seed, index)``
    generator: ``(frac (B, N, 3) ~ U[0, 1), type codes (B, N, bits), lattice code (B, 6))``
    standard normal, zeros at padding (``dims`` = ``(bits, 6)``)."""

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bits, dg = self.dims
        n_max, B = max(self.sizes), len(self.sizes)
        x, c, g = torch.zeros(B, n_max, 3), torch.zeros(B, n_max, bits), torch.empty(B, dg)
        for b, (n, gen) in enumerate(zip(self.sizes, self.generators, strict=True)):
            x[b, :n] = torch.rand(n, 3, generator=gen)
            draw = torch.randn(n * bits + dg, generator=gen)
            c[b, :n] = draw[: n * bits].view(n, bits)
            g[b] = draw[n * bits :]
        return x, c, g

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """(B, N, k) standard normal step noise, structure b from its own generator."""
        out = torch.zeros(shape)
        for b, (n, gen) in enumerate(zip(self.sizes, self.generators, strict=True)):
            out[b, :n] = torch.randn(n, *shape[2:], generator=gen)
        return out


def _batches(indices: Sequence[int], sizes: Sequence[int], batch_size: int
             ) -> list[list[tuple[int, int]]]:
    """(index, size) pairs sorted by size then index, cut into batches."""
    order = sorted(zip(indices, sizes, strict=True), key=lambda p: (p[1], p[0]))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def iter_samples(model: LatentDiffusion | CoordFlow, indices: Sequence[int],
                 settings: SampleSettings, size_hist: torch.Tensor | None = None,
                 plan: ConditionPlan | None = None) -> Iterator[list[Crystal]]:
    """Generate the given structure indices batch by batch (see :func:`sample`).

    Args:
        model: the model (eval mode), latent or coordinate family.
        indices: structure indices to generate.
        settings: resolved settings (``steps`` and ``sampler`` set; :meth:`SampleSettings.resolve`).
        size_hist: (M + 1,) histogram to draw atom counts from (default: the model's).
        plan: the run's conditions (`plan_conditions`; coordinate family only).

    Yields:
        One list of `Crystal` per batch (ids from :func:`structure_id`; ``metadata`` holds
        the settings' row metadata, the condition's, and the structure's index).
    """
    if settings.steps is None or settings.sampler is None:
        raise ValueError("iter_samples needs resolved settings (SampleSettings.resolve)")
    hist = model.num_atoms_hist if size_hist is None else size_hist
    sizes = plan_sizes(indices, settings.seed, hist, settings.atoms)
    meta = {**settings.row_metadata(), **(plan.metadata if plan is not None else {})}
    for batch in _batches(indices, sizes, settings.batch_size):
        idx, ns = [p[0] for p in batch], [p[1] for p in batch]
        mask = torch.arange(max(ns)).unsqueeze(0) < torch.tensor(ns).unsqueeze(1)  # (B, N)
        ids = [structure_id(i) for i in idx]
        if isinstance(model, CoordFlow):
            cond = (ConditionBatch.from_conditions(plan.conditions(ns), max(ns))
                    if plan is not None else None)
            noise = CoordNoise(idx, ns, settings.seed, (model.codes.shape[1], 6))
            with torch.autocast(model.device.type, torch.bfloat16, enabled=settings.bf16):
                out = model.generate(mask.to(model.device), ids, steps=settings.steps,
                                     noise_fn=noise, cond=cond, guidance=settings.guidance,
                                     refine=settings.refine, restarts=settings.restarts)
            if settings.restrain_bonds and cond is not None:
                out = _restrained(out, cond.to(out.frac.device), settings.restrain_bonds)
        else:
            noise = StructureNoise(idx, ns, settings.seed,
                                   (model.local_mean.numel(), model.global_mean.numel()))
            out = model.generate(mask.to(model.device), ids, steps=settings.steps,
                                 sampler=settings.sampler, noise_fn=noise,
                                 guidance=settings.guidance, bf16=settings.bf16)
        crystals = out.unbatch()
        for crystal, i in zip(crystals, idx, strict=True):
            crystal.metadata = {**meta, "index": int(i)}
        yield crystals


def _restrained(batch: CrystalBatch, cond: ConditionBatch, steps: int) -> CrystalBatch:
    """The batch with its given bonds restrained (`diffusion.restraint.restrain_bonds`)."""
    frac = restrain_bonds(batch.frac, batch.lattice, batch.atom_types, cond.bonded,
                          batch.mask, steps, hold=cond.keep)
    return dataclasses.replace(batch, frac=frac)


def sample(
    model: str | Path | LatentDiffusion | CoordFlow = "default",
    num: int = 10,
    atoms: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "auto",
    guidance: float = 1.0,
    *,
    sampler: str | None = None,
    refine: int | None = None,
    restarts: int | None = None,
    atoms_from: str = "data",
    bf16: bool = False,
    progress: bool = False,
    formula: str | None = None,
    elements: str | None = None,
    metal: str | None = None,
    bonds_from: str | Path | None = None,
    inpaint: str | Path | None = None,
    keep: str | None = None,
    free_lattice: bool = False,
    restrain_bonds: int = 0,
) -> list[Crystal]:
    """Sample ``num`` crystals (arguments as in :class:`SampleSettings`).

    Args:
        model: ``"default"`` (the bundled model), a checkpoint path, or a model.
        num: number of structures (indices 0..num-1).
        atoms: fixed atom count; None draws each from the training histogram (or from
            p(N | condition) with ``elements`` / ``metal``).
        steps: sampler steps (default: the model's configured count).
        seed: run seed; structure i depends only on (seed, i).
        batch_size: structures per batch (batches are grouped by atom count).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        guidance: classifier-free guidance scale (1: none; other values need a condition).
        sampler: ``"ddim"`` / ``"ddpm"`` (latent family) or ``"euler"`` (coordinate family).
        refine: corrector steps after the last step (coordinate family; default: the model's).
        restarts: restart passes before the corrector steps (coordinate family; default: the
            model's).
        atoms_from: ``"data"`` or a prepared dataset folder to draw atom counts from.
        bf16: bf16 autocast for the denoiser.
        progress: show a progress bar.
        formula: condition on a formula (``"Zn4O13C24H12"``, any order, spaces allowed).
        elements: exactly these elements (``"Zn,C,H,O"``).
        metal: one metal (``"Zn"``) with any non-metals.
        bonds_from: reference CIF: its formula and bond graph.
        inpaint: reference CIF whose ``keep`` atoms (and lattice) are given.
        keep: ``metals``, ``metal-node``, ``linkers`` or reference site indices ``"0,4,7"``.
        free_lattice: generate the lattice when inpainting.
        restrain_bonds: with ``bonds_from``, Adam steps of the bond restraint after sampling
            (0: off; :class:`SampleSettings`).

    Returns:
        ``num`` `Crystal` objects in index order.

    Raises:
        SampleSettingsError: a setting that cannot work (before any model is loaded) or a
            condition the model cannot take.
    """
    from tqdm import tqdm

    name = "<model>" if isinstance(model, (LatentDiffusion, CoordFlow)) else str(model)
    opt = lambda v: None if v is None else str(v)  # noqa: E731
    settings = SampleSettings(model=name, num=num, seed=seed, atoms=atoms, atoms_from=atoms_from,
                              steps=steps, sampler=sampler, refine=refine, restarts=restarts,
                              guidance=guidance, batch_size=batch_size, device=device,
                              bf16=bf16, formula=formula, elements=elements, metal=metal,
                              bonds_from=opt(bonds_from),
                              inpaint=opt(inpaint), keep=keep, free_lattice=free_lattice,
                              restrain_bonds=restrain_bonds).check()
    net = load_model(model, device)
    plan = plan_conditions(settings, net)
    size_hist = size_histogram(settings, net, plan)
    settings = settings.resolve(net, size_hist)
    out: dict[int, Crystal] = {}
    with tqdm(total=num, unit="structure", disable=not progress) as bar:
        for crystals in iter_samples(net, range(num), settings, size_hist, plan):
            out.update({c.metadata["index"]: c for c in crystals})
            bar.update(len(crystals))
    return [out[i] for i in range(num)]


def size_histogram(settings: SampleSettings, model: LatentDiffusion | CoordFlow,
                   plan: ConditionPlan | None = None) -> torch.Tensor | None:
    """The histogram atom counts are drawn from: a condition's (its fixed N, or p(N |
    condition)), the model's, or a prepared dataset's train split (``atoms_from``); None with
    a fixed ``atoms``."""
    if settings.atoms is not None:
        return None
    if plan is not None and plan.fixed is not None:
        return torch.bincount(torch.tensor([plan.fixed.num_atoms]))
    if plan is not None and plan.size_probs is not None:
        return torch.from_numpy(plan.size_probs)
    if settings.atoms_from == "data":
        return model.num_atoms_hist
    from mofasa.data.dataset import CrystalDataset

    counts = np.asarray(CrystalDataset(settings.atoms_from, "train").num_atoms)
    return torch.from_numpy(np.bincount(counts).astype(np.int64))
