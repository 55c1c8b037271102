"""mofasa.sampling: crystals from a trained latent diffusion model (see docs/ARCHITECTURE.md).

    from mofasa.sampling import sample
    crystals = sample(model="default", num=100, atoms=None, steps=None, seed=0)

* :mod:`~mofasa.sampling.api`: `sample`, per-structure seeding, size batching, model loading
  (``"default"`` = the model bundled under ``mofasa/sampling/default/``);
* :mod:`~mofasa.sampling.store`: resumable writing of CIFs and an ASE database;
* :mod:`~mofasa.sampling.cli`: ``mofasa sample`` and ``mofasa train diffusion``.
"""

from mofasa.sampling.api import default_model_path, iter_samples, load_model, plan_sizes, sample
from mofasa.sampling.store import write_samples

__all__ = ["default_model_path", "iter_samples", "load_model", "plan_sizes", "sample",
           "write_samples"]
