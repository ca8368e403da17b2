"""Old import path of ``ffdistill.deploy.lammps``, kept because ML-IAP exports written before the move pickle
a reference to ``ffdistill.lammps._rebuild_mliap``: unpickling them needs it here."""

from ffdistill.deploy.lammps import _rebuild_mliap, mliap_model

__all__ = ["_rebuild_mliap", "mliap_model"]
