"""MACE as a teacher from its own environment, through the worker (plumbing, not accuracy; not run in CI).

mace-torch pins e3nn 0.4.4 while sevenn needs e3nn >= 0.5, so MACE cannot live beside ffdistill's
default teacher. This script:

1. builds a throw-away venv (``--system-site-packages``: it sees torch 2.13, ase, vesin and this
   ffdistill) and installs mace-torch there with ``torch==2.13.0`` pinned, else pip pulls GBs of CUDA wheels;
2. builds a small randomly initialised ScaleShiftMACE (Si, Cu) inside the venv and saves it;
3. runs ``ffdistill label --teacher mace:MODEL --teacher-python VENV/bin/python --trust-teacher`` on a few
   small Si/Cu frames (periodic and not) with Hessian rows and probes;
4. checks the stored rows against central differences of the worker's forces, and ffdistill's MACE
   adapter (in the worker) against MACE's own ASE calculator in the venv.

    python benchmarks/mace_worker.py [--venv /tmp/mace-env] [--work /tmp/mace-worker]

The last line printed is one JSON object: install status and time, labelling wall time, the largest
|row - finite difference| and |ffdistill - MACECalculator| differences.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ELEMENTS = [14, 29]  # Si, Cu


# ------------------------------------------------------------------------------------ inside the venv


def build_model(path: str) -> None:
    """A small random ScaleShiftMACE (the config of mace's own model tests, smaller), saved whole."""
    import mace  # noqa: F401 - first: it sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which e3nn 0.4.4 needs under torch 2.13
    import numpy as np
    import torch
    from e3nn import o3
    from mace import modules

    torch.manual_seed(0)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=4.0,
        num_bessel=8,
        num_polynomial_cutoff=6,
        max_ell=2,
        interaction_cls=block,
        interaction_cls_first=block,
        num_interactions=2,
        num_elements=len(ELEMENTS),
        hidden_irreps=o3.Irreps("16x0e + 16x1o"),
        MLP_irreps=o3.Irreps("16x0e"),
        gate=torch.nn.functional.silu,
        atomic_energies=np.array([-4.5, -3.7]),
        avg_num_neighbors=8.0,
        atomic_numbers=ELEMENTS,
        correlation=3,
        radial_type="bessel",
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    torch.save(model, path)


def own_calculator(model: str, frames: str, out: str) -> None:
    """Energy, forces and stress of every frame from MACE's own ``MACECalculator`` (float64)."""
    import ase.io
    import numpy as np
    from mace.calculators import MACECalculator

    calc = MACECalculator(model_paths=model, device="cpu", default_dtype="float64")
    results = {}
    for k, atoms in enumerate(ase.io.read(frames, ":")):
        atoms.calc = calc
        results[f"energy_{k}"] = np.array(atoms.get_potential_energy())
        results[f"forces_{k}"] = atoms.get_forces()
        if atoms.pbc.all():
            results[f"stress_{k}"] = atoms.get_stress(voigt=False)
    np.savez(out, **results)


# ------------------------------------------------------------------------------------ here


def make_venv(venv: str) -> dict:
    """The venv with mace-torch, built once; torch pinned so pip takes the installed CPU wheel."""
    python = os.path.join(venv, "bin", "python")
    if os.path.exists(python) and _has_mace(python):
        return {"install": "reused", "install_s": 0.0}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
    done = subprocess.run(
        [python, "-m", "pip", "install", "-q", "mace-torch", "torch==2.13.0"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SystemExit("mace-torch did not install:\n" + "\n".join(tail))
    return {"install": "ok", "install_s": round(time.perf_counter() - started, 1)}


def _has_mace(python: str) -> bool:
    return subprocess.run([python, "-c", "import mace"], capture_output=True, check=False).returncode == 0


def write_frames(path: str) -> None:
    """Two rattled 8-atom Si cells, one 4-atom Cu cell, one non-periodic Si4Cu cluster."""
    import ase.io
    from ase import Atoms
    from ase.build import bulk

    frames = []
    for seed in (0, 1):
        si = bulk("Si", "diamond", a=5.43, cubic=True)
        si.rattle(0.05, seed=seed)
        frames.append(si)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.05, seed=2)
    frames.append(cu)
    cluster = Atoms("Si4Cu", positions=[[0, 0, 0], [2.3, 0, 0], [0, 2.3, 0], [0, 0, 2.3], [1.3, 1.3, 1.3]])
    cluster.rattle(0.05, seed=3)
    frames.append(cluster)
    ase.io.write(path, frames, format="extxyz")


def fd_check(store_path: str, python: str, model: str, h: float = 1e-3) -> dict:
    """Largest |stored row - central difference of the worker's forces| over all stored rows, and the
    same for the float64 rows the worker returns (the store keeps rows in float32)."""
    import numpy as np

    from ffdistill.data.labels import LabelStore
    from ffdistill.teachers import load_teacher

    store = LabelStore(store_path)
    teacher = load_teacher(f"mace:{model}", trust=True, python=python)
    worst_stored = worst_exact = scale = 0.0
    for i in range(len(store)):
        atoms, labels = store.frame(i)
        rows = labels["row_index"]
        exact = teacher.label(atoms, rows).hessian_rows
        for k, r in enumerate(rows):
            fd = _fd_row(teacher, atoms, int(r), h)
            worst_stored = max(worst_stored, float(np.abs(labels["hessian_rows"][k] - fd).max()))
            worst_exact = max(worst_exact, float(np.abs(exact[k] - fd).max()))
            scale = max(scale, float(np.abs(fd).max()))
    teacher.close()
    return {
        "max_abs_row_minus_fd_stored": worst_stored,
        "max_abs_row_minus_fd_float64": worst_exact,
        "max_abs_row": scale,
        "fd_step": h,
    }


def _fd_row(teacher, atoms, r: int, h: float):
    """Row r of the Hessian, -(F(R + h e_r) - F(R - h e_r)) / 2h, from forces alone."""
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions.flat[r] += h
    minus.positions.flat[r] -= h
    return -(teacher.label(plus).forces - teacher.label(minus).forces) / (2 * h)


def adapter_check(store_path: str, own: str) -> dict:
    """ffdistill's MACE adapter (as stored through the worker) against MACE's own calculator."""
    import numpy as np

    from ffdistill.data.labels import LabelStore

    store, ref = LabelStore(store_path), np.load(own)
    worst = {"energy": 0.0, "forces": 0.0, "stress": 0.0}
    for i in range(len(store)):
        _, labels = store.frame(i)
        worst["energy"] = max(worst["energy"], abs(labels["energy"] - float(ref[f"energy_{i}"])))
        worst["forces"] = max(worst["forces"], float(np.abs(labels["forces"] - ref[f"forces_{i}"]).max()))
        if labels["stress"] is not None:
            worst["stress"] = max(worst["stress"], float(np.abs(labels["stress"] - ref[f"stress_{i}"]).max()))
    return {f"max_abs_{k}_vs_mace_calculator": v for k, v in worst.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default="/tmp/mace-env")
    parser.add_argument("--work", default="/tmp/mace-worker")
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--build-model", metavar="PATH", help=argparse.SUPPRESS)  # run inside the venv
    parser.add_argument("--own-calculator", nargs=3, metavar=("MODEL", "FRAMES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_model:
        return build_model(args.build_model)
    if args.own_calculator:
        return own_calculator(*args.own_calculator)
    result = make_venv(args.venv)
    python = os.path.join(args.venv, "bin", "python")
    os.makedirs(args.work, exist_ok=True)
    model, frames = os.path.join(args.work, "mace-small.model"), os.path.join(args.work, "frames.extxyz")
    store, own = os.path.join(args.work, "labels.zarr"), os.path.join(args.work, "mace_own.npz")
    quiet = {**os.environ, "PYTHONWARNINGS": "ignore"}  # e3nn's code generation warns at length
    subprocess.run([python, __file__, "--build-model", model], check=True, env=quiet)
    write_frames(frames)
    if os.path.isdir(store):
        import shutil

        shutil.rmtree(store)
    started = time.perf_counter()
    teacher = ["--teacher", f"mace:{model}", "--teacher-python", python, "--trust-teacher"]
    label = [sys.executable, "-m", "ffdistill.cli", "label", frames, "-o", store, *teacher, "-q"]
    label += ["--hessian-rows", str(args.rows), "--hessian-probes", "2"]
    subprocess.run(label, check=True)
    result["label_wall_s"] = round(time.perf_counter() - started, 1)
    subprocess.run([python, __file__, "--own-calculator", model, frames, own], check=True, env=quiet)
    result.update(fd_check(store, python, model))
    result.update(adapter_check(store, own))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
