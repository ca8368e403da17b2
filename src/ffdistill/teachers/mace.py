"""MACE teachers from a local model file (mace-torch is an optional extra: it pins e3nn 0.4.4)."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ffdistill.errors import TeacherError
from ffdistill.graph import AtomicGraph
from ffdistill.teachers.base import Teacher


class MACETeacher(Teacher):
    """A MACE model (``torch.save``-d nn.Module) evaluated energy-only; derivatives come from ffdistill."""

    def __init__(self, model: torch.nn.Module, spec: str = "mace", version: str = "unknown"):
        self.model = model.double().eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dtype = torch.float64
        self.spec, self.version = spec, version
        self.atomic_numbers = [int(z) for z in model.atomic_numbers]
        self.elements = frozenset(self.atomic_numbers)
        self.cutoff = float(model.r_max)

    @classmethod
    def from_path(cls, path: str, trust: bool = False) -> MACETeacher:
        try:
            import mace
        except ImportError as error:
            raise TeacherError(
                "MACE teachers need mace-torch: install it in an environment of its own (it pins e3nn 0.4.4) and pass"
                " that environment's python with --teacher-python (README: Teachers in their own environment)"
            ) from error
        if not os.path.isfile(path):
            raise TeacherError(f"MACE model file not found: {path}")
        if not trust:
            raise TeacherError(
                f"{path} is a pickled model that can run code when loaded; pass --trust-teacher if you trust it"
            )
        model = torch.load(path, map_location="cpu", weights_only=False)
        return cls(model, spec=f"mace:{path}", version=f"mace-torch {getattr(mace, '__version__', 'unknown')}")

    def _inputs(self, graph: AtomicGraph) -> dict:
        index = {z: k for k, z in enumerate(self.atomic_numbers)}
        device = graph.R.device
        node_attrs = torch.zeros(graph.n_atoms, len(index), dtype=graph.R.dtype, device=device)
        species = torch.tensor([index[int(z)] for z in graph.Z.tolist()], device=device)
        node_attrs[torch.arange(graph.n_atoms, device=device), species] = 1.0
        i = graph.edge_index[0]
        return {
            "positions": graph.R,
            "node_attrs": node_attrs,
            # MACE's edge_index is (sender, receiver) with vectors R[receiver] - R[sender] + shifts
            "edge_index": graph.edge_index,
            "shifts": torch.einsum("ek,ekl->el", graph.shifts, graph.cell[graph.batch[i]]),
            "unit_shifts": graph.shifts,
            "cell": graph.cell.reshape(-1, 3),
            "batch": graph.batch,
            "ptr": graph.ptr,
            "weight": torch.ones(graph.n_structures, dtype=graph.R.dtype, device=device),
            "head": torch.zeros(graph.n_structures, dtype=torch.long, device=device),
        }

    def energy(self, graph: AtomicGraph) -> Tensor:
        out = self.model(self._inputs(graph), compute_force=False, compute_stress=False, training=True)
        return out["energy"]
