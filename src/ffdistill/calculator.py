"""Students (and autograd teachers) as ordinary ASE calculators, and the student file format."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from ffdistill import __version__
from ffdistill.devices import device_of
from ffdistill.errors import InputError
from ffdistill.graph import from_ase
from ffdistill.potential import Potential, Want

STUDENT_FORMAT = "ffdistill-student"
COMMITTEE_FORMAT = "ffdistill-committee"


class PotentialCalculator(Calculator):
    """Any ``Potential`` (student or teacher) as an ASE calculator, through ``predict``.

    numpy in eV, eV/Å and eV/Å³ (Voigt order) at this boundary only; a committee adds ``force_deviation``
    (per atom, eV/Å) and ``energy_std`` (eV) to ``results`` (``students/committee.py``). Stress is computed when the
    cell is periodic in all three directions and the potential declares stress (direct-force
    students do not: their force head is not a derivative of any energy).
    """

    def __init__(self, potential: Potential, dtype=torch.float32, **kwargs):
        super().__init__(**kwargs)
        self.potential, self.dtype = potential, dtype
        stress = ["stress"] if potential.capabilities.stress else []
        self.implemented_properties = ["energy", "free_energy", "forces", *stress]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.potential.check_elements(self.atoms.numbers)
        graph = from_ase(self.atoms, self.potential.cutoff, dtype=self.dtype, labels=False)
        stress = "stress" in properties and "stress" in self.implemented_properties and bool(np.all(self.atoms.pbc))
        graph, want = graph.to(device_of(self.potential)), Want(stress=stress)
        if hasattr(self.potential, "predict_with_uncertainty"):  # a committee: its spread goes in results too
            out, extra = self.potential.predict_with_uncertainty(graph, want)
            self.results = _results(out, stress)
            self.results["force_deviation"] = extra["force_deviation"].double().cpu().numpy()
            self.results["energy_std"] = float(extra["energy_std"].sum())
        else:
            self.results = _results(self.potential.predict(graph, want), stress)


def _results(out, stress: bool) -> dict:
    """The potential's outputs copied to the host as ASE wants them: the calculator's I/O boundary."""
    energy = float(out.energy.sum())
    results = {"energy": energy, "free_energy": energy, "forces": out.forces.double().cpu().numpy()}
    if stress:
        results["stress"] = full_3x3_to_voigt_6_stress(out.stress[0].double().cpu().numpy())
    return results


#: The name older code uses.
EnergyModelCalculator = PotentialCalculator


def save_student(model, path: str, **metadata) -> None:
    """Write a student (or a committee of students) as plain data (loads with ``torch.load(weights_only=True)``),
    atomically."""
    if getattr(model, "arch", None) == "committee":
        payload = {
            "format": COMMITTEE_FORMAT,
            "ffdistill_version": __version__,
            "members": [_student_payload(m, {}) for m in model.members],
            "scale": float(model.scale),
            "metadata": metadata,
        }
    else:
        payload = _student_payload(model, metadata)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _student_payload(model, metadata: dict) -> dict:
    return {
        "format": STUDENT_FORMAT,
        "ffdistill_version": __version__,
        "arch": model.arch,
        "constructor": model.constructor_args(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": metadata,
    }


def _student_from_payload(payload: dict):
    from ffdistill.students import ARCHITECTURES

    model = ARCHITECTURES[payload["arch"]](**payload["constructor"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def load_student(path: str):
    """The student (or committee) saved at ``path``; refuses anything that is not plain student data."""
    if not os.path.isfile(path):
        raise InputError(f"no student file at {path}")
    if not zipfile.is_zipfile(path):  # every torch.save since PyTorch 1.6 writes a zip archive
        raise InputError(f"{path} is not an ffdistill student file: it is not a PyTorch archive (a best.pt is)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(
            f"{path} is not an ffdistill student file: it holds more than plain data ({type(error).__name__}); "
            "students are written by ffdistill train"
        ) from error
    if isinstance(payload, dict) and payload.get("format") == COMMITTEE_FORMAT:
        from ffdistill.students.committee import Committee

        members = [_student_from_payload(member) for member in payload["members"]]
        return Committee(members, payload["scale"]).eval()
    if not isinstance(payload, dict) or payload.get("format") != STUDENT_FORMAT:
        raise InputError(f"{path} is not an ffdistill student file")
    return _student_from_payload(payload)


def describe_file(path: str) -> str:
    """One line saying what a student file (or a TorchScript export) is and what it needs to run."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            extra = [n for n in archive.namelist() if n.endswith("extra/ffdistill.json")]
            if extra:
                meta = json.loads(archive.read(extra[0]))
                return (
                    f"{path}: a TorchScript export of an ffdistill student (a program: load only files you trust), "
                    f"elements {meta['elements']}, cutoff {meta['cutoff']:g} Å, forces by {meta['forces']}; runs "
                    "with torch, numpy and ASE through standalone_calculator.py, without ffdistill"
                )
    student = load_student(path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = payload.get("metadata", {})
    val = meta.get("val", {}).get("force_mae_meV_per_A")
    trained = f", saved at step {meta['step']} (validation force MAE {val:.1f} meV/Å)" if "step" in meta and val else ""
    if getattr(student, "arch", None) == "committee":
        return (
            f"{path}: an ffdistill committee of {len(student.members)} {student.members[0].arch} students (plain data, "
            f"loads with torch.load(weights_only=True)), calibration scale {float(student.scale):.3g}, elements "
            f"{student.elements}, cutoff {student.cutoff:g} Å; mean forces and a per-atom force deviation; needs "
            f"ffdistill {payload.get('ffdistill_version', '?')} or later"
        )
    return (
        f"{path}: an ffdistill student (plain data, loads with torch.load(weights_only=True)), {student.arch}, "
        f"{student.n_parameters()} parameters, elements {student.elements}, cutoff {student.cutoff:g} Å{trained}; "
        f"needs ffdistill {payload.get('ffdistill_version', '?')} or later"
    )


def load_calculator(
    path: str, device: str | torch.device = "cpu", compile: bool = False, **kwargs
) -> PotentialCalculator:
    """An ASE calculator for the student saved at ``path``, computing on ``device`` (cpu, cuda, cuda:K, auto);
    ``compile``: through ``torch.compile`` (``compiled``)."""
    from ffdistill.devices import resolve

    model = load_student(path).to(resolve(device, "device"))
    for p in model.parameters():
        p.requires_grad_(False)
    return PotentialCalculator(compiled(model) if compile else model, **kwargs)


def compiled(model):
    """``model`` (a student or a committee) with its message passing compiled by ``torch.compile`` for
    inference: fused kernels instead of per-edge tensors written to memory and read back (painn-small on 4,096 Si
    atoms: 2.6x fewer CPU µs per atom-step, 23 % less peak memory; docs: Performance). The first call
    compiles (20-30 s on a CPU; needs a C++ compiler there); later structures of any size reuse it (dynamic
    shapes). Results equal the uncompiled ones to float32 round-off. Not for training, whose Hessian-row VJPs
    differentiate twice."""
    for member in getattr(model, "members", [model]):
        # the message passing, where the per-edge tensors are; the read-out's sum per structure stays eager
        name = "scalar_and_vector_features" if hasattr(member, "scalar_and_vector_features") else "node_features"
        setattr(member, name, torch.compile(getattr(member, name), dynamic=True))
    return model
