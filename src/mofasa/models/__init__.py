"""mofasa.models: pure ``nn.Module``s (no file I/O; see docs/ARCHITECTURE.md).

* :mod:`~mofasa.models.gns`: GNS backbone (local k-NN / all-pairs step + global node);
* :mod:`~mofasa.models.autoencoder`: :class:`CrystalAutoencoder`;
* :mod:`~mofasa.models.bottleneck`: none / KL / residual-VQ bottlenecks;
* :mod:`~mofasa.models.losses`: reconstruction losses;
* :mod:`~mofasa.models.config`: frozen configs; `get_preset` reads the ``tiny`` / ``small`` /
  ``base`` / ``large`` presets from the shipped YAML files (their only source).
"""

from mofasa.models.autoencoder import (
    CrystalAutoencoder,
    DecoderOutput,
    EncoderOutput,
    translate_batch,
)
from mofasa.models.bottleneck import (
    BottleneckOutput,
    GaussianBottleneck,
    IdentityBottleneck,
    ResidualVQ,
    kl_divergence,
    make_bottleneck,
)
from mofasa.models.config import (
    AutoencoderConfig,
    BackboneConfig,
    BottleneckConfig,
    autoencoder_presets,
    get_preset,
)
from mofasa.models.gns import GNS, attend
from mofasa.models.losses import autoencoder_loss, periodic_displacement

__all__ = [
    "GNS",
    "AutoencoderConfig",
    "BackboneConfig",
    "BottleneckConfig",
    "BottleneckOutput",
    "CrystalAutoencoder",
    "DecoderOutput",
    "EncoderOutput",
    "GaussianBottleneck",
    "IdentityBottleneck",
    "ResidualVQ",
    "attend",
    "autoencoder_loss",
    "autoencoder_presets",
    "get_preset",
    "kl_divergence",
    "make_bottleneck",
    "periodic_displacement",
    "translate_batch",
]
