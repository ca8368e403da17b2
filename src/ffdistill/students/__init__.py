"""Student architectures and their named sizes."""

from __future__ import annotations

from ffdistill.errors import InputError
from ffdistill.students.base import EnergyStudent
from ffdistill.students.painn import DirectForcePaiNN, PaiNN
from ffdistill.students.schnet import SchNet

ARCHITECTURES = {"painn": PaiNN, "painn-direct": DirectForcePaiNN, "schnet": SchNet}

#: name -> (architecture, hyper-parameters)
PRESETS = {
    "painn-tiny": ("painn", {"channels": 16, "layers": 2, "n_basis": 8}),
    "painn-small": ("painn", {"channels": 32, "layers": 3, "n_basis": 16}),
    "painn-medium": ("painn", {"channels": 64, "layers": 3, "n_basis": 20}),
    "painn-direct-small": ("painn-direct", {"channels": 32, "layers": 3, "n_basis": 16}),
    "schnet-tiny": ("schnet", {"channels": 16, "layers": 2, "n_basis": 12}),
    "schnet-small": ("schnet", {"channels": 48, "layers": 3, "n_basis": 20}),
}

__all__ = ["ARCHITECTURES", "PRESETS", "DirectForcePaiNN", "EnergyStudent", "PaiNN", "SchNet", "build_student"]


def build_student(name: str, elements, cutoff: float = 5.0, **overrides) -> EnergyStudent:
    """A student by preset name (``painn-small``) or architecture name (``painn``) plus hyper-parameters."""
    if name in PRESETS:
        arch, hparams = PRESETS[name]
        hparams = {**hparams, **overrides}
    elif name in ARCHITECTURES:
        arch, hparams = name, overrides
    else:
        choices = ", ".join(sorted(PRESETS) + sorted(ARCHITECTURES))
        raise InputError(f"unknown student {name!r}: choose one of {choices}")
    return ARCHITECTURES[arch](elements=elements, cutoff=cutoff, **hparams)
