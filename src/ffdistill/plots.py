"""Figures written beside results (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def learning_curves(histories: dict[str, list], path: str) -> None:
    """Validation force MAE per optimiser step, one line per run."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, history in histories.items():
        ax.plot([h["step"] for h in history], [h["val"]["force_mae_meV_per_A"] for h in history], label=name)
    ax.set(xlabel="optimiser step", ylabel="validation force MAE (meV/Å)", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def force_parity(reference: np.ndarray, predictions: dict[str, np.ndarray], path: str) -> None:
    """Predicted against reference force components, one panel per model."""
    fig, axes = plt.subplots(1, len(predictions), figsize=(3.6 * len(predictions), 3.6), squeeze=False)
    lim = float(np.abs(reference).max()) * 1.05
    for ax, (name, pred) in zip(axes[0], predictions.items()):
        ax.scatter(reference.ravel(), pred.ravel(), s=2, alpha=0.4)
        ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.8)
        mae = 1000 * np.abs(pred - reference).mean()
        ax.set(
            title=f"{name}: {mae:.0f} meV/Å",
            xlabel="reference force (eV/Å)",
            ylabel="predicted (eV/Å)",
            xlim=(-lim, lim),
            ylim=(-lim, lim),
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def nve_traces(traces: dict[str, tuple], path: str) -> None:
    """Total energy (meV/atom, relative to the start) against time in NVE, one line per model."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (t, e) in traces.items():
        ax.plot(t, e, label=name)
    ax.set(xlabel="time (ps)", ylabel="E_total - E_0 (meV/atom)", title="NVE energy conservation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def spectra(frequencies: dict[str, np.ndarray], path: str) -> None:
    """Sorted harmonic frequencies of each model (cm⁻¹), mode by mode."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, f in frequencies.items():
        ax.plot(np.arange(len(f)), np.sort(f), marker="o", ms=3, lw=1, label=name)
    ax.set(xlabel="mode", ylabel="frequency (cm⁻¹)", title="Vibrational spectrum")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rdfs(results: dict[str, dict], path: str) -> None:
    """Radial distribution functions from NVT, one line per model."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, r in results.items():
        ax.plot(r["r"], r["g"], label=name)
    ax.set(xlabel="r (Å)", ylabel="g(r)", title="Radial distribution function (NVT)")
    ax.legend()
    _save(fig, path)


def vdos_spectra(results: dict[str, dict], path: str) -> None:
    """Vibrational densities of states from NVE velocities, one line per model."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, r in results.items():
        ax.plot(r["frequency_cm1"], r["vdos"], label=name, lw=1)
    top = max(
        float(r["frequency_cm1"][np.cumsum(r["vdos"]) < 0.999 * r["vdos"].sum()].max(initial=100.0))
        for r in results.values()
    )
    ax.set(
        xlabel="wavenumber (cm⁻¹)",
        ylabel="VDOS (normalised)",
        xlim=(0, 1.2 * top),
        title="VDOS (NVE velocity autocorrelation)",
    )
    coarsest = max(r.get("resolution_cm1", 0.0) for r in results.values())
    ax.text(
        0.98,
        0.95,
        f"resolution {coarsest:.0f} cm⁻¹ (1 / run length):\nfiner features are not resolved",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=7,
    )
    ax.legend()
    _save(fig, path)


def phonon_bands(results: dict[str, dict], path: str) -> None:
    """Phonon bands along the standard path (left) and DOS (right), all models overlaid."""
    fig, (bands, dos) = plt.subplots(1, 2, figsize=(8, 4), gridspec_kw={"width_ratios": [3, 1]}, sharey=True)
    for k, (name, r) in enumerate(results.items()):
        colour = f"C{k}"
        lines = bands.plot(r["distance"], r["frequencies_cm1"], color=colour, lw=1)
        lines[0].set_label(name)
        dos.plot(r["dos"], r["dos_frequency_cm1"], color=colour, lw=1)
    first = next(iter(results.values()))
    for x in first["special_distance"]:
        bands.axvline(x, color="0.7", lw=0.5)
    bands.set_xticks(first["special_distance"], [label.replace("G", "Γ") for label in first["labels"]])
    bands.set(xlim=(first["distance"][0], first["distance"][-1]), ylabel="frequency (cm⁻¹)", title="Phonons (phonopy)")
    dos.set(xlabel="DOS")
    bands.legend()
    _save(fig, path)


def cost_growth(results: dict[str, dict], path: str) -> None:
    """Seconds per force call against atoms, log-log, one line per model."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, growth in results.items():
        sizes = sorted(int(n) for n in growth)
        ax.plot(sizes, [growth[str(n)] for n in sizes], marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="atoms", ylabel="s / force call", title="Cost growth")
    ax.legend()
    _save(fig, path)


def _save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
