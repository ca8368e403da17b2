"""Teachers behind one interface, chosen by a spec string.

===========================  ======================================================================
spec                         teacher
===========================  ======================================================================
``sevenn``                   SevenNet-0 (11Jul2024), bundled in the sevenn package (the default)
``sevenn:7net-0``            the same model, by name
``sevenn:7net-0_22may2024``  the earlier SevenNet-0 release, bundled
``sevenn:7net-l3i5``         SevenNet-l3i5 (l_max 3, 5 layers), bundled
``sevenn:7net-mf-0@MODAL``   multi-fidelity SevenNet-MF-0, bundled; MODAL is ``PBE`` or ``R2SCAN``
                             (required, any case)
``sevenn:PATH[@MODAL]``      a local SevenNet checkpoint (needs ``trust``); ``@MODAL`` if multi-modal
``chgnet``                   CHGNet 0.3.0, weights in the chgnet package (extra ``chgnet``);
                             Hessian rows by central differences of its forces
``dxtb`` / ``dxtb:gfn1``     GFN1-xTB by dxtb (extra ``dxtb`` + requirements-dxtb.txt), molecules
                             only, float64; Hessian rows by autograd through the SCF
``dxtb:gfn2``                GFN2-xTB by dxtb, the same way (needs tad-libcint, in requirements-dxtb.txt)
``mace:PATH``                a MACE model file (optional extra ``mace``)
``ase:MODULE:FACTORY``       any ASE calculator, Hessian rows by central differences
``morse``                    a torch Morse pair potential (tests, tutorials)
===========================  ======================================================================

Heavy packages are imported inside the factories, never at ``import ffdistill``.
"""

from __future__ import annotations

import os

import torch

from ffdistill.errors import TeacherError
from ffdistill.teachers.base import Teacher, TeacherLabels

__all__ = ["Teacher", "TeacherLabels", "load_teacher"]


def load_teacher(
    spec: str,
    trust: bool = False,
    python: str | None = None,
    device: str | torch.device = "cpu",
    timeout: float | None = None,
) -> Teacher:
    """Build the teacher named by ``spec``; ``trust`` allows loading pickled model files. With ``python``
    (an interpreter of another environment) the teacher is loaded and run there, behind a worker.
    ``device`` (cpu, cuda, cuda:K, auto) is where it computes; ASE-calculator teachers stay on the CPU.
    ``timeout``: seconds a worker's labelling call may take (default ``worker.call_timeout``)."""
    from ffdistill.devices import resolve

    device = resolve(device, "device")
    if python is not None:
        from ffdistill.teachers.worker import WorkerTeacher

        return WorkerTeacher(python, spec, trust=trust, device=str(device), timeout=timeout)
    kind, _, target = spec.partition(":")
    if kind == "chgnet":
        return _chgnet(device)
    return _build(kind, target, spec, trust).to_device(device)


def _build(kind: str, target: str, spec: str, trust: bool) -> Teacher:
    if kind == "sevenn":
        from ffdistill.teachers.sevenn import SevenNetTeacher

        name, at, modal = target.rpartition("@")
        if not at or os.path.isfile(target):  # a checkpoint path may itself hold an @
            name, modal = target, ""
        return SevenNetTeacher(name or "7net-0", trust=trust, modal=modal or None)
    if kind == "mace":
        from ffdistill.teachers.mace import MACETeacher

        return MACETeacher.from_path(target, trust=trust)
    if kind == "ase":
        from ffdistill.teachers.ase_calc import ASETeacher

        return ASETeacher.from_spec(target)
    if kind == "dxtb":
        from ffdistill.teachers.dxtb import DXTBTeacher

        return DXTBTeacher(target or "gfn1")
    if kind == "morse":
        from ffdistill.teachers.toy import morse_teacher

        return morse_teacher()
    raise TeacherError(
        f"unknown teacher spec {spec!r}: use sevenn, sevenn:NAME[@MODAL], chgnet, dxtb[:gfn1|gfn2], mace:PATH, "
        "ase:MODULE:FACTORY or morse"
    )


def _chgnet(device: torch.device) -> Teacher:
    """CHGNet's own calculator on ``device``; ffdistill's side of it (numpy in, central differences) on the CPU."""
    try:
        import chgnet
        from chgnet.model.dynamics import CHGNetCalculator
    except ImportError as error:
        message = f"the chgnet teacher needs the chgnet package (pip install 'ffdistill[chgnet]'): {error}"
        raise TeacherError(message) from error
    from ffdistill.teachers.ase_calc import ASETeacher

    calc = CHGNetCalculator(use_device=str(device))  # CHGNet 0.3.0, its weights inside the chgnet wheel
    return ASETeacher(calc, spec="chgnet", version=f"chgnet {chgnet.__version__}, model {calc.version}")
