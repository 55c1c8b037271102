"""Errors for bad input: every rejection names its source and one reason code."""

from __future__ import annotations

#: Reason codes, in the order checks run. `mofasa data prepare` counts rejections by these.
REASONS: dict[str, str] = {
    "unreadable": "file cannot be read or is not a parsable CIF",
    "truncated": "CIF ends early (incomplete loop, or fewer atoms than its stated formula)",
    "checksum_mismatch": "file content does not match the index's sha256",
    "disordered": "partial occupancy / disordered sites",
    "unknown_element": "a site's element is outside the vocabulary (Z 1..100)",
    "no_atoms": "the structure has no atoms",
    "non_finite": "NaN or infinite coordinates or cell",
    "degenerate_cell": "cell volume or a cell length is (near) zero",
    "huge_cell": "a cell length exceeds the allowed maximum",
    "too_many_atoms": "more atoms than allowed (as read, and after primitive reduction)",
    "overlapping_atoms": "two atoms closer than the allowed minimum distance",
    "canonicalization_failed": "primitive / Niggli reduction failed",
    "timeout": "processing the file took longer than the per-file time limit",
}


class CrystalError(ValueError):
    """A structure that mofasa refuses, with a machine-readable reason code.

    Attributes:
        reason: one key of `REASONS`.
        source: the file, archive member or id the structure came from (may be None).
        detail: a human-readable explanation.
        num_atoms: the atom count when it is known although the structure was refused (for
            ``too_many_atoms``: at least this many), else None.
    """

    def __init__(
        self, reason: str, detail: str = "", source: str | None = None,
        num_atoms: int | None = None,
    ) -> None:  # fmt: skip
        if reason not in REASONS:
            raise KeyError(f"unknown rejection reason {reason!r}")
        self.reason = reason
        self.detail = detail or REASONS[reason]
        self.source = source
        self.num_atoms = num_atoms
        super().__init__(str(self))

    def with_source(self, source: str | None) -> CrystalError:
        """The same error attributed to ``source``."""
        return CrystalError(self.reason, self.detail, source, self.num_atoms)

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.reason}: {self.detail}"

    def __reduce__(self) -> tuple:  # picklable across worker processes
        return (CrystalError, (self.reason, self.detail, self.source, self.num_atoms))
