"""One interface for every teacher: energy, forces, optional stress and Hessian rows for a structure."""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from typing import Optional, Sequence

import ase
import numpy as np
import torch
from torch import Tensor

from ffdistill.errors import TeacherError
from ffdistill.graph import AtomicGraph, from_ase, structure
from ffdistill.potential import Capabilities, Potential, Raw, Want

#: Teacher outputs beyond these are treated as a broken model or structure, not physics.
MAX_ABS_FORCE = 1e3  # eV/Å
MAX_ABS_ENERGY_PER_ATOM = 1e4  # eV


@dataclass(frozen=True)
class TeacherLabels:
    """Labels for one structure of N atoms, as float64 numpy arrays in eV and Å."""

    energy: float
    forces: np.ndarray  #: (N, 3) eV/Å
    stress: Optional[np.ndarray]  #: (3, 3) eV/Å³, None when not periodic
    hessian_rows: np.ndarray  #: (K, N, 3) eV/Å², K may be 0
    row_index: np.ndarray  #: (K,) flat coordinate indices
    probe_vectors: Optional[np.ndarray] = None  #: (P, N, 3) probe directions v
    probe_products: Optional[np.ndarray] = None  #: (P, N, 3) H·v, eV/Å²


class Teacher(Potential, ABC):
    """A foundation model seen through one interface.

    Subclasses set ``spec`` (how the CLI names it), ``version`` and ``elements`` (atomic numbers it
    covers, or None for any), and implement either ``energy`` (autograd teachers) or
    ``energy_forces_stress`` (``has_autograd = False``: rows and products by central differences).
    Everything else goes through the potential contract (``predict``).
    """

    spec: str
    version: str
    elements: Optional[frozenset[int]] = None
    #: Radius of the graph the teacher is evaluated on (Å).
    cutoff: float = 5.0
    #: Hessian rows by autograd (True) or by central differences of forces (False).
    has_autograd: bool = True
    #: Compute a frame's Hessian rows in one vmapped call (True) or one by one. vmap pays on GPUs;
    #: for some models on CPU the loop is faster (see benchmarks/hessian_labelling.py).
    vectorize_rows: bool = True

    def check_elements(self, numbers: Sequence[int]) -> None:
        if self.elements is None:
            return
        missing = sorted(set(int(z) for z in numbers) - self.elements)
        if missing:
            symbols = ", ".join(ase.data.chemical_symbols[z] for z in missing)
            raise TeacherError(f"teacher {self.spec} does not cover element(s) {symbols}")

    #: Floating dtype the teacher computes in.
    dtype: torch.dtype = torch.float32

    def graph(self, atoms: ase.Atoms) -> AtomicGraph:
        return from_ase(atoms, self.cutoff, dtype=self.dtype, labels=False)

    def label(self, atoms: ase.Atoms, rows: Sequence[int] = (), probes: Optional[np.ndarray] = None) -> TeacherLabels:
        """Energy, forces, stress (periodic cells), the Hessian rows ``rows`` and the products H·v with
        the (P, N, 3) ``probes`` of one structure."""
        self.check_elements(atoms.numbers)
        graph = self.graph(atoms)
        periodic = bool(np.all(atoms.pbc))
        vectors = np.zeros((0, len(atoms), 3)) if probes is None else probes
        graph = graph._replace(
            row_index=torch.as_tensor(rows, dtype=torch.long),
            probe_vectors=torch.as_tensor(vectors, dtype=self.dtype),
            probe_owner=torch.zeros(len(vectors), dtype=torch.long),
        )
        want = Want(stress=periodic, hessian_rows=len(rows) > 0, probe_products=len(vectors) > 0)
        out = self.predict(graph, want)
        stress = None if out.stress is None else out.stress[0]
        energy, forces, hess, hv = out.energy.sum(), out.forces, out.hessian_rows, out.probe_products
        hess = np.zeros((0, len(atoms), 3)) if hess is None else hess
        hv = np.zeros((0, len(atoms), 3)) if hv is None else hv
        labels = TeacherLabels(
            energy=float(energy),
            forces=_np(forces),
            stress=_np(stress) if periodic and stress is not None else None,
            hessian_rows=_np(hess).reshape(len(rows), len(atoms), 3),
            row_index=np.asarray(rows, dtype=np.int64),
            probe_vectors=None if probes is None else np.asarray(probes, dtype=np.float64),
            probe_products=None if probes is None else _np(hv).reshape(len(vectors), len(atoms), 3),
        )
        validate_labels(labels, self.spec, len(atoms))
        return labels

    @property
    def capabilities(self) -> Capabilities:
        features = type(self).node_features is not Teacher.node_features
        second = "autograd" if self.has_autograd else "central-difference"
        return Capabilities(forces="conservative", second_derivatives=second, stress=True, features=features)

    def compute(self, graph: AtomicGraph, want: Want) -> Raw:
        if self.has_autograd:
            return Raw(self.energy(graph), features=self.node_features(graph) if want.features else None)
        parts = [self.energy_forces_stress(structure(graph, b), want.stress) for b in range(graph.n_structures)]
        stress = [p[2] for p in parts]
        return Raw(
            energy=torch.stack([torch.as_tensor(p[0], dtype=graph.R.dtype).reshape(()) for p in parts]),
            forces=torch.cat([p[1] for p in parts]),
            stress=None if any(x is None for x in stress) else torch.stack(stress),
        )

    #: Central-difference step for Hessian rows of force-only teachers (Å).
    fd_step: float = 1e-3

    def energy(self, graph: AtomicGraph) -> Tensor:
        """(B,) energies, differentiable in positions and cell (autograd teachers)."""
        return self.compute(graph, Want(forces=False)).energy

    def energy_forces_stress(self, graph: AtomicGraph, stress: bool):
        """Energy, (N, 3) forces and (3, 3) stress or None (force-only teachers)."""
        raise NotImplementedError

    def as_calculator(self):
        """An ASE calculator for MD with the teacher (sampling, evaluation)."""
        from ffdistill.calculator import PotentialCalculator

        return PotentialCalculator(self, dtype=self.dtype)

    def node_features(self, graph: AtomicGraph) -> Optional[Tensor]:
        """(N, D) per-atom features for feature-distillation baselines, when the teacher exposes them."""
        return None

    def element_embeddings(self) -> Optional[dict[int, np.ndarray]]:
        """Atomic number -> the teacher's learned element embedding (a2a baseline), when it has one."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, version={self.version!r})"


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)


def validate_labels(labels: TeacherLabels, spec: str, n_atoms: int) -> None:
    """Refuse NaN/inf or absurd teacher outputs instead of writing them to a store."""
    arrays = {"energy": np.asarray(labels.energy), "forces": labels.forces, "hessian rows": labels.hessian_rows}
    if labels.probe_products is not None:
        arrays["Hessian-vector products"] = labels.probe_products
    if labels.stress is not None:
        arrays["stress"] = labels.stress
    for name, value in arrays.items():
        if not np.all(np.isfinite(value)):
            raise TeacherError(f"teacher {spec} returned non-finite {name}")
    if abs(labels.energy) / n_atoms > MAX_ABS_ENERGY_PER_ATOM:
        raise TeacherError(f"teacher {spec} returned an absurd energy ({labels.energy:.3g} eV for {n_atoms} atoms)")
    fmax = np.abs(labels.forces).max(initial=0.0)
    if fmax > MAX_ABS_FORCE:
        raise TeacherError(f"teacher {spec} returned an absurd force ({fmax:.3g} eV/Å)")
