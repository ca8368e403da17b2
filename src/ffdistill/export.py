"""Export a student as TorchScript that runs without ffdistill: torch, numpy and ASE are enough.

The file holds the energy function ``(Z, R, cell, edge_index, shifts) -> E`` for one structure
(traced, so it stays differentiable: forces are ``-dE/dR`` by autograd) and, as extra files, the
cutoff and elements. ``standalone_calculator.py`` (copied beside the export) is an ASE calculator
for it that imports nothing from ffdistill.
"""

from __future__ import annotations

import json
import os
import shutil

import torch
from ase.build import bulk

from ffdistill.calculator import load_student
from ffdistill.errors import InputError
from ffdistill.graph import AtomicGraph, from_ase

STANDALONE = os.path.join(os.path.dirname(__file__), "standalone_calculator.py")


class _EnergyOfOneStructure(torch.nn.Module):
    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, Z, R, cell, edge_index, shifts):
        n = Z.shape[0]
        graph = AtomicGraph(
            Z=Z, R=R, cell=cell[None], pbc=torch.ones(1, 3, dtype=torch.bool), edge_index=edge_index, shifts=shifts,
            batch=torch.zeros_like(Z), ptr=torch.stack([torch.zeros_like(Z[0]), torch.zeros_like(Z[0]) + n]), cutoff=self.student.cutoff,
        )
        return self.student(graph)[0]


def export_student(student_path: str, output: str) -> str:
    """Trace the student at ``student_path`` to ``output``; returns the path of the standalone calculator."""
    student = load_student(student_path)
    for p in student.parameters():
        p.requires_grad_(False)
    example = _example_graph(student)
    wrapper = _EnergyOfOneStructure(student).eval()
    inputs = (example.Z, example.R, example.cell[0], example.edge_index, example.shifts)
    with torch.jit.optimized_execution(False):
        traced = torch.jit.trace(wrapper, inputs, check_trace=False)
    meta = {"cutoff": student.cutoff, "elements": student.elements, "format": "ffdistill-exported-energy", "dtype": "float32"}
    torch.jit.save(traced, output, _extra_files={"ffdistill.json": json.dumps(meta)})
    calculator = os.path.join(os.path.dirname(os.path.abspath(output)), "standalone_calculator.py")
    shutil.copyfile(STANDALONE, calculator)
    return calculator


def _example_graph(student) -> AtomicGraph:
    """A small periodic structure of the student's first element to trace with."""
    import ase

    if not student.elements:
        raise InputError("the student has no elements")
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    atoms = ase.Atoms(numbers=[student.elements[k % len(student.elements)] for k in range(len(atoms))], positions=atoms.positions * 1.5, cell=atoms.cell * 1.5, pbc=True)
    atoms.rattle(0.05, seed=0)
    return from_ase(atoms, student.cutoff)
