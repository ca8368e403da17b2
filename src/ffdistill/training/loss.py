"""The training loss: a weighted sum of small named terms, normalised as in the paper's released code.

Each term returns a sum over the batch and the count it is divided by (its normaliser); B structures,
N atoms, and for each structure b its s_b sampled Hessian items (one-hot rows r and/or probes v):

============  ==============================================================  ===============  ========
term          summed over the batch                                           divided by       paper λ
============  ==============================================================  ===============  ========
energy        Σ_b ‖E_b - E_ref,b‖ / N_b                       (eV/atom)        B structures     5
forces        Σ_i ||F_i - F_ref,i||_2                          (eV/Å)           N atoms          100
hessian       Σ_b (1/s_b) Σ_items Σ_atoms ||J_s[r] - J_t[r]||_2 (eV/Å²)       N atoms          200-400
stress        Σ_b ||σ_b - σ_ref,b||_F · V_b / N_b  (eV/atom)                  B_p periodic     -
consistency   Σ_i ||-dE/dR_i - F_ref,i||_2  (direct-force students)            N atoms          -
n2n           Σ_i mean_channels (P h_i - h_teacher,i)^2  (nn.MSELoss)          N atoms          1000
============  ==============================================================  ===============  ========

J = -H is the force Jacobian; a row's error is the same for either sign. For a probe v the item is
J·v (the teacher's H·v is stored). Under data parallelism every term is ``world × sum / global count``
(counts summed over ranks): DDP averages gradients over ranks, so this gives exactly the gradient of the
single-process loss of the global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ffdistill.graph import AtomicGraph
from ffdistill.potential import Outputs, Want

#: The name older code uses for the outputs the loss reads.
StudentOutput = Outputs


def per_structure_mean(values: Tensor, owner: Tensor, n_structures: int) -> Tensor:
    """(B,) mean of ``values`` over the items of each structure (0 for a structure without items)."""
    sums = values.new_zeros(n_structures).index_add(0, owner, values)
    counts = torch.bincount(owner, minlength=n_structures).clamp_min(1)
    return sums / counts


@dataclass
class EnergyTerm:
    weight: float
    name: str = "energy"
    needs: tuple = ()

    def contribution(self, out: Outputs, batch: AtomicGraph) -> tuple[Tensor, int]:
        """Σ_b abs(ΔE_b) / N_b over B structures: per-atom energy, as in the paper."""
        return ((out.energy - batch.energy).abs() / batch.atoms_per_structure).sum(), batch.n_structures


@dataclass
class ForceTerm:
    weight: float
    name: str = "forces"
    needs: tuple = ("forces",)

    def contribution(self, out: Outputs, batch: AtomicGraph) -> tuple[Tensor, int]:
        return (out.forces - batch.forces).norm(dim=-1).sum(), batch.n_atoms


@dataclass
class HessianTerm:
    """One-hot rows and random probes alike: per structure, the mean over its items of the summed
    per-atom error norms; summed over structures and divided by the batch's atoms; times ``scale``.

    ``scale`` = σ_F / σ_H (Å) makes the term travel between systems whose Hessians differ ~10× in size
    (``hessian_scale``): the term becomes σ_F × the relative Hessian error, on the footing of the force term
    (σ_F × the relative force error), so one λH serves a stiff molecule and a soft crystal alike."""

    weight: float
    scale: float = 1.0
    name: str = "hessian"
    needs: tuple = ("hessian_rows", "probe_products")

    def contribution(self, out: Outputs, batch: AtomicGraph) -> tuple[Tensor, int]:
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
        return self.scale * per_structure.sum(), batch.n_atoms


#: The name the trainer and older code use for the Hessian term.
HessianRowTerm = HessianTerm


@dataclass
class StressTerm:
    """Periodic cells with a stress label: the Frobenius norm of the stress error times the volume per atom,
    i.e. the virial error per atom (eV/atom, the energy term's unit), averaged over those structures. NPT
    needs it; molecules and frames without a stress label contribute nothing."""

    weight: float
    name: str = "stress"
    needs: tuple = ("stress",)

    def contribution(self, out: Outputs, batch: AtomicGraph) -> tuple[Tensor, int]:
        if out.stress is None or batch.stress is None:
            return batch.R.new_zeros(()), 0
        labelled = torch.isfinite(batch.stress).flatten(1).all(1) & torch.isfinite(out.stress).flatten(1).all(1)
        volume = torch.linalg.det(batch.cell).abs()
        per_atom = (out.stress - batch.stress).flatten(1).norm(dim=1) * volume / batch.atoms_per_structure
        return per_atom[labelled].sum(), int(labelled.sum())


@dataclass
class ConsistencyTerm:
    """Direct-force students: ties the energy head's -dE/dR to the reference forces."""

    weight: float
    name: str = "consistency"
    needs: tuple = ("conservative_forces",)

    def contribution(self, out: Outputs, batch: AtomicGraph) -> tuple[Tensor, int]:
        if out.conservative_forces is None:
            return batch.R.new_zeros(()), batch.n_atoms
        return (out.conservative_forces - batch.forces).norm(dim=-1).sum(), batch.n_atoms


class NodeFeatureTerm(torch.nn.Module):
    """n2n baseline: a learned linear projection of the student's node features matched to the teacher's
    node features stored at labelling time, by the MSE over atoms and channels (``nn.MSELoss``)."""

    needs = ("features",)
    name = "n2n"

    def __init__(self, weight: float, student_channels: int, teacher_channels: int):
        super().__init__()
        self.weight = weight
        self.projection = torch.nn.Linear(student_channels, teacher_channels)

    def contribution(self, out: Outputs, batch: AtomicGraph) -> tuple[Tensor, int]:
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

    def want(self, batch: AtomicGraph) -> Want:
        """The outputs the weighted terms need, for training (differentiable) on this batch."""
        needs = {need for t in self.terms if t.weight > 0 for need in t.needs}
        has_rows = batch.row_index is not None and len(batch.row_index) > 0
        has_probes = batch.probe_vectors is not None and len(batch.probe_vectors) > 0
        return Want(
            forces=True,
            stress="stress" in needs and batch.stress is not None,
            hessian_rows="hessian_rows" in needs and has_rows,
            probe_products="probe_products" in needs and has_probes,
            features="features" in needs,
            conservative_forces="conservative_forces" in needs,
            differentiable=True,
        )

    @property
    def needs_hessian(self) -> bool:
        return any(t.weight > 0 and "hessian_rows" in t.needs for t in self.terms)

    def parameters(self):
        """Trainable parameters of the terms themselves (the n2n projection)."""
        return [p for t in self.terms if isinstance(t, torch.nn.Module) for p in t.parameters()]

    def contributions(self, out: Outputs, batch: AtomicGraph) -> dict[str, tuple[Tensor, int]]:
        return {t.name: t.contribution(out, batch) for t in self.terms}

    def __call__(
        self, out: Outputs, batch: AtomicGraph, global_counts: dict | None = None, world: int = 1
    ) -> tuple[Tensor, dict[str, float]]:
        values = {}
        for name, (total, count) in self.contributions(out, batch).items():
            count = count if global_counts is None else global_counts[name] / world
            values[name] = total / count if count else total
        loss = sum(t.weight * values[t.name] for t in self.terms)
        return loss, {name: float(v.detach()) for name, v in values.items()}

    def term(self, name: str):
        return next(t for t in self.terms if t.name == name)


def hessian_scale(forces: Sequence[np.ndarray], items: Sequence[np.ndarray]) -> dict[str, float]:
    """The factor that makes the Hessian term dimensionless against the force term, from teacher labels.

    ``forces``: each frame's (N, 3) force labels; ``items``: each frame's (k, N, 3) Hessian rows and/or H·v
    products. σ_F = mean over atoms of ||F_i|| is the force term of a student that predicts zero forces;
    σ_H = Σ_b [mean over b's items of Σ_atoms ||H[r]_atom||] / Σ_b N_b is the Hessian term of a student that
    predicts a zero Hessian. factor = σ_F / σ_H (Å)."""
    norms = np.concatenate([np.linalg.norm(f, axis=-1) for f in forces])
    sigma_f = float(norms.mean())
    per_frame = [np.linalg.norm(k, axis=-1).sum(axis=-1).mean() for k in items if len(k)]
    atoms = sum(k.shape[1] for k in items if len(k))
    sigma_h = float(np.sum(per_frame) / atoms) if atoms else 0.0
    factor = sigma_f / sigma_h if sigma_h > 0 and sigma_f > 0 else 1.0
    return {"force_scale_eV_per_A": sigma_f, "hessian_scale_eV_per_A2": sigma_h, "factor_A": factor}


def build_loss(
    energy: float,
    forces: float,
    hessian: float,
    consistency: float = 0.0,
    n2n: float = 0.0,
    channels: tuple[int, int] | None = None,
    hessian_factor: float = 1.0,
    stress: float = 0.0,
) -> DistillationLoss:
    """The paper's terms; ``consistency`` for direct-force students, ``n2n`` with (student, teacher) feature sizes;
    ``hessian_factor`` the Hessian term's ``scale``."""
    terms = [EnergyTerm(energy), ForceTerm(forces), HessianTerm(hessian, hessian_factor)]
    if stress:
        terms.append(StressTerm(stress))
    if consistency:
        terms.append(ConsistencyTerm(consistency))
    if n2n:
        if channels is None:
            raise ValueError("the n2n term needs the student's and the teacher's feature sizes")
        terms.append(NodeFeatureTerm(n2n, *channels))
    return DistillationLoss(terms)
