"""On-policy distillation against random sampling at equal teacher cost (EMT copper, hot student MD).

The students are wanted for 900 K MD. Both arms start from the same initial frames of the usual
sampler (teacher MD at ``--sampler-temperatures``, default 300 K only, plus rattled/strained copies)
and end with the same number of teacher-labelled frames:

* random: the initial frames plus more frames of the same sampler, drawn at random;
* on-policy: the initial frames plus frames the students' own 900 K MD visited where the ensemble's
  forces disagree most (``ffdistill.onpolicy``).

Labels carry no Hessian rows here, so teacher cost = labelled frames in both arms (the random arm's
extra teacher MD is not charged to it). Each arm trains the same ensemble with the same settings; both
are scored by force MAE on one common test set of teacher MD at 900 K, over several seeds. With
``--sampler-temperatures 300 900`` the sampler already covers the target and random sampling is the
stronger baseline.

    OMP_NUM_THREADS=1 python benchmarks/onpolicy.py [--seeds 3] [--sampler-temperatures 300 900] [--quick]

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import ase.io
import numpy as np

TEACHER = "ase:ase.calculators.emt:EMT"
HOT = 900.0  #: K: the student MD, and the test set, run this hot


def sampler_frames(teacher, n: int, temperatures: list[float], seed: int) -> list:
    """``n`` frames of the usual sampler: teacher MD at ``temperatures``, half of them rattled/strained copies."""
    from ffdistill.sampling import load_structure, perturbed_copies, teacher_md_frames

    start, md = load_structure("Cu"), []
    for k, share in enumerate(np.array_split(np.arange(n // 2), len(temperatures))):
        md += teacher_md_frames(teacher, start, len(share), temperatures[k], seed=seed + k)
    for k, frame in enumerate(md):
        frame.info["group"] = k // 2  # neighbouring MD frames (and their copies) stay on one side of a split
    return md + perturbed_copies(md, n - len(md), seed=seed)


def labelled(teacher, frames: list, path: str):
    """A label store of ``frames`` (energies and forces; no Hessian rows, so one teacher call per frame)."""
    from ffdistill.labels import LabelStore, label_file

    if os.path.isdir(path):
        return LabelStore(path)
    ase.io.write(path + ".extxyz", frames, format="extxyz")
    return label_file(teacher, path + ".extxyz", path, rows=0, progress=False)


def config(store: str, output: str, epochs: int, seed: int):
    from ffdistill.config import load_config

    overrides = [
        f"data.store={store}", f"output={output}", "model.student=painn-tiny", "model.cutoff=4.0",
        f"train.epochs={epochs}", "train.lr=5e-3", "train.warmup_steps=5", "data.batch_size=4", "loss.hessian=0",
        f"train.seed={seed}", f"data.split_seed={seed}",
    ]
    return load_config(None, overrides)


def run_seed(seed: int, teacher, test_store: str, folder: str, sizes: dict, settings_kw: dict) -> dict:
    """Both arms for one seed; returns their held-out force MAE (and the on-policy students' MD stability)."""
    from ffdistill.onpolicy import OnPolicySettings, distill, heldout_force_mae, train_ensemble

    os.makedirs(folder, exist_ok=True)
    n_init, n_extra = sizes["initial"], sizes["extra"]
    frames = sampler_frames(teacher, n_init + n_extra, sizes["sampler_temperatures"], seed=100 + seed)
    order = np.random.default_rng(seed).permutation(len(frames))
    initial = labelled(teacher, [frames[i] for i in order[:n_init]], os.path.join(folder, "initial.zarr"))
    random_store = labelled(teacher, [frames[i] for i in order], os.path.join(folder, "random.zarr"))
    per_round = n_extra // (sizes["rounds"] - 1)  # the last round only trains: equal frames in both arms
    settings = OnPolicySettings(test_store=test_store, seed=seed, new_frames=per_round, rounds=sizes["rounds"],
                                **settings_kw)
    rounds = distill(config(initial.path, os.path.join(folder, "onpolicy"), sizes["epochs"], seed), settings, False)
    random_config = config(random_store.path, os.path.join(folder, "random"), sizes["epochs"], seed)
    students = train_ensemble(random_config, random_store.path, random_config.output, settings.ensemble, False)
    last = rounds[-1]
    return {
        "seed": seed,
        "onpolicy_force_mae_meV_per_A": last["heldout_force_mae_meV_per_A"],
        "random_force_mae_meV_per_A": float(np.mean([heldout_force_mae(p, test_store) for p in students])),
        "onpolicy_teacher_calls": last["teacher_calls_cumulative"],
        "random_teacher_calls": len(random_store),
        "onpolicy_md_stable": f"{sum(last['md_stable'])}/{len(last['md_stable'])}",
        "rounds": len(rounds),
        "heldout_by_round": [r["heldout_force_mae_meV_per_A"] for r in rounds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run, too small to mean anything")
    parser.add_argument("-o", "--output", default="bench_onpolicy")
    parser.add_argument("--sampler-temperatures", type=float, nargs="+", default=[300.0],
                        help="K of the usual sampler's teacher MD (default 300: cool data, hot use)")
    args = parser.parse_args()
    from ffdistill.teachers import load_teacher
    from ffdistill.sampling import load_structure, teacher_md_frames

    sizes = {"initial": 16, "extra": 16, "rounds": 3, "epochs": 40, "test": 24}
    sizes["sampler_temperatures"] = args.sampler_temperatures
    settings_kw = {"ensemble": 2, "md_steps": 300, "md_temperature": HOT, "md_interval": 10, "threshold": 0.0}
    if args.quick:
        sizes.update(initial=8, extra=4, rounds=2, epochs=3, test=4)
        settings_kw["md_steps"] = 40
    teacher, began = load_teacher(TEACHER), time.perf_counter()
    os.makedirs(args.output, exist_ok=True)
    test_frames = teacher_md_frames(teacher, load_structure("Cu"), sizes["test"], HOT, interval=20, seed=999)
    test_store = labelled(teacher, test_frames, os.path.join(args.output, "test.zarr")).path
    results = []
    for seed in range(args.seeds):
        folder = os.path.join(args.output, f"seed_{seed}")
        results.append(run_seed(seed, teacher, test_store, folder, sizes, settings_kw))
        print(json.dumps(results[-1]), flush=True)
    onpolicy = statistics.mean(r["onpolicy_force_mae_meV_per_A"] for r in results)
    random = statistics.mean(r["random_force_mae_meV_per_A"] for r in results)
    print(json.dumps({
        "onpolicy_vs_random_force_ratio": onpolicy / random,
        "onpolicy_force_mae_meV_per_A": onpolicy,
        "random_force_mae_meV_per_A": random,
        "per_seed_ratio": [r["onpolicy_force_mae_meV_per_A"] / r["random_force_mae_meV_per_A"] for r in results],
        "teacher_calls_per_arm": [results[0]["onpolicy_teacher_calls"], results[0]["random_teacher_calls"]],
        "seeds": args.seeds,
        "sampler_temperatures_K": args.sampler_temperatures,
        "student_md_K": HOT,
        "wall_s": round(time.perf_counter() - began, 1),
    }))


if __name__ == "__main__":
    main()
