"""Structural and dynamical observables from MD: radial distribution function (NVT frames) and
vibrational density of states (NVE velocities), and distances between a student's and the teacher's.

    g(r) = n(r) / (N ρ 4π r² dr)            n(r): pairs per frame in [r, r + dr), ρ = N / V
    VDOS(ν) ∝ Σ_i m_i |FFT v_i(t)|²          (Wiener–Khinchin: the Fourier transform of the
                                              mass-weighted velocity autocorrelation)
"""

from __future__ import annotations

from collections.abc import Sequence

import ase
import numpy as np
from ase import units

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 names it trapz

#: cm⁻¹ per THz.
THZ_TO_CM1 = 1e12 / (units._c * 100)


def rdf(frames: Sequence[ase.Atoms], r_max: float = 6.0, bins: int = 120) -> dict:
    """g(r) averaged over ``frames`` (periodic cells: minimum-image-free, all images within ``r_max``)."""
    from ase.neighborlist import neighbor_list

    edges = np.linspace(0.0, r_max, bins + 1)
    counts = np.zeros(bins)
    for atoms in frames:
        counts += np.histogram(neighbor_list("d", atoms, r_max), bins=edges)[0]
    n, volume = len(frames[0]), frames[0].get_volume()
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g = counts / (len(frames) * n * (n / volume) * shell)
    return {"r": 0.5 * (edges[1:] + edges[:-1]), "g": g, "density": n / volume, "edges": edges}


def coordination(result: dict, r_cut: float) -> float:
    """Mean number of neighbours within ``r_cut``: ∫ 4π r² ρ g(r) dr over the bins below ``r_cut``."""
    edges, g = result["edges"], result["g"]
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    inside = edges[1:] <= r_cut + 1e-9
    return float((result["density"] * g * shell)[inside].sum())


def frames_from_positions(template: ase.Atoms, positions: Sequence[np.ndarray]) -> list[ase.Atoms]:
    frames = []
    for pos in positions:
        atoms = template.copy()
        atoms.calc = None
        atoms.positions = pos
        frames.append(atoms)
    return frames


def vdos(velocities: np.ndarray, masses: np.ndarray, dt_fs: float) -> dict:
    """Mass-weighted power spectrum of velocities (T, N, 3) sampled every ``dt_fs``; frequencies in
    cm⁻¹, spectrum normalised to unit area. A Hann window keeps a short run's peaks from leaking."""
    window = np.hanning(len(velocities))[:, None, None]
    power = np.abs(np.fft.rfft(velocities * window, axis=0)) ** 2
    spectrum = (power * masses[None, :, None]).sum(axis=(1, 2))
    nu_thz = np.fft.rfftfreq(len(velocities), d=dt_fs * 1e-3)  # 1/ps = THz
    nu = nu_thz * THZ_TO_CM1
    area = _trapezoid(spectrum, nu) if len(nu) > 1 else 1.0
    resolution = THZ_TO_CM1 / (len(velocities) * dt_fs * 1e-3)  # 1 / run length
    return {"frequency_cm1": nu, "vdos": spectrum / area, "resolution_cm1": resolution}


def vdos_peak(result: dict, above_cm1: float = 1.0) -> float:
    """Wavenumber of the spectrum's maximum (ignoring the zero-frequency bin)."""
    keep = result["frequency_cm1"] > above_cm1
    return float(result["frequency_cm1"][keep][np.argmax(result["vdos"][keep])])


def rdf_mae(a: dict, b: dict) -> float:
    """Mean |g_a(r) - g_b(r)| over the common bins."""
    return float(np.abs(np.asarray(a["g"]) - np.asarray(b["g"])).mean())


def vdos_overlap(a: dict, b: dict, smooth_cm1: float = 10.0) -> float:
    """∫ min(p_a, p_b) dν of the two unit-area spectra on a common grid, after Gaussian smoothing of
    width ``smooth_cm1`` (short runs give noisy spectra): 1 identical, 0 disjoint. The grid spans
    the band where either spectrum has its weight, not up to the Nyquist frequency."""
    nyquist = min(a["frequency_cm1"][-1], b["frequency_cm1"][-1])
    top = min(nyquist, 1.5 * max(_quantile(a, 0.999), _quantile(b, 0.999)))
    grid = np.linspace(0.0, top, 2000)
    pa, pb = (_smoothed(x, grid, smooth_cm1) for x in (a, b))
    return float(_trapezoid(np.minimum(pa, pb), grid))


def _quantile(result: dict, q: float) -> float:
    weight = np.cumsum(result["vdos"])
    return float(result["frequency_cm1"][np.searchsorted(weight, q * weight[-1])])


def _smoothed(result: dict, grid: np.ndarray, width: float) -> np.ndarray:
    p = np.interp(grid, result["frequency_cm1"], result["vdos"])
    step = grid[1] - grid[0]
    half = min(int(4 * width / step) + 1, (len(grid) - 1) // 2)  # a width beyond the band: truncated, renormalised
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * step / width) ** 2)
    p = np.convolve(p, kernel / kernel.sum(), mode="same")
    return p / _trapezoid(p, grid)
