"""Cheap analytic teachers in torch, with exact autograd Hessians: for tests and tutorials."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ffdistill.graph import AtomicGraph, edge_vectors
from ffdistill.teachers.base import Teacher


class MorsePotential(nn.Module):
    """Smooth Morse pair potential, energy-only: E = 1/2 sum_ij D (1 - exp(-a (r - r0)))^2 f_c(r)."""

    def __init__(self, D: float = 1.0, a: float = 1.5, r0: float = 2.35, cutoff: float = 5.0):
        super().__init__()
        self.D, self.a, self.r0, self.cutoff = D, a, r0, cutoff

    def forward(self, graph: AtomicGraph) -> Tensor:
        r = edge_vectors(graph).norm(dim=-1)
        pair = self.D * (1 - torch.exp(-self.a * (r - self.r0))) ** 2 - self.D
        smooth = 0.5 * (torch.cos(torch.pi * r / self.cutoff) + 1) * (r < self.cutoff)
        per_edge = 0.5 * pair * smooth  # each pair appears twice in a full list
        atom_energy = torch.zeros_like(graph.R[:, 0]).index_add(0, graph.edge_index[0], per_edge)
        return torch.zeros(graph.n_structures, dtype=r.dtype, device=r.device).index_add(0, graph.batch, atom_energy)


class TorchModelTeacher(Teacher):
    """Any energy-only torch module on ``AtomicGraph`` as a teacher (spec ``morse`` for the toy potential)."""

    def __init__(self, model: nn.Module, spec: str, cutoff: float, version: str = "ffdistill", dtype=torch.float64):
        self.model, self.spec, self.cutoff, self.version, self.dtype = model, spec, cutoff, version, dtype

    def energy(self, graph: AtomicGraph) -> Tensor:
        return self.model(graph)


def morse_teacher() -> TorchModelTeacher:
    return TorchModelTeacher(MorsePotential(), spec="morse", cutoff=5.0)
