"""Students (and autograd teachers) as ordinary ASE calculators, and the student file format."""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from ffdistill import __version__, derivatives
from ffdistill.errors import InputError
from ffdistill.graph import AtomicGraph, from_ase

STUDENT_FORMAT = "ffdistill-student"


class EnergyModelCalculator(Calculator):
    """Energy, forces and stress of any energy-only model on ``AtomicGraph``.

    numpy in eV, eV/Å and eV/Å³ (Voigt order) at this boundary only. Stress is computed when the
    cell is periodic in all three directions.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, energy_fn: Callable[[AtomicGraph], torch.Tensor], cutoff: float, dtype=torch.float32, check_elements=None, **kwargs):
        super().__init__(**kwargs)
        self.energy_fn, self.cutoff, self.dtype, self.check_elements = energy_fn, cutoff, dtype, check_elements

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.check_elements is not None:
            self.check_elements(self.atoms.numbers)
        graph = from_ase(self.atoms, self.cutoff, dtype=self.dtype, labels=False)
        if getattr(self.energy_fn, "direct", False):  # a force head: forces are predicted, not -dE/dR
            with torch.no_grad():
                energy, forces, _ = self.energy_fn(graph, return_forces=True)
            self.results = {"energy": float(energy.sum()), "free_energy": float(energy.sum()), "forces": forces.double().numpy()}
            return
        want_stress = "stress" in properties and bool(np.all(self.atoms.pbc))
        pred = derivatives.predict(self.energy_fn, graph, stress=want_stress)
        energy = float(pred.energy.sum())
        self.results = {"energy": energy, "free_energy": energy, "forces": pred.forces.double().numpy()}
        if want_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(pred.stress[0].double().numpy())


def save_student(model, path: str, **metadata) -> None:
    """Write a student as plain data (loads with ``torch.load(weights_only=True)``), atomically."""
    payload = {
        "format": STUDENT_FORMAT,
        "ffdistill_version": __version__,
        "arch": model.arch,
        "constructor": model.constructor_args(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": metadata,
    }
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_student(path: str):
    """The student saved at ``path``; refuses anything that is not plain student data."""
    from ffdistill.students import ARCHITECTURES

    if not os.path.isfile(path):
        raise InputError(f"no student file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(f"{path} is not a readable student file ({type(error).__name__}: {str(error).splitlines()[0][:120]})") from error
    if not isinstance(payload, dict) or payload.get("format") != STUDENT_FORMAT:
        raise InputError(f"{path} is not an ffdistill student file")
    model = ARCHITECTURES[payload["arch"]](**payload["constructor"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def load_calculator(path: str, **kwargs) -> EnergyModelCalculator:
    """An ASE calculator for the student saved at ``path``."""
    model = load_student(path)
    for p in model.parameters():
        p.requires_grad_(False)
    return EnergyModelCalculator(model, model.cutoff, check_elements=model.check_elements, **kwargs)
