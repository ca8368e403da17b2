"""Phonon band structures and densities of states with phonopy.

phonopy builds the supercell and its symmetry-reduced displacements; each model (teacher or
student, through its ASE calculator) gives the forces; phonopy turns them into force constants,
frequencies along the standard band path (ASE's special points for the primitive cell, so no seekpath
is needed) and a DOS on a q-mesh. Every model gets the same cell, displacements and q-points, so
their bands can be compared point by point.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import ase
import numpy as np

from ffdistill.evaluate.observables import THZ_TO_CM1

#: Displacement amplitude (Å): phonopy's default for VASP-like units.
DISPLACEMENT = 0.01


def phonopy_model(unitcell: ase.Atoms, supercell: Sequence[int] = (2, 2, 2), distance: float = DISPLACEMENT):
    """A ``Phonopy`` object for ``unitcell`` with its displaced supercells generated."""
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    cell = PhonopyAtoms(
        symbols=unitcell.get_chemical_symbols(),
        cell=unitcell.cell.array,
        scaled_positions=unitcell.get_scaled_positions(),
        masses=unitcell.get_masses(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the note that "auto" differs from phonopy v3's default
        phonon = Phonopy(cell, supercell_matrix=np.diag(supercell), primitive_matrix="auto")
    phonon.generate_displacements(distance=distance)
    return phonon


def as_ase(cell) -> ase.Atoms:
    """A phonopy cell as periodic ``ase.Atoms``."""
    return ase.Atoms(
        symbols=cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, masses=cell.masses, pbc=True
    )


def supercell_forces(calc, phonon) -> list[np.ndarray]:
    """Forces (eV/Å) of every displaced supercell from one ASE calculator."""
    out = []
    for cell in phonon.supercells_with_displacements:
        atoms = as_ase(cell)
        atoms.calc = calc
        out.append(np.array(atoms.get_forces()))
    return out


def band_path(phonon, npoints: int = 100):
    """ASE's standard path through the primitive cell's special points."""
    return as_ase(phonon.primitive).cell.bandpath(npoints=npoints)


def phonons(
    calc,
    unitcell: ase.Atoms,
    supercell: Sequence[int] = (2, 2, 2),
    npoints: int = 100,
    mesh: int = 12,
    distance: float = DISPLACEMENT,
) -> dict:
    """Bands along the standard path, Γ frequencies and the total DOS (cm⁻¹) of ``calc`` on ``unitcell``."""
    phonon = phonopy_model(unitcell, supercell, distance)
    phonon.forces = supercell_forces(calc, phonon)
    phonon.produce_force_constants()
    path = band_path(phonon, npoints)
    x, special_x, labels = path.get_linear_kpoint_axis()
    return {
        "q_points": path.kpts,
        "distance": x,
        "special_distance": special_x,
        "labels": labels,
        "path": path.path,
        "frequencies_cm1": _frequencies(phonon, path.kpts),
        "gamma_cm1": _frequencies(phonon, np.zeros((1, 3)))[0],
        "displacements": len(phonon.supercells_with_displacements),
        "supercell_atoms": len(phonon.supercell),
        **_dos(phonon, mesh),
    }


def _frequencies(phonon, q_points: np.ndarray) -> np.ndarray:
    phonon.run_qpoints(q_points)
    return phonon.get_qpoints_dict()["frequencies"] * THZ_TO_CM1


def _dos(phonon, mesh: int) -> dict:
    phonon.run_mesh([mesh] * 3, is_gamma_center=True)  # keeps the full point-group symmetry
    phonon.run_total_dos()
    dos = phonon.get_total_dos_dict()
    return {"dos_frequency_cm1": dos["frequency_points"] * THZ_TO_CM1, "dos": dos["total_dos"] / THZ_TO_CM1}


def compare_bands(bands: dict, reference: dict) -> dict:
    """Frequency MAE (cm⁻¹) over the path (all bands, all q) and at Γ."""
    return {
        "phonon_band_mae_cm1": float(np.abs(bands["frequencies_cm1"] - reference["frequencies_cm1"]).mean()),
        "phonon_gamma_mae_cm1": float(np.abs(bands["gamma_cm1"] - reference["gamma_cm1"]).mean()),
        "phonon_min_cm1": float(bands["frequencies_cm1"].min()),
    }


def phonons_from_paths(
    model_paths: Sequence[str],
    structure: str,
    teacher_spec: str,
    output: str,
    supercell: Sequence[int] = (2, 2, 2),
    trust: bool = False,
    teacher_python: str | None = None,
    device="cpu",
) -> dict:
    """What ``ffdistill phonons`` does: bands and DOS of the teacher and each student (on ``device``) on one
    unit cell, their MAE against the teacher, ``phonons.json`` and ``phonons.png`` in ``output``."""
    import json
    import os

    from ffdistill.data.sampling import load_structure
    from ffdistill.evaluate.candidates import Candidate, student_candidates
    from ffdistill.plots import phonon_bands
    from ffdistill.teachers import load_teacher

    cell = load_structure(structure)
    teacher = load_teacher(teacher_spec, trust=trust, python=teacher_python, device=device)
    candidates = [Candidate.of_teacher(teacher), *student_candidates(model_paths, device=device)]
    bands = {c.name: phonons(c.calculator(), cell, supercell) for c in candidates}
    summary = {name: compare_bands(b, bands["teacher"]) for name, b in bands.items() if name != "teacher"}
    os.makedirs(output, exist_ok=True)
    phonon_bands(bands, os.path.join(output, "phonons.png"))
    with open(os.path.join(output, "phonons.json"), "w") as handle:
        json.dump(
            {
                "structure": structure,
                "supercell": list(supercell),
                "path": bands["teacher"]["path"],
                "students": summary,
                "bands_cm1": {n: b["frequencies_cm1"].tolist() for n, b in bands.items()},
            },
            handle,
            indent=2,
        )
    return summary
