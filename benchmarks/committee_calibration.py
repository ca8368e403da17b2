"""A committee of 4 on the demo's data: is its mean at least as accurate as its best member, and does its spread
predict where it is wrong? (not run in CI)

Training data exactly as ``ffdistill demo`` makes it (16-atom Si, SevenNet-0, the demo's plan and seeds, 4
Hessian rows per frame); the committee is the demo's distilled student's config with ``train.committee=4``
(shipped defaults otherwise, each member to convergence by the stopping rule), calibrated on the demo's
validation frames. Held-out: ``--heldout`` frames of their own teacher MD at 300, 600, 900, 1200 and 1500 K
(seed ``HELDOUT_SEED``, never used for training or for any choice) plus rattled/strained copies, labelled with
the teacher's energies and forces only. Reported: each member's and the committee mean's held-out force MAE,
the Spearman correlation between predicted frame deviation and true frame error with its 95 % bootstrap
interval, the share of frames whose error exceeds twice the prediction, and a calibration plot.

    OMP_NUM_THREADS=1 python benchmarks/committee_calibration.py -o bench_committee

Every stage is cached in the output folder (the run resumes). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np
import torch

HELDOUT_SEED = 20261207
TEMPERATURES = (300.0, 600.0, 900.0, 1200.0, 1500.0)


def main() -> None:
    from ffdistill.calculator import load_student
    from ffdistill.config import LossConfig
    from ffdistill.data.labels import LabelStore, label_file
    from ffdistill.data.sampling import sample_to_file
    from ffdistill.evaluate.uncertainty import calibration, frame_measures, plot_calibration
    from ffdistill.teachers import load_teacher
    from ffdistill.training.trainer import train_from_config
    from ffdistill.workflows import demo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default="bench_committee")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--heldout", type=int, default=60, help="held-out frames (MD and copies)")
    args = parser.parse_args()
    os.makedirs(args.output, exist_ok=True)
    path = lambda name: os.path.join(args.output, name)  # noqa: E731
    teacher, plan, started = load_teacher(demo.TEACHER), demo.DemoPlan(), time.perf_counter()
    if not os.path.exists(path("labels.extxyz")):
        sample_to_file(teacher, demo.STRUCTURE, path("labels.extxyz"), n_frames=plan.n_frames,
                       temperatures=plan.temperatures, runs=plan.runs, progress=False)  # fmt: skip
    if not os.path.exists(path("labels.zarr")):
        label_file(teacher, path("labels.extxyz"), path("labels.zarr"), rows=demo.ROWS_PER_FRAME, progress=False)
    if not os.path.exists(path("heldout.extxyz")):
        sample_to_file(teacher, demo.STRUCTURE, path("heldout.extxyz"), n_frames=args.heldout,
                       temperatures=TEMPERATURES, md_fraction=0.6, seed=HELDOUT_SEED, progress=False)  # fmt: skip
    if not os.path.exists(path("heldout.zarr")):
        label_file(teacher, path("heldout.extxyz"), path("heldout.zarr"), rows=0, progress=False)
    config = demo._config(plan, path("labels.zarr"), path("committee"), LossConfig().hessian)
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, committee=args.members))
    result = train_from_config(config, resume=os.path.isdir(path("committee")), progress=False)
    committee = load_student(result.best_path)
    heldout = LabelStore(path("heldout.zarr"))
    graphs = [heldout.graph(i, committee.cutoff) for i in range(len(heldout))]
    members = [_force_mae(m, graphs) for m in committee.members]
    mean = _force_mae(committee, graphs)
    deviation, error = frame_measures(committee, graphs)
    found = calibration(deviation, error)
    plot_calibration(deviation, error, path("calibration.png"))
    report = {
        "members": args.members,
        "heldout_frames": len(heldout),
        "heldout_temperatures_K": TEMPERATURES,
        "member_force_mae_meV_per_A": members,
        "committee_mean_force_mae_meV_per_A": mean,
        "mean_at_most_best_member": mean <= min(members),
        "calibration_scale": float(committee.scale),
        **found,
        "wall_s": time.perf_counter() - started,
    }
    print(f"members' held-out force MAE {', '.join(f'{m:.1f}' for m in members)} meV/Å; committee mean {mean:.1f}")
    lo, hi = found["spearman_ci95"]
    print(f"Spearman(predicted deviation, true error) {found['spearman']:.2f} [{lo:.2f}, {hi:.2f}] over {len(heldout)} "
          f"frames; error > 2x prediction on {100 * found['fraction_error_above_2x_deviation']:.0f} %")  # fmt: skip
    print(json.dumps(report))


def _force_mae(model, graphs) -> float:
    errors = [np.abs(model.predict(g).forces.detach().double().numpy() - g.forces.double().numpy()) for g in graphs]
    return 1000 * float(np.concatenate([e.ravel() for e in errors]).mean())


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
