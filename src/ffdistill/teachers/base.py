"""One interface for every teacher: energy, forces, optional stress and Hessian rows for a structure."""

from __future__ import annotations

from abc import ABC
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import ase
import numpy as np
import torch
from torch import Tensor

from ffdistill.errors import TeacherError
from ffdistill.graph import AtomicGraph, batch_graphs, from_ase, structure
from ffdistill.potential import Capabilities, Potential, Raw, Want

#: Teacher outputs beyond these are treated as a broken model or structure, not physics.
MAX_ABS_FORCE = 1e3  # eV/Å
MAX_ABS_ENERGY_PER_ATOM = 1e4  # eV


@dataclass(frozen=True)
class TeacherLabels:
    """Labels for one structure of N atoms, as float64 numpy arrays in eV and Å."""

    energy: float
    forces: np.ndarray  #: (N, 3) eV/Å
    stress: np.ndarray | None  #: (3, 3) eV/Å³, None when not periodic
    hessian_rows: np.ndarray  #: (K, N, 3) eV/Å², K may be 0
    row_index: np.ndarray  #: (K,) flat coordinate indices
    probe_vectors: np.ndarray | None = None  #: (P, N, 3) probe directions v
    probe_products: np.ndarray | None = None  #: (P, N, 3) H·v, eV/Å²


class Teacher(Potential, ABC):
    """A foundation model seen through one interface.

    Subclasses set ``spec`` (how the CLI names it), ``version`` and ``elements`` (atomic numbers it
    covers, or None for any), and implement either ``energy`` (autograd teachers) or
    ``energy_forces_stress`` (``has_autograd = False``: rows and products by central differences).
    Everything else goes through the potential contract (``predict``).
    """

    spec: str
    version: str
    elements: frozenset[int] | None = None
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

    #: Where the teacher computes (``to_device``); its graphs are built there.
    device: torch.device = torch.device("cpu")
    #: Why the teacher computes on the CPU whatever the device (None: it moves, see ``to_device``).
    cpu_only: str | None = None

    def to_device(self, device: torch.device | str) -> Teacher:
        """Compute on ``device`` from now on (its model moved there); a teacher that cannot move stays on
        the CPU and says so in one line, so a GPU run never fails for the teacher's sake."""
        device = torch.device(device)
        if self.cpu_only is not None:
            if device.type != "cpu":
                from ffdistill.devices import notice

                notice(f"teacher {self.spec} runs on the CPU ({self.cpu_only}); {device} is used for everything else")
            return self
        model = getattr(self, "model", None)
        if isinstance(model, torch.nn.Module):
            model.to(device)
        self.device = device
        return self

    def graph(self, atoms: ase.Atoms) -> AtomicGraph:
        """The teacher's graph of ``atoms``, on the teacher's device."""
        return from_ase(atoms, self.cutoff, dtype=self.dtype, labels=False).to(self.device)

    def label(self, atoms: ase.Atoms, rows: Sequence[int] = (), probes: np.ndarray | None = None) -> TeacherLabels:
        """Energy, forces, stress (periodic cells), the Hessian rows ``rows`` and the products H·v with
        the (P, N, 3) ``probes`` of one structure."""
        return self._label_together([atoms], [rows], [probes])[0]

    def label_batch(
        self,
        atoms_list: Sequence[ase.Atoms],
        rows_list: Sequence | None = None,
        probes_list: Sequence[np.ndarray | None] | None = None,
    ) -> list[TeacherLabels]:
        """``label`` of several structures in one ``predict`` call on their disjoint graph: one forward and
        backward pass, and each structure's k-th Hessian row (or probe) in one shared VJP, instead of one
        call per structure. Equal to labelling frame by frame (structures do not interact). A teacher
        that labels in its own way (its own ``label``: ASE calculators, workers) labels frame by frame."""
        n = len(atoms_list)
        if n == 0:
            return []
        rows_list = [()] * n if rows_list is None else list(rows_list)
        probes_list = [None] * n if probes_list is None else list(probes_list)
        if type(self).label is not Teacher.label:
            return [self.label(a, r, p) for a, r, p in zip(atoms_list, rows_list, probes_list)]
        return self._label_together(list(atoms_list), rows_list, probes_list)

    def _label_together(self, atoms_list: list, rows_list: list, probes_list: list) -> list[TeacherLabels]:
        """The one labelling path, for one frame or many, so ``label`` and ``label_batch`` cannot drift apart.
        Stress is asked for the batch when any frame is periodic (open ones get none, as alone)."""
        for atoms in atoms_list:
            self.check_elements(atoms.numbers)
        host = [from_ase(a, self.cutoff, dtype=self.dtype, labels=False) for a in atoms_list]
        graph, spans = _request_graph(host, rows_list, probes_list, self.device)
        periodic = [bool(np.all(a.pbc)) for a in atoms_list]
        want = Want(
            stress=any(periodic), hessian_rows=len(graph.row_index) > 0, probe_products=len(graph.probe_vectors) > 0
        )
        out = self.predict(graph, want)
        labels = [
            _frame_labels(out, b, span, rows_list[b], probes_list[b], periodic[b]) for b, span in enumerate(spans)
        ]
        for one, atoms in zip(labels, atoms_list):
            validate_labels(one, self.spec, len(atoms))
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
        # results may come from numpy (a calculator): they join the graph on its device and dtype
        like = {"dtype": graph.R.dtype, "device": graph.R.device}
        stresses = [None if p[2] is None else torch.as_tensor(p[2], **like) for p in parts]
        stress = None if any(x is None for x in stresses) else torch.stack(stresses)
        return Raw(
            energy=torch.stack([torch.as_tensor(p[0], **like).reshape(()) for p in parts]),
            forces=torch.cat([torch.as_tensor(p[1], **like) for p in parts]),
            stress=stress,
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

    def node_features(self, graph: AtomicGraph) -> Tensor | None:
        """(N, D) per-atom features for feature-distillation baselines, when the teacher exposes them."""
        return None

    def element_embeddings(self) -> dict[int, np.ndarray] | None:
        """Atomic number -> the teacher's learned element embedding (a2a baseline), when it has one."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, version={self.version!r})"


def _np(x) -> np.ndarray:
    """A result copied to the host as float64 numpy: the labelling I/O boundary."""
    return x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)


def _request_graph(graphs: list[AtomicGraph], rows_list: list, probes_list: list, device):
    """One disjoint graph of the host ``graphs`` on ``device``, with the Hessian rows (flat indices offset by
    3 x each structure's first atom) and probe vectors (zero outside their own structure, ``probe_owner``
    saying whose) asked of each: batched on the host, moved once. Also each structure's span (atoms, rows,
    probes) as host integers, so reading the results back needs no device round trip."""
    starts = np.concatenate([[0], np.cumsum([g.n_atoms for g in graphs])]).astype(int)
    row_starts = np.concatenate([[0], np.cumsum([len(r) for r in rows_list])]).astype(int)
    counts = [0 if p is None else len(p) for p in probes_list]
    probe_starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    graph = (batch_graphs(graphs) if len(graphs) > 1 else graphs[0]).to(device)
    rows = np.concatenate([np.asarray(r, dtype=np.int64) + 3 * s for r, s in zip(rows_list, starts)])
    vectors = torch.zeros(sum(counts), graph.n_atoms, 3, dtype=graph.R.dtype, device=device)
    for p, lo, hi, k in zip(probes_list, starts, starts[1:], probe_starts):
        if p is not None and len(p):
            vectors[k : k + len(p), lo:hi] = torch.as_tensor(np.asarray(p), dtype=graph.R.dtype, device=device)
    graph = graph._replace(
        row_index=torch.as_tensor(rows, device=device),
        probe_vectors=vectors,
        probe_owner=torch.as_tensor(np.repeat(np.arange(len(graphs)), counts), device=device),
    )
    spans = [_Span(*x) for x in zip(starts, starts[1:], row_starts, row_starts[1:], probe_starts, probe_starts[1:])]
    return graph, spans


class _Span(NamedTuple):
    """Where one structure's atoms, rows and probes sit in a batched request (host integers)."""

    lo: int
    hi: int
    r0: int
    r1: int
    p0: int
    p1: int


def _frame_labels(out, b: int, span: _Span, rows, probes, periodic: bool) -> TeacherLabels:
    """Structure ``b``'s labels out of a batched prediction: its atoms, its rows, its probes."""
    atoms = slice(span.lo, span.hi)
    n = span.hi - span.lo
    hess = np.zeros((0, n, 3)) if out.hessian_rows is None else _np(out.hessian_rows[span.r0 : span.r1, atoms])
    hv = np.zeros((0, n, 3)) if out.probe_products is None else _np(out.probe_products[span.p0 : span.p1, atoms])
    rows = np.asarray(rows, dtype=np.int64)
    return TeacherLabels(
        energy=float(out.energy[b]),
        forces=_np(out.forces[atoms]),
        stress=None if out.stress is None or not periodic else _np(out.stress[b]),
        hessian_rows=hess.reshape(len(rows), n, 3),
        row_index=rows,
        probe_vectors=None if probes is None else np.asarray(probes, dtype=np.float64),
        probe_products=None if probes is None else hv.reshape(len(probes), n, 3),
    )


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
