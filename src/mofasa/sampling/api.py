"""`sample()`: crystals from a trained latent diffusion model, reproducibly.

Every structure's randomness is a function of ``(seed, index)`` only: its atom count (drawn from
the training histogram unless fixed) and every noise tensor of its reverse chain come from its
own generators. A structure therefore comes out the same whatever the batch size, the batch it
lands in, or whether the run was interrupted and resumed (up to floating-point differences
between batch shapes and devices). Structures are batched by atom count, so padding stays small.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from mofasa.data.crystal import Crystal
from mofasa.diffusion.latent import LatentDiffusion

__all__ = [
    "DEFAULT_MODEL_DIR",
    "StructureNoise",
    "default_model_path",
    "iter_samples",
    "load_model",
    "plan_sizes",
    "sample",
    "structure_id",
]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"
DEFAULT_MODEL_FILE = "model.pt"


def default_model_path() -> Path:
    """The bundled default model (``mofasa/sampling/default/model.pt``, maybe in parts).

    Raises:
        FileNotFoundError: no default model is bundled yet.
    """
    from mofasa.training.checkpoint import checkpoint_exists

    path = DEFAULT_MODEL_DIR / DEFAULT_MODEL_FILE
    if not checkpoint_exists(path):
        raise FileNotFoundError(
            f"no default model is bundled with this mofasa yet (looked for {path}); pass a "
            "diffusion checkpoint instead (--model PATH / model=PATH), e.g. one trained with "
            "`mofasa train diffusion`"
        )
    return path


def load_model(model: str | Path | LatentDiffusion = "default", device: str = "auto"
               ) -> LatentDiffusion:
    """``"default"``, a checkpoint path, or a model -> a `LatentDiffusion` in eval mode."""
    from mofasa.training.diffusion import load_diffusion
    from mofasa.training.loop import resolve_device

    dev = resolve_device(device)
    if isinstance(model, LatentDiffusion):
        return model.to(dev).eval()
    path = default_model_path() if str(model) == "default" else Path(model)
    return load_diffusion(path, device=dev)


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


def _batches(indices: Sequence[int], sizes: Sequence[int], batch_size: int
             ) -> list[list[tuple[int, int]]]:
    """(index, size) pairs sorted by size then index, cut into batches."""
    order = sorted(zip(indices, sizes, strict=True), key=lambda p: (p[1], p[0]))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def iter_samples(
    model: LatentDiffusion,
    indices: Sequence[int],
    *,
    seed: int = 0,
    atoms: int | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    batch_size: int = 64,
    guidance: float = 1.0,
    cond: torch.Tensor | None = None,
    bf16: bool = False,
) -> Iterator[list[Crystal]]:
    """Generate the given structure indices batch by batch (see :func:`sample`).

    Yields:
        One list of `Crystal` per batch (ids from :func:`structure_id`; ``metadata`` holds
        seed, index, steps, sampler and guidance).
    """
    sizes = plan_sizes(indices, seed, model.num_atoms_hist, atoms)
    steps = int(steps or model.config.steps)
    sampler = sampler or model.config.sampler
    dims = (model.local_mean.numel(), model.global_mean.numel())
    dev = model.device
    for batch in _batches(indices, sizes, max(1, int(batch_size))):
        idx, ns = [p[0] for p in batch], [p[1] for p in batch]
        mask = torch.arange(max(ns)).unsqueeze(0) < torch.tensor(ns).unsqueeze(1)  # (B, N)
        noise = StructureNoise(idx, ns, seed, dims)
        c = None if cond is None else cond.to(dev).reshape(1, -1).expand(len(idx), -1)  # (B, C)
        out = model.generate(mask.to(dev), [structure_id(i) for i in idx], steps=steps,
                             sampler=sampler, noise_fn=noise, guidance=guidance, cond=c,
                             bf16=bf16)
        crystals = out.unbatch()
        for crystal, i in zip(crystals, idx, strict=True):
            crystal.metadata = {"seed": int(seed), "index": int(i), "steps": steps,
                                "sampler": sampler, "guidance": float(guidance)}
        yield crystals


def sample(
    model: str | Path | LatentDiffusion = "default",
    num: int = 10,
    atoms: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "auto",
    guidance: float = 1.0,
    *,
    sampler: str | None = None,
    cond: torch.Tensor | None = None,
    bf16: bool = False,
    progress: bool = False,
) -> list[Crystal]:
    """Sample ``num`` crystals.

    Args:
        model: ``"default"`` (the bundled model), a diffusion checkpoint path, or a model.
        num: number of structures (indices 0..num-1).
        atoms: fixed atom count; None draws each from the training histogram.
        steps: sampler steps (default: the model's configured count).
        seed: run seed; structure i depends only on (seed, i).
        batch_size: structures per batch (batches are grouped by atom count).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        guidance: classifier-free guidance scale (identity without a condition).
        sampler: ``"ddim"`` or ``"ddpm"`` (default: the model's).
        cond: optional (1, cond_dim) or (cond_dim,) condition shared by all structures.
        bf16: bf16 autocast for the denoiser (CUDA).
        progress: show a progress bar.

    Returns:
        ``num`` `Crystal` objects in index order.
    """
    from tqdm import tqdm

    net = load_model(model, device)
    out: dict[int, Crystal] = {}
    with tqdm(total=num, unit="structure", disable=not progress) as bar:
        for crystals in iter_samples(net, range(num), seed=seed, atoms=atoms, steps=steps,
                                     sampler=sampler, batch_size=batch_size, guidance=guidance,
                                     cond=cond, bf16=bf16):
            out.update({c.metadata["index"]: c for c in crystals})
            bar.update(len(crystals))
    return [out[i] for i in range(num)]
