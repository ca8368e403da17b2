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
from ffdistill.graph import AtomicGraph, structure


class StudentOutput(NamedTuple):
    energy: Tensor  #: (B,)
    forces: Tensor  #: (N, 3)
    hessian_rows: Optional[Tensor]  #: (K, N, 3), rows ``batch.row_index``, or None
    features: Optional[Tensor] = None  #: (N, channels) student node features, when asked
    conservative_forces: Optional[Tensor] = None  #: -dE/dR of a direct-force student's energy head


def student_output(model, batch: AtomicGraph, hessian: bool, training: bool = True, features: bool = False, conservative: bool = False) -> StudentOutput:
    """What the loss needs from the student: energies, forces and (if asked) the batch's Hessian rows,
    node features, and the energy head's own forces (direct-force students).

    Rows are VJPs of the forces (one backward pass per row of each structure), never the full Hessian.
    """
    core = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if getattr(core, "direct", False):
        out = _direct_output(model, core, batch, hessian, training, conservative)
    else:
        captured = {}

        def energy_fn(graph):
            energy, _, captured["features"] = model(graph, return_features=True)
            return energy

        pred = derivatives.predict(energy_fn if features else model, batch, create_graph=training or hessian)
        rows = None
        if _has_rows(batch, hessian):
            rows = derivatives.hessian_rows(pred.forces, pred.positions, batch.row_index, batch=batch.batch, create_graph=training)
        out = StudentOutput(pred.energy, pred.forces, rows, captured.get("features"))
    if not training:
        return StudentOutput(*(None if x is None else x.detach() for x in out))
    return out


def _has_rows(batch: AtomicGraph, hessian: bool) -> bool:
    return hessian and batch.row_index is not None and len(batch.row_index) > 0


def _direct_output(model, core, batch: AtomicGraph, hessian: bool, training: bool, conservative: bool) -> StudentOutput:
    """A force-head student: its "Hessian rows" are columns of -dF/dR (autograd or batched forward differences)."""
    R = batch.R.detach().requires_grad_(True)
    graph = batch._replace(R=R)
    energy, forces, features = model(graph, return_features=True, return_forces=True)
    rows = None
    if _has_rows(batch, hessian):
        if core.jacobian == "fd":
            rows = _fd_columns(model, graph, batch)
        else:
            rows = derivatives.force_jacobian_columns(forces, R, batch.row_index, batch.batch, create_graph=training)
    consistent = None
    if conservative:
        (grad,) = torch.autograd.grad(energy.sum(), R, create_graph=training)
        consistent = -grad
    return StudentOutput(energy, forces, rows, features, consistent)


def _fd_columns(model, graph: AtomicGraph, batch: AtomicGraph) -> Tensor:
    """Forward differences, one batched forward pass per structure, laid out like ``batch.hessian_rows``."""

    force_fn = lambda g: model(g, return_forces=True)[1]  # noqa: E731
    out = batch.R.new_zeros(len(batch.row_index), batch.n_atoms, 3)
    owner = batch.batch[batch.row_index // 3]
    for b in range(batch.n_structures):
        lo, hi = int(batch.ptr[b]), int(batch.ptr[b + 1])
        picked = (owner == b).nonzero().squeeze(1)
        if len(picked):
            single = structure(graph, b)
            out[picked, lo:hi] = derivatives.fd_force_jacobian_columns(force_fn, single, batch.row_index[picked] - 3 * lo, h=getattr(model, "fd_step", 1e-4))
    return out



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


@dataclass
class ConsistencyTerm:
    """Direct-force students: ties the energy head's -dE/dR to the reference forces."""

    weight: float
    name: str = "consistency"
    needs_hessian: bool = False

    def errors(self, out: StudentOutput, batch: AtomicGraph) -> Tensor:
        if out.conservative_forces is None:
            return batch.R.new_zeros(0)
        return (out.conservative_forces - batch.forces).norm(dim=-1)


class NodeFeatureTerm(torch.nn.Module):
    """n2n baseline: a learned linear projection of the student's node features matched (MSE,
    per atom) to the teacher's node features stored at labelling time."""

    needs_hessian = False
    name = "n2n"

    def __init__(self, weight: float, student_channels: int, teacher_channels: int):
        super().__init__()
        self.weight = weight
        self.projection = torch.nn.Linear(student_channels, teacher_channels)

    def errors(self, out: StudentOutput, batch: AtomicGraph) -> Tensor:
        if out.features is None or batch.node_features is None:
            return batch.R.new_zeros(0)
        return (self.projection(out.features) - batch.node_features).pow(2).mean(dim=-1)


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

    @property
    def needs_features(self) -> bool:
        return any(t.name == "n2n" and t.weight > 0 for t in self.terms)

    @property
    def needs_conservative_forces(self) -> bool:
        return any(t.name == "consistency" and t.weight > 0 for t in self.terms)

    def parameters(self):
        """Trainable parameters of the terms themselves (the n2n projection)."""
        return [p for t in self.terms if isinstance(t, torch.nn.Module) for p in t.parameters()]

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


def build_loss(energy: float, forces: float, hessian: float, consistency: float = 0.0, n2n: float = 0.0, channels: tuple[int, int] | None = None) -> DistillationLoss:
    """The paper's terms; ``consistency`` for direct-force students, ``n2n`` with (student, teacher) feature sizes."""
    terms = [EnergyTerm(energy), ForceTerm(forces), HessianRowTerm(hessian)]
    if consistency:
        terms.append(ConsistencyTerm(consistency))
    if n2n:
        if channels is None:
            raise ValueError("the n2n term needs the student's and the teacher's feature sizes")
        terms.append(NodeFeatureTerm(n2n, *channels))
    return DistillationLoss(terms)
