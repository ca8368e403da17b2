import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list
from conftest import rattled_cu

from ffdistill.errors import InputError
from ffdistill.graph import batch_graphs, check_structure, edge_vectors, from_ase, to_ase


def _edges(i, j, S):
    return sorted(zip(i.tolist(), j.tolist(), map(tuple, np.asarray(S).tolist())))


@pytest.mark.parametrize("periodic", [True, False])
def test_neighbour_list_matches_ase(periodic, cu_atoms, cluster):
    atoms = cu_atoms if periodic else cluster
    cutoff = 4.0 if periodic else 2.5
    graph = from_ase(atoms, cutoff, dtype=torch.float64)
    i, j, S, D = neighbor_list("ijSD", atoms, cutoff)
    ase_vectors = {(a, b, tuple(s)): d for a, b, s, d in zip(i.tolist(), j.tolist(), S.tolist(), D)}
    ours = _edges(graph.edge_index[0], graph.edge_index[1], graph.shifts.long())
    assert ours == sorted(ase_vectors)
    # Edge vectors from the graph equal ASE's distance vectors, edge by edge.
    edges = zip(graph.edge_index[0].tolist(), graph.edge_index[1].tolist(), graph.shifts.long().tolist())
    for vec, (a, b, s) in zip(edge_vectors(graph).numpy(), edges):
        np.testing.assert_allclose(vec, ase_vectors[(a, b, tuple(s))], atol=1e-10)


def test_mixed_periodicity_matches_ase(cu_atoms):
    atoms = cu_atoms.copy()
    atoms.pbc = [True, True, False]
    graph = from_ase(atoms, 4.0, dtype=torch.float64)
    i, j, S = neighbor_list("ijS", atoms, 4.0)
    assert _edges(graph.edge_index[0], graph.edge_index[1], graph.shifts.long()) == _edges(i, j, S)


def test_round_trip_to_ase(cu_atoms):
    back = to_ase(from_ase(cu_atoms, 4.0, dtype=torch.float64))[0]
    np.testing.assert_allclose(back.positions, cu_atoms.positions)
    np.testing.assert_allclose(back.cell.array, cu_atoms.cell.array)
    assert (back.numbers == cu_atoms.numbers).all()


def test_batching_offsets_atoms_edges_and_rows():
    a, b = from_ase(rattled_cu(0), 3.0), from_ase(rattled_cu(1, (2, 1, 1)), 3.0)
    a = a._replace(hessian_rows=torch.randn(2, a.n_atoms, 3), row_index=torch.tensor([0, 5]))
    b = b._replace(hessian_rows=torch.randn(1, b.n_atoms, 3), row_index=torch.tensor([7]))
    batch = batch_graphs([a, b])
    assert batch.n_structures == 2 and batch.n_atoms == a.n_atoms + b.n_atoms
    assert batch.edge_index[:, a.edge_index.shape[1] :].min() >= a.n_atoms
    assert batch.row_index.tolist() == [0, 5, 7 + 3 * a.n_atoms]
    assert torch.equal(batch.hessian_rows[2, a.n_atoms :], b.hessian_rows[0])
    assert batch.hessian_rows[2, : a.n_atoms].abs().sum() == 0
    assert torch.allclose(edge_vectors(batch)[: a.edge_index.shape[1]], edge_vectors(a))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.positions.__setitem__((1,), a.positions[0] + 0.1), "overlapping"),
        (lambda a: a.positions.__setitem__((0, 0), np.nan), "non-finite"),
        (lambda a: a.set_cell([0, 0, 0]), "no cell"),
    ],
)
def test_bad_structures_are_refused(cu_atoms, change, message):
    change(cu_atoms)
    with pytest.raises(InputError, match=message):
        check_structure(cu_atoms)
