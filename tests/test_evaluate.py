"""Evaluation a user can trust: every number checked against an independent computation (ASE's
Vibrations, phonopy driven by hand, crystallography, an analytic oscillator, a known failure step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.optimize import BFGS
from conftest import phonopy_bands_by_hand

from ffdistill.evaluate.candidates import Candidate
from ffdistill.evaluate.md import MAX_FORCE, Blowup, md_stability, nve_run, run_md
from ffdistill.evaluate.observables import coordination, rdf, vdos, vdos_peak
from ffdistill.evaluate.vibrations import count_imaginary, rigid_body_basis, vibrational_frequencies
from ffdistill.teachers.ase_calc import ASETeacher

#: Projected frequencies vs ASE Vibrations (both finite differences of EMT forces), cm⁻¹.
VIB_TOLERANCE = 1.0
#: ffdistill's phonopy bands vs phonopy driven by hand with EMT, cm⁻¹.
PHONON_TOLERANCE = 0.01
#: The same for a student: the verb's float32 forces vs float64 here; seen 0.013 cm⁻¹ at most, on acoustic modes
#: near Γ (ω ∝ √λ: rounding of force constants near zero shows most there), under 1e-3 cm⁻¹ elsewhere.
STUDENT_PHONON_TOLERANCE = 0.05


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: these tiny models gain nothing from more, and on a shared machine two
    threads contending with other processes make every call many times slower."""
    from ffdistill.evaluate.speed import torch_threads

    with torch_threads(1):
        yield


def relaxed(atoms: Atoms, calc) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = calc
    BFGS(atoms, logfile=None).run(fmax=1e-6, steps=500)
    return atoms


def ase_vibrations(atoms: Atoms, tmp_path, monkeypatch) -> np.ndarray:
    """All 3N frequencies from ASE's own Vibrations (no projection), imaginary as negative."""
    from ase.vibrations import Vibrations

    monkeypatch.chdir(tmp_path)
    vib = Vibrations(atoms, delta=0.005, nfree=4)
    vib.run()
    f = vib.get_frequencies()
    return np.sort(np.where(np.abs(f.imag) > 1e-9, -np.abs(f.imag), f.real))


@pytest.mark.parametrize("name", ["H2O", "NH3", "N2"])
def test_projected_frequencies_of_a_relaxed_molecule_equal_ase_vibrations(name, emt_teacher, tmp_path, monkeypatch):
    atoms = relaxed(molecule(name), EMT())
    ours = vibrational_frequencies(Candidate.of_teacher(emt_teacher).hessian(atoms), atoms)
    n_internal = 3 * len(atoms) - (5 if name == "N2" else 6)
    assert len(ours) == n_internal
    theirs = ase_vibrations(atoms, tmp_path, monkeypatch)[-n_internal:]  # ASE keeps the ~0 rigid modes
    assert np.abs(ours - theirs).max() < VIB_TOLERANCE, (ours, theirs)
    assert ours.min() > 100  # real vibrations, none of the rigid-body zeros left


def test_linear_lj3_is_a_saddle_with_two_imaginary_bending_modes():
    """Three LJ atoms on a line, relaxed along it: a stationary point with the degenerate bend
    unstable (the triangle is lower), so 4 internal modes of which exactly 2 are imaginary."""
    lj = lambda: LennardJones(sigma=1.0, epsilon=1.0, rc=10.0)  # noqa: E731
    teacher = Candidate.of_teacher(ASETeacher(lj(), "lj"))
    line = relaxed(Atoms("Ar3", positions=[[0, 0, 0], [1.2, 0, 0], [2.4, 0, 0]]), lj())
    saddle = vibrational_frequencies(teacher.hessian(line), line)
    triangle = relaxed(Atoms("Ar3", positions=[[0, 0, 0], [1.12, 0, 0], [0.56, 0.97, 0]]), lj())
    minimum = vibrational_frequencies(teacher.hessian(triangle), triangle)
    assert len(saddle) == 4 and count_imaginary(saddle) == 2, saddle
    assert saddle[0] == pytest.approx(saddle[1], rel=1e-3) and saddle[2] > 0
    assert len(minimum) == 3 and count_imaginary(minimum) == 0, minimum


@pytest.mark.parametrize(
    "pbc, linear, rigid",
    [((0, 0, 0), False, 6), ((0, 0, 0), True, 5), ((0, 0, 1), False, 4), ((1, 1, 0), False, 3), ((1, 1, 1), False, 3)],
)
def test_rigid_body_modes_follow_periodicity(pbc, linear, rigid):
    positions = [[0, 0, 0], [1.1, 0, 0], [2.2, 0, 0]] if linear else [[0, 0, 0], [1.1, 0.2, 0], [0.3, 1.0, 0.7]]
    atoms = Atoms("CuCuAu", positions=positions, cell=[8, 8, 8], pbc=pbc)
    basis = rigid_body_basis(atoms)
    assert basis.shape == (9, rigid)
    assert np.allclose(basis.T @ basis, np.eye(rigid), atol=1e-10)


def test_phonopy_bands_of_emt_copper_equal_phonopy_driven_directly():
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    from ffdistill.evaluate.phonons import phonons

    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    ours = phonons(EMT(), cell, supercell=(2, 2, 2), npoints=40, mesh=6)
    fcc = [[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    unit = PhonopyAtoms(symbols=["Cu"] * 4, cell=cell.cell.array, scaled_positions=cell.get_scaled_positions())
    direct = Phonopy(unit, supercell_matrix=np.diag([2, 2, 2]), primitive_matrix=fcc)
    direct.generate_displacements(distance=0.01)
    forces = []
    for sc in direct.supercells_with_displacements:
        atoms = Atoms(sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
        atoms.calc = EMT()
        forces.append(atoms.get_forces())
    direct.forces = forces
    direct.produce_force_constants()
    thz_to_cm1 = 1e12 / (units._c * 100)
    direct.run_qpoints(ours["q_points"])
    along_path = direct.get_qpoints_dict()["frequencies"] * thz_to_cm1
    assert np.abs(ours["frequencies_cm1"] - along_path).max() < PHONON_TOLERANCE
    # The path's labels sit where phonopy puts them: X of FCC is (1/2, 0, 1/2) in the primitive basis.
    x = list(ours["labels"]).index("X")
    direct.run_qpoints([[0.5, 0.0, 0.5]])
    at_x = direct.get_qpoints_dict()["frequencies"][0] * thz_to_cm1
    where = np.argmin(np.abs(ours["distance"] - ours["special_distance"][x]))
    assert np.abs(ours["frequencies_cm1"][where] - at_x).max() < PHONON_TOLERANCE
    assert np.abs(ours["gamma_cm1"]).max() < 1.0 and ours["frequencies_cm1"].max() > 150


def test_rdf_of_a_perfect_lattice_peaks_at_its_shells_and_counts_its_neighbours():
    a = 3.6
    crystal = bulk("Cu", "fcc", a=a, cubic=True) * (3, 3, 3)
    result = rdf([crystal], r_max=6.0, bins=120)
    shells = a * np.sqrt([0.5, 1.0, 1.5, 2.0])  # FCC neighbour shells: 12, 6, 24, 12 atoms
    for d in shells:
        window = np.abs(result["r"] - d) < 0.2
        peak = result["r"][window][np.argmax(result["g"][window])]
        assert abs(peak - d) <= 0.025 + 1e-9, (d, peak)
    midpoints = 0.5 * (shells[1:] + shells[:-1])
    counts = [coordination(result, r) for r in midpoints]
    assert counts == pytest.approx([12, 18, 42], abs=1e-6)


class Springs(Calculator):
    """Every atom tied to its start by a spring of stiffness k (eV/Å²): an Einstein solid."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, anchors, k):
        super().__init__()
        self.anchors, self.k = np.array(anchors), k

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions - self.anchors
        self.results = {"energy": 0.5 * self.k * (d**2).sum(), "forces": -self.k * d}


def test_vdos_of_a_harmonic_solid_peaks_at_its_frequency():
    k, mass = 10.0, 12.0  # eV/Å², amu
    atoms = Atoms(
        "C8",
        positions=3.0 * np.array([[i, j, c] for i in (0, 1) for j in (0, 1) for c in (0, 1)]),
        cell=[6, 6, 6],
        pbc=True,
    )
    run = nve_run(Springs(atoms.positions, k), atoms, steps=2000, temperature=300, velocity_every=2)
    spectrum = vdos(run["velocities"], run["masses"], run["velocity_dt_fs"])
    omega = np.sqrt(k * units._e / 1e-20 / (mass * units._amu))  # rad/s, SI throughout
    expected = omega / (2 * np.pi * units._c * 100)  # cm⁻¹
    resolution = spectrum["frequency_cm1"][1]
    assert abs(vdos_peak(spectrum) - expected) <= resolution, (vdos_peak(spectrum), expected, resolution)


class TimeBomb(EMT):
    """EMT until the ``fuse``-th new structure (step ``fuse`` of an MD run), then forces far past the limit."""

    def __init__(self, fuse):
        super().__init__()
        self.fuse, self.calls = fuse, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.calls >= self.fuse:
            self.results["forces"] = self.results["forces"] + 10 * MAX_FORCE
        self.calls += 1


#: (step at which forces explode, check interval, first failed check): 100 steps, checks every interval and at the end
FAILURES = [(37, 1, 37), (37, 10, 40), (0, 10, 0), (40, 10, 40), (95, 30, 100)]


@pytest.mark.parametrize("fuse, interval, reported", FAILURES)
def test_stability_reports_the_first_failed_check(fuse, interval, reported):
    start = bulk("Cu", "fcc", a=3.6, cubic=True)
    result = md_stability(TimeBomb(fuse), start, steps=100, interval=interval)
    assert not result["stable"] and result["failed_step"] == reported, result
    assert result["time_ps"] == pytest.approx(reported / 1000)
    assert "eV/Å" in result["reason"] and str(MAX_FORCE).rstrip("0").rstrip(".") in result["reason"]


def test_md_command_names_the_failed_step_and_the_check_interval(tmp_path):
    with pytest.raises(Blowup, match="step 30: .*first failed check; checks every 10 steps"):
        run_md(
            TimeBomb(23),
            bulk("Cu", "fcc", a=3.6, cubic=True),
            "nve",
            300,
            100,
            str(tmp_path / "x.traj"),
            progress=False,
        )


# --- direct-force students are scored through their force head everywhere --------------------------


@pytest.fixture
def direct_student():
    """painn-direct-small with an energy head made deliberately wrong: -dE/dR is nonsense, the force head is not."""
    from ffdistill.students import build_student

    torch.manual_seed(0)
    model = build_student("painn-direct-small", [29], cutoff=4.0)
    with torch.no_grad():
        model.readout[-1].weight.normal_(0.0, 100.0)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def force_head(model, atoms) -> np.ndarray:
    from ffdistill.graph import from_ase

    with torch.no_grad():
        return model.predict(from_ase(atoms, model.cutoff, labels=False)).forces.double().numpy()


def energy_head_forces(model, atoms) -> np.ndarray:
    from ffdistill import derivatives
    from ffdistill.graph import from_ase

    return derivatives.predict(model.energy, from_ase(atoms, model.cutoff, labels=False)).forces.double().numpy()


def emt_labelled(seed: int) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    atoms.get_forces()
    return atoms


def test_direct_student_accuracy_uses_its_force_head(direct_student):
    from ffdistill.evaluate.accuracy import accuracy
    from ffdistill.graph import from_ase

    frames = [emt_labelled(k) for k in range(3)]
    got = accuracy(direct_student, [from_ase(a, direct_student.cutoff) for a in frames])
    reference = np.concatenate([a.get_forces() for a in frames])
    by_head = 1000 * np.abs(np.concatenate([force_head(direct_student, a) for a in frames]) - reference).mean()
    by_energy = (
        1000 * np.abs(np.concatenate([energy_head_forces(direct_student, a) for a in frames]) - reference).mean()
    )
    assert got["force_mae_meV_per_A"] == pytest.approx(by_head, rel=1e-4)
    assert by_energy > 10 * by_head  # the wrong energy head would have shown


def test_direct_student_frequencies_come_from_its_force_head(direct_student):
    from ffdistill import derivatives
    from ffdistill.graph import from_ase

    atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)  # 2 atoms: 3 internal modes, 12 displaced copies
    atoms.rattle(0.03, seed=2)
    got = vibrational_frequencies(Candidate.of_student("d", direct_student).hessian(atoms), atoms)
    h, n = 1e-2, 3 * len(atoms)
    columns = []  # -dF/dR_r by central differences of the force head, column by column
    for r in range(n):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions.flat[r] += h
        minus.positions.flat[r] -= h
        columns.append(-(force_head(direct_student, plus) - force_head(direct_student, minus)).ravel() / (2 * h))
    expected = vibrational_frequencies(np.array(columns).T, atoms)
    graph = from_ase(atoms, direct_student.cutoff, labels=False)
    pred = derivatives.predict(direct_student.energy, graph, create_graph=True)  # the energy head's Hessian
    energy_rows = derivatives.hessian_rows(pred.forces, pred.positions, range(n))
    energy_head = vibrational_frequencies(energy_rows.reshape(n, n).detach().double().numpy(), atoms)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() < 0.02 * scale, (got, expected)
    assert np.abs(energy_head - expected).max() > 0.5 * scale


def test_direct_student_timing_calls_its_force_head_only(direct_student, monkeypatch):
    from ffdistill.evaluate.speed import force_call_seconds

    seen = []
    original = type(direct_student).compute

    def spy(self, graph, want):
        seen.append(graph.R.requires_grad)
        return original(self, graph, want)

    monkeypatch.setattr(type(direct_student), "compute", spy)
    times = force_call_seconds([Candidate.of_student("d", direct_student)], emt_labelled(0), repeats=5, warmup=1)
    assert times["d"] > 0 and seen == [False] * 6


def test_demo_parity_plots_the_force_head(direct_student, emt_teacher, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from conftest import write_frames

    from ffdistill import plots
    from ffdistill.calculator import save_student
    from ffdistill.data.labels import LabelStore, label_file
    from ffdistill.workflows import demo

    for name, seed in (("labels", 0), ("heldout", 50)):  # the demo's layout: held-out frames beside the training store
        label_file(
            emt_teacher,
            write_frames(tmp_path / f"{name}.extxyz", n=2, seed=seed),
            str(tmp_path / f"{name}.zarr"),
            rows=0,
            progress=False,
        )
    path = str(tmp_path / "direct.pt")
    save_student(direct_student, path)
    captured = {}
    monkeypatch.setattr(plots, "force_parity", lambda ref, pred, out: captured.update(ref=ref, pred=pred))
    demo._parity(
        LabelStore(str(tmp_path / "labels.zarr")),
        {"direct": SimpleNamespace(best_path=path)},
        demo.DemoPlan(),
        str(tmp_path / "p.png"),
        torch.device("cpu"),
    )
    heldout = LabelStore(str(tmp_path / "heldout.zarr"))
    frames = [heldout.frame(i)[0] for i in range(len(heldout))]
    expected = np.concatenate([force_head(direct_student, a) for a in frames])
    assert np.allclose(captured["pred"]["direct"], expected, atol=1e-5)
    assert not np.allclose(
        captured["pred"]["direct"], np.concatenate([energy_head_forces(direct_student, a) for a in frames]), atol=1e-2
    )


def _cu3au(a: float = 3.74) -> Atoms:
    """L1_2 Cu3Au: a simple-cubic cell of 4 atoms, its own primitive cell (so 9 optical modes at Γ)."""
    return Atoms(
        "AuCu3", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], cell=[a] * 3, pbc=True
    )


def _phonopy_bands_by_hand(calc, unitcell: Atoms, q_points) -> np.ndarray:
    """Bands of ``unitcell`` (its own primitive cell) from phonopy driven directly (``conftest``)."""
    return phonopy_bands_by_hand(calc, unitcell, q_points)


def test_phonons_verb_overlays_teacher_and_students(tmp_path, capsys):
    """``ffdistill phonons`` on L1_2 Cu3Au with EMT as the teacher and two students: the bands it writes, and each
    student's band and Γ MAE against the teacher, equal those of phonopy driven by hand (float64 student forces)
    along ASE's standard path for the simple-cubic cell."""
    import json

    from ffdistill.calculator import PotentialCalculator, load_student, save_student
    from ffdistill.cli import main
    from ffdistill.students import build_student

    for name, scale in (("tiny", 0.1), ("weak", 0.02)):
        torch.manual_seed(0)
        model = build_student("painn-tiny", [29, 79], cutoff=4.0)
        with torch.no_grad():
            model.readout[-1].weight.normal_(0.0, scale)
        save_student(model, str(tmp_path / f"{name}.pt"))
    cell = _cu3au()
    cell.write(tmp_path / "cu3au.extxyz")
    args = [
        "phonons",
        str(tmp_path / "tiny.pt"),
        str(tmp_path / "weak.pt"),
        "--structure",
        str(tmp_path / "cu3au.extxyz"),
    ]
    args += ["--teacher", "ase:ase.calculators.emt:EMT", "-o", str(tmp_path / "ph"), "-q"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.load(open(tmp_path / "ph" / "phonons.json"))

    path = cell.cell.bandpath(npoints=100)  # ASE's standard path for a simple-cubic cell
    assert result["path"] == path.path == "GXMGRX,MR"
    q = np.concatenate([path.kpts, np.zeros((1, 3))])  # the path, then Γ
    by_hand = {"teacher": _phonopy_bands_by_hand(EMT(), cell, q)}
    for name in ("tiny", "weak"):
        student = PotentialCalculator(load_student(str(tmp_path / f"{name}.pt")).double(), dtype=torch.float64)
        by_hand[name] = _phonopy_bands_by_hand(student, cell, q)
    for name, bands in by_hand.items():
        tolerance = PHONON_TOLERANCE if name == "teacher" else STUDENT_PHONON_TOLERANCE
        assert np.abs(np.asarray(result["bands_cm1"][name]) - bands[:-1]).max() < tolerance, name
    assert by_hand["teacher"][-1, 3:].min() > 50  # real optical modes at Γ: the Γ MAE is telling
    for name in ("tiny", "weak"):
        band_mae = np.abs(by_hand[name][:-1] - by_hand["teacher"][:-1]).mean()
        gamma_mae = np.abs(by_hand[name][-1] - by_hand["teacher"][-1]).mean()
        got = result["students"][name]
        assert got["phonon_band_mae_cm1"] == pytest.approx(band_mae, abs=STUDENT_PHONON_TOLERANCE), name
        assert got["phonon_gamma_mae_cm1"] == pytest.approx(gamma_mae, abs=STUDENT_PHONON_TOLERANCE), name
        assert got["phonon_min_cm1"] == pytest.approx(by_hand[name][:-1].min(), abs=STUDENT_PHONON_TOLERANCE), name
        assert f"{name}: band MAE {got['phonon_band_mae_cm1']:.1f}" in printed, printed
    maes = [result["students"][name]["phonon_band_mae_cm1"] for name in ("tiny", "weak")]
    assert min(maes) > 1.0 and abs(maes[0] - maes[1]) > 1.0  # far from the teacher, and told apart
    assert (tmp_path / "ph" / "phonons.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "extra, expected",
    [
        ([], {"name": "standard", "nvt_runs": 3, "nvt_steps": 10_000, "nve_steps": 5_000}),
        (
            ["--profile", "quick", "--md-steps", "40"],
            {"name": "quick", "nvt_runs": 2, "nvt_steps": 40, "nve_steps": 40},
        ),
        (
            ["--profile", "long", "--md-runs", "7"],
            {"name": "long", "nvt_runs": 7, "nvt_steps": 50_000, "nve_steps": 20_000},
        ),
    ],
)
def test_evaluate_verb_picks_the_profile_and_its_overrides(extra, expected, monkeypatch, capsys):
    from ffdistill.cli import main
    from ffdistill.evaluate import report

    seen = {}
    monkeypatch.setattr(report, "evaluate_from_paths", lambda *a, **k: seen.update(k) or {})
    monkeypatch.setattr(report, "markdown_tables", lambda models: "")
    assert main(["evaluate", "s.pt", "--data", "d.zarr", "-o", "out", *extra]) == 0
    profile = seen["profile"]
    assert {k: getattr(profile, k) for k in expected} == expected
    # ≥ 10 ps NVT and ≥ 5 ps NVE per student from the standard profile up
    assert profile.name == "quick" or (profile.nvt_runs * profile.nvt_steps >= 10_000 and profile.nve_steps >= 5_000)


def test_vdos_overlap_separates_same_from_different_frequencies():
    from ffdistill.evaluate.observables import vdos_overlap

    def oscillators(wavenumber: float, seed: int) -> dict:
        """8 atoms oscillating at ``wavenumber`` (cm⁻¹) with random phases, plus noise, sampled every fs."""
        rng = np.random.default_rng(seed)
        cycles_per_fs = wavenumber * units._c * 100 * 1e-15
        t = np.arange(2000)[:, None, None]
        v = np.sin(2 * np.pi * cycles_per_fs * t + rng.uniform(0, 2 * np.pi, (1, 8, 3))) + 0.1 * rng.normal(
            size=(2000, 8, 3)
        )
        return vdos(v, np.ones(8), 1.0)

    same, shifted = (
        vdos_overlap(oscillators(300, 0), oscillators(300, 1)),
        vdos_overlap(oscillators(300, 0), oscillators(500, 2)),
    )
    assert same > 0.95 and shifted < 0.1, (same, shifted)
    assert vdos_peak(oscillators(300, 0)) == pytest.approx(300, abs=10)
