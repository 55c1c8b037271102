"""Data room: the `Crystal` contract, CIF I/O, canonical form, checks, prepared datasets.

Nothing here imports pymatgen or ASE at module import time (they load inside the functions that
need them), so models and training import without them.
"""

from mofasa.data.batch import CrystalBatch, collate
from mofasa.data.canonical import canonicalize
from mofasa.data.checks import CheckLimits, check_crystal
from mofasa.data.cif import read_cif, write_cif
from mofasa.data.crystal import Crystal
from mofasa.data.elements import NUM_TOKENS, VOCAB_SYMBOLS
from mofasa.data.errors import REASONS, CrystalError
from mofasa.data.split import hash_split

__all__ = [
    "NUM_TOKENS",
    "REASONS",
    "VOCAB_SYMBOLS",
    "CheckLimits",
    "Crystal",
    "CrystalBatch",
    "CrystalError",
    "canonicalize",
    "check_crystal",
    "collate",
    "hash_split",
    "read_cif",
    "write_cif",
]
