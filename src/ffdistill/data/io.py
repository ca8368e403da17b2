"""Reading structure files: streaming, validated, with one clear error per bad input."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator

import ase
import ase.io
import ase.io.formats

from ffdistill.errors import FFDistillError, InputError
from ffdistill.graph import check_structure


def iter_structures(path: str, start: int = 0) -> Iterator[ase.Atoms]:
    """Yield the structures of any ASE-readable file from index ``start`` on, one at a time.

    Extended XYZ is cut into frames here: ASE's own reader first indexes every frame of the file (about 100
    bytes a frame held to the end, and a pass over the whole file before the first frame)."""
    if not os.path.isfile(path):
        raise InputError(f"cannot read {path}: no such file")
    if os.path.getsize(path) == 0:
        raise InputError(f"cannot read {path}: the file is empty")
    try:
        extxyz = ase.io.formats.filetype(path) == "extxyz"
        yield from (_iter_extxyz(path, start) if extxyz else ase.io.iread(path, index=f"{start}:"))
    except InputError:
        raise
    except ase.io.formats.UnknownFileTypeError as error:
        raise InputError(
            f"cannot read {path}: ASE does not recognise its format ({error}); give a structure file ASE reads "
            "(extxyz, xyz, cif, POSCAR, traj, ...)"
        ) from error
    except KeyError as error:  # ASE's text readers look chemical symbols up in a table
        raise InputError(f"cannot read {path}: unknown element symbol {error.args[0]!r}") from error
    except Exception as error:  # ASE's readers raise many types for malformed files
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"cannot read {path}: malformed file ({detail})") from error


def _iter_extxyz(path: str, start: int) -> Iterator[ase.Atoms]:
    """Extended XYZ frames in order, each one's lines (count, comment, atoms, any VEC lines) parsed alone by
    ASE's reader; frames before ``start`` are skipped unparsed. A blank line ends the file, as for ASE."""
    compressed = not path.endswith((".xyz", ".extxyz"))  # a compressed file holds more than its size in bytes
    size = os.path.getsize(path)
    with ase.io.formats.open_with_compression(path, "r") as handle:  # .gz, .bz2, .xz as ASE reads them
        index, line = 0, handle.readline()
        while line.strip():
            count = _atom_count(line, path, index)
            if not compressed and count * MIN_ATOM_LINE_BYTES > size:
                raise InputError(
                    f"cannot read {path}: frame {index} says it has {count} atoms, more than a file of {size} bytes "
                    f"can hold (each atom's line takes at least {MIN_ATOM_LINE_BYTES} bytes)"
                )
            lines = [line, handle.readline()] + [handle.readline() for _ in range(count)]
            line = handle.readline()
            while line.lstrip().startswith("VEC"):
                lines.append(line)
                line = handle.readline()
            if index >= start:
                yield ase.io.read(io.StringIO("".join(lines)), format="extxyz")
            index += 1


#: "X 0 0 0\n": the fewest bytes an atom's line of an XYZ file can take
MIN_ATOM_LINE_BYTES = 8


def _atom_count(line: str, path: str, index: int) -> int:
    try:
        count = int(line)
    except ValueError:
        raise InputError(
            f"cannot read {path}: frame {index} starts with {line.strip()[:40]!r}, not an atom count"
        ) from None
    if count < 1:
        raise InputError(f"cannot read {path}: frame {index} says it has {count} atoms")
    return count


def checked_structures(path: str, elements_check=None) -> Iterator[ase.Atoms]:
    """``iter_structures`` with every structure checked (``check_structure``, and ``elements_check`` on its
    atomic numbers): a refusal names the file and the frame."""
    for index, atoms in enumerate(iter_structures(path)):
        try:
            check_structure(atoms)
            if elements_check is not None:
                elements_check(atoms.numbers)
        except FFDistillError as error:
            raise type(error)(f"{path}, structure {index}: {error}") from error
        yield atoms


def scan_structures(path: str, elements_check=None, info_key: str | None = None) -> tuple[int, set[int], int]:
    """Validate every structure of ``path`` before any work is spent; return how many there are, the
    atomic numbers they contain and how many carry ``info[info_key]``."""
    count, elements, keyed = 0, set(), 0
    for atoms in checked_structures(path, elements_check):
        count += 1
        elements.update(int(z) for z in atoms.numbers)
        keyed += info_key is not None and info_key in atoms.info
    if count == 0:
        raise InputError(f"cannot read {path}: it holds no structures")
    return count, elements, keyed


def file_sha256(path: str) -> str:
    """Fingerprint of an input file, so a store is never resumed from different input."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
