"""Training a student: one step function, one loop, plain-dict checkpoints.

Training runs until it converges, whatever the store's size: every ``validation_interval`` optimiser steps
the EMA weights are scored on the validation frames, the learning rate follows that score (reduce on
plateau), a checkpoint is written (``checkpoint.pt``, atomically) and, when validation improves, the best
student (``best.pt``, student file format); ``stop_reason`` ends the run when the validation force error
stops improving, or at the ceiling. ``resume=True`` continues from the last checkpoint; shuffling and row
sampling are seeded by epoch and a resumed epoch skips the batches already taken, so a resumed run repeats
exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from ffdistill import distributed
from ffdistill.calculator import save_student
from ffdistill.config import RunConfig, check_ranges, save_config
from ffdistill.data.frames import (
    BatchPlan,
    FrameDataset,
    frame_blocks,
    frame_loader,
    reference_statistics,
    split_indices,
)
from ffdistill.data.labels import LabelStore
from ffdistill.distributed import Ranks
from ffdistill.errors import InputError, TrainingError
from ffdistill.evaluate.accuracy import accuracy_of_batches
from ffdistill.faults import fault_point
from ffdistill.graph import AtomicGraph
from ffdistill.students import build_student
from ffdistill.students.base import teacher_embedding_table
from ffdistill.training.loss import DistillationLoss, build_loss, hessian_scale


@dataclass
class TrainState:
    epoch: int = 0  #: passes over the training frames completed
    step: int = 0  #: optimiser steps taken
    best_force_mae: float = math.inf  #: best validation force MAE, eV/Å (the step of best.pt)
    best_step: int = 0
    progress_mae: float = math.inf  #: validation force MAE at the last gain of ≥ min_improvement, eV/Å
    progress_step: int = 0  #: the step of that gain
    hessian_weight: float = 0.0  #: current λH (halved once, see LossConfig)
    hessian_halved: bool = False
    stop_reason: str = ""  #: why training ended (empty while it runs)
    history: list = field(default_factory=list)  #: one dict of metrics per validation


@dataclass
class TrainResult:
    run_dir: str
    best_path: str
    best_force_mae: float  #: eV/Å
    history: list
    stop_reason: str = ""


def warmup_lr(step: int, cfg) -> float | None:
    """The learning rate of a warm-up step (linear to ``lr``), or None once warm-up is over and the
    plateau rule owns the learning rate."""
    return cfg.lr * (step + 1) / cfg.warmup_steps if step < cfg.warmup_steps else None


def validation_interval(cfg, train_batches: int, val_batches: int) -> int:
    """Steps between validations: ``train.validate_every``, or by default max(50, 5 × validation batches +
    2 × training batches), so that a validation (a pass over the validation frames, ~½ a step each) and the
    energy refit (a pass over the training frames without gradients) cost ≲ 10 % of training."""
    if cfg.validate_every is not None:
        return cfg.validate_every
    return max(50, 5 * val_batches + 2 * train_batches)


def step_ceiling(cfg, steps_per_epoch: int) -> int:
    """The most optimiser steps a run may take: ``max_steps``, and ``epochs`` passes when that is set."""
    return min(cfg.max_steps, cfg.epochs * steps_per_epoch) if cfg.epochs is not None else cfg.max_steps


def stop_reason(state: TrainState, force_mae: float, cfg, interval: int, ceiling: int) -> str:
    """The stopping rule, applied at each validation (updates the state's last gain).

    Converged: no relative gain of ``min_improvement`` in the validation force MAE over the last
    max(``patience`` steps, ``patience_fraction`` × steps taken, 2 validations). Else the ceiling."""
    if force_mae < state.progress_mae * (1 - cfg.min_improvement):
        state.progress_mae, state.progress_step = force_mae, state.step
    window = max(cfg.patience, cfg.patience_fraction * state.step, 2 * interval)
    if state.step - state.progress_step >= window:
        return (
            f"converged: no {100 * cfg.min_improvement:g} % gain in validation force MAE over the last "
            f"{state.step - state.progress_step} steps (window {window:.0f})"
        )
    if state.step >= ceiling:
        return f"reached the ceiling of {ceiling} steps"
    return ""


def ema_update(decay: float):
    """EMA with the usual warm-up: the decay grows as (1 + n) / (10 + n) until it reaches ``decay``,
    so early averages are not dominated by the untrained initial weights."""

    def average(averaged, current, n):
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return d * averaged + (1.0 - d) * current

    return average


def train_step(
    model,
    batch: AtomicGraph,
    loss: DistillationLoss,
    optimizer,
    grad_clip: float,
    ranks: Ranks = Ranks(),
    idle: bool = False,
) -> dict[str, float]:
    """One optimiser step. ``idle``: this rank has no structures in the batch; it steps with zero
    weight so the gradient all-reduce still happens."""
    optimizer.zero_grad(set_to_none=True)
    out = model(batch, loss.want(batch))  # one forward call: DistributedDataParallel sees every output
    counts = {name: 0 if idle else count for name, (_, count) in loss.contributions(out, batch).items()}
    total, terms = loss(out, batch, ranks.sum_counts(counts), ranks.world) if ranks.world > 1 else loss(out, batch)
    (total * (0.0 if idle else 1.0)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return {"total": float(total.detach()), **terms}


def train_from_config(config: RunConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Split the store, build the student, fit its energy references and train it.

    With ``train.devices > 1`` this spawns that many data-parallel workers and returns what rank 0 wrote.
    """
    backend = distributed.backend_for(distributed.resolve_device(config.train.device))  # fails early without CUDA
    check_ranges(config)
    if config.train.committee > 1:
        from ffdistill.training.committee import train_committee

        return train_committee(config, resume=resume, progress=progress)
    if config.train.devices > 1 and not distributed.from_environment(backend):
        LabelStore(config.data.store)  # fail here, with one clear line, before spawning anything
        distributed.spawn(train_from_config, config.train.devices, backend, config, resume, progress)
        return _result_on_disk(config.output)
    store = LabelStore(config.data.store)
    store.check_intact()  # a damaged store is refused before any work, naming the frame and the array
    d = config.data
    train_idx, val_idx, _ = split_indices(store.groups(), d.val_fraction, d.test_fraction, d.split_seed)
    train_idx = train_idx[: d.n_train] if d.n_train else train_idx
    cache = len(train_idx) + len(val_idx) <= d.cache_frames
    train_set = FrameDataset(store, train_idx, config.model.cutoff, d.use_reference, d.hessian_labels, cache)
    val_set = FrameDataset(store, val_idx, config.model.cutoff, d.use_reference, d.hessian_labels, cache)
    model = _build_model(config, store, train_idx)
    teacher_mae = teacher_force_error(store, val_idx)
    return train(model, train_set, val_set, config, resume=resume, progress=progress, teacher_force_mae=teacher_mae)


def _build_model(config: RunConfig, store: LabelStore, train_idx: Sequence[int]):
    """The student with element references fitted to the training frames, read from the store's arrays
    (no graphs); for a2a, with the teacher's frozen element table."""
    stats = reference_statistics(store, train_idx, config.data.use_reference)
    elements = stats.elements
    table = None
    if config.model.a2a:
        embeddings = store.attrs.get("element_embeddings")
        if not embeddings:
            raise InputError(
                f"a2a needs teacher element embeddings, and {config.data.store} has none "
                "(label with a teacher that has them, e.g. sevenn)"
            )
        table = {int(z): v for z, v in embeddings.items()}
    torch.manual_seed(config.train.seed)  # the same initial weights in every process and every run
    dim = len(next(iter(table.values()))) if table else 0
    model = build_student(
        config.model.student, elements, config.model.cutoff, teacher_embedding_dim=dim, **config.model.hparams
    )
    if table:
        model.set_teacher_embeddings(teacher_embedding_table(model, table))
    model.set_jacobian(config.model.jacobian, config.model.fd_step)
    model.set_references(stats.counts, stats.energies, stats.force_rms)
    return model


def hessian_weight_at(step: int, total: int, weight: float, decay_from: float | None) -> float:
    """λH at ``step``: ``weight`` until ``decay_from × total`` steps, then a cosine decay to zero at the
    last step, so the end of training refines energies and forces alone."""
    if decay_from is None or total <= 0:
        return weight
    start = decay_from * total
    if step < start:
        return weight
    return weight * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - start) / max(1.0, total - start))))


def _prepare_run_dir(run_dir: str) -> None:
    """Fail with one line before any training if the run folder cannot be written."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as handle:
            handle.write("ok")
        os.remove(probe)
    except OSError as error:
        raise InputError(f"cannot write the run folder {run_dir}: {error.strerror or error}") from error
    if shutil.disk_usage(run_dir).free < 50 * 2**20:
        raise InputError(f"less than 50 MiB free for the run folder {run_dir}")
    for stale in glob.glob(os.path.join(glob.escape(run_dir), "*.pt.tmp*")):
        os.remove(stale)  # a checkpoint a killed run was writing: the last complete one is kept beside it


def _result_on_disk(run_dir: str) -> TrainResult:
    paths = RunPaths(run_dir)
    with open(paths.history) as handle:
        history = json.load(handle)
    with open(paths.summary) as handle:
        summary = json.load(handle)
    return TrainResult(
        run_dir, paths.best, summary["best_val_force_mae_meV_per_A"] / 1000, history, summary["stop_reason"]
    )


def teacher_force_error(store: LabelStore, indices: Sequence[int]) -> float | None:
    """The teacher's force MAE against the input's own labels (eV/Å; the mean over every force component of
    every atom, as the students' validation force MAE is taken), or None if any frame lacks them. Read from the
    force arrays block by block, never a frame at a time."""
    total, count = 0.0, 0
    for block in frame_blocks(store, indices, (), ("forces", "ref_forces")):
        if not np.isfinite(block["ref_forces"]).all():
            return None
        difference = np.abs(block["forces"] - block["ref_forces"])
        total, count = total + float(difference.sum()), count + difference.size
    return total / count if count else None


def train(
    model,
    train_set: FrameDataset,
    val_set: FrameDataset,
    config: RunConfig,
    resume: bool = False,
    progress: bool = True,
    teacher_force_mae: float | None = None,
) -> TrainResult:
    """The training loop over frames streamed from the store, run until the stopping rule (``stop_reason``)
    or the ceiling ends it. Writes config.yaml, checkpoint.pt, best.pt, history.json and summary.json to
    ``config.output``."""
    t, run_dir, ranks = config.train, config.output, distributed.current()
    _prepare_run_dir(run_dir)
    if ranks.is_main:
        save_config(config, os.path.join(run_dir, "config.yaml"))
    torch.manual_seed(t.seed)
    device = distributed.resolve_device(t.device)
    model.to(device)
    step_model = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if ranks.world > 1
        else model
    )
    loss = _loss(config, model, train_set.store, _hessian_scale(config, train_set, ranks))
    for term in loss.terms:
        if isinstance(term, torch.nn.Module):
            term.to(device)
    optimizer = torch.optim.AdamW([*model.parameters(), *loss.parameters()], lr=t.lr, weight_decay=t.weight_decay)
    # Parameters only: averaging buffers in float corrupted the integer element table (species 3 became 2
    # after ~30 updates); the averaged student's energy references are refitted with its own weights instead.
    ema = AveragedModel(model, avg_fn=ema_update(t.ema_decay), use_buffers=False)
    loaders = _loaders(config, train_set, val_set, ranks, device)
    steps_per_epoch = len(loaders.train.batch_sampler)
    interval = validation_interval(t, steps_per_epoch, len(loaders.val.batch_sampler))
    ceiling = step_ceiling(t, steps_per_epoch)
    plateau = _plateau(optimizer, t, interval)
    state = TrainState(hessian_weight=config.loss.hessian)
    paths = RunPaths(run_dir)
    if resume:
        state = _load_checkpoint(paths.checkpoint, model, ema, optimizer, loss, plateau)
    # No total: the stopping rule, not the ceiling, ends most runs, and a bar towards 100,000 steps would mislead.
    bar = tqdm(initial=state.step, desc=os.path.basename(run_dir), unit="step", disable=not progress)
    sums, first_step = {}, state.step  # the training terms recorded at a validation: means since the last one
    while not state.stop_reason:
        plan = loaders.train.batch_sampler
        plan.seed = t.seed * 100_003 + state.epoch  # a resumed run repeats the epoch's order and rows...
        plan.skip = state.step - state.epoch * steps_per_epoch  # ...from the batch it stopped at
        for loaded in loaders.train:
            lr = warmup_lr(state.step, t)
            for group in optimizer.param_groups if lr is not None else ():
                group["lr"] = lr
            loss.term("hessian").weight = hessian_weight_at(
                state.step, ceiling, state.hessian_weight, config.loss.hessian_decay_from
            )
            terms = train_step(step_model, loaded.graph.to(device), loss, optimizer, t.grad_clip, ranks, loaded.idle)
            _check_finite(terms, state.step, paths)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
            ema.update_parameters(model)
            state.step += 1
            bar.update(1)
            if state.step % interval and state.step < ceiling:
                continue
            means = {name: value / (state.step - first_step) for name, value in sums.items()}
            sums, first_step = {}, state.step
            val = _validate(model, ema, loaders, state, means, teacher_force_mae, config, plateau, interval, ceiling)
            if ranks.is_main:
                _save_checkpoint(paths.checkpoint, model, ema, optimizer, state, config, loss, plateau)
                _write_json(paths.history, state.history)
            bar.set_postfix(
                F=f"{means.get('forces', 0):.3f}",
                H=f"{means.get('hessian', 0):.3f}",
                val_F=f"{val['force_mae_meV_per_A']:.1f}meV/Å",
                lr=f"{optimizer.param_groups[0]['lr']:.2g}",
            )
            if state.stop_reason:
                break
        else:
            state.epoch += 1
    bar.close()
    return _finish(state, paths, ranks)


class RunPaths:
    """The files of one run folder."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.checkpoint = os.path.join(run_dir, "checkpoint.pt")
        self.best = os.path.join(run_dir, "best.pt")
        self.history = os.path.join(run_dir, "history.json")
        self.summary = os.path.join(run_dir, "summary.json")


def _plateau(optimizer, t, interval: int) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Reduce-on-plateau, as in the paper's reference code: lr × ``lr_factor`` after ``lr_patience`` steps
    (in validations) without a relative gain of ``min_improvement``, never below lr × ``min_lr_factor``."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=t.lr_factor,
        patience=max(0, math.ceil(t.lr_patience / interval) - 1),
        threshold=t.min_improvement,
        threshold_mode="rel",
        min_lr=t.lr * t.min_lr_factor,
    )


def _validate(model, ema, loaders, state, means, teacher_force_mae, config, plateau, interval, ceiling) -> dict:
    """Refit references, score the EMA student on the validation frames, keep the best, apply the λH halving,
    the plateau rule and the stopping rule. Every rank validates the identical EMA weights, so they agree
    on when to stop without messages."""
    t = config.train
    if t.refit_references:
        _refit_references((model, ema.module), loaders.refit)
    val = accuracy_of_batches(ema.module, (loaded.graph for loaded in loaders.val))
    _end_of_epoch(state, val, means, teacher_force_mae, config)
    force_mae = val["force_mae_meV_per_A"] / 1000
    if force_mae < state.best_force_mae:
        state.best_force_mae, state.best_step = force_mae, state.step
        if distributed.current().is_main:
            save_student(ema.module, os.path.join(config.output, "best.pt"), step=state.step, val=val)
    if state.step >= t.warmup_steps:
        plateau.step(force_mae)
    state.stop_reason = stop_reason(state, force_mae, t, interval, ceiling)
    return val


def _check_finite(terms: dict, step: int, paths: RunPaths) -> None:
    """A non-finite loss ends training at once, naming the step and the term; the last checkpoint stays."""
    bad = [name for name, value in terms.items() if name != "total" and not math.isfinite(value)]
    if bad or not math.isfinite(terms["total"]):
        raise TrainingError(
            f"the loss became non-finite at step {step + 1} (term {', '.join(bad) or 'total'}); the last good "
            f"checkpoint is {paths.checkpoint} (lower train.lr, or check the store with ffdistill inspect)"
        )


def _finish(state: TrainState, paths: RunPaths, ranks: Ranks) -> TrainResult:
    """The run's summary (why it stopped, where the best student is); no student is an error."""
    if not math.isfinite(state.best_force_mae) or not os.path.isfile(paths.best):
        raise TrainingError(
            f"training produced no student in {paths.run_dir}: the validation force MAE was never finite "
            f"({state.step} steps; {state.stop_reason})"
        )
    summary = {
        "stop_reason": state.stop_reason,
        "steps": state.step,
        "best_step": state.best_step,
        "best_val_force_mae_meV_per_A": 1000 * state.best_force_mae,
        "last_gain_step": state.progress_step,
    }
    if ranks.is_main:
        _write_json(paths.summary, summary)
    return TrainResult(paths.run_dir, paths.best, state.best_force_mae, state.history, state.stop_reason)


class _Loaders(NamedTuple):
    train: torch.utils.data.DataLoader  #: this rank's slice of each global batch, rows drawn per epoch
    refit: torch.utils.data.DataLoader  #: every training frame in order, all stored rows (reference refits)
    val: torch.utils.data.DataLoader  #: every validation frame in order, rows drawn once


def _loaders(config: RunConfig, train_set: FrameDataset, val_set: FrameDataset, ranks: Ranks, device) -> _Loaders:
    """The three streams one run reads; workers (``data.workers``) build graphs, draw rows and batch.
    Validation rows are drawn from ``data.split_seed``, so the validation set (frames and rows) is fixed by the
    data settings alone: the same every epoch, and in runs that differ only in ``train.seed``."""
    d = config.data
    options = {"workers": d.workers, "prefetch_factor": d.prefetch_factor, "pin_memory": device.type == "cuda"}
    plans = (
        BatchPlan(train_set, d.batch_size, d.rows_per_structure, temperature=d.row_temperature, ranks=ranks),
        BatchPlan(train_set, d.batch_size, None, shuffle=False),
        BatchPlan(val_set, d.batch_size, d.val_rows_per_structure, shuffle=False, seed=d.split_seed),
    )
    return _Loaders(*(frame_loader(plan, **options) for plan in plans))


def _refit_references(models: Sequence, loader) -> None:
    """Refit every model's element energies in one pass over the training frames: reading frames and building
    graphs is the cost, the energies are cheap (no gradients are taken)."""
    parts: list[list] = [[] for _ in models]
    for loaded in loader:
        for model, part in zip(models, parts):
            part.append(model.energy_residuals(loaded.graph))
    for model, part in zip(models, parts):
        model.shift_references(np.concatenate([c for c, _ in part]), np.concatenate([r for _, r in part]))


#: training frames (evenly spaced) whose teacher labels give the Hessian term's scale
SCALE_FRAMES = 512


def _hessian_scale(config: RunConfig, train_set: FrameDataset, ranks: Ranks) -> float:
    """σ_F / σ_H of the training frames (``loss.hessian_scale``; at most ``SCALE_FRAMES`` of them), written to
    the run folder as loss_scales.json; 1 when the normalisation is off or nothing is distilled."""
    if config.loss.hessian_normalisation == "none" or not config.loss.hessian:
        return 1.0
    positions = np.unique(np.linspace(0, len(train_set) - 1, min(len(train_set), SCALE_FRAMES)).astype(int))
    graphs = [train_set[int(k)] for k in positions]
    items = [_hessian_items(g) for g in graphs]
    scales = hessian_scale([g.forces.numpy() for g in graphs], items)
    if ranks.is_main:
        _write_json(os.path.join(config.output, "loss_scales.json"), {**scales, "frames": len(graphs)})
    return scales["factor_A"]


def _hessian_items(graph: AtomicGraph) -> np.ndarray:
    """(k, N, 3) the one-structure graph's stored Hessian rows and H·v products, as the loss compares them."""
    parts = [p for p in (graph.hessian_rows, graph.probe_products) if p is not None and len(p)]
    n = graph.n_atoms
    return torch.cat([p.reshape(-1, n, 3) for p in parts]).double().numpy() if parts else np.zeros((0, n, 3))


def _loss(config: RunConfig, model, store: LabelStore, hessian_factor: float = 1.0) -> DistillationLoss:
    c = config.loss
    channels = None
    if c.n2n:
        if "node_features" not in store.arrays:
            raise InputError("loss.n2n needs teacher node features: label with --node-features")
        channels = (model.hparams["channels"], store.arrays["node_features"].shape[1])
    if c.consistency and not model.capabilities.direct:
        raise InputError("loss.consistency is for direct-force students (e.g. painn-direct-small)")
    stress = c.stress if store.has_stress() else 0.0  # on when the store carries stress
    return build_loss(
        c.energy,
        c.forces,
        c.hessian,
        c.consistency,
        c.n2n,
        channels=channels,
        hessian_factor=hessian_factor,
        stress=stress,
    )


def _end_of_epoch(
    state: TrainState, val: dict, train_terms: dict, teacher_force_mae: float | None, config: RunConfig
) -> None:
    """Record the epoch and apply the paper's rule: halve λH once, near the teacher's force error."""
    within = config.loss.halve_hessian_within
    if teacher_force_mae is not None and within is not None and not state.hessian_halved:
        if val["force_mae_meV_per_A"] / 1000 <= (1 + within) * teacher_force_mae:
            state.hessian_weight /= 2
            state.hessian_halved = True
    state.history.append(
        {
            "epoch": state.epoch,
            "step": state.step,
            "hessian_weight": state.hessian_weight,
            "train": train_terms,
            "val": val,
        }
    )


def _save_checkpoint(
    path: str, model, ema, optimizer, state: TrainState, config: RunConfig, loss: DistillationLoss, plateau
) -> None:
    payload = {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "plateau": plateau.state_dict(),
        "loss": [t.state_dict() for t in loss.terms if isinstance(t, torch.nn.Module)],
        "state": dataclasses.asdict(state),
        "config": dataclasses.asdict(config),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # serialised in memory, written by Python: a full disk is an OSError with errno
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(buffer.getbuffer())
        fault_point("train.checkpoint")
    except OSError:
        os.remove(tmp)  # the last good checkpoint stays; no half-written one beside it
        raise
    os.replace(tmp, path)


def _load_checkpoint(path: str, model, ema, optimizer, loss: DistillationLoss, plateau) -> TrainState:
    if not os.path.isfile(path):
        raise InputError(f"nothing to resume: no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
        model.load_state_dict(payload["model"])
        ema.load_state_dict(payload["ema"])
        optimizer.load_state_dict(payload["optimizer"])
        plateau.load_state_dict(payload["plateau"])
        for term, saved in zip([t for t in loss.terms if isinstance(t, torch.nn.Module)], payload.get("loss", [])):
            term.load_state_dict(saved)
        return TrainState(**payload["state"])
    except Exception as error:
        raise InputError(
            f"checkpoint {path} is corrupt or from another model ({type(error).__name__}); delete it to start over"
        ) from error


def _write_json(path: str, data) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)
