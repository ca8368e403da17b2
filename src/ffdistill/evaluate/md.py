"""Molecular dynamics for evaluation: one set-up for every run, a stability monitor that says which
step failed, NVE energy drift, and the trajectories the observables (RDF, VDOS) are computed from."""

from __future__ import annotations

import os

import ase
import numpy as np
from ase import units
from ase.neighborlist import neighbor_list

from ffdistill.errors import FFDistillError

#: A bonded pair whose length changes by more than the tolerance (Å) from the start marks an unstable run. Over the
#: first WARMUP_STEPS steps the tolerance is MAX_BOND_TOLERANCE; then THERMAL_WIDTH × the root-mean-square change of
#: the bonds over the warm-up, clamped to [BOND_TOLERANCE, MAX_BOND_TOLERANCE]. A hot metal's atoms change a pair's
#: length by 0.5 Å on their own (SevenNet-0's Cu at 750 K within 47 fs, EMT's Cu at 900 K by 0.8 Å in 1 ps), while a
#: molecule's or a covalent crystal's bonds stay within a few tenths; the ceiling keeps a student whose atoms drift
#: freely (no restoring force) failing.
BOND_TOLERANCE = 0.5
MAX_BOND_TOLERANCE = 1.0
WARMUP_STEPS = 200
THERMAL_WIDTH = 8.0
#: Forces beyond this (eV/Å) mark a run that blew up.
MAX_FORCE = 50.0
#: Langevin friction (1/fs): weak enough to leave the dynamics close to Newtonian.
FRICTION_PER_FS = 0.01


class Blowup(FFDistillError):
    """An MD run left the physical regime; carries the step and the reason."""

    def __init__(self, step: int, reason: str, interval: int = 1):
        every = "every step" if interval == 1 else f"every {interval} steps"
        super().__init__(f"step {step}: {reason} (first failed check; checks {every})")
        self.step, self.reason, self.interval = step, reason, interval


def thermalised(start: ase.Atoms, calc, temperature: float, seed: int) -> ase.Atoms:
    """A copy of ``start`` with ``calc`` and Maxwell–Boltzmann velocities at ``temperature`` (no net momentum)."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = start.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    return atoms


def dynamics(atoms: ase.Atoms, ensemble: str, temperature: float, timestep_fs: float = 1.0, seed: int = 0):
    """The integrator every evaluation uses: Langevin for NVT, velocity Verlet for NVE."""
    if ensemble == "nvt":
        from ase.md.langevin import Langevin

        rng = np.random.default_rng(seed + 1)  # not the velocity stream
        return Langevin(
            atoms,
            timestep_fs * units.fs,
            temperature_K=temperature,
            friction=FRICTION_PER_FS / units.fs,
            fixcm=False,
            rng=rng,
        )
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep_fs * units.fs)
    raise ValueError(f"unknown ensemble {ensemble!r}: nvt or nve")


def bonded_pairs(atoms: ase.Atoms, factor: float = 1.15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs closer than ``factor`` × the median nearest-neighbour distance, with their shifts.

    The median, not each atom's own nearest distance: in a rattled start an atom whose neighbour is
    unusually close would otherwise count loosely bound second-shell pairs as bonds.
    """
    i, j, d, S = neighbor_list("ijdS", atoms, 4.0)
    if len(d) == 0:
        return i, j, S
    nearest = np.full(len(atoms), np.inf)
    np.minimum.at(nearest, i, d)
    keep = d < factor * np.median(nearest[np.isfinite(nearest)])
    return i[keep], j[keep], S[keep]


class StabilityMonitor:
    """Checks the current frame: raises ``Blowup`` when a bond is longer or shorter by more than the tolerance
    than the typical start length of its kind of bond, or a force exceeds ``MAX_FORCE``. ``check(step)`` is told
    the step it is looking at. The tolerance is ``MAX_BOND_TOLERANCE`` over the first ``WARMUP_STEPS``, then
    ``THERMAL_WIDTH`` × the bonds' root-mean-square change over them, clamped to [``BOND_TOLERANCE``,
    ``MAX_BOND_TOLERANCE``] (a hot metal's bonds move more than a molecule's);
    a ``tolerance`` given here is used as it is."""

    def __init__(self, atoms: ase.Atoms, interval: int = 1, tolerance: float | None = None):
        self.atoms, self.interval = atoms, interval
        self.i, self.j, self.S = bonded_pairs(atoms)
        self.reference = self._typical_lengths()
        self.last_passed: int | None = None
        self.fixed = tolerance is not None  # a tolerance given by the caller is not widened
        self.tolerance = MAX_BOND_TOLERANCE if tolerance is None else float(tolerance)
        self._warmup: list[float] = []  # mean squared bond change at each check of the warm-up
        self._first: int | None = None  # the first step checked (a resumed run warms up again)

    def _typical_lengths(self) -> np.ndarray:
        """Each bond's reference length: the median start length of bonds between the same two elements. A hot
        start frame (a held-out frame at 750 K, say) has bonds stretched by thermal motion; measured from their
        own start lengths, their ordinary relaxation read as a 0.5 Å change in the demo's 32-atom Si."""
        lengths, Z = self._lengths(), self.atoms.numbers
        kinds = np.sort(np.stack([Z[self.i], Z[self.j]], axis=1), axis=1)
        reference = np.empty_like(lengths)
        for kind in np.unique(kinds, axis=0):
            same = (kinds == kind).all(axis=1)
            reference[same] = np.median(lengths[same])
        return reference

    def _lengths(self) -> np.ndarray:
        pos, cell = self.atoms.positions, self.atoms.cell.array
        return np.linalg.norm(pos[self.j] - pos[self.i] + self.S @ cell, axis=1)

    def check(self, step: int) -> None:
        forces = self.atoms.get_forces()
        fmax = float(np.abs(forces).max()) if np.all(np.isfinite(forces)) else np.inf
        if not np.isfinite(self.atoms.get_potential_energy()) or fmax > MAX_FORCE:
            raise Blowup(step, f"|F| = {fmax:.3g} eV/Å > {MAX_FORCE:g} eV/Å", self.interval)
        changes = np.abs(self._lengths() - self.reference)
        change = changes.max(initial=0.0)
        if change > self.tolerance:
            raise Blowup(step, f"a bond changed by {change:.2f} Å > {self.tolerance:.3g} Å", self.interval)
        self._widen(step, changes)
        self.last_passed = step

    def _widen(self, step: int, changes: np.ndarray) -> None:
        """Over the warm-up, gather the bonds' squared changes; at its end, set the tolerance to
        ``THERMAL_WIDTH`` × their root mean square, clamped to [``BOND_TOLERANCE``, ``MAX_BOND_TOLERANCE``]."""
        if self.fixed or self._warmup is None or len(changes) == 0:
            return
        self._first = step if self._first is None else self._first
        self._warmup.append(float(np.mean(changes**2)))
        if step - self._first >= WARMUP_STEPS:
            thermal = THERMAL_WIDTH * float(np.sqrt(np.mean(self._warmup)))
            self.tolerance, self._warmup = min(max(BOND_TOLERANCE, thermal), MAX_BOND_TOLERANCE), None

    def attach(self, dyn, offset: int = 0) -> None:
        """Check at steps 0, interval, 2·interval, … of ``dyn`` (ASE calls observers before step 1 too)."""
        dyn.attach(lambda: self.check(offset + dyn.nsteps), interval=self.interval)


def stability_criteria(interval: int) -> str:
    every = "every step" if interval == 1 else f"every {interval} steps"
    return (
        f"a bond more than {THERMAL_WIDTH:g}× the bonds' root-mean-square change over the first {WARMUP_STEPS} steps, "
        f"clamped to {BOND_TOLERANCE}–{MAX_BOND_TOLERANCE} Å ({MAX_BOND_TOLERANCE} Å during those steps), from the "
        f"median start length of its kind, or |F| > {MAX_FORCE:g} eV/Å, "
        f"checked {every}"
    )


def nvt_run(
    calc,
    start: ase.Atoms,
    steps: int,
    temperature: float = 300.0,
    timestep_fs: float = 1.0,
    seed: int = 0,
    interval: int = 1,
    frame_every: int = 0,
) -> dict:
    """Langevin NVT: ``stable``; ``steps_run`` (the last step checked); on failure the first failed
    step and reason; ``frames`` every ``frame_every`` steps after the first quarter (for the RDF)."""
    atoms = thermalised(start, calc, temperature, seed)
    dyn = dynamics(atoms, "nvt", temperature, timestep_fs, seed)
    monitor = StabilityMonitor(atoms, interval)
    monitor.attach(dyn)
    frames: list = []

    def keep_frame():
        if dyn.nsteps >= steps // 4:  # the first quarter is equilibration from the start's velocities
            frames.append(atoms.positions.copy())

    if frame_every:
        dyn.attach(keep_frame, interval=frame_every)
    result = {
        "steps": steps,
        "interval": interval,
        "timestep_fs": timestep_fs,
        "frames": frames,
        "template": start.copy(),
    }
    try:
        dyn.run(steps)
        if steps % interval:
            monitor.check(steps)  # the last step, when the interval does not divide the run
        return {**result, "stable": True, "steps_run": steps, "failed_step": None, "reason": None}
    except Blowup as blowup:
        return {
            **result,
            "stable": False,
            "steps_run": blowup.step,
            "failed_step": blowup.step,
            "reason": blowup.reason,
        }


def md_stability(
    calc,
    start: ase.Atoms,
    steps: int,
    temperature: float = 300.0,
    timestep_fs: float = 1.0,
    seed: int = 0,
    interval: int = 1,
) -> dict:
    """Stability of one NVT run: ``time_ps`` is the last step checked (the run's end, or the first
    failed check), a time the run reached."""
    run = nvt_run(calc, start, steps, temperature, timestep_fs, seed, interval)
    return {k: run[k] for k in ("stable", "reason", "failed_step", "interval", "steps")} | {
        "time_ps": run["steps_run"] * timestep_fs / 1000
    }


def nve_run(
    calc,
    start: ase.Atoms,
    steps: int,
    temperature: float = 300.0,
    timestep_fs: float = 1.0,
    seed: int = 0,
    velocity_every: int = 1,
) -> dict:
    """Velocity Verlet: total energy every step, velocities every ``velocity_every`` steps (VDOS).
    Stops at the first failed stability check (``failed_step``) rather than integrating garbage."""
    atoms = thermalised(start, calc, temperature, seed)
    dyn = dynamics(atoms, "nve", temperature, timestep_fs)
    monitor = StabilityMonitor(atoms, 1)
    monitor.attach(dyn)
    energies, velocities = [], []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    dyn.attach(lambda: velocities.append(atoms.get_velocities().copy()), interval=velocity_every)
    failed = None
    try:
        dyn.run(steps)
    except Blowup as blowup:
        failed = blowup.step
    e = np.asarray(energies) / len(atoms) * 1000  # meV/atom
    t = np.arange(len(e)) * timestep_fs / 1000  # ps
    slope = float(np.polyfit(t, e, 1)[0]) if len(e) > 2 else float("nan")
    return {
        "drift_meV_per_atom_per_ps": slope,
        "fluctuation_meV_per_atom": float(e.std()) if len(e) else float("nan"),
        "time_ps": t.tolist(),
        "energy_meV_per_atom": (e - e[0]).tolist() if len(e) else [],
        "failed_step": failed,
        "velocities": np.asarray(velocities),
        "velocity_dt_fs": velocity_every * timestep_fs,
        "masses": atoms.get_masses(),
    }


def nve_energy_drift(
    calc, start: ase.Atoms, steps: int, temperature: float = 300.0, timestep_fs: float = 1.0, seed: int = 0
) -> dict:
    """Drift = slope of total energy per atom (meV/atom/ps), fluctuation = its std."""
    run = nve_run(calc, start, steps, temperature, timestep_fs, seed)
    return {k: v for k, v in run.items() if k not in ("velocities", "masses")}


def relax(calc, start: ase.Atoms, fmax: float = 0.05, max_steps: int = 200) -> dict:
    """Relax positions with BFGS; final energy, steps and the relaxed structure."""
    from ase.optimize import BFGS

    atoms = start.copy()
    atoms.calc = calc
    opt = BFGS(atoms, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=max_steps))
    return {
        "atoms": atoms,
        "energy_eV": float(atoms.get_potential_energy()),
        "steps": int(opt.nsteps),
        "converged": converged,
    }


def rmsd(a: ase.Atoms, b: ase.Atoms) -> float:
    """Root-mean-square displacement between two relaxations of one structure (minimum image, net
    translation removed)."""
    from ase.geometry import find_mic

    d, _ = find_mic(b.positions - a.positions, a.cell, a.pbc)
    d -= d.mean(axis=0)
    return float(np.sqrt((d**2).sum(axis=1).mean()))


def run_md(
    calc,
    atoms: ase.Atoms,
    ensemble: str,
    temperature: float,
    steps: int,
    trajectory: str,
    timestep_fs: float = 1.0,
    interval: int = 10,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    uncertainty=None,
) -> int:
    """MD through ASE, writing ``trajectory`` and ``<trajectory>.log`` every ``interval`` steps.

    Raises ``Blowup`` (first failed step and reason) if the run leaves physics. With ``resume``,
    continues from the last frame of ``trajectory`` (positions and momenta), so an interrupted run
    loses at most ``interval`` steps. ``uncertainty`` (an ``UncertaintyWatch``, committees only) logs the
    committee's force deviation, keeps the frames above its threshold and stops above its stop threshold.
    Returns the number of steps run now.
    """
    from ase.io import read

    done = 0
    if resume and os.path.isfile(trajectory):
        frames = read(trajectory, ":")
        atoms, done = frames[-1], (len(frames) - 1) * interval
        atoms.calc = calc
    else:
        atoms = thermalised(atoms, calc, temperature, seed)
    dyn = dynamics(atoms, ensemble, temperature, timestep_fs, seed + done)
    if uncertainty is not None:  # a committee's spread, checked first: it should warn before a blow-up
        uncertainty.attach(dyn, atoms, offset=done)
    StabilityMonitor(atoms, interval).attach(dyn, offset=done)
    _attach_recorder(dyn, atoms, trajectory, interval, done, steps, ensemble, progress)
    remaining = max(0, steps - done)
    dyn.run(remaining)
    return remaining


def _attach_recorder(
    dyn, atoms, trajectory: str, interval: int, done: int, steps: int, ensemble: str, progress: bool
) -> None:
    from ase.io.trajectory import Trajectory
    from ase.md import MDLogger
    from tqdm.auto import tqdm

    traj = Trajectory(trajectory, "a" if done else "w", atoms)
    logger = MDLogger(dyn, atoms, trajectory + ".log", header=not done, mode="a" if done else "w")
    bar = tqdm(total=steps, initial=done, desc=f"MD {ensemble}", unit="step", disable=not progress)

    def record():
        if dyn.nsteps == 0 and done:
            return  # ASE calls observers before the first step: that frame is already on disk
        traj.write()
        logger()
        bar.update(interval if dyn.nsteps else 0)
        if done + dyn.nsteps >= steps:
            bar.close()

    dyn.attach(record, interval=interval)
