"""Pore metrics with pyzeo (Zeo++): largest cavity, pore-limiting diameter, accessible surface.

Optional (``mofasa evaluate --pores``; install ``pyzeo``) and slow: 17-65 s per MOF in the
high-accuracy mode, whose values match CoRE MOF's Zeo++ references within 0.03 Å. Zeo++'s fast
mode has crashed the Python interpreter on MOF-5 and UiO-66, so this always runs inside an
isolated worker process (`mofasa.evaluation.pool`): a crash costs that structure's pores only.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from mofasa.data.crystal import Crystal

__all__ = ["PROBE_RADIUS", "pore_metrics"]

PROBE_RADIUS = 1.86  # Å, N2 (CoRE MOF's accessible surface area convention)
_ASA_KEYS = {"ASA_A^2": "asa_A2", "ASA_m^2/cm^3": "asa_m2_cm3", "ASA_m^2/g": "asa_m2_g"}


def _parse_surface(text: str) -> dict[str, float]:
    out = {}
    for key, name in _ASA_KEYS.items():
        match = re.search(re.escape(key) + r":\s*([-+0-9.eE]+)", text)
        if match:
            out[name] = float(match.group(1))
    return out


def pore_metrics(
    crystal: Crystal, probe_radius: float = PROBE_RADIUS, samples: int = 2000
) -> dict[str, float]:
    """Largest included sphere (lcd), free sphere (pld), and accessible surface area.

    Returns:
        ``{"lcd": Å, "pld": Å, "lif": Å, "asa_A2": Å², "asa_m2_cm3": ..., "asa_m2_g": ...}``.
    """
    from pyzeo.extension import AtomNetwork, high_accuracy_atomnet, surface_area

    from mofasa.data.cif import write_cif

    with tempfile.TemporaryDirectory() as tmp:
        cif = Path(tmp) / "s.cif"
        write_cif(crystal, cif)
        net = AtomNetwork.read_from_CIF(str(cif))
        high_accuracy_atomnet(net, "DEF")
        res = Path(tmp) / "s.res"
        net.calculate_free_sphere_parameters(str(res))
        lcd, pld, lif = (float(x) for x in res.read_text().split()[1:4])
        text = surface_area(net, probe_radius, probe_radius, samples)
        if isinstance(text, tuple):
            text = text[0]
        text = text.decode() if isinstance(text, bytes) else str(text)
    return {"lcd": lcd, "pld": pld, "lif": lif, **_parse_surface(text)}
