"""Physical soundness checks, on EMT and a deliberately broken potential."""

import json
import os

import ase
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.vibrations import Vibrations
from conftest import phonopy_bands_by_hand

from ffdistill.deploy.simulate import (
    Blowup,
    frequencies_cm1,
    md_stability,
    nve_energy_drift,
    run_md,
    vibrational_frequencies,
)
from ffdistill.errors import FFDistillError

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 names it trapz

#: EMT copper, 32 atoms, 300 K, 1 fs: drift seen here ~0.01 meV/atom/ps; 1 is a loose but telling bound.
EMT_DRIFT_BOUND = 1.0  # meV/atom/ps
#: Project Hessian (central differences, h = 1e-3 Å) vs ASE Vibrations (same step): cm⁻¹.
FREQUENCY_TOLERANCE = 0.5


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: these tiny models gain nothing from more, and on a shared machine two
    threads contending with other processes make every call many times slower."""
    from ffdistill.evaluate.speed import torch_threads

    with torch_threads(1):
        yield


class UphillEMT(EMT):
    """EMT with its forces reversed and amplified: every step pushes atoms up the energy surface."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        super().calculate(atoms, properties, system_changes)
        self.results["forces"] = -20 * self.results["forces"]


def copper(reps=(2, 2, 2)):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * reps
    atoms.rattle(0.02, seed=0)
    return atoms


def test_stability_detection_fires_on_a_broken_potential_and_not_on_emt():
    broken = md_stability(UphillEMT(), copper(), steps=300, temperature=300)
    sound = md_stability(EMT(), copper(), steps=300, temperature=300)
    assert not broken["stable"] and broken["time_ps"] < 0.3, broken
    assert sound["stable"] and sound["time_ps"] == pytest.approx(0.3), sound


def test_emt_conserves_energy_in_nve():
    result = nve_energy_drift(EMT(), copper(), steps=300, temperature=300)
    assert abs(result["drift_meV_per_atom_per_ps"]) < EMT_DRIFT_BOUND, result["drift_meV_per_atom_per_ps"]
    assert result["fluctuation_meV_per_atom"] < 1.0


def test_frequencies_from_our_hessian_match_ase_vibrations(emt_teacher, tmp_path, monkeypatch):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)  # perfect crystal: an equilibrium by symmetry
    H = emt_teacher.label(atoms, rows=range(12)).hessian_rows.reshape(12, 12)
    ours = np.sort(frequencies_cm1(H, atoms.get_masses()))
    projected = vibrational_frequencies(H, atoms)  # a crystal: the 3 translations removed, nothing else
    monkeypatch.chdir(tmp_path)
    atoms.calc = EMT()
    vib = Vibrations(atoms, delta=1e-3, nfree=2)
    vib.run()
    theirs = np.sort([f.real if abs(f.imag) < 1e-9 else -abs(f.imag) for f in vib.get_frequencies()])
    assert np.abs(ours - theirs).max() < FREQUENCY_TOLERANCE, (ours, theirs)
    assert len(projected) == 9 and np.abs(projected - theirs[3:]).max() < FREQUENCY_TOLERANCE, (projected, theirs)
    assert ours[-1] > 100  # real optical modes, not zeros


def test_md_command_stops_with_a_clear_message_on_blowup(tmp_path):
    with pytest.raises(
        Blowup, match=r"step \d+: (a bond changed by .* > (0.5|1) Å|\|F\| = .* > 50 eV/Å) \(first failed check"
    ):
        run_md(UphillEMT(), copper(), "nve", 300, 500, str(tmp_path / "x.traj"), progress=False)
    assert issubclass(Blowup, FFDistillError)


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_md_resumes_from_its_trajectory(ensemble, tmp_path, monkeypatch):
    """40 steps, then a resumed run to 60: the frames on disk stay, the resumed integrator starts from the last
    frame's positions and momenta, and in NVE (deterministic) the run ends where ASE's own velocity Verlet, run
    60 steps straight from the same start, ends."""
    from ase.io import read
    from ase.md.verlet import VelocityVerlet

    import ffdistill.evaluate.md as md

    starts = []  # the state each integrator is built on, as it is built

    def spied(atoms, *args, **kwargs):
        starts.append((atoms.positions.copy(), atoms.get_momenta().copy()))
        return dynamics(atoms, *args, **kwargs)

    dynamics = md.dynamics
    monkeypatch.setattr(md, "dynamics", spied)
    traj = str(tmp_path / "md.traj")
    assert run_md(EMT(), copper((1, 1, 1)), ensemble, 300, 40, traj, interval=10, progress=False) == 40
    before = read(traj, ":")
    assert len(before) == 5  # steps 0, 10, 20, 30, 40
    ran = run_md(EMT(), copper((1, 1, 1)), ensemble, 300, 60, traj, interval=10, resume=True, progress=False)
    after = read(traj, ":")
    assert ran == 20 and len(after) == 7  # 50 and 60 appended, 40 not written twice
    for old, new in zip(before, after):
        assert np.array_equal(old.positions, new.positions) and np.array_equal(old.get_momenta(), new.get_momenta())
    assert len(starts) == 2
    assert np.array_equal(starts[1][0], before[-1].positions) and np.array_equal(starts[1][1], before[-1].get_momenta())
    assert (
        np.abs(before[-1].get_momenta()).max() > 0.01
        and np.abs(after[-1].positions - before[-1].positions).max() > 1e-3
    )

    if ensemble == "nve":
        straight = after[0].copy()  # the thermalised start as written
        straight.set_momenta(after[0].get_momenta())
        straight.calc = EMT()
        VelocityVerlet(straight, 1.0 * units.fs).run(60)
        np.testing.assert_allclose(after[-1].positions, straight.positions, rtol=0, atol=1e-12)
        np.testing.assert_allclose(after[-1].get_momenta(), straight.get_momenta(), rtol=0, atol=1e-12)


#: A profile short enough for CI: every check runs, none for long. 30 K because an untrained student exerts
#: almost no force: at 300 K its atoms drift past the 0.5 Å bond check in ~130 fs, before a VDOS is possible.
TINY = dict(
    name="tiny",
    nvt_runs=2,
    nvt_steps=20,
    nve_steps=250,
    teacher_md_budget_s=10.0,
    growth_sizes=(8, 32),
    timing_repeats=5,
    temperature=30.0,
)


def _internal_wavenumbers_by_hand(hessian_2d, masses):
    """Signed wavenumbers (cm⁻¹) of a crystal's Hessian with the 3 rigid translations projected out, written
    out from SI constants: ω² = eigenvalue of H / √(m_i m_j) on the complement of the translations."""
    from scipy.linalg import null_space

    sqrt_m = np.repeat(np.sqrt(masses), 3)
    translations = np.stack([np.tile(np.eye(3)[k], len(masses)) * sqrt_m for k in range(3)], axis=1)
    q = null_space(translations.T)  # (3N, 3N - 3), orthonormal
    weighted = hessian_2d / np.outer(sqrt_m, sqrt_m)
    eig = np.linalg.eigvalsh(q.T @ (0.5 * (weighted + weighted.T)) @ q)  # eV / (Å² amu)
    omega = np.sqrt(np.abs(eig) * units._e / units._amu) * 1e10  # rad/s
    return np.sort(np.sign(eig) * omega / (2 * np.pi * units._c * 100))


def _ase_hessian(atoms, calc, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atoms = atoms.copy()
    atoms.calc = calc
    vib = Vibrations(atoms, delta=0.005, nfree=4, name=name)
    vib.run()
    data = vib.get_vibrations()
    return data.get_hessian_2d(), vib.get_frequencies()


def _thermalised_by_ase(atoms, calc, seed, temperature=TINY["temperature"]):
    """The evaluation's documented start: Maxwell-Boltzmann velocities from ``default_rng(seed)``, no net momentum."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    return atoms


def _slope(t, y):
    """Least-squares slope, written out."""
    return ((t - t.mean()) * (y - y.mean())).sum() / ((t - t.mean()) ** 2).sum()


def _nve_by_ase(start, calc, steps):
    """ASE's velocity Verlet (1 fs) from the thermalised start: total energy (meV/atom) and velocities at steps
    0..steps, and the drift, its uncertainty (half the difference of the two halves' slopes) and fluctuation."""
    from ase.md.verlet import VelocityVerlet

    atoms = _thermalised_by_ase(start, calc, 0)
    energies, velocities = [], []
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    dyn.attach(lambda: (energies.append(atoms.get_total_energy()), velocities.append(atoms.get_velocities().copy())))
    dyn.run(steps)
    e, t = 1000 * np.asarray(energies) / len(atoms), np.arange(steps + 1) / 1000  # meV/atom, ps
    half = len(e) // 2
    uncertainty = abs(_slope(t[:half], e[:half]) - _slope(t[half:], e[half:])) / 2
    return {
        "drift": _slope(t, e),
        "uncertainty": uncertainty,
        "fluctuation": e.std(),
        "velocities": np.asarray(velocities),
    }


def _nvt_frames_by_ase(starts, calc, runs, steps, every=10):
    """ASE's Langevin (1 fs, 0.01 / fs friction, the noise from ``default_rng(seed + 1)``), run ``k`` from start
    ``k`` with seed ``k``: the frames every ``every`` steps past the first quarter (the RDF's frames)."""
    from ase.md.langevin import Langevin

    frames = []
    for k in range(runs):
        atoms = _thermalised_by_ase(starts[k], calc, k)
        rng = np.random.default_rng(k + 1)
        dyn = Langevin(
            atoms, units.fs, temperature_K=TINY["temperature"], friction=0.01 / units.fs, fixcm=False, rng=rng
        )
        for step in range(every, steps + 1, every):
            dyn.run(every)
            if step >= steps // 4:
                frames.append(ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=True))
    return frames


def _rdf_by_hand(frames, r_max=6.0, bins=120):
    """g(r) = pairs in [r, r + dr) / (frames N ρ 4π dr (r² + dr²/12)), r the bin's middle (the shell's volume)."""
    from ase.neighborlist import neighbor_list

    dr = r_max / bins
    r = (np.arange(bins) + 0.5) * dr
    counts = sum(np.bincount((neighbor_list("d", f, r_max) / dr).astype(int), minlength=bins)[:bins] for f in frames)
    n, rho = len(frames[0]), len(frames[0]) / frames[0].get_volume()
    return counts / (len(frames) * n * rho * 4 * np.pi * dr * (r**2 + dr**2 / 12))


def _vdos_overlap_by_hand(v_a, v_b, masses, smooth_cm1=10.0):
    """∫ min(p_a, p_b) of two mass-weighted velocity power spectra (Hann window, 1 fs samples), each interpolated
    to 2000 points up to 1.5 × the larger 99.9 % quantile, Gaussian-smoothed (scipy, width ``smooth_cm1``) and
    brought to unit area."""
    from scipy.ndimage import gaussian_filter1d

    spectra = []
    for v in (v_a, v_b):
        n = len(v)
        hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / (n - 1))
        power = (np.abs(np.fft.rfft(v * hann[:, None, None], axis=0)) ** 2 * masses[None, :, None]).sum(axis=(1, 2))
        nu = np.arange(len(power)) / (n * 1e-15) / (units._c * 100)  # cm⁻¹
        spectra.append((nu, power / _trapezoid(power, nu)))
    quantiles = [nu[np.searchsorted(np.cumsum(p), 0.999 * p.sum())] for nu, p in spectra]
    grid = np.linspace(0.0, min(spectra[0][0][-1], 1.5 * max(quantiles)), 2000)
    smoothed = []
    for nu, p in spectra:
        x = gaussian_filter1d(np.interp(grid, nu, p), smooth_cm1 / (grid[1] - grid[0]), mode="constant", truncate=4.0)
        smoothed.append(x / _trapezoid(x, grid))
    return _trapezoid(np.minimum(*smoothed), grid)


def _fcc_cu_bands_by_phonopy(calc, q_points):
    """Bands of fcc Cu (a = 3.6 Å) at ``q_points`` (fcc primitive basis) from phonopy driven directly."""
    fcc = [[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    return phonopy_bands_by_hand(calc, bulk("Cu", "fcc", a=3.6, cubic=True), q_points, fcc)


def test_evaluate_report_numbers_equal_ase_vibrations_and_errors_recomputed_by_hand(emt_teacher, tmp_path, monkeypatch):
    import ase.io
    import torch
    from conftest import rattled_cu

    from ffdistill.calculator import PotentialCalculator, load_student, save_student
    from ffdistill.data.labels import label_file
    from ffdistill.evaluate.report import Profile, evaluate_from_paths
    from ffdistill.evaluate.speed import replicas
    from ffdistill.students import build_student

    # The first test frame is the perfect crystal: the teacher's relaxation leaves it in place (zero forces
    # by symmetry), so the frequencies are those of fcc Cu at a = 3.6 Å, for the teacher and the student.
    perfect = bulk("Cu", "fcc", a=3.6, cubic=True)
    frames = [perfect] + [rattled_cu(k) for k in range(1, 4)]
    for k, atoms in enumerate(frames):
        atoms.info["group"] = k
    ase.io.write(tmp_path / "frames.extxyz", frames)
    store = label_file(emt_teacher, str(tmp_path / "frames.extxyz"), str(tmp_path / "s.zarr"), rows=6, progress=False)
    torch.manual_seed(0)
    model = build_student("painn-tiny", [29], cutoff=4.0)
    with torch.no_grad():
        model.readout[-1].weight.normal_(0.0, 0.01)  # an untrained but not force-free student, stable for 250 fs
    os.makedirs(tmp_path / "run")
    student = str(tmp_path / "run" / "best.pt")
    save_student(model, student)
    out = tmp_path / "eval"
    evaluate_from_paths(
        [student],
        str(tmp_path / "s.zarr"),
        "ase:ase.calculators.emt:EMT",
        str(out),
        profile=Profile(**TINY),
        phonon_cell=bulk("Cu", "fcc", a=3.6, cubic=True),
        threads=1,
    )
    metrics = json.loads((out / "metrics.json").read_text())["models"]
    assert set(metrics) == {"teacher", "run"}
    teacher, run = metrics["teacher"], metrics["run"]

    # Frequencies: ASE's Vibrations (4-point differences of each model's forces), translations projected by hand.
    h_teacher, ase_freqs = _ase_hessian(perfect, EMT(), "teacher", tmp_path, monkeypatch)
    calc = PotentialCalculator(load_student(student).double(), dtype=torch.float64)
    h_student, _ = _ase_hessian(perfect, calc, "student", tmp_path, monkeypatch)
    f_teacher = _internal_wavenumbers_by_hand(h_teacher, perfect.get_masses())
    f_student = _internal_wavenumbers_by_hand(h_student, perfect.get_masses())
    signed = np.where(np.abs(ase_freqs.imag) > 1e-9, -np.abs(ase_freqs.imag), ase_freqs.real)
    assert np.allclose(np.sort(signed[np.argsort(np.abs(signed))[3:]]), f_teacher, atol=1e-3)  # the hand units
    assert f_teacher.min() > 100 and np.abs(f_student).max() < 0.5 * f_teacher.min()  # far apart: a telling MAE
    # both sides are finite differences of the same forces (steps 1e-3 and 5e-3 Å): seen to agree to 1e-4 cm⁻¹
    assert run["frequency_mae_cm1"] == pytest.approx(np.abs(f_student - f_teacher).mean(), abs=0.01)
    assert teacher["imaginary_modes"] == 0 and run["imaginary_modes"] == int(np.sum(f_student < -10.0))
    assert teacher["frequency_mae_cm1"] is None and teacher["relax_steps"] == 0 and run["relaxed_rmsd_A"] < 1e-6

    # Accuracy on every store frame against the teacher's labels, in numpy (rows by central differences).
    e_err, f_err, h_err, step = [], [], [], 1e-4
    for i in range(len(store)):
        atoms, labels = store.frame(i)
        atoms.calc = calc
        e_err.append(abs(atoms.get_potential_energy() - labels["energy"]) / len(atoms))
        f_err.append(np.abs(atoms.get_forces() - labels["forces"]).ravel())
        for k, r in enumerate(labels["row_index"]):
            moved = []
            for sign in (1, -1):
                shifted = atoms.copy()
                shifted.positions[r // 3, r % 3] += sign * step
                shifted.calc = calc
                moved.append(shifted.get_forces())
            h_err.append(np.abs(-(moved[0] - moved[1]) / (2 * step) - labels["hessian_rows"][k]).ravel())
    assert run["force_mae_meV_per_A"] == pytest.approx(1000 * np.concatenate(f_err).mean(), rel=1e-4)
    assert run["energy_mae_meV_per_atom"] == pytest.approx(1000 * np.mean(e_err), rel=1e-4, abs=1e-3)
    assert run["hessian_row_mae"] == pytest.approx(np.concatenate(h_err).mean(), rel=1e-3)
    # The teacher is the yardstick here (its own labels): no made-up zeros.
    assert teacher["force_mae_meV_per_A"] is None and teacher["is_reference"]

    # MD, integrated again with ASE's own integrators from the same starts (the store's first frames), each model's
    # calculator as the evaluation builds it (the student in float32). The teacher's lengths follow its budget rule:
    # as many steps as teacher_md_budget_s pays for at its measured call time, at most the students' (by hand here).
    affordable = int(TINY["teacher_md_budget_s"] / (2 * teacher["seconds_per_force_call"]))
    teacher_steps = {k: max(10, min(TINY[k], affordable)) for k in ("nvt_steps", "nve_steps")}
    starts = [store.frame(i)[0] for i in range(2)]
    student32 = lambda: PotentialCalculator(load_student(student), dtype=torch.float32)  # noqa: E731
    nve = {"teacher": _nve_by_ase(starts[0], EMT(), teacher_steps["nve_steps"])}
    nve["run"] = _nve_by_ase(starts[0], student32(), TINY["nve_steps"])
    frames = {"teacher": _nvt_frames_by_ase(starts, EMT(), 1, teacher_steps["nvt_steps"])}
    frames["run"] = _nvt_frames_by_ase(starts, student32(), TINY["nvt_runs"], TINY["nvt_steps"])
    for name, runs, steps in (("teacher", 1, teacher_steps), ("run", TINY["nvt_runs"], TINY)):
        block = metrics[name]
        assert block["md_runs"] == runs and block["md_steps"] == steps["nvt_steps"] and block["md_check_interval"] == 1
        # an untrained student at 30 K stays within the bond and force limits for 20 fs, as EMT does
        assert block["md_stable_fraction"] == 1.0 and block["md_failures"] == [], name
        assert block["mean_time_to_instability_ps"] == pytest.approx(steps["nvt_steps"] / 1000, rel=1e-12)
        assert (
            block["nve_ps"] == pytest.approx(steps["nve_steps"] / 1000, rel=1e-12) and block["nve_failed_step"] is None
        )
        # deterministic integration, the same calculator: equal to rounding
        assert block["nve_drift_meV_per_atom_per_ps"] == pytest.approx(nve[name]["drift"], rel=1e-6, abs=1e-12), name
        assert block["nve_drift_uncertainty"] == pytest.approx(nve[name]["uncertainty"], rel=1e-6, abs=1e-12), name
        assert block["nve_fluctuation_meV_per_atom"] == pytest.approx(nve[name]["fluctuation"], rel=1e-6), name
        half = (steps["nve_steps"] + 1) // 2  # velocities at every step: the VDOS of each half resolves 1 / (half fs)
        assert block["vdos_resolution_cm1"] == pytest.approx(1 / (half * 1e-15 * units._c * 100), rel=1e-9)
    assert abs(nve["teacher"]["drift"]) > 1e-5 and nve["run"]["drift"] != 0  # numbers, not zeros by construction
    rdf_mae = np.abs(_rdf_by_hand(frames["run"]) - _rdf_by_hand(frames["teacher"])).mean()
    assert len(frames["run"]) == 4 and run["rdf_mae_vs_teacher"] == pytest.approx(rdf_mae, rel=1e-9)
    overlap = _vdos_overlap_by_hand(nve["run"]["velocities"], nve["teacher"]["velocities"], perfect.get_masses())
    assert 0.05 < overlap < 0.95 and run["vdos_overlap_vs_teacher"] == pytest.approx(overlap, abs=1e-6)
    assert teacher["rdf_mae_vs_teacher"] is None and teacher["vdos_overlap_vs_teacher"] is None

    # Phonons: phonopy driven directly along ASE's standard fcc path, the student in float64 (the evaluation's
    # float32 moves its bands by < 0.05 cm⁻¹). Γ of a one-atom primitive cell has only the three acoustic zeros.
    path = bulk("Cu", "fcc", a=3.6).cell.bandpath(npoints=100)
    q = np.concatenate([path.kpts, np.zeros((1, 3))])
    bands = {"teacher": _fcc_cu_bands_by_phonopy(EMT(), q), "run": _fcc_cu_bands_by_phonopy(calc, q)}
    band_mae = np.abs(bands["run"][:-1] - bands["teacher"][:-1]).mean()
    assert band_mae > 100 and run["phonon_band_mae_cm1"] == pytest.approx(band_mae, abs=0.05)
    gamma_mae = np.abs(bands["run"][-1] - bands["teacher"][-1]).mean()
    assert run["phonon_gamma_mae_cm1"] == pytest.approx(gamma_mae, abs=0.05)
    for name in ("teacher", "run"):
        assert metrics[name]["phonon_min_cm1"] == pytest.approx(bands[name][:-1].min(), abs=0.05), name
    assert teacher["phonon_band_mae_cm1"] is None and teacher["phonon_gamma_mae_cm1"] is None

    # Timing cannot be recomputed, but what is derived from it can: speed-up, ns/day, the growth sizes.
    for block in (teacher, run):
        assert 0 < block["seconds_per_force_call"] < 10 and block["timing_threads"] == 1
        assert block["ns_per_day"] == pytest.approx(block["md_steps_per_second"] * 1e-6 * 86400, rel=1e-12)
        assert set(block["cost_growth_s_per_call"]) == {str(len(perfect) * replicas(perfect, t) ** 3) for t in (8, 32)}
        assert all(0 < t < 10 for t in block["cost_growth_s_per_call"].values())
    assert teacher["speedup_vs_teacher"] == 1.0
    assert run["speedup_vs_teacher"] == pytest.approx(teacher["seconds_per_force_call"] / run["seconds_per_force_call"])
    assert {"4", "32"} == set(run["cost_growth_s_per_call"])  # 8 atoms -> 1 cell of 4, 32 -> 2x2x2 cells

    # The plots the report names are the ones written, each a PNG.
    plots = ["nve_energy.png", "frequencies.png", "rdf.png", "vdos.png", "phonons.png", "cost_growth.png"]
    for name in plots:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    report = (out / "report.md").read_text()
    assert "Plots: " + ", ".join(f"`{p}`" for p in plots) + "." in report
    assert "Verdict" in report and "| teacher | reference | reference |" in report
    assert (
        "a bond more than 8× the bonds' root-mean-square change over the first 200 steps, clamped to 0.5–1.0 Å "
        "(1.0 Å during those steps), from the median start length of its kind, or |F| > 50 eV/Å, checked every step"
        in report
    )
    assert "(limit 1)" in report


def test_teacher_error_is_measured_against_reference_labels(emt_teacher, tmp_path):
    """Frames that carry their own labels (here EMT × 1.1, standing in for DFT): the teacher is scored
    against them, and its error is exactly the 10 % it differs by."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from ffdistill.data.labels import label_file
    from ffdistill.evaluate.accuracy import load_test_set, teacher_accuracy

    frames, expected_f, expected_e = [], [], []
    for k in range(3):
        atoms = copper((1, 1, 1))
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=1.1 * e, forces=1.1 * f)
        frames.append(atoms)
        expected_f.append(np.abs(0.1 * f).mean())
        expected_e.append(abs(0.1 * e) / len(atoms))
    ase.io.write(tmp_path / "dft.extxyz", frames)
    label_file(emt_teacher, str(tmp_path / "dft.extxyz"), str(tmp_path / "s.zarr"), rows=0, progress=False)
    for source in (tmp_path / "s.zarr", tmp_path / "dft.extxyz"):  # a label store, or the labelled file itself
        test = load_test_set(str(source), emt_teacher)
        assert not test.teacher_is_reference, source
        got = teacher_accuracy(emt_teacher, test)
        assert got["force_mae_meV_per_A"] == pytest.approx(1000 * np.mean(expected_f), rel=1e-6)
        assert got["energy_mae_meV_per_atom"] == pytest.approx(1000 * np.mean(expected_e), rel=1e-6)
    frames[0].calc = None  # one frame without its own labels: the teacher labels them all and is the reference
    ase.io.write(tmp_path / "mixed.extxyz", frames)
    assert load_test_set(str(tmp_path / "mixed.extxyz"), emt_teacher).teacher_is_reference


def _g(value: float) -> dict:
    return {"g": np.full(50, value)}


def _models(rdf_gap=0.14, teacher_halves=(1.0, 1.04), drift=1.3, drift_u=0.2, stable=3):
    """A student and a teacher with constant g(r) (so every MAE is a difference of constants) and no VDOS."""
    teacher = {"role": "teacher", "_rdf": _g(1.0), "_rdf_halves": tuple(_g(v) for v in teacher_halves)}
    student = {
        "role": "student",
        "md_runs": 3,
        "md_stable_runs": stable,
        "md_total_ps": 0.3 * stable,
        "nve_failed_step": None,
        "nve_drift_meV_per_atom_per_ps": drift,
        "nve_drift_uncertainty": drift_u,
        "_rdf": _g(1.0 + rdf_gap),
        "_rdf_halves": (_g(1.0), _g(1.02)),
        "speedup_vs_teacher": 20.0,
    }
    return student, teacher


@pytest.mark.parametrize(
    "changes, status",
    [
        # RDF: value 0.14, u_s = 0.02 / 2, u_t = 0.04 / 2, u_c = 0.02236: 0.14 - 0.1 = 0.04 <= 2 u_c = 0.0447
        ({}, {"NVE drift": "passed", "RDF": "passed"}),  # drift: 1.3 - 1 = 0.3 <= 2 · 0.2
        ({"rdf_gap": 0.15}, {"RDF": "failed"}),  # 0.05 > 0.0447
        ({"drift": -1.5}, {"NVE drift": "failed"}),  # 0.5 > 0.4
        ({"teacher_halves": (1.0, 1.12)}, {"RDF": "not measurable in this budget"}),  # u_t = 0.06 > 0.1 / 2
        ({"stable": 2}, {"NVT stability": "failed"}),
    ],
)
def test_md_checks_pass_within_the_limit_plus_twice_the_uncertainty_worked_out_by_hand(changes, status):
    from ffdistill.evaluate.checks import md_checks
    from ffdistill.evaluate.tables import in_words, verdict

    student, teacher = _models(**changes)
    checks = {c["name"]: c for c in md_checks(student, teacher)}
    for name, expected in status.items():
        assert checks[name]["status"] == expected, (name, checks[name])
    assert checks["RDF"]["yardstick_uncertainty"] == pytest.approx(
        (changes.get("teacher_halves", (1, 1.04))[1] - 1) / 2
    )
    student["checks"] = list(checks.values())
    text = verdict({"teacher": teacher, "s": student})
    failed = [c["name"] for c in checks.values() if c["status"] == "failed"]
    unmeasured = [c["name"] for c in checks.values() if c["status"] == "not measurable in this budget"]
    assert "**teacher**" not in text  # the yardstick gets no verdict
    if failed:
        assert f"NOT fit for MD: {', '.join(failed)} failed" in text
    elif unmeasured:
        assert "no check failed; not measurable in this budget: RDF" in text and "NOT" not in text
        assert "not established" in in_words({"s": student}) and "RDF" in in_words({"s": student})
    assert "(limit 1)" in text and "(limit 0.1" in text  # every threshold shown with its value


def test_a_stretched_bond_of_a_hot_start_relaxing_is_no_blowup_but_a_broken_one_is():
    from ase.build import bulk
    from ase.calculators.calculator import Calculator, all_changes

    from ffdistill.evaluate.md import Blowup, StabilityMonitor

    class Flat(Calculator):  # no forces: only the bond criterion can fire
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            self.results = {"energy": 0.0, "forces": np.zeros((len(self.atoms), 3))}

    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.calc = Flat()
    ideal = atoms.positions.copy()
    atoms.positions[0] += [0.3, 0.3, 0.3]  # a hot start: one of atom 0's bonds squeezed by 0.52 Å
    monitor = StabilityMonitor(atoms)
    atoms.positions = ideal  # it relaxes back to the lattice: every bond within 0.5 Å of the typical length
    monitor.check(1)
    atoms.positions[0] += [0.6, 0.6, 0.6]  # now torn ~1 Å out of its site
    with pytest.raises(Blowup, match="bond"):
        monitor.check(2)


def test_the_bond_tolerance_widens_to_the_thermal_motion_seen_in_the_warm_up_and_no_further():
    """Every bond of a cell strained by ±ε changes by L·ε (L the bond length): over the 200-step warm-up (tolerance
    1 Å) the root-mean-square change is L·ε, so the tolerance becomes 8·L·ε (by hand), never below 0.5 Å nor above
    1 Å."""
    from ase.build import bulk
    from ase.calculators.calculator import Calculator, all_changes

    from ffdistill.evaluate.md import Blowup, StabilityMonitor

    class Flat(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            self.results = {"energy": 0.0, "forces": np.zeros((len(self.atoms), 3))}

    def monitor_after_warmup(rms_change: float):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True)
        atoms.calc = Flat()
        cell, bond = atoms.cell.array.copy(), 5.43 * np.sqrt(3) / 4
        monitor = StabilityMonitor(atoms)
        for step in range(201):
            atoms.set_cell(cell * (1 + (-1) ** step * rms_change / bond), scale_atoms=True)
            monitor.check(step)
        return atoms, cell, bond, monitor

    def strain_to(atoms, cell, bond, change):
        atoms.set_cell(cell * (1 + change / bond), scale_atoms=True)

    atoms, cell, bond, monitor = monitor_after_warmup(0.3)  # 0.3 Å < 1 Å: passes the warm-up; 8 × 0.3 = 2.4 > 1
    assert monitor.tolerance == 1.0  # capped: a free drift must still fail
    atoms, cell, bond, monitor = monitor_after_warmup(0.1)  # 8 × 0.1 Å = 0.8 Å
    assert monitor.tolerance == pytest.approx(0.8, rel=1e-9)
    strain_to(atoms, cell, bond, 0.75)
    monitor.check(201)
    strain_to(atoms, cell, bond, 0.85)
    with pytest.raises(Blowup, match=r"0.85 Å > 0.8 Å"):
        monitor.check(202)
    assert monitor_after_warmup(0.02)[3].tolerance == 0.5  # 8 × 0.02 = 0.16 Å: stays at 0.5 Å
