"""On-policy distillation: a round labels the student-visited frames the ensemble disputes most,
trains on the union without re-labelling, and a re-run resumes instead of repeating work."""

import json
import os

import ase.io
import numpy as np
import pytest

import ffdistill.workflows.onpolicy as onpolicy
from ffdistill.config import load_config
from ffdistill.data.labels import LabelStore
from ffdistill.workflows.onpolicy import OnPolicySettings, distill, force_disagreement


def _config(store, out):
    # Cheapest student that still learns: no Hessian term (rows are stored, and counted, all the same).
    overrides = [
        f"data.store={store}",
        f"output={out}",
        "model.student=painn-tiny",
        "model.cutoff=3.0",
        "train.epochs=2",
        "train.warmup_steps=1",
        "data.batch_size=8",
        "loss.hessian=0",
        "train.lr=1e-2",
    ]
    return load_config(None, overrides)


SETTINGS = OnPolicySettings(
    teacher="ase:ase.calculators.emt:EMT",
    rounds=2,
    ensemble=2,
    new_frames=3,
    md_steps=30,
    md_interval=10,
    md_temperature=300.0,
    threshold=0.0,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """12 EMT-labelled 8-atom Cu frames in groups of two, with one Hessian row each."""
    from conftest import rattled_cu

    from ffdistill.data.labels import label_file
    from ffdistill.teachers import load_teacher

    folder = tmp_path_factory.mktemp("onpolicy_store")
    frames = [rattled_cu(k) for k in range(12)]
    for k, atoms in enumerate(frames):
        atoms.info["group"] = k // 2
    ase.io.write(folder / "cu12.extxyz", frames, format="extxyz")
    teacher = load_teacher("ase:ase.calculators.emt:EMT")
    label_file(teacher, str(folder / "cu12.extxyz"), str(folder / "cu12.zarr"), rows=1, progress=False)
    return str(folder / "cu12.zarr")


@pytest.fixture(scope="module")
def finished(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("onpolicy") / "run"
    rounds = distill(_config(store, str(out)), SETTINGS, progress=False)
    return str(out), rounds


def test_one_round_labels_the_most_disputed_frames_of_the_students_md(finished):
    out, rounds = finished
    visited = ase.io.read(os.path.join(out, "round_0", "candidates.extxyz"), ":")
    picked = [a for a in visited if a.info["picked"]]
    passed = [a for a in visited if not a.info["picked"]]
    assert len(picked) == SETTINGS.new_frames == rounds[0]["new_frames"] and passed
    assert min(a.info["disagreement"] for a in picked) >= max(a.info["disagreement"] for a in passed)
    assert all(a.info["md_student"].startswith("student_") and a.info["md_step"] > 0 for a in picked)
    new = LabelStore(os.path.join(out, "round_0", "new.zarr"))
    pool = LabelStore(os.path.join(out, "pool.zarr"))
    for i in range(len(new)):
        atoms, _ = new.frame(i)
        assert any(np.allclose(atoms.positions, a.positions) for a in picked), "a labelled frame the MD did not visit"
        assert not any(np.allclose(atoms.positions, pool.frame(j)[0].positions, atol=1e-3) for j in range(len(pool)))


def test_next_round_trains_on_the_union_and_the_report_counts_teacher_calls(finished):
    out, rounds = finished
    pool, new = LabelStore(os.path.join(out, "pool.zarr")), LabelStore(os.path.join(out, "round_0", "new.zarr"))
    union = LabelStore(rounds[1]["train_store"])
    assert len(union) == len(pool) + len(new) == rounds[1]["train_frames"]
    groups = union.groups()
    assert not set(groups[: len(pool)]) & set(groups[len(pool) :]), "a new trajectory merged into a pool group"
    heldout = LabelStore(os.path.join(out, "heldout.zarr"))
    assert not set(heldout.groups()) & set(pool.groups()), "the held-out split cut a group"
    last = union.frame(len(union) - 1)[1]
    np.testing.assert_array_equal(last["forces"], new.frame(len(new) - 1)[1]["forces"])  # copied, not recomputed
    fd_rows = 2  # EMT's Hessian rows are central differences: two force calls each
    pool_cost = len(pool) + fd_rows * int(pool.n_rows.sum())
    new_cost = len(new) + fd_rows * int(new.n_rows.sum())
    assert rounds[0]["teacher_calls_cumulative"] == pool_cost + new_cost == rounds[1]["teacher_calls_cumulative"]
    assert rounds[1]["new_frames"] == 0, "the last round only trains and measures"
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    for r, reported in enumerate(metrics["rounds"]):  # recomputed against EMT itself, not the held-out store
        assert reported["heldout_force_mae_meV_per_A"] == pytest.approx(_heldout_mae_by_hand(out, r), rel=1e-5)
    assert "teacher calls" in open(os.path.join(out, "report.md")).read()


def _heldout_mae_by_hand(out, r):
    from ase.calculators.emt import EMT

    from ffdistill.calculator import load_calculator

    heldout = LabelStore(os.path.join(out, "heldout.zarr"))
    frames = [heldout.frame(i)[0] for i in range(len(heldout))]
    errors = []
    for k in range(SETTINGS.ensemble):
        student = load_calculator(os.path.join(out, f"round_{r}", f"student_{k}", "best.pt"))
        for atoms in frames:
            teacher = EMT().get_forces(atoms.copy())
            errors.append(1000 * np.abs(student.get_forces(atoms.copy()) - teacher).mean())
    return float(np.mean(errors))  # equal atoms per frame: the mean of frame means is the mean over atoms


def _cli_distill(store, out):
    overrides = [f"data.store={store}", f"output={out}", "model.student=painn-tiny", "model.cutoff=3.0"]
    overrides += ["train.epochs=2", "train.warmup_steps=1", "data.batch_size=8", "loss.hessian=0", "train.lr=1e-2"]
    args = ["--rounds", "2", "--ensemble", "2", "--new-frames", "3", "--md-steps", "30", "--md-temperature", "300"]
    return ["distill", *overrides, *args, "--threshold", "0", "--teacher", "ase:ase.calculators.emt:EMT"]


def test_distill_killed_before_a_round_is_recorded_resumes_to_the_uninterrupted_rounds(store, tmp_path):
    from conftest import run_cli

    assert run_cli(_cli_distill(store, tmp_path / "straight")).returncode == 0
    argv = _cli_distill(store, tmp_path / "killed")
    assert run_cli(argv, fault="distill.round:1").returncode == -9
    assert not os.path.exists(tmp_path / "killed" / "round_0" / "round.json")
    assert run_cli(argv).returncode == 0
    straight, resumed = (json.load(open(tmp_path / n / "metrics.json"))["rounds"] for n in ("straight", "killed"))
    for a, b in zip(straight, resumed, strict=True):
        assert b["train_frames"] == a["train_frames"] and b["teacher_calls_cumulative"] == a["teacher_calls_cumulative"]
        assert b["heldout_force_mae_meV_per_A"] == pytest.approx(a["heldout_force_mae_meV_per_A"], rel=1e-5)


def test_a_rerun_resumes_without_repeating_finished_rounds(finished, store, monkeypatch):
    out, rounds = finished
    os.remove(os.path.join(out, "round_1", "round.json"))  # as if interrupted after round 1's training
    monkeypatch.setattr(onpolicy, "label_new_frames", lambda *a, **k: pytest.fail("re-labelled frames"))
    again = distill(_config(store, out), SETTINGS, progress=False)
    assert again[0] == rounds[0]
    assert again[1]["heldout_force_mae_meV_per_A"] == pytest.approx(rounds[1]["heldout_force_mae_meV_per_A"])


def test_disagreement_is_the_largest_per_atom_spread():
    same = np.ones((3, 4, 3))
    assert force_disagreement(same) == 0.0
    spread = same.copy()
    spread[0, 2] += [0.3, 0.0, 0.0]
    spread[1, 2] -= [0.3, 0.0, 0.0]
    assert force_disagreement(spread) == pytest.approx(np.sqrt(2 * 0.09 / 3))


def test_cli_distill_reports_per_round_and_resumes_a_finished_run(finished, store, capsys):
    from ffdistill.cli import main

    out, rounds = finished
    overrides = [f"data.store={store}", f"output={out}", "model.student=painn-tiny", "model.cutoff=3.0"]
    overrides.append("train.epochs=2")
    args = ["--rounds", "2", "--ensemble", "2", "--new-frames", "3", "--md-steps", "30", "--md-temperature", "300"]
    args += ["--threshold", "0", "--teacher", "ase:ase.calculators.emt:EMT", "-q"]
    assert main(["distill", *overrides, *args]) == 0
    printed = capsys.readouterr().out
    assert "| round |" in printed and "2 rounds" in printed
    assert json.load(open(os.path.join(out, "metrics.json")))["teacher_calls"] == rounds[-1]["teacher_calls_cumulative"]


class _KnownForces:
    """A stand-in teacher whose forces are zero, so the ensemble mean's own size is its true error."""

    has_autograd = True

    def label(self, atoms):
        from types import SimpleNamespace

        return SimpleNamespace(forces=np.zeros((len(atoms), 3)))


def test_spot_check_picks_the_truly_worst_of_the_most_disputed_and_counts_its_calls(monkeypatch):
    from ase.build import bulk

    candidates = [bulk("Cu", cubic=True) for _ in range(5)]
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.05])  # disputed order: 0, 1, 2
    wrong = {0: 0.1, 1: 2.0, 2: 1.0, 3: 9.0, 4: 9.0}  # truly worst: 3 and 4, but never spot-checked
    predictions = {id(c): np.full((2, 4, 3), wrong[k]) for k, c in enumerate(candidates)}
    monkeypatch.setattr(onpolicy, "ensemble_forces", lambda students, frames: [predictions[id(f)] for f in frames])
    settings = OnPolicySettings(new_frames=2, spot_check=3)
    picked, calls = onpolicy.pick_frames(candidates, scores, ["a", "b"], _KnownForces(), settings)
    assert picked == [1, 2] and calls == 3
    assert onpolicy.pick_frames(candidates, scores, ["a", "b"], None, OnPolicySettings(new_frames=2)) == ([0, 1], 0)


def test_distill_refuses_a_teacher_other_than_the_stores_in_one_line(finished, store, capsys):
    from ffdistill.cli import main

    out, _ = finished
    assert main(["distill", f"data.store={store}", f"output={out}", "--teacher", "morse", "-q"]) == 2
    error = capsys.readouterr().err.strip()
    assert "labelled by ase:ase.calculators.emt:EMT, not by morse" in error and "\n" not in error
    # no --teacher: the parser refuses, the store's own spec is never run
    assert main(["distill", f"data.store={store}", f"output={out}", "-q"]) == 2
    assert "--teacher" in capsys.readouterr().err
