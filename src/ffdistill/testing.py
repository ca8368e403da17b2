"""A conformance kit for potentials: ``check_potential(potential, structures)``.

Run it on your own model before distilling from it or into it. Every check compares the potential with
something computed another way (finite differences, a rotated copy, a batch, ASE's ``Vibrations``, an
exported copy), never with itself, and which checks run follows the potential's declared ``Capabilities``:

====================  ===================================================================  ==========
check                 compares                                                              runs for
====================  ===================================================================  ==========
outputs               keys, shapes, dtypes and finiteness of every declared output          all
input-unchanged       the graph's tensors before and after ``predict``                      all
batched-equals-single a batch of all structures against each structure alone                all
forces-vs-energy      forces against central differences of the energy                      conservative
second-derivatives    Hessian rows and H·v against central differences of the forces        autograd
                      (direct models: columns of -dF/dR of the force head, no energy check)
hessian-vs-ase        the full Hessian against ASE ``Vibrations`` and its own transpose     finite-difference
stress-vs-strain      stress against central differences of the energy under strain         stress, periodic
invariance            energy invariant, forces equivariant under rotation and translation    all
calculator            the ASE calculator against ``predict``                                all
torchscript           the exported TorchScript student against the student                  students
====================  ===================================================================  ==========

Tolerances are named per dtype (``TOLERANCES``): finite differences in float32 are good to ~1e-3 eV/Å².
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import ase
import ase.io
import numpy as np
import torch
from torch import Tensor

from ffdistill.graph import AtomicGraph, batch_graphs, from_ase
from ffdistill.potential import Potential, Want


@dataclass(frozen=True)
class Tolerances:
    """Absolute tolerances, each plus ``relative`` × the largest magnitude of the value compared."""

    exact: float  #: outputs that should agree to rounding (batched vs single, invariances, calculator)
    forces: float  #: eV/Å, forces against central differences of the energy
    second: float  #: eV/Å², second derivatives against central differences of the forces
    stress: float  #: eV/Å³
    relative: float  #: relative part of every tolerance
    energy_step: float  #: Å, step of the energy differences
    force_step: float  #: Å, step of the force differences
    strain_step: float  #: strain step of the stress differences
    #: finite-difference Hessians: allowed difference from ASE's at another step, and asymmetry, as a
    #: fraction of the largest entry (truncation errors of two steps differ; rough models differ more)
    fd_hessian_relative: float = 1e-3


TOLERANCES = {
    torch.float64: Tolerances(
        exact=1e-8,
        forces=1e-6,
        second=1e-5,
        stress=1e-7,
        relative=1e-6,
        energy_step=1e-5,
        force_step=1e-5,
        strain_step=1e-5,
    ),
    torch.float32: Tolerances(
        exact=2e-4,
        forces=1e-2,
        second=2e-2,
        stress=5e-4,
        relative=2e-3,
        energy_step=1e-2,
        force_step=2e-3,
        strain_step=1e-3,
    ),
}


#: Step (Å) of the ASE ``Vibrations`` run that finite-difference Hessians are checked against.
ASE_VIBRATIONS_STEP = 2e-3


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str


@dataclass
class ConformanceReport:
    results: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list:
        return [r for r in self.results if not r.passed]

    def __str__(self) -> str:
        return "\n".join(f"{'ok  ' if r.passed else 'FAIL'} {r.name}: {r.detail}" for r in self.results)


class ConformanceError(AssertionError):
    """A potential failed one or more checks; the message names each."""


def check_potential(
    potential: Potential,
    structures: Sequence[ase.Atoms],
    *,
    dtype: torch.dtype | None = None,
    tolerances: Tolerances | None = None,
    checks: Sequence[str] | None = None,
    raise_on_failure: bool = True,
) -> ConformanceReport:
    """Run the checks that apply to ``potential`` on ``structures`` (small ones: finite differences cost
    2 evaluations per coordinate checked). Raises ``ConformanceError`` naming every failed check.

    ``dtype``: of the graphs given to the potential (default: its own). ``tolerances``: default those of
    that dtype; a model that computes in float32 behind a float64 interface (an ASE calculator such as
    CHGNet) is checked with ``tolerances=TOLERANCES[torch.float32]``."""
    dtype = dtype or dtype_of(potential)
    kit = _Kit(potential, list(structures), dtype, tolerances or TOLERANCES[dtype])
    report = ConformanceReport()
    for name, check, applies in kit.checks():
        if (checks is None or name in checks) and applies:
            try:
                passed, detail = check()
            except Exception as error:  # a check that crashes is a failed check, with its reason
                passed, detail = False, f"raised {type(error).__name__}: {str(error).splitlines()[0][:200]}"
            report.results.append(CheckResult(name, passed, detail))
    if raise_on_failure and not report.passed:
        lines = "; ".join(f"{r.name}: {r.detail}" for r in report.failed)
        raise ConformanceError(f"{type(potential).__name__} failed {len(report.failed)} check(s): {lines}")
    return report


def dtype_of(potential) -> torch.dtype:
    """The floating dtype a potential computes in: its parameters', or its declared ``dtype``."""
    if isinstance(potential, torch.nn.Module):
        for p in potential.parameters():
            return p.dtype
    return getattr(potential, "dtype", torch.float32)


def _device_of(potential) -> torch.device:
    from ffdistill.devices import device_of

    return device_of(potential)


def _max_error(got: Tensor, expected: Tensor) -> float:
    return float((got.detach().double().cpu() - expected.detach().double().cpu()).abs().max())


def _scale(x: Tensor) -> float:
    return float(x.detach().double().abs().max()) if x.numel() else 0.0


class _Kit:
    def __init__(self, potential, structures: list, dtype: torch.dtype, tol: Tolerances):
        self.p, self.structures, self.dtype, self.tol = potential, structures, dtype, tol
        self.caps = potential.capabilities
        self.device = _device_of(potential)

    def checks(self) -> list[tuple[str, Callable, bool]]:
        periodic = any(bool(np.all(a.pbc)) for a in self.structures)
        return [
            ("outputs", self.outputs, True),
            ("input-unchanged", self.input_unchanged, True),
            ("batched-equals-single", self.batched_equals_single, len(self.structures) > 1),
            ("forces-vs-energy", self.forces_vs_energy, not self.caps.direct),
            ("second-derivatives", self.second_derivatives, self.caps.autograd),
            ("hessian-vs-ase", self.hessian_vs_ase, not self.caps.autograd),
            ("stress-vs-strain", self.stress_vs_strain, self.caps.stress and periodic),
            ("invariance", self.invariance, True),
            ("calculator", self.calculator, True),
            ("torchscript", self.torchscript, _exportable(self.p)),
        ]

    def graph(self, atoms: ase.Atoms) -> AtomicGraph:
        return from_ase(atoms, self.p.cutoff, dtype=self.dtype, labels=False).to(self.device)

    def within(self, error: float, atol: float, scale: float) -> bool:
        return error <= atol + self.tol.relative * scale and math.isfinite(error)

    # -- the checks -------------------------------------------------------------------------------

    def outputs(self):
        atoms = self.structures[0]
        g = _with_items(self.graph(atoms), rows=[0, 3 * len(atoms) - 1], n_probes=1)
        periodic = bool(np.all(atoms.pbc))
        want = Want(
            stress=periodic and self.caps.stress, hessian_rows=True, probe_products=True, features=self.caps.features
        )
        out = self.p.predict(g, want)
        n = len(atoms)
        expected = {"energy": (1,), "forces": (n, 3), "hessian_rows": (2, n, 3), "probe_products": (1, n, 3)}
        if want.stress:
            expected["stress"] = (1, 3, 3)
        problems = []
        for name, shape in expected.items():
            value = getattr(out, name)
            if value is None:
                problems.append(f"{name} missing")
            elif tuple(value.shape) != shape or value.dtype != self.dtype or not torch.isfinite(value).all():
                problems.append(f"{name} {tuple(value.shape)} {value.dtype} (want {shape} {self.dtype}, finite)")
        if self.caps.features and (out.features is None or out.features.shape[0] != n):
            problems.append("features missing or not one row per atom")
        return not problems, "; ".join(problems) or f"{', '.join(expected)} as declared"

    def input_unchanged(self):
        atoms = self.structures[0]
        g = _with_items(self.graph(atoms), rows=[1], n_probes=1)
        before = [x.clone() if isinstance(x, Tensor) else x for x in g]
        self.p.predict(g, Want(hessian_rows=True, probe_products=True))
        changed = [
            name
            for name, a, b in zip(AtomicGraph._fields, before, g)
            if isinstance(a, Tensor) and (a.shape != b.shape or not torch.equal(a, b))
        ]
        return not changed, f"changed: {', '.join(changed)}" if changed else "graph tensors untouched"

    def batched_equals_single(self):
        graphs = [self.graph(a) for a in self.structures]
        batch = self.p.predict(batch_graphs(graphs))
        singles = [self.p.predict(g) for g in graphs]
        e = _max_error(batch.energy, torch.cat([s.energy for s in singles]))
        f = _max_error(batch.forces, torch.cat([s.forces for s in singles]))
        scale = max(_scale(batch.energy), 1.0)
        ok = self.within(e, self.tol.exact, scale) and self.within(f, self.tol.exact, _scale(batch.forces))
        return ok, f"max |ΔE| {e:.2e} eV, max |ΔF| {f:.2e} eV/Å"

    def forces_vs_energy(self):
        atoms, h = self.structures[0], self.tol.energy_step
        g = self.graph(atoms)
        forces = self.p.predict(g).forces
        expected = torch.zeros_like(forces, dtype=torch.float64)
        for k in range(forces.numel()):
            step = torch.zeros(forces.numel(), dtype=self.dtype, device=self.device)
            step[k] = h
            plus = self.p.predict(g._replace(R=g.R + step.view_as(g.R)), Want(forces=False)).energy.double().sum()
            minus = self.p.predict(g._replace(R=g.R - step.view_as(g.R)), Want(forces=False)).energy.double().sum()
            expected.view(-1)[k] = -(plus - minus) / (2 * h)
        error = _max_error(forces, expected)
        return self.within(
            error, self.tol.forces, _scale(expected)
        ), f"max |F - (-dE/dR)_fd| {error:.2e} eV/Å (h {h} Å)"

    def second_derivatives(self):
        atoms, h = self.structures[0], self.tol.force_step
        n = len(atoms)
        rows = sorted({0, (3 * n) // 2, 3 * n - 1})
        g = _with_items(self.graph(atoms), rows=rows, n_probes=2)
        out = self.p.predict(g, Want(hessian_rows=True, probe_products=True))
        vectors = [torch.eye(3 * n, dtype=self.dtype, device=self.device)[r].view(n, 3) for r in rows]
        vectors += list(g.probe_vectors)
        expected = torch.stack([self._force_difference(g, v, h) for v in vectors])
        got = torch.cat([out.hessian_rows, out.probe_products])
        error = _max_error(got, expected)
        what = "force-head Jacobian columns" if self.caps.direct else "Hessian rows and H·v"
        ok = self.within(error, self.tol.second, _scale(expected)) and _scale(expected) > 0
        return ok, f"{what}: max error {error:.2e} eV/Å² against central differences of the forces (h {h} Å)"

    def _force_difference(self, g: AtomicGraph, v: Tensor, h: float) -> Tensor:
        plus = self.p.predict(g._replace(R=g.R + h * v)).forces.double()
        minus = self.p.predict(g._replace(R=g.R - h * v)).forces.double()
        return -(plus - minus) / (2 * h)

    def hessian_vs_ase(self):
        from ase.vibrations import Vibrations

        from ffdistill import derivatives

        atoms = self.structures[0].copy()
        n = 3 * len(atoms)
        ours = derivatives.full_hessian(self.p, self.graph(atoms)).double().cpu()
        atoms.calc = self._calculator()
        with tempfile.TemporaryDirectory() as folder:
            # ASE's own central differences, at a step of its own: a second implementation, not ours again
            vib = Vibrations(atoms, name=os.path.join(folder, "vib"), delta=ASE_VIBRATIONS_STEP, nfree=2)
            vib.run()
            theirs = torch.as_tensor(vib.get_vibrations().get_hessian_2d()).reshape(n, n)
        error, asym = _max_error(ours, theirs), _max_error(ours, ours.T)
        allowed = self.tol.second + self.tol.fd_hessian_relative * _scale(theirs)
        ok = error <= allowed and asym <= allowed
        return ok, f"max |H - H_ase| {error:.2e}, max |H - H^T| {asym:.2e} eV/Å²"

    def stress_vs_strain(self):
        atoms = next(a for a in self.structures if bool(np.all(a.pbc)))
        h = self.tol.strain_step
        out = self.p.predict(self.graph(atoms), Want(stress=True))
        volume = abs(np.linalg.det(atoms.cell.array))
        expected = torch.zeros(3, 3, dtype=torch.float64)
        for i in range(3):
            for j in range(3):
                plus, minus = (self._strained_energy(atoms, i, j, s * h) for s in (1, -1))
                expected[i, j] = (plus - minus) / (2 * h) / volume
        error = _max_error(out.stress[0], expected)
        return self.within(error, self.tol.stress, _scale(expected)), f"max |σ - σ_fd| {error:.2e} eV/Å³"

    def _strained_energy(self, atoms: ase.Atoms, i: int, j: int, eps: float) -> float:
        strain = np.eye(3)
        strain[i, j] += eps / 2
        strain[j, i] += eps / 2
        strained = atoms.copy()
        strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        return float(self.p.predict(self.graph(strained), Want(forces=False)).energy.double().sum())

    def invariance(self):
        atoms = self.structures[0]
        rotation = _rotation(seed=0)
        moved = atoms.copy()
        moved.positions = atoms.positions @ rotation.T + np.array([0.31, -0.72, 1.13])
        if atoms.cell.rank:
            moved.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
        a, b = self.p.predict(self.graph(atoms)), self.p.predict(self.graph(moved))
        rotated = a.forces.double().cpu() @ torch.as_tensor(rotation).T
        e, f = _max_error(a.energy, b.energy), _max_error(rotated, b.forces)
        ok = self.within(e, self.tol.exact, max(_scale(a.energy), 1.0)) and self.within(
            f, self.tol.exact, _scale(a.forces)
        )
        return ok, f"max |ΔE| {e:.2e} eV, max |RF - F(R·)| {f:.2e} eV/Å"

    def _calculator(self):
        from ffdistill.calculator import PotentialCalculator

        return PotentialCalculator(self.p, dtype=self.dtype)

    def calculator(self):
        atoms = self.structures[0].copy()
        atoms.calc = self._calculator()
        out = self.p.predict(self.graph(atoms))
        e = abs(atoms.get_potential_energy() - float(out.energy.sum()))
        f = _max_error(torch.as_tensor(atoms.get_forces()), out.forces)
        ok = self.within(e, self.tol.exact, max(abs(float(out.energy.sum())), 1.0)) and self.within(
            f, self.tol.exact, _scale(out.forces)
        )
        return ok, f"|ΔE| {e:.2e} eV, max |ΔF| {f:.2e} eV/Å"

    def torchscript(self):
        from ffdistill.calculator import save_student
        from ffdistill.deploy.export import export_student

        atoms = next((a for a in self.structures if bool(np.all(a.pbc))), None)
        if atoms is None:
            return True, "skipped: the exported student takes periodic structures only"
        with tempfile.TemporaryDirectory() as folder:
            save_student(self.p, os.path.join(folder, "s.pt"))
            export_student(os.path.join(folder, "s.pt"), os.path.join(folder, "s.ts"))
            from ffdistill.deploy.standalone_calculator import ExportedStudent

            exported = atoms.copy()
            exported.calc = ExportedStudent(os.path.join(folder, "s.ts"))
            energy, forces = exported.get_potential_energy(), exported.get_forces()
        single = copy.deepcopy(self.p).float()  # the export is float32; compare like with like
        out = single.predict(from_ase(atoms, self.p.cutoff, labels=False).to(self.device))
        e, f = abs(energy - float(out.energy.sum())), _max_error(torch.as_tensor(forces), out.forces)
        ok = self.within(e, 1e-3, abs(energy)) and self.within(f, 1e-3, _scale(out.forces))
        return ok, f"|ΔE| {e:.2e} eV, max |ΔF| {f:.2e} eV/Å (float32 export)"


def _exportable(potential) -> bool:
    from ffdistill.students.base import EnergyStudent

    return isinstance(potential, EnergyStudent)


def _with_items(g: AtomicGraph, rows: Sequence[int], n_probes: int) -> AtomicGraph:
    """The graph with Hessian rows and random unit probes to compute (labels are not needed)."""
    from ffdistill.derivatives import random_probes

    vectors = torch.as_tensor(random_probes(g.n_atoms, n_probes, seed=0, frame=0), dtype=g.R.dtype, device=g.R.device)
    return g._replace(
        row_index=torch.as_tensor(rows, dtype=torch.long, device=g.R.device),
        probe_vectors=vectors,
        probe_owner=torch.zeros(n_probes, dtype=torch.long, device=g.R.device),
    )


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def load_check_target(target: str, structures: str | None, trust: bool = False, python: str | None = None):
    """(potential, structures) for ``ffdistill check``: a student file or a teacher spec, and the frames of
    ``structures`` (default: two rattled small cells of the potential's elements)."""
    from ffdistill.calculator import load_student
    from ffdistill.errors import InputError

    if os.path.isfile(target):
        potential = load_student(target).double()
        elements = potential.elements
    else:
        from ffdistill.teachers import load_teacher

        potential = load_teacher(target, trust=trust, python=python)
        elements = sorted(potential.elements or {14})
    if structures:
        try:
            frames = ase.io.read(structures, ":")
        except Exception as error:  # ASE raises many kinds for unreadable files; one line for the user
            raise InputError(
                f"cannot read {structures}: {str(error).splitlines()[0] if str(error) else error}"
            ) from error
        if not frames:
            raise InputError(f"{structures} holds no structures")
        return potential, frames[:2]
    return potential, _default_cells(elements)


def _default_cells(elements: Sequence[int]) -> list:
    """Two rattled periodic cells (8 and 16 atoms) cycling through ``elements`` on a diamond lattice."""
    from ase.build import bulk

    cells = []
    for k, reps in enumerate(((1, 1, 1), (2, 1, 1))):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(reps)
        atoms.numbers = [elements[i % len(elements)] for i in range(len(atoms))]
        atoms.rattle(0.03, seed=k)
        cells.append(atoms)
    return cells
