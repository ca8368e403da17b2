"""Labelled frames of a label store: splits, streaming datasets, and batches with their sampled Hessian rows.

Training streams the store: ``FrameDataset`` builds one frame's graph (neighbour list included) when asked,
in DataLoader worker processes when ``data.workers > 0``; ``BatchPlan`` decides in the main process which
frames form each batch and which generator state each frame's rows are drawn from. Nothing holds all
graphs, so memory does not grow with the number of frames, and the batches and rows are those of
``iterate_batches`` walking the same frames in memory with the same generator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import partial
from typing import NamedTuple

import numpy as np
import torch

from ffdistill.data.labels import LabelStore
from ffdistill.data.sampling import select_rows, skip_rows
from ffdistill.distributed import Ranks
from ffdistill.errors import InputError
from ffdistill.graph import AtomicGraph, batch_graphs

HESSIAN_LABELS = ("both", "rows", "probes")
#: Frames read together when statistics are taken from the store's arrays (bounds their memory).
BLOCK_FRAMES = 4096


def split_indices(
    groups: Sequence[int], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Train / validation / test frame indices that never cut a group.

    Whole groups, in a seeded random order, fill the test side until it holds ``test_fraction`` of the
    frames, then validation (at least one group when asked), and the rest train. A group is a block of
    consecutive MD frames with the rattled/strained copies of its frames, so no held-out frame has a
    parent, sibling or 10-fs neighbour in training.
    """
    groups = np.asarray(groups)
    n = len(groups)
    members = _members(groups)
    keys = list(members)
    order = [keys[k] for k in np.random.default_rng(seed).permutation(len(members))]
    targets = [
        int(round(n * test_fraction)) if test_fraction > 0 else 0,
        max(1, int(round(n * val_fraction))) if val_fraction > 0 else 0,
    ]
    sides: list[list[int]] = [[], [], []]  # test, validation, train
    for g in order:
        side = next((k for k in (0, 1) if len(sides[k]) < targets[k]), 2)
        sides[side] += members[g]
    if not sides[2]:
        raise InputError(
            f"{n} frames in {len(members)} groups are too few for val_fraction={val_fraction} "
            f"and test_fraction={test_fraction}"
        )
    return sides[2], sides[1], sides[0]


def _members(groups: np.ndarray) -> dict[int, list[int]]:
    """Ascending frame indices of each group, groups in ascending order, from one stable sort: a scan per
    group would cost frames x groups comparisons, hours for a store of millions of frames."""
    order = np.argsort(groups, kind="stable")
    ids, starts = np.unique(groups[order], return_index=True)
    return {g: block.tolist() for g, block in zip(ids.tolist(), np.split(order, starts[1:]))}


def check_hessian_labels(hessian_labels: str) -> None:
    if hessian_labels not in HESSIAN_LABELS:
        raise InputError(f"data.hessian_labels must be one of {', '.join(HESSIAN_LABELS)}, got {hessian_labels!r}")


def keep_labels(graph: AtomicGraph, hessian_labels: str) -> AtomicGraph:
    """The graph with the Hessian labels training uses: the stored one-hot ``rows``, the ``probes``, or ``both``."""
    if hessian_labels == "rows":
        return graph._replace(probe_vectors=None, probe_products=None, probe_owner=None)
    if hessian_labels == "probes":
        return graph._replace(hessian_rows=None, row_index=None)
    return graph


def load_graphs(
    store: LabelStore, indices: Sequence[int], cutoff: float, reference: bool = True, hessian_labels: str = "both"
) -> list[AtomicGraph]:
    """Frames ``indices`` as labelled graphs, all in memory (small sets: evaluation, tests)."""
    dataset = FrameDataset(store, indices, cutoff, reference, hessian_labels)
    return [dataset[k] for k in range(len(dataset))]


class FrameDataset(torch.utils.data.Dataset):
    """Frames ``indices`` of a label store as labelled graphs, built when asked (map-style: position -> graph).

    It keeps the store's path and the frame indices, never graphs. Pickled into a worker process it leaves
    its open store behind and the worker opens its own, so workers build graphs (and neighbour lists) in
    parallel. A ``Draw`` as key gives ``(graph, draw)``, what ``collate_draws`` takes.
    """

    def __init__(
        self,
        store: LabelStore,
        indices: Sequence[int],
        cutoff: float,
        reference: bool = True,
        hessian_labels: str = "both",
        cache: bool = False,
    ):
        check_hessian_labels(hessian_labels)
        self.path, self.indices = store.path, np.asarray(indices, dtype=np.int64)
        self.cutoff, self.reference, self.hessian_labels = float(cutoff), reference, hessian_labels
        self._store: LabelStore | None = store
        #: built graphs kept per process when asked (small stores: a zarr read costs ~20 ms a frame, every epoch)
        self._cache: dict | None = {} if cache else None

    @property
    def store(self) -> LabelStore:
        if self._store is None:
            self._store = LabelStore(self.path)
        return self._store

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        if isinstance(key, Draw):
            return self[key.position], key
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        graph = self.store.graph(int(self.indices[key]), self.cutoff, reference=self.reference)
        graph = keep_labels(graph, self.hessian_labels)
        if self._cache is not None:
            self._cache[key] = graph
        return graph

    def row_counts(self, position: int) -> tuple[int, int]:
        """Hessian rows and probes the graph at ``position`` carries, from the store's index (no frame read)."""
        i, store = int(self.indices[position]), self.store
        rows = 0 if self.hessian_labels == "probes" else int(store.n_rows[i])
        probes = 0 if self.hessian_labels == "rows" or not store.v2 else int(store.n_probes[i])
        return rows, probes

    def __getstate__(self) -> dict:
        cache = None if self._cache is None else {}  # a worker builds its own
        return {**self.__dict__, "_store": None, "_cache": cache}


class Draw(NamedTuple):
    """One structure of a batch: its dataset position and the generator state its rows are drawn from."""

    position: int
    state: torch.Tensor | None  #: ``torch.Generator`` state; None when every stored row is kept
    idle: bool = False  #: a stand-in for a rank with no structure in this batch (it steps with zero weight)


class Loaded(NamedTuple):
    """A batch as a loader gives it: this rank's structures, and whether they only stand in (``Draw.idle``)."""

    graph: AtomicGraph
    idle: bool


class BatchPlan(torch.utils.data.Sampler):
    """This rank's share of every global batch of one pass over ``dataset``, as lists of ``Draw``: a loader's
    ``batch_sampler``. It runs in the main process.

    It walks what ``iterate_batches`` walks: one generator seeded with ``seed`` gives the frame order, then
    each structure's rows in batch order. Instead of drawing rows it records the generator state and skips
    the draw (``skip_rows``, from the store's row counts), so the worker that builds the graph draws those
    same rows, and every rank walks the same global batches while loading only its own slice. ``rows``
    None keeps every stored row. Set ``seed`` before each pass (the trainer seeds by epoch).
    """

    def __init__(
        self,
        dataset: FrameDataset,
        batch_size: int,
        rows: int | None,
        shuffle: bool = True,
        temperature: float | None = None,
        ranks: Ranks = Ranks(),
        seed: int = 0,
    ):
        self.dataset, self.batch_size, self.rows, self.shuffle = dataset, batch_size, rows, shuffle
        self.temperature, self.ranks, self.seed = temperature, ranks, seed
        self.skip = 0  #: batches of the next pass to draw but not yield (a resumed epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[list[Draw]]:
        generator = torch.Generator().manual_seed(self.seed)
        n = len(self.dataset)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        for index, start in enumerate(range(0, n, self.batch_size)):
            draws = [self._draw(k, generator) for k in order[start : start + self.batch_size].tolist()]
            if index >= self.skip:
                yield self.ranks.shard(draws) or [draws[0]._replace(idle=True)]

    def _draw(self, position: int, generator: torch.Generator) -> Draw:
        if self.rows is None:
            return Draw(position, None)
        draw = Draw(position, generator.get_state())
        skip_rows(generator, *self.dataset.row_counts(position), self.rows, self.temperature)
        return draw


def collate_draws(items: list[tuple[AtomicGraph, Draw]], rows: int | None, temperature: float | None = None) -> Loaded:
    """Each structure's rows drawn from its recorded generator state, then one batch (in the worker)."""
    graphs = []
    for graph, draw in items:
        if draw.state is not None:
            generator = torch.Generator()
            generator.set_state(draw.state)
            graph = select_rows(graph, rows, generator, temperature)
        graphs.append(graph)
    return Loaded(batch_graphs(graphs), all(draw.idle for _, draw in items))


def frame_loader(
    plan: BatchPlan, workers: int = 0, prefetch_factor: int = 2, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """Batches of ``plan`` as ``Loaded``. With ``workers`` > 0, that many processes read frames, build graphs,
    draw rows and batch, ``prefetch_factor`` batches ahead each, and stay up between passes. The loader's own
    generator (worker base seeds) is seeded privately, so making loaders never moves torch's global one."""
    return torch.utils.data.DataLoader(
        plan.dataset,
        batch_sampler=plan,
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=partial(collate_draws, rows=plan.rows, temperature=plan.temperature),
        prefetch_factor=prefetch_factor if workers else None,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(plan.seed),
    )


def iterate_batches(
    graphs: Sequence[AtomicGraph],
    batch_size: int,
    rows_per_structure: int,
    generator: torch.Generator,
    shuffle: bool = True,
    row_temperature: float | None = None,
) -> Iterator[list[AtomicGraph]]:
    """Global batches of graphs in memory, each structure keeping ``rows_per_structure`` of its stored Hessian
    rows: the reference ``BatchPlan`` streams (same generator, same batches, same rows)."""
    order = torch.randperm(len(graphs), generator=generator).tolist() if shuffle else list(range(len(graphs)))
    for start in range(0, len(order), batch_size):
        yield [
            select_rows(graphs[i], rows_per_structure, generator, row_temperature)
            for i in order[start : start + batch_size]
        ]


class ReferenceStatistics(NamedTuple):
    """What ``EnergyStudent.fit_references`` needs from the training frames."""

    elements: list[int]
    counts: np.ndarray  #: (F, n_elements) atoms of each element per frame
    energies: np.ndarray  #: (F,) eV
    force_rms: float  #: RMS force component, eV/Å


def reference_statistics(store: LabelStore, indices: Sequence[int], reference: bool = True) -> ReferenceStatistics:
    """Elements, per-frame element counts, energies and the RMS force of frames ``indices``, read from the store's
    arrays block by block (no graphs; memory bounded by one block). Energies and forces are the ones
    ``LabelStore.graph`` picks: the input's own labels when ``reference`` and the frame has them all."""
    blocks, energies, sum_squares, n_components = [], [], 0.0, 0
    for block in frame_blocks(store, indices, ("energy", "ref_energy"), ("numbers", "forces", "ref_forces")):
        use_ref = _use_reference(block, reference)
        energies.append(np.where(use_ref, block["ref_energy"], block["energy"]))
        forces = np.where(use_ref[block["atom_frame"], None], block["ref_forces"], block["forces"])
        sum_squares, n_components = sum_squares + float(np.square(forces).sum()), n_components + forces.size
        n = len(block["frame"])
        blocks.append((n, _element_counts(block["numbers"], block["atom_frame"], n)))
    elements = sorted({z for _, counts in blocks for z in counts})
    counts = np.concatenate([np.stack([b.get(z, np.zeros(n)) for z in elements], 1) for n, b in blocks])
    force_rms = math.sqrt(sum_squares / max(1, n_components))
    return ReferenceStatistics(elements, counts, np.concatenate(energies), force_rms)


def _use_reference(block: dict, reference: bool) -> np.ndarray:
    """(F_block,) whether each frame trains on the input's own labels (all of them finite), as ``graph`` does."""
    n = len(block["frame"])
    bad_atoms = ~np.isfinite(block["ref_forces"]).all(1)
    bad = np.bincount(block["atom_frame"], weights=bad_atoms, minlength=n) > 0
    return reference & np.isfinite(block["ref_energy"]) & ~bad


def _element_counts(numbers: np.ndarray, atom_frame: np.ndarray, n_frames: int) -> dict[int, np.ndarray]:
    """Atoms of each element present per frame; elements a block lacks count zero when blocks are joined."""
    per_element = {int(z): np.bincount(atom_frame[numbers == z], minlength=n_frames) for z in np.unique(numbers)}
    return {z: counts.astype(np.float64) for z, counts in per_element.items()}


def frame_blocks(
    store: LabelStore,
    indices: Sequence[int],
    frame_arrays: Sequence[str],
    atom_arrays: Sequence[str],
    block: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Arrays of frames ``indices`` in ascending order, ``block`` store frames at a time: the per-frame arrays
    at those frames, the per-atom arrays at their atoms, ``frame`` (the frame indices) and ``atom_frame``
    (each atom's position in ``frame``). Bulk reads skip the per-frame checksums (training's reads check them)."""
    indices, block = np.unique(np.asarray(indices, dtype=np.int64)), block or BLOCK_FRAMES
    for frames in np.split(indices, np.flatnonzero(np.diff(indices // block)) + 1) if len(indices) else []:
        f0, f1 = int(frames[0]), int(frames[-1]) + 1
        a0, a1 = int(store.atom_start[f0]), int(store.atom_start[f1])
        local = np.repeat(np.arange(f1 - f0), store.n_atoms[f0:f1])
        picked = np.zeros(f1 - f0, dtype=bool)
        picked[frames - f0] = True
        position = np.cumsum(picked) - 1  # a picked frame's position in ``frames``
        out = {name: store.arrays[name][f0:f1][picked] for name in frame_arrays}
        out.update({name: store.arrays[name][a0:a1][picked[local]] for name in atom_arrays})
        yield {**out, "frame": frames, "atom_frame": position[local[picked[local]]]}
