"""MD steps per second of one student in ASE and in LAMMPS (fix external), at 64, 4096 and 32768 Si atoms.

    OMP_NUM_THREADS=1 python benchmarks/md_engines.py [STUDENT.pt] [--steps 20 3 3] [--before OLD_SRC]

``--before OLD_SRC`` also times the ffdistill package found in OLD_SRC (e.g. a ``git worktree`` of an earlier
commit's ``src``), each (engine, size) right after the current code's, so the two are measured side by side
on the same machine in the same run. Reported per engine and size: CPU µs per atom-step (this process's CPU
time over ≥ 3 steps, after a warm-up call) and, per engine, ``memory_kb_per_atom``: the slope of the peak
resident memory between 4,096 and 32,768 atoms (what each extra atom costs; torch's own baseline cancels).

Without a student file, a randomly initialised painn-small Si student (random read-out, so forces are
not zero) stands in: speed does not depend on the weights. Each (engine, size) runs in its own process,
so its peak resident memory is its own. Also reports the largest force difference between the two
engines on the same 64-atom structure. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

SIZES = {64: 2, 4096: 8, 32768: 16}  # atoms -> repeats of the 8-atom cubic Si cell
#: --compile: the student through torch.compile (``ffdistill.calculator.compiled``), timed after its first call
COMPILE = os.environ.get("FFDISTILL_BENCH_COMPILE") == "1"


def silicon(n_atoms: int):
    import numpy as np
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * ((SIZES[n_atoms],) * 3)
    atoms.rattle(0.02, seed=0)
    rng = np.random.default_rng(0)
    atoms.set_velocities(rng.normal(scale=0.005, size=(len(atoms), 3)))  # about 300 K in ASE units
    return atoms


def default_student(path: str) -> str:
    import torch

    from ffdistill.calculator import save_student
    from ffdistill.students import build_student

    torch.manual_seed(0)
    student = build_student("painn-small", [14], cutoff=5.0)
    with torch.no_grad():
        for p in student.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.1)  # wider weights blow up through three layers
        student.energy_scale.fill_(10.0)  # forces of a few 0.1 eV/Å, as a trained student's
    save_student(student, path)
    return path


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_ase(student: str, n_atoms: int, steps: int) -> dict:
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from ffdistill import load_calculator

    atoms = silicon(n_atoms)
    atoms.calc = load_calculator(student, compile=COMPILE)
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    atoms.get_forces()  # warm-up: the first call builds everything once (and compiles, with --compile)
    start = clocks()
    dyn.run(steps)
    return rates(steps, start, clocks())


def time_lammps(student: str, n_atoms: int, steps: int) -> dict:
    from ffdistill import load_calculator
    from ffdistill.deploy.lammps import run_lammps

    stamps = []  # at step 0 (after LAMMPS' set-up and the first force call) and at the last step
    run_lammps(
        load_calculator(student, compile=COMPILE),
        silicon(n_atoms),
        ["fix integrate all nve"],
        steps,
        record_every=steps,
        observer=lambda atoms, row: stamps.append(clocks()),
    )
    return rates(steps, *stamps)


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def rates(steps: int, start: tuple, end: tuple) -> dict:
    """Steps per second of wall time and of this process's CPU time (steadier on a shared machine)."""
    wall, cpu = (steps / (b - a) for a, b in zip(start, end))
    return {"steps_per_s": wall, "cpu_steps_per_s": cpu, "peak_memory_mb": peak_memory_mb()}


def force_difference(student: str) -> float:
    """Largest |F_LAMMPS - F_ASE| (eV/Å) on the same 64-atom structure, same float32 student."""
    import numpy as np

    from ffdistill import load_calculator
    from ffdistill.deploy.lammps import run_lammps

    atoms = silicon(64)
    frames = []
    run_lammps(student, atoms, [], 0, observer=lambda a, row: frames.append(a))
    atoms.calc = load_calculator(student)
    return float(np.abs(frames[0].get_forces() - atoms.get_forces()).max())


def one(engine: str, student: str, n_atoms: int, steps: int) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    result = (time_ase if engine == "ase" else time_lammps)(student, n_atoms, steps)
    print(json.dumps(result))


def measure(engine: str, student: str, n_atoms: int, steps: int, src: str | None = None) -> dict:
    """One (engine, size) in a fresh interpreter: its own peak memory; ``src``: another ffdistill to time, or
    "compile" for this one through torch.compile."""
    env = dict(os.environ)
    if src == "compile":
        env["FFDISTILL_BENCH_COMPILE"] = "1"
    elif src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, __file__, "--one", engine, str(n_atoms), str(steps), student],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["cpu_us_per_atom_step"] = 1e6 / (row["cpu_steps_per_s"] * n_atoms)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", nargs="?", help="student file (default: a random painn-small Si student)")
    parser.add_argument("--steps", type=int, nargs=3, default=[20, 3, 3], help="timed steps at 64, 4096, 32768 atoms")
    parser.add_argument("--before", help="src folder of the code to compare against (timed side by side)")
    parser.add_argument("--compile", action="store_true", help="time the torch.compile'd student as well")
    parser.add_argument("--one", nargs=3, metavar=("ENGINE", "ATOMS", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args.one[0], args.student, int(args.one[1]), int(args.one[2]))
    with tempfile.TemporaryDirectory() as folder:
        student = args.student or default_student(os.path.join(folder, "painn-small.pt"))
        versions = {"after": None, **({"before": args.before} if args.before else {})}
        if args.compile:
            versions["compiled"] = "compile"
        results = {name: {"ase": {}, "lammps": {}} for name in versions}
        for engine in ("ase", "lammps"):
            for n, steps in zip(SIZES, args.steps):
                for name, src in versions.items():  # side by side: the same size of both versions in turn
                    results[name][engine][n] = row = measure(engine, student, n, steps, src)
                    print(
                        f"{name:6s} {engine:7s} {n:6d} atoms  {row['cpu_us_per_atom_step']:8.1f} CPU µs/atom-step  "
                        f"{row['steps_per_s']:9.3f} steps/s  peak {row['peak_memory_mb']:8.0f} MB",
                        flush=True,
                    )
        diff = force_difference(student)
    report = {name: summary(rows, diff) for name, rows in results.items()}
    if args.before:
        report["cpu_speedup"] = {
            e: {
                str(n): report["before"]["cpu_us_per_atom_step"][e][str(n)]
                / report["after"]["cpu_us_per_atom_step"][e][str(n)]
                for n in SIZES
            }
            for e in ("ase", "lammps")
        }
    print(json.dumps(report))


def summary(results: dict, force_diff: float) -> dict:
    def table(key, digits):
        return {e: {str(n): round(r[key], digits) for n, r in rows.items()} for e, rows in results.items()}

    big, mid = max(SIZES), sorted(SIZES)[1]

    def kb_per_atom(rows):  # growth of the peak between the two largest sizes: what each extra atom costs
        return (rows[big]["peak_memory_mb"] - rows[mid]["peak_memory_mb"]) * 1024 / (big - mid)

    per_atom = {e: kb_per_atom(rows) for e, rows in results.items()}
    return {
        "lammps_max_force_diff": force_diff,
        "lammps_vs_ase_speedup_64": results["lammps"][64]["steps_per_s"] / results["ase"][64]["steps_per_s"],
        "steps_per_s": table("steps_per_s", 4),
        "cpu_steps_per_s": table("cpu_steps_per_s", 4),
        "cpu_us_per_atom_step": table("cpu_us_per_atom_step", 1),
        "peak_memory_mb": table("peak_memory_mb", 0),
        "memory_kb_per_atom": {e: round(v, 1) for e, v in per_atom.items()},
        "threads": int(os.environ.get("OMP_NUM_THREADS", "1")),
    }


if __name__ == "__main__":
    main()
