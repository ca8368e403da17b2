"""``ffdistill demo``: SevenNet-0 distilled into a fast PaiNN student on a 64-atom silicon cell.

Steps (each skipped when its output already exists, so an interrupted demo resumes):

1. sample frames with teacher Langevin MD at 300/600/900 K plus rattled and strained copies;
2. label them with energies, forces, stress and K = 4 random Hessian rows per frame;
3. train an undistilled (λH = 0) and a Hessian-distilled student with identical settings and seeds;
4. evaluate teacher and students on held-out frames, time them on the same structure, print the table.
"""

from __future__ import annotations

import dataclasses
import os
import time

from ase.build import bulk

from ffdistill.config import DataConfig, LossConfig, ModelConfig, RunConfig, TrainConfig
from ffdistill.data import split_indices
from ffdistill.labels import LabelStore, label_file
from ffdistill.sampling import sample_to_file
from ffdistill.train import train_from_config

TEACHER = "sevenn"
STRUCTURE = "Si"  # 64-atom diamond silicon
ROWS_PER_FRAME = 4


@dataclasses.dataclass
class DemoPlan:
    n_frames: int = 32  #: 20 train, 4 validation, 8 test
    test_fraction: float = 8 / 32
    val_fraction: float = 4 / 32
    epochs: int = 90
    temperatures: tuple = (300.0, 600.0, 900.0)
    md_runs: int = 3  #: NVT stability runs per student
    md_steps: int = 300  #: steps (1 fs) per student stability / NVE run
    teacher_md_steps: int = 40  #: the teacher costs ~0.4 s a step on 2 cores: short runs only


QUICK = DemoPlan(n_frames=12, test_fraction=3 / 12, val_fraction=2 / 12, epochs=5, temperatures=(300.0, 600.0), md_runs=1, md_steps=50, teacher_md_steps=5)


def run_demo(output: str = "demo_out", quick: bool = False, progress: bool = True, teacher_spec: str = TEACHER) -> dict:
    from ffdistill.teachers import load_teacher

    plan = QUICK if quick else DemoPlan()
    os.makedirs(output, exist_ok=True)
    started = time.perf_counter()
    teacher = load_teacher(teacher_spec)
    frames, store_path = os.path.join(output, "frames.extxyz"), os.path.join(output, "labels.zarr")
    timings = {}
    if not os.path.exists(frames):
        _say(f"[1/4] sampling {plan.n_frames} frames of 64-atom Si with {teacher.spec} ({teacher.version})")
        t0 = time.perf_counter()
        sample_to_file(teacher, STRUCTURE, frames, n_frames=plan.n_frames, temperatures=plan.temperatures, progress=progress)
        timings["sampling_s"] = time.perf_counter() - t0
    if not os.path.exists(store_path):
        _say(f"[2/4] labelling: energy, forces, stress and {ROWS_PER_FRAME} Hessian rows per frame")
        t0 = time.perf_counter()
        label_file(teacher, frames, store_path, rows=ROWS_PER_FRAME, seed=0, progress=progress)
        timings["labelling_s"] = time.perf_counter() - t0
    store = LabelStore(store_path)
    runs = {}
    for name, weight in (("undistilled", 0.0), ("distilled", 100.0)):
        _say(f"[3/4] training the {name} student (λH = {weight:g})")
        config = _config(plan, store_path, os.path.join(output, name), weight)
        resume = os.path.exists(os.path.join(config.output, "checkpoint.pt"))
        runs[name] = train_from_config(config, resume=resume, progress=progress)
    _say("[4/4] evaluating on held-out frames")
    metrics = _evaluate(teacher, store, runs, plan)
    metrics["wall_time_s"] = {**timings, "total_s": time.perf_counter() - started}
    metrics["teacher_cost"] = _teacher_cost(store, plan)
    _write_outputs(output, metrics, runs)
    _parity(store, runs, plan, os.path.join(output, "force_parity.png"))
    print(format_table(metrics))
    print(f"\nreport, metrics.json and plots in {output}/ ({metrics['wall_time_s']['total_s']:.0f} s)")
    return metrics


def _config(plan: DemoPlan, store: str, output: str, hessian: float) -> RunConfig:
    return RunConfig(
        data=DataConfig(store=store, val_fraction=plan.val_fraction, test_fraction=plan.test_fraction, batch_size=4),
        model=ModelConfig(student="painn-small", cutoff=5.0),
        loss=LossConfig(energy=5.0, forces=100.0, hessian=hessian),
        train=TrainConfig(epochs=plan.epochs, lr=3e-3, patience=plan.epochs, seed=0),
        output=output,
    )


def _evaluate(teacher, store: LabelStore, runs: dict, plan: DemoPlan) -> dict:
    from ffdistill.evaluate.candidates import Candidate, load_for_inference
    from ffdistill.evaluate.report import Inputs, evaluate_models

    test = _test_set(store, plan)
    students = [Candidate.of_student(name, load_for_inference(run.best_path)) for name, run in runs.items()]
    candidates = [Candidate.of_teacher(teacher), *students]
    # Frequencies and phonons on the 8-atom cell (an equilibrium by symmetry): the teacher's full
    # Hessian of the 64-atom cell would cost ~2 minutes here; phonopy needs one displacement for Si.
    crystal = bulk("Si", "diamond", a=5.43, cubic=True)
    inputs = Inputs(test, vib_structure=crystal, phonon_cell=crystal, threads=2)
    models = evaluate_models(candidates, inputs, _demo_profile(plan))
    ratio = models["distilled"]["force_mae_meV_per_A"] / models["undistilled"]["force_mae_meV_per_A"]
    return {
        "models": models, "distilled_vs_undistilled_force_mae": ratio, "test_frames": len(test),
        "structure": "Si, 64 atoms", "teacher": f"{teacher.spec} ({teacher.version})", "profile": _demo_profile(plan).name,
    }


def _test_set(store: LabelStore, plan: DemoPlan):
    """The held-out frames of the students' own split (whole groups, as the trainer cuts them)."""
    from ffdistill.evaluate.accuracy import store_test_set

    seed = DataConfig().split_seed
    _, _, test_idx = split_indices(store.groups(), plan.val_fraction, plan.test_fraction, seed)
    return store_test_set(store, test_idx)


def _demo_profile(plan: DemoPlan):
    """The quick evaluation profile, shortened further when the plan asks for less (smoke runs)."""
    from ffdistill.evaluate.report import PROFILES

    quick = PROFILES["quick"]
    scale = min(1.0, plan.md_steps / quick.nvt_steps)
    return dataclasses.replace(
        quick, nvt_runs=min(quick.nvt_runs, plan.md_runs), nvt_steps=min(quick.nvt_steps, plan.md_steps),
        nve_steps=min(quick.nve_steps, plan.md_steps), teacher_md_budget_s=quick.teacher_md_budget_s * scale,
    )


def _teacher_cost(store: LabelStore, plan: DemoPlan) -> dict:
    train_val = len(store) - int(round(len(store) * plan.test_fraction))
    rows = int(store.n_rows.sum() * train_val / len(store))
    return {"frames_for_training": train_val, "undistilled_teacher_force_calls": train_val, "distilled_teacher_force_calls": train_val, "distilled_extra_hessian_row_vjps": rows}


def format_table(metrics: dict) -> str:
    from ffdistill.evaluate.report import markdown_tables, verdict

    cost = metrics["teacher_cost"]
    return (
        markdown_tables(metrics["models"])
        + f"\n\ndistilled / undistilled force MAE: {metrics['distilled_vs_undistilled_force_mae']:.2f}"
        + f"  ({metrics['test_frames']} held-out frames, errors against the teacher's labels)"
        + f"\nteacher cost of the training labels: {cost['undistilled_teacher_force_calls']} force calls (undistilled);"
        + f" the same plus {cost['distilled_extra_hessian_row_vjps']} Hessian-row VJPs (distilled)"
        + f"\n\n{verdict(metrics['models'])}"
    )


def _write_outputs(output: str, metrics: dict, runs: dict) -> None:
    from ffdistill.evaluate.report import PROFILES, write_report
    from ffdistill.plots import learning_curves

    extra = {k: v for k, v in metrics.items() if k != "models"}
    profile = PROFILES.get(metrics.get("profile", "quick"), PROFILES["quick"])
    title = "ffdistill demo: SevenNet-0 → painn-small on 64-atom Si"
    plots = ("force_parity.png", "learning_curves.png")
    write_report(output, metrics["models"], extra, profile, title=title, extra_plots=plots)
    learning_curves({name: run.history for name, run in runs.items()}, os.path.join(output, "learning_curves.png"))


def _parity(store: LabelStore, runs: dict, plan: DemoPlan, path: str) -> None:
    """Force parity on the held-out frames, each student through the forces it uses in MD (a direct
    student's force head, not -dE/dR of its energy head), on graphs at its own cutoff."""
    import numpy as np

    from ffdistill.evaluate.candidates import load_for_inference, model_forces
    from ffdistill.plots import force_parity

    test = _test_set(store, plan)
    predictions = {}
    for name, run in runs.items():
        student = load_for_inference(run.best_path)
        predictions[name] = np.concatenate([model_forces(student, g).numpy() for g in test.graphs(student.cutoff)])
    force_parity(test.reference_forces(), predictions, path)


def _say(message: str) -> None:
    print(message, flush=True)
