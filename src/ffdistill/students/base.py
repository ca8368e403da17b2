"""What every student is: an energy-only module on ``AtomicGraph`` with per-element references."""

from __future__ import annotations

from typing import Sequence

import ase.data
import numpy as np
import torch
from torch import Tensor, nn

from ffdistill.errors import InputError
from ffdistill.graph import AtomicGraph


class EnergyStudent(nn.Module):
    """E = sum_atoms (scale * e_theta(atom) + e_ref[Z]) with e_ref fitted to the training energies.

    Subclasses implement ``atomic_energies(graph) -> (N,)`` and may expose ``node_features``.
    """

    arch: str = "base"

    def __init__(self, elements: Sequence[int], cutoff: float):
        super().__init__()
        self.elements = sorted(int(z) for z in set(elements))
        self.cutoff = float(cutoff)
        self.hparams: dict = {}
        lookup = torch.full((119,), -1, dtype=torch.long)
        lookup[torch.tensor(self.elements)] = torch.arange(len(self.elements))
        self.register_buffer("z_to_species", lookup, persistent=False)
        self.register_buffer("energy_ref", torch.zeros(len(self.elements)))
        self.register_buffer("energy_scale", torch.ones(()))

    def species(self, Z: Tensor) -> Tensor:
        return self.z_to_species[Z]

    def check_elements(self, numbers) -> None:
        unknown = sorted(set(int(z) for z in numbers) - set(self.elements))
        if unknown:
            known = " ".join(ase.data.chemical_symbols[z] for z in self.elements)
            raise InputError(f"the student was not trained on {' '.join(ase.data.chemical_symbols[z] for z in unknown)} (knows {known})")

    def atomic_energies(self, graph: AtomicGraph) -> Tensor:
        raise NotImplementedError

    def forward(self, graph: AtomicGraph) -> Tensor:
        """(B,) total energies in eV."""
        per_atom = self.energy_scale * self.atomic_energies(graph) + self.energy_ref[self.species(graph.Z)]
        return per_atom.new_zeros(graph.n_structures).index_add(0, graph.batch, per_atom)

    @torch.no_grad()
    def fit_references(self, graphs: Sequence[AtomicGraph]) -> None:
        """Per-element energies by least squares on the labels; scale from the force spread."""
        counts = np.array([[int((g.Z == z).sum()) for z in self.elements] for g in graphs], dtype=np.float64)
        energies = np.array([float(g.energy.sum()) for g in graphs])
        ref, *_ = np.linalg.lstsq(counts, energies, rcond=None)
        self.energy_ref.copy_(torch.as_tensor(ref))
        forces = torch.cat([g.forces for g in graphs])
        self.energy_scale.fill_(float(forces.pow(2).mean().sqrt().clamp_min(1e-2)))

    def constructor_args(self) -> dict:
        return {"elements": self.elements, "cutoff": self.cutoff, **self.hparams}

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
