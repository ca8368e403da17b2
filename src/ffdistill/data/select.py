"""Choosing what the teacher labels: stream structure files, keep the frames that match the rules,
optionally pick a diverse subset by farthest-point sampling, and write them out atomically.

Memory stays flat in the input size: frames are read one at a time (``ase.io.iread``, ``ase.db``) and
written as they pass. Picking keeps one small descriptor vector per kept frame and reads the inputs a
second time to write the picked frames.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import ase
import ase.data
import numpy as np

from ffdistill.errors import FFDistillError, InputError

#: Order in which rules are tried; a dropped frame is counted under the first rule it fails.
RULES = ("elements", "require", "max_atoms", "composition", "energy_window", "where")


@dataclass(frozen=True)
class FrameFilter:
    """Rules a frame must pass. Every rule left at its default accepts everything."""

    elements: frozenset[int] | None = None  #: atomic numbers allowed (only these)
    require: frozenset[int] = frozenset()  #: atomic numbers every frame must contain
    max_atoms: int | None = None
    composition: dict | None = None  #: atomic number -> fraction of atoms (sums to 1)
    energy_window: tuple[float, float] | None = None  #: eV/atom; frames without an energy fail it
    where: dict = field(default_factory=dict)  #: atoms.info key -> wanted value (as written)

    def first_failure(self, atoms: ase.Atoms) -> str | None:
        """The name of the first rule ``atoms`` fails, or None when it passes them all."""
        for rule in RULES:
            if not getattr(self, f"_{rule}_ok")(atoms):
                return rule
        return None

    def _elements_ok(self, atoms) -> bool:
        return self.elements is None or set(atoms.numbers.tolist()) <= self.elements

    def _require_ok(self, atoms) -> bool:
        return self.require <= set(atoms.numbers.tolist())

    def _max_atoms_ok(self, atoms) -> bool:
        return self.max_atoms is None or len(atoms) <= self.max_atoms

    def _composition_ok(self, atoms) -> bool:
        return self.composition is None or same_fractions(composition_of(atoms.numbers), self.composition)

    def _energy_window_ok(self, atoms) -> bool:
        if self.energy_window is None:
            return True
        energy = frame_energy(atoms)
        return energy is not None and self.energy_window[0] <= energy / len(atoms) <= self.energy_window[1]

    def _where_ok(self, atoms) -> bool:
        return all(info_matches(atoms.info.get(key), wanted) for key, wanted in self.where.items())


def composition_of(numbers: Sequence[int]) -> dict[int, float]:
    counts = Counter(int(z) for z in numbers)
    total = sum(counts.values())
    return {z: n / total for z, n in counts.items()}


def same_fractions(a: dict[int, float], b: dict[int, float], tol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(abs(a[z] - b[z]) <= tol for z in a)


def parse_composition(text: str) -> dict[int, float]:
    """``SiO2``, ``Si2O4`` or ``Si:O=1:2`` -> {14: 1/3, 8: 2/3}."""
    try:
        if "=" in text:
            symbols, ratios = text.split("=")
            counts = dict(zip(symbols.split(":"), (float(r) for r in ratios.split(":")), strict=True))
        else:
            from ase.formula import Formula

            counts = Formula(text).count()
        numbers = {ase.data.atomic_numbers[s]: float(n) for s, n in counts.items()}
    except (ValueError, KeyError) as error:
        raise InputError(f"--composition {text!r}: give a formula (SiO2) or ratios (Si:O=1:2)") from error
    total = sum(numbers.values())
    if not numbers or total <= 0 or min(numbers.values()) <= 0:
        raise InputError(f"--composition {text!r}: every element needs a positive amount")
    return {z: n / total for z, n in numbers.items()}


def parse_elements(symbols: Sequence[str] | None) -> frozenset[int] | None:
    if symbols is None:
        return None
    unknown = [s for s in symbols if s not in ase.data.atomic_numbers or s == "X"]
    if unknown:
        raise InputError(f"unknown element symbol(s): {' '.join(unknown)}")
    return frozenset(ase.data.atomic_numbers[s] for s in symbols)


def parse_where(items: Sequence[str]) -> dict[str, str]:
    where = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--where {item!r} must look like key=value")
        where[key] = value
    return where


def info_matches(found, wanted: str) -> bool:
    """Compare an ``atoms.info`` value with the text the user typed: numerically when both are numbers."""
    if found is None:
        return False
    if str(found) == wanted:
        return True
    try:
        return float(found) == float(wanted)
    except (TypeError, ValueError):
        return False


def frame_energy(atoms: ase.Atoms) -> float | None:
    """The energy a file carries for this frame (single-point results or ``info['energy']``), or None."""
    results = getattr(atoms.calc, "results", None) or {}
    if "energy" in results:
        return float(results["energy"])
    value = atoms.info.get("energy")
    return float(value) if isinstance(value, (int, float, np.floating, np.integer)) else None


# --------------------------------------------------------------------------------------------- streaming


def iter_inputs(paths: Sequence[str]) -> Iterator[tuple[int, int, ase.Atoms]]:
    """(file number, frame number in that file, atoms) over every input, one frame in memory at a time."""
    for k, path in enumerate(paths):
        frames = _iter_database(path) if path.endswith(".db") else _iter_file(path)
        for i, atoms in enumerate(frames):
            yield k, i, atoms


def _iter_file(path: str) -> Iterator[ase.Atoms]:
    from ffdistill.data.io import checked_structures

    yield from checked_structures(path)


def _iter_database(path: str) -> Iterator[ase.Atoms]:
    import ase.db

    if not os.path.isfile(path):
        raise InputError(f"cannot read {path}: no such file")
    try:
        for row in ase.db.connect(path, type="db").select():
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)  # so --where sees the database's keys
            yield atoms
    except FFDistillError:
        raise
    except Exception as error:  # sqlite and ASE raise many types for a bad database
        raise InputError(f"cannot read {path}: not an ASE database ({type(error).__name__}: {error})") from error


#: Output kinds ``select`` writes: extended XYZ, or an ASE database.
WRITABLE = (".extxyz", ".xyz", ".db")


class FrameWriter:
    """Frames appended one by one to ``PATH.partial``; ``commit`` renames it to ``PATH``.

    ``.db`` outputs are ASE databases; anything else is written as extended XYZ.
    """

    def __init__(self, path: str):
        directory = os.path.dirname(os.path.abspath(path))
        if not path.endswith(WRITABLE):
            raise InputError(f"cannot write {path}: the output must end in {', '.join(WRITABLE)}")
        if not os.path.isdir(directory):
            raise InputError(f"output directory {directory} does not exist")
        self.path, self.partial, self.count = path, path + ".partial", 0
        if os.path.exists(self.partial):
            os.remove(self.partial)  # selecting is cheap to repeat: start over
        self._db = None
        self._handle = None

    def write(self, atoms: ase.Atoms) -> None:
        if self.path.endswith(".db"):
            self._database().write(atoms, key_value_pairs=_scalar_info(atoms))
        else:
            import ase.io

            ase.io.write(self._file(), atoms, format="extxyz")
        self.count += 1

    def _database(self):
        if self._db is None:
            import ase.db

            self._db = ase.db.connect(self.partial, type="db", append=True)
        return self._db

    def _file(self):
        if self._handle is None:
            self._handle = open(self.partial, "w")
        return self._handle

    def discard(self) -> None:
        if self._handle is not None:
            self._handle.close()
        if os.path.exists(self.partial):
            os.remove(self.partial)

    def commit(self) -> None:
        if self._handle is not None:
            self._handle.close()
        if self.count == 0 and not os.path.exists(self.partial):
            open(self.partial, "w").close()  # an empty selection is still an answer
        os.replace(self.partial, self.path)


def _scalar_info(atoms: ase.Atoms) -> dict:
    """The ``atoms.info`` entries an ASE database accepts as key-value pairs."""
    ok = (bool, int, float, str, np.integer, np.floating)
    kept = {k: v for k, v in atoms.info.items() if isinstance(v, ok) and k.isidentifier()}
    return {k: v.item() if hasattr(v, "item") else v for k, v in kept.items()}


# --------------------------------------------------------------------------------------------- picking


def farthest_point_order(points: np.ndarray, n: int, first: int | None = None) -> np.ndarray:
    """Indices of ``n`` points chosen greedily, each the farthest (Euclidean) from those already chosen.

    Starts from ``first``, or else from the point farthest from the centroid, so the answer is
    deterministic; ties go to the lowest index.
    """
    points = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    n = min(n, len(points))
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if first is None:
        first = int(np.argmax(np.linalg.norm(points - points.mean(axis=0), axis=1)))
    chosen = [first]
    distance = np.linalg.norm(points - points[first], axis=1)
    for _ in range(n - 1):
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(points - points[nxt], axis=1))
    return np.asarray(chosen, dtype=np.int64)


def pick_groups(descriptors: np.ndarray, groups: Sequence, n_frames: int, by: str = "fps", seed: int = 0) -> np.ndarray:
    """Frame indices of whole groups, up to ``n_frames`` frames in all.

    Groups are ranked by farthest-point order of their mean descriptor (or at random) and taken in
    that order, skipping any group that would overshoot the budget.
    """
    keys = list(dict.fromkeys(groups))
    members = {key: [] for key in keys}
    for i, key in enumerate(groups):
        members[key].append(i)
    if by == "fps":
        means = np.stack([descriptors[members[key]].mean(axis=0) for key in keys])
        order = farthest_point_order(means, len(keys))
    elif by == "random":
        order = np.random.default_rng(seed).permutation(len(keys))
    else:
        raise InputError(f"--by {by!r}: choose fps or random")
    picked: list[int] = []
    for g in order:
        if len(picked) + len(members[keys[g]]) <= n_frames:
            picked += members[keys[g]]
    return np.sort(np.asarray(picked, dtype=np.int64))


def rdf_descriptor(cutoff: float = 5.0, bins: int = 20) -> Callable[[ase.Atoms], dict]:
    """Per element pair, a histogram of pair distances up to ``cutoff`` per atom (vesin neighbour list).

    Returns a function atoms -> {(Z_i, Z_j): histogram}; ``descriptor_matrix`` lines them up.
    """
    edges = np.linspace(0.0, cutoff, bins + 1)

    def describe(atoms: ase.Atoms) -> dict:
        from vesin import NeighborList

        pbc = np.asarray(atoms.pbc, dtype=bool)
        box = np.where(pbc[:, None], atoms.cell.array, 0.0)
        i, j, d = NeighborList(cutoff=cutoff, full_list=False).compute(atoms.positions, box, pbc, quantities="ijd")
        zi, zj = atoms.numbers[i], atoms.numbers[j]
        pairs = np.stack([np.minimum(zi, zj), np.maximum(zi, zj)], axis=1)
        out = {}
        for pair in {tuple(p) for p in pairs.tolist()}:
            mask = np.all(pairs == pair, axis=1)
            out[pair] = np.histogram(d[mask], bins=edges)[0] / len(atoms)
        return out

    return describe


def student_descriptor(model_path: str) -> Callable[[ase.Atoms], np.ndarray]:
    """Per-structure mean of a trained student's node features: the student's own view of similarity."""
    import torch

    from ffdistill.calculator import load_student
    from ffdistill.graph import from_ase

    model = load_student(model_path)

    def describe(atoms: ase.Atoms) -> np.ndarray:
        model.check_elements(atoms.numbers)
        with torch.no_grad():
            return model.node_features(from_ase(atoms, model.cutoff, labels=False)).mean(dim=0).double().numpy()

    return describe


def descriptor_matrix(values: list) -> np.ndarray:
    """Stack per-frame descriptors; dict descriptors (per element pair) are lined up, absent pairs zero."""
    if not any(isinstance(v, dict) for v in values):
        return np.asarray(values, dtype=np.float64)
    pairs = sorted({pair for v in values for pair in v})
    width = max((len(h) for v in values for h in v.values()), default=1)
    matrix = np.zeros((len(values), len(pairs), width))
    for row, value in enumerate(values):
        for col, pair in enumerate(pairs):
            if pair in value:
                matrix[row, col] = value[pair]
    return matrix.reshape(len(values), -1)


# --------------------------------------------------------------------------------------------- the verb


@dataclass
class SelectSummary:
    read: int = 0
    kept: int = 0  #: frames that passed every rule
    written: int = 0  #: frames written (kept, or picked from the kept)
    dropped: dict = field(default_factory=lambda: {rule: 0 for rule in RULES})
    groups: int = 0  #: groups among the kept frames (when picking)

    def lines(self) -> list[str]:
        why = ", ".join(f"{rule} {n}" for rule, n in self.dropped.items() if n) or "none"
        out = [f"read {self.read} frames; kept {self.kept}; dropped {self.read - self.kept} ({why})"]
        if self.written != self.kept:
            out.append(f"picked {self.written} of {self.kept} kept frames ({self.groups} groups)")
        return out


def select_frames(
    inputs: Sequence[str],
    output: str,
    rules: FrameFilter = FrameFilter(),
    pick: int | None = None,
    by: str = "fps",
    describe: Callable | None = None,
    seed: int = 0,
) -> SelectSummary:
    """Write the frames of ``inputs`` that pass ``rules`` to ``output``; with ``pick``, only ``pick`` of
    them, chosen by ``by`` (fps over ``describe``, default the RDF descriptor), whole groups at a time."""
    if not inputs:
        raise InputError("no input files given")
    if pick is not None and pick < 0:
        raise InputError("--pick must be a non-negative number of frames")
    summary, writer = SelectSummary(), FrameWriter(output)
    try:
        if pick is None:
            for _, _, atoms in _kept(inputs, rules, summary):
                writer.write(atoms)
        else:
            chosen = _choose(inputs, rules, summary, pick, by, describe or rdf_descriptor(), seed)
            for n, (_, _, atoms) in enumerate(_kept(inputs, rules, SelectSummary())):
                if n in chosen:
                    writer.write(atoms)
    except BaseException:
        writer.discard()  # selecting is cheap to repeat: leave nothing half-written
        raise
    writer.commit()
    summary.written = writer.count
    return summary


def _kept(inputs: Sequence[str], rules: FrameFilter, summary: SelectSummary) -> Iterator[tuple[int, int, ase.Atoms]]:
    for file_number, index, atoms in iter_inputs(inputs):
        summary.read += 1
        failed = rules.first_failure(atoms)
        if failed is None:
            summary.kept += 1
            yield file_number, index, atoms
        else:
            summary.dropped[failed] += 1


def _choose(inputs, rules, summary, pick, by, describe, seed) -> set[int]:
    """First pass: descriptors and groups of the kept frames, then the picked positions among them."""
    values, groups = [], []
    for file_number, index, atoms in _kept(inputs, rules, summary):
        group = atoms.info.get("group")
        groups.append((file_number, "group", group) if group is not None else (file_number, "frame", index))
        values.append(describe(atoms) if by == "fps" else 0.0)
    summary.groups = len(set(groups))
    if not groups:
        return set()
    return set(pick_groups(descriptor_matrix(values), groups, pick, by, seed).tolist())
