"""Pure lattice and periodic-boundary maths (numpy / torch only)."""

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
