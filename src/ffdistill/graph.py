"""The one structure type that flows from I/O to teacher to student to loss to calculator.

A single structure is a batch of one: every ``AtomicGraph`` carries ``batch`` and ``ptr``, so code
never branches on "single or batched". Labels are optional fields; Hessian-row labels are a dense
``(K, N, 3)`` block plus the flat row indices ``(K,)`` into the batch's ``3N`` coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import ase
import numpy as np
import torch
from torch import Tensor

from ffdistill.errors import InputError

#: Atoms closer than this (Å) are treated as a broken structure, not physics.
MIN_INTERATOMIC_DISTANCE = 0.5


class AtomicGraph(NamedTuple):
    """Atoms, their periodic cell and their radius graph; optionally, labels.

    N atoms, B structures, E directed edges, K Hessian rows.
    """

    Z: Tensor  #: (N,) int64 atomic numbers
    R: Tensor  #: (N, 3) positions, Å
    cell: Tensor  #: (B, 3, 3) cell vectors as rows, Å (zeros when not periodic)
    pbc: Tensor  #: (B, 3) bool periodicity
    edge_index: Tensor  #: (2, E) int64 (source i, neighbour j)
    shifts: Tensor  #: (E, 3) integer cell shifts S: R_j - R_i + S @ cell
    batch: Tensor  #: (N,) int64 structure index of each atom
    ptr: Tensor  #: (B + 1,) int64 first atom of each structure
    cutoff: float  #: radius of the graph, Å
    energy: Tensor | None = None  #: (B,) eV
    forces: Tensor | None = None  #: (N, 3) eV/Å
    stress: Tensor | None = None  #: (B, 3, 3) eV/Å³ (NaN when not periodic)
    hessian_rows: Tensor | None = None  #: (K, N, 3) rows of d2E/dR2, eV/Å²
    row_index: Tensor | None = None  #: (K,) flat index into the 3N coordinates
    node_features: Tensor | None = None  #: (N, D) teacher node features (n2n baseline)
    probe_vectors: Tensor | None = None  #: (P, N, 3) unit probe directions v, zero outside their structure
    probe_products: Tensor | None = None  #: (P, N, 3) teacher's H·v, eV/Å²
    probe_owner: Tensor | None = None  #: (P,) int64 structure index of each probe

    @property
    def n_atoms(self) -> int:
        return int(self.Z.shape[0])

    @property
    def n_structures(self) -> int:
        return int(self.ptr.shape[0] - 1)

    @property
    def atoms_per_structure(self) -> Tensor:
        return self.ptr[1:] - self.ptr[:-1]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> AtomicGraph:
        """Move tensors to ``device``; floating tensors also to ``dtype`` when given."""

        def move(x):
            if not isinstance(x, Tensor):
                return x
            if dtype is not None and x.is_floating_point():
                return x.to(device=device, dtype=dtype)
            return x.to(device)

        return AtomicGraph(*(move(x) for x in self))


def edge_vectors(graph: AtomicGraph, R: Tensor | None = None, cell: Tensor | None = None) -> Tensor:
    """Vectors from atom i to neighbour j, ``R_j - R_i + S @ cell`` (E, 3), differentiable in R and cell."""
    R = graph.R if R is None else R
    cell = graph.cell if cell is None else cell
    i, j = graph.edge_index
    offsets = torch.einsum("ek,ekl->el", graph.shifts, cell[graph.batch[i]])
    return R[j] - R[i] + offsets


def neighbour_list(atoms: ase.Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Full neighbour list (both directions) from vesin: edge_index (2, E) and integer shifts (E, 3); none for
    ``cutoff`` 0 (graphs for a model that never reads edges, such as an ASE calculator)."""
    if cutoff <= 0:
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64)
    from vesin import NeighborList

    pbc = np.asarray(atoms.pbc, dtype=bool)
    box = np.asarray(atoms.cell.array, dtype=np.float64)
    box = np.where(pbc[:, None], box, 0.0)  # vesin ignores the box along open directions
    nl = NeighborList(cutoff=cutoff, full_list=True)
    i, j, S = nl.compute(atoms.positions, box, pbc, quantities="ijS")
    order = np.lexsort((j, i))  # deterministic edge order makes results reproducible
    edge_index = np.stack([i[order], j[order]]).astype(np.int64)
    return edge_index, S[order].astype(np.int64)


def check_structure(atoms: ase.Atoms, min_distance: float = MIN_INTERATOMIC_DISTANCE) -> None:
    """Refuse structures no force field should see: empty, NaN, cell-less periodic, overlapping."""
    if len(atoms) == 0:
        raise InputError("structure has no atoms")
    if not np.all(np.isfinite(atoms.positions)):
        raise InputError("structure has non-finite positions")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any() and np.linalg.matrix_rank(atoms.cell.array[pbc], tol=1e-6) < pbc.sum():
        raise InputError("structure is periodic but has no cell along a periodic direction; set a cell or pbc=False")
    if len(atoms) > 1:
        from vesin import NeighborList

        box = np.where(pbc[:, None], atoms.cell.array, 0.0)
        d = NeighborList(cutoff=min_distance, full_list=False).compute(atoms.positions, box, pbc, quantities="d")[0]
        if len(d):
            raise InputError(f"atoms closer than {min_distance} Å (closest {d.min():.3f} Å): overlapping atoms")


def from_ase(atoms: ase.Atoms, cutoff: float, dtype: torch.dtype = torch.float32, labels: bool = True) -> AtomicGraph:
    """Build a one-structure graph; ASE single-point energy/forces/stress become labels when present."""
    edge_index, shifts = neighbour_list(atoms, cutoff)
    n = len(atoms)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.where(pbc[:, None], atoms.cell.array, 0.0)
    energy = forces = stress = None
    if labels and atoms.calc is not None:
        results = getattr(atoms.calc, "results", {})
        if "energy" in results:
            energy = torch.tensor([results["energy"]], dtype=dtype)
        if "forces" in results:
            forces = torch.as_tensor(np.asarray(results["forces"]), dtype=dtype)
        if "stress" in results and pbc.all():
            from ase.stress import voigt_6_to_full_3x3_stress

            stress = torch.as_tensor(voigt_6_to_full_3x3_stress(results["stress"]), dtype=dtype)[None]
    return AtomicGraph(
        Z=torch.as_tensor(atoms.numbers, dtype=torch.long),
        R=torch.as_tensor(atoms.positions, dtype=dtype),
        cell=torch.as_tensor(cell, dtype=dtype)[None],
        pbc=torch.as_tensor(pbc)[None],
        edge_index=torch.as_tensor(edge_index),
        shifts=torch.as_tensor(shifts, dtype=dtype),
        batch=torch.zeros(n, dtype=torch.long),
        ptr=torch.tensor([0, n], dtype=torch.long),
        cutoff=float(cutoff),
        energy=energy,
        forces=forces,
        stress=stress,
    )


def to_ase(graph: AtomicGraph) -> list[ase.Atoms]:
    """One ``ase.Atoms`` per structure (positions, numbers, cell, pbc; no labels)."""
    out = []
    for b in range(graph.n_structures):
        lo, hi = int(graph.ptr[b]), int(graph.ptr[b + 1])
        out.append(
            ase.Atoms(
                numbers=graph.Z[lo:hi].cpu().numpy(),
                positions=graph.R[lo:hi].detach().cpu().double().numpy(),
                cell=graph.cell[b].detach().cpu().double().numpy(),
                pbc=graph.pbc[b].cpu().numpy(),
            )
        )
    return out


def batch_graphs(graphs: Sequence[AtomicGraph]) -> AtomicGraph:
    """Concatenate graphs into one batch.

    Atom indices in ``edge_index`` and ``row_index`` are offset by each structure's first atom
    (rows by 3 per atom). Hessian-row blocks become ``(sum K, sum N, 3)`` with zeros outside their own
    structure: a structure's force Jacobian never reaches another's atoms, so those zeros are exact.
    """
    if not graphs:
        raise InputError("cannot batch an empty list of structures")
    counts = [g.n_atoms for g in graphs]
    starts = np.concatenate([[0], np.cumsum(counts)])
    device = graphs[0].Z.device  # index tensors made here live with the graphs (displaced copies on a GPU)
    edge_index = torch.cat([g.edge_index + int(s) for g, s in zip(graphs, starts)], dim=1)
    return AtomicGraph(
        Z=torch.cat([g.Z for g in graphs]),
        R=torch.cat([g.R for g in graphs]),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
        edge_index=edge_index,
        shifts=torch.cat([g.shifts for g in graphs]),
        batch=torch.as_tensor(np.repeat(np.arange(len(counts)), counts), device=device),
        ptr=torch.as_tensor(starts, dtype=torch.long, device=device),
        cutoff=graphs[0].cutoff,
        energy=_cat_optional([g.energy for g in graphs]),
        forces=_cat_optional([g.forces for g in graphs]),
        stress=_cat_optional([g.stress for g in graphs]),
        node_features=_cat_optional([g.node_features for g in graphs]),
        **_batch_rows(graphs, starts),
        **_batch_probes(graphs, starts),
    )


def structure(graph: AtomicGraph, b: int) -> AtomicGraph:
    """Structure ``b`` of a batch as a one-structure graph (no labels), atom indices from 0."""
    lo, hi = int(graph.ptr[b]), int(graph.ptr[b + 1])
    edges = (graph.batch[graph.edge_index[0]] == b).nonzero().squeeze(1)
    return AtomicGraph(
        Z=graph.Z[lo:hi],
        R=graph.R[lo:hi],
        cell=graph.cell[b : b + 1],
        pbc=graph.pbc[b : b + 1],
        edge_index=graph.edge_index[:, edges] - lo,
        shifts=graph.shifts[edges],
        batch=torch.zeros(hi - lo, dtype=torch.long, device=graph.Z.device),
        ptr=torch.tensor([0, hi - lo], device=graph.Z.device),
        cutoff=graph.cutoff,
    )


def _cat_optional(parts: list[Tensor | None]) -> Tensor | None:
    return None if any(p is None for p in parts) else torch.cat(parts)


def _block_diagonal(blocks: Sequence[Tensor], starts: np.ndarray) -> Tensor:
    """(sum K, sum N, 3) from per-structure (K_b, N_b, 3) blocks, zero outside each block's own atoms."""
    out = blocks[0].new_zeros(sum(len(b) for b in blocks), int(starts[-1]), 3)
    k = 0
    for block, s in zip(blocks, starts):
        out[k : k + len(block), int(s) : int(s) + block.shape[1]] = block
        k += len(block)
    return out


def _batch_probes(graphs: Sequence[AtomicGraph], starts: np.ndarray) -> dict:
    if any(g.probe_vectors is None for g in graphs):
        return {}
    counts = [len(g.probe_vectors) for g in graphs]
    owner = torch.as_tensor(np.repeat(np.arange(len(graphs)), counts), device=graphs[0].Z.device)
    return {
        "probe_vectors": _block_diagonal([g.probe_vectors for g in graphs], starts),
        "probe_products": _block_diagonal([g.probe_products for g in graphs], starts),
        "probe_owner": owner,
    }


def _batch_rows(graphs: Sequence[AtomicGraph], starts: np.ndarray) -> dict:
    if any(g.hessian_rows is None for g in graphs):
        return {}
    indices = [g.row_index + 3 * int(s) for g, s in zip(graphs, starts)]
    return {"hessian_rows": _block_diagonal([g.hessian_rows for g in graphs], starts), "row_index": torch.cat(indices)}
