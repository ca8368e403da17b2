"""Teachers behind one interface, chosen by a spec string.

=====================  ============================================================
spec                   teacher
=====================  ============================================================
``sevenn``             SevenNet-0, bundled in the sevenn package (the default)
``sevenn:NAME|PATH``   another bundled SevenNet model, or a local checkpoint
``chgnet``             CHGNet (optional extra), Hessian rows by finite differences
``mace:PATH``          a MACE model file (optional extra ``mace``)
``ase:MODULE:FACTORY`` any ASE calculator, Hessian rows by finite differences
``morse``              a torch Morse pair potential (tests, tutorials)
=====================  ============================================================

Heavy packages are imported inside the factories, never at ``import ffdistill``.
"""

from __future__ import annotations

from ffdistill.errors import TeacherError
from ffdistill.teachers.base import Teacher, TeacherLabels

__all__ = ["Teacher", "TeacherLabels", "load_teacher"]


def load_teacher(spec: str, trust: bool = False) -> Teacher:
    """Build the teacher named by ``spec``; ``trust`` allows loading pickled model files."""
    kind, _, target = spec.partition(":")
    if kind == "sevenn":
        from ffdistill.teachers.sevenn import SevenNetTeacher

        return SevenNetTeacher(target or "7net-0", trust=trust)
    if kind == "mace":
        from ffdistill.teachers.mace import MACETeacher

        return MACETeacher.from_path(target, trust=trust)
    if kind == "ase":
        from ffdistill.teachers.ase_calc import ASETeacher

        return ASETeacher.from_spec(target)
    if kind == "chgnet":
        return _chgnet()
    if kind == "morse":
        from ffdistill.teachers.toy import morse_teacher

        return morse_teacher()
    raise TeacherError(f"unknown teacher spec {spec!r}: use sevenn, sevenn:NAME, chgnet, mace:PATH, ase:MODULE:FACTORY or morse")


def _chgnet() -> Teacher:
    try:
        import chgnet
        from chgnet.model.dynamics import CHGNetCalculator
    except ImportError as error:
        raise TeacherError(f"the chgnet teacher needs the chgnet package (pip install 'ffdistill[chgnet]'): {error}") from error
    from ffdistill.teachers.ase_calc import ASETeacher

    return ASETeacher(CHGNetCalculator(use_device="cpu"), spec="chgnet", version=f"chgnet {chgnet.__version__}")
