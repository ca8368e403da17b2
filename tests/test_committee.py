"""Committees: means and spreads recomputed from the members by hand, a calibration scale by hand, a file that
loads with weights_only, train.committee=K, and MD that keeps the frames it is unsure of and stops."""

import os

import ase.io
import numpy as np
import pytest
import torch
from conftest import rattled_cu

from ffdistill.calculator import PotentialCalculator, load_calculator, load_student, save_student
from ffdistill.cli import main
from ffdistill.config import load_config
from ffdistill.data.frames import split_indices
from ffdistill.data.labels import LabelStore
from ffdistill.evaluate.uncertainty import calibration
from ffdistill.students import build_student
from ffdistill.students.committee import Committee, calibration_scale
from ffdistill.training.trainer import train_from_config


def _members(k=3):
    members = []
    for seed in range(k):
        torch.manual_seed(seed)
        member = build_student("painn-tiny", [29], 4.0).double()
        with torch.no_grad():  # a fresh read-out is zero: give each member its own non-trivial function
            for p in member.parameters():
                p.add_(0.3 * torch.randn_like(p))
        members.append(member)
    return members


def test_committee_results_are_the_members_means_and_spread_by_hand():
    members = _members()
    committee = Committee(members, scale=1.7)
    atoms = rattled_cu(3)
    atoms.calc = PotentialCalculator(committee, dtype=torch.float64)
    forces, stress, energy = atoms.get_forces(), atoms.get_stress(), atoms.get_potential_energy()
    results = atoms.calc.results
    each = []
    for m in members:
        one = atoms.copy()
        one.calc = PotentialCalculator(m, dtype=torch.float64)
        each.append((one.get_potential_energy(), one.get_forces(), one.get_stress()))
    energies, member_forces, stresses = (np.array([e[i] for e in each]) for i in range(3))
    np.testing.assert_allclose(energy, energies.mean(), rtol=1e-12)
    np.testing.assert_allclose(forces, member_forces.mean(0), atol=1e-12)
    np.testing.assert_allclose(stress, stresses.mean(0), atol=1e-12)
    spread = np.sqrt(np.mean([np.sum((f - member_forces.mean(0)) ** 2, axis=1) for f in member_forces], axis=0))
    np.testing.assert_allclose(results["force_deviation"], 1.7 * spread, rtol=1e-10)
    assert results["energy_std"] == pytest.approx(1.7 * np.std(energies), rel=1e-10)
    assert spread.max() > 0  # members that differ: the test can fail


def test_a_committee_file_is_plain_data_and_loads_as_a_committee(tmp_path):
    path = str(tmp_path / "committee.pt")
    save_student(Committee(_members(2), scale=2.5), path, note="x")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "ffdistill-committee" and len(payload["members"]) == 2
    loaded = load_student(path)
    assert isinstance(loaded, Committee) and float(loaded.scale) == 2.5
    atoms = rattled_cu(1)
    ours, theirs = atoms.copy(), atoms.copy()
    ours.calc, theirs.calc = (
        load_calculator(path),
        PotentialCalculator(Committee([m.float() for m in _members(2)], 2.5)),
    )
    np.testing.assert_allclose(ours.get_forces(), theirs.get_forces(), rtol=1e-5)  # float32 both


def test_the_calibration_scale_is_the_maximum_likelihood_scale_by_hand():
    rng = np.random.default_rng(0)
    deviation = rng.uniform(0.1, 1.0, 2000)
    errors = rng.normal(size=(2000, 3)) * (3.0 * deviation / np.sqrt(3))[:, None]  # true scale 3
    scale = calibration_scale(errors, deviation)
    assert scale == pytest.approx(np.sqrt(np.mean(np.sum(errors**2, 1) / deviation**2)), rel=1e-12)
    assert scale == pytest.approx(3.0, rel=0.05)
    for other in (0.97 * scale, 1.03 * scale):  # a maximum of the Gaussian likelihood
        assert _log_likelihood(errors, deviation, other) < _log_likelihood(errors, deviation, scale)


def _log_likelihood(errors, deviation, scale):
    variance = (scale * deviation) ** 2 / 3
    return float(np.sum(-1.5 * np.log(2 * np.pi * variance) - np.sum(errors**2, 1) / (2 * variance)))


def test_calibration_metrics_by_hand():
    deviation = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    error = np.array([0.1, 0.5, 0.2, 0.9, 1.2])  # ranks 1 3 2 4 5 against 1 2 3 4 5
    found = calibration(deviation, error, resamples=200)
    assert found["spearman"] == pytest.approx(1 - 6 * 2 / (5 * (25 - 1)))
    assert found["fraction_error_above_2x_deviation"] == pytest.approx(3 / 5)  # 0.5 > 0.4, 0.9 > 0.8, 1.2 > 1
    low, high = found["spearman_ci95"]
    assert low <= found["spearman"] <= high


@pytest.fixture(scope="module")
def committee_run(emt_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("committee") / "run"
    overrides = [f"data.store={emt_store}", f"output={out}", "model.student=painn-tiny", "model.cutoff=4.0"]
    overrides += ["train.max_steps=40", "train.validate_every=10", "data.batch_size=4", "loss.hessian=0"]
    overrides += ["train.lr=5e-3", "train.committee=3", "data.val_fraction=0.25"]
    config = load_config(None, overrides)
    return config, train_from_config(config, progress=False)


def test_train_committee_saves_k_members_calibrated_on_the_validation_frames(committee_run):
    config, result = committee_run
    committee = load_student(result.best_path)
    assert isinstance(committee, Committee) and len(committee.members) == 3
    seeds = [torch.load(os.path.join(config.output, f"member_{k}", "best.pt"))["metadata"] for k in range(3)]
    assert len(seeds) == 3
    store = LabelStore(config.data.store)
    _, val_idx, _ = split_indices(store.groups(), 0.25, 0.0, config.data.split_seed)
    errors, spreads = [], []
    for i in val_idx:  # recomputed through ASE with each member's own calculator
        atoms, labels = store.frame(int(i))
        forces = []
        for k in range(3):
            one = atoms.copy()
            one.calc = load_calculator(os.path.join(config.output, f"member_{k}", "best.pt"))
            forces.append(one.get_forces())
        forces = np.array(forces)
        errors.append(forces.mean(0) - labels["forces"])
        spreads.append(np.sqrt(np.mean(np.sum((forces - forces.mean(0)) ** 2, -1), 0)))
    errors, spreads = np.concatenate(errors), np.concatenate(spreads)
    expected = np.sqrt(np.mean(np.sum(errors**2, 1) / spreads**2))
    assert float(committee.scale) == pytest.approx(expected, rel=1e-3)
    assert result.best_force_mae == pytest.approx(np.abs(errors).mean(), rel=1e-3)


def test_md_with_a_committee_keeps_the_unsure_frames_and_stops_when_pushed_out_of_its_domain(
    committee_run, tmp_path, capsys
):
    _, result = committee_run
    start = rattled_cu(0)
    ase.io.write(tmp_path / "start.extxyz", start)
    atoms = start.copy()
    atoms.calc = load_calculator(result.best_path)
    atoms.get_forces()
    at_start = float(atoms.calc.results["force_deviation"].max())
    out = str(tmp_path / "hot.traj")
    argv = ["md", result.best_path, str(tmp_path / "start.extxyz"), "--temperature", "3000", "--steps", "400"]
    argv += ["--uncertainty-threshold", f"{1.2 * at_start}", "--uncertainty-stop", f"{2 * at_start}"]
    argv += ["--uncertainty-interval", "2", "--interval", "2", "-o", out, "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "stopped at step" in printed and "above the stop threshold" in printed, printed
    log = np.loadtxt(out + ".uncertainty.log")
    assert log[-1, 1] > 2 * at_start and (log[:-1, 1] <= 2 * at_start).all()
    kept = ase.io.read(out + ".uncertain.extxyz", ":")
    above = log[log[:, 1] > 1.2 * at_start]
    assert [a.info["md_step"] for a in kept] == [int(s) for s in above[:, 0]]
    assert kept[0].calc is None or "forces" not in kept[0].calc.results  # structures only, ready for label


def test_md_uncertainty_needs_a_committee(tmp_path, capsys):
    path = str(tmp_path / "one.pt")
    save_student(build_student("painn-tiny", [29], 4.0), path)
    ase.io.write(tmp_path / "s.extxyz", rattled_cu(0))
    argv = ["md", path, str(tmp_path / "s.extxyz"), "--uncertainty-threshold", "0.1", "-o", str(tmp_path / "o.traj")]
    assert main([*argv, "-q"]) == 2
    assert "needs a committee" in capsys.readouterr().err


def test_lammps_dumps_the_committees_per_atom_deviation(tmp_path):
    from ffdistill.deploy.lammps import run_lammps

    path = str(tmp_path / "committee.pt")
    save_student(Committee([m.float() for m in _members(2)], scale=1.5), path)
    atoms = rattled_cu(2)
    dump = tmp_path / "deviation.dump"
    commands = [f"dump d all custom 1 {dump} id d_force_deviation", "dump_modify d sort id"]
    run_lammps(path, atoms, commands, steps=0)
    lines = dump.read_text().splitlines()
    values = np.array([float(line.split()[1]) for line in lines[lines.index("ITEM: ATOMS id d_force_deviation") + 1 :]])
    expected = atoms.copy()
    expected.calc = load_calculator(path)
    expected.get_forces()
    np.testing.assert_allclose(values, expected.calc.results["force_deviation"], rtol=1e-5)
    assert values.max() > 0


def test_evaluate_reports_the_committees_calibration_recomputed_by_hand(committee_run, emt_store, tmp_path):
    import json

    from ffdistill.evaluate.uncertainty import spearman

    _, result = committee_run
    out = tmp_path / "eval"
    argv = ["evaluate", result.best_path, "--data", emt_store, "--teacher", "ase:ase.calculators.emt:EMT"]
    argv += ["--profile", "quick", "--md-steps", "20", "--md-runs", "1", "-o", str(out), "-q"]
    assert main(argv) == 0
    found = json.load(open(out / "metrics.json"))["models"]
    committee = next(m for m in found.values() if "uncertainty" in m)["uncertainty"]
    store, calc = LabelStore(emt_store), load_calculator(result.best_path)
    deviation, error = [], []
    for i in range(len(store)):  # per frame through ASE: the largest per-atom deviation and error
        atoms, labels = store.frame(i)
        atoms.calc = calc
        error.append(np.linalg.norm(atoms.get_forces() - labels["forces"], axis=1).max())
        deviation.append(atoms.calc.results["force_deviation"].max())
    deviation, error = np.array(deviation), np.array(error)
    assert committee["frames"] == len(store)
    assert committee["spearman"] == pytest.approx(spearman(deviation, error), abs=1e-6)
    assert committee["fraction_error_above_2x_deviation"] == pytest.approx(np.mean(error > 2 * deviation))
    assert any(p.name.startswith("calibration_") for p in out.iterdir())
