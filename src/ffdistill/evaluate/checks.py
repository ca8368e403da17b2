"""The MD checks of the verdict, each with its value, the teacher yardstick's value and both uncertainties.

Uncertainties come from splitting each run in two halves: two half-run estimates of an observable differ by
about twice the standard error of the full-run estimate (each half has twice the full run's variance), so
u = |half₁ − half₂| / 2 (for the RDF, the MAE between the halves' g(r), / 2; for the VDOS, (1 − overlap of the
halves) / 2). A student's and the teacher's uncertainties combine in quadrature, u_c = √(u_s² + u_t²).

A check **passes** when the difference from the yardstick is within its limit plus 2 u_c, **fails**
otherwise, and is **not measurable in this budget** only when the yardstick's own uncertainty exceeds half
the limit (listed, not counted as a failure). Spectra are compared only at the resolution both resolve:
the coarser of the two half-runs' 1/T.
"""

from __future__ import annotations

import math

import numpy as np

from ffdistill.evaluate.observables import rdf_mae, vdos_overlap

#: |NVE drift| allowed, meV/atom/ps
MAX_NVE_DRIFT = 1.0
#: mean |g_student(r) − g_teacher(r)| allowed
MAX_RDF_MAE = 0.1
#: least VDOS overlap with the teacher's (1: identical spectra)
MIN_VDOS_OVERLAP = 0.8
#: a spectrum compared in fewer resolution bins than this across its band says nothing
MIN_VDOS_BINS = 5
#: cm⁻¹ · fs: a run of T fs resolves frequencies 1 / (c T) apart
CM1_FS = 1e15 / 2.99792458e10

PASSED, FAILED, UNMEASURABLE = "passed", "failed", "not measurable in this budget"


def check(name, value, yardstick, u_student, u_yardstick, limit, excess, text) -> dict:
    """One check's record; ``excess`` is how far the value lies beyond what the limit allows (≤ 0: within)."""
    u = math.hypot(u_student or 0.0, u_yardstick or 0.0)
    if value is None:
        status = FAILED
    elif u_yardstick is not None and u_yardstick > limit / 2:
        status = UNMEASURABLE
    else:
        status = PASSED if excess <= 2 * u else FAILED
    return {
        "name": name,
        "value": value,
        "yardstick": yardstick,
        "uncertainty": u_student,
        "yardstick_uncertainty": u_yardstick,
        "combined_uncertainty": u,
        "limit": limit,
        "status": status,
        "text": text,
    }


def stability_check(m: dict) -> dict:
    stable = m["md_stable_runs"] == m["md_runs"]
    text = f"{m['md_stable_runs']}/{m['md_runs']} NVT runs stable over {m['md_total_ps']:.2f} ps"
    return check("NVT stability", m["md_stable_runs"], m["md_runs"], 0.0, 0.0, 0.0, 0.0 if stable else 1.0, text)


def drift_check(m: dict) -> dict:
    """|drift| against an absolute limit; the yardstick is zero (exact dynamics conserve energy)."""
    if m.get("nve_failed_step") is not None:
        return check("NVE drift", None, 0.0, None, None, MAX_NVE_DRIFT, math.inf, "the NVE run failed its check")
    drift, u = m["nve_drift_meV_per_atom_per_ps"], m.get("nve_drift_uncertainty")
    text = f"|{drift:.2f} ± {u or 0:.2f}| meV/atom/ps (limit {MAX_NVE_DRIFT:g})"
    return check("NVE drift", drift, 0.0, u, None, MAX_NVE_DRIFT, abs(drift) - MAX_NVE_DRIFT, text)


def unmeasurable(name: str, limit: float, why: str) -> dict:
    """A check whose yardstick this budget did not provide: listed, never counted as a failure."""
    return {**check(name, None, None, None, None, limit, math.inf, why), "status": UNMEASURABLE}


def rdf_check(m: dict, ref: dict) -> dict:
    if not m.get("_rdf"):
        return check("RDF", None, None, None, None, MAX_RDF_MAE, math.inf, "no RDF (an NVT run failed)")
    if not ref.get("_rdf_halves"):
        return unmeasurable("RDF", MAX_RDF_MAE, "the teacher's NVT run gave too few frames for a yardstick")
    value = rdf_mae(m["_rdf"], ref["_rdf"])
    u_s, u_t = _half_rdf_u(m), _half_rdf_u(ref)
    u = math.hypot(u_s or 0, u_t or 0)
    text = f"MAE vs teacher {value:.3f} ± {u:.3f} (limit {MAX_RDF_MAE:g}; the teacher's own ±{u_t:.3f})"
    return check("RDF", value, 0.0, u_s, u_t, MAX_RDF_MAE, value - MAX_RDF_MAE, text)


def vdos_check(m: dict, ref: dict) -> dict:
    deficit_limit = 1 - MIN_VDOS_OVERLAP
    if not m.get("_vdos_halves"):
        return check("VDOS", None, None, None, None, deficit_limit, math.inf, "no VDOS (the NVE run failed)")
    if not ref.get("_vdos_halves"):
        return unmeasurable("VDOS", deficit_limit, "the teacher's NVE run is too short for a yardstick spectrum")
    width = max(m["vdos_resolution_cm1"], ref["vdos_resolution_cm1"])  # both resolve this, no finer
    band = _band_top(ref["_vdos"])
    if width > band / MIN_VDOS_BINS:
        why = (
            f"the NVE runs resolve {width:.0f} cm⁻¹, fewer than {MIN_VDOS_BINS} bins across the teacher's "
            f"0–{band:.0f} cm⁻¹ spectrum"
        )
        return unmeasurable("VDOS", deficit_limit, why)
    value = vdos_overlap(m["_vdos"], ref["_vdos"], smooth_cm1=width)
    u_s, u_t = ((1 - vdos_overlap(*x["_vdos_halves"], smooth_cm1=width)) / 2 for x in (m, ref))
    text = (
        f"overlap with teacher {value:.2f} ± {math.hypot(u_s, u_t):.2f} at {width:.0f} cm⁻¹ resolution "
        f"(needs ≥ {MIN_VDOS_OVERLAP:g}; teacher ±{u_t:.2f})"
    )
    return check("VDOS", value, 1.0, u_s, u_t, deficit_limit, (1 - value) - deficit_limit, text)


def _band_top(result: dict) -> float:
    """The wavenumber below which 99.9 % of a spectrum's weight lies."""
    weight = np.cumsum(result["vdos"])
    return float(result["frequency_cm1"][np.searchsorted(weight, 0.999 * weight[-1])])


def _half_rdf_u(m: dict) -> float | None:
    halves = m.get("_rdf_halves")
    return rdf_mae(*halves) / 2 if halves else None


def md_checks(m: dict, ref: dict | None) -> list[dict]:
    """The verdict's checks for a student ``m`` against the teacher ``ref`` (None: no teacher MD)."""
    checks = [stability_check(m), drift_check(m)]
    if ref is not None:
        checks += [rdf_check(m, ref), vdos_check(m, ref)]
    return checks
