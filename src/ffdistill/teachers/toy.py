"""Cheap analytic teachers in torch, with exact autograd Hessians: for tests and tutorials."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ffdistill.graph import AtomicGraph, edge_vectors
from ffdistill.potential import Capabilities, Potential, Raw, Want
from ffdistill.teachers.base import Teacher


class MorsePotential(nn.Module, Potential):
    """Smooth Morse pair potential, energy-only: E = 1/2 sum_ij D (1 - exp(-a (r - r0)))^2 f_c(r).
    ``forward`` gives (B,) energies; ``predict`` everything else, as for any potential."""

    capabilities = Capabilities(forces="conservative", second_derivatives="autograd", stress=True)

    def __init__(self, D: float = 1.0, a: float = 1.5, r0: float = 2.35, cutoff: float = 5.0):
        super().__init__()
        self.D, self.a, self.r0, self.cutoff = D, a, r0, cutoff

    def compute(self, graph: AtomicGraph, want: Want) -> Raw:
        return Raw(self(graph))

    def forward(self, graph: AtomicGraph) -> Tensor:
        atom_energy = self.atomic_energies(graph)
        return atom_energy.new_zeros(graph.n_structures).index_add(0, graph.batch, atom_energy)

    def atomic_energies(self, graph: AtomicGraph) -> Tensor:
        r = edge_vectors(graph).norm(dim=-1)
        pair = self.D * (1 - torch.exp(-self.a * (r - self.r0))) ** 2 - self.D
        smooth = 0.5 * (torch.cos(torch.pi * r / self.cutoff) + 1) * (r < self.cutoff)
        per_edge = 0.5 * pair * smooth  # each pair appears twice in a full list
        return torch.zeros_like(graph.R[:, 0]).index_add(0, graph.edge_index[0], per_edge)


class TorchModelTeacher(Teacher):
    """Any energy-only torch module on ``AtomicGraph`` as a teacher (spec ``morse`` for the toy potential)."""

    def __init__(self, model: nn.Module, spec: str, cutoff: float, version: str = "ffdistill", dtype=torch.float64):
        self.model, self.spec, self.cutoff, self.version, self.dtype = model, spec, cutoff, version, dtype

    def energy(self, graph: AtomicGraph) -> Tensor:
        return self.model(graph)

    def node_features(self, graph: AtomicGraph) -> Tensor:
        """(N, 2): each atom's Morse energy and its neighbour count (stand-ins for learned features)."""
        with torch.no_grad():
            count = torch.zeros_like(graph.R[:, 0]).index_add(
                0, graph.edge_index[0], torch.ones_like(graph.edge_index[0], dtype=graph.R.dtype)
            )
            return torch.stack([self.model.atomic_energies(graph), count], dim=1)

    def element_embeddings(self) -> dict:
        """A fixed vector per element (plumbing for the a2a baseline, not learned)."""
        import numpy as np

        return {z: np.array([1.0, z / 10, (z / 10) ** 2, np.sin(z)]) for z in range(1, 95)}


def morse_teacher() -> TorchModelTeacher:
    return TorchModelTeacher(MorsePotential(), spec="morse", cutoff=5.0)


class CurlTeacher(Teacher):
    """A deliberately non-conservative teacher: Morse forces plus a rotational field c (z x (r - r0)),
    which no energy produces. Its NVE runs gain energy; a conservative student trained on it cannot."""

    has_autograd = False
    capabilities = Capabilities(forces="direct", second_derivatives="central-difference", stress=False)
    dtype = torch.float64
    spec, version, cutoff = "curl", "ffdistill", 5.0

    def __init__(self, strength: float = 0.3):
        self.morse, self.strength = MorsePotential(), strength

    def energy_forces_stress(self, graph: AtomicGraph, stress: bool):
        pred = self.morse.predict(graph, Want(stress=stress))
        offset = graph.R - graph.R.mean(dim=0)
        curl = self.strength * torch.stack([-offset[:, 1], offset[:, 0], torch.zeros_like(offset[:, 0])], dim=1)
        return pred.energy.sum(), pred.forces + curl, None if pred.stress is None else pred.stress[0]
