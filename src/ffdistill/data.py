"""Labelled graphs in memory, splits, and batches with their sampled Hessian rows."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from ffdistill.errors import InputError
from ffdistill.graph import AtomicGraph
from ffdistill.labels import LabelStore
from ffdistill.sampling import select_rows


def split_indices(groups: Sequence[int], val_fraction: float, test_fraction: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Train / validation / test frame indices that never cut a group.

    Whole groups, in a seeded random order, fill the test side until it holds ``test_fraction`` of the
    frames, then validation (at least one group when asked), and the rest train. A group is a block of
    consecutive MD frames with the rattled/strained copies of its frames, so no held-out frame has a
    parent, sibling or 10-fs neighbour in training.
    """
    groups = np.asarray(groups)
    n = len(groups)
    members = {g: np.flatnonzero(groups == g).tolist() for g in np.unique(groups)}
    order = [list(members)[k] for k in np.random.default_rng(seed).permutation(len(members))]
    targets = [int(round(n * test_fraction)) if test_fraction > 0 else 0, max(1, int(round(n * val_fraction))) if val_fraction > 0 else 0]
    sides: list[list[int]] = [[], [], []]  # test, validation, train
    for g in order:
        side = next((k for k in (0, 1) if len(sides[k]) < targets[k]), 2)
        sides[side] += members[g]
    if not sides[2]:
        raise InputError(f"{n} frames in {len(members)} groups are too few for val_fraction={val_fraction} and test_fraction={test_fraction}")
    return sides[2], sides[1], sides[0]


def load_graphs(store: LabelStore, indices: Sequence[int], cutoff: float, reference: bool = True, hessian_labels: str = "both") -> list[AtomicGraph]:
    """Frames ``indices`` as labelled graphs, keeping the stored one-hot ``rows``, the ``probes``, or ``both``."""
    if hessian_labels not in HESSIAN_LABELS:
        raise InputError(f"data.hessian_labels must be one of {', '.join(HESSIAN_LABELS)}, got {hessian_labels!r}")
    graphs = [store.graph(i, cutoff, reference=reference) for i in indices]
    if hessian_labels == "rows":
        return [g._replace(probe_vectors=None, probe_products=None, probe_owner=None) for g in graphs]
    if hessian_labels == "probes":
        return [g._replace(hessian_rows=None, row_index=None) for g in graphs]
    return graphs


HESSIAN_LABELS = ("both", "rows", "probes")


def iterate_batches(
    graphs: Sequence[AtomicGraph], batch_size: int, rows_per_structure: int, generator: torch.Generator,
    shuffle: bool = True, row_temperature: float | None = None,
) -> Iterator[list[AtomicGraph]]:
    """Global batches (lists of graphs), each structure keeping ``rows_per_structure`` of its stored
    Hessian rows. Every data-parallel rank draws the same batches and keeps its own slice."""
    order = torch.randperm(len(graphs), generator=generator).tolist() if shuffle else list(range(len(graphs)))
    for start in range(0, len(order), batch_size):
        yield [select_rows(graphs[i], rows_per_structure, generator, row_temperature) for i in order[start : start + batch_size]]
