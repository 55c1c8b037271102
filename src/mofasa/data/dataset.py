"""Prepared datasets: memory-mapped `CrystalDataset`, size-bucketed batches, DDP sharding."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mofasa.data.batch import collate
from mofasa.data.crystal import Crystal
from mofasa.geometry.lattice import lattice_from_parameters, wrap_frac

__all__ = ["BucketBatchSampler", "CrystalDataset", "make_loader"]

FRAC_SCALE = 65536  # uint16 storage of fractional coordinates: x * 65536 (0.5 mÅ at 30 Å)


class CrystalDataset(Dataset):
    """One split of a folder written by `mofasa data prepare`, memory-mapped (no copy in RAM).

    Items are `Crystal`s in canonical form. An item key is either an index ``i`` or a pair
    ``(i, epoch)``; with ``translate=True`` the pair form applies a random fractional
    translation drawn from ``(seed, epoch, i)``, so augmentation is reproducible whatever the
    number of loader workers or processes.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        translate: bool = False,
        seed: int = 0,
        max_atoms: int | None = None,
    ) -> None:
        self.root = Path(root)
        manifest = self.root / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"{self.root}: no manifest.json (run `mofasa data prepare`)")
        self.manifest = json.loads(manifest.read_text())
        self.split = split
        self.translate = translate
        self.seed = seed
        load = lambda key: np.load(self.root / f"{split}_{key}.npy", mmap_mode="r")  # noqa: E731
        self._numbers, self._frac = load("numbers"), load("frac")
        self._lattice, self._offsets = load("lattice"), load("offsets")
        self.ids = (self.root / f"{split}_ids.txt").read_text().split()
        counts = np.diff(np.asarray(self._offsets))
        self._index = np.arange(len(counts))
        if max_atoms is not None:
            self._index = self._index[counts <= max_atoms]
        self.num_atoms = counts[self._index]  # (len,) atoms per structure

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, key: int | tuple[int, int]) -> Crystal:
        i, epoch = (key, None) if np.isscalar(key) else key
        j = int(self._index[int(i)])
        lo, hi = int(self._offsets[j]), int(self._offsets[j + 1])
        frac = np.asarray(self._frac[lo:hi], dtype=np.float64) / FRAC_SCALE  # (n, 3)
        if self.translate and epoch is not None:
            shift = np.random.default_rng((self.seed, int(epoch), j)).random(3)
            frac = wrap_frac(frac + shift)
        lattice = lattice_from_parameters(*np.asarray(self._lattice[j], dtype=np.float64))
        numbers = np.asarray(self._numbers[lo:hi], dtype=np.int64)
        return Crystal(numbers, frac, lattice, id=self.ids[j])


class BucketBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of structures of similar size, so padding waste stays small.

    Indices are shuffled, sorted by atom count within windows of ``bucket_factor`` batches,
    cut into batches (at most ``batch_size`` structures and, if set, at most
    ``max_atoms_per_batch`` padded atoms), and the batches shuffled. With ``num_replicas > 1``
    (torchrun / DDP) every rank gets the same number of disjoint batches. Yields
    ``(index, epoch)`` keys for `CrystalDataset`. Call `set_epoch` each epoch.
    """

    def __init__(
        self,
        num_atoms: np.ndarray,
        batch_size: int,
        *,
        max_atoms_per_batch: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        bucket_factor: int = 50,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.num_atoms = np.asarray(num_atoms, dtype=np.int64)
        self.batch_size = batch_size
        self.max_atoms_per_batch = max_atoms_per_batch
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.bucket_factor = bucket_factor
        dist = torch.distributed
        ready = dist.is_available() and dist.is_initialized()
        self.num_replicas = num_replicas or (dist.get_world_size() if ready else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if ready else 0)
        self.epoch = 0
        self.start = 0  # batches of this epoch to skip once (set by a resumed training run)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.num_atoms)) if self.shuffle else np.arange(
            len(self.num_atoms))
        window = self.batch_size * self.bucket_factor
        batches: list[np.ndarray] = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            chunk = chunk[np.argsort(self.num_atoms[chunk], kind="stable")]
            batches.extend(self._cut(chunk))
        if self.shuffle:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        return batches

    def _cut(self, sorted_idx: np.ndarray) -> list[np.ndarray]:
        out, current, nmax = [], [], 0
        for i in sorted_idx:
            n = max(nmax, int(self.num_atoms[i]))
            cap = self.max_atoms_per_batch
            too_many = cap is not None and n * (len(current) + 1) > cap
            if current and (len(current) == self.batch_size or too_many):
                out.append(np.array(current))
                current, n = [], int(self.num_atoms[i])
            current.append(int(i))
            nmax = n
        if current and not (self.drop_last and len(current) < self.batch_size):
            out.append(np.array(current))
        return out

    def _rank_batches(self) -> list[np.ndarray]:
        batches = self._all_batches()
        if self.num_replicas > 1:
            # Equal batch counts per rank: DDP steps must stay in lock-step.
            per_rank = len(batches) // self.num_replicas
            if not self.drop_last and len(batches) % self.num_replicas:
                per_rank += 1
                batches = batches + batches[: per_rank * self.num_replicas - len(batches)]
            batches = batches[self.rank : per_rank * self.num_replicas : self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        skip, self.start = self.start, 0
        for batch in self._rank_batches()[skip:]:
            yield [(int(i), self.epoch) for i in batch]

    def __len__(self) -> int:
        return len(self._rank_batches())


def make_loader(
    dataset: CrystalDataset,
    batch_size: int,
    *,
    max_atoms_per_batch: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> DataLoader:
    """A DataLoader of `CrystalBatch` with size-bucketed (and, under torchrun, sharded) batches.

    ``dataset`` needs ``num_atoms`` and ``(index, epoch)`` keys; one with a ``collate_fn``
    attribute (a latent cache) batches its own items.
    """
    sampler = BucketBatchSampler(
        dataset.num_atoms,
        batch_size,
        max_atoms_per_batch=max_atoms_per_batch,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )

    # datasets with items of their own (e.g. a latent cache) bring their own collate
    collate_fn = getattr(dataset, "collate_fn", None) or partial(collate, dtype=dtype)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_fn,
        # Own generator: creating an iterator must not draw from the global torch RNG, or a
        # resumed run (which restores that RNG) would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
