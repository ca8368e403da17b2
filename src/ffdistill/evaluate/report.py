"""``ffdistill evaluate``: the questions a careful user asks before a long simulation, answered for
each model (teacher included) on the same held-out frames, with numbers, plots and a verdict whose
every criterion is shown with its value and threshold."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import ase
import numpy as np
import torch

from ffdistill.evaluate.accuracy import TestSet, accuracy, teacher_accuracy
from ffdistill.evaluate.candidates import Candidate
from ffdistill.evaluate.checks import CM1_FS, md_checks
from ffdistill.evaluate.md import nve_run, nvt_run, relax, rmsd
from ffdistill.evaluate.observables import frames_from_positions, rdf, rdf_mae, vdos, vdos_overlap
from ffdistill.evaluate.tables import MIN_VDOS_FS, markdown_tables, method_notes, plain, public, verdict  # noqa: F401
from ffdistill.evaluate.vibrations import compare_spectra, count_imaginary, vibrational_frequencies


@dataclass(frozen=True)
class Profile:
    """How long each check runs. Students get the full lengths; the teacher runs MD for as long as
    ``teacher_md_budget_s`` of its measured force-call time allows (capped at the students' length)."""

    name: str
    nvt_runs: int  #: NVT stability runs per student, from different held-out frames
    nvt_steps: int  #: steps (1 fs) per NVT run
    nve_steps: int  #: velocity-Verlet steps for drift and VDOS (velocities kept every step)
    teacher_md_budget_s: float  #: wall-time budget for the teacher's NVT + NVE
    growth_sizes: tuple = (64, 512)  #: cost growth (atoms)
    max_call_s: float = 20.0  #: a model leaves the growth curve once a call would take longer
    timing_repeats: int = 5
    check_interval: int = 1  #: steps between stability checks
    rdf_every: int = 10  #: steps between NVT frames kept for the RDF
    relax_steps: int = 200  #: BFGS steps allowed per relaxation (an expensive teacher pays per step)
    temperature: float = 300.0


PROFILES = {
    "quick": Profile(
        "quick",
        relax_steps=25,
        nvt_runs=2,
        nvt_steps=300,
        nve_steps=300,
        teacher_md_budget_s=30.0,
        growth_sizes=(64, 512),
        max_call_s=2.0,
    ),
    "standard": Profile(
        "standard",
        nvt_runs=3,
        nvt_steps=10_000,
        nve_steps=5_000,
        teacher_md_budget_s=900.0,
        growth_sizes=(64, 512, 4096),
    ),
    "long": Profile(
        "long",
        nvt_runs=5,
        nvt_steps=50_000,
        nve_steps=20_000,
        teacher_md_budget_s=3600.0,
        growth_sizes=(64, 512, 4096),
        max_call_s=60.0,
    ),
}


@dataclass
class Inputs:
    """Where the physical checks run: test frames, the equilibrium structure for frequencies, the
    unit cell for phonons (None: skipped) and the torch thread count for timing."""

    test: TestSet
    vib_structure: ase.Atoms | None = None
    phonon_cell: ase.Atoms | None = None
    phonon_supercell: tuple = (2, 2, 2)
    threads: int | None = None


def evaluate_models(candidates: Sequence[Candidate], inputs: Inputs, profile: Profile) -> dict:
    """Accuracy, stability, drift, observables, relaxation, frequencies, phonons and speed for every
    candidate (the teacher first), each student compared with the teacher."""
    teacher = next(c for c in candidates if c.is_teacher)
    clock = Stopwatch()
    with clock("speed"):
        speed = _speed(candidates, inputs.test.atoms[0], profile, inputs.threads)
    with clock("relaxation"):
        teacher_relaxed = relax(teacher.calculator(), inputs.test.atoms[0], max_steps=profile.relax_steps)
    vib = inputs.vib_structure if inputs.vib_structure is not None else teacher_relaxed["atoms"]
    teacher_steps = _teacher_steps(profile, speed[teacher.name]["seconds_per_force_call"])
    student_steps = {"nvt_runs": profile.nvt_runs, "nvt": profile.nvt_steps, "nve": profile.nve_steps}
    out = {}
    for c in candidates:
        m = _evaluate_one(c, inputs, teacher_steps if c.is_teacher else student_steps, profile, teacher_relaxed, vib)
        out[c.name] = {**m, **speed[c.name]}
    _compare_with_teacher(out, teacher.name)
    out[teacher.name]["wall_s"]["relaxation"] += clock.seconds["relaxation"]  # the shared reference relaxation
    for m in out.values():
        m["wall_s"]["speed_all_models"] = clock.seconds["speed"]
    return out


class Stopwatch:
    """Wall seconds per named stage (``with clock("md"): ...``), so the report can say where time went."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, stage: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            start = time.perf_counter()
            try:
                yield
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

        return timed()


def _evaluate_one(
    c: Candidate, inputs: Inputs, steps: dict, profile: Profile, teacher_relaxed: dict, vib: ase.Atoms
) -> dict:
    clock = Stopwatch()
    with clock("accuracy"):
        m = {"role": "teacher" if c.is_teacher else "student", **_accuracy(c, inputs.test)}
    if not c.is_teacher and hasattr(c.model, "predict_with_uncertainty"):  # a committee: is its spread right?
        with clock("uncertainty"):
            m.update(_uncertainty(c, inputs.test))
    with clock("md"):
        m.update(_md(c, inputs.test.atoms, steps, profile))
    with clock("relaxation"):
        m.update(_relaxation(c, inputs.test.atoms[0], teacher_relaxed, profile.relax_steps))
    with clock("frequencies"):
        m["_frequencies_cm1"] = vibrational_frequencies(c.hessian(vib), vib)
        m["imaginary_modes"] = count_imaginary(m["_frequencies_cm1"])
    if inputs.phonon_cell is not None:
        with clock("phonons"):
            m["_phonons"] = _phonons(c, inputs.phonon_cell, inputs.phonon_supercell)
    m["wall_s"] = clock.seconds
    return m


def _speed(candidates: Sequence[Candidate], atoms: ase.Atoms, profile: Profile, threads: int | None) -> dict:
    from ffdistill.evaluate.speed import cost_growth, force_call_seconds, md_rates

    seconds = force_call_seconds(candidates, atoms, repeats=profile.timing_repeats, threads=threads)
    teacher = next(c.name for c in candidates if c.is_teacher)
    # Blocks of about 2 s of MD each, whatever the model's cost.
    steps = {name: max(1, min(50, int(2.0 / t))) for name, t in seconds.items()}
    rates = md_rates(candidates, atoms, steps, threads=threads)
    growth = cost_growth(
        candidates,
        atoms,
        profile.growth_sizes,
        repeats=profile.timing_repeats,
        threads=threads,
        max_call_s=profile.max_call_s,
    )
    return {
        name: {
            "seconds_per_force_call": t,
            "speedup_vs_teacher": seconds[teacher] / t,
            **rates[name],
            "cost_growth_s_per_call": growth.get(name, {}),
            "timing_threads": threads or torch.get_num_threads(),
        }
        for name, t in seconds.items()
    }


def _teacher_steps(profile: Profile, seconds_per_call: float) -> dict:
    """The teacher's MD lengths: its budget split between one NVT and one NVE run."""
    affordable = int(profile.teacher_md_budget_s / (2 * seconds_per_call))
    return {
        "nvt_runs": 1,
        "nvt": max(10, min(profile.nvt_steps, affordable)),
        "nve": max(10, min(profile.nve_steps, affordable)),
    }


def _uncertainty(c: Candidate, test: TestSet) -> dict:
    from ffdistill.evaluate.uncertainty import calibration, frame_measures

    deviation, error = frame_measures(c.model, test.graphs(c.cutoff, c.dtype))
    return {"uncertainty": calibration(deviation, error), "_uncertainty_frames": (deviation, error)}


def _accuracy(c: Candidate, test: TestSet) -> dict:
    if c.is_teacher and test.teacher_is_reference:
        return {
            "energy_mae_meV_per_atom": None,
            "force_mae_meV_per_A": None,
            "force_cosine": None,
            "hessian_row_mae": None,
            "is_reference": True,
        }
    if c.is_teacher:
        return {**teacher_accuracy(c.teacher, test), "is_reference": False}
    return {**accuracy(c.model, test.graphs(c.cutoff, c.dtype)), "is_reference": False}


def _md(c: Candidate, starts: Sequence[ase.Atoms], steps: dict, profile: Profile) -> dict:
    runs = [
        nvt_run(
            c.calculator(),
            starts[k % len(starts)],
            steps["nvt"],
            profile.temperature,
            seed=k,
            interval=profile.check_interval,
            frame_every=profile.rdf_every,
        )
        for k in range(steps["nvt_runs"])
    ]
    nve = nve_run(c.calculator(), starts[0], steps["nve"], profile.temperature)
    return {
        **_stability_summary(runs),
        **_nve_summary(nve),
        "_rdf": _rdf(runs),
        "_rdf_halves": _rdf_halves(runs),
        "_vdos": _vdos(nve),
        **_vdos_halves(nve),
    }


def _stability_summary(runs: list[dict]) -> dict:
    dt_ps = runs[0]["timestep_fs"] / 1000
    return {
        "md_runs": len(runs),
        "md_steps": runs[0]["steps"],
        "md_check_interval": runs[0]["interval"],
        "md_stable_runs": sum(r["stable"] for r in runs),
        "md_stable_fraction": float(np.mean([r["stable"] for r in runs])),
        # Each run counts up to its last check (its end, or the first failed check): times it reached.
        "mean_time_to_instability_ps": float(np.mean([r["steps_run"] * dt_ps for r in runs])),
        "md_total_ps": float(sum(r["steps_run"] for r in runs) * dt_ps),
        "md_failures": [
            f"run {k}: first failed check at step {r['failed_step']} (checks every {r['interval']} steps): "
            f"{r['reason']}"
            for k, r in enumerate(runs)
            if not r["stable"]
        ],
    }


def _nve_summary(nve: dict) -> dict:
    return {
        "nve_drift_meV_per_atom_per_ps": nve["drift_meV_per_atom_per_ps"],
        "nve_drift_uncertainty": _drift_uncertainty(nve),
        "nve_fluctuation_meV_per_atom": nve["fluctuation_meV_per_atom"],
        "nve_ps": nve["time_ps"][-1] if nve["time_ps"] else 0.0,
        "nve_failed_step": nve["failed_step"],
        "_nve_trace": (nve["time_ps"], nve["energy_meV_per_atom"]),
    }


def _rdf(runs: list[dict]) -> dict | None:
    """g(r) over the stable runs' frames (a failed run's last frames are not physics)."""
    frames = [f for r in runs if r["stable"] for f in frames_from_positions(r["template"], r["frames"])]
    return rdf(frames) if frames else None


def _drift_uncertainty(nve: dict) -> float | None:
    """|slope of the first half − slope of the second half| / 2 of the NVE energy trace (None if too short)."""
    t, e = np.asarray(nve["time_ps"]), np.asarray(nve["energy_meV_per_atom"])
    if nve["failed_step"] is not None or len(t) < 8:
        return None
    half = len(t) // 2
    slopes = [np.polyfit(t[a:b], e[a:b], 1)[0] for a, b in ((0, half), (half, len(t)))]
    return float(abs(slopes[0] - slopes[1]) / 2)


def _rdf_halves(runs: list[dict]) -> tuple | None:
    """g(r) of the first and of the second half of every stable run's frames: the RDF's own noise."""
    halves = ([], [])
    for r in runs:
        if r["stable"] and len(r["frames"]) >= 2:
            frames = frames_from_positions(r["template"], r["frames"])
            half = len(frames) // 2
            halves[0].extend(frames[:half])
            halves[1].extend(frames[half:])
    return (rdf(halves[0]), rdf(halves[1])) if halves[0] and halves[1] else None


def _vdos_halves(nve: dict) -> dict:
    """Spectra of the NVE run's two halves and the resolution a half resolves (cm⁻¹), or nothing."""
    v, dt = nve["velocities"], nve["velocity_dt_fs"]
    if nve["failed_step"] is not None or len(v) < 16:
        return {}
    half = len(v) // 2
    return {
        "_vdos_halves": (vdos(v[:half], nve["masses"], dt), vdos(v[half : 2 * half], nve["masses"], dt)),
        "vdos_resolution_cm1": CM1_FS / (half * dt),
    }


def _vdos(nve: dict) -> dict | None:
    """The VDOS of a complete NVE run (its resolution, 1 / length, travels with it), else None."""
    if nve["failed_step"] is not None or len(nve["velocities"]) < 16:
        return None
    return vdos(nve["velocities"], nve["masses"], nve["velocity_dt_fs"])


def _relaxation(c: Candidate, start: ase.Atoms, teacher_relaxed: dict, max_steps: int) -> dict:
    mine = teacher_relaxed if c.is_teacher else relax(c.calculator(), start, max_steps=max_steps)
    return {
        "relaxed_rmsd_A": rmsd(teacher_relaxed["atoms"], mine["atoms"]),
        "relaxed_energy_diff_meV_per_atom": 1000 * (mine["energy_eV"] - teacher_relaxed["energy_eV"]) / len(start),
        "relax_steps": mine["steps"],
        "relax_converged": mine["converged"],
    }


def _phonons(c: Candidate, cell: ase.Atoms, supercell: tuple) -> dict:
    from ffdistill.evaluate.phonons import phonons

    return phonons(c.calculator(), cell, supercell)


def _compare_with_teacher(models: dict, teacher: str) -> None:
    """Distances of each student's spectra and observables from the teacher's (None for the teacher)."""
    from ffdistill.evaluate.phonons import compare_bands

    ref = models[teacher]
    for name, m in models.items():
        own = name == teacher
        spectra = compare_spectra(m["_frequencies_cm1"], ref["_frequencies_cm1"])
        m["frequency_mae_cm1"] = None if own else spectra["frequency_mae_cm1"]
        m["rdf_mae_vs_teacher"] = None if own or not (m["_rdf"] and ref["_rdf"]) else rdf_mae(m["_rdf"], ref["_rdf"])
        m["vdos_overlap_vs_teacher"] = (
            None if own or not (m["_vdos"] and ref["_vdos"]) else vdos_overlap(m["_vdos"], ref["_vdos"])
        )
        m["checks"] = None if own else md_checks(m, ref)
        if "_phonons" in m:
            bands = compare_bands(m["_phonons"], ref["_phonons"])
            m.update({k: (None if own and k != "phonon_min_cm1" else v) for k, v in bands.items()})


def write_report(
    output: str,
    models: dict,
    extra: dict,
    profile: Profile,
    title: str = "ffdistill evaluation",
    extra_plots: Sequence[str] = (),
) -> None:
    """report.md, metrics.json and the plots in ``output``."""
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "metrics.json"), "w") as handle:
        json.dump({"models": public(models), "profile": profile.name, **extra}, handle, indent=2, default=plain)
    plots = _plots(output, models) + list(extra_plots)
    with open(os.path.join(output, "report.md"), "w") as handle:
        handle.write(
            f"# {title}\n\n{markdown_tables(models)}\n\n## How it was measured\n\n{method_notes(models, profile)}\n\n"
        )
        handle.write(f"## Verdict\n\n{verdict(models)}\n\n")
        handle.write("Plots: " + ", ".join(f"`{p}`" for p in plots) + ".\n")


def _plots(output: str, models: dict) -> list[str]:
    from ffdistill import plots

    path = lambda name: os.path.join(output, name)  # noqa: E731
    plots.nve_traces({n: m["_nve_trace"] for n, m in models.items()}, path("nve_energy.png"))
    plots.spectra({n: np.asarray(m["_frequencies_cm1"]) for n, m in models.items()}, path("frequencies.png"))
    written = ["nve_energy.png", "frequencies.png"]
    if any(m["_rdf"] for m in models.values()):
        plots.rdfs({n: m["_rdf"] for n, m in models.items() if m["_rdf"]}, path("rdf.png"))
        written.append("rdf.png")
    if any(m["_vdos"] for m in models.values()):
        plots.vdos_spectra({n: m["_vdos"] for n, m in models.items() if m["_vdos"]}, path("vdos.png"))
        written.append("vdos.png")
    if all("_phonons" in m for m in models.values()):
        plots.phonon_bands({n: m["_phonons"] for n, m in models.items()}, path("phonons.png"))
        written.append("phonons.png")
    for name, m in models.items():
        if "_uncertainty_frames" in m:
            from ffdistill.evaluate.uncertainty import plot_calibration

            written.append(f"calibration_{name}.png")
            plot_calibration(*m["_uncertainty_frames"], path(written[-1]))
    growth = {n: m["cost_growth_s_per_call"] for n, m in models.items() if m["cost_growth_s_per_call"]}
    if growth:
        plots.cost_growth(growth, path("cost_growth.png"))
        written.append("cost_growth.png")
    return written


def evaluate_from_paths(
    model_paths: Sequence[str],
    data: str,
    teacher_spec: str,
    output: str,
    profile: str | Profile = "standard",
    trust: bool = False,
    phonon_cell: ase.Atoms | None = None,
    threads: int | None = None,
    teacher_python: str | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """What ``ffdistill evaluate`` does: load everything, evaluate, write the report (the teacher in the
    interpreter ``teacher_python`` when given; teacher and students on ``device``)."""
    from ffdistill.evaluate.accuracy import load_test_set
    from ffdistill.evaluate.candidates import student_candidates
    from ffdistill.teachers import load_teacher

    profile = PROFILES[profile] if isinstance(profile, str) else profile
    started = time.perf_counter()
    teacher = load_teacher(teacher_spec, trust=trust, python=teacher_python, device=device)
    test = load_test_set(data, teacher)
    candidates = [Candidate.of_teacher(teacher), *student_candidates(model_paths, device=device)]
    models = evaluate_models(candidates, Inputs(test, phonon_cell=phonon_cell, threads=threads), profile)
    extra = {
        "data": data,
        "teacher": f"{teacher.spec} ({teacher.version})",
        "test_frames": len(test),
        "teacher_is_reference": test.teacher_is_reference,
        "wall_time_s": time.perf_counter() - started,
    }
    write_report(output, models, extra, profile)
    return models
