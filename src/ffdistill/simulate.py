"""Is a model physically sound where it will be used? MD stability, NVE energy drift, geometry
optimisation and vibrational frequencies, all through ASE and the project's calculator."""

from __future__ import annotations

import os
import time

import ase
import numpy as np
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import neighbor_list
from ase.optimize import BFGS

from ffdistill.errors import FFDistillError

#: A bonded pair whose length changes by more than this (Å) from the start marks an unstable run.
BOND_TOLERANCE = 0.5
#: Forces beyond this (eV/Å) mark a run that blew up.
MAX_FORCE = 50.0
#: Frequencies: Hessian eigenvalue (eV/Å²/amu) to wavenumber (cm⁻¹).
EV_AMU_A2_TO_CM1 = np.sqrt(units._e / units._amu) * 1e10 / (2 * np.pi * units._c * 100)


class Blowup(FFDistillError):
    """An MD run left the physical regime; carries the step and the reason."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"step {step}: {reason}")
        self.step, self.reason = step, reason


def bonded_pairs(atoms: ase.Atoms, factor: float = 1.15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs closer than ``factor`` × the median nearest-neighbour distance, with their shifts.

    The median, not each atom's own nearest distance: in a rattled start an atom whose neighbour is
    unusually close would otherwise count loosely bound second-shell pairs as bonds.
    """
    i, j, d, S = neighbor_list("ijdS", atoms, 4.0)
    nearest = np.full(len(atoms), np.inf)
    np.minimum.at(nearest, i, d)
    keep = d < factor * np.median(nearest[np.isfinite(nearest)])
    return i[keep], j[keep], S[keep]


class StabilityMonitor:
    """Raises ``Blowup`` when a bond breaks or compresses past ``BOND_TOLERANCE`` or forces explode."""

    def __init__(self, atoms: ase.Atoms, interval: int = 10):
        self.atoms, self.interval, self.step = atoms, interval, 0
        self.i, self.j, self.S = bonded_pairs(atoms)
        self.reference = self._lengths()

    def _lengths(self) -> np.ndarray:
        pos, cell = self.atoms.positions, self.atoms.cell.array
        return np.linalg.norm(pos[self.j] - pos[self.i] + self.S @ cell, axis=1)

    def __call__(self) -> None:
        self.step += self.interval
        forces = self.atoms.get_forces()
        fmax = float(np.abs(forces).max()) if np.all(np.isfinite(forces)) else np.inf
        if not np.isfinite(self.atoms.get_potential_energy()) or fmax > MAX_FORCE:
            raise Blowup(self.step, f"forces blew up (max |F| = {fmax:.3g} eV/Å)")
        change = np.abs(self._lengths() - self.reference).max(initial=0.0)
        if change > BOND_TOLERANCE:
            raise Blowup(self.step, f"a bond changed by {change:.2f} Å (limit {BOND_TOLERANCE} Å)")


def md_stability(calc, start: ase.Atoms, steps: int, temperature: float = 300.0, timestep_fs: float = 1.0, seed: int = 0) -> dict:
    """Langevin NVT from ``start`` (Maxwell–Boltzmann velocities): time to instability, or the full run."""
    atoms = start.copy()
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature, friction=0.01 / units.fs, rng=rng)
    monitor = StabilityMonitor(atoms)
    dyn.attach(monitor, interval=monitor.interval)
    try:
        dyn.run(steps)
        return {"stable": True, "time_ps": steps * timestep_fs / 1000, "reason": None}
    except Blowup as blowup:
        return {"stable": False, "time_ps": blowup.step * timestep_fs / 1000, "reason": blowup.reason}


def nve_energy_drift(calc, start: ase.Atoms, steps: int, temperature: float = 300.0, timestep_fs: float = 1.0, seed: int = 0) -> dict:
    """Velocity Verlet; drift = slope of total energy per atom (meV/atom/ps), fluctuation = its std."""
    atoms = start.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep_fs * units.fs)
    energies = [atoms.get_total_energy()]
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    dyn.run(steps)
    e = np.asarray(energies[1:]) / len(atoms) * 1000  # meV/atom
    t = np.arange(len(e)) * timestep_fs / 1000  # ps
    slope = float(np.polyfit(t, e, 1)[0]) if len(e) > 1 else float("nan")
    return {"drift_meV_per_atom_per_ps": slope, "fluctuation_meV_per_atom": float(e.std()), "time_ps": t.tolist(), "energy_meV_per_atom": (e - e[0]).tolist()}


def relax(calc, start: ase.Atoms, fmax: float = 0.05, max_steps: int = 200) -> dict:
    """Relax positions with BFGS; final energy, steps and the relaxed structure."""
    atoms = start.copy()
    atoms.calc = calc
    opt = BFGS(atoms, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=max_steps))
    return {"atoms": atoms, "energy_eV": float(atoms.get_potential_energy()), "steps": int(opt.nsteps), "converged": converged}


def rmsd(a: ase.Atoms, b: ase.Atoms) -> float:
    """Root-mean-square displacement between two relaxations of one structure (minimum image, net
    translation removed)."""
    from ase.geometry import find_mic

    d, _ = find_mic(b.positions - a.positions, a.cell, a.pbc)
    d -= d.mean(axis=0)
    return float(np.sqrt((d**2).sum(axis=1).mean()))


def frequencies_cm1(hessian: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Harmonic wavenumbers (cm⁻¹, imaginary as negative) from a (3N, 3N) Hessian in eV/Å²."""
    inv_sqrt_m = np.repeat(1.0 / np.sqrt(masses), 3)
    h = 0.5 * (hessian + hessian.T) * inv_sqrt_m[:, None] * inv_sqrt_m[None, :]
    eig = np.linalg.eigvalsh(h)
    return np.sign(eig) * np.sqrt(np.abs(eig)) * EV_AMU_A2_TO_CM1


def md_throughput(calc, atoms: ase.Atoms, steps: int = 20, timestep_fs: float = 1.0) -> dict:
    """Velocity Verlet steps per second and ns/day at ``timestep_fs``."""
    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep_fs * units.fs)
    dyn.run(2)  # warm-up
    start = time.perf_counter()
    dyn.run(steps)
    rate = steps / (time.perf_counter() - start)
    return {"md_steps_per_second": rate, "ns_per_day": rate * timestep_fs * 86400 / 1e6}


def run_md(
    calc, atoms: ase.Atoms, ensemble: str, temperature: float, steps: int, trajectory: str,
    timestep_fs: float = 1.0, interval: int = 10, seed: int = 0, resume: bool = False, progress: bool = True,
) -> int:
    """MD through ASE, writing ``trajectory`` and ``<trajectory>.log`` every ``interval`` steps.

    Raises ``Blowup`` (step and reason) if the run leaves physics. With ``resume``, continues from the
    last frame of ``trajectory`` (positions and momenta), so an interrupted run loses at most
    ``interval`` steps. Returns the number of steps run now.
    """
    from ase.io import read
    from ase.io.trajectory import Trajectory
    from ase.md import MDLogger
    from tqdm.auto import tqdm

    done = 0
    if resume and os.path.isfile(trajectory):
        frames = read(trajectory, ":")
        atoms, done = frames[-1], (len(frames) - 1) * interval
    else:
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
        Stationary(atoms)
    atoms.calc = calc
    if ensemble == "nvt":
        dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature, friction=0.01 / units.fs, rng=np.random.default_rng(seed + done))
    else:
        dyn = VelocityVerlet(atoms, timestep_fs * units.fs)
    monitor = StabilityMonitor(atoms, interval=interval)
    monitor.step = done
    dyn.attach(monitor, interval=interval)
    traj = Trajectory(trajectory, "a" if done else "w", atoms)
    logger = MDLogger(dyn, atoms, trajectory + ".log", header=not done, mode="a" if done else "w")
    bar = tqdm(total=steps, initial=done, desc=f"MD {ensemble}", unit="step", disable=not progress)

    def record():
        if dyn.nsteps == 0 and done:
            return  # ASE calls observers before the first step: that frame is already on disk
        traj.write()
        logger()
        bar.update(interval if dyn.nsteps else 0)

    dyn.attach(record, interval=interval)
    remaining = max(0, steps - done)
    dyn.run(remaining)
    bar.close()
    return remaining
