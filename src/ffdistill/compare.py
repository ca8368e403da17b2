"""``ffdistill compare``: the paper's comparisons on the user's own system, one command.

Every method trains from the same config, data split, budget and seeds; only the switches below
differ. All are evaluated on the same held-out frames (``data.test_fraction`` > 0).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from ffdistill.config import RunConfig, from_dict
from ffdistill.errors import InputError

#: method -> overrides of the user's config
METHODS = {
    "undistilled": {"loss": {"hessian": 0.0}},
    "hessian": {},
    "n2n": {"loss": {"hessian": 0.0, "n2n": 1.0}},
    "a2a": {"loss": {"hessian": 0.0}, "model": {"a2a": True}},
    "teacher-forces": {"loss": {"hessian": 0.0}, "data": {"use_reference": False}},
}
COLUMNS = ("energy_mae_meV_per_atom", "force_mae_meV_per_A", "hessian_row_mae", "md_stable_fraction", "seconds_per_force_call")


def method_config(config: RunConfig, method: str, seed: int, output: str) -> RunConfig:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    raw = dataclasses.asdict(config)
    for section, values in METHODS[method].items():
        raw[section].update(values)
    if method == "hessian" and not raw["loss"]["hessian"]:
        raw["loss"]["hessian"] = 100.0
    raw["train"]["seed"] = seed
    raw["output"] = os.path.join(output, method, f"seed{seed}")
    return from_dict(RunConfig, raw)


def compare(config: RunConfig, methods: Sequence[str], seeds: int, output: str, md_steps: int = 200, progress: bool = True) -> dict:
    """Train and evaluate every method for every seed; returns {method: {metric: [value per seed]}}."""
    from ffdistill.calculator import load_student
    from ffdistill.data import load_graphs, split_indices
    from ffdistill.evaluate import accuracy, seconds_per_force_call
    from ffdistill.graph import to_ase
    from ffdistill.labels import LabelStore
    from ffdistill.simulate import md_stability
    from ffdistill.train import train_from_config

    if config.data.test_fraction <= 0:
        raise InputError("compare needs held-out frames: set data.test_fraction (e.g. 0.2)")
    store = LabelStore(config.data.store)
    _, _, test_idx = split_indices(len(store), config.data.val_fraction, config.data.test_fraction, config.data.split_seed)
    results: dict = {}
    for method in methods:
        for seed in range(seeds):
            run = train_from_config(method_config(config, method, seed, output), progress=progress)
            student = load_student(run.best_path)
            test = load_graphs(store, test_idx, student.cutoff, reference=config.data.use_reference)
            metrics = accuracy(student, test)
            metrics["seconds_per_force_call"] = seconds_per_force_call(student, test[0], repeats=5)
            from ffdistill.calculator import EnergyModelCalculator

            calc = EnergyModelCalculator(student, student.cutoff)
            metrics["md_stable_fraction"] = float(md_stability(calc, to_ase(test[0])[0], md_steps, seed=seed)["stable"])
            for key in COLUMNS:
                results.setdefault(method, {}).setdefault(key, []).append(metrics[key])
    with open(os.path.join(output, "compare.json"), "w") as handle:
        json.dump({"methods": results, "seeds": seeds, "test_frames": len(test_idx)}, handle, indent=2)
    return results


def table(results: dict) -> str:
    header = "| method | energy MAE (meV/atom) | force MAE (meV/Å) | Hessian-row MAE (eV/Å²) | MD stable | ms / force call |"
    lines = [header, "|---|---|---|---|---|---|"]
    for method, m in results.items():
        cells = [_mean_spread(m[k], scale=1000 if k == "seconds_per_force_call" else 1) for k in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_spread(values, scale: float = 1.0) -> str:
    v = np.asarray(values, dtype=float) * scale
    return f"{v.mean():.3g} ± {v.std():.2g}" if len(v) > 1 else f"{v.mean():.3g}"
