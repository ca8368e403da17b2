"""Where configurations come from (teacher MD, rattled and strained copies) and which Hessian rows
a training step looks at."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import ase
import ase.io
import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from tqdm.auto import tqdm

from ffdistill.errors import InputError
from ffdistill.graph import AtomicGraph
from ffdistill.teachers.base import Teacher

#: ``info`` key of a frame's group; a group never straddles a train/validation/test split.
GROUP_KEY = "group"
#: A group of consecutive MD frames spans at least this much time, past the decorrelation of most
#: vibrations (a 500 cm⁻¹ phonon has a 67 fs period).
MIN_GROUP_SPAN_FS = 100.0

#: Burn-in before the first kept frame: Langevin MD with a stronger friction until the kinetic temperature
#: averaged over the last BURN_IN_WINDOW_FS is within BURN_IN_TOLERANCE of the target (and at least the
#: ``equilibration`` steps asked), at most BURN_IN_MAX_FS (then the frames are kept with a warning).
BURN_IN_WINDOW_FS = 50.0
BURN_IN_TOLERANCE = 0.10
BURN_IN_MAX_FS = 4000.0
BURN_IN_FRICTION = 0.05  #: 1/fs, five times the production thermostat's
FRICTION = 0.01  #: 1/fs, the production thermostat (weak, so kept frames follow near-Newtonian dynamics)
#: Kept frames are at least this far apart by default (``interval`` × time step): past the velocity
#: decorrelation of most vibrations (a 500 cm⁻¹ phonon has a 67 fs period, so frames sample distinct phases).
DECORRELATION_FS = 50.0

#: Structures the CLI knows by name.
NAMED_STRUCTURES = {
    "Si": lambda: bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2),
    "Si32": lambda: bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 1),
    "Si16": lambda: bulk("Si", "diamond", a=5.43, cubic=True) * (2, 1, 1),
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
    """A named structure (``Si``, ``Si32``, ``Cu``, ``BaTiO3``), ``bulk:NAME`` or ``molecule:NAME`` (built by
    ``ase.build``: "Si" is an atom to ``molecule`` and a crystal to ``bulk``, hence the prefix), or the first
    structure of a file."""
    if name_or_path in NAMED_STRUCTURES:
        return NAMED_STRUCTURES[name_or_path]()
    kind, sep, name = name_or_path.partition(":")
    if sep and kind in ("bulk", "molecule"):
        return _built(kind, name)
    if not os.path.isfile(name_or_path):
        raise InputError(f"{name_or_path} is neither a file nor a known structure ({', '.join(NAMED_STRUCTURES)})")
    from ffdistill.data.io import checked_structures

    return next(checked_structures(name_or_path))  # a refusal names the file and the frame


def kinetic_temperature(atoms: ase.Atoms) -> float:
    """Kinetic temperature (K) of the internal motion: 3N − 3 degrees of freedom for a periodic cell (the
    centre of mass's kinetic energy removed) and 3N − 6 for a molecule (its rotation's removed as well,
    ½ L·I⁻¹·L: a Langevin thermostat keeps a free molecule tumbling, and counting that energy against
    3N − 6 would read ~(3N − 3)/(3N − 6) too hot)."""
    n, masses, momenta = len(atoms), atoms.get_masses(), atoms.get_momenta()
    kinetic = 0.5 * float((momenta**2 / masses[:, None]).sum()) - 0.5 * float(
        (momenta.sum(0) ** 2).sum() / masses.sum()
    )
    if atoms.pbc.any():
        return 2.0 * kinetic / ((3 * n - 3) * units.kB)
    if n < 3:
        return 2.0 * kinetic / (max(1, 3 * n - 5) * units.kB)
    centred = atoms.positions - atoms.get_center_of_mass()
    velocity_com = momenta.sum(0) / masses.sum()
    angular = np.cross(centred, momenta - masses[:, None] * velocity_com).sum(0)
    inertia = (
        masses[:, None, None]
        * ((centred**2).sum(1)[:, None, None] * np.eye(3) - centred[:, :, None] * centred[:, None, :])
    ).sum(0)
    kinetic -= 0.5 * float(angular @ np.linalg.pinv(inertia) @ angular)
    return 2.0 * kinetic / ((3 * n - 6) * units.kB)


#: MD time step (fs) when none is given: hydrogen's bond vibrations (~9 fs for O-H) need a short one; a
#: 2 fs step let an ethanol's hydroxyl H fly off at 600 K (GFN1-xTB), 6.5 eV above the intact molecule
TIMESTEP_FS = 2.0
TIMESTEP_WITH_HYDROGEN_FS = 0.5


def default_timestep(atoms: ase.Atoms) -> float:
    return TIMESTEP_WITH_HYDROGEN_FS if 1 in atoms.numbers else TIMESTEP_FS


def bonds(atoms: ase.Atoms) -> set[tuple[int, int]]:
    """Covalent bonds of a molecule: pairs closer than 1.5 × the sum of their covalent radii (ASE's), loose enough
    that no bond vibration at any sampled temperature crosses it (H–H 0.93 Å, O–H 1.46 Å, C–C 2.28 Å)."""
    from ase.neighborlist import natural_cutoffs, neighbor_list

    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=1.5))
    return {(int(a), int(b)) for a, b in zip(i, j) if a < b}


def default_interval(timestep_fs: float) -> int:
    """MD steps between kept frames: at least ``DECORRELATION_FS`` apart."""
    return max(1, int(np.ceil(DECORRELATION_FS / timestep_fs)))


def _built(kind: str, name: str) -> ase.Atoms:
    """``ase.build.bulk(name)`` (its conventional cubic cell where ASE has one) or ``ase.build.molecule(name)``
    centred in 6 Å of vacuum on each side."""
    from ase.build import molecule

    try:
        if kind == "bulk":
            try:
                return bulk(name, cubic=True)
            except (ValueError, RuntimeError):
                return bulk(name)
        atoms = molecule(name)
    except (KeyError, ValueError, RuntimeError) as error:
        raise InputError(f"ase.build.{kind} does not know {name!r}: {error}") from error
    atoms.center(vacuum=6.0)
    return atoms


def teacher_md_frames(
    teacher: Teacher,
    atoms: ase.Atoms,
    n_frames: int,
    temperature: float,
    interval: int | None = None,
    equilibration: int = 10,
    timestep_fs: float | None = None,
    seed: int = 0,
    bar=None,
) -> list[ase.Atoms]:
    """Langevin MD with the teacher: Maxwell–Boltzmann velocities at ``temperature``, a burn-in (``burn_in``) of
    at least ``equilibration`` steps, then one frame every ``interval`` steps (default ``default_interval``).
    Frames keep their momenta; ``info`` has the burn-in's length (fs) and each frame's kinetic temperature.

    A molecule whose bonds change (one breaks or forms: it fell apart or reacted) ends its run there, with a
    warning: the frames kept are those before the change."""
    timestep_fs = timestep_fs or default_timestep(atoms)
    start_bonds = None if atoms.pbc.any() else bonds(atoms)
    atoms = atoms.copy()
    atoms.calc = teacher.as_calculator()
    # The centre of mass held by a constraint, not by Langevin's fixcm, which ASE warns does not sample the
    # canonical distribution for small systems: with it a 9-atom molecule ran ~100 K hot at a 300 K target.
    atoms.set_constraint(FixCom())
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    burned_fs = burn_in(atoms, temperature, timestep_fs, equilibration, rng)
    dyn = _langevin(atoms, temperature, timestep_fs, FRICTION, rng)
    frames = []
    for _ in range(n_frames):
        dyn.run(interval or default_interval(timestep_fs))
        if start_bonds is not None and bonds(atoms) != start_bonds:
            changed = sorted(bonds(atoms) ^ start_bonds)
            warnings.warn(
                f"teacher MD at {temperature:g} K: the molecule's bonds changed ({_describe_bonds(atoms, changed)}) "
                f"after {len(frames)} of {n_frames} frames; that run stops there (a shorter time step or a lower "
                "temperature keeps it whole)",
                stacklevel=2,
            )
            break
        frame = _plain_copy(atoms)
        frame.set_momenta(atoms.get_momenta())
        frame.info.update(
            burn_in_fs=burned_fs, target_temperature_K=temperature, kinetic_temperature_K=kinetic_temperature(atoms)
        )
        frames.append(frame)
        if bar is not None:
            bar.update(1)
    return frames


def _describe_bonds(atoms: ase.Atoms, pairs) -> str:
    symbols = atoms.get_chemical_symbols()
    return ", ".join(f"{symbols[a]}{a}–{symbols[b]}{b}" for a, b in pairs[:4])


def _langevin(atoms: ase.Atoms, temperature: float, timestep_fs: float, friction: float, rng) -> Langevin:
    return Langevin(
        atoms, timestep_fs * units.fs, temperature_K=temperature, friction=friction / units.fs, rng=rng, fixcm=False
    )


def burn_in(atoms: ase.Atoms, temperature: float, timestep_fs: float, min_steps: int, rng) -> float:
    """Run ``atoms`` (with their calculator) under a strong Langevin thermostat until the kinetic temperature
    averaged over the last ``BURN_IN_WINDOW_FS`` is within ``BURN_IN_TOLERANCE`` of ``temperature`` and at least
    ``min_steps`` steps were taken; the fs it took. Past ``BURN_IN_MAX_FS`` it warns and stops."""
    dyn = _langevin(atoms, temperature, timestep_fs, BURN_IN_FRICTION, rng)
    window = max(2, int(round(BURN_IN_WINDOW_FS / timestep_fs)))
    recent: list[float] = []
    steps = 0
    while True:
        dyn.run(1)
        steps += 1
        recent = (recent + [kinetic_temperature(atoms)])[-window:]
        settled = len(recent) == window and abs(np.mean(recent) / temperature - 1) <= BURN_IN_TOLERANCE
        if settled and steps >= min_steps:
            return steps * timestep_fs
        if steps * timestep_fs >= BURN_IN_MAX_FS:
            warnings.warn(
                f"burn-in at {temperature:g} K: the kinetic temperature over the last {BURN_IN_WINDOW_FS:g} fs is "
                f"{np.mean(recent):.0f} K after {BURN_IN_MAX_FS:g} fs; keeping frames anyway",
                stacklevel=2,
            )
            return steps * timestep_fs


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
    interval: int | None = None,
    seed: int = 0,
    progress: bool = True,
    runs: int = 1,
    timestep_fs: float | None = None,
) -> int:
    """Teacher MD (``runs`` independent runs per temperature) plus perturbed copies, written to ``output``
    (extxyz) atomically. Time step ``timestep_fs``, by default 0.5 fs with hydrogen and 2 fs without; a run
    whose molecule falls apart stops there (``teacher_md_frames``) and copies fill the frames it did not give.

    Every frame carries ``info["group"]``: a block of consecutive frames of one run spanning at least
    ``MIN_GROUP_SPAN_FS`` of MD, together with the perturbed copies of those frames.
    """
    atoms = load_structure(structure)
    timestep_fs = timestep_fs or default_timestep(atoms)
    _check_sampling(n_frames, temperatures, md_fraction, interval, runs, timestep_fs)
    teacher.check_elements(atoms.numbers)
    chains = [(t, r) for t in temperatures for r in range(runs)]
    n_md = max(len(chains), int(round(n_frames * md_fraction)))
    interval = interval or default_interval(timestep_fs)
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
    if not frames:
        raise InputError(f"no teacher MD frame of {structure} stayed whole (its bonds changed in every run)")
    frames += perturbed_copies(frames, n_frames - len(frames), seed=seed)
    tmp = output + ".partial.extxyz"
    ase.io.write(tmp, frames, format="extxyz")
    os.replace(tmp, output)
    return len(frames)


def _check_sampling(n_frames, temperatures, md_fraction, interval, runs, timestep_fs) -> None:
    """One line naming the option and the allowed range, before any MD."""
    checks = (
        ("-n (frames)", n_frames, n_frames >= 1, "≥ 1"),
        ("--temperature", list(temperatures), len(temperatures) > 0 and min(temperatures) > 0, "each > 0 K"),
        ("--md-fraction", md_fraction, 0 < md_fraction <= 1, "in (0, 1]"),
        ("--interval", interval, interval is None or interval >= 1, "≥ 1 MD step"),
        ("--runs", runs, runs >= 1, "≥ 1"),
        ("time step", timestep_fs, timestep_fs > 0, "> 0 fs"),
    )
    for name, value, ok, allowed in checks:
        if not ok:
            raise InputError(f"{name} {value} is out of range: must be {allowed}")


def temperature_summary(frames: Sequence[ase.Atoms]) -> list[str]:
    """Per target temperature: the kept MD frames' mean kinetic temperature and burn-in, one line each."""
    by_target: dict[float, list] = {}
    for atoms in frames:
        if "kinetic_temperature_K" in atoms.info:
            by_target.setdefault(float(atoms.info["target_temperature_K"]), []).append(atoms.info)
    return [
        f"{target:g} K: {len(infos)} MD frames at a mean kinetic temperature of "
        f"{np.mean([i['kinetic_temperature_K'] for i in infos]):.0f} K (burn-in "
        f"{min(i['burn_in_fs'] for i in infos):.0f}–{max(i['burn_in_fs'] for i in infos):.0f} fs)"
        for target, infos in sorted(by_target.items())
    ]


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
