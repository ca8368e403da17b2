"""The training loss: a weighted sum of small named terms, normalised as in the paper's released code.

Each term returns a sum over the batch and the count it is divided by (its normaliser); B structures,
N atoms, and for each structure b its s_b sampled Hessian items (one-hot rows r and/or probes v):

============  ==============================================================  ===============  ========
term          summed over the batch                                           divided by       paper λ
============  ==============================================================  ===============  ========
energy        Σ_b |E_b - E_ref,b| / N_b                       (eV/atom)        B structures     5
forces        Σ_i ||F_i - F_ref,i||_2                          (eV/Å)           N atoms          100
hessian       Σ_b (1/s_b) Σ_items Σ_atoms ||J_s[r] - J_t[r]||_2 (eV/Å²)       N atoms          200-400
consistency   Σ_i ||-dE/dR_i - F_ref,i||_2  (direct-force students)            N atoms          -
n2n           Σ_i mean_channels (P h_i - h_teacher,i)^2  (nn.MSELoss)          N atoms          1000
============  ==============================================================  ===============  ========

J = -H is the force Jacobian; a row's error is the same for either sign. For a probe v the item is
J·v (the teacher's H·v is stored). Under data parallelism every term is ``world × sum / global count``
(counts summed over ranks): DDP averages gradients over ranks, so this gives exactly the gradient of the
single-process loss of the global batch.
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
    probe_products: Optional[Tensor] = None  #: (P, N, 3) H·v along ``batch.probe_vectors``, or None


def student_output(model, batch: AtomicGraph, hessian: bool, training: bool = True, features: bool = False, conservative: bool = False) -> StudentOutput:
    """What the loss needs from the student: energies, forces and (if asked) the batch's Hessian rows and
    probe products, node features, and the energy head's own forces (direct-force students).

    Rows and probes are VJPs of the forces (one backward pass per item of each structure), never the
    full Hessian.
    """
    core = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if getattr(core, "direct", False):  # a force head (students); teachers' energy functions have none
        out = _direct_output(model, core, batch, hessian, training, conservative)
    else:
        captured = {}

        def energy_fn(graph):
            energy, _, captured["features"] = model(graph, return_features=True)
            return energy

        pred = derivatives.predict(energy_fn if features else model, batch, create_graph=training or hessian)
        rows = probes = None
        if _has_rows(batch, hessian):
            rows = derivatives.hessian_rows(pred.forces, pred.positions, batch.row_index, batch=batch.batch, create_graph=training)
        if _has_probes(batch, hessian):
            probes = derivatives.hessian_vector_products(
                pred.forces, pred.positions, batch.probe_vectors, batch.probe_owner, batch.batch, create_graph=training
            )
        out = StudentOutput(pred.energy, pred.forces, rows, captured.get("features"), probe_products=probes)
    if not training:
        return StudentOutput(*(None if x is None else x.detach() for x in out))
    return out


def _has_rows(batch: AtomicGraph, hessian: bool) -> bool:
    return hessian and batch.row_index is not None and len(batch.row_index) > 0


def _has_probes(batch: AtomicGraph, hessian: bool) -> bool:
    return hessian and batch.probe_vectors is not None and len(batch.probe_vectors) > 0


def _direct_output(model, core, batch: AtomicGraph, hessian: bool, training: bool, conservative: bool) -> StudentOutput:
    """A force-head student: its "Hessian rows" and probe products are -dF/dR of the force head times
    one-hot or probe vectors (columns: autograd by two VJPs, or batched forward differences)."""
    R = batch.R.detach().requires_grad_(True)
    graph = batch._replace(R=R)
    energy, forces, features = model(graph, return_features=True, return_forces=True)
    rows = probes = None
    if _has_rows(batch, hessian):
        owner = batch.batch[batch.row_index // 3]
        vectors = derivatives.one_hot_rows(batch.row_index, batch.n_atoms, forces)
        rows = _direct_products(model, core, graph, batch, forces, R, vectors, owner, training)
    if _has_probes(batch, hessian):
        probes = _direct_products(model, core, graph, batch, forces, R, batch.probe_vectors, batch.probe_owner, training)
    consistent = None
    if conservative:
        (grad,) = torch.autograd.grad(energy.sum(), R, create_graph=training)
        consistent = -grad
    return StudentOutput(energy, forces, rows, features, consistent, probes)


def _direct_products(model, core, graph, batch, forces, R, vectors, owner, training) -> Tensor:
    if core.jacobian == "fd":
        return _fd_products(model, graph, batch, vectors, owner)
    return derivatives.force_jacobian_products(forces, R, vectors, owner, batch.batch, create_graph=training)


def _fd_products(model, graph: AtomicGraph, batch: AtomicGraph, vectors: Tensor, owner: Tensor) -> Tensor:
    """Forward differences along each vector, one batched forward pass per structure."""
    force_fn = lambda g: model(g, return_forces=True)[1]  # noqa: E731
    out = batch.R.new_zeros(len(vectors), batch.n_atoms, 3)
    for b in range(batch.n_structures):
        lo, hi = int(batch.ptr[b]), int(batch.ptr[b + 1])
        picked = (owner == b).nonzero().squeeze(1)
        if len(picked):
            single = structure(graph, b)
            h = getattr(model, "fd_step", 1e-4)
            out[picked, lo:hi] = derivatives.fd_force_jacobian_products(force_fn, single, vectors[picked, lo:hi], h=h)
    return out


def per_structure_mean(values: Tensor, owner: Tensor, n_structures: int) -> Tensor:
    """(B,) mean of ``values`` over the items of each structure (0 for a structure without items)."""
    sums = values.new_zeros(n_structures).index_add(0, owner, values)
    counts = torch.bincount(owner, minlength=n_structures).clamp_min(1)
    return sums / counts


@dataclass
class EnergyTerm:
    weight: float
    name: str = "energy"
    needs_hessian: bool = False

    def contribution(self, out: StudentOutput, batch: AtomicGraph) -> tuple[Tensor, int]:
        """Σ_b |ΔE_b| / N_b over B structures: per-atom energy, as in the paper."""
        return ((out.energy - batch.energy).abs() / batch.atoms_per_structure).sum(), batch.n_structures


@dataclass
class ForceTerm:
    weight: float
    name: str = "forces"
    needs_hessian: bool = False

    def contribution(self, out: StudentOutput, batch: AtomicGraph) -> tuple[Tensor, int]:
        return (out.forces - batch.forces).norm(dim=-1).sum(), batch.n_atoms


@dataclass
class HessianTerm:
    """One-hot rows and random probes alike: per structure, the mean over its items of the summed
    per-atom error norms; summed over structures and divided by the batch's atoms."""

    weight: float
    name: str = "hessian"
    needs_hessian: bool = True

    def contribution(self, out: StudentOutput, batch: AtomicGraph) -> tuple[Tensor, int]:
        errors, owners = [], []
        if out.hessian_rows is not None:
            errors.append((out.hessian_rows - batch.hessian_rows).norm(dim=-1).sum(dim=1))
            owners.append(batch.batch[batch.row_index // 3])
        if out.probe_products is not None:
            errors.append((out.probe_products - batch.probe_products).norm(dim=-1).sum(dim=1))
            owners.append(batch.probe_owner)
        if not errors:
            return batch.R.new_zeros(()), batch.n_atoms
        per_structure = per_structure_mean(torch.cat(errors), torch.cat(owners), batch.n_structures)
        return per_structure.sum(), batch.n_atoms


#: The name the trainer and older code use for the Hessian term.
HessianRowTerm = HessianTerm


@dataclass
class ConsistencyTerm:
    """Direct-force students: ties the energy head's -dE/dR to the reference forces."""

    weight: float
    name: str = "consistency"
    needs_hessian: bool = False

    def contribution(self, out: StudentOutput, batch: AtomicGraph) -> tuple[Tensor, int]:
        if out.conservative_forces is None:
            return batch.R.new_zeros(()), batch.n_atoms
        return (out.conservative_forces - batch.forces).norm(dim=-1).sum(), batch.n_atoms


class NodeFeatureTerm(torch.nn.Module):
    """n2n baseline: a learned linear projection of the student's node features matched to the teacher's
    node features stored at labelling time, by the MSE over atoms and channels (``nn.MSELoss``)."""

    needs_hessian = False
    name = "n2n"

    def __init__(self, weight: float, student_channels: int, teacher_channels: int):
        super().__init__()
        self.weight = weight
        self.projection = torch.nn.Linear(student_channels, teacher_channels)

    def contribution(self, out: StudentOutput, batch: AtomicGraph) -> tuple[Tensor, int]:
        if out.features is None or batch.node_features is None:
            return batch.R.new_zeros(()), batch.n_atoms
        return (self.projection(out.features) - batch.node_features).pow(2).mean(dim=-1).sum(), batch.n_atoms


class DistillationLoss:
    """Sum of weighted terms, each ``sum / count`` as in the table above.

    Returns the total and each term's unweighted value for logging. Under data parallelism pass
    ``global_counts`` (each term's count summed over ranks) and ``world`` (number of ranks).
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

    def contributions(self, out: StudentOutput, batch: AtomicGraph) -> dict[str, tuple[Tensor, int]]:
        return {t.name: t.contribution(out, batch) for t in self.terms}

    def __call__(self, out: StudentOutput, batch: AtomicGraph, global_counts: dict | None = None, world: int = 1) -> tuple[Tensor, dict[str, float]]:
        values = {}
        for name, (total, count) in self.contributions(out, batch).items():
            count = count if global_counts is None else global_counts[name] / world
            values[name] = total / count if count else total
        loss = sum(t.weight * values[t.name] for t in self.terms)
        return loss, {name: float(v.detach()) for name, v in values.items()}

    def term(self, name: str):
        return next(t for t in self.terms if t.name == name)


def build_loss(energy: float, forces: float, hessian: float, consistency: float = 0.0, n2n: float = 0.0, channels: tuple[int, int] | None = None) -> DistillationLoss:
    """The paper's terms; ``consistency`` for direct-force students, ``n2n`` with (student, teacher) feature sizes."""
    terms = [EnergyTerm(energy), ForceTerm(forces), HessianTerm(hessian)]
    if consistency:
        terms.append(ConsistencyTerm(consistency))
    if n2n:
        if channels is None:
            raise ValueError("the n2n term needs the student's and the teacher's feature sizes")
        terms.append(NodeFeatureTerm(n2n, *channels))
    return DistillationLoss(terms)
