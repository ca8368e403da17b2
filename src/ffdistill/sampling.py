"""Where configurations come from (teacher MD, rattled and strained copies) and which Hessian rows
a training step looks at."""

from __future__ import annotations

import os
from collections.abc import Sequence

import ase
import ase.io
import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from tqdm.auto import tqdm

from ffdistill.errors import InputError
from ffdistill.graph import AtomicGraph, check_structure
from ffdistill.teachers.base import Teacher

#: ``info`` key of a frame's group; a group never straddles a train/validation/test split.
GROUP_KEY = "group"
#: A group of consecutive MD frames spans at least this much time, past the decorrelation of most
#: vibrations (a 500 cm⁻¹ phonon has a 67 fs period).
MIN_GROUP_SPAN_FS = 100.0

#: Structures the CLI knows by name.
NAMED_STRUCTURES = {
    "Si": lambda: bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2),
    "Si32": lambda: bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 1),
    "Cu": lambda: bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2),
    "BaTiO3": lambda: _perovskite(),
}


def _perovskite() -> ase.Atoms:
    cell = ase.Atoms(
        "BaTiO3",
        scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)],
        cell=[4.0] * 3,
        pbc=True,
    )
    return cell * (2, 2, 2)


def load_structure(name_or_path: str) -> ase.Atoms:
    """A named structure (``Si``, ``Si32``, ``Cu``, ``BaTiO3``) or the first structure of a file."""
    if name_or_path in NAMED_STRUCTURES:
        return NAMED_STRUCTURES[name_or_path]()
    if not os.path.isfile(name_or_path):
        raise InputError(f"{name_or_path} is neither a file nor a known structure ({', '.join(NAMED_STRUCTURES)})")
    from ffdistill.io import iter_structures

    atoms = next(iter_structures(name_or_path))
    check_structure(atoms)
    return atoms


def teacher_md_frames(
    teacher: Teacher,
    atoms: ase.Atoms,
    n_frames: int,
    temperature: float,
    interval: int = 5,
    equilibration: int = 10,
    timestep_fs: float = 2.0,
    seed: int = 0,
    bar=None,
) -> list[ase.Atoms]:
    """Langevin MD with the teacher; one frame every ``interval`` steps after ``equilibration`` steps."""
    atoms = atoms.copy()
    atoms.calc = teacher.as_calculator()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature, friction=0.01 / units.fs, rng=rng)
    dyn.run(equilibration)
    frames = []
    for _ in range(n_frames):
        dyn.run(interval)
        frames.append(_plain_copy(atoms))
        if bar is not None:
            bar.update(1)
    return frames


def perturbed_copies(
    frames: Sequence[ase.Atoms], n: int, rattle: float = 0.04, max_strain: float = 0.02, seed: int = 0
) -> list[ase.Atoms]:
    """Rattled and homogeneously strained copies of ``frames`` (periodic cells are strained); each copy
    keeps its parent's ``info["group"]``, so a split never puts a copy and its parent on two sides."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        parent = frames[k % len(frames)]
        atoms = _plain_copy(parent)
        if GROUP_KEY in parent.info:
            atoms.info[GROUP_KEY] = parent.info[GROUP_KEY]
        if np.all(atoms.pbc):
            strain = np.eye(3) + rng.uniform(-max_strain, max_strain, (3, 3))
            atoms.set_cell(atoms.cell.array @ (0.5 * (strain + strain.T)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
        out.append(atoms)
    return out


def _plain_copy(atoms: ase.Atoms) -> ase.Atoms:
    return ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


def group_block(interval: int, timestep_fs: float, min_span_fs: float = MIN_GROUP_SPAN_FS) -> int:
    """Consecutive MD frames per group: enough that one block spans ``min_span_fs``."""
    return max(1, int(np.ceil(min_span_fs / (interval * timestep_fs))))


def sample_to_file(
    teacher: Teacher,
    structure: str,
    output: str,
    n_frames: int = 40,
    temperatures: Sequence[float] = (300.0, 600.0),
    md_fraction: float = 0.5,
    interval: int = 5,
    seed: int = 0,
    progress: bool = True,
    runs: int = 1,
    timestep_fs: float = 2.0,
) -> int:
    """Teacher MD (``runs`` independent runs per temperature) plus perturbed copies, written to ``output``
    (extxyz) atomically.

    Every frame carries ``info["group"]``: a block of consecutive frames of one run spanning at least
    ``MIN_GROUP_SPAN_FS`` of MD, together with the perturbed copies of those frames.
    """
    atoms = load_structure(structure)
    teacher.check_elements(atoms.numbers)
    chains = [(t, r) for t in temperatures for r in range(runs)]
    n_md = max(len(chains), int(round(n_frames * md_fraction)))
    block = group_block(interval, timestep_fs)
    frames: list[ase.Atoms] = []
    with tqdm(total=n_md, desc="teacher MD", unit="frame", disable=not progress) as bar:
        for k, (temperature, share) in enumerate(
            zip([t for t, _ in chains], np.array_split(np.arange(n_md), len(chains)))
        ):
            run = teacher_md_frames(
                teacher,
                atoms,
                len(share),
                temperature,
                interval=interval,
                timestep_fs=timestep_fs,
                seed=seed + k,
                bar=bar,
            )
            first_group = 1 + max([f.info[GROUP_KEY] for f in frames], default=-1)
            for j, frame in enumerate(run):
                frame.info[GROUP_KEY] = first_group + j // block
            frames += run
    frames += perturbed_copies(frames, n_frames - len(frames), seed=seed)
    tmp = output + ".partial.extxyz"
    ase.io.write(tmp, frames, format="extxyz")
    os.replace(tmp, output)
    return len(frames)


def select_rows(
    graph: AtomicGraph, s: int, generator: torch.Generator, temperature: float | None = None
) -> AtomicGraph:
    """Keep ``s`` of the Hessian rows and ``s`` of the probes stored for a one-structure graph.

    Rows are drawn uniformly by default; with ``temperature`` the draw is biased to rows of large teacher
    norm, p ∝ softmax(||H[r]|| / temperature). Probes are drawn uniformly.
    """
    if graph.hessian_rows is not None and len(graph.row_index) > s:
        if temperature is None:
            keep = torch.randperm(len(graph.row_index), generator=generator)[:s]
        else:
            norms = graph.hessian_rows.flatten(1).norm(dim=1)
            keep = torch.multinomial(torch.softmax(norms / temperature, 0), s, replacement=False, generator=generator)
        keep = keep.sort().values
        graph = graph._replace(hessian_rows=graph.hessian_rows[keep], row_index=graph.row_index[keep])
    if graph.probe_vectors is not None and len(graph.probe_vectors) > s:
        keep = torch.randperm(len(graph.probe_vectors), generator=generator)[:s].sort().values
        graph = graph._replace(
            probe_vectors=graph.probe_vectors[keep],
            probe_products=graph.probe_products[keep],
            probe_owner=graph.probe_owner[keep],
        )
    return graph


def skip_rows(generator: torch.Generator, n_rows: int, n_probes: int, s: int, temperature: float | None = None) -> None:
    """Advance ``generator`` exactly as ``select_rows`` does on a graph with ``n_rows`` stored rows and
    ``n_probes`` probes, without the graph.

    A streaming batch plan records the generator state before each structure and skips its draw, so a
    worker process (or another data-parallel rank) holding only that structure draws the rows one process
    walking the whole batch would. The draws consume the generator by shape alone: ``randperm(n)``, and
    ``multinomial`` without replacement (one exponential per category, whatever the probabilities).
    """
    if n_rows > s:
        if temperature is None:
            torch.randperm(n_rows, generator=generator)
        else:
            torch.multinomial(torch.ones(n_rows), s, replacement=False, generator=generator)
    if n_probes > s:
        torch.randperm(n_probes, generator=generator)
