"""``ffdistill evaluate``: the questions a careful user asks before a long simulation, answered for
each model (teacher included) on the same held-out frames, with numbers, plots and a verdict."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import ase
import numpy as np
import torch

from ffdistill import derivatives
from ffdistill.calculator import EnergyModelCalculator
from ffdistill.evaluate import accuracy, seconds_per_force_call
from ffdistill.graph import AtomicGraph, from_ase, to_ase
from ffdistill.simulate import frequencies_cm1, md_stability, md_throughput, nve_energy_drift, relax, rmsd


@dataclass
class Candidate:
    """A model under evaluation: a student (energy function) or a teacher (any ``Teacher``)."""

    name: str
    energy_fn: Optional[Callable[[AtomicGraph], torch.Tensor]]
    cutoff: float
    dtype: torch.dtype = torch.float32
    teacher: Optional[object] = None

    @classmethod
    def of_teacher(cls, teacher) -> "Candidate":
        energy_fn = teacher.energy if teacher.has_autograd else None
        return cls("teacher", energy_fn, teacher.cutoff, teacher.dtype, teacher=teacher)

    @property
    def is_teacher(self) -> bool:
        return self.teacher is not None

    def calculator(self):
        if self.teacher is not None:
            return self.teacher.as_calculator()
        return EnergyModelCalculator(self.energy_fn, self.cutoff, dtype=self.dtype)

    def graph(self, atoms: ase.Atoms) -> AtomicGraph:
        return from_ase(atoms, self.cutoff, dtype=self.dtype, labels=False)

    def hessian(self, atoms: ase.Atoms) -> np.ndarray:
        """Full (3N, 3N) Hessian: autograd rows, or the teacher's own (finite-difference) rows."""
        if self.energy_fn is None:
            rows = self.teacher.label(atoms, rows=range(3 * len(atoms))).hessian_rows
            return rows.reshape(3 * len(atoms), 3 * len(atoms))
        return derivatives.full_hessian(self.energy_fn, self.graph(atoms), vectorize=False).detach().double().numpy()

    def seconds_per_force_call(self, atoms: ase.Atoms, repeats: int, warmup: int = 1) -> float:
        if self.energy_fn is not None:
            return seconds_per_force_call(self.energy_fn, self.graph(atoms), repeats=repeats, warmup=warmup)
        calc, probe = self.calculator(), atoms.copy()
        times = []
        for k in range(repeats + 1):
            probe.positions[0, 0] += 1e-4  # a new structure each call, so nothing is cached
            start = time.perf_counter()
            calc.get_forces(probe)
            times.append(time.perf_counter() - start)
        return float(np.median(times[1:]))


@dataclass
class EvalPlan:
    md_runs: int = 3  #: NVT stability runs per model, from different held-out frames
    md_steps: int = 500  #: steps per stability run (1 fs)
    nve_steps: int = 300  #: velocity Verlet steps for the drift
    teacher_md_steps: Optional[int] = None  #: shorter runs for an expensive teacher (None: same)
    temperature: float = 300.0
    vib_structure: Optional[ase.Atoms] = None  #: equilibrium structure for frequencies (default: the teacher-relaxed first test frame)


def evaluate_models(candidates: Sequence[Candidate], test: Sequence[AtomicGraph], plan: EvalPlan, teacher_is_reference: bool = True) -> dict:
    """Accuracy, stability, drift, relaxation, frequencies and speed for every candidate."""
    teacher = next(c for c in candidates if c.is_teacher)
    starts = [to_ase(g)[0] for g in test]
    teacher_relaxed = relax(teacher.calculator(), starts[0])
    vib = plan.vib_structure if plan.vib_structure is not None else teacher_relaxed["atoms"]
    teacher_freqs = _frequencies(teacher, vib)
    t_teacher = teacher.seconds_per_force_call(starts[0], repeats=3)
    out = {}
    for c in candidates:
        expensive = c.is_teacher and plan.teacher_md_steps is not None
        steps = plan.teacher_md_steps if expensive else plan.md_steps
        runs = 1 if expensive else plan.md_runs
        m = _accuracy(c, test, teacher_is_reference)
        m.update(_stability(c, starts, runs, steps, plan.temperature))
        nve = nve_energy_drift(c.calculator(), starts[0], plan.teacher_md_steps if expensive else plan.nve_steps, plan.temperature)
        m["nve_drift_meV_per_atom_per_ps"] = nve["drift_meV_per_atom_per_ps"]
        m["nve_fluctuation_meV_per_atom"] = nve["fluctuation_meV_per_atom"]
        m["_nve_trace"] = (nve["time_ps"], nve["energy_meV_per_atom"])
        m.update(_relaxation(c, starts[0], teacher_relaxed))
        freqs = _frequencies(c, vib) if not c.is_teacher else teacher_freqs
        m["frequency_mae_cm1"] = float(np.abs(freqs[3:] - teacher_freqs[3:]).mean())
        m["_frequencies_cm1"] = freqs.tolist()
        m.update(_speed(c, starts[0], t_teacher, md_steps=3 if c.is_teacher else 20))
        out[c.name] = m
    return out


def _accuracy(c: Candidate, test: Sequence[AtomicGraph], teacher_is_reference: bool) -> dict:
    if c.is_teacher and teacher_is_reference:
        return {"energy_mae_meV_per_atom": 0.0, "force_mae_meV_per_A": 0.0, "force_cosine": 1.0, "hessian_row_mae": 0.0}
    if c.energy_fn is None:
        return _teacher_accuracy(c.teacher, test)
    # Rebuild each graph at this model's radius; labels stay as they are.
    graphs = [c.graph(to_ase(g)[0])._replace(**_labels(g, c.dtype)) for g in test]
    return accuracy(c.energy_fn, graphs, hessian=not c.is_teacher)


def _teacher_accuracy(teacher, test: Sequence[AtomicGraph]) -> dict:
    """A force-only teacher against reference labels (energies and forces)."""
    e_err, f_err = [], []
    for g in test:
        labels = teacher.label(to_ase(g)[0])
        e_err.append(abs(labels.energy - float(g.energy)) / g.n_atoms)
        f_err.append(np.abs(labels.forces - g.forces.double().numpy()).mean())
    return {"energy_mae_meV_per_atom": 1000 * float(np.mean(e_err)), "force_mae_meV_per_A": 1000 * float(np.mean(f_err)), "force_cosine": float("nan"), "hessian_row_mae": float("nan")}


def _labels(g: AtomicGraph, dtype: torch.dtype) -> dict:
    cast = lambda x: None if x is None else x.to(dtype) if x.is_floating_point() else x  # noqa: E731
    return {k: cast(getattr(g, k)) for k in ("energy", "forces", "stress", "hessian_rows", "row_index")}


def _stability(c: Candidate, starts, runs: int, steps: int, temperature: float) -> dict:
    results = [md_stability(c.calculator(), starts[k % len(starts)], steps, temperature, seed=k) for k in range(runs)]
    return {
        "md_runs": runs,
        "md_steps": steps,
        "md_stable_fraction": float(np.mean([r["stable"] for r in results])),
        # Stable runs count at their full length, so this is a lower bound when runs survive.
        "mean_time_to_instability_ps": float(np.mean([r["time_ps"] for r in results])),
        "md_failures": [r["reason"] for r in results if not r["stable"]],
    }


def _relaxation(c: Candidate, start: ase.Atoms, teacher_relaxed: dict) -> dict:
    mine = teacher_relaxed if c.is_teacher else relax(c.calculator(), start)
    return {
        "relaxed_rmsd_A": rmsd(teacher_relaxed["atoms"], mine["atoms"]),
        "relaxed_energy_diff_meV_per_atom": 1000 * (mine["energy_eV"] - teacher_relaxed["energy_eV"]) / len(start),
        "relax_steps": mine["steps"],
        "relax_converged": mine["converged"],
    }


def _frequencies(c: Candidate, atoms: ase.Atoms) -> np.ndarray:
    return frequencies_cm1(c.hessian(atoms), atoms.get_masses())


def _speed(c: Candidate, atoms: ase.Atoms, t_teacher: float, md_steps: int) -> dict:
    t = t_teacher if c.is_teacher else c.seconds_per_force_call(atoms, repeats=10)
    t_big = c.seconds_per_force_call(atoms * (2, 2, 2), repeats=1 if c.is_teacher else 3, warmup=0 if c.is_teacher else 1)
    return {
        "seconds_per_force_call": t,
        "speedup_vs_teacher": t_teacher / t,
        "seconds_per_force_call_2x2x2": t_big,
        "cost_growth_2x2x2": t_big / t,
        **md_throughput(c.calculator(), atoms, steps=md_steps),
    }


def public(metrics: dict) -> dict:
    """Metrics without the private traces used for plots."""
    return {name: {k: v for k, v in m.items() if not k.startswith("_")} for name, m in metrics.items()}


def markdown_tables(models: dict) -> str:
    acc = ["| model | energy MAE (meV/atom) | force MAE (meV/Å) | force cos | Hessian-row MAE (eV/Å²) | ms / force call | speed-up |", "|---|---|---|---|---|---|---|"]
    phys = ["| model | MD stable | mean time to instability (ps) | NVE drift (meV/atom/ps) | relaxed RMSD (Å) | ΔE relaxed (meV/atom) | frequency MAE (cm⁻¹) | MD steps/s |", "|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        acc.append(f"| {name} | {m['energy_mae_meV_per_atom']:.2f} | {m['force_mae_meV_per_A']:.1f} | {m['force_cosine']:.3f} | {m['hessian_row_mae']:.3f} | {1000 * m['seconds_per_force_call']:.1f} | {m['speedup_vs_teacher']:.1f}× |")
        phys.append(f"| {name} | {m['md_stable_fraction'] * m['md_runs']:.0f}/{m['md_runs']} | {m['mean_time_to_instability_ps']:.2f} | {m['nve_drift_meV_per_atom_per_ps']:.2f} | {m['relaxed_rmsd_A']:.3f} | {m['relaxed_energy_diff_meV_per_atom']:.2f} | {m['frequency_mae_cm1']:.1f} | {m['md_steps_per_second']:.1f} |")
    return "\n".join(acc) + "\n\n" + "\n".join(phys)


def verdict(models: dict) -> str:
    lines = []
    for name, m in models.items():
        if name == "teacher":
            continue
        ok = m["md_stable_fraction"] == 1.0 and abs(m["nve_drift_meV_per_atom_per_ps"]) < 1.0
        lines.append(f"- **{name}**: {'fit for MD here' if ok else 'NOT fit for long MD yet'} — {m['md_stable_fraction'] * 100:.0f}% of NVT runs stable, NVE drift {m['nve_drift_meV_per_atom_per_ps']:.2f} meV/atom/ps, {m['speedup_vs_teacher']:.0f}× faster than the teacher.")
    return "\n".join(lines)


def test_graphs(data: str, teacher, trust: bool = False) -> tuple[list[AtomicGraph], bool]:
    """Held-out graphs from a label store (all its frames), or from a structure file labelled by the
    teacher (energies and forces only). Also says whether the teacher is the reference."""
    from ffdistill.io import iter_structures
    from ffdistill.labels import LabelStore

    if os.path.isdir(data):
        store = LabelStore(data)
        return [store.graph(i, teacher.cutoff) for i in range(len(store))], not store.summary()["reference_labels"]
    graphs = []
    for atoms in iter_structures(data):
        labels = teacher.label(atoms)
        cast = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
        graphs.append(from_ase(atoms, teacher.cutoff)._replace(energy=cast([labels.energy]), forces=cast(labels.forces)))
    return graphs, True


def write_report(output: str, models: dict, extra: dict, title: str = "ffdistill evaluation") -> None:
    """report.md, metrics.json and the plots in ``output``."""
    from ffdistill.plots import nve_traces, spectra

    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "metrics.json"), "w") as handle:
        json.dump({"models": public(models), **extra}, handle, indent=2)
    nve_traces({n: m["_nve_trace"] for n, m in models.items()}, os.path.join(output, "nve_energy.png"))
    spectra({n: np.asarray(m["_frequencies_cm1"]) for n, m in models.items()}, os.path.join(output, "frequencies.png"))
    with open(os.path.join(output, "report.md"), "w") as handle:
        handle.write(f"# {title}\n\n{markdown_tables(models)}\n\n## Verdict\n\n{verdict(models)}\n\n")
        handle.write("Plots: `force_parity.png`, `learning_curves.png`, `nve_energy.png`, `frequencies.png`.\n")


def evaluate_from_paths(
    model_paths: Sequence[str], data: str, teacher_spec: str, output: str, md_steps: int = 1000, md_runs: int = 3,
    teacher_md_steps: Optional[int] = None, trust: bool = False,
) -> dict:
    """What ``ffdistill evaluate`` does: load everything, evaluate, write the report."""
    from ffdistill.calculator import load_student
    from ffdistill.teachers import load_teacher

    teacher = load_teacher(teacher_spec, trust=trust)
    test, teacher_is_reference = test_graphs(data, teacher)
    candidates = [Candidate.of_teacher(teacher)]
    for path in model_paths:
        student = load_student(path)
        for p in student.parameters():
            p.requires_grad_(False)
        candidates.append(Candidate(_model_name(path, candidates), student, student.cutoff))
    plan = EvalPlan(md_runs=md_runs, md_steps=md_steps, nve_steps=md_steps, teacher_md_steps=teacher_md_steps)
    models = evaluate_models(candidates, test, plan, teacher_is_reference=teacher_is_reference)
    write_report(output, models, {"data": data, "teacher": f"{teacher.spec} ({teacher.version})", "test_frames": len(test)})
    return models


def _model_name(path: str, taken: Sequence[Candidate]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name = os.path.basename(os.path.dirname(os.path.abspath(path))) if stem == "best" else stem
    names = {c.name for c in taken}
    return name if name not in names else f"{name}_{len(names)}"
