"""SchNet (Schütt et al., 2017): invariant continuous-filter convolutions.

Chosen as the second family for speed: scalar features only, so a step is a few dense layers and
one gather-scatter per block, cheap on CPUs and trivially batched on GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ffdistill.graph import AtomicGraph, edge_vectors
from ffdistill.students.base import EnergyStudent
from ffdistill.students.painn import cosine_cutoff


class GaussianBasis(nn.Module):
    def __init__(self, cutoff: float, n_basis: int):
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.0, cutoff, n_basis))
        self.width = cutoff / n_basis

    def forward(self, r: Tensor) -> Tensor:
        return torch.exp(-0.5 * ((r[:, None] - self.centres) / self.width) ** 2)


class Interaction(nn.Module):
    def __init__(self, F: int, n_basis: int):
        super().__init__()
        self.filter = nn.Sequential(nn.Linear(n_basis, F), nn.SiLU(), nn.Linear(F, F))
        self.inp = nn.Linear(F, F, bias=False)
        self.out = nn.Sequential(nn.Linear(F, F), nn.SiLU(), nn.Linear(F, F))

    def forward(self, x: Tensor, edges: Tensor, rbf: Tensor, fc: Tensor) -> Tensor:
        i, j = edges
        messages = self.inp(x)[j] * self.filter(rbf) * fc[:, None]
        return x + self.out(torch.zeros_like(x).index_add(0, i, messages))


class SchNet(EnergyStudent):
    arch = "schnet"

    def __init__(
        self,
        elements: Sequence[int],
        channels: int = 32,
        layers: int = 3,
        n_basis: int = 20,
        cutoff: float = 5.0,
        teacher_embedding_dim: int = 0,
    ):
        super().__init__(elements=elements, cutoff=cutoff)
        self.hparams = {"channels": channels, "layers": layers, "n_basis": n_basis}
        self.make_embedding(channels, teacher_embedding_dim)
        self.rbf = GaussianBasis(cutoff, n_basis)
        self.interactions = nn.ModuleList(Interaction(channels, n_basis) for _ in range(layers))
        self.readout = self.make_readout(channels)

    def node_features(self, graph: AtomicGraph) -> Tensor:
        r = edge_vectors(graph).norm(dim=-1)
        rbf, fc = self.rbf(r), cosine_cutoff(r, self.cutoff)
        x = self.embed(graph.Z)
        for block in self.interactions:
            x = block(x, graph.edge_index, rbf, fc)
        return x
