"""mofasa: all-atom latent diffusion for metal-organic frameworks."""

from mofasa.data.batch import CrystalBatch, collate
from mofasa.data.crystal import Crystal

__version__ = "0.1.0"

__all__ = ["Crystal", "CrystalBatch", "__version__", "collate"]
