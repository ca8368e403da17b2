"""Does memory grow with the data? Peak RSS above the post-import baseline, each case in a fresh process:

* training: ``train.max_steps`` optimiser steps (200) from a store of 200 vs 20,000 frames (synthetic
  labels written straight into the store: 2-atom Cu cells, random forces and one random Hessian row each;
  painn-tiny, batches of 4, one row per structure, 1 % of the frames for validation, no reference refit,
  whose pass over every training frame would dominate the time without changing the memory);
* labelling: ``label_file`` with EMT (one Hessian row per frame) over an extxyz of 200 vs N 2-atom frames.

    OMP_NUM_THREADS=1 python benchmarks/memory_scaling.py [--train-frames 20000] [--label-frames 20000]
        [--before OLD_SRC [--before-frames 2000]]

With ``--before``, the same 2,000 frames are also labelled by the ffdistill in OLD_SRC (e.g. a ``git
worktree`` of an earlier commit's ``src``) and by this one, one after the other: seconds per frame of each.

The last line printed is one JSON object; ``train_rss_ratio`` and ``label_rss_ratio`` are large / small
(target <= 1.3: flat memory).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

SMALL = 200
STEPS = 200


def rss_mib() -> float:
    """Peak resident set of this process so far (Linux reports KiB). Linux carries the peak of the process that
    started this one across ``exec``, so the parent here never imports more than the standard library."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hwm_mib() -> float:
    """The same peak from ``/proc`` (VmHWM, this executable's memory alone): a cross-check."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def small_cells(n: int, seed: int = 0):
    """``n`` rattled 2-atom Cu cells, groups of 10 consecutive frames."""
    import numpy as np
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    base = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    for k in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        atoms.info["group"] = k // 10
        yield atoms


def write_synthetic_store(path: str, n: int, chunk: int = 2000) -> None:
    """A complete label store of ``n`` frames with random but well-formed labels, appended ``chunk`` frames
    at a time (labelling 20,000 frames with a teacher would take the better part of an hour)."""
    import numpy as np

    from ffdistill.data import labels
    from ffdistill.teachers.base import TeacherLabels

    rng = np.random.default_rng(1)
    request = labels.LabelRequest("synthetic", "synthetic", "0", "1", 0, [0, 1], group_rule="info:group")
    group = labels._open_partial(path + ".partial", request, path, n)
    pending = []
    for index, atoms in enumerate(small_cells(n)):
        forces = rng.normal(0.0, 0.3, (len(atoms), 3))
        row = rng.integers(3 * len(atoms), size=1)
        made = TeacherLabels(-7.0 + rng.normal(0.0, 0.05), forces, None, rng.normal(0.0, 2.0, (1, len(atoms), 3)), row)
        pending.append(labels.frame_values(atoms, made, index, atoms.info["group"]))
        if len(pending) == chunk or index == n - 1:
            labels._append_values(group, {name: np.concatenate([p[name] for p in pending]) for name in pending[0]})
            pending = []
    group.attrs["frames_done"] = n
    labels._finish(group, path + ".partial", path)


def child_train(store: str, out: str) -> dict:
    from ffdistill.config import load_config
    from ffdistill.training.trainer import train_from_config

    overrides = [
        f"data.store={store}",
        f"output={out}",
        "model.student=painn-tiny",
        "model.cutoff=4.0",
        "train.epochs=1000",
        f"train.max_steps={STEPS}",
        "train.refit_references=false",
        "data.cache_frames=0",  # stream at both sizes: the figure is about streaming
        "data.batch_size=4",
        "data.rows_per_structure=1",
        "data.val_fraction=0.01",
        "loss.hessian=100",
    ]
    config = load_config(None, overrides)
    baseline, start = (rss_mib(), hwm_mib()), time.perf_counter()
    result = train_from_config(config, progress=False)
    return {**_peaks(baseline), "seconds": time.perf_counter() - start, "steps": result.history[-1]["step"]}


def _peaks(baseline: tuple[float, float]) -> dict:
    return {"baseline_mib": baseline[0], "peak_mib": rss_mib(), "hwm_above_baseline_mib": hwm_mib() - baseline[1]}


def child_label(frames: str, out: str) -> dict:
    from ffdistill.data.labels import label_file
    from ffdistill.teachers import load_teacher

    teacher = load_teacher("ase:ase.calculators.emt:EMT")
    baseline, start = (rss_mib(), hwm_mib()), time.perf_counter()
    store = label_file(teacher, frames, out, rows=1, progress=False)
    return {**_peaks(baseline), "seconds": time.perf_counter() - start, "frames": len(store)}


def run_child(kind: str, source: str, out: str, src: str | None = None) -> dict:
    """One case in a fresh interpreter, so no peak of another case (or of writing the data) is counted; ``src``:
    another ffdistill source folder to run instead of the installed one."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, source, out],
        check=True,
        capture_output=True,
        text=True,
        env=env if src else None,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["above_baseline_mib"] = figures["peak_mib"] - figures["baseline_mib"]
    print(
        f"{kind} {os.path.basename(source)}: {figures['above_baseline_mib']:.1f} MiB above a "
        f"{figures['baseline_mib']:.0f} MiB baseline (VmHWM: {figures['hwm_above_baseline_mib']:.1f} MiB), "
        f"{figures['seconds']:.1f} s",
        flush=True,
    )
    return figures


def write_frames(path: str, n: int, chunk: int = 1000) -> None:
    import ase.io

    cells = small_cells(n, seed=2)
    for start in range(0, n, chunk):
        ase.io.write(path, [next(cells) for _ in range(min(chunk, n - start))], format="extxyz", append=start > 0)


def measure(kind: str, n: int, folder: str) -> dict:
    """Write the data of one case (a store to train from, or frames to label) in one child, run it in another."""
    if kind == "train":
        source = os.path.join(folder, f"synthetic{n}.zarr")
        subprocess.run([sys.executable, __file__, "--child", "write-store", str(n), source], check=True)
        return run_child(kind, source, os.path.join(folder, f"run{n}"))
    source = os.path.join(folder, f"frames{n}.extxyz")
    subprocess.run([sys.executable, __file__, "--child", "write-frames", str(n), source], check=True)
    return run_child(kind, source, os.path.join(folder, f"labels{n}.zarr"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-frames", type=int, default=20_000)
    parser.add_argument("--label-frames", type=int, default=20_000)
    parser.add_argument("--kinds", nargs="+", choices=["train", "label"], default=["train", "label"])
    parser.add_argument("--before", help="src folder of earlier code: its labelling is timed beside this one's")
    parser.add_argument("--before-frames", type=int, default=2000, help="frames labelled by both, side by side")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SOURCE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, source, out = args.child
        if kind.startswith("write-"):
            (write_synthetic_store if kind == "write-store" else write_frames)(out, int(source))
        else:
            print(json.dumps((child_train if kind == "train" else child_label)(source, out)))
        return
    wall = time.perf_counter()
    figures: dict = {"threads": os.environ.get("OMP_NUM_THREADS"), "steps": STEPS}
    with tempfile.TemporaryDirectory() as folder:
        for kind, large in (("train", args.train_frames), ("label", args.label_frames)):
            if kind not in args.kinds:
                continue
            results = [measure(kind, n, folder) for n in (SMALL, large)]
            figures[kind] = {str(SMALL): results[0], str(large): results[1]}
            small_mib, large_mib = (r["above_baseline_mib"] for r in results)
            figures[f"{kind}_rss_ratio"] = large_mib / max(small_mib, 1e-9)
        if "label" in args.kinds:
            figures["label_seconds_per_frame"] = figures["label"][str(args.label_frames)]["seconds"] / args.label_frames
        if args.before:  # the same frames labelled by the earlier code and by this one, one after the other
            n = args.before_frames
            source = os.path.join(folder, f"frames{n}.extxyz")
            if not os.path.exists(source):
                subprocess.run([sys.executable, __file__, "--child", "write-frames", str(n), source], check=True)
            pair = {
                name: run_child("label", source, os.path.join(folder, f"{name}{n}.zarr"), src)
                for name, src in (("before", args.before), ("after", None))
            }
            figures["label_before_after"] = {
                "frames": n,
                **{f"{k}_seconds_per_frame": v["seconds"] / n for k, v in pair.items()},
                **{f"{k}_above_baseline_mib": v["above_baseline_mib"] for k, v in pair.items()},
            }
    figures["wall_seconds"] = time.perf_counter() - wall
    ratios = ", ".join(f"{kind} ratio {figures[f'{kind}_rss_ratio']:.2f}" for kind in args.kinds)
    print(f"{ratios} (large / small, target <= 1.3), {figures['wall_seconds']:.0f} s in all")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
