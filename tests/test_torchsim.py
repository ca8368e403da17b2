"""The torch-sim adapter: a batch of different systems gives the ASE calculator's forces, stress is the strain
derivative of the energy by finite differences, and a short batched NVT run stays physical."""

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.geometry import find_mic

from ffdistill.calculator import PotentialCalculator
from ffdistill.students import build_student
from ffdistill.students.committee import Committee

ts = pytest.importorskip("torch_sim")
from ffdistill.deploy.torchsim import StudentModel  # noqa: E402


def _student(seed=0):
    torch.manual_seed(seed)
    student = build_student("painn-tiny", [13, 29], 4.0).double()
    with torch.no_grad():  # a fresh read-out is zero: a non-trivial function to compare
        for p in student.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return student


def _systems():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.05, seed=1)
    alloy = bulk("Cu", "fcc", a=3.7) * (2, 2, 2)
    alloy.numbers[::3] = 13
    alloy.rattle(0.05, seed=2)
    sheared = bulk("Al", "fcc", a=4.05, orthorhombic=True)
    sheared.set_cell(sheared.cell.array @ np.array([[1, 0.05, 0], [0, 1, 0.02], [0, 0, 0.98]]), scale_atoms=True)
    sheared.rattle(0.05, seed=3)
    return [cu, alloy, sheared]


def test_a_batch_of_different_systems_gives_the_ase_calculators_forces_energies_and_stress():
    student = _student()
    model = StudentModel(student, device="cpu", dtype=torch.float64)
    systems = _systems()
    out = model(ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64))
    starts = np.cumsum([0] + [len(a) for a in systems])
    for b, atoms in enumerate(systems):
        atoms = atoms.copy()
        atoms.calc = PotentialCalculator(student, dtype=torch.float64)
        forces = out["forces"][starts[b] : starts[b + 1]].numpy()
        np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-5, rtol=0)
        assert float(out["energy"][b]) == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(out["stress"][b].numpy(), atoms.get_stress(voigt=False), atol=1e-8)
    assert np.abs(out["forces"].numpy()).max() > 1e-3  # forces that are not all zero: the test can fail


def test_stress_is_the_strain_derivative_of_the_energy_by_central_differences():
    model = StudentModel(_student(), device="cpu", dtype=torch.float64)
    atoms = _systems()[2]

    def energy(strain):
        strained = atoms.copy()
        strained.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
        return float(model(ts.io.atoms_to_state([strained], torch.device("cpu"), torch.float64))["energy"][0])

    stress = model(ts.io.atoms_to_state([atoms], torch.device("cpu"), torch.float64))["stress"][0].numpy()
    h, by_hand = 1e-5, np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            e = np.zeros((3, 3))
            e[i, j] = e[j, i] = h / 2 if i != j else h  # symmetric strain: the derivative of the symmetric stress
            by_hand[i, j] = (energy(e) - energy(-e)) / (2 * h) / atoms.get_volume()
    np.testing.assert_allclose(stress, by_hand, atol=1e-6)


def test_a_short_batched_nvt_run_moves_every_system_and_keeps_its_atoms_apart():
    model = StudentModel(_student(), device="cpu", dtype=torch.float64)
    systems = [bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2) for _ in range(3)]
    state = ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64)
    final = ts.integrate(state, model, integrator=ts.nvt_langevin, n_steps=30, temperature=300, timestep=0.001, seed=0)
    assert torch.isfinite(final.positions).all() and final.n_systems == 3
    shift = (final.positions - state.positions).numpy()
    moved = np.linalg.norm(find_mic(shift, systems[0].cell, pbc=True)[0], axis=-1)  # torch-sim wraps positions
    assert 1e-4 < moved.min() and moved.max() < 1.0
    for atoms in final.to_atoms():
        assert atoms.get_all_distances(mic=True)[np.triu_indices(len(atoms), 1)].min() > 1.5


def test_a_committee_runs_in_torch_sim_with_its_per_atom_deviation():
    committee = Committee([_student(0), _student(1)], scale=2.0)
    model = StudentModel(committee, device="cpu", dtype=torch.float64)
    systems = _systems()[:2]
    out = model(ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64))
    atoms = systems[1].copy()
    atoms.calc = PotentialCalculator(committee, dtype=torch.float64)
    atoms.get_forces()
    np.testing.assert_allclose(out["force_deviation"][len(systems[0]) :].numpy(), atoms.calc.results["force_deviation"])
