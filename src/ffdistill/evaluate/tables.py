"""The report in words and tables: markdown tables, how it was measured, and the verdict.

Where the teacher is the yardstick (its own labels, its own spectra) the cell reads "reference",
never a made-up 0.0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ffdistill.evaluate.checks import (  # noqa: F401  (the thresholds, re-exported where they were)
    FAILED,
    MAX_NVE_DRIFT,
    MAX_RDF_MAE,
    MIN_VDOS_OVERLAP,
    PASSED,
    UNMEASURABLE,
    md_checks,
)
from ffdistill.evaluate.md import FRICTION_PER_FS, stability_criteria

#: Shortest NVE run (fs) whose VDOS is worth comparing: its resolution is 1 / length (133 cm⁻¹ at 250 fs).
MIN_VDOS_FS = 250.0

#: Metrics that measure a distance from the teacher: the teacher's own cell is "reference".
VS_TEACHER = {
    "frequency_mae_cm1",
    "rdf_mae_vs_teacher",
    "vdos_overlap_vs_teacher",
    "phonon_band_mae_cm1",
    "phonon_gamma_mae_cm1",
}


def _num(v, spec: str = ".2f") -> str:
    if v is None:
        return "n/a"
    return "nan" if isinstance(v, float) and not np.isfinite(v) else format(v, spec)


def _ref(key: str, spec: str, scale: float = 1.0) -> Callable[[dict], str]:
    """A cell: the value, or "reference" where the model is the yardstick itself."""

    def cell(m: dict) -> str:
        v = m.get(key)
        if v is None:
            yardstick = m.get("role") == "teacher" and (key in VS_TEACHER or m.get("is_reference"))
            return "reference" if yardstick else "n/a"
        return _num(v * scale, spec)

    return cell


ACCURACY_COLUMNS = [
    ("energy MAE (meV/atom)", _ref("energy_mae_meV_per_atom", ".2f")),
    ("force MAE (meV/Å)", _ref("force_mae_meV_per_A", ".1f")),
    ("force cos", _ref("force_cosine", ".3f")),
    ("Hessian-row MAE (eV/Å²)", _ref("hessian_row_mae", ".3f")),
    ("ms / force call", _ref("seconds_per_force_call", ".1f", 1000)),
    ("speed-up", lambda m: f"{m['speedup_vs_teacher']:.1f}×"),
    ("MD steps/s", _ref("md_steps_per_second", ".1f")),
    ("ns/day", _ref("ns_per_day", ".3g")),
]
PHYSICS_COLUMNS = [
    ("NVT stable", lambda m: f"{m['md_stable_runs']}/{m['md_runs']} × {m['md_steps'] / 1000:g} ps"),
    ("mean time to instability (ps)", _ref("mean_time_to_instability_ps", ".2f")),
    ("NVE drift (meV/atom/ps)", lambda m: _nve_cell(m)),
    ("RDF MAE", _ref("rdf_mae_vs_teacher", ".3f")),
    ("VDOS overlap", _ref("vdos_overlap_vs_teacher", ".2f")),
    ("relaxed RMSD (Å)", _ref("relaxed_rmsd_A", ".3f")),
    ("frequency MAE (cm⁻¹)", _ref("frequency_mae_cm1", ".1f")),
    ("imaginary modes", lambda m: str(m["imaginary_modes"])),
]
PHONON_COLUMNS = [
    ("band MAE (cm⁻¹)", _ref("phonon_band_mae_cm1", ".1f")),
    ("Γ MAE (cm⁻¹)", _ref("phonon_gamma_mae_cm1", ".1f")),
    ("lowest band frequency (cm⁻¹)", _ref("phonon_min_cm1", ".1f")),
]


def _nve_cell(m: dict) -> str:
    failed = m.get("nve_failed_step")
    return f"failed at step {failed}" if failed is not None else _num(m["nve_drift_meV_per_atom_per_ps"])


def table(models: dict, columns: list) -> str:
    rows = ["| model | " + " | ".join(h for h, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    rows += [f"| {name} | " + " | ".join(cell(m) for _, cell in columns) + " |" for name, m in models.items()]
    return "\n".join(rows)


def markdown_tables(models: dict) -> str:
    parts = [table(models, ACCURACY_COLUMNS), table(models, PHYSICS_COLUMNS)]
    if all("_phonons" in m for m in models.values()):
        parts.append("Phonons (phonopy):\n\n" + table(models, PHONON_COLUMNS))
    sizes = sorted({int(n) for m in models.values() for n in m.get("cost_growth_s_per_call", {})})
    if sizes:
        columns = [(f"ms / call, {n} atoms", _growth_cell(str(n))) for n in sizes]
        parts.append("Cost growth (interleaved timing, median of calls):\n\n" + table(models, columns))
    return "\n\n".join(parts)


def _growth_cell(size: str) -> Callable[[dict], str]:
    def cell(m: dict) -> str:
        growth = m["cost_growth_s_per_call"]
        return f"{1000 * growth[size]:.1f}" if size in growth else "too slow"

    return cell


# --- verdict -----------------------------------------------------------------------------------------


SYMBOL = {PASSED: "✓", FAILED: "✗", UNMEASURABLE: "–"}


def student_checks(m: dict) -> list[dict]:
    """The MD checks of one student: against the teacher's runs when the report has them."""
    return m.get("checks") or md_checks(m, None)


def verdict(models: dict) -> str:
    """ "fit for MD" only when every check passed; otherwise what failed and what this budget could not
    measure, by name, each check with its value, uncertainty and limit."""
    lines = []
    for name, m in models.items():
        if m["role"] == "teacher":
            continue
        checks = student_checks(m)
        failed = [c["name"] for c in checks if c["status"] == FAILED]
        unmeasured = [c["name"] for c in checks if c["status"] == UNMEASURABLE]
        if failed:
            head = f"NOT fit for MD: {', '.join(failed)} failed"
        elif unmeasured:
            head = f"no check failed; not measurable in this budget: {', '.join(unmeasured)}"
        else:
            head = "fit for MD here"
        detail = "; ".join(f"{c['name']} {SYMBOL[c['status']]} {c['text']}" for c in checks)
        speed = f"{m['speedup_vs_teacher']:.1f}× the teacher's speed per force call"
        lines.append(f"- **{name}**: {head}. {detail}. {speed}.")
    return "\n".join(lines)


def in_words(models: dict) -> str:
    """What the MD checks established and what they did not, a line per student, for a chemist in a hurry."""
    lines = []
    for name, m in models.items():
        if m["role"] == "teacher":
            continue
        by_status = {status: [c["name"] for c in student_checks(m) if c["status"] == status] for status in SYMBOL}
        parts = [f"established: {', '.join(by_status[PASSED]) or 'nothing'}"]
        if by_status[FAILED]:
            parts.append(f"failed: {', '.join(by_status[FAILED])}")
        if by_status[UNMEASURABLE]:
            unknown = ", ".join(by_status[UNMEASURABLE])
            parts.append(f"not established (the teacher's reference run is too short to tell): {unknown}")
        lines.append(f"{name}: " + "; ".join(parts) + ".")
    return "\n".join(lines)


# --- how it was measured ---------------------------------------------------------------------------------


def method_notes(models: dict, profile) -> str:
    """What was run, in words: stability criteria, MD lengths (the teacher's and why), timing, wall time."""
    teacher = next((m for m in models.values() if m["role"] == "teacher"), None)
    student = next((m for m in models.values() if m["role"] == "student"), None)
    first = next(iter(models.values()))
    lines = [
        f"- Profile **{profile.name}**, {profile.temperature:g} K, 1 fs steps. "
        f"Stability: {stability_criteria(profile.check_interval)}."
    ]
    if student is not None:
        lines.append(
            f"- Students: {student['md_runs']} NVT runs × {student['md_steps'] / 1000:g} ps "
            f"(Langevin, friction {FRICTION_PER_FS:g}/fs), NVE {student['nve_ps']:.2f} ps "
            "(velocities every step for the VDOS)."
        )
    if teacher is not None:
        lines.append(
            f"- Teacher: {teacher['md_runs']} NVT run × {teacher['md_steps'] / 1000:g} ps and NVE "
            f"{teacher['nve_ps']:.3f} ps: what {profile.teacher_md_budget_s:g} s at its measured "
            f"{1000 * teacher['seconds_per_force_call']:.0f} ms per force call allows. "
            "Its RDF and VDOS are the yardstick, noisier when its runs are short."
        )
    if teacher is not None:
        outcome = "converged" if teacher["relax_converged"] else "did not converge"
        lines.append(
            f"- Relaxation: BFGS from the first test frame to fmax 0.05 eV/Å, at most {profile.relax_steps} "
            f"steps; the teacher's {outcome} in {teacher['relax_steps']}. RMSD and ΔE are against its result."
        )
    threads = first["timing_threads"] or "as set"
    lines.append(
        f"- Timing: calls interleaved across models on the same structure, 1 warm-up, median of "
        f"{profile.timing_repeats}; torch threads {threads}. Cost growth: cells replicated towards "
        f'{", ".join(map(str, profile.growth_sizes))} atoms; a model stops ("too slow") once its next call '
        f"would take over {profile.max_call_s:g} s."
    )
    walls = "; ".join(
        f"{n} " + ", ".join(f"{k} {v:.0f} s" for k, v in m["wall_s"].items() if k != "speed_all_models")
        for n, m in models.items()
    )
    lines.append(f"- Wall time: timing of all models {first['wall_s']['speed_all_models']:.0f} s; {walls}.")
    lines.append(
        f"- Verdict thresholds: all NVT runs stable, |NVE drift| < {MAX_NVE_DRIFT:g} meV/atom/ps, "
        f"RDF MAE ≤ {MAX_RDF_MAE:g}, VDOS overlap ≥ {MIN_VDOS_OVERLAP:g}; a check passes within its limit plus "
        "twice its combined uncertainty (half-run estimates), and is not measurable when the teacher's own "
        "uncertainty exceeds half the limit."
    )
    return "\n".join(lines)


def public(metrics: dict) -> dict:
    """Metrics without the private traces used for plots, as plain JSON types."""
    return {name: {k: plain(v) for k, v in m.items() if not k.startswith("_")} for name, m in metrics.items()}


def plain(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v
