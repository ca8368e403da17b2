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

    def errors(self, out: StudentOutput, batch: AtomicGraph) -> Tensor:
        """(B,) per structure. Total, not per atom (as in the paper): per-atom errors let forces swamp it."""
        return (out.energy - batch.energy).abs()


@dataclass
class ForceTerm:
    weight: float
    name: str = "forces"
    needs_hessian: bool = False

    def errors(self, out: StudentOutput, batch: AtomicGraph) -> Tensor:
        """(N,) per atom."""
        return (out.forces - batch.forces).norm(dim=-1)


@dataclass
class HessianRowTerm:
    weight: float
    name: str = "hessian"
    needs_hessian: bool = True

    def errors(self, out: StudentOutput, batch: AtomicGraph) -> Tensor:
        """(K,) per row. Blocks are zero outside each row's own structure, for student and teacher alike."""
        if out.hessian_rows is None:
            return batch.R.new_zeros(0)
        return (out.hessian_rows - batch.hessian_rows).norm(dim=-1).sum(dim=1)


class DistillationLoss:
    """Sum of weighted terms, each the mean of its per-item errors.

    Returns the total and each term's unweighted value for logging. Under data parallelism pass
    ``global_counts`` (items per term summed over ranks) and ``world`` (number of ranks): each term
    becomes ``world × sum / global count``, so that averaging gradients over ranks gives exactly the
    gradient of the global mean, however unevenly atoms and rows fall across ranks.
    """

    def __init__(self, terms):
        self.terms = list(terms)

    @property
    def needs_hessian(self) -> bool:
        return any(t.needs_hessian and t.weight > 0 for t in self.terms)

    def errors(self, out: StudentOutput, batch: AtomicGraph) -> dict[str, Tensor]:
        return {t.name: t.errors(out, batch) for t in self.terms}

    def __call__(self, out: StudentOutput, batch: AtomicGraph, global_counts: dict | None = None, world: int = 1) -> tuple[Tensor, dict[str, float]]:
        errors = self.errors(out, batch)
        values = {}
        for name, e in errors.items():
            count = len(e) if global_counts is None else global_counts[name] / world
            values[name] = e.sum() / count if count else e.sum()
        total = sum(t.weight * values[t.name] for t in self.terms)
        return total, {name: float(v.detach()) for name, v in values.items()}

    def term(self, name: str):
        return next(t for t in self.terms if t.name == name)


def build_loss(energy: float, forces: float, hessian: float) -> DistillationLoss:
    return DistillationLoss([EnergyTerm(energy), ForceTerm(forces), HessianRowTerm(hessian)])
