"""Accuracy and speed of a model against labelled graphs."""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from ffdistill import derivatives
from ffdistill.graph import AtomicGraph, batch_graphs
from ffdistill.loss import student_output


def accuracy(model, graphs: Sequence[AtomicGraph], batch_size: int = 4, hessian: bool = True) -> dict[str, float]:
    """Energy MAE (meV/atom), force MAE (meV/Å), force cosine and Hessian-row MAE (eV/Å²) on ``graphs``."""
    e_err, f_err, cos, h_err = [], [], [], []
    for start in range(0, len(graphs), batch_size):
        batch = batch_graphs(graphs[start : start + batch_size])
        out = student_output(model, batch, hessian=hessian, training=False)
        e_err.append(((out.energy - batch.energy).abs() / batch.atoms_per_structure).numpy())
        f_err.append((out.forces - batch.forces).abs().flatten().numpy())
        cos.append(torch.nn.functional.cosine_similarity(out.forces, batch.forces, dim=-1).numpy())
        if out.hessian_rows is not None:
            h_err.append(_row_errors(out.hessian_rows, batch))
    return {
        "energy_mae_meV_per_atom": 1000 * float(np.concatenate(e_err).mean()),
        "force_mae_meV_per_A": 1000 * float(np.concatenate(f_err).mean()),
        "force_cosine": float(np.concatenate(cos).mean()),
        "hessian_row_mae": float(np.concatenate(h_err).mean()) if h_err else float("nan"),
    }


def _row_errors(rows: torch.Tensor, batch: AtomicGraph) -> np.ndarray:
    """Absolute errors of each row's entries within its own structure."""
    owner = batch.batch[batch.row_index // 3]
    mask = batch.batch[None, :] == owner[:, None]
    return (rows - batch.hessian_rows).abs()[mask].flatten().numpy()


def seconds_per_force_call(energy_fn, graph: AtomicGraph, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of one energy + forces evaluation."""
    for _ in range(warmup):
        derivatives.predict(energy_fn, graph)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        derivatives.predict(energy_fn, graph)
        times.append(time.perf_counter() - start)
    return float(np.median(times))
