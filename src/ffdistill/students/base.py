"""What every student is: an energy-only module on ``AtomicGraph`` with per-element references."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import ase.data
import numpy as np
import torch
from torch import Tensor, nn

from ffdistill.errors import InputError
from ffdistill.graph import AtomicGraph
from ffdistill.potential import Capabilities, Outputs, Potential, Raw, Want


class EnergyStudent(nn.Module, Potential):
    """E = sum_atoms (scale * readout(h_atom) + e_ref[Z]) with e_ref fitted to the training energies.

    Subclasses build ``self.embedding`` (an ``nn.Embedding`` over ``self.elements``) and implement
    ``node_features(graph) -> (N, channels)``; ``make_readout`` gives the shared energy read-out.
    The module's ``forward`` is ``predict`` (one call, so DistributedDataParallel sees every output).
    """

    capabilities = Capabilities(forces="conservative", second_derivatives="autograd", stress=True, features=True)
    arch: str = "base"
    #: forward-difference step (Å) when second derivatives are taken by ``fd`` (``set_jacobian``)
    fd_step: float = 1e-4

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

    def make_embedding(self, channels: int, teacher_embedding_dim: int = 0) -> None:
        """Per-element input features: a learned table, or (a2a baseline) the teacher's frozen element
        embeddings (a buffer, filled by ``set_teacher_embeddings``) through a learned linear map."""
        if teacher_embedding_dim:
            self.register_buffer("teacher_embeddings", torch.zeros(len(self.elements), teacher_embedding_dim))
            self.teacher_map = nn.Linear(teacher_embedding_dim, channels)
            self.hparams["teacher_embedding_dim"] = teacher_embedding_dim
        else:
            self.embedding = nn.Embedding(len(self.elements), channels)

    @torch.no_grad()
    def set_teacher_embeddings(self, table: Tensor) -> None:
        self.teacher_embeddings.copy_(table)

    def embed(self, Z: Tensor) -> Tensor:
        """(N, channels) input features of the atoms ``Z``, recomputed in every forward pass."""
        if "teacher_embeddings" in self._buffers:
            return self.teacher_map(self.teacher_embeddings)[self.species(Z)]
        return self.embedding(self.species(Z))

    def check_elements(self, numbers) -> None:
        unknown = sorted(set(int(z) for z in numbers) - set(self.elements))
        if unknown:
            known = " ".join(ase.data.chemical_symbols[z] for z in self.elements)
            raise InputError(
                f"the student was not trained on {' '.join(ase.data.chemical_symbols[z] for z in unknown)} "
                f"(knows {known})"
            )

    @staticmethod
    def make_readout(channels: int) -> nn.Module:
        readout = nn.Sequential(
            nn.Linear(channels, max(1, channels // 2)), nn.SiLU(), nn.Linear(max(1, channels // 2), 1)
        )
        # Start from E = sum of fitted element references: an untrained network adds nothing.
        nn.init.zeros_(readout[-1].weight)
        nn.init.zeros_(readout[-1].bias)
        return readout

    def node_features(self, graph: AtomicGraph) -> Tensor:
        raise NotImplementedError

    def energy_from_features(self, graph: AtomicGraph, features: Tensor) -> Tensor:
        per_atom = self.energy_scale * self.readout(features).squeeze(-1) + self.energy_ref[self.species(graph.Z)]
        return per_atom.new_zeros(graph.n_structures).index_add(0, graph.batch, per_atom)

    def compute(self, graph: AtomicGraph, want: Want) -> Raw:
        features = self.node_features(graph)
        return Raw(self.energy_from_features(graph, features), features=features)

    def forward(self, graph: AtomicGraph, want: Want = Want()) -> Outputs:
        return self.predict(graph, want)

    def set_jacobian(self, mode: str, fd_step: float = 1e-4) -> None:
        """Second derivatives (Hessian rows, H·v; a force head's Jacobian columns) by ``autograd`` (VJPs:
        a double backward when training) or ``fd`` (forward differences of the forces, step ``fd_step`` Å:
        one more force evaluation per wave of rows instead; see ``derivatives._forward_differences``)."""
        modes = {"autograd": "autograd", "fd": "forward-difference"}
        if mode not in modes:
            raise InputError(f"model.jacobian must be one of {', '.join(modes)}, got {mode!r}")
        self.capabilities = dataclasses.replace(self.capabilities, second_derivatives=modes[mode])
        self.fd_step = fd_step

    @torch.no_grad()
    def fit_references(self, graphs: Sequence[AtomicGraph]) -> None:
        """Per-element energies by least squares on the labels; scale from the force spread."""
        counts = np.array([[int((g.Z == z).sum()) for z in self.elements] for g in graphs], dtype=np.float64)
        energies = np.array([float(g.energy.sum()) for g in graphs])
        forces = torch.cat([g.forces for g in graphs])
        self.set_references(counts, energies, float(forces.pow(2).mean().sqrt()))

    @torch.no_grad()
    def set_references(self, counts: np.ndarray, energies: np.ndarray, force_rms: float) -> None:
        """``fit_references`` from statistics alone, (F, n_elements) element counts in ``self.elements``
        order, (F,) energies and the RMS force component, so training can take them from the label store's
        arrays without building a graph per frame (``data.reference_statistics``)."""
        ref, *_ = np.linalg.lstsq(counts, energies, rcond=None)
        self.energy_ref.copy_(torch.as_tensor(ref))
        self.energy_scale.fill_(max(float(force_rms), 1e-2))

    @torch.no_grad()
    def refit_references(self, graphs: Iterable[AtomicGraph]) -> None:
        """Shift the per-element energies by the least-squares fit of the current energy residuals.

        Forces and Hessians do not see a constant energy offset, yet fitting them moves every atom's
        read-out, and with it the total energy; the per-atom energy term alone pulls that drift back slowly.
        Solving the linear part exactly keeps the energy term for what depends on the configuration.
        ``graphs`` may be batches, read once (training streams them).
        """
        parts = [self.energy_residuals(graph) for graph in graphs]
        self.shift_references(np.concatenate([c for c, _ in parts]), np.concatenate([r for _, r in parts]))

    @torch.no_grad()
    def energy_residuals(self, graph: AtomicGraph) -> tuple[np.ndarray, np.ndarray]:
        """One batch's share of ``refit_references``: (B, n_elements) atoms of each element per structure and
        (B,) label minus predicted energies. Apart, so one pass over streamed frames can serve several models."""
        graph = graph.to(self.energy_ref.device)
        counts = torch.zeros(graph.n_structures, len(self.elements), dtype=torch.float64, device=graph.Z.device)
        ones = torch.ones_like(graph.Z, dtype=torch.float64)
        counts.index_put_((graph.batch, self.species(graph.Z)), ones, accumulate=True)
        residuals = (graph.energy - self.energy(graph)).detach().double()
        return counts.cpu().numpy(), residuals.cpu().numpy()

    @torch.no_grad()
    def shift_references(self, counts: np.ndarray, residuals: np.ndarray) -> None:
        """Add the least-squares per-element energies of ``residuals`` (see ``refit_references``)."""
        delta, *_ = np.linalg.lstsq(counts, residuals, rcond=None)
        self.energy_ref.add_(torch.as_tensor(delta, dtype=self.energy_ref.dtype, device=self.energy_ref.device))

    def constructor_args(self) -> dict:
        return {"elements": self.elements, "cutoff": self.cutoff, **self.hparams}

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def teacher_embedding_table(student: EnergyStudent, embeddings: dict) -> Tensor:
    """(n_elements, D) the teacher's embeddings of the student's elements, in the student's order."""
    missing = [z for z in student.elements if z not in embeddings]
    if missing:
        raise InputError(f"the teacher has no embedding for atomic numbers {missing}")
    return torch.stack([torch.as_tensor(np.asarray(embeddings[z]), dtype=torch.float32) for z in student.elements])
