"""mofasa.sampling: crystals from a trained latent diffusion model (see docs/ARCHITECTURE.md).

    from mofasa.sampling import sample
    crystals = sample(model="default", num=100, atoms=None, steps=None, seed=0)

* :mod:`~mofasa.sampling.settings`: `SampleSettings`, checked once and resolved against the model;
* :mod:`~mofasa.sampling.api`: `sample`, per-structure seeding, size batching;
* :mod:`~mofasa.sampling.store`: resumable writing of CIFs and an ASE database.

Models load through the neutral `mofasa.checkpoint` room (``"default"`` = the model bundled
under ``mofasa/sampling/default/``); sampling never imports `mofasa.training`.
"""

from mofasa.checkpoint import default_model_path, load_model
from mofasa.sampling.api import iter_samples, plan_sizes, sample
from mofasa.sampling.settings import SampleSettings, SampleSettingsError
from mofasa.sampling.store import write_samples

__all__ = ["SampleSettings", "SampleSettingsError", "default_model_path", "iter_samples",
           "load_model", "plan_sizes", "sample", "write_samples"]
