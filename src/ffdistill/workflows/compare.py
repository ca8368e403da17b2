"""``ffdistill compare``: the paper's comparisons on the user's own system, one command.

Every method trains from the same config, data split, budget and seeds; only the switches below
differ. All are evaluated on the same held-out frames (``data.test_fraction`` > 0).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from ffdistill.config import LossConfig, RunConfig, from_dict
from ffdistill.errors import InputError

#: method -> overrides of the user's config
METHODS = {
    "undistilled": {"loss": {"hessian": 0.0}},
    "hessian": {},
    "n2n": {"loss": {"hessian": 0.0, "n2n": 1000.0}},  # the reference code's weight on the feature MSE
    "a2a": {"loss": {"hessian": 0.0}, "model": {"a2a": True}},
    "teacher-forces": {"loss": {"hessian": 0.0}, "data": {"use_reference": False}},
}
COLUMNS = (
    "energy_mae_meV_per_atom",
    "force_mae_meV_per_A",
    "hessian_row_mae",
    "md_stable_fraction",
    "seconds_per_force_call",
)


def method_config(config: RunConfig, method: str, seed: int, output: str) -> RunConfig:
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    raw = dataclasses.asdict(config)
    for section, values in METHODS[method].items():
        raw[section].update(values)
    if method == "hessian" and not raw["loss"]["hessian"]:
        raw["loss"]["hessian"] = LossConfig().hessian
    raw["train"]["seed"] = seed
    raw["output"] = os.path.join(output, method, f"seed{seed}")
    return from_dict(RunConfig, raw)


def default_methods(store) -> list[str]:
    """Every method that means something on ``store``: teacher-forces only with reference labels."""
    return [m for m in METHODS if m != "teacher-forces" or has_distinct_reference(store)]


def has_distinct_reference(store) -> bool:
    """Whether the store's reference energies and forces (e.g. DFT) exist and differ from the teacher's."""
    group = store.group
    ref_e, ref_f = group["ref_energy"][:], group["ref_forces"][:]
    if not (np.isfinite(ref_e).all() and np.isfinite(ref_f).all()):
        return False
    return not (np.allclose(ref_e, group["energy"][:]) and np.allclose(ref_f, group["forces"][:]))


def check_methods(methods: Sequence[str], store) -> None:
    """Refuse, before any training, a method that does not exist or cannot mean anything here."""
    for method in methods:
        if method not in METHODS:
            raise InputError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    if "teacher-forces" in methods and not has_distinct_reference(store):
        raise InputError(
            f"teacher-forces needs reference labels (e.g. DFT) distinct from the teacher's, and {store.path} has none:"
            " it would train exactly like undistilled"
        )


def compare(
    config: RunConfig,
    methods: Sequence[str] | None,
    seeds: int,
    output: str,
    md_steps: int = 200,
    progress: bool = True,
) -> dict:
    """Train and evaluate every method for every seed; returns {method: {metric: [value per seed]}}."""
    from ffdistill.data.frames import split_indices
    from ffdistill.data.labels import LabelStore
    from ffdistill.evaluate.accuracy import store_test_set
    from ffdistill.training.trainer import train_from_config

    if config.data.test_fraction <= 0:
        raise InputError("compare needs held-out frames: set data.test_fraction (e.g. 0.2)")
    store = LabelStore(config.data.store)
    methods = default_methods(store) if methods is None else methods
    check_methods(methods, store)
    os.makedirs(output, exist_ok=True)
    _, _, test_idx = split_indices(
        store.groups(), config.data.val_fraction, config.data.test_fraction, config.data.split_seed
    )
    test = store_test_set(store, test_idx, reference=config.data.use_reference)
    results: dict = {}
    for method in methods:
        for seed in range(seeds):
            run = train_from_config(method_config(config, method, seed, output), progress=progress)
            metrics = evaluate_student(method, run.best_path, test, md_steps, seed, config.train.device)
            for key in COLUMNS:
                results.setdefault(method, {}).setdefault(key, []).append(metrics[key])
    with open(os.path.join(output, "compare.json"), "w") as handle:
        json.dump({"methods": results, "seeds": seeds, "test_frames": len(test_idx)}, handle, indent=2)
    return results


def evaluate_student(name: str, path: str, test, md_steps: int, seed: int, device: str = "cpu") -> dict:
    """Accuracy on ``test`` (graphs at the student's own cutoff), time per force call and whether one
    NVT run from the first test frame stays stable: the same functions ``ffdistill evaluate`` uses, on
    ``device`` (the device the student was trained on)."""
    from ffdistill.evaluate.accuracy import accuracy
    from ffdistill.evaluate.candidates import Candidate, load_for_inference
    from ffdistill.evaluate.md import md_stability
    from ffdistill.evaluate.speed import force_call_seconds

    student = Candidate.of_student(name, load_for_inference(path, device))
    metrics = accuracy(student.model, test.graphs(student.cutoff, student.dtype))
    metrics["seconds_per_force_call"] = force_call_seconds([student], test.atoms[0])[name]
    metrics["md_stable_fraction"] = float(
        md_stability(student.calculator(), test.atoms[0], md_steps, seed=seed)["stable"]
    )
    return metrics


def table(results: dict) -> str:
    header = (
        "| method | energy MAE (meV/atom) | force MAE (meV/Å) | Hessian-row MAE (eV/Å²) | MD stable | ms / force call |"
    )
    lines = [header, "|---|---|---|---|---|---|"]
    for method, m in results.items():
        cells = [_mean_spread(m[k], scale=1000 if k == "seconds_per_force_call" else 1) for k in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_spread(values, scale: float = 1.0) -> str:
    v = np.asarray(values, dtype=float) * scale
    return f"{v.mean():.3g} ± {v.std():.2g}" if len(v) > 1 else f"{v.mean():.3g}"
