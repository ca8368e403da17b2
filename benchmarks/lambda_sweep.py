"""λH on validation frames only, on the gain benchmark's own few-frame runs (`gain_defaults.py`).

Each run trains painn-small from the shipped config on a system folder's labels, with the benchmark's split
(``data.n_train`` frames, a quarter of the groups for validation) and only ``loss.hessian`` changed; it reads
nothing held out. λH 0 and the default (300) are the benchmark's own ``undistilled-sN`` and ``distilled-sN``
runs; any other λH is trained into ``lambda{λH}-s{seed}`` beside them (resumed when stopped).

    OMP_NUM_THREADS=1 python benchmarks/lambda_sweep.py run FOLDER LAMBDA SEED
    python benchmarks/lambda_sweep.py table NAME=FOLDER [NAME=FOLDER ...]

``table`` prints one Markdown row per (system, λH): the best validation force and energy MAE over the run's
validation history, mean ± standard deviation over the seeds found (each seed in brackets), the steps the
stopping rule took and the step where validation first came within 1 % of its best; the last line is one JSON
object with every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gain_defaults import CONFIG  # noqa: E402

DEFAULT = 300.0
LAMBDAS = (0.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


def run_folder(folder: str, lam: float, seed: int) -> str:
    name = {0.0: f"undistilled-s{seed}", DEFAULT: f"distilled-s{seed}"}.get(lam, f"lambda{lam:g}-s{seed}")
    return os.path.join(folder, name)


def train(folder: str, lam: float, seed: int) -> str:
    from ffdistill.config import load_config
    from ffdistill.training.trainer import train_from_config

    out = run_folder(folder, lam, seed)
    if os.path.exists(os.path.join(out, "summary.json")):
        return out
    with open(os.path.join(folder, "distilled-s0", "config.yaml")) as handle:
        import yaml

        n_train = yaml.safe_load(handle)["data"]["n_train"]
    overrides = [
        f"data.store={os.path.join(folder, 'labels.zarr')}",
        f"output={out}",
        f"data.n_train={n_train}",
        "data.val_fraction=0.25",
        f"train.seed={seed}",
        f"loss.hessian={lam:g}",
    ]
    resume = os.path.exists(os.path.join(out, "checkpoint.pt"))
    train_from_config(load_config(CONFIG, overrides), resume=resume, progress=False)
    return out


def best_of(run: str) -> dict | None:
    """Best validation force MAE of a finished run, the energy MAE there, and the stopping rule's cost."""
    if not os.path.exists(os.path.join(run, "summary.json")):
        return None
    with open(os.path.join(run, "history.json")) as handle:
        history = json.load(handle)
    force = [entry["val"]["force_mae_meV_per_A"] for entry in history]
    best = history[force.index(min(force))]
    first = next(entry["step"] for entry, f in zip(history, force) if f <= 1.01 * min(force))
    return {
        "steps": history[-1]["step"],
        "first_within_1pct": first,
        "force": best["val"]["force_mae_meV_per_A"],
        "energy": best["val"]["energy_mae_meV_per_atom"],
    }


def spread(values: list[float], digits: int) -> str:
    each = ", ".join(f"{v:.{digits}f}" for v in values)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f} ({each})"


def table(systems: dict[str, str], seeds=(0, 1)) -> list[dict]:
    header = (
        "| system | λH (relative) | seeds | validation force MAE (meV/Å) | validation energy MAE (meV/atom) "
        "| steps to stop | step first within 1 % of best |"
    )
    print(header + "\n|---|---|---|---|---|---|---|")
    rows = []
    for name, folder in systems.items():
        for lam in LAMBDAS:
            runs = {s: best_of(run_folder(folder, lam, s)) for s in seeds}
            runs = {s: r for s, r in runs.items() if r}
            if not runs:
                continue
            force, energy = [r["force"] for r in runs.values()], [r["energy"] for r in runs.values()]
            rows.append({"system": name, "folder": folder, "hessian": lam, "runs": runs})
            label = f"{lam:g}" + (" (default)" if lam == DEFAULT else "")
            print(
                f"| {name} | {label} | {','.join(map(str, runs))} | {spread(force, 1 if max(force) > 20 else 2)} | "
                f"{spread(energy, 2 if max(energy) > 1 else 3)} | {', '.join(str(r['steps']) for r in runs.values())}"
                f" | {', '.join(str(r['first_within_1pct']) for r in runs.values())} |"
            )
    print(json.dumps({"config": os.path.relpath(CONFIG, os.path.join(os.path.dirname(CONFIG), "..")), "rows": rows}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    one = verbs.add_parser("run", help="train one λH and seed on a system folder's split")
    one.add_argument("folder")
    one.add_argument("hessian", type=float)
    one.add_argument("seed", type=int)
    summary = verbs.add_parser("table", help="the table of every finished run")
    summary.add_argument("systems", nargs="+", metavar="NAME=FOLDER")
    args = parser.parse_args()
    if args.verb == "run":
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps({"run": train(args.folder, args.hessian, args.seed)}))
    else:
        table(dict(item.split("=", 1) for item in args.systems))


if __name__ == "__main__":
    main()
