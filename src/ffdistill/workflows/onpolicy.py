"""On-policy distillation: label the configurations the students themselves visit.

Each round trains an ensemble of students (same data, different seeds) on everything labelled so far,
runs Langevin MD with each student from training frames, measures on every visited frame how much the
ensemble's force predictions disagree, has the teacher label the frames of largest disagreement, and
adds them to the training data. It stops when every student's MD stays stable for the whole run and
the largest disagreement is below a threshold, or after the given number of rounds.

Output folder::

    pool.zarr, heldout.zarr      the initial store split once into training pool and held-out test set
    round_R/train.zarr           what round R trains on (round 0: pool.zarr; then the previous round's
                                 train.zarr plus its new.zarr, copied frame by frame, never re-labelled)
    round_R/student_K/           one training run per ensemble member (seed train.seed + K)
    round_R/candidates.extxyz    every frame the students' MD visited, with its disagreement
    round_R/new.extxyz, new.zarr the frames picked for the teacher, and their labels
    round_R/round.json           the round's metrics; its presence marks the round complete (resume)
    metrics.json, report.md      all rounds so far

Teacher cost is counted in force-call equivalents: one per labelled frame (energy and forces) plus one
per Hessian row for autograd teachers (one vector-Jacobian product) or two for finite-difference
teachers, plus one per spot-checked frame.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ffdistill.errors import InputError
from ffdistill.faults import fault_point

#: Frames copied per append when joining stores.
COPY_CHUNK = 256


@dataclass
class OnPolicySettings:
    rounds: int = 3  #: most train → MD → label rounds
    ensemble: int = 3  #: students per round (seeds train.seed, train.seed + 1, ...)
    new_frames: int = 8  #: frames the teacher labels per round
    md_steps: int = 400  #: Langevin steps per student and round (the target stable time)
    md_temperature: float = 600.0  #: K
    timestep_fs: float = 1.0
    md_interval: int = 10  #: steps between visited frames kept as candidates
    threshold: float = 0.1  #: eV/Å; stop once the largest disagreement is below this and MD is stable
    spot_check: int = 0  #: teacher force calls on this many top candidates; then pick by true error
    #: teacher spec, required: a store names the teacher that labelled it, but a file never chooses code to run
    teacher: str | None = None
    test_store: str | None = None  #: held-out store; default a test_fraction split of the initial store
    test_fraction: float = 0.2
    seed: int = 0
    teacher_python: str | None = None  #: run the teacher in this interpreter (a worker) when given
    #: Å; a bond changing by more marks a blow-up (default: ffdistill.evaluate.md's rule, the bonds' thermal motion
    #: over a warm-up clamped to 0.5–1 Å; hot metals need it: EMT Cu's own 900 K MD changes bonds by 0.8 Å in 1 ps)
    bond_tolerance: float | None = None


def distill(config, settings: OnPolicySettings, progress: bool = True) -> list[dict]:
    """Run (or resume) on-policy distillation into ``config.output``; returns one metrics dict per round."""
    from ffdistill.teachers import load_teacher

    check_settings(settings)
    labelled_by = _attrs(config.data.store)["teacher_spec"]
    if not settings.teacher:
        raise InputError(f"name the teacher with --teacher ({config.data.store} says it was labelled by {labelled_by})")
    if settings.teacher != labelled_by:  # a union store must hold one teacher's labels
        raise InputError(f"{config.data.store} was labelled by {labelled_by}, not by {settings.teacher}")
    out = config.output
    os.makedirs(out, exist_ok=True)
    pool, heldout = initial_split(config.data.store, settings, out)
    attrs = _attrs(pool)
    teacher = load_teacher(settings.teacher, python=settings.teacher_python, device=config.train.device)
    if teacher.version != attrs.get("teacher_version"):
        warnings.warn(
            f"{config.data.store} was labelled by {labelled_by} version {attrs.get('teacher_version')}; "
            f"new frames will be labelled by version {teacher.version}",
            stacklevel=2,
        )
    rounds: list[dict] = []
    for r in range(settings.rounds):
        folder = os.path.join(out, f"round_{r}")
        train_store = pool if r == 0 else union_store(rounds[-1], folder)
        summary = _read_json(os.path.join(folder, "round.json"))
        if summary is None:
            last = r == settings.rounds - 1
            summary = run_round(r, train_store, heldout, teacher, config, settings, folder, progress, last=last)
            fault_point("distill.round")
            _write_json(os.path.join(folder, "round.json"), summary)
        rounds.append(summary)
        write_report(out, rounds, settings)
        if summary["converged"]:
            break
    return rounds


def check_settings(settings: OnPolicySettings) -> None:
    if settings.ensemble < 2:
        raise InputError("on-policy distillation needs an ensemble of at least 2 students: disagreement needs two")
    if settings.rounds < 1 or settings.new_frames < 1 or settings.md_steps < settings.md_interval:
        raise InputError("rounds and new frames must be at least 1, and md_steps at least md_interval")


# --------------------------------------------------------------------------------------------- stores


def initial_split(store_path: str, settings: OnPolicySettings, out: str) -> tuple[str, str]:
    """The training pool and the held-out store: a fixed split made once, so every round is scored alike."""
    if settings.test_store:
        return store_path, settings.test_store
    from ffdistill.data.labels import LabelStore

    pool, heldout = os.path.join(out, "pool.zarr"), os.path.join(out, "heldout.zarr")
    from ffdistill.data.frames import split_indices

    store = LabelStore(store_path)
    train, _, test = split_indices(store.groups(), 0.0, settings.test_fraction, settings.seed)  # whole groups
    if not test:
        raise InputError(f"test_fraction={settings.test_fraction} holds out no frame of {store_path}")
    copy_frames([(store, sorted(test))], heldout)
    copy_frames([(store, sorted(train))], pool)
    return pool, heldout


def copy_frames(sources: Sequence[tuple], path: str):
    """A new store holding the given frames of the given stores, in order, exactly as stored.

    Labels are copied, not recomputed; frames are renumbered 0, 1, ... and each source's group ids are
    moved past those of the sources before it, so groups of different stores never merge. Stores must
    share a teacher and Hessian-label settings. Done already: returns the existing store.
    """
    from ffdistill.data.labels import LabelRequest, LabelStore, _commit, _finish, _open_partial

    if os.path.isdir(path):
        return LabelStore(path)
    first = sources[0][0].attrs
    for store, _ in sources:
        for key in ("teacher_spec", "teacher_version", "hessian_rows", "hessian_probes"):
            if store.attrs.get(key) != first.get(key):
                raise InputError(f"cannot join {store.path}: its {key} differs from {sources[0][0].path}'s")
    what = [[store.attrs["input_sha256"], [int(i) for i in indices]] for store, indices in sources]
    fingerprint = hashlib.sha256(json.dumps(what).encode()).hexdigest()
    request = LabelRequest.whole_store_like(first, fingerprint, "copied")
    shutil.rmtree(path + ".partial", ignore_errors=True)  # copying is cheap: start over rather than resume
    group = _open_partial(path + ".partial", request, sources[0][0].path, sum(len(idx) for _, idx in sources))
    frames = _frames_with_group_offsets(sources)
    while chunk := list(itertools.islice(frames, COPY_CHUNK)):
        done = group.attrs["frames_done"]
        values = [_regrouped(store.raw_frame(i), offset, done + k) for k, (store, i, offset) in enumerate(chunk)]
        _commit(group, values)  # one append per array per chunk of frames: zarr round trips dominate otherwise
    return _finish(group, path + ".partial", path)


def _frames_with_group_offsets(sources: Sequence[tuple]):
    offset = 0
    for store, indices in sources:
        for i in indices:
            yield store, int(i), offset
        offset += int(store.groups().max(initial=-1)) + 1


def _regrouped(values: dict, offset: int, index: int) -> dict:
    """A copied frame with its group id moved by ``offset`` and its position ``index`` in the new store, and
    its checksums recomputed (they cover the group and the frame index)."""
    from ffdistill.data.labels import array_checksums, frame_checksum

    if "group" in values:
        values["group"] = values["group"] + offset
    values["frame_index"] = np.array([index], dtype=values["frame_index"].dtype)
    values["checksum"] = np.array([frame_checksum(values)], dtype=values["checksum"].dtype)
    values["checksums"] = array_checksums(values)[None]
    return values


def union_store(previous: dict, folder: str) -> str:
    """Round R's training store: round R-1's plus the frames it had labelled."""
    from ffdistill.data.labels import LabelStore

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "train.zarr")
    parts = [LabelStore(previous["train_store"])]
    if previous.get("new_store"):
        parts.append(LabelStore(previous["new_store"]))
    copy_frames([(s, range(len(s))) for s in parts], path)
    return path


def teacher_calls(store, fd_teacher: bool) -> int:
    """Force-call equivalents the teacher spent on a store: one per frame, plus one per Hessian row or
    H·v probe (a vector-Jacobian product), or two for a finite-difference teacher (central differences)."""
    per_product = 2 if fd_teacher else 1
    probes = int(store.group["n_probes"][:].sum()) if "n_probes" in store.group else 0
    return int(len(store) + per_product * (int(store.n_rows.sum()) + probes))


# --------------------------------------------------------------------------------------------- one round


def run_round(
    r: int,
    train_store: str,
    heldout: str,
    teacher,
    config,
    settings: OnPolicySettings,
    folder: str,
    progress: bool,
    last: bool,
) -> dict:
    """Train the ensemble, score it, run its MD, and (unless this is the last round or it has converged)
    label the most disputed frames. Every step skips work already on disk."""
    os.makedirs(folder, exist_ok=True)
    students = train_ensemble(config, train_store, folder, settings.ensemble, progress)
    md = ensemble_md(students, train_store, settings, r)
    candidates = [frame for run in md for frame in run["frames"]]
    scores = ensemble_disagreement(students, candidates)
    summary = measurements(r, train_store, heldout, students, md, scores, teacher, settings)
    picked, spot_calls = [], 0
    if not (last or summary["converged"]) and candidates:
        picked, spot_calls = pick_frames(candidates, scores, students, teacher, settings)
    _write_candidates(os.path.join(folder, "candidates.extxyz"), candidates, scores, picked)
    summary.update(new_frames=len(picked), spot_check_calls=spot_calls, new_store=None, teacher_calls_new=spot_calls)
    if picked:
        store = label_new_frames(teacher, [candidates[i] for i in picked], folder, _attrs(train_store), r, progress)
        summary.update(new_store=store.path, teacher_calls_new=teacher_calls(store, _fd(teacher)) + spot_calls)
    return summary


def measurements(
    r: int,
    train_store: str,
    heldout: str,
    students: list[str],
    md: list[dict],
    scores: np.ndarray,
    teacher,
    settings: OnPolicySettings,
) -> dict:
    """What a round's report shows: data, cost, held-out error, MD stability and disagreement."""
    from ffdistill.data.labels import LabelStore

    store = LabelStore(train_store)
    errors = [heldout_force_mae(path, heldout) for path in students]
    summary = {
        "round": r,
        "train_store": train_store,
        "train_frames": len(store),
        "teacher_calls_train_store": teacher_calls(store, _fd(teacher)),
        "heldout_force_mae_meV_per_A": float(np.mean(errors)),
        "heldout_force_mae_per_student": errors,
        "md_stable": [run["stable"] for run in md],
        "md_time_ps": [run["time_ps"] for run in md],
        "md_reason": [run["reason"] for run in md],
        "candidates": len(scores),
        "max_disagreement": float(scores.max()) if len(scores) else 0.0,
        "mean_disagreement": float(scores.mean()) if len(scores) else 0.0,
    }
    summary["converged"] = bool(all(summary["md_stable"]) and summary["max_disagreement"] < settings.threshold)
    return summary


def _fd(teacher) -> bool:
    return not getattr(teacher, "has_autograd", True)


def ensemble_md(students: list[str], train_store: str, settings: OnPolicySettings, r: int) -> list[dict]:
    """One MD run per student, each from its own training frame, seeded by round and member."""
    starts = md_starts(train_store, len(students), settings.seed + r)
    seeds = [settings.seed + 1000 * r + k for k in range(len(students))]
    return [student_md(path, start, settings, seed) for path, start, seed in zip(students, starts, seeds)]


def train_ensemble(config, train_store: str, folder: str, size: int, progress: bool) -> list[str]:
    """``size`` students on the same store, seeds train.seed + k; an interrupted run resumes."""
    from ffdistill.training.trainer import train_from_config

    paths = []
    for k in range(size):
        member = copy.deepcopy(config)
        member.data.store, member.data.test_fraction = train_store, 0.0
        member.train.seed, member.output = config.train.seed + k, os.path.join(folder, f"student_{k}")
        resume = os.path.isfile(os.path.join(member.output, "checkpoint.pt"))
        paths.append(train_from_config(member, resume=resume, progress=progress).best_path)
    return paths


def heldout_force_mae(student_path: str, heldout: str) -> float:
    """Force MAE (meV/Å) of a student against the teacher on every held-out frame."""
    from ffdistill.calculator import load_calculator
    from ffdistill.data.labels import LabelStore

    store, calc, errors = LabelStore(heldout), load_calculator(student_path), []
    for i in range(len(store)):
        atoms, labels = store.frame(i)
        atoms.calc = calc
        errors.append(np.abs(atoms.get_forces() - labels["forces"]).ravel())
    return 1000 * float(np.concatenate(errors).mean())


def md_starts(train_store: str, n: int, seed: int) -> list:
    """``n`` training frames to start MD from, drawn without replacement where there are enough."""
    from ffdistill.data.labels import LabelStore

    store = LabelStore(train_store)
    picks = np.random.default_rng(seed).choice(len(store), size=n, replace=n > len(store))
    return [store.frame(int(i))[0] for i in picks]


def student_md(student_path: str, start, settings: OnPolicySettings, seed: int) -> dict:
    """Langevin MD with one student; every ``md_interval`` steps the frame is kept as a candidate.

    Stops at the first sign of a blow-up (the criteria of ``ffdistill.deploy.simulate``); the frames up to it
    are kept, since the approach to a blow-up is exactly where the student needs data.
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from ffdistill.calculator import load_calculator
    from ffdistill.evaluate.md import Blowup, StabilityMonitor

    atoms, rng, frames = start.copy(), np.random.default_rng(seed), []
    atoms.calc = load_calculator(student_path)
    MaxwellBoltzmannDistribution(atoms, temperature_K=settings.md_temperature, rng=rng)
    Stationary(atoms)
    timestep, friction = settings.timestep_fs * units.fs, 0.01 / units.fs
    dyn = Langevin(atoms, timestep, temperature_K=settings.md_temperature, friction=friction, rng=rng)
    monitor = StabilityMonitor(atoms, settings.md_interval, tolerance=settings.bond_tolerance)
    reason = None
    while dyn.nsteps < settings.md_steps and reason is None:
        dyn.run(settings.md_interval)
        frames.append(_visited(atoms, student_path, dyn.nsteps))
        try:
            monitor.check(dyn.nsteps)
        except Blowup as blowup:
            reason = blowup.reason
    time_ps = dyn.nsteps * settings.timestep_fs / 1000
    frames = [f for f in frames if _physical(f)]
    return {"frames": frames, "stable": reason is None, "time_ps": time_ps, "reason": reason}


def _visited(atoms, student_path: str, step: int):
    import ase

    frame = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    student = os.path.basename(os.path.dirname(student_path))
    # One group per trajectory: its frames are correlated and must stay on one side of a split.
    frame.info.update(md_student=student, md_step=int(step), group=int(student.rpartition("_")[2] or 0))
    return frame


def _physical(atoms) -> bool:
    """No teacher should be asked about overlapping atoms."""
    from ffdistill.errors import FFDistillError
    from ffdistill.graph import check_structure

    try:
        check_structure(atoms)
        return True
    except FFDistillError:
        return False


def ensemble_forces(students: Sequence[str], frames: Sequence) -> list[np.ndarray]:
    """Per frame, the (members, N, 3) force predictions of every student."""
    from ffdistill.calculator import load_calculator

    calcs = [load_calculator(path) for path in students]
    out = []
    for frame in frames:
        predictions = []
        for calc in calcs:
            atoms = frame.copy()
            atoms.calc = calc
            predictions.append(atoms.get_forces())
        out.append(np.stack(predictions))
    return out


def force_disagreement(forces: np.ndarray) -> float:
    """An ensemble's frame deviation (eV/Å), the committee's one definition (``students/committee.py``,
    uncalibrated): max_i sqrt(mean_k |F_ki - mean_k F_ki|^2). The maximum over atoms, not the mean: a student
    fails at one bad atom, and large cells would otherwise dilute it."""
    from ffdistill.students.committee import frame_deviation, per_atom_deviation

    return frame_deviation(per_atom_deviation(torch.as_tensor(np.asarray(forces))).numpy())


def ensemble_disagreement(students: Sequence[str], frames: Sequence) -> np.ndarray:
    return np.array([force_disagreement(f) for f in ensemble_forces(students, frames)])


def pick_frames(
    candidates: Sequence, scores: np.ndarray, students: Sequence[str], teacher, settings: OnPolicySettings
) -> tuple[list[int], int]:
    """Indices of the frames to label (largest disagreement first), and the teacher calls spent choosing.

    With ``spot_check`` the teacher's forces on the top candidates rank them by the ensemble mean's
    true error instead: a cheap check that disagreement points where the students are actually wrong.
    """
    order = np.argsort(-scores, kind="stable")
    if not settings.spot_check:
        return sorted(order[: settings.new_frames].tolist()), 0
    checked = order[: max(settings.spot_check, settings.new_frames)]
    predicted = ensemble_forces(students, [candidates[i] for i in checked])
    true_error = [
        np.abs(p.mean(axis=0) - teacher.label(candidates[i]).forces).max() for i, p in zip(checked, predicted)
    ]
    ranked = checked[np.argsort(-np.asarray(true_error), kind="stable")]
    return sorted(ranked[: settings.new_frames].tolist()), len(checked)


def _write_candidates(path: str, frames: Sequence, scores: np.ndarray, picked: Sequence[int]) -> None:
    import ase.io

    chosen = set(picked)
    for k, (frame, score) in enumerate(zip(frames, scores)):
        frame.info.update(disagreement=float(score), picked=k in chosen)
    ase.io.write(path + ".partial", list(frames), format="extxyz")
    os.replace(path + ".partial", path)


def label_new_frames(teacher, frames: Sequence, folder: str, store_attrs: dict, r: int, progress: bool):
    """The teacher's labels of the picked frames, with the training store's Hessian-row setting."""
    import ase.io

    from ffdistill.data.labels import LabelStore, label_file

    extxyz, store = os.path.join(folder, "new.extxyz"), os.path.join(folder, "new.zarr")
    if os.path.isdir(store):
        return LabelStore(store)
    if not os.path.isfile(extxyz):  # written once: a resumed label_file must see the same input
        ase.io.write(extxyz + ".partial", list(frames), format="extxyz")
        os.replace(extxyz + ".partial", extxyz)
    rows = store_attrs["hessian_rows"]
    rows = rows if rows == "all" else int(rows)
    probes = int(store_attrs.get("hessian_probes", 0))
    seed = int(store_attrs["seed"]) + r + 1  # fresh rows for every round's frames
    return label_file(teacher, extxyz, store, rows=rows, seed=seed, probes=probes, progress=progress)


# --------------------------------------------------------------------------------------------- report


def write_report(out: str, rounds: list[dict], settings: OnPolicySettings) -> None:
    """metrics.json and report.md: per round, held-out force error, MD stability and teacher calls spent."""
    spent = 0
    for summary in rounds:
        # What the round's students were trained on was paid for before the round or in earlier ones.
        paid = summary["teacher_calls_train_store"] + summary["teacher_calls_new"]
        summary["teacher_calls_cumulative"] = paid + _spot_before(rounds, summary)
        spent = summary["teacher_calls_cumulative"]
    metrics = {"settings": asdict(settings), "rounds": rounds, "teacher_calls": spent}
    _write_json(os.path.join(out, "metrics.json"), metrics)
    lines = [
        "# On-policy distillation",
        "",
        "| round | train frames | held-out force MAE (meV/Å) | MD stable | MD time (ps) | max disagreement (eV/Å) "
        "| new frames | teacher calls (cumulative) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in rounds:
        stable = f"{sum(s['md_stable'])}/{len(s['md_stable'])}"
        lines.append(
            f"| {s['round']} | {s['train_frames']} | {s['heldout_force_mae_meV_per_A']:.1f} | {stable} | "
            f"{min(s['md_time_ps']):.3f} | {s['max_disagreement']:.3f} | {s['new_frames']} | "
            f"{s['teacher_calls_cumulative']} |"
        )
    verdict = "converged: MD stable and disagreement below threshold" if rounds[-1]["converged"] else "not converged"
    cost = "Teacher calls are force-call equivalents (frames + Hessian rows/probes + spot checks)."
    lines += ["", f"{cost} Last round: {verdict}."]
    with open(os.path.join(out, "report.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


def _spot_before(rounds: list[dict], summary: dict) -> int:
    """Spot checks of earlier rounds: spent, but not part of any store."""
    return sum(s["spot_check_calls"] for s in rounds if s["round"] < summary["round"])


def _attrs(store_path: str) -> dict:
    from ffdistill.data.labels import LabelStore

    return LabelStore(store_path).attrs


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def _write_json(path: str, data) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)
