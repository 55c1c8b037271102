"""The project's fixed train/val/test split: a hash of the structure id, stable under filtering.

Rule (also in ../shared/data/MANIFEST.md): the first 8 hex digits of
sha256("qmof-split-v1:" + id), read as an integer, mod 1000: < 900 train, < 950 val, else test.
"""

from __future__ import annotations

import hashlib

SPLIT_SALT = "qmof-split-v1:"
SPLITS = ("train", "val", "test")


def hash_split(structure_id: str, salt: str = SPLIT_SALT) -> str:
    """'train', 'val' or 'test' for ``structure_id`` by the hash rule."""
    bucket = int(hashlib.sha256((salt + structure_id).encode()).hexdigest()[:8], 16) % 1000
    if bucket < 900:
        return "train"
    return "val" if bucket < 950 else "test"
