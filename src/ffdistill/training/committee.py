"""``train.committee=K``: K students that differ only in their seed (``train.seed + k``), each trained by the
ordinary trainer in ``OUTPUT/member_k``, then calibrated together on the validation frames and saved as one
file, ``OUTPUT/committee.pt``, that loads wherever a student loads. An interrupted run resumes: finished
members are kept, an unfinished one continues from its checkpoint."""

from __future__ import annotations

import copy
import json
import os

import numpy as np

from ffdistill.calculator import load_student, save_student
from ffdistill.config import RunConfig
from ffdistill.data.frames import split_indices
from ffdistill.data.labels import LabelStore
from ffdistill.errors import InputError
from ffdistill.students.committee import Committee, calibration_scale, per_atom_deviation


def train_committee(config: RunConfig, resume: bool = False, progress: bool = True):
    from ffdistill.training.trainer import TrainResult, _result_on_disk, train_from_config

    results = []
    for k in range(config.train.committee):
        member = copy.deepcopy(config)
        member.train.committee, member.train.seed = 1, config.train.seed + k
        member.output = os.path.join(config.output, f"member_{k}")
        if os.path.isfile(os.path.join(member.output, "summary.json")):
            results.append(_result_on_disk(member.output))
            continue
        again = resume and os.path.isfile(os.path.join(member.output, "checkpoint.pt"))
        results.append(train_from_config(member, resume=again, progress=progress))
    committee = Committee([load_student(r.best_path) for r in results])
    store = LabelStore(config.data.store)
    d = config.data
    _, val_idx, _ = split_indices(store.groups(), d.val_fraction, d.test_fraction, d.split_seed)
    calibration = calibrate(committee, store, val_idx, config)
    path = os.path.join(config.output, "committee.pt")
    save_student(committee, path, **calibration, members=[r.best_path for r in results])
    with open(os.path.join(config.output, "committee.json"), "w") as handle:
        json.dump({**calibration, "member_val_force_mae_meV_per_A": [1000 * r.best_force_mae for r in results]}, handle)
    reason = f"committee of {len(results)}: calibration scale {committee.scale.item():.3g} on {len(val_idx)} frames"
    return TrainResult(config.output, path, calibration["val_force_mae_meV_per_A"] / 1000, [], reason)


def calibrate(committee: Committee, store: LabelStore, indices, config: RunConfig) -> dict:
    """Fit and set the committee's scale on ``indices`` (its members' validation frames); returns what was found."""
    if len(indices) == 0:
        raise InputError("no validation frames to calibrate the committee on: set data.val_fraction > 0")
    errors, deviations = [], []
    for i in indices:
        graph = store.graph(int(i), config.model.cutoff, reference=config.data.use_reference)
        forces = member_forces(committee, graph)
        deviations.append(per_atom_deviation(forces).double().numpy())
        errors.append((forces.mean(0) - graph.forces).double().numpy())
    errors, deviations = np.concatenate(errors), np.concatenate(deviations)
    scale = calibration_scale(errors, deviations)
    committee.scale.fill_(scale)
    return {
        "calibration_scale": scale,
        "calibration_frames": len(indices),
        "val_force_mae_meV_per_A": 1000 * float(np.abs(errors).mean()),
    }


def member_forces(committee: Committee, graph):
    """(K, N, 3) each member's forces on ``graph``, on the host."""
    import torch

    from ffdistill.devices import device_of

    graph = graph.to(device_of(committee))
    return torch.stack([m.predict(graph).forces.detach().cpu() for m in committee.members])
