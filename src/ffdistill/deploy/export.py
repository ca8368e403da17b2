"""Export a student: TorchScript that runs without ffdistill, or an ML-IAP unified model for LAMMPS.

TorchScript: the file holds the energy function ``(Z, R, cell, edge_index, shifts) -> E`` for one
structure (traced, so it stays differentiable: forces are ``-dE/dR`` by autograd) and, as extra files,
the cutoff and elements. A direct-force student's forces come from its force head, not from -dE/dR
of its energy head, so its export returns ``(E, F)`` and says so (``"forces": "direct"``).
``standalone_calculator.py`` (copied beside the export) is an ASE calculator for either that imports
nothing from ffdistill.

ML-IAP: a pickled ``ffdistill.deploy.lammps.StudentMLIAP`` for ``pair_style mliap unified FILE 1``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings

import torch
from ase.build import bulk

from ffdistill.calculator import load_student
from ffdistill.errors import InputError
from ffdistill.graph import AtomicGraph, from_ase
from ffdistill.potential import Want

STANDALONE = os.path.join(os.path.dirname(__file__), "standalone_calculator.py")


class _EnergyOfOneStructure(torch.nn.Module):
    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, Z, R, cell, edge_index, shifts):
        return self.student.energy(self.graph(Z, R, cell, edge_index, shifts))[0]

    def graph(self, Z, R, cell, edge_index, shifts) -> AtomicGraph:
        n = Z.shape[0]
        return AtomicGraph(
            Z=Z,
            R=R,
            cell=cell[None],
            pbc=torch.ones(1, 3, dtype=torch.bool),
            edge_index=edge_index,
            shifts=shifts,
            batch=torch.zeros_like(Z),
            ptr=torch.stack([torch.zeros_like(Z[0]), torch.zeros_like(Z[0]) + n]),
            cutoff=self.student.cutoff,
        )


class _DirectForcesOfOneStructure(_EnergyOfOneStructure):
    """(E, F) with F from the force head: -dE/dR of the energy head is not what the student was trained to give."""

    def forward(self, Z, R, cell, edge_index, shifts):
        raw = self.student.compute(self.graph(Z, R, cell, edge_index, shifts), Want())
        return raw.energy[0], raw.forces


FORMATS = ("torchscript", "mliap")


def export_student(student_path: str, output: str, format: str = "torchscript") -> str:
    """Write the student at ``student_path`` to ``output`` in ``format`` (one of ``FORMATS``).

    Returns what the user needs next: the standalone calculator's path (TorchScript) or the LAMMPS
    lines to use the model (ML-IAP).
    """
    if format == "mliap":
        return export_mliap(student_path, output)
    if format != "torchscript":
        raise InputError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    student = load_student(student_path)
    for p in student.parameters():
        p.requires_grad_(False)
    example = _example_graph(student)
    wrapper = (_DirectForcesOfOneStructure if student.capabilities.direct else _EnergyOfOneStructure)(student).eval()
    inputs = (example.Z, example.R, example.cell[0], example.edge_index, example.shifts)
    with torch.jit.optimized_execution(False), warnings.catch_warnings():
        # one structure per call by construction: the structure count the tracer records as a constant is 1
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, inputs, check_trace=False)
    meta = {
        "cutoff": student.cutoff,
        "elements": student.elements,
        "format": "ffdistill-exported-energy",
        "dtype": "float32",
        "forces": "direct" if student.capabilities.direct else "autograd",
    }
    torch.jit.save(traced, output, _extra_files={"ffdistill.json": json.dumps(meta)})
    calculator = os.path.join(os.path.dirname(os.path.abspath(output)), "standalone_calculator.py")
    shutil.copyfile(STANDALONE, calculator)
    return calculator


def export_mliap(student_path: str, output: str, dtype=torch.float32) -> str:
    """Pickle the student as an ML-IAP unified model; returns the LAMMPS lines that load it.

    LAMMPS reads ``.pt``/``.pth`` files with ``torch.load`` (weights only, which refuses the model
    object), anything else with ``pickle.load``: so the file must not end in ``.pt``/``.pth``.
    """
    from ffdistill.deploy.lammps import mliap_model

    if output.endswith((".pt", ".pth")):
        raise InputError(f"{output}: LAMMPS would torch.load a .pt/.pth file; name the model e.g. student.mliap.pkl")
    model = mliap_model(load_student(student_path), dtype)
    tmp = f"{output}.tmp{os.getpid()}"
    with open(tmp, "wb") as handle:
        pickle.dump(model, handle)
    os.replace(tmp, output)
    elements = " ".join(model.element_types)
    ghost_cutoff = model.receptive_field + 2.0  # layers x cutoff, plus LAMMPS' default metal neighbour skin
    return f"comm_modify cutoff {ghost_cutoff:g}\npair_style mliap unified {output} 1\npair_coeff * * {elements}"


def _example_graph(student) -> AtomicGraph:
    """A small periodic structure of the student's first element to trace with."""
    import ase

    if not student.elements:
        raise InputError("the student has no elements")
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    atoms = ase.Atoms(
        numbers=[student.elements[k % len(student.elements)] for k in range(len(atoms))],
        positions=atoms.positions * 1.5,
        cell=atoms.cell * 1.5,
        pbc=True,
    )
    atoms.rattle(0.05, seed=0)
    return from_ase(atoms, student.cutoff)
