"""Any ASE calculator as a teacher; Hessian rows by central differences of its forces."""

from __future__ import annotations

import importlib

import ase
import numpy as np
import torch

from ffdistill.errors import TeacherError
from ffdistill.graph import AtomicGraph, to_ase
from ffdistill.teachers.base import Teacher


class ASETeacher(Teacher):
    """Wraps ``calculator_factory()``; spec ``ase:MODULE:FACTORY`` (e.g. ``ase:ase.calculators.emt:EMT``)."""

    has_autograd = False
    cpu_only = "an ASE calculator: numpy in, numpy out"
    dtype = torch.float64
    cutoff = 0.0  # the calculator finds its own neighbours: its graphs carry none (no neighbour list to build)

    def __init__(self, calculator, spec: str, version: str = "unknown", elements=None, factory=None):
        self.calc, self.factory = calculator, factory
        self.spec, self.version = spec, version
        self.elements = None if elements is None else frozenset(elements)

    @classmethod
    def from_spec(cls, target: str) -> ASETeacher:
        module_name, _, factory_name = target.rpartition(":")
        if not module_name or not factory_name:
            raise TeacherError(f"ase teacher spec must be ase:MODULE:FACTORY, got ase:{target}")
        try:
            module = importlib.import_module(module_name)
            factory = getattr(module, factory_name)
        except (ImportError, AttributeError) as error:
            raise TeacherError(f"cannot load ASE calculator {target}: {error}") from error
        version = getattr(importlib.import_module(module_name.split(".")[0]), "__version__", "unknown")
        elements = _emt_elements() if target == "ase.calculators.emt:EMT" else None
        return cls(
            factory(),
            spec=f"ase:{target}",
            version=f"{module_name.split('.')[0]} {version}",
            elements=elements,
            factory=factory,
        )

    def label(self, atoms, rows=(), probes=None):
        if self.factory is not None:
            # A fresh calculator per structure: cached neighbour lists otherwise make the last bits
            # of a result depend on which structures came before (and so on where a resume began).
            self.calc = self.factory()
        return super().label(atoms, rows, probes)

    def as_calculator(self):
        return self.calc

    def energy_forces_stress(self, graph: AtomicGraph, stress: bool):
        atoms: ase.Atoms = to_ase(graph)[0]
        atoms.calc = self.calc
        try:
            energy = atoms.get_potential_energy()
            forces = atoms.get_forces()
            sigma = atoms.get_stress(voigt=False) if stress else None
        except Exception as error:  # calculators raise anything; say which structure broke it
            raise TeacherError(
                f"teacher {self.spec} failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from error
        as_t = lambda x: None if x is None else torch.as_tensor(np.asarray(x), dtype=torch.float64)  # noqa: E731
        return as_t(energy), as_t(forces), as_t(sigma)


def _emt_elements() -> set[int]:
    from ase.calculators.emt import parameters

    return {ase.data.atomic_numbers[s] for s in parameters}
