"""mofasa.checkpoint: the neutral room between the models and their users.

Checkpoint files (one self-describing file, ``weights_only=True``, 16 MB parts), device
resolution, and loading / building / exporting models from checkpoints. Training and sampling
both import from here; this room imports neither (nor the data pipeline), so sampling a model
never loads `mofasa.training`.
"""

from mofasa.checkpoint.device import DeviceError, resolve_device
from mofasa.checkpoint.files import (
    FORMAT,
    MAX_PART_BYTES,
    checkpoint_exists,
    load_checkpoint,
    save_checkpoint,
)
from mofasa.checkpoint.models import (
    build_diffusion,
    default_model_path,
    export_coordflow,
    export_diffusion,
    extract_autoencoder,
    load_any_autoencoder,
    load_autoencoder,
    load_coordflow,
    load_diffusion,
    load_model,
    resolve_latent_sizes,
)

__all__ = [
    "FORMAT",
    "MAX_PART_BYTES",
    "DeviceError",
    "build_diffusion",
    "checkpoint_exists",
    "default_model_path",
    "export_coordflow",
    "export_diffusion",
    "extract_autoencoder",
    "load_any_autoencoder",
    "load_autoencoder",
    "load_checkpoint",
    "load_coordflow",
    "load_diffusion",
    "load_model",
    "resolve_device",
    "resolve_latent_sizes",
    "save_checkpoint",
]
