"""Does Hessian distillation give a better student for the same teacher budget? (not run in CI)

Which trajectory served which choice: its held-out trajectory (seed 1000, 750 K) is the one on which the
earlier demo plan and the 600-step tables were chosen, so its numbers are not a once-scored held-out result
(docs' Results page). ``benchmarks/gain_defaults.py`` is the benchmark of the shipped defaults, with a ledger
of the held-out seeds it has scored.

For one system: teacher MD frames plus rattled/strained copies (grouped: an MD block and its copies never
straddle a split), labelled once with E, F, K one-hot Hessian rows and K random-probe products H·v; a
held-out trajectory of its own (own seed and temperature). Then, per student preset, training-set size
and seed: undistilled (λH = 0), one-hot rows, and probes, all on the same frames, validated on the same
whole groups, scored once on the held-out trajectory. A size n is the first n training frames in the split's
group order (``data.n_train``): whole groups first, so small sizes are frames of one or two MD runs. Teacher
cost is counted in force-call equivalents: the sampling MD's steps per frame, one E/F label, and each row or
probe at its measured cost.

    python benchmarks/distillation_gain.py --system si --sizes 8 30 --seeds 3 --pool-frames 36 --runs 2 --threads 1

Prints the table, the wall time, and as its last line one JSON object with ``force_ratio_few``,
``energy_ratio_few`` (distilled rows / undistilled at the fewest frames, mean over seeds; < 1: distilled
better), ``force_ratio_dense`` and ``energy_ratio_dense`` (at the most frames), ``equal_cost_force_ratio``
(rows vs undistilled at equal teacher cost, interpolated on the undistilled learning curve in log-log) and
the same for probes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch

#: system -> (structure, temperatures of the training MD, held-out temperature)
SYSTEMS = {"si": ("Si", (300.0, 600.0, 900.0), 750.0), "batio3": ("BaTiO3", (300.0, 600.0, 900.0), 750.0)}
K = 4  #: rows and probes labelled per frame
INTERVAL, EQUILIBRATION = 5, 10  #: sampling MD steps between frames and before the first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=sorted(SYSTEMS), default="si")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--only-seed",
        type=int,
        default=None,
        help="run just this seed (results are cached per run, so "
        "several processes can share the work and a last one without it prints the summary)",
    )
    parser.add_argument("--students", nargs="+", default=["painn-small", "painn-medium"])
    parser.add_argument("--methods", nargs="+", default=["undistilled", "rows", "probes"])
    parser.add_argument(
        "--steps",
        type=int,
        default=2400,
        help="optimiser steps per training (epochs follow from the size); 2400 reaches the plateau of the "
        "validation force error at 8 frames, 600 does not (README)",
    )
    parser.add_argument(
        "--overrides", nargs="*", default=[], help="config overrides for every run, e.g. loss.hessian=300"
    )
    parser.add_argument("--val-fraction", type=float, default=0.15, help="validation share of the pool (whole groups)")
    parser.add_argument("--pool-frames", type=int, default=None, help="frames to sample (default: largest size / 0.8)")
    parser.add_argument(
        "--runs", type=int, default=None, help="MD runs per temperature (default: pool frames / 8, at least 2)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output", default="gain_out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    folder = os.path.join(args.output, args.system)
    os.makedirs(folder, exist_ok=True)
    n_pool = args.pool_frames or int(math.ceil(max(args.sizes) / 0.8))
    data = prepare_data(args.system, n_pool, args.runs or max(2, n_pool // 8), folder)
    rows = []
    for student in args.students:
        for size in args.sizes:
            for method in args.methods:
                for seed in range(args.seeds) if args.only_seed is None else [args.only_seed]:
                    rows.append(run_one(data, student, size, method, seed, args, folder))
                    print(json.dumps(rows[-1]), flush=True)
    summary = summarise(rows, data["cost"], args)
    print(table(rows))
    print(f"wall time {time.perf_counter() - started:.0f} s on {args.threads} threads")
    print(json.dumps(summary))


def prepare_data(system: str, n_pool: int, runs: int, folder: str) -> dict:
    """Sample, label and cost the frames once; later runs reuse them."""
    from ffdistill.data.labels import LabelStore, label_file
    from ffdistill.data.sampling import sample_to_file
    from ffdistill.teachers import load_teacher

    structure, temperatures, test_temperature = SYSTEMS[system]
    teacher = load_teacher("sevenn")
    pool, test = os.path.join(folder, "pool.extxyz"), os.path.join(folder, "heldout.extxyz")
    if not os.path.exists(pool):
        sample_to_file(
            teacher, structure, pool, n_frames=n_pool, temperatures=temperatures, runs=runs, interval=INTERVAL
        )
    if not os.path.exists(test):
        sample_to_file(
            teacher,
            structure,
            test,
            n_frames=16,
            temperatures=(test_temperature,),
            md_fraction=1.0,
            interval=10,
            seed=1000,
        )
    for path, probes in ((pool, K), (test, 0)):
        store = path.replace(".extxyz", ".zarr")
        if not os.path.exists(store):
            label_file(teacher, path, store, rows=K, probes=probes, seed=0)
    cost_path = os.path.join(folder, "cost.json")  # measured once per system, so every run is charged alike
    if not os.path.exists(cost_path):
        n_md = max(len(temperatures) * runs, int(round(n_pool * 0.5)))
        md_steps = len(temperatures) * runs * EQUILIBRATION + n_md * INTERVAL
        with open(cost_path, "w") as handle:
            json.dump(measure_label_cost(teacher, pool) | {"md_steps_per_frame": md_steps / n_pool}, handle)
    with open(cost_path) as handle:
        cost = json.load(handle)
    return {
        "pool": pool.replace(".extxyz", ".zarr"),
        "test": test.replace(".extxyz", ".zarr"),
        "cost": cost,
        "n_pool": len(LabelStore(pool.replace(".extxyz", ".zarr"))),
    }


def measure_label_cost(teacher, frames: str, repeats: int = 5) -> dict:
    """Seconds of one E/F call and of K rows or K probes on top, medians on the first frame."""
    import ase.io

    from ffdistill import derivatives

    atoms = ase.io.read(frames, 0)
    probes = derivatives.random_probes(len(atoms), K, seed=0, frame=0)

    def seconds(**kwargs) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            teacher.label(atoms, **kwargs)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    force = seconds()
    return {
        "force_call_s": force,
        "row_in_force_calls": (seconds(rows=range(K)) - force) / K / force,
        "probe_in_force_calls": (seconds(probes=probes) - force) / K / force,
    }


def run_one(data: dict, student: str, size: int, method: str, seed: int, args, folder: str) -> dict:
    from ffdistill.config import load_config
    from ffdistill.data.frames import load_graphs
    from ffdistill.data.labels import LabelStore
    from ffdistill.evaluate.accuracy import accuracy
    from ffdistill.evaluate.candidates import load_for_inference
    from ffdistill.training.trainer import train_from_config

    epochs = int(math.ceil(args.steps / math.ceil(size / 4)))
    labels = {"undistilled": "rows", "rows": "rows", "probes": "probes"}[method]
    overrides = [
        f"data.store={data['pool']}",
        f"data.n_train={size}",
        f"data.val_fraction={args.val_fraction}",
        f"data.hessian_labels={labels}",
        f"model.student={student}",
        f"train.epochs={epochs}",
        f"train.patience={epochs}",
        f"train.seed={seed}",
        f"output={folder}/{student}/n{size}/{method}/s{seed}",
        *args.overrides,
    ]
    if method == "undistilled":
        overrides.append("loss.hessian=0")
    cached = os.path.join(folder, student, f"n{size}", method, f"s{seed}", "result.json")
    if os.path.exists(cached):
        with open(cached) as handle:
            row = json.load(handle)
        return row | {
            "val_force_meV_per_A": best_validation_force(os.path.dirname(cached)),
            "teacher_cost": teacher_cost(data["cost"], size, method),
        }
    t0 = time.perf_counter()
    result = train_from_config(load_config(None, overrides), resume=False, progress=False)
    model = load_for_inference(result.best_path)
    test = LabelStore(data["test"])
    scores = accuracy(model, load_graphs(test, range(len(test)), model.cutoff))
    row = {
        "student": student,
        "size": size,
        "method": method,
        "seed": seed,
        "val_force_meV_per_A": best_validation_force(result.run_dir),
        "energy_meV_per_atom": scores["energy_mae_meV_per_atom"],
        "force_meV_per_A": scores["force_mae_meV_per_A"],
        "hessian_row_eV_per_A2": scores["hessian_row_mae"],
        "teacher_cost": teacher_cost(data["cost"], size, method),
        "train_s": time.perf_counter() - t0,
        "overrides": args.overrides,
    }
    with open(cached, "w") as handle:
        json.dump(row, handle)
    return row


def best_validation_force(run_dir: str) -> float:
    """The lowest validation force MAE of a run (meV/Å): the number choices are made on."""
    with open(os.path.join(run_dir, "history.json")) as handle:
        return min(epoch["val"]["force_mae_meV_per_A"] for epoch in json.load(handle))


def teacher_cost(cost: dict, size: int, method: str) -> float:
    """Force-call equivalents behind ``size`` training frames (validation frames cost alike for all)."""
    per_frame = cost["md_steps_per_frame"] + 1.0
    if method == "rows":
        per_frame += K * cost["row_in_force_calls"]
    if method == "probes":
        per_frame += K * cost["probe_in_force_calls"]
    return size * per_frame


def _mean(rows, key, **match) -> float:
    values = [r[key] for r in rows if all(r[k] == v for k, v in match.items())]
    return float(np.mean(values)) if values else float("nan")


def summarise(rows: list, cost: dict, args) -> dict:
    """Ratios on the first student preset (the one the brief names), each a mean over seeds."""
    student, few, dense = args.students[0], min(args.sizes), max(args.sizes)
    out = {"system": args.system, "student": student, "seeds": args.seeds, "cost": cost}
    for method in ("rows", "probes"):
        if method not in args.methods:
            continue
        suffix = "" if method == "rows" else "_probes"

        def ratio(key, size, method=method):
            return _mean(rows, key, student=student, size=size, method=method) / _mean(
                rows, key, student=student, size=size, method="undistilled"
            )

        out[f"force_ratio_few{suffix}"] = ratio("force_meV_per_A", few)
        out[f"energy_ratio_few{suffix}"] = ratio("energy_meV_per_atom", few)
        out[f"force_ratio_dense{suffix}"] = ratio("force_meV_per_A", dense)
        out[f"energy_ratio_dense{suffix}"] = ratio("energy_meV_per_atom", dense)
        out[f"equal_cost_force_ratio{suffix}"] = equal_cost_ratio(rows, student, method, args.sizes)
    return out


def equal_cost_ratio(rows: list, student: str, method: str, sizes) -> float | None:
    """Distilled force MAE over the undistilled one interpolated (log-log) at the same teacher cost, averaged
    over the sizes whose distilled cost lies inside the undistilled curve; None when none does."""
    curve = sorted(
        (
            _mean(rows, "teacher_cost", student=student, size=n, method="undistilled"),
            _mean(rows, "force_meV_per_A", student=student, size=n, method="undistilled"),
        )
        for n in sizes
    )
    costs, errors = np.log([c for c, _ in curve]), np.log([e for _, e in curve])
    ratios = []
    for n in sizes:
        cost = _mean(rows, "teacher_cost", student=student, size=n, method=method)
        if costs[0] <= np.log(cost) <= costs[-1]:
            ratios.append(
                _mean(rows, "force_meV_per_A", student=student, size=n, method=method)
                / float(np.exp(np.interp(np.log(cost), costs, errors)))
            )
    return float(np.mean(ratios)) if ratios else None


def table(rows: list) -> str:
    lines = [
        "| student | frames | method | energy MAE (meV/atom) | force MAE (meV/Å) | Hessian-row MAE (eV/Å²) "
        "| teacher cost (force calls) | validation force MAE (meV/Å) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(r["student"], r["size"], r["method"]) for r in rows},
        key=lambda k: (k[0], k[1], ["undistilled", "rows", "probes"].index(k[2])),
    )
    for student, size, method in keys:
        sel = [r for r in rows if (r["student"], r["size"], r["method"]) == (student, size, method)]

        def cell(key, sel=sel):
            values = [r[key] for r in sel]
            each = ", ".join(f"{v:.3g}" for v in values)
            return f"{np.mean(values):.3g} ± {np.std(values):.2g} ({each})"

        cells = " | ".join(cell(k) for k in ("energy_meV_per_atom", "force_meV_per_A", "hessian_row_eV_per_A2"))
        val = cell("val_force_meV_per_A") if all("val_force_meV_per_A" in r for r in sel) else "n/a"
        lines.append(f"| {student} | {size} | {method} | {cells} | {sel[0]['teacher_cost']:.0f} | {val} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
