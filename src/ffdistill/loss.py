"""The training loss: a weighted sum of small named terms.

=========  =====================================================  ========
term       value                                                  paper λ
=========  =====================================================  ========
energy     mean over structures of |E - E_ref|  (eV)               5
forces     mean over atoms of ||F - F_ref||_2  (eV/Å)              100
hessian    mean over sampled rows r of sum over atoms               200-400
           ||H_student[r] - H_teacher[r]||_2  (eV/Å²)
=========  =====================================================  ========
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ffdistill import derivatives
from ffdistill.graph import AtomicGraph


class StudentOutput(NamedTuple):
    energy: Tensor  #: (B,)
    forces: Tensor  #: (N, 3)
    hessian_rows: Optional[Tensor]  #: (K, N, 3), rows ``batch.row_index``, or None


def student_output(model, batch: AtomicGraph, hessian: bool, training: bool = True) -> StudentOutput:
    """What the loss needs from the student: energies, forces and (if asked) the batch's Hessian rows.

    Rows are VJPs of the forces (one backward pass per row of each structure), never the full Hessian.
    """
    pred = derivatives.predict(model, batch, create_graph=training or hessian)
    rows = None
    if hessian and batch.row_index is not None and len(batch.row_index):
        rows = derivatives.hessian_rows(pred.forces, pred.positions, batch.row_index, batch=batch.batch, create_graph=training)
    if not training:
        return StudentOutput(pred.energy.detach(), pred.forces.detach(), None if rows is None else rows.detach())
    return StudentOutput(pred.energy, pred.forces, rows)


@dataclass
class EnergyTerm:
    weight: float
    name: str = "energy"
    needs_hessian: bool = False

    def __call__(self, out: StudentOutput, batch: AtomicGraph) -> Tensor:
        # Total, not per atom (as in the paper): per-atom errors let forces swamp the energy term.
        return (out.energy - batch.energy).abs().mean()


@dataclass
class ForceTerm:
    weight: float
    name: str = "forces"
    needs_hessian: bool = False

    def __call__(self, out: StudentOutput, batch: AtomicGraph) -> Tensor:
        return (out.forces - batch.forces).norm(dim=-1).mean()


@dataclass
class HessianRowTerm:
    weight: float
    name: str = "hessian"
    needs_hessian: bool = True

    def __call__(self, out: StudentOutput, batch: AtomicGraph) -> Tensor:
        if out.hessian_rows is None:
            return batch.R.new_zeros(())
        # Blocks are zero outside each row's own structure for student and teacher alike.
        return (out.hessian_rows - batch.hessian_rows).norm(dim=-1).sum(dim=1).mean()


class DistillationLoss:
    """Sum of weighted terms; returns the total and each term's unweighted value for logging."""

    def __init__(self, terms):
        self.terms = list(terms)

    @property
    def needs_hessian(self) -> bool:
        return any(t.needs_hessian and t.weight > 0 for t in self.terms)

    def __call__(self, out: StudentOutput, batch: AtomicGraph) -> tuple[Tensor, dict[str, float]]:
        values = {t.name: t(out, batch) for t in self.terms}
        total = sum(t.weight * values[t.name] for t in self.terms)
        return total, {name: float(v.detach()) for name, v in values.items()}

    def term(self, name: str):
        return next(t for t in self.terms if t.name == name)


def build_loss(energy: float, forces: float, hessian: float) -> DistillationLoss:
    return DistillationLoss([EnergyTerm(energy), ForceTerm(forces), HessianRowTerm(hessian)])

