"""The fixed element vocabulary that models and checkpoints record.

Token 0 is padding; token Z (1..100) is the element with atomic number Z. Checkpoints store
``VOCAB_SYMBOLS`` so a model trained today still decodes correctly if the vocabulary grows.
"""

from __future__ import annotations

import numpy as np

# fmt: off
SYMBOLS: tuple[str, ...] = (
    "X",
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S",
    "Cl", "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga",
    "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd",
    "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm",
    "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os",
    "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa",
    "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm",
)
# fmt: on

PAD_TOKEN = 0
MAX_Z = len(SYMBOLS) - 1  # 100
NUM_TOKENS = len(SYMBOLS)  # 101 classes including padding
VOCAB_SYMBOLS: list[str] = list(SYMBOLS)
SYMBOL_TO_Z: dict[str, int] = {s: z for z, s in enumerate(SYMBOLS) if z > 0}

_NONMETALS = {"H", "He", "B", "C", "N", "O", "F", "Ne", "Si", "P", "S", "Cl", "Ar", "Ge",
              "As", "Se", "Br", "Kr", "Sb", "Te", "I", "Xe", "At", "Rn"}
#: Boolean table indexed by Z: True for metals (metalloids B, Si, Ge, As, Sb, Te count as
#: non-metals, as MOF tools such as MOFChecker do for the framework nodes).
IS_METAL = np.array([z > 0 and SYMBOLS[z] not in _NONMETALS for z in range(NUM_TOKENS)])

# Covalent radii in Å (Cordero et al., Dalton Trans. 2008), indexed by Z; used to define bonds.
# fmt: off
COVALENT_RADII = np.array([
    0.0,
    0.31, 0.28, 1.28, 0.96, 0.84, 0.76, 0.71, 0.66, 0.57, 0.58, 1.66, 1.41, 1.21, 1.11, 1.07,
    1.05, 1.02, 1.06, 2.03, 1.76, 1.70, 1.60, 1.53, 1.39, 1.39, 1.32, 1.26, 1.24, 1.32, 1.22,
    1.22, 1.20, 1.19, 1.20, 1.20, 1.16, 2.20, 1.95, 1.90, 1.75, 1.64, 1.54, 1.47, 1.46, 1.42,
    1.39, 1.45, 1.44, 1.42, 1.39, 1.39, 1.38, 1.39, 1.40, 2.44, 2.15, 2.07, 2.04, 2.03, 2.01,
    1.99, 1.98, 1.98, 1.96, 1.94, 1.92, 1.92, 1.89, 1.90, 1.87, 1.87, 1.75, 1.70, 1.62, 1.51,
    1.44, 1.41, 1.36, 1.36, 1.32, 1.45, 1.46, 1.48, 1.40, 1.50, 1.50, 2.60, 2.21, 2.15, 2.06,
    2.00, 1.96, 1.90, 1.87, 1.80, 1.69, 1.68, 1.68, 1.65, 1.67,
])
# fmt: on


def symbol_to_z(symbol: str) -> int:
    """Atomic number of an element symbol; raises KeyError for anything outside the vocabulary."""
    return SYMBOL_TO_Z[symbol]


def z_to_symbol(z: int) -> str:
    """Element symbol of atomic number ``z`` (1..100)."""
    if not 1 <= int(z) <= MAX_Z:
        raise KeyError(f"atomic number {z} outside the vocabulary 1..{MAX_Z}")
    return SYMBOLS[int(z)]
