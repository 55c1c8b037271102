"""mofasa: all-atom latent diffusion for metal-organic frameworks."""

from mofasa.data.batch import CrystalBatch, collate
from mofasa.data.crystal import Crystal

__version__ = "0.1.0"

__all__ = ["Crystal", "CrystalBatch", "__version__", "collate", "sample"]


def __getattr__(name: str) -> object:
    # `mofasa.sample(...)` without importing the sampling stack at `import mofasa` time.
    if name == "sample":
        from mofasa.sampling import sample

        return sample
    raise AttributeError(f"module 'mofasa' has no attribute {name!r}")
