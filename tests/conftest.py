"""Tiny seeded fixtures: EMT and a torch Morse potential stand in for foundation models."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from ffdistill.teachers import load_teacher

torch.set_num_threads(2)


def rattled_cu(seed: int = 0, reps=(1, 1, 1), amount: float = 0.05):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * reps
    atoms.rattle(amount, seed=seed)
    return atoms


@pytest.fixture
def cu_atoms():
    return rattled_cu(0)


@pytest.fixture
def cluster():
    """A non-periodic structure."""
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.02, seed=1)
    return atoms


@pytest.fixture(scope="session")
def emt_teacher():
    return load_teacher("ase:ase.calculators.emt:EMT")


@pytest.fixture(scope="session")
def morse_teacher():
    return load_teacher("morse")


def write_frames(path, n: int = 6, seed: int = 0, reps=(1, 1, 1)) -> str:
    """Independently rattled frames, each its own group (``info["group"]``)."""
    frames = [rattled_cu(seed + k, reps) for k in range(n)]
    for k, atoms in enumerate(frames):
        atoms.info["group"] = k
    ase.io.write(path, frames, format="extxyz")
    return str(path)


@pytest.fixture
def cu_frames(tmp_path):
    return write_frames(tmp_path / "cu.extxyz")


@pytest.fixture(scope="session")
def emt_store(tmp_path_factory):
    """16 labelled Cu frames (8 atoms), 6 Hessian rows each, from EMT."""
    from ffdistill.data.labels import label_file

    folder = tmp_path_factory.mktemp("store")
    frames = write_frames(folder / "cu16.extxyz", n=16, reps=(1, 1, 1))
    label_file(load_teacher("ase:ase.calculators.emt:EMT"), frames, str(folder / "cu16.zarr"), rows=6, progress=False)
    return str(folder / "cu16.zarr")


def assert_close(a, b, atol, rtol=0.0, what=""):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    err = np.abs(a - b).max()
    assert np.allclose(a, b, atol=atol, rtol=rtol), f"{what}: max abs difference {err:.3g} (atol {atol})"


#: blocks of two frames, so a six-frame job commits three times and a kill can fall between commits
LAUNCH = (
    "import sys; import ffdistill.data.labels as labels; labels.BLOCK_FRAMES = 2; "
    "from ffdistill.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run_cli(argv, fault=None, file_size=None):
    """The CLI in a fresh process (``FFDISTILL_FAULT`` kills the process it fires in), one thread."""
    env = {k: v for k, v in os.environ.items() if k != "FFDISTILL_FAULT"} | {"OMP_NUM_THREADS": "1"}
    if fault:
        env["FFDISTILL_FAULT"] = fault
    limit = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))) if file_size else None
    command = [sys.executable, "-c", LAUNCH, *map(str, argv), "-q"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, preexec_fn=limit)


def phonopy_bands_by_hand(calc, unitcell, q_points, primitive_matrix=None) -> np.ndarray:
    """Bands (cm⁻¹) at ``q_points`` from phonopy driven directly, not through ffdistill: a 2x2x2 supercell of
    ``unitcell``, 0.01 Å displacements, the forces of each displaced supercell from ``calc``."""
    from ase import units
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    unit = PhonopyAtoms(
        symbols=unitcell.get_chemical_symbols(),
        cell=unitcell.cell.array,
        scaled_positions=unitcell.get_scaled_positions(),
    )
    primitive = np.eye(3) if primitive_matrix is None else primitive_matrix
    phonon = Phonopy(unit, supercell_matrix=np.diag([2, 2, 2]), primitive_matrix=primitive)
    phonon.generate_displacements(distance=0.01)
    forces = []
    for sc in phonon.supercells_with_displacements:
        atoms = ase.Atoms(sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
        atoms.calc = calc
        forces.append(atoms.get_forces())
    phonon.forces = forces
    phonon.produce_force_constants()
    phonon.run_qpoints(q_points)
    return phonon.get_qpoints_dict()["frequencies"] * 1e12 / (units._c * 100)
