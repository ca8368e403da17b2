"""``ffdistill evaluate``: the questions a careful user asks before a long simulation, answered for
each model (teacher included) on the same held-out frames, with numbers, plots and a verdict."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import ase
import numpy as np
import torch
from ase.build import bulk

from ffdistill import derivatives
from ffdistill.calculator import EnergyModelCalculator
from ffdistill.evaluate import accuracy, seconds_per_force_call
from ffdistill.graph import AtomicGraph, from_ase, to_ase
from ffdistill.simulate import frequencies_cm1, md_stability, md_throughput, nve_energy_drift, relax, rmsd


@dataclass
class Candidate:
    """A model under evaluation: an energy function, its graph radius and dtype."""

    name: str
    energy_fn: Callable[[AtomicGraph], torch.Tensor]
    cutoff: float
    dtype: torch.dtype = torch.float32
    is_teacher: bool = False

    def calculator(self):
        return EnergyModelCalculator(self.energy_fn, self.cutoff, dtype=self.dtype)

    def graph(self, atoms: ase.Atoms) -> AtomicGraph:
        return from_ase(atoms, self.cutoff, dtype=self.dtype, labels=False)


@dataclass
class EvalPlan:
    md_runs: int = 3  #: NVT stability runs per model, from different held-out frames
    md_steps: int = 500  #: steps per stability run (1 fs)
    nve_steps: int = 300  #: velocity Verlet steps for the drift
    teacher_md_steps: Optional[int] = None  #: shorter runs for an expensive teacher (None: same)
    temperature: float = 300.0
    vib_structure: Optional[ase.Atoms] = None  #: relaxed structure for frequencies (default: 8-atom Si)


def evaluate_models(candidates: Sequence[Candidate], test: Sequence[AtomicGraph], plan: EvalPlan, teacher_is_reference: bool = True) -> dict:
    """Accuracy, stability, drift, relaxation, frequencies and speed for every candidate."""
    teacher = next(c for c in candidates if c.is_teacher)
    starts = [to_ase(g)[0] for g in test]
    teacher_relaxed = relax(teacher.calculator(), starts[0])
    teacher_freqs = _frequencies(teacher, plan)
    t_teacher = seconds_per_force_call(teacher.energy_fn, teacher.graph(starts[0]), repeats=3)
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
        freqs = _frequencies(c, plan) if not c.is_teacher else teacher_freqs
        m["frequency_mae_cm1"] = float(np.abs(freqs[3:] - teacher_freqs[3:]).mean())
        m["_frequencies_cm1"] = freqs.tolist()
        m.update(_speed(c, starts[0], t_teacher, md_steps=3 if c.is_teacher else 20))
        out[c.name] = m
    return out


def _accuracy(c: Candidate, test: Sequence[AtomicGraph], teacher_is_reference: bool) -> dict:
    if c.is_teacher and teacher_is_reference:
        return {"energy_mae_meV_per_atom": 0.0, "force_mae_meV_per_A": 0.0, "force_cosine": 1.0, "hessian_row_mae": 0.0}
    graphs = [g.to("cpu", dtype=c.dtype) for g in test]
    return accuracy(c.energy_fn, graphs, hessian=not c.is_teacher)


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


def _frequencies(c: Candidate, plan: EvalPlan) -> np.ndarray:
    atoms = plan.vib_structure if plan.vib_structure is not None else bulk("Si", "diamond", a=5.43, cubic=True)
    graph = c.graph(atoms)
    H = derivatives.full_hessian(c.energy_fn, graph, vectorize=False).detach().double().numpy()
    return frequencies_cm1(H, atoms.get_masses())


def _speed(c: Candidate, atoms: ase.Atoms, t_teacher: float, md_steps: int) -> dict:
    t = t_teacher if c.is_teacher else seconds_per_force_call(c.energy_fn, c.graph(atoms), repeats=10)
    big = atoms * (2, 2, 2)
    t_big = seconds_per_force_call(c.energy_fn, c.graph(big), repeats=1 if c.is_teacher else 3)
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
