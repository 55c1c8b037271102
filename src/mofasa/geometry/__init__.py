"""Pure lattice and periodic-boundary maths (numpy / torch only).

The numpy functions are re-exported here; their batched, differentiable torch twins live in
:mod:`mofasa.geometry.lattice_torch` (same names with a ``_torch`` suffix) and the periodic
neighbour graphs in :mod:`mofasa.geometry.graphs`; import those from their modules.
"""

from mofasa.geometry.lattice import (
    cart_to_frac,
    frac_to_cart,
    lattice_from_parameters,
    lattice_to_parameters,
    make_right_handed,
    min_image_frac,
    volume,
    wrap_frac,
)

__all__ = [
    "cart_to_frac",
    "frac_to_cart",
    "lattice_from_parameters",
    "lattice_to_parameters",
    "make_right_handed",
    "min_image_frac",
    "volume",
    "wrap_frac",
]
