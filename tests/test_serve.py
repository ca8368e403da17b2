"""The student as an i-PI client: ASE's socket server and i-PI itself drive it and get the calculator's answers."""

import os
import threading
import time

import ase.io
import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.socketio import SocketIOCalculator
from conftest import assert_close

from ffdistill import load_calculator
from ffdistill.calculator import PotentialCalculator, save_student
from ffdistill.cli import main
from ffdistill.deploy.serve import serve
from ffdistill.errors import InputError
from ffdistill.students import build_student

#: float64 student on both sides; the socket carries float64 and i-PI converts through atomic units.
SOCKET_TOLERANCE = 1e-8
IPI_TOLERANCE = 1e-6


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_student(seed=0):
    torch.manual_seed(seed)
    student = build_student("painn-tiny", [14], cutoff=4.0)
    with torch.no_grad():
        for p in student.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
        student.energy_scale.fill_(5.0)
    return student.double().eval()


def float64_calculator(student):
    return PotentialCalculator(student, dtype=torch.float64)


def silicon(seed=0):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def socket_name():
    return f"ffdistill_test_{os.getpid()}_{time.monotonic_ns()}"


class ClientThread:
    """A client run in a thread, with the ``wait()`` that ASE's server calls on its client process."""

    def __init__(self, target):
        self.result = self.error = None
        self.thread = threading.Thread(target=self._run, args=(target,), daemon=True)
        self.thread.start()

    def _run(self, target):
        try:
            self.result = target()
        except BaseException as error:  # noqa: BLE001 - surfaced by the test
            self.error = error

    def wait(self, timeout=60):
        self.thread.join(timeout)
        return 0


def retrying(connect, seconds=30):
    """Call ``connect`` until the server listens (the server and the client start concurrently)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return connect()
        except InputError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_ase_socket_server_gets_the_calculators_energy_forces_and_stress():
    student = random_student()
    name = socket_name()
    clients = []

    def launch(atoms, properties, port, unixsocket):
        clients.append(ClientThread(lambda: serve(float64_calculator(student), atoms, unix=unixsocket)))
        return clients[-1]

    atoms = silicon()
    with SocketIOCalculator(unixsocket=name, launch_client=launch) as server:
        atoms.calc = server
        for seed in (1, 2):  # two requests: new positions and a strained cell through the same connection
            atoms.positions = silicon(seed).positions
            shear = np.eye(3) + 0.01 * seed * np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]])
            atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
            reference = atoms.copy()
            reference.calc = float64_calculator(student)
            assert abs(atoms.get_potential_energy() - reference.get_potential_energy()) < SOCKET_TOLERANCE
            assert_close(atoms.get_forces(), reference.get_forces(), SOCKET_TOLERANCE, what="forces over the socket")
            assert_close(atoms.get_stress(), reference.get_stress(), SOCKET_TOLERANCE, what="stress over the socket")
            assert np.abs(reference.get_forces()).max() > 0.1
    clients[0].wait()
    assert clients[0].error is None and clients[0].result == 2


def test_a_committee_sends_its_per_atom_deviation_in_the_extras():
    import json

    from ffdistill.students.committee import Committee

    committee = Committee([random_student(0), random_student(1)], scale=1.3)
    name, clients = socket_name(), []

    def launch(atoms, properties, port, unixsocket):
        clients.append(ClientThread(lambda: serve(float64_calculator(committee), atoms, unix=unixsocket)))
        return clients[-1]

    atoms = silicon(3)
    with SocketIOCalculator(unixsocket=name, launch_client=launch) as server:
        atoms.calc = server
        atoms.get_forces()
        extras = json.loads(bytes(server.results["morebytes"]).decode())
    reference = atoms.copy()
    reference.calc = float64_calculator(committee)
    reference.get_forces()
    assert_close(np.array(extras["force_deviation"]), reference.calc.results["force_deviation"], 1e-12)
    assert max(extras["force_deviation"]) > 0
    clients[0].wait()


def test_serve_verb_answers_ase(tmp_path, capsys):
    path = str(tmp_path / "best.pt")
    save_student(random_student(), path)
    atoms = silicon()
    ase.io.write(tmp_path / "si.extxyz", atoms)
    codes = []

    def launch(atoms, properties, port, unixsocket):
        argv = ["serve", path, "--structure", str(tmp_path / "si.extxyz"), "--unix", unixsocket, "-q"]
        return ClientThread(lambda: codes.append(main(argv)))

    with SocketIOCalculator(unixsocket=socket_name(), launch_client=launch) as server:
        atoms.calc = server
        forces = atoms.get_forces()
    reference = silicon()
    reference.calc = load_calculator(path)
    assert_close(forces, reference.get_forces(), 1e-6, what="forces from the serve verb")
    assert codes == [0] and "served 1 force requests" in capsys.readouterr().out


def test_serve_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing.pt"), "--structure", "Si", "--unix", "x", "-q"]) == 2
    path = str(tmp_path / "best.pt")
    save_student(random_student(), path)
    assert main(["serve", path, "--structure", "Si", "--unix", socket_name(), "-q"]) == 2  # nobody listens
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no student file" in err[0] and "no i-PI server" in err[1]


def test_ipi_path_integral_run_with_the_student(tmp_path, monkeypatch):
    from ipi.scripting import InteractiveSimulation, forcefield_xml, motion_nvt_xml, simulation_xml

    monkeypatch.chdir(tmp_path)  # i-PI writes its outputs and RESTART to the working directory
    student = random_student()
    atoms = silicon()
    name = socket_name()
    beads = 4
    xml = simulation_xml(
        structures=[atoms.copy() for _ in range(beads)],
        forcefield=forcefield_xml("student", mode="unix", address=name),
        motion=motion_nvt_xml(timestep=0.5 * units.fs, path_integrals=True),
        temperature=300.0,
        prefix="pimd",
    )
    simulation = InteractiveSimulation(xml)
    client = ClientThread(lambda: retrying(lambda: serve(float64_calculator(student), atoms, unix=name)))
    steps = 3
    simulation.run(steps)
    structures = simulation.get_structures()
    simulation.stop()
    client.wait()
    assert client.error is None and client.result == beads * (steps + 1)  # every bead, every step
    spread = np.abs(structures[0].positions - structures[1].positions).max()
    assert spread > 1e-4  # the ring polymer opened up: beads are different structures
    for bead in structures:
        expected = bead.copy()
        expected.pbc = True
        expected.calc = float64_calculator(student)
        assert abs(bead.get_potential_energy() - expected.get_potential_energy()) < IPI_TOLERANCE
        assert_close(bead.get_forces(), expected.get_forces(), IPI_TOLERANCE, what="i-PI bead forces")
