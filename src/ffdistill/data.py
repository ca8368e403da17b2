"""Labelled graphs in memory, splits, and batches with their sampled Hessian rows."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from ffdistill.errors import InputError
from ffdistill.graph import AtomicGraph
from ffdistill.labels import LabelStore
from ffdistill.sampling import select_rows


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Shuffled train / validation / test frame indices; validation and test get at least one frame each if asked."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_test = int(round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, int(round(n * val_fraction))) if val_fraction > 0 else 0
    if n - n_test - n_val < 1:
        raise InputError(f"{n} frames are too few for val_fraction={val_fraction} and test_fraction={test_fraction}")
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


def load_graphs(store: LabelStore, indices: Sequence[int], cutoff: float, reference: bool = True) -> list[AtomicGraph]:
    return [store.graph(i, cutoff, reference=reference) for i in indices]


def iterate_batches(
    graphs: Sequence[AtomicGraph], batch_size: int, rows_per_structure: int, generator: torch.Generator,
    shuffle: bool = True, row_temperature: float | None = None,
) -> Iterator[list[AtomicGraph]]:
    """Global batches (lists of graphs), each structure keeping ``rows_per_structure`` of its stored
    Hessian rows. Every data-parallel rank draws the same batches and keeps its own slice."""
    order = torch.randperm(len(graphs), generator=generator).tolist() if shuffle else list(range(len(graphs)))
    for start in range(0, len(order), batch_size):
        yield [select_rows(graphs[i], rows_per_structure, generator, row_temperature) for i in order[start : start + batch_size]]
