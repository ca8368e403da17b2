"""The shared derivatives module against finite differences, symmetry and batching."""

import copy

import numpy as np
import pytest
import torch
from conftest import assert_close, rattled_cu

from ffdistill import derivatives
from ffdistill.graph import batch_graphs

FD_FORCE_ATOL = 1e-6  # eV/Å, float64 Morse with h = 1e-4 Å
FD_ROW_ATOL = 1e-5  # eV/Å², float64 Morse with h = 1e-4 Å


def test_forces_equal_finite_differences(morse_teacher, cu_atoms):
    graph = morse_teacher.graph(cu_atoms)
    pred = derivatives.predict(morse_teacher.energy, graph)
    assert_close(pred.forces, derivatives.fd_forces(morse_teacher.energy, graph), FD_FORCE_ATOL, what="forces")


def test_stress_equals_finite_difference_of_strain(morse_teacher, cu_atoms):
    pred = derivatives.predict(morse_teacher.energy, morse_teacher.graph(cu_atoms), stress=True)
    h, volume = 1e-5, cu_atoms.get_volume()
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                strained = cu_atoms.copy()
                eps = np.eye(3)
                eps[a, b] += sign * h
                strained.set_cell(cu_atoms.cell.array @ eps.T, scale_atoms=True)
                energies.append(float(morse_teacher.energy(morse_teacher.graph(strained))))
            fd[a, b] = (energies[0] - energies[1]) / (2 * h) / volume
    assert_close(pred.stress[0], 0.5 * (fd + fd.T), 1e-6, what="stress")


@pytest.mark.parametrize("vectorize", [True, False])
def test_hessian_rows_equal_finite_differences_of_forces(morse_teacher, cu_atoms, vectorize):
    graph = morse_teacher.graph(cu_atoms)
    rows = [0, 4, 7, 11]
    pred = derivatives.predict(morse_teacher.energy, graph, create_graph=True)
    autograd = derivatives.hessian_rows(pred.forces, pred.positions, rows, vectorize=vectorize)
    force_fn = lambda g: derivatives.predict(morse_teacher.energy, g).forces  # noqa: E731
    fd = derivatives.fd_hessian_rows(force_fn, graph, rows, h=1e-4)
    assert autograd.shape == (4, len(cu_atoms), 3)
    assert_close(autograd, fd, FD_ROW_ATOL, what="Hessian rows")


def test_full_hessian_is_symmetric_and_vmap_equals_loop(morse_teacher, cluster):
    graph = morse_teacher.graph(cluster)
    H = derivatives.full_hessian(morse_teacher, graph)
    assert H.shape == (3 * len(cluster),) * 2
    assert_close(H, H.T, 1e-10, what="H - H^T")
    looped = copy.copy(morse_teacher)
    looped.vectorize_rows = False
    assert_close(H, derivatives.full_hessian(looped, graph), 1e-12, what="vmap vs loop")
    # translation invariance: rows sum to zero over atoms for each axis
    assert_close(H.view(-1, len(cluster), 3).sum(1), 0.0, 1e-9, what="acoustic sum rule")


def test_batched_rows_equal_single_structure_rows(morse_teacher):
    singles = [morse_teacher.graph(rattled_cu(0)), morse_teacher.graph(rattled_cu(1, (2, 1, 1)))]
    rows = [torch.tensor([1, 9]), torch.tensor([3, 20, 5])]
    expected = []
    for g, r in zip(singles, rows):
        pred = derivatives.predict(morse_teacher.energy, g, create_graph=True)
        expected.append(derivatives.hessian_rows(pred.forces, pred.positions, r))
    batch = batch_graphs(singles)
    offsets = [0, singles[0].n_atoms]
    batched_rows = torch.cat([r + 3 * o for r, o in zip(rows, offsets)])
    pred = derivatives.predict(morse_teacher.energy, batch, create_graph=True)
    packed = derivatives.hessian_rows(pred.forces, pred.positions, batched_rows, batch=batch.batch)
    assert_close(packed[:2, : offsets[1]], expected[0], 1e-10, what="structure 0 rows")
    assert_close(packed[2:, offsets[1] :], expected[1], 1e-10, what="structure 1 rows")
    assert packed[:2, offsets[1] :].abs().max() == 0 and packed[2:, : offsets[1]].abs().max() == 0


def test_fd_teacher_hessian_matches_ase_vibrations(emt_teacher, tmp_path, monkeypatch):
    """EMT (no autograd): the project's finite-difference Hessian equals ASE's Vibrations."""
    from ase.vibrations import Vibrations

    atoms = rattled_cu(3)
    labels = emt_teacher.label(atoms, rows=range(3 * len(atoms)))
    monkeypatch.chdir(tmp_path)
    atoms.calc = emt_teacher.as_calculator()
    vib = Vibrations(atoms, delta=emt_teacher.fd_step, nfree=2)
    vib.run()
    reference = vib.get_vibrations().get_hessian_2d()
    ours = labels.hessian_rows.reshape(3 * len(atoms), 3 * len(atoms))
    assert_close(ours, reference, 1e-6, what="EMT Hessian vs ASE Vibrations")
    assert_close(ours, ours.T, 1e-3, what="EMT Hessian symmetry")
