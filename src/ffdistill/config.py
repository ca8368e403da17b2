"""Typed run configuration: dataclasses with defaults, loaded from YAML with ``a.b=c`` overrides.

Unknown keys are refused with the nearest valid name; YAML is parsed with ``safe_load`` (never code).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from ffdistill.errors import InputError


@dataclass
class DataConfig:
    store: str = ""  #: label store written by ``ffdistill label``
    val_fraction: float = 0.2  #: share of frames for validation (early stopping, λH halving)
    test_fraction: float = 0.0  #: share of frames held out and never seen in training
    n_train: int | None = None  #: use at most this many training frames (learning-curve studies)
    batch_size: int = 4  #: structures per step
    rows_per_structure: int = 1  #: s, Hessian rows (and s probes) per structure per step, drawn from those stored
    hessian_labels: str = "both"  #: which stored Hessian labels to train on: "rows", "probes" or "both"
    row_temperature: float | None = None  #: None: uniform rows; else p ∝ softmax(||H[r]|| / T)
    use_reference: bool = True  #: fit E/F to the input file's own labels (e.g. DFT) when it has them
    split_seed: int = 0  #: seed of the train/validation/test split
    #: Hessian rows (and probes) per validation structure, drawn once from split_seed so every epoch scores
    #: the same ones; null scores every stored row (each costs a second-derivative pass per epoch)
    val_rows_per_structure: int | None = 1
    workers: int = 0  #: DataLoader processes that read frames and build graphs; 0 reads in the training process
    prefetch_factor: int = 2  #: batches each worker prepares ahead (workers > 0)
    #: keep built graphs in memory when a split has at most this many frames (0: always stream); a frame
    #: read costs ~20 ms every epoch, which dominated small runs such as the demo
    cache_frames: int = 5000


@dataclass
class ModelConfig:
    student: str = "painn-small"  #: preset (painn-tiny|small|medium) or architecture name
    cutoff: float = 5.0  #: graph radius, Å
    hparams: dict = field(default_factory=dict)  #: overrides of the preset's hyper-parameters
    #: student second derivatives in training: "fd" (forward differences of the forces, one more force
    #: evaluation per wave of rows: 1.99x an undistilled step on CPU, rows within 3e-3 eV/Å² of autograd's
    #: in float32 at 1e-3 Å) or "autograd" (exact VJPs, a double backward: 3.5x); benchmarks/training_step.py
    jacobian: str = "fd"
    fd_step: float = 1e-3  #: forward-difference step (Å) when jacobian = "fd" (float32: 1e-3 measured best)
    a2a: bool = False  #: a2a baseline: the teacher's frozen element embeddings through a learned linear map


@dataclass
class LossConfig:
    energy: float = 5.0  #: λE
    forces: float = 100.0  #: λF
    #: λH; 0 trains the undistilled baseline. With hessian_normalisation "store" it weighs the relative Hessian
    #: error against λF's relative force error (chosen on validation frames: docs' training page)
    hessian: float = 300.0
    #: "store": the Hessian term × σ_F / σ_H from the training frames' teacher labels (loss.hessian_scale), so
    #: one λH travels between systems; "none": the paper's raw term (eV/Å², λH tuned per system)
    hessian_normalisation: str = "store"
    #: λS, the virial error per atom of periodic cells (eV/atom, as the energy term); used when the store carries
    #: stress, so that NPT sees a trained stress
    stress: float = 5.0
    halve_hessian_within: float | None = 0.05  #: halve λH once val force MAE ≤ (1 + this) × teacher's
    hessian_decay_from: float | None = None  #: from this fraction of the steps on, λH decays (cosine) to 0
    consistency: float = 0.0  #: direct-force students: weight tying -dE/dR of the energy head to the forces
    n2n: float = 0.0  #: n2n baseline: weight of the projected node-feature MSE (needs label --node-features)


@dataclass
class TrainConfig:
    """How long and how fast: training runs until the validation force error stops improving (the stopping
    rule below), whatever the store's size, so one config serves 8 frames and 10⁵."""

    max_steps: int = 100_000  #: ceiling on optimiser steps; the stopping rule ends most runs long before
    epochs: int | None = None  #: optional ceiling in passes over the training frames
    lr: float = 3e-3  #: peak learning rate (AdamW), reached after the warm-up
    warmup_steps: int = 20
    lr_factor: float = 0.5  #: reduce on plateau: lr × this after lr_patience steps without a gain
    lr_patience: int = 250  #: steps without a gain of min_improvement before the learning rate is reduced
    min_lr_factor: float = 0.01  #: the learning rate never goes below lr × this
    #: a gain: validation force MAE below (1 - this) × its value at the last gain
    min_improvement: float = 0.01
    #: stop when there was no gain over the last max(patience steps, patience_fraction × steps taken,
    #: 2 validations)
    patience: int = 1000
    patience_fraction: float = 0.25
    #: steps between validations (each also refits the energy references and writes the checkpoint);
    #: null: max(50, 5 × validation batches + 2 × training batches), ≲ 10 % of training's cost
    validate_every: int | None = None
    weight_decay: float = 0.0
    ema_decay: float = 0.99  #: exponential moving average of weights used for validation and export
    grad_clip: float = 10.0
    refit_references: bool = True  #: at each validation, refit per-element energies to the energy residuals
    seed: int = 0
    #: auto (a GPU when there is one), cpu, cuda or cuda:K; under data parallelism cuda is each rank's LOCAL_RANK GPU
    device: str = "auto"
    devices: int = 1  #: data-parallel processes on this node (gloo on CPU, NCCL on GPUs)
    #: K > 1: train K students differing only in their seed (seed + k) and save them, calibrated on the validation
    #: frames, as one committee (OUTPUT/committee.pt) whose spread is the uncertainty
    committee: int = 1


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: str = "runs/student"  #: run folder: config, checkpoints, history, best student


#: Allowed values of every numeric or named setting: (low, high, which ends are allowed) or a set of names.
#: A None value is allowed wherever the field's type says so (it means "the default rule").
RANGES: dict[str, tuple | set] = {
    "data.val_fraction": (0.0, 1.0, "[)"),
    "data.test_fraction": (0.0, 1.0, "[)"),
    "data.n_train": (1, math.inf, "[)"),
    "data.batch_size": (1, math.inf, "[)"),
    "data.rows_per_structure": (1, math.inf, "[)"),
    "data.hessian_labels": {"rows", "probes", "both"},
    "data.row_temperature": (0.0, math.inf, "()"),
    "data.val_rows_per_structure": (1, math.inf, "[)"),
    "data.workers": (0, math.inf, "[)"),
    "data.prefetch_factor": (1, math.inf, "[)"),
    "data.cache_frames": (0, math.inf, "[)"),
    "model.cutoff": (0.0, math.inf, "()"),
    "model.jacobian": {"fd", "autograd"},
    "model.fd_step": (0.0, 0.1, "(]"),
    "loss.energy": (0.0, math.inf, "[)"),
    "loss.forces": (0.0, math.inf, "[)"),
    "loss.hessian": (0.0, math.inf, "[)"),
    "loss.stress": (0.0, math.inf, "[)"),
    "loss.halve_hessian_within": (0.0, math.inf, "[)"),
    "loss.hessian_normalisation": {"store", "none"},
    "loss.hessian_decay_from": (0.0, 1.0, "[]"),
    "loss.consistency": (0.0, math.inf, "[)"),
    "loss.n2n": (0.0, math.inf, "[)"),
    "train.max_steps": (1, math.inf, "[)"),
    "train.epochs": (1, math.inf, "[)"),
    "train.lr": (0.0, math.inf, "()"),
    "train.warmup_steps": (0, math.inf, "[)"),
    "train.lr_factor": (0.0, 1.0, "()"),
    "train.lr_patience": (1, math.inf, "[)"),
    "train.min_lr_factor": (0.0, 1.0, "(]"),
    "train.min_improvement": (0.0, 1.0, "[)"),
    "train.patience": (1, math.inf, "[)"),
    "train.patience_fraction": (0.0, 1.0, "[)"),
    "train.validate_every": (1, math.inf, "[)"),
    "train.weight_decay": (0.0, math.inf, "[)"),
    "train.ema_decay": (0.0, 1.0, "[)"),
    "train.grad_clip": (0.0, math.inf, "()"),
    "train.devices": (1, math.inf, "[)"),
    "train.committee": (1, math.inf, "[)"),
}


def check_ranges(config: RunConfig) -> RunConfig:
    """Refuse, before any work, a value outside its allowed range, in one line naming the key, the value and
    the range."""
    for key, allowed in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value is None or _allowed(value, allowed):
            continue
        raise InputError(f"config key {key}={value!r} is out of range: {_describe(allowed)}")
    d = config.data
    if d.val_fraction + d.test_fraction >= 1:
        raise InputError(
            f"config keys data.val_fraction + data.test_fraction = {d.val_fraction + d.test_fraction:g} leave "
            "no training frames: their sum must be below 1"
        )
    return config


def _allowed(value, allowed) -> bool:
    if isinstance(allowed, set):
        return value in allowed
    low, high, ends = allowed
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    above = value >= low if ends[0] == "[" else value > low
    below = value <= high if ends[1] == "]" else value < high
    return above and below


def _describe(allowed) -> str:
    if isinstance(allowed, set):
        return "one of " + ", ".join(sorted(allowed))
    low, high, ends = allowed
    if high == math.inf:
        return f"must be {'≥' if ends[0] == '[' else '>'} {low:g}"
    return f"must be in {ends[0]}{low:g}, {high:g}{ends[1]}"


def load_config(path: str | None, overrides: list[str] = ()) -> RunConfig:
    """A ``RunConfig`` from a YAML file (or defaults when ``path`` is None) and dotted overrides."""
    raw: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise InputError(f"config file {path} not found")
        try:
            with open(path) as handle:
                raw = yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            raise InputError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from error
        if not isinstance(raw, dict):
            raise InputError(f"config file {path} must hold a mapping")
    for item in overrides:
        _apply_override(raw, item)
    return check_ranges(from_dict(RunConfig, raw))


def _apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise InputError(f"override {item!r} must look like section.key=value")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"override {item!r}: {part} is not a section")
    node[leaf] = yaml.safe_load(value)


def from_dict(cls, raw: dict, where: str = ""):
    """Build dataclass ``cls`` from ``raw``, refusing unknown keys with a suggestion."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {where}{close[0]}?" if close else f"; valid keys: {', '.join(fields)}"
            raise InputError(f"unknown config key {where}{key}{hint}")
        kind = fields[key].type
        sub = _dataclass_type(kind)
        kwargs[key] = (
            from_dict(sub, value or {}, f"{where}{key}.") if sub is not None else _coerce(value, kind, where + key)
        )
    return cls(**kwargs)


_SCALARS = {"float": float, "int": int, "bool": bool, "str": str, "dict": dict}


def _coerce(value, annotation: str, key: str):
    """Check a value against its field's type, accepting what YAML reads loosely ('5e-3' as a string)."""
    optional = annotation.startswith("Optional[") or annotation.endswith(" | None")
    name = annotation.removeprefix("Optional[").removesuffix("]") if annotation.startswith("Optional[") else annotation
    name = name.removesuffix(" | None")
    if value is None and optional:
        return None
    kind = _SCALARS.get(name)
    if kind is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is float and not isinstance(value, bool):
            return float(value)
        if kind is int and str(value).lstrip("-").isdigit():
            return int(value)
    except (TypeError, ValueError):
        pass
    raise InputError(f"config key {key} must be {name}, got {value!r}")


def _dataclass_type(annotation):
    for candidate in (DataConfig, ModelConfig, LossConfig, TrainConfig):
        if annotation in (candidate, candidate.__name__):
            return candidate
    return None


def save_config(config: RunConfig, path: str) -> None:
    with open(path, "w") as handle:
        yaml.safe_dump(dataclasses.asdict(config), handle, sort_keys=False)
