"""Where configurations come from (teacher MD, rattled and strained copies) and which Hessian rows
a training step looks at."""

from __future__ import annotations

import os
from typing import Sequence

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

#: Structures the CLI knows by name.
NAMED_STRUCTURES = {
    "Si": lambda: bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2),
    "Si32": lambda: bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 1),
    "Cu": lambda: bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2),
    "BaTiO3": lambda: _perovskite(),
}


def _perovskite() -> ase.Atoms:
    cell = ase.Atoms("BaTiO3", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)], cell=[4.0] * 3, pbc=True)
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
    teacher: Teacher, atoms: ase.Atoms, n_frames: int, temperature: float, interval: int = 5,
    equilibration: int = 10, timestep_fs: float = 2.0, seed: int = 0, bar=None,
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


def perturbed_copies(frames: Sequence[ase.Atoms], n: int, rattle: float = 0.04, max_strain: float = 0.02, seed: int = 0) -> list[ase.Atoms]:
    """Rattled and homogeneously strained copies of ``frames`` (periodic cells are strained)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = _plain_copy(frames[k % len(frames)])
        if np.all(atoms.pbc):
            strain = np.eye(3) + rng.uniform(-max_strain, max_strain, (3, 3))
            atoms.set_cell(atoms.cell.array @ (0.5 * (strain + strain.T)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
        out.append(atoms)
    return out


def _plain_copy(atoms: ase.Atoms) -> ase.Atoms:
    return ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


def sample_to_file(
    teacher: Teacher, structure: str, output: str, n_frames: int = 40, temperatures: Sequence[float] = (300.0, 600.0),
    md_fraction: float = 0.5, interval: int = 5, seed: int = 0, progress: bool = True,
) -> int:
    """Teacher MD at each temperature plus perturbed copies, written to ``output`` (extxyz) atomically."""
    atoms = load_structure(structure)
    teacher.check_elements(atoms.numbers)
    n_md = max(len(temperatures), int(round(n_frames * md_fraction)))
    per_t = np.array_split(np.arange(n_md), len(temperatures))
    frames: list[ase.Atoms] = []
    with tqdm(total=n_md, desc="teacher MD", unit="frame", disable=not progress) as bar:
        for k, (temperature, share) in enumerate(zip(temperatures, per_t)):
            frames += teacher_md_frames(teacher, atoms, len(share), temperature, interval=interval, seed=seed + k, bar=bar)
    frames += perturbed_copies(frames, n_frames - len(frames), seed=seed)
    tmp = output + ".partial.extxyz"
    ase.io.write(tmp, frames, format="extxyz")
    os.replace(tmp, output)
    return len(frames)


def select_rows(graph: AtomicGraph, s: int, generator: torch.Generator, temperature: float | None = None) -> AtomicGraph:
    """Keep ``s`` of the Hessian rows stored for a one-structure graph.

    Uniform by default; with ``temperature`` the draw is biased to rows of large teacher norm,
    p ∝ softmax(||H[r]|| / temperature).
    """
    if graph.hessian_rows is None or len(graph.row_index) <= s:
        return graph
    if temperature is None:
        keep = torch.randperm(len(graph.row_index), generator=generator)[:s]
    else:
        norms = graph.hessian_rows.flatten(1).norm(dim=1)
        keep = torch.multinomial(torch.softmax(norms / temperature, 0), s, replacement=False, generator=generator)
    keep = keep.sort().values
    return graph._replace(hessian_rows=graph.hessian_rows[keep], row_index=graph.row_index[keep])
