"""Physical soundness checks, on EMT and a deliberately broken potential."""

import json
import os

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.vibrations import Vibrations

from ffdistill.errors import FFDistillError
from ffdistill.simulate import Blowup, frequencies_cm1, md_stability, nve_energy_drift, run_md

#: EMT copper, 32 atoms, 300 K, 1 fs: drift seen here ~0.01 meV/atom/ps; 1 is a loose but telling bound.
EMT_DRIFT_BOUND = 1.0  # meV/atom/ps
#: Project Hessian (central differences, h = 1e-3 Å) vs ASE Vibrations (same step): cm⁻¹.
FREQUENCY_TOLERANCE = 0.5


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
    monkeypatch.chdir(tmp_path)
    atoms.calc = EMT()
    vib = Vibrations(atoms, delta=1e-3, nfree=2)
    vib.run()
    theirs = np.sort([f.real if abs(f.imag) < 1e-9 else -abs(f.imag) for f in vib.get_frequencies()])
    assert np.abs(ours - theirs).max() < FREQUENCY_TOLERANCE, (ours, theirs)
    assert ours[-1] > 100  # real optical modes, not zeros


def test_md_command_stops_with_a_clear_message_on_blowup(tmp_path):
    with pytest.raises(Blowup, match="step .*: (a bond changed|forces blew up)"):
        run_md(UphillEMT(), copper(), "nve", 300, 500, str(tmp_path / "x.traj"), progress=False)
    assert issubclass(Blowup, FFDistillError)


def test_md_resumes_from_its_trajectory(tmp_path):
    traj = str(tmp_path / "md.traj")
    run_md(EMT(), copper((1, 1, 1)), "nvt", 300, 40, traj, interval=10, progress=False)
    ran = run_md(EMT(), copper((1, 1, 1)), "nvt", 300, 60, traj, interval=10, resume=True, progress=False)
    from ase.io import read

    assert ran == 20 and len(read(traj, ":")) == 7


def test_evaluate_writes_report_and_all_metrics(emt_store, tmp_path):
    from ffdistill.config import load_config
    from ffdistill.report import evaluate_from_paths
    from ffdistill.train import train_from_config

    config = load_config(None, [f"data.store={emt_store}", f"output={tmp_path / 'run'}", "model.student=painn-tiny", "model.cutoff=4.0", "train.epochs=2"])
    student = train_from_config(config, progress=False).best_path
    out = tmp_path / "eval"
    evaluate_from_paths([student], emt_store, "ase:ase.calculators.emt:EMT", str(out), md_steps=20, md_runs=2)
    metrics = json.load(open(out / "metrics.json"))["models"]
    assert set(metrics) == {"teacher", "run"}
    required = {"energy_mae_meV_per_atom", "force_mae_meV_per_A", "hessian_row_mae", "seconds_per_force_call", "speedup_vs_teacher", "md_stable_fraction", "mean_time_to_instability_ps", "nve_drift_meV_per_atom_per_ps", "frequency_mae_cm1", "relaxed_rmsd_A", "md_steps_per_second"}
    for name, block in metrics.items():
        assert required <= set(block), (name, required - set(block))
    assert metrics["teacher"]["frequency_mae_cm1"] == 0 and metrics["run"]["force_mae_meV_per_A"] > 0
    for name in ("report.md", "nve_energy.png", "frequencies.png"):
        assert os.path.getsize(out / name) > 0
    assert "Verdict" in open(out / "report.md").read()
