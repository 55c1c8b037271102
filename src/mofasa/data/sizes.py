"""The protocol's atom-count bins, shared by data preparation, reconstruction and evaluation."""

from __future__ import annotations

__all__ = ["SIZE_BINS", "size_bin"]

#: (label, low, high), inclusive; Mofasa reports its 131-150 figure on these bins.
SIZE_BINS: tuple[tuple[str, int, int], ...] = (
    ("<17", 0, 16),
    ("17-50", 17, 50),
    ("51-90", 51, 90),
    ("91-130", 91, 130),
    ("131-150", 131, 150),
    ("151-250", 151, 250),
    ("251-500", 251, 500),
    (">500", 501, 10**9),
)


def size_bin(num_atoms: int) -> str:
    """Label of the bin holding ``num_atoms``."""
    return next(label for label, lo, hi in SIZE_BINS if lo <= num_atoms <= hi)
