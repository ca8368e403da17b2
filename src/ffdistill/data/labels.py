"""Teacher labels on disk: a chunked, resumable zarr store.

Layout (F frames, A atoms in all, K rows in all, and ``HA = sum over rows of that frame's atoms``)::

    n_atoms (F,) int64    energy (F,) f64 eV       cell (F, 3, 3) Å    pbc (F, 3) bool
    n_rows  (F,) int64    stress (F, 3, 3) eV/Å³ (NaN when not periodic)
    numbers (A,) int64    positions (A, 3) Å       forces (A, 3) eV/Å
    row_index (K,) int64  flat coordinate index within its frame (3 * atom + axis)
    hessian (HA, 3) f32   rows of d2E/dR2 in eV/Å², each row one (N_frame, 3) block
    n_probes (F,) int64   probe_vectors (PA, 3) f32, probe_products (PA, 3) f32: P random unit probes v per
                          frame and the teacher's H·v (PA = sum over probes of that frame's atoms)
    group (F,) int64      frames that must stay on one side of a split (an MD block and its copies)
    ref_energy (F,), ref_forces (A, 3)   the input file's own labels (e.g. DFT), NaN where it has none
    frame_index (F,)      position of each frame in the input file (shards hold every N-th frame)
    checksum (F,)         CRC32 of the frame's labels: a lost or damaged chunk is detected on read
    checksums (F, C)      format 3: a CRC32 per frame of every per-frame array (``VERIFIED``, in that order),
                          so ``verify`` names the damaged frame *and* array; every chunk is written, even
                          one equal to the fill value, so a missing chunk file is damage, never zeros

Crash safety: labelled frames are gathered in blocks (``BLOCK_FRAMES`` frames or ``BLOCK_SECONDS``), each block
is appended to every array in one write, then the group attribute ``frames_done`` is rewritten (zarr writes
each file atomically). Everything past ``frames_done`` is discarded on resume.
The store is built at ``PATH.partial`` and renamed to ``PATH`` when complete, so a ``PATH`` that exists
is always whole.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone

import ase
import numpy as np
import torch
from tqdm.auto import tqdm

from ffdistill import __version__, derivatives
from ffdistill.data.io import file_sha256, iter_structures, scan_structures
from ffdistill.data.sampling import GROUP_KEY
from ffdistill.errors import FFDistillError, StoreError, TeacherError
from ffdistill.faults import fault_point
from ffdistill.graph import AtomicGraph, from_ase
from ffdistill.teachers.base import Teacher, TeacherLabels

FORMAT = "ffdistill-labels"
FORMAT_VERSION = 4  # 2: probes, group ids; 3: a checksum per frame of every array, every chunk written; 4: momenta
UNITS = {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å³", "hessian": "eV/Å²", "positions": "Å"}

#: name -> (trailing shape, dtype, chunk length along axis 0). Chunks of ~0.1-0.8 MB: appending rewrites the last
#: partly filled chunk of each array, so the chunk sizes bound labelling's memory, whatever the store's length.
ARRAYS = {
    "n_atoms": ((), "int64", 1024),
    "n_rows": ((), "int64", 1024),
    "energy": ((), "float64", 1024),
    "cell": ((3, 3), "float64", 1024),
    "pbc": ((3,), "bool", 1024),
    "stress": ((3, 3), "float64", 1024),
    "numbers": ((), "int64", 16384),
    "positions": ((3,), "float64", 16384),
    "forces": ((3,), "float64", 16384),
    "row_index": ((), "int64", 16384),
    "hessian": ((3,), "float32", 65536),
    "ref_energy": ((), "float64", 1024),
    "ref_forces": ((3,), "float64", 16384),
    "checksum": ((), "int64", 1024),
    "frame_index": ((), "int64", 1024),
    "n_probes": ((), "int64", 1024),
    "probe_vectors": ((3,), "float32", 65536),
    "probe_products": ((3,), "float32", 65536),
    "group": ((), "int64", 1024),
    "momenta": ((3,), "float64", 16384),
}
#: Format 3: the arrays whose every frame's span has its own CRC32 (columns of ``checksums``, in this order).
VERIFIED = (
    "n_atoms",
    "n_rows",
    "energy",
    "cell",
    "pbc",
    "stress",
    "numbers",
    "positions",
    "forces",
    "row_index",
    "hessian",
    "ref_energy",
    "ref_forces",
    "frame_index",
    "n_probes",
    "probe_vectors",
    "probe_products",
    "group",
    "momenta",  # format 4; format-3 stores' checksums are the columns before it
)
ARRAYS["checksums"] = ((len(VERIFIED),), "int64", 1024)
FRAME_ARRAYS = (
    "n_atoms",
    "n_rows",
    "energy",
    "cell",
    "pbc",
    "stress",
    "ref_energy",
    "checksum",
    "frame_index",
    "n_probes",
    "group",
    "checksums",
)
#: Arrays whose bytes each frame's checksum covers (a lost or damaged chunk reads back as fill values).
CHECKED = ("energy", "cell", "positions", "forces", "row_index", "hessian", "probe_vectors", "probe_products", "group")
#: Arrays a chunk of which can never equal zarr's fill value, 0 (no element 0, no frame of 0 atoms): in a
#: format-2 store, written without the chunks equal to the fill value, only their missing chunks are damage.
NEVER_FILL = ("numbers", "n_atoms")
#: Default group rule without group ids in the input: blocks of this many consecutive input frames.
DEFAULT_GROUP_SIZE = 10

ATOM_ARRAYS = ("numbers", "positions", "forces", "ref_forces", "momenta")


def choose_rows(n_atoms: int, rows: str | int, seed: int, frame: int) -> np.ndarray:
    """Rows to label for one frame: all 3N, or K drawn without replacement, reproducible per frame."""
    if rows == "all":
        return np.arange(3 * n_atoms)
    k = min(int(rows), 3 * n_atoms)
    rng = np.random.default_rng([seed, frame])
    return np.sort(rng.choice(3 * n_atoms, size=k, replace=False))


@dataclass(frozen=True)
class LabelRequest:
    """What a store is labelled from: resuming requires every field to match."""

    input_sha256: str
    teacher_spec: str
    teacher_version: str
    hessian_rows: str  # "all" or a number of rows per frame
    seed: int
    shard: list  # [i, n]: every n-th frame from the i-th
    node_features: bool = False  # teacher node features stored too (n2n baseline)
    hessian_probes: int = 0  # random-probe products H·v per frame
    group_rule: str = ""  # how frames were grouped (see ``group_rule``)

    @classmethod
    def whole_store_like(cls, attrs, input_sha256: str, group_rule: str) -> LabelRequest:
        """A one-shard request with the teacher and labels of a store's ``attrs`` (merges and joins)."""
        return cls(
            input_sha256,
            attrs["teacher_spec"],
            attrs["teacher_version"],
            attrs["hessian_rows"],
            attrs["seed"],
            [0, 1],
            attrs.get("node_features", False),
            attrs.get("hessian_probes", 0),
            group_rule,
        )


def group_rule(input_path: str, group_by: str | None, group_size: int, n_keyed: int, n_total: int) -> str:
    """``info:KEY`` when the input names each frame's group, else ``blocks:B`` (B consecutive input frames)."""
    key = group_by or GROUP_KEY
    if n_keyed == n_total:
        return f"info:{key}"
    if group_by is not None or n_keyed:
        raise StoreError(f"{input_path}: {n_keyed} of {n_total} structures carry info[{key!r}]; give it to all or none")
    if group_size < 1:
        raise StoreError(f"group size must be at least 1, got {group_size}")
    return f"blocks:{group_size}"


def group_of(atoms: ase.Atoms, index: int, rule: str) -> int:
    """The group id of input frame ``index`` under ``rule``. Names that are not integers are hashed
    (a collision only merges two groups, which can never leak)."""
    kind, _, arg = rule.partition(":")
    if kind == "blocks":
        return index // int(arg)
    value = atoms.info[arg]
    if isinstance(value, (int, np.integer)) or (isinstance(value, str) and value.lstrip("-").isdigit()):
        return int(value)
    return (1 << 40) + zlib.crc32(str(value).encode())


def label_file(
    teacher: Teacher,
    input_path: str,
    store_path: str,
    rows: str | int = "all",
    seed: int = 0,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    node_features: bool = False,
    probes: int = 0,
    group_by: str | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
    batch_size: int = 1,
) -> LabelStore:
    """Label the structures of ``input_path`` with ``teacher`` into ``store_path``; resumes if interrupted.

    ``probes`` random unit directions v per frame are stored with the teacher's H·v. Each frame gets a
    group id: ``info[group_by or "group"]`` when every input frame has it, else blocks of ``group_size``
    consecutive input frames.

    ``shard=(i, n)`` labels only frames ``i, i + n, i + 2n, ...``: n workers write n shards that
    ``merge_stores`` joins into the store one worker would have written.

    ``batch_size`` frames go to the teacher in one call (``Teacher.label_batch``); frames are committed in
    blocks of whole batches (``BLOCK_FRAMES``, ``BLOCK_SECONDS``), so a resumed run restarts at a batch
    boundary and writes the same values as an uninterrupted one.
    """
    if batch_size < 1:
        raise StoreError(f"the labelling batch size must be at least 1, got {batch_size}")
    if os.path.exists(store_path):
        raise StoreError(f"{store_path} already exists and is complete; choose another output or delete it")
    index_in_shard, n_shards = shard
    if not 0 <= index_in_shard < n_shards:
        raise StoreError(f"shard {index_in_shard}/{n_shards} does not exist: use I/N with 0 <= I < N")
    if node_features and type(teacher).node_features is Teacher.node_features:
        raise StoreError(f"teacher {teacher.spec} does not expose node features (n2n needs sevenn or mace)")
    if probes < 0:
        raise StoreError(f"the number of Hessian probes must be >= 0, got {probes}")
    n_total, elements, n_keyed = scan_structures(input_path, teacher.check_elements, group_by or GROUP_KEY)
    rule = group_rule(input_path, group_by, group_size, n_keyed, n_total)
    mine = list(range(index_in_shard, n_total, n_shards))
    request = LabelRequest(
        file_sha256(input_path),
        teacher.spec,
        teacher.version,
        str(rows),
        int(seed),
        [index_in_shard, n_shards],
        node_features,
        int(probes),
        rule,
    )
    embeddings = teacher.element_embeddings()
    missing = sorted(set(int(z) for z in elements) - set(embeddings)) if embeddings is not None else []
    if missing:  # before any file is written
        symbols = ", ".join(ase.data.chemical_symbols[z] for z in missing)
        raise TeacherError(f"teacher {teacher.spec} does not cover element(s) {symbols} in {input_path}")
    job = _Job(input_path, rows, int(seed), int(probes), rule, node_features)
    _check_writable(os.path.dirname(os.path.abspath(store_path)))  # before the lock file goes there
    with WriterLock(store_path):  # one writer per store; a killed writer's lock is taken over
        return _label_into(teacher, store_path, request, job, mine, n_total, elements, embeddings, batch_size, progress)


def _label_into(teacher, store_path, request, job, mine, n_total, elements, embeddings, batch_size, progress):
    """The labelling loop of ``label_file`` (under its writer lock): resume the partial store, label, finish."""
    input_path, (index_in_shard, n_shards), partial = job.input_path, request.shard, store_path + ".partial"
    group = _open_partial(partial, request, input_path, len(mine))
    if embeddings is not None and "element_embeddings" not in group.attrs:
        group.attrs["element_embeddings"] = {str(z): embeddings[z].tolist() for z in sorted(elements)}
    done = int(group.attrs["frames_done"])
    start = mine[done] if done < len(mine) else n_total
    bar = tqdm(total=len(mine), initial=done, desc="labelling", unit="frame", disable=not progress)
    pending, block = [], _Block(group)
    try:
        for index, atoms in enumerate(iter_structures(input_path, start=start), start=start):
            if (index - index_in_shard) % n_shards:
                continue  # another shard's frame
            pending.append((index, atoms))
            if len(pending) == batch_size:
                block.add(_label_frames(teacher, pending, job))
                bar.update(len(pending))
                pending = []
        if pending:
            block.add(_label_frames(teacher, pending, job))
            bar.update(len(pending))
    except BaseException:
        block.salvage()  # a teacher that fails or an interrupt keeps the frames already labelled
        raise
    block.commit()
    bar.close()
    return _finish(group, partial, store_path)


@dataclass(frozen=True)
class _Job:
    """What every frame of one ``label_file`` run is labelled with."""

    input_path: str
    rows: str | int
    seed: int
    probes: int
    rule: str
    node_features: bool


def _label_frames(teacher: Teacher, frames: list, job: _Job) -> list[dict[str, np.ndarray]]:
    """Store values of ``frames`` (``(input index, atoms)`` pairs), labelled in one teacher call. Rows and probes
    are drawn per input frame, so batching never changes them. A batch the teacher refuses is relabelled frame
    by frame, so the error names the structure that broke it."""
    picked = [choose_rows(len(atoms), job.rows, job.seed, index) for index, atoms in frames]
    vectors = [derivatives.random_probes(len(a), job.probes, job.seed, i) if job.probes else None for i, a in frames]
    try:
        labels = teacher.label_batch([atoms for _, atoms in frames], picked, vectors)
    except FFDistillError as error:
        if len(frames) > 1:
            for frame in frames:
                _label_frames(teacher, [frame], job)
        first, last = frames[0][0], frames[-1][0]
        where = f"structure {first}" if first == last else f"structures {first}-{last}"
        raise type(error)(f"{job.input_path}, {where}: {error}") from error
    out = []
    for (index, atoms), one in zip(frames, labels):
        values = frame_values(atoms, one, index, group_of(atoms, index, job.rule))
        if job.node_features:
            values["node_features"] = teacher.node_features(teacher.graph(atoms)).detach().float().cpu().numpy()
        out.append(values)
    return out


#: A block is committed once it holds this many frames or its first frame is this many seconds old: the store's
#: cost is then one write per array per block, and a killed run loses at most a block of teacher time.
BLOCK_FRAMES = 256
BLOCK_SECONDS = 30.0


class _Block:
    """Frames labelled but not yet in the store."""

    def __init__(self, group):
        self.group, self.frames, self.since, self.writing = group, [], time.monotonic(), False

    def add(self, frames: list[dict[str, np.ndarray]]) -> None:
        self.frames += frames
        if len(self.frames) >= BLOCK_FRAMES or time.monotonic() - self.since >= BLOCK_SECONDS:
            self.commit()

    def commit(self) -> None:
        if self.frames:
            self.writing = True
            _commit(self.group, self.frames)
            self.writing = False
        self.frames, self.since = [], time.monotonic()

    def salvage(self) -> None:
        """Commit what is gathered while another error propagates, unless that error came from committing
        (a full disk): a resume then truncates what was half-appended."""
        if not self.writing:
            self.commit()


def _commit(group, frames: list[dict[str, np.ndarray]]) -> None:
    """Append a block of frames to every array (one write each), then count them done: the commit point. A run
    killed in between leaves arrays longer than ``frames_done``, which a resume truncates."""
    frames = [_with_checksums(values) for values in frames]
    _append_values(group, {name: np.concatenate([f[name] for f in frames]) for name in frames[0]})
    fault_point("label.commit")
    group.attrs["frames_done"] = group.attrs["frames_done"] + len(frames)


class WriterLock:
    """``PATH.lock`` holding the writer's pid while one process labels into ``PATH``: a second writer on the
    same store is refused in one line; a lock whose process is gone (killed) is taken over."""

    def __init__(self, store_path: str):
        self.path = store_path + ".lock"

    def __enter__(self):
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = self._owner()
            if owner is not None and _alive(owner):
                raise StoreError(
                    f"another process (pid {owner}) is writing {self.path[: -len('.lock')]}; wait for it, or "
                    f"delete {self.path} if that process is not ffdistill"
                ) from None
            os.remove(self.path)  # stale: its writer was killed
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        return self

    def __exit__(self, *exc) -> None:
        if self._owner() == os.getpid():
            os.remove(self.path)

    def _owner(self) -> int | None:
        try:
            with open(self.path) as handle:
                return int(handle.read().strip() or 0) or None
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finish(group, partial: str, store_path: str) -> LabelStore:
    group.attrs["complete"] = True
    os.replace(partial, store_path)
    return LabelStore(store_path)


def merge_stores(shard_paths: list[str], store_path: str, progress: bool = True) -> LabelStore:
    """Join the shards of one labelling job into one store, frames in input order."""
    if os.path.exists(store_path):
        raise StoreError(f"{store_path} already exists; choose another output or delete it")
    shards = [LabelStore(p) for p in shard_paths]
    for shard in shards:
        shard.check_intact()
    first = shards[0].attrs
    for s in shards:
        for field in (
            "input_sha256",
            "teacher_spec",
            "teacher_version",
            "hessian_rows",
            "seed",
            "hessian_probes",
            "group_rule",
        ):
            if s.attrs.get(field) != first.get(field):
                raise StoreError(f"cannot merge {s.path}: its {field} differs from {shards[0].path}'s")
    counts = sorted(s.attrs["shard"][0] for s in shards)
    n_shards = first["shard"][1]
    if counts != list(range(n_shards)) or any(s.attrs["shard"][1] != n_shards for s in shards):
        raise StoreError(f"cannot merge: need each of the {n_shards} shards exactly once, got {counts}")
    owner = {int(f): (s, k) for s in shards for k, f in enumerate(s.group["frame_index"][:])}
    request = LabelRequest.whole_store_like(first, first["input_sha256"], first.get("group_rule", ""))
    partial = store_path + ".partial"
    if os.path.exists(partial):
        import shutil as _shutil

        _shutil.rmtree(partial)  # merging is cheap: start over rather than resume
    group = _open_partial(partial, request, first["input"], len(owner))
    block = _Block(group)
    for index in tqdm(sorted(owner), desc="merging", unit="frame", disable=not progress):
        store, k = owner[index]
        block.add([store.raw_frame(k)])
    block.commit()
    return _finish(group, partial, store_path)


def migrate_store(path: str, progress: bool = True) -> str:
    """Rewrite an older label store in the current format (a checksum per frame of every array, every chunk
    written, momenta: NaN where the old store had none): the new store is built beside it and swapped in whole;
    the old one is kept as ``PATH.formatN``. Returns that."""
    import zarr

    old = LabelStore(path)
    if old.v4:
        raise StoreError(f"{path} is already of format {FORMAT_VERSION}")
    old.check_intact()  # its own (narrower) checksums first: never carry damage into checksummed arrays
    kept, partial = f"{path}.format{old.attrs.get('format_version', 1)}", f"{path}.migrating.partial"
    if os.path.exists(kept):
        raise StoreError(f"{kept} already exists; move it away first")
    shutil.rmtree(partial, ignore_errors=True)  # migrating is cheap: start over rather than resume
    attrs = {k: v for k, v in old.attrs.items() if k not in ("format_version", "frames_done", "complete")}
    group = zarr.open_group(partial, mode="w")
    zarr.config.set({"array.write_empty_chunks": True})
    for name, (shape, dtype, chunk) in ARRAYS.items():
        group.create_array(name, shape=(0, *shape), dtype=dtype, chunks=(chunk, *shape))
    group.attrs.update({**attrs, "format_version": FORMAT_VERSION, "frames_done": 0, "complete": False})
    block = _Block(group)
    for i in tqdm(range(len(old)), desc="migrating", unit="frame", disable=not progress):
        values = old.raw_frame(i)
        if not old.v2:  # format 1: no probes, groups from blocks of the frame index
            values.update(n_probes=np.array([0]), probe_vectors=np.zeros((0, 3)), probe_products=np.zeros((0, 3)))
            values["group"] = np.array([int(values["frame_index"][0]) // DEFAULT_GROUP_SIZE])
        block.add([{k: np.asarray(v, dtype=ARRAYS[k][1]) if k in ARRAYS else v for k, v in values.items()}])
    block.commit()
    group.attrs["complete"] = True
    os.replace(path, kept)
    os.replace(partial, path)
    return kept


def _open_partial(partial: str, request: LabelRequest, input_path: str, n_frames: int):
    import zarr

    _check_writable(os.path.dirname(os.path.abspath(partial)))
    zarr.config.set({"array.write_empty_chunks": True})  # a missing chunk is then damage, never zeros
    # One codec thread: a block's few chunk writes gain nothing from more, and every extra thread keeps its own
    # malloc arena, which grew labelling memory with the number of frames (docs: performance). It applies when
    # zarr creates its pool, i.e. when nothing in this process has used zarr yet, as in `ffdistill label`.
    zarr.config.set({"threading.max_workers": 1})
    if os.path.exists(partial):
        group = zarr.open_group(partial, mode="r+")
        _check_same_request(group, request, partial)
        if "momenta" not in group:
            raise StoreError(f"cannot resume {partial}: it is of an older format; delete it and label again")
        _truncate_to_committed(group)
        return group
    group = zarr.open_group(partial, mode="w")
    zarr.config.set({"array.write_empty_chunks": True})  # a chunk equal to the fill value is written too
    for name, (shape, dtype, chunk) in ARRAYS.items():
        group.create_array(name, shape=(0, *shape), dtype=dtype, chunks=(chunk, *shape))
    group.attrs.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "ffdistill_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": os.path.abspath(input_path),
            "n_frames_expected": n_frames,
            "units": UNITS,
            "dtype": {"hessian": "float32", "other": "float64"},
            **request.__dict__,
            "frames_done": 0,
            "complete": False,
        }
    )
    return group


def _check_writable(directory: str) -> None:
    if not os.path.isdir(directory):
        raise StoreError(f"output directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise StoreError(f"output directory {directory} is not writable")
    if shutil.disk_usage(directory).free < 50 * 2**20:
        raise StoreError(f"less than 50 MiB free in {directory}")


def _check_same_request(group, request: LabelRequest, path: str) -> None:
    for field, wanted in request.__dict__.items():
        found = group.attrs.get(field)
        if found != wanted:
            what = "a different input file" if field == "input_sha256" else f"{field}={found!r} (now {wanted!r})"
            raise StoreError(f"cannot resume {path}: it was written from {what}; delete it or choose another output")


def _truncate_to_committed(group) -> None:
    """Drop whatever a killed run appended after its last commit."""
    done = int(group.attrs["frames_done"])
    n_atoms = group["n_atoms"][:done]
    n_rows = group["n_rows"][:done]
    lengths = {name: done for name in FRAME_ARRAYS}
    lengths.update({name: int(n_atoms.sum()) for name in ATOM_ARRAYS + ("node_features",) if name in group})
    lengths["row_index"] = int(n_rows.sum())
    lengths["hessian"] = int((n_rows * n_atoms).sum())
    n_probes = group["n_probes"][:done]
    lengths["probe_vectors"] = lengths["probe_products"] = int((n_probes * n_atoms).sum())
    for name, length in lengths.items():
        array = group[name]
        if array.shape[0] != length:
            array.resize((length, *array.shape[1:]))


def frame_values(atoms: ase.Atoms, labels: TeacherLabels, index: int, group: int) -> dict[str, np.ndarray]:
    """One frame's entries for every array of the store."""
    n = len(atoms)
    no_probes = np.zeros((0, 3))
    probe_vectors = no_probes if labels.probe_vectors is None else labels.probe_vectors.reshape(-1, 3)
    probe_products = no_probes if labels.probe_products is None else labels.probe_products.reshape(-1, 3)
    stress = labels.stress if labels.stress is not None else np.full((3, 3), np.nan)
    ref_energy, ref_forces = _reference_labels(atoms)
    values = {
        "n_atoms": np.array([n]),
        "n_rows": np.array([len(labels.row_index)]),
        "energy": np.array([labels.energy]),
        "cell": atoms.cell.array[None],
        "pbc": np.asarray(atoms.pbc, dtype=bool)[None],
        "stress": stress[None],
        "numbers": atoms.numbers,
        "positions": atoms.positions,
        "forces": labels.forces,
        "row_index": labels.row_index,
        "hessian": labels.hessian_rows.reshape(-1, 3).astype(np.float32),
        "ref_energy": np.array([ref_energy]),
        "ref_forces": ref_forces,
        "frame_index": np.array([index]),
        "n_probes": np.array([len(probe_vectors) // n]),
        "probe_vectors": probe_vectors,
        "probe_products": probe_products,
        "group": np.array([group]),
        # the sampler's momenta (so that inspect can say how hot the frames are); NaN for copies and for inputs
        # without momenta
        "momenta": atoms.get_momenta() if atoms.has("momenta") else np.full((n, 3), np.nan),
    }
    values = {k: np.asarray(v, dtype=ARRAYS[k][1]) for k, v in values.items()}
    values["checksum"] = np.array([frame_checksum(values)])
    values["checksums"] = array_checksums(values)[None]
    return values


def array_checksums(values: dict[str, np.ndarray], names: tuple = VERIFIED) -> np.ndarray:
    """(C,) CRC32 of each of one frame's arrays (``VERIFIED``, or the first C of them for an older store)."""
    return np.array([zlib.crc32(np.ascontiguousarray(values[name], dtype=ARRAYS[name][1]).tobytes()) for name in names])


def _with_checksums(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A frame ready for a current store: an older store's frame (merged, migrated or copied) gains NaN momenta
    and checksums of every current array."""
    if "momenta" not in values:
        values = {**values, "momenta": np.full((len(values["numbers"]), 3), np.nan)}
    if "checksums" in values and values["checksums"].shape[-1] == len(VERIFIED):
        return values
    return {**values, "checksums": array_checksums(values)[None]}


def _append_values(group, values: dict[str, np.ndarray]) -> None:
    present = set(group.array_keys())
    for name, value in values.items():
        if name in present and len(value) == 0:
            continue  # nothing to add (e.g. no probes): skip a metadata rewrite
        if name not in present:  # node_features: its width is known only once the teacher has run
            group.create_array(name, shape=(0, value.shape[1]), dtype="float32", chunks=(16384, value.shape[1]))
        group[name].append(np.asarray(value, dtype=ARRAYS.get(name, (None, "float32"))[1]), axis=0)


def frame_checksum(arrays: dict[str, np.ndarray]) -> int:
    """CRC32 over the checked arrays a frame has (stores of format 1 have no probes or groups)."""
    crc = 0
    for name in CHECKED:
        if name in arrays:
            crc = zlib.crc32(np.ascontiguousarray(arrays[name]).tobytes(), crc)
    return crc


def _reference_labels(atoms: ase.Atoms) -> tuple[float, np.ndarray]:
    """Energy and forces the input file carries (DFT, say), NaN when it has none."""
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    energy = float(results["energy"]) if "energy" in results else np.nan
    forces = (
        np.asarray(results["forces"], dtype=np.float64) if "forces" in results else np.full((len(atoms), 3), np.nan)
    )
    return energy, forces


#: stores already told to be of an older format (the note is printed once per path and process)
_NOTED: set[str] = set()


class LabelStore:
    """Read access to a complete label store."""

    def __init__(self, path: str):
        import zarr

        if not os.path.isdir(path):
            hint = (
                " (an interrupted run: re-run the same label command to finish it)"
                if os.path.isdir(path + ".partial")
                else ""
            )
            raise StoreError(f"no label store at {path}{hint}")
        try:
            self.group = zarr.open_group(path, mode="r")
            attrs = dict(self.group.attrs)
        except Exception as error:
            raise StoreError(f"{path} is not a readable label store ({type(error).__name__})") from error
        if attrs.get("format") != FORMAT:
            raise StoreError(f"{path} is not an ffdistill label store")
        if not attrs.get("complete"):
            raise StoreError(f"{path} is incomplete")
        self.path, self.attrs = path, attrs
        # Open each array once: a lookup reads and parses its metadata, half the cost of a streamed frame read.
        self.arrays = {name: self.group[name] for name in self.group.array_keys()}
        self._load_index()

    def _load_index(self) -> None:
        try:
            self.n_atoms = self.group["n_atoms"][:]
            self.n_rows = self.group["n_rows"][:]
        except Exception as error:
            raise StoreError(f"{self.path} is corrupt: cannot read its index ({type(error).__name__})") from error
        self.atom_start = np.concatenate([[0], np.cumsum(self.n_atoms)])
        self.row_start = np.concatenate([[0], np.cumsum(self.n_rows)])
        self.hess_start = np.concatenate([[0], np.cumsum(self.n_rows * self.n_atoms)])
        self.v2 = "n_probes" in self.group  # format 2: probes and group ids
        self.v3 = "checksums" in self.group  # format 3: a checksum per frame of every array
        self.v4 = "momenta" in self.group  # format 4: the sampled frames' momenta
        if not self.v4 and self.path not in _NOTED:
            _NOTED.add(self.path)
            lacks = "it has no momenta" if self.v3 else "its numbers, pbc, stress and ref. labels carry no checksum"
            print(
                f"note: {self.path} is a format-{self.attrs.get('format_version', 1)} label store, read-only; "
                f"{lacks}: ffdistill migrate {self.path} upgrades it",
                file=sys.stderr,
            )
        self.n_probes = self.group["n_probes"][:] if self.v2 else np.zeros_like(self.n_rows)
        self.probe_start = np.concatenate([[0], np.cumsum(self.n_probes * self.n_atoms)])
        expected = {"numbers": self.atom_start[-1], "row_index": self.row_start[-1], "hessian": self.hess_start[-1]}
        if self.v2:
            expected.update(probe_vectors=self.probe_start[-1], probe_products=self.probe_start[-1])
        for name, length in expected.items():
            if self.group[name].shape[0] != length or len(self.n_atoms) != self.attrs["frames_done"]:
                raise StoreError(f"{self.path} is corrupt: array {name} has the wrong length")

    def __len__(self) -> int:
        return len(self.n_atoms)

    def frame(self, i: int) -> tuple[ase.Atoms, dict[str, np.ndarray | None]]:
        """Structure ``i`` and its labels: energy, forces, stress (or None), hessian_rows (K, N, 3), row_index."""
        g, a0, a1 = self.arrays, self.atom_start[i], self.atom_start[i + 1]
        r0, r1, h0, h1 = self.row_start[i], self.row_start[i + 1], self.hess_start[i], self.hess_start[i + 1]
        try:
            raw = {
                "energy": g["energy"][i : i + 1],
                "cell": g["cell"][i : i + 1],
                "positions": g["positions"][a0:a1],
                "forces": g["forces"][a0:a1],
                "row_index": g["row_index"][r0:r1],
                "hessian": g["hessian"][h0:h1],
            }
            p0, p1 = self.probe_start[i], self.probe_start[i + 1]
            if self.v2:
                raw.update(
                    probe_vectors=g["probe_vectors"][p0:p1],
                    probe_products=g["probe_products"][p0:p1],
                    group=g["group"][i : i + 1],
                )
            intact = frame_checksum(raw) == int(g["checksum"][i])
            atoms = ase.Atoms(
                numbers=g["numbers"][a0:a1], positions=raw["positions"], cell=raw["cell"][0], pbc=g["pbc"][i]
            )
            stress = g["stress"][i]
            labels = {
                "energy": float(g["energy"][i]),
                "forces": raw["forces"],
                "stress": None if np.isnan(stress).any() else stress,
                "row_index": raw["row_index"],
                "hessian_rows": raw["hessian"].reshape(r1 - r0, a1 - a0, 3),
                "ref_energy": float(g["ref_energy"][i]),
                "ref_forces": g["ref_forces"][a0:a1],
                "probe_vectors": raw["probe_vectors"].reshape(-1, a1 - a0, 3) if self.v2 else None,
                "probe_products": raw["probe_products"].reshape(-1, a1 - a0, 3) if self.v2 else None,
            }
        except Exception as error:
            raise StoreError(
                f"{self.path} is corrupt: cannot read frame {i} ({type(error).__name__}: {error})"
            ) from error
        if not intact:
            raise StoreError(f"{self.path} is corrupt: frame {i} fails its checksum (a damaged or missing chunk)")
        return atoms, labels

    def raw_frame(self, i: int) -> dict[str, np.ndarray]:
        """Frame ``i`` exactly as stored, array by array (checksum verified)."""
        self.frame(i)  # verifies the checksum
        starts = self.starts()
        return {name: self.group[name][starts[name][i] : starts[name][i + 1]] for name in self.array_names()}

    def starts(self) -> dict[str, np.ndarray]:
        """(F + 1,) offsets of every frame's span in each array (``array[s[i]:s[i + 1]]`` is frame i's)."""
        frames = np.arange(len(self) + 1)
        spans = {"row_index": self.row_start, "hessian": self.hess_start}
        spans.update({name: self.atom_start for name in ATOM_ARRAYS + ("node_features",)})
        spans.update(probe_vectors=self.probe_start, probe_products=self.probe_start)
        return {name: spans.get(name, frames) for name in self.array_names()}

    def verify(self, block: int = 1024) -> list[str]:
        """Every problem found, one line each: chunk files missing, and (format 3) each frame whose span of an
        array no longer matches its checksum, naming the frame and the arrays; [] for an intact store. Format-2
        stores are checked by their per-frame checksum, which covers fewer arrays, and for missing chunks only
        where the fill value can never have been written (``NEVER_FILL``): they were written without every
        chunk (zarr leaves out a chunk equal to the fill value, such as a molecule store's all-False pbc)."""
        starts = self.starts()
        names = self.array_names() if self.v3 else [n for n in NEVER_FILL if n in self.group]
        problems = [line for name in names for line in self._missing_chunks(name, starts[name])]
        sums = self.group["checksums"][:] if self.v3 else self.group["checksum"][:]
        names = VERIFIED[: sums.shape[1]] if self.v3 else tuple(n for n in CHECKED if n in self.group)
        for f0 in range(0, len(self), block):
            f1 = min(len(self), f0 + block)
            data = {n: self.group[n][starts[n][f0] : starts[n][f1]] for n in names}
            for i in range(f0, f1):
                parts = {n: data[n][starts[n][i] - starts[n][f0] : starts[n][i + 1] - starts[n][f0]] for n in names}
                if self.v3:
                    bad = [n for n, crc, want in zip(names, array_checksums(parts, names), sums[i]) if crc != want]
                else:
                    bad = [] if frame_checksum(parts) == sums[i] else ["one of " + ", ".join(names)]
                if bad:
                    problems.append(f"frame {i}: {', '.join(bad)} damaged")
        return problems

    def _missing_chunks(self, name: str, starts: np.ndarray) -> list[str]:
        """Chunk files of array ``name`` that are not on disk (zarr would read them as fill values), with the
        frames whose entries they held (``starts``: each frame's first entry)."""
        array = self.group[name]
        chunk = array.chunks[0]
        expected = math.ceil(array.shape[0] / chunk) if array.shape[0] else 0
        trailing = ["0"] * (array.ndim - 1)
        missing = [
            c for c in range(expected) if not os.path.exists(os.path.join(self.path, name, "c", str(c), *trailing))
        ]
        lines = []
        for c in missing:
            first, last = c * chunk, min(array.shape[0], (c + 1) * chunk) - 1
            f0, f1 = (int(np.searchsorted(starts, e, side="right")) - 1 for e in (first, last))
            frames = f"frame {f0}" if f0 == f1 else f"frames {f0}–{f1}"
            lines.append(f"array {name}: chunk {c} missing (entries {first}–{last}, {frames})")
        return lines

    def check_intact(self) -> None:
        """Refuse a damaged store in one line naming the first damaged frame or chunk (``ffdistill inspect
        --verify`` lists them all)."""
        problems = self.verify()
        if problems:
            more = f" and {len(problems) - 1} more problem(s)" if len(problems) > 1 else ""
            raise StoreError(f"{self.path} is damaged: {problems[0]}{more} (ffdistill inspect --verify lists them)")

    def array_names(self) -> list[str]:
        return [n for n in ARRAYS if n in self.group] + (["node_features"] if "node_features" in self.group else [])

    def groups(self) -> np.ndarray:
        """(F,) group id of every frame; a store of format 1 falls back to blocks of its frame index."""
        if self.v2:
            return self.group["group"][:]
        return self.group["frame_index"][:] // DEFAULT_GROUP_SIZE

    def graph(self, i: int, cutoff: float, dtype: torch.dtype = torch.float32, reference: bool = True) -> AtomicGraph:
        """Frame ``i`` as a labelled ``AtomicGraph`` of radius ``cutoff``.

        Energy and forces are the input file's own labels when it has them and ``reference`` is
        True, else the teacher's; Hessian rows are always the teacher's.
        """
        atoms, labels = self.frame(i)
        graph = from_ase(atoms, cutoff, dtype=dtype, labels=False)
        as_t = lambda x: None if x is None else torch.as_tensor(np.asarray(x), dtype=dtype)  # noqa: E731
        use_ref = reference and np.isfinite(labels["ref_energy"]) and np.isfinite(labels["ref_forces"]).all()
        return graph._replace(
            energy=torch.tensor([labels["ref_energy" if use_ref else "energy"]], dtype=dtype),
            forces=as_t(labels["ref_forces" if use_ref else "forces"]),
            stress=None if labels["stress"] is None else as_t(labels["stress"])[None],
            hessian_rows=as_t(labels["hessian_rows"]),
            row_index=torch.as_tensor(labels["row_index"], dtype=torch.long),
            node_features=self._node_features(i, dtype),
            **_probe_fields(labels, as_t),
        )

    def _node_features(self, i: int, dtype: torch.dtype) -> torch.Tensor | None:
        if "node_features" not in self.group:
            return None
        return torch.as_tensor(self.arrays["node_features"][self.atom_start[i] : self.atom_start[i + 1]], dtype=dtype)

    def kinetic_temperatures(self) -> dict | None:
        """Kinetic temperature (K) of the frames that carry momenta (the sampler's MD frames; 3N − 3 degrees of
        freedom for a periodic cell, 3N − 6 for a molecule: ``sampling.kinetic_temperature``), overall and as
        the range of per-group means (each group one stretch of one MD run). None when no frame has momenta."""
        from ffdistill.data.sampling import kinetic_temperature

        if not self.v4:
            return None
        momenta, numbers, positions = (self.group[name][:] for name in ("momenta", "numbers", "positions"))
        cells, pbcs, groups = self.group["cell"][:], self.group["pbc"][:], self.groups()
        found: dict[int, list[float]] = {}
        for i in range(len(self)):
            a0, a1 = self.atom_start[i], self.atom_start[i + 1]
            if not np.isfinite(momenta[a0:a1]).all():
                continue
            atoms = ase.Atoms(numbers[a0:a1], positions[a0:a1], cell=cells[i], pbc=pbcs[i], momenta=momenta[a0:a1])
            found.setdefault(int(groups[i]), []).append(kinetic_temperature(atoms))
        if not found:
            return None
        every = np.concatenate([np.array(t) for t in found.values()])
        means = [float(np.mean(t)) for t in found.values()]
        return {
            "frames": int(len(every)),
            "mean": float(every.mean()),
            "min": float(every.min()),
            "max": float(every.max()),
            "group_means": {"min": min(means), "max": max(means), "groups": len(means)},
        }

    def has_stress(self) -> bool:
        """Whether any frame carries a stress label (periodic cells labelled by a teacher that gives stress)."""
        return bool(np.isfinite(self.group["stress"][:]).all(axis=(1, 2)).any())

    def summary(self) -> dict:
        numbers = self.group["numbers"][:]
        elements = sorted({ase.data.chemical_symbols[z] for z in np.unique(numbers)})
        rows = self.n_rows
        return {
            "path": self.path,
            "frames": len(self),
            "atoms_total": int(self.atom_start[-1]),
            "atoms_per_frame": {"min": int(self.n_atoms.min()), "max": int(self.n_atoms.max())},
            "elements": elements,
            "labels": ["energy", "forces"]
            + (["stress"] if not np.isnan(self.group["stress"][:]).all() else [])
            + (["hessian_rows"] if rows.sum() else []),
            "hessian_rows_per_frame": {
                "setting": self.attrs["hessian_rows"],
                "min": int(rows.min()),
                "max": int(rows.max()),
            },
            "full_hessian": bool(np.all(rows == 3 * self.n_atoms)),
            "kinetic_temperature_K": self.kinetic_temperatures(),
            "reference_labels": bool(np.isfinite(self.group["ref_energy"][:]).any()),
            "hessian_probes_per_frame": {"min": int(self.n_probes.min()), "max": int(self.n_probes.max())},
            "groups": {
                "count": int(len(np.unique(self.groups()))),
                "rule": self.attrs.get("group_rule") or f"blocks:{DEFAULT_GROUP_SIZE} (store predates group ids)",
            },
            "teacher": {"spec": self.attrs["teacher_spec"], "version": self.attrs["teacher_version"]},
            "seed": self.attrs["seed"],
            "shard": self.attrs["shard"],
            "node_features": "node_features" in self.group,
            "element_embeddings": "element_embeddings" in self.attrs,
            "units": self.attrs["units"],
            "input": self.attrs["input"],
            "created": self.attrs["created"],
            "ffdistill_version": self.attrs["ffdistill_version"],
        }


def _probe_fields(labels: dict, as_t) -> dict:
    if labels["probe_vectors"] is None:
        return {}
    n = len(labels["probe_vectors"])
    return {
        "probe_vectors": as_t(labels["probe_vectors"]),
        "probe_products": as_t(labels["probe_products"]),
        "probe_owner": torch.zeros(n, dtype=torch.long),
    }


def stores_equal(a: str, b: str) -> bool:
    """True when two stores hold identical arrays (used to check that resuming changes nothing)."""
    sa, sb = LabelStore(a), LabelStore(b)
    if sa.array_names() != sb.array_names():
        return False
    return all(
        np.array_equal(sa.group[n][:], sb.group[n][:], equal_nan=sa.group[n].dtype.kind == "f")
        for n in sa.array_names()
    )
