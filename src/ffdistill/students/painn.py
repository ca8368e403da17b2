"""PaiNN (Schütt, Unke, Gastegger, ICML 2021): a small equivariant message-passing student.

Energy only. Forces, stress and Hessian rows come from ``ffdistill.derivatives``, so the student is
conservative by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ffdistill.graph import AtomicGraph, edge_vectors
from ffdistill.potential import Capabilities, Raw, Want
from ffdistill.students.base import EnergyStudent


class BesselBasis(nn.Module):
    """sin(n pi r / rc) / r, n = 1..n_basis: a smooth radial basis with trainable frequencies."""

    def __init__(self, cutoff: float, n_basis: int):
        super().__init__()
        self.cutoff = cutoff
        self.freq = nn.Parameter(torch.arange(1, n_basis + 1, dtype=torch.float32) * math.pi / cutoff)

    def forward(self, r: Tensor) -> Tensor:
        return torch.sin(self.freq * r[:, None]) / r[:, None]


def cosine_cutoff(r: Tensor, cutoff: float) -> Tensor:
    return 0.5 * (torch.cos(math.pi * r / cutoff) + 1.0) * (r < cutoff)


class Message(nn.Module):
    def __init__(self, F: int, n_basis: int):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(F, F), nn.SiLU(), nn.Linear(F, 3 * F))
        self.filter = nn.Linear(n_basis, 3 * F)

    def forward(self, s: Tensor, v: Tensor, edges: Tensor, rbf_fc: Tensor, unit: Tensor, first: bool = False):
        """``rbf_fc``: (E, n_basis + 1) = [rbf · fc, fc], so that one matrix product gives the filter times the
        cutoff, (W rbf + b) · fc, without a separate per-edge product. ``first``: v is zero (no vector features
        yet), so its term is skipped. Per-edge tensors dominate the cost (memory traffic, not arithmetic): each
        one avoided is worth more than any flop."""
        i, j = edges
        weight = torch.cat([self.filter.weight, self.filter.bias[:, None]], dim=1)
        x = self.phi(s)[j] * nn.functional.linear(rbf_fc, weight)
        x_s, x_vv, x_vs = (part.contiguous() for part in x.chunk(3, dim=-1))
        dv = unit[:, :, None] * x_vs[:, None, :]
        if not first:
            dv = dv + v[j] * x_vv[:, None, :]  # not addcmul: its backward multiplies by its scale, 1, too
        ds_total = torch.zeros_like(s).index_add(0, i, x_s)
        dv_total = torch.zeros_like(v).index_add(0, i, dv)
        return s + ds_total, v + dv_total


class Update(nn.Module):
    def __init__(self, F: int):
        super().__init__()
        self.U = nn.Linear(F, F, bias=False)
        self.V = nn.Linear(F, F, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * F, F), nn.SiLU(), nn.Linear(F, 3 * F))

    def forward(self, s: Tensor, v: Tensor):
        Uv, Vv = self.U(v), self.V(v)
        # A plain norm has unbounded curvature at v = 0, where vector features vanish by symmetry (perfect
        # crystals): with a tiny epsilon the Hessian there explodes. 1e-2 keeps it smooth.
        Vv_norm = torch.sqrt((Vv**2).sum(dim=1) + 1e-2)
        a_vv, a_sv, a_ss = self.mlp(torch.cat([s, Vv_norm], dim=-1)).chunk(3, dim=-1)
        return s + a_ss + a_sv * (Uv * Vv).sum(dim=1), v + a_vv[:, None, :] * Uv


class PaiNN(EnergyStudent):
    """PaiNN with ``layers`` interaction blocks of ``channels`` features and a per-atom energy read-out."""

    arch = "painn"

    def __init__(
        self,
        elements: Sequence[int],
        channels: int = 32,
        layers: int = 2,
        n_basis: int = 16,
        cutoff: float = 5.0,
        teacher_embedding_dim: int = 0,
    ):
        super().__init__(elements=elements, cutoff=cutoff)
        self.hparams = {"channels": channels, "layers": layers, "n_basis": n_basis}
        self.make_embedding(channels, teacher_embedding_dim)
        self.rbf = BesselBasis(cutoff, n_basis)
        self.messages = nn.ModuleList(Message(channels, n_basis) for _ in range(layers))
        self.updates = nn.ModuleList(Update(channels) for _ in range(layers))
        self.readout = self.make_readout(channels)

    def node_features(self, graph: AtomicGraph) -> Tensor:
        """(N, channels) scalar features after the last interaction block."""
        return self.scalar_and_vector_features(graph)[0]

    def scalar_and_vector_features(self, graph: AtomicGraph) -> tuple[Tensor, Tensor]:
        """(N, channels) scalars and (N, 3, channels) vectors after the last interaction block."""
        vec = edge_vectors(graph)
        r = vec.norm(dim=-1)
        unit, fc = vec / r[:, None], cosine_cutoff(r, self.cutoff)[:, None]
        rbf_fc = torch.cat([self.rbf(r) * fc, fc], dim=1)  # shared by every layer's filter
        s = self.embed(graph.Z)
        v = s.new_zeros(s.shape[0], 3, s.shape[1])
        for k, (message, update) in enumerate(zip(self.messages, self.updates)):
            s, v = message(s, v, graph.edge_index, rbf_fc, unit, first=k == 0)
            s, v = update(s, v)
        return s, v


class DirectForcePaiNN(PaiNN):
    """PaiNN with a force head: F_i = W v_i, a linear map of the vector features (equivariant,
    not conservative). The energy head is kept for energies and the optional consistency term.

    Its second derivatives are the force head's Jacobian columns, by two VJPs (``autograd``) or by
    forward differences of the force head (``forward-difference``, step ``fd_step``): see
    ``EnergyStudent.set_jacobian``."""

    arch = "painn-direct"
    capabilities = Capabilities(forces="direct", second_derivatives="autograd", stress=False, features=True)

    def __init__(
        self,
        elements: Sequence[int],
        channels: int = 32,
        layers: int = 2,
        n_basis: int = 16,
        cutoff: float = 5.0,
        teacher_embedding_dim: int = 0,
    ):
        super().__init__(elements, channels, layers, n_basis, cutoff, teacher_embedding_dim)
        self.force_head = nn.Linear(channels, 1, bias=False)

    def compute(self, graph: AtomicGraph, want: Want) -> Raw:
        """(B,) energies, (N, 3) direct forces (eV/Å) and (N, channels) features, in one pass."""
        s, v = self.scalar_and_vector_features(graph)
        forces = self.energy_scale * self.force_head(v).squeeze(-1)
        return Raw(self.energy_from_features(graph, s), forces=forces, features=s)
