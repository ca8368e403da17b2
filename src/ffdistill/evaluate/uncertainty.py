"""A committee's uncertainty, watched in MD and checked against true errors (definitions: ``students/committee``).

In MD (``UncertaintyWatch``): every ``interval`` steps the largest calibrated per-atom force deviation is
logged; frames above ``threshold`` are written (structure only, ready for ``ffdistill label``); above ``stop``
the run ends with the step and the atom. In evaluation (``calibration``): per held-out frame, the predicted
frame deviation against the true frame error: their Spearman rank correlation with a bootstrap interval,
the share of frames whose error exceeds twice the prediction, and a calibration curve.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import ase
import numpy as np

from ffdistill.errors import FFDistillError, InputError
from ffdistill.students.committee import frame_deviation, frame_error


class UncertaintyStop(FFDistillError):
    """The committee's deviation passed the stop threshold: the run ends here, by request."""

    def __init__(self, step: int, atom: int, value: float, stop: float):
        super().__init__(
            f"stopped at step {step}: atom {atom}'s force deviation {value:.3f} eV/Å is above the stop threshold "
            f"{stop:g} eV/Å"
        )
        self.step, self.atom, self.value = step, atom, value


@dataclass
class UncertaintyWatch:
    """What ``run_md`` does with a committee's per-atom force deviation (eV/Å, calibrated)."""

    frames_path: str  #: extxyz of the frames above ``threshold``
    log_path: str  #: one line per check: step, largest deviation, its atom
    threshold: float | None = None
    stop: float | None = None
    interval: int = 10

    def __post_init__(self):
        for name in ("threshold", "stop"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InputError(f"--uncertainty-{name} must be > 0 eV/Å, got {value}")
        if self.threshold is not None and self.stop is not None and self.stop < self.threshold:
            raise InputError(f"--uncertainty-stop ({self.stop}) must not be below --uncertainty-threshold")

    def attach(self, dyn, atoms: ase.Atoms, offset: int = 0) -> None:
        atoms.get_forces()  # the first calculation tells whether this calculator reports a deviation
        if "force_deviation" not in atoms.calc.results:
            raise InputError("uncertainty needs a committee (train with train.committee=K)")
        log = open(self.log_path, "a" if offset else "w")
        if not offset:
            log.write("# step  max_force_deviation_eV_per_A  atom\n")

        def check():
            step = offset + dyn.nsteps
            deviation = atoms.calc.results["force_deviation"]
            atom, value = int(np.argmax(deviation)), frame_deviation(deviation)
            log.write(f"{step} {value:.6f} {atom}\n")
            log.flush()
            if self.threshold is not None and value > self.threshold:
                frame = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
                frame.info.update(md_step=step, force_deviation=value, atom=atom)
                ase.io.write(self.frames_path, frame, format="extxyz", append=True)
            if self.stop is not None and value > self.stop:
                log.close()
                raise UncertaintyStop(step, atom, value, self.stop)

        dyn.attach(check, interval=self.interval)


def frame_measures(model, graphs) -> tuple[np.ndarray, np.ndarray]:
    """Per labelled graph: the committee's predicted frame deviation and its true frame error (eV/Å)."""
    from ffdistill.devices import device_of

    deviations, errors = [], []
    for graph in graphs:
        out, extra = model.predict_with_uncertainty(graph.to(device_of(model)))
        deviations.append(frame_deviation(extra["force_deviation"].detach().double().cpu().numpy()))
        errors.append(frame_error(out.forces.detach().double().cpu().numpy(), graph.forces.double().numpy()))
    return np.array(deviations), np.array(errors)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def calibration(deviation: np.ndarray, error: np.ndarray, seed: int = 0, resamples: int = 1000) -> dict:
    """Spearman ρ(predicted deviation, true error) with a 95 % bootstrap interval over frames, and the share of
    frames whose error exceeds twice the prediction (about 0.05 for a well calibrated Gaussian-like spread)."""
    deviation, error = np.asarray(deviation, float), np.asarray(error, float)
    n = len(deviation)
    if n < 3:
        raise InputError(f"calibration needs at least 3 frames, got {n}")
    rng = np.random.default_rng(seed)
    boots = [spearman(deviation[i], error[i]) for i in (rng.integers(0, n, n) for _ in range(resamples))]
    low, high = np.nanpercentile(boots, [2.5, 97.5])
    return {
        "frames": n,
        "spearman": spearman(deviation, error),
        "spearman_ci95": [float(low), float(high)],
        "fraction_error_above_2x_deviation": float(np.mean(error > 2 * deviation)),
        "mean_frame_deviation_eV_per_A": float(deviation.mean()),
        "mean_frame_error_eV_per_A": float(error.mean()),
    }


def plot_calibration(deviation: np.ndarray, error: np.ndarray, path: str, bins: int = 8) -> str:
    """Predicted deviation against the RMS true error in equal-count bins of the prediction, over the frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(deviation)
    groups = [g for g in np.array_split(order, min(bins, max(1, len(order) // 5))) if len(g)]
    x = [deviation[g].mean() for g in groups]
    y = [np.sqrt(np.mean(error[g] ** 2)) for g in groups]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(deviation, error, s=8, alpha=0.4, label="frames")
    ax.plot(x, y, "o-", color="C1", label="RMS error per bin")
    top = max(float(np.max(deviation)), float(np.max(error))) * 1.05
    ax.plot([0, top], [0, top], "k--", lw=0.8, label="calibrated")
    ax.set(xlabel="predicted frame deviation (eV/Å)", ylabel="true frame error (eV/Å)", xlim=(0, top), ylim=(0, top))
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
