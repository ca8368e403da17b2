"""A model under evaluation, teacher or student, and the one way to load a student for inference.

Every score of a student goes through ``Candidate.forces`` or ``Candidate.hessian``: a direct-force
student is judged by its force head, never by -dE/dR of its energy head.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import ase
import numpy as np
import torch

from ffdistill import derivatives
from ffdistill.graph import AtomicGraph, from_ase


def load_for_inference(path: str, device: str | torch.device = "cpu"):
    """The student saved at ``path`` on ``device``, in eval mode with its parameters frozen."""
    from ffdistill.calculator import load_student
    from ffdistill.devices import resolve

    return freeze(load_student(path).to(resolve(device, "device")))


def freeze(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def model_forces(model, graph: AtomicGraph) -> torch.Tensor:
    """(N, 3) forces of any potential through its contract: a force head if it has one, else -dE/dR; the
    graph goes to the potential's device, the forces come back on it."""
    from ffdistill.devices import device_of

    return model.predict(graph.to(device_of(model))).forces


def model_hessian(model, graph: AtomicGraph) -> np.ndarray:
    """(3N, 3N) -dF_i/dR_r of a one-structure graph (float64). For a force head this is not symmetric;
    callers that need a Hessian (frequencies) symmetrise it."""
    return derivatives.full_hessian(model, graph).double().cpu().numpy()


@dataclass
class Candidate:
    """A model under evaluation: a student (``model``) or a teacher (any ``Teacher``)."""

    name: str
    model: torch.nn.Module | None
    cutoff: float
    dtype: torch.dtype = torch.float32
    teacher: object | None = None

    @classmethod
    def of_teacher(cls, teacher) -> Candidate:
        return cls("teacher", None, teacher.cutoff, teacher.dtype, teacher=teacher)

    @classmethod
    def of_student(cls, name: str, model) -> Candidate:
        return cls(name, freeze(model), model.cutoff)

    @property
    def is_teacher(self) -> bool:
        return self.teacher is not None

    def calculator(self):
        """A fresh ASE calculator (direct-force students answer with their force head)."""
        if self.is_teacher:
            return self.teacher.as_calculator()
        from ffdistill.calculator import PotentialCalculator

        return PotentialCalculator(self.model, dtype=self.dtype)

    def graph(self, atoms: ase.Atoms) -> AtomicGraph:
        """The model's graph of ``atoms`` on the model's device."""
        from ffdistill.devices import device_of

        return from_ase(atoms, self.cutoff, dtype=self.dtype, labels=False).to(device_of(self.model))

    def forces(self, atoms: ase.Atoms) -> np.ndarray:
        """(N, 3) forces in eV/Å, float64."""
        if self.is_teacher:
            return self.teacher.label(atoms).forces
        return model_forces(self.model, self.graph(atoms)).double().cpu().numpy()

    def hessian(self, atoms: ase.Atoms) -> np.ndarray:
        """(3N, 3N) -dF/dR in eV/Å² (autograd, or the teacher's own finite-difference rows)."""
        if self.is_teacher:
            return model_hessian(self.teacher, self.teacher.graph(atoms))
        return model_hessian(self.model, self.graph(atoms))


def student_candidates(
    paths: Sequence[str], taken: Sequence[str] = ("teacher",), device: str | torch.device = "cpu"
) -> list[Candidate]:
    """Candidates for saved students on ``device``, named after their run folders (``runs/x/best.pt`` -> ``x``)."""
    out, names = [], set(taken)
    for path in paths:
        name = _model_name(path, names)
        names.add(name)
        out.append(Candidate.of_student(name, load_for_inference(path, device)))
    return out


def _model_name(path: str, names: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name = os.path.basename(os.path.dirname(os.path.abspath(path))) if stem == "best" else stem
    return name if name not in names else f"{name}_{len(names)}"
