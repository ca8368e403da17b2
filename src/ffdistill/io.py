"""Reading structure files: streaming, validated, with one clear error per bad input."""

from __future__ import annotations

import hashlib
import os
from typing import Iterator

import ase
import ase.io

from ffdistill.errors import FFDistillError, InputError
from ffdistill.graph import check_structure


def iter_structures(path: str, start: int = 0) -> Iterator[ase.Atoms]:
    """Yield the structures of any ASE-readable file from index ``start`` on, one at a time."""
    if not os.path.isfile(path):
        raise InputError(f"cannot read {path}: no such file")
    if os.path.getsize(path) == 0:
        raise InputError(f"cannot read {path}: the file is empty")
    try:
        for atoms in ase.io.iread(path, index=f"{start}:"):
            yield atoms
    except InputError:
        raise
    except Exception as error:  # ASE's readers raise many types for malformed files
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"cannot read {path}: malformed file ({detail})") from error


def scan_structures(path: str, elements_check=None, info_key: str | None = None) -> tuple[int, set[int], int]:
    """Validate every structure of ``path`` before any work is spent; return how many there are, the
    atomic numbers they contain and how many carry ``info[info_key]``."""
    count, elements, keyed = 0, set(), 0
    for count, atoms in enumerate(iter_structures(path), start=1):
        elements.update(int(z) for z in atoms.numbers)
        keyed += info_key is not None and info_key in atoms.info
        try:
            check_structure(atoms)
            if elements_check is not None:
                elements_check(atoms.numbers)
        except FFDistillError as error:
            raise type(error)(f"{path}, structure {count - 1}: {error}") from error
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
