"""Precomputed latents: the frozen encoder runs once per structure and translation, not per step.

A cache folder holds, per split, memory-mapped arrays::

    meta.json                      key (autoencoder hash, dataset manifest hash, split filter,
                                   translations, seed, dtype), sizes, counts
    {split}_zl.npy   (K, A, D_L)   raw per-atom latents of translation k (k = 0: none)
    {split}_zg.npy   (K, S, G)     raw global latents
    {split}_shifts.npy (K, S, 3)   the fractional translations (row 0 is zero)
    {split}_offsets.npy (S + 1,)   atom offsets of each structure
    {split}_numbers.npy (A,)       atomic numbers (uint8)
    {split}_frac.npy (A, 3)        canonical fractional coordinates (float32, untranslated)
    {split}_lattice.npy (S, 3, 3)  cells (float32, rows in Å)
    {split}_node.npy (A,)          node labels (`NODE_LABELS`: linker / node / metal)
    {split}_bond_offsets.npy (S + 1,), {split}_bonds.npy (E, 2) local [i, j],
    {split}_bond_images.npy (E, 3) periodic bonds (canonical bond rule) with image offsets
    {split}_ids.txt

The key says which encoder, data and translations produced it; opening a cache with another key
is an error (`LatentCacheError`), so a cache can never silently feed latents of another
autoencoder. Structures are A atoms in S structures of the prepared split (after the
``max_atoms`` filter). Everything here is numpy + torch (no pymatgen): a cache built on a CPU
machine trains on a GPU machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mofasa.data.batch import collate
from mofasa.data.canonical import bond_edges
from mofasa.data.conditions import node_labels
from mofasa.data.crystal import Crystal
from mofasa.data.dataset import CrystalDataset
from mofasa.diffusion.batch import LatentBatch
from mofasa.geometry.lattice import wrap_frac
from mofasa.models.autoencoder import CrystalAutoencoder

__all__ = [
    "LatentCacheConfig",
    "LatentCacheDataset",
    "LatentCacheError",
    "autoencoder_hash",
    "build_latent_cache",
    "cache_statistics",
    "open_latent_cache",
]

FORMAT = "mofasa-latent-cache-v1"


class LatentCacheError(ValueError):
    """A cache folder that does not match what asks for it (or is not a cache)."""


@dataclass(frozen=True)
class LatentCacheConfig:
    """``cache`` section of the diffusion training config.

    Attributes:
        path: cache folder; "" trains without a cache (the encoder runs on every batch).
        translations: K fixed fractional translations per structure (the first is none);
            training draws one per (structure, epoch) when ``data.translate`` is on.
        dtype: ``float32`` or ``float16`` storage of the latents (float16 halves the size,
            e.g. to carry the cache to a GPU machine).
        build_batch_size: structures per encoder batch while building.
    """

    path: str = ""
    translations: int = 1
    dtype: str = "float32"
    build_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.translations < 1:
            raise ValueError(f"cache.translations must be >= 1, got {self.translations}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"cache.dtype must be float32 or float16, got {self.dtype!r}")


def autoencoder_hash(autoencoder: CrystalAutoencoder) -> str:
    """sha256 of the autoencoder's config and weights (any change means other latents)."""
    h = hashlib.sha256(json.dumps(_plain(autoencoder.config), sort_keys=True).encode())
    for name, tensor in sorted(autoencoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _plain(cfg: Any) -> Any:
    from mofasa.config import to_dict

    return json.loads(json.dumps(to_dict(cfg), default=list))


def _manifest_hash(data_root: str | Path) -> str:
    return hashlib.sha256((Path(data_root) / "manifest.json").read_bytes()).hexdigest()


def cache_key(autoencoder: CrystalAutoencoder, data_root: str | Path, max_atoms: int | None,
              translations: int, seed: int, dtype: str) -> dict[str, Any]:
    """What a cache must have been built from to be used (compared field by field)."""
    return {"format": FORMAT, "autoencoder": autoencoder_hash(autoencoder),
            "manifest": _manifest_hash(data_root), "max_atoms": max_atoms,
            "translations": int(translations), "seed": int(seed), "dtype": dtype}


# ------------------------------------------------------------------------------------ build
def _shifts(num: int, translations: int, seed: int, ids: np.ndarray) -> np.ndarray:
    """(K, S, 3) translations: row 0 zero, row k from (seed, k, structure index)."""
    out = np.zeros((translations, num, 3), dtype=np.float64)
    for k in range(1, translations):
        for s, j in enumerate(ids):
            out[k, s] = np.random.default_rng((seed, k, int(j))).random(3)
    return out


def _structure_arrays(ds: CrystalDataset) -> dict[str, Any]:
    """Coordinates, cells, bonds and node labels of every structure of a split."""
    crystals = [ds[i] for i in range(len(ds))]
    bonds: list[np.ndarray] = [np.zeros((0, 2), np.int16)]  # the empty rows keep an empty
    images: list[np.ndarray] = [np.zeros((0, 3), np.int8)]  # split concatenable
    labels: list[np.ndarray] = [np.zeros(0, np.uint8)]
    bond_counts = [0]
    for c in crystals:
        pairs, imgs = bond_edges(c.lattice, c.frac, c.numbers)
        bonds.append(pairs.astype(np.int16))
        images.append(imgs.astype(np.int8))
        labels.append(node_labels(c.numbers, pairs))
        bond_counts.append(len(pairs))
    return {
        "crystals": crystals,
        "offsets": np.concatenate([[0], np.cumsum([c.num_atoms for c in crystals])]
                                  ).astype(np.int64),
        "numbers": np.concatenate([np.zeros(0, np.int64)] + [c.numbers for c in crystals]
                                  ).astype(np.uint8),
        "frac": np.concatenate([np.zeros((0, 3))] + [c.frac for c in crystals]
                               ).astype(np.float32),
        "lattice": np.stack([np.zeros((3, 3))] + [c.lattice for c in crystals])[1:]
        .astype(np.float32),
        "node": np.concatenate(labels),
        "bonds": np.concatenate(bonds),
        "bond_images": np.concatenate(images),
        "bond_offsets": np.cumsum(bond_counts).astype(np.int64),
    }


@torch.no_grad()
def _encode_split(ae: CrystalAutoencoder, arrays: dict[str, Any], shifts: np.ndarray,
                  dtype: np.dtype, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    crystals, offsets = arrays["crystals"], arrays["offsets"]
    dev = next(ae.parameters()).device
    K, S = shifts.shape[:2]
    zl = np.zeros((K, int(offsets[-1]), ae.config.latent_dim), dtype=dtype)
    zg = np.zeros((K, S, ae.config.global_latent_dim), dtype=dtype)
    order = np.argsort([c.num_atoms for c in crystals], kind="stable")  # little padding
    for k in range(K):
        for start in range(0, S, batch_size):
            chunk = order[start : start + batch_size]
            moved = [Crystal(crystals[s].numbers, wrap_frac(crystals[s].frac + shifts[k, s]),
                             crystals[s].lattice) for s in chunk]
            batch = collate(moved).to(dev)
            lat_l, lat_g = ae.latents(batch)  # (B, N, D_L), (B, G)
            for b, s in enumerate(chunk):
                n = crystals[s].num_atoms
                zl[k, offsets[s] : offsets[s] + n] = lat_l[b, :n].float().cpu().numpy()
                zg[k, s] = lat_g[b].float().cpu().numpy()
    return zl, zg


def build_latent_cache(autoencoder: CrystalAutoencoder, data_root: str | Path,
                       out: str | Path, *, splits: tuple[str, ...] = ("train", "val"),
                       max_atoms: int | None = None, translations: int = 1, seed: int = 0,
                       dtype: str = "float32", batch_size: int = 64) -> Path:
    """Encode every structure of ``splits`` (``translations`` times) into the cache ``out``.

    Written into a temporary folder and renamed at the end, so a killed build leaves no
    half-written cache. Returns ``out``.
    """
    out = Path(out)
    ae = autoencoder.eval()
    key = cache_key(ae, data_root, max_atoms, translations, seed, dtype)
    tmp = out.with_name(out.name + f".building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0, counts = time.perf_counter(), {}
    for split in splits:
        ds = CrystalDataset(data_root, split, max_atoms=max_atoms)
        arrays = _structure_arrays(ds)
        shifts = _shifts(len(ds), translations, seed, ds._index)
        zl, zg = _encode_split(ae, arrays, shifts, np.dtype(dtype), batch_size)
        for name, value in (("zl", zl), ("zg", zg), ("shifts", shifts.astype(np.float32)),
                            *((k, arrays[k]) for k in ("offsets", "numbers", "frac", "lattice",
                                                      "node", "bonds", "bond_images",
                                                      "bond_offsets"))):
            np.save(tmp / f"{split}_{name}.npy", value)
        (tmp / f"{split}_ids.txt").write_text("\n".join(str(c.id) for c in arrays["crystals"]))
        counts[split] = {"structures": len(ds), "atoms": int(arrays["offsets"][-1]),
                         "bonds": int(arrays["bond_offsets"][-1])}
    meta = {"key": key, "latent_dim": ae.config.latent_dim,
            "global_latent_dim": ae.config.global_latent_dim, "splits": counts,
            "data_root": str(data_root), "build_seconds": round(time.perf_counter() - t0, 2)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------------ read
def _read_meta(root: Path) -> dict:
    path = root / "meta.json"
    if not path.is_file():
        raise LatentCacheError(f"{root}: not a latent cache (no meta.json)")
    meta = json.loads(path.read_text())
    if meta.get("key", {}).get("format") != FORMAT:
        raise LatentCacheError(f"{root}: not a {FORMAT} cache")
    return meta


class LatentCacheDataset(Dataset):
    """One split of a latent cache, memory-mapped; items are ``(index, epoch)`` keys.

    Args:
        root: cache folder.
        split: ``train`` / ``val`` / ...
        translate: draw one of the K translations per (structure, epoch) from ``seed``;
            False always uses the untranslated latents (k = 0).
        seed: run seed.
        expect: a `cache_key` the cache must match (None: no check).
    """

    def __init__(self, root: str | Path, split: str = "train", *, translate: bool = False,
                 seed: int = 0, expect: dict | None = None) -> None:
        self.root = Path(root)
        self.meta = _read_meta(self.root)
        if expect is not None and self.meta["key"] != expect:
            diff = sorted(k for k in expect if self.meta["key"].get(k) != expect[k])
            raise LatentCacheError(f"{self.root}: built from other {', '.join(diff)} than "
                                   "this run uses; delete it or point cache.path elsewhere")
        if split not in self.meta["splits"]:
            raise LatentCacheError(f"{self.root}: no {split!r} split")
        self.split, self.translate, self.seed = split, translate, seed
        load = lambda k: np.load(self.root / f"{split}_{k}.npy", mmap_mode="r")  # noqa: E731
        self._a = {k: load(k) for k in ("zl", "zg", "shifts", "offsets", "numbers", "frac",
                                         "lattice", "node", "bonds", "bond_images",
                                         "bond_offsets")}
        self.ids = (self.root / f"{split}_ids.txt").read_text().split("\n")
        self.num_atoms = np.diff(np.asarray(self._a["offsets"]))  # (S,)
        self.translations = int(self._a["zl"].shape[0])

    def __len__(self) -> int:
        return len(self.num_atoms)

    def _translation(self, i: int, epoch: int | None) -> int:
        if not self.translate or epoch is None or self.translations == 1:
            return 0
        return int(np.random.default_rng((self.seed, int(epoch), i)).integers(self.translations))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, epoch = (key, None) if np.isscalar(key) else key
        i = int(i)
        k = self._translation(i, epoch)
        a = self._a
        lo, hi = int(a["offsets"][i]), int(a["offsets"][i + 1])
        frac = np.asarray(a["frac"][lo:hi], dtype=np.float64) + a["shifts"][k, i]  # (n, 3)
        wraps = np.floor(frac)  # (n, 3) the integer part wrapping removes
        b0, b1 = int(a["bond_offsets"][i]), int(a["bond_offsets"][i + 1])
        pairs = np.asarray(a["bonds"][b0:b1], dtype=np.int64)  # (E, 2)
        # the bonded image of j moves by the wraps: n' = n + w_j - w_i
        images = np.asarray(a["bond_images"][b0:b1], dtype=np.int64) + (
            wraps[pairs[:, 1]] - wraps[pairs[:, 0]]).astype(np.int64)
        return {"numbers": np.asarray(a["numbers"][lo:hi], dtype=np.int64),
                "frac": frac - wraps, "lattice": np.asarray(a["lattice"][i], dtype=np.float64),
                "zl": np.array(a["zl"][k, lo:hi], dtype=np.float32),  # copies: memmaps are
                "zg": np.array(a["zg"][k, i], dtype=np.float32),  # read-only for torch
                "node": np.array(a["node"][lo:hi], dtype=np.int64),
                "pairs": pairs, "images": images, "id": self.ids[i]}

    @staticmethod
    def collate_fn(items: list[dict[str, Any]]) -> LatentBatch:
        """Pad items into one `LatentBatch` (bonds re-indexed into the flattened atoms)."""
        base = collate([Crystal(it["numbers"], np.clip(it["frac"], 0.0, np.nextafter(1, 0)),
                                it["lattice"], id=it["id"]) for it in items])
        B, N = base.mask.shape
        zl = torch.zeros(B, N, items[0]["zl"].shape[-1])
        node = torch.zeros(B, N, dtype=torch.int64)
        for b, it in enumerate(items):
            zl[b, : len(it["zl"])] = torch.from_numpy(it["zl"])
            node[b, : len(it["node"])] = torch.from_numpy(it["node"])
        index = torch.cat([torch.from_numpy(it["pairs"].T) + b * N
                           for b, it in enumerate(items)], dim=1)  # (2, E)
        images = torch.cat([torch.from_numpy(it["images"]) for it in items])  # (E, 3)
        return LatentBatch(**{f: getattr(base, f) for f in ("atom_types", "frac", "lattice",
                                                            "mask", "num_atoms")},
                           ids=base.ids, zl=zl,
                           zg=torch.from_numpy(np.stack([it["zg"] for it in items])),
                           bond_index=index, bond_images=images, node_labels=node)


def cache_statistics(ds: LatentCacheDataset) -> dict[str, torch.Tensor]:
    """Per-channel mean / std of the cached raw latents (all translations; the format of
    `mofasa.diffusion.latent.latent_statistics`)."""
    zl = torch.from_numpy(np.asarray(ds._a["zl"], dtype=np.float64)).flatten(0, 1)  # (K A, D_L)
    zg = torch.from_numpy(np.asarray(ds._a["zg"], dtype=np.float64)).flatten(0, 1)  # (K S, G)
    floor = 1e-4  # as latent_statistics: a collapsed channel must not blow up
    return {"local_mean": zl.mean(0).float(), "local_std": zl.std(0, unbiased=False)
            .clamp(min=floor).float(), "global_mean": zg.mean(0).float(),
            "global_std": zg.std(0, unbiased=False).clamp(min=floor).float(),
            "num_structures": torch.tensor(len(ds)), "num_atoms": torch.tensor(int(zl.shape[0]))}


def open_latent_cache(autoencoder: CrystalAutoencoder, cfg: LatentCacheConfig,
                      data_root: str | Path, *, max_atoms: int | None, seed: int,
                      translate: bool, splits: tuple[str, str] = ("train", "val"),
                      ) -> tuple[LatentCacheDataset, LatentCacheDataset]:
    """(train, val) datasets of the cache ``cfg.path``, built first when it does not exist."""
    key = cache_key(autoencoder, data_root, max_atoms, cfg.translations, seed, cfg.dtype)
    root = Path(cfg.path)
    if not (root / "meta.json").is_file():
        t0 = time.perf_counter()
        build_latent_cache(autoencoder, data_root, root, splits=splits, max_atoms=max_atoms,
                           translations=cfg.translations, seed=seed, dtype=cfg.dtype,
                           batch_size=cfg.build_batch_size)
        print(f"latent cache {root} built in {time.perf_counter() - t0:.1f} s")
    return (LatentCacheDataset(root, splits[0], translate=translate, seed=seed, expect=key),
            LatentCacheDataset(root, splits[1], translate=False, seed=seed, expect=key))
