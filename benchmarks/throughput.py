"""Throughput on one device: teacher labelling, training, and student vs teacher MD (the paper's headline:
students up to 20x faster than their teacher).

    python benchmarks/throughput.py [--device cpu|cuda|cuda:K] [--quick]

Default device: cuda when torch sees a GPU, else cpu. ``--quick`` repeats less (a short CPU run).

What it measures, all on ``--device`` (ASE's integrator and neighbour lists stay on the host, as in real MD):

* teacher labelling, frames/s: SevenNet-0 on rattled 64-atom Si, energy and forces alone, with K = 4 Hessian
  rows and with K = 4 probes per frame, ``label --batch-size`` 1 and 4 (frames per teacher call);
* vmapped vs looped Hessian rows per teacher (SevenNet-0 and the Morse toy), measured, and which is faster
  here: the teachers' ``vectorize_rows`` setting should follow it; likewise SevenNet's ``batch_structures``
  (a batch of structures through the model in one call, or one by one);
* training structures/s, painn-small on batches of 4 x 64-atom Si (labels from the Morse teacher: timing does
  not depend on the values), with and without the Hessian term (s = 1 row per structure, the student's rows
  taken as training takes them by default, ``model.jacobian``);
* torch-sim against ASE: atom-steps/s of 16 replicas of a 64-atom Si cell (painn-small, NVE at 1 fs) in one
  batched torch-sim state, against the same 16 run one at a time through ASE (needs torch-sim-atomistic);
* MD steps/s and ns/day (1 fs velocity Verlet) at 64, 512 and 4,096 atoms (Si supercells) for painn-small,
  schnet-small and the teacher, and each student's speed-up over the teacher. The teacher skips a size when
  its first step would take (predicted from the size before, linear in N) or took more than 30 s.

Packages: torch and numpy; ase and vesin (graphs, MD), tqdm and pyyaml (imported by ffdistill's training
module). The teacher parts need sevenn (with its e3nn); without it they are skipped with a message and the
rest runs. ffdistill itself need not be installed: ``src/`` beside this folder is used when it is not.

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch

try:
    import ffdistill  # noqa: F401
except ImportError:  # a checkout without an install: the package travels in src/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from ase.build import bulk  # noqa: E402

SIZES = {64: 2, 512: 4, 4096: 8}  # atoms -> repeats of the 8-atom cubic Si cell
STUDENTS = ("painn-small", "schnet-small")
TEACHER_MAX_FIRST_STEP_S = 30.0
K = 4  # Hessian rows / probes per frame


def silicon(atoms: int = 64, seed: int = 0):
    cell = bulk("Si", "diamond", a=5.43, cubic=True) * ((SIZES[atoms],) * 3)
    cell.rattle(0.05, seed=seed)
    return cell


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def say(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------------------- teacher


def load_sevenn(device):
    """SevenNet-0 on ``device``, or None (and why) when sevenn is missing."""
    try:
        import sevenn  # noqa: F401
    except ImportError as error:
        return None, f"sevenn is not installed ({error}): teacher labelling and teacher MD skipped"
    from ffdistill.teachers import load_teacher

    return load_teacher("sevenn", device=device), None


def labelling(teacher, device, quick: bool) -> dict:
    """Frames/s of ``label_batch`` for E/F, K rows and K probes, at batch sizes 1 and 4 (after a warm-up)."""
    from ffdistill.data.labels import choose_rows
    from ffdistill.derivatives import random_probes

    n = 4 if quick else 8
    frames = [silicon(64, seed) for seed in range(n)]
    modes = {
        "energy_forces": ([()] * n, [None] * n),
        f"rows_{K}": ([choose_rows(64, K, 0, i) for i in range(n)], [None] * n),
        f"probes_{K}": ([()] * n, [random_probes(64, K, 0, i) for i in range(n)]),
    }
    out: dict = {}
    for mode, (rows, probes) in modes.items():
        teacher.label_batch(frames[:1], rows[:1], probes[:1])  # warm-up
        for batch in (1, 4):
            rate = n / timed(lambda b=batch, r=rows, p=probes: label_all(teacher, frames, r, p, b), device)
            out.setdefault(mode, {})[str(batch)] = rate
            say(f"labelling {mode:>14}, batch {batch}: {rate:7.2f} frames/s")
    return out


def label_all(teacher, frames, rows, probes, batch: int) -> None:
    """All ``frames`` through ``label_batch``, ``batch`` frames per call."""
    for lo in range(0, len(frames), batch):
        teacher.label_batch(frames[lo : lo + batch], rows[lo : lo + batch], probes[lo : lo + batch])


def vmap_vs_loop(teacher, name: str, device, quick: bool, rows: int = K) -> dict:
    """Seconds for ``rows`` Hessian rows of one 64-atom frame, vmapped and looped; which is faster here."""
    from ffdistill.potential import Want

    graph = teacher.graph(silicon(64))._replace(row_index=torch.arange(rows, device=teacher.device))
    want = Want(hessian_rows=True)
    setting, result = teacher.vectorize_rows, {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for vectorize in (False, True, False, True)[: 2 if quick else 4]:
                teacher.vectorize_rows = vectorize
                teacher.predict(graph, want)  # warm-up (and vmap's first trace)
                key = "vmapped_s" if vectorize else "looped_s"
                result[key] = min(result.get(key, float("inf")), timed(lambda: teacher.predict(graph, want), device))
    finally:
        teacher.vectorize_rows = setting
    # derivatives falls back to the loop (with a warning) where vmap cannot pass through the model
    result["vmap_fell_back"] = any("vmapped Hessian rows failed" in str(w.message) for w in caught)
    faster_vmap = result["vmapped_s"] < result["looped_s"] and not result["vmap_fell_back"]
    result["faster"] = "vmapped" if faster_vmap else "looped"
    result["vectorize_rows_setting"] = setting
    verdict = "matches" if (result["faster"] == "vmapped") == setting else "does NOT match"
    say(
        f"{name}: {rows} rows vmapped {result['vmapped_s']:.3f} s, looped {result['looped_s']:.3f} s -> "
        f"{result['faster']} is faster here; vectorize_rows={setting} {verdict}"
    )
    return result


def batched_vs_looped_forward(teacher, device, quick: bool) -> dict:
    """SevenNet's ``batch_structures``: 4 x 64-atom frames with K rows each through one model call, or
    structure by structure; seconds of each and which is faster here."""
    frames = [silicon(64, seed) for seed in range(4)]
    rows = [list(range(K))] * 4
    setting, result = teacher.batch_structures, {}
    try:
        for batched in (False, True, False, True)[: 2 if quick else 4]:
            teacher.batch_structures = batched
            teacher.label_batch(frames[:2], rows[:2])  # warm-up
            key = "batched_s" if batched else "looped_s"
            seconds = timed(lambda: teacher.label_batch(frames, rows), device)
            result[key] = min(result.get(key, float("inf")), seconds)
    finally:
        teacher.batch_structures = setting
    result["faster"] = "batched" if result["batched_s"] < result["looped_s"] else "looped"
    result["batch_structures_setting"] = setting
    verdict = "matches" if (result["faster"] == "batched") == setting else "does NOT match"
    say(
        f"sevenn forward, 4 x 64 atoms with {K} rows each: one batched call {result['batched_s']:.3f} s, structure "
        f"by structure {result['looped_s']:.3f} s -> {result['faster']} is faster here; batch_structures={setting} "
        f"{verdict}"
    )
    return result


# ------------------------------------------------------------------------------------------- training


def labelled_graphs(n: int = 4):
    """``n`` 64-atom Si graphs with Morse labels, one Hessian row each (float32, on the host)."""
    from ffdistill.teachers import load_teacher

    teacher = load_teacher("morse")
    graphs = []
    for k in range(n):
        atoms = silicon(64, k)
        lab = teacher.label(atoms, rows=[k])
        as_t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
        graph = teacher.graph(atoms).to("cpu", dtype=torch.float32)
        graphs.append(
            graph._replace(
                energy=as_t([lab.energy]),
                forces=as_t(lab.forces),
                stress=as_t(lab.stress)[None],
                hessian_rows=as_t(lab.hessian_rows),
                row_index=torch.as_tensor(lab.row_index),
            )
        )
    return graphs


def steps_of(model, batch, loss, optimizer, steps: int) -> None:
    from ffdistill.training.trainer import train_step

    for _ in range(steps):
        train_step(model, batch, loss, optimizer, 10.0)


def training(device, quick: bool) -> dict:
    """Structures/s of ``train_step`` (painn-small, 4 x 64 atoms) with and without the Hessian term."""
    from ffdistill.config import ModelConfig
    from ffdistill.graph import batch_graphs
    from ffdistill.students import build_student
    from ffdistill.training.loss import build_loss
    from ffdistill.training.trainer import train_step

    graphs = labelled_graphs(4)
    batch = batch_graphs(graphs).to(device)
    defaults = ModelConfig()  # the student's rows as training takes them (model.jacobian)
    out = {"jacobian": defaults.jacobian}
    steps = 3 if quick else 10
    for name, weight in (("without_hessian", 0.0), ("with_hessian", 1000.0)):
        torch.manual_seed(0)
        model = build_student("painn-small", [14], 5.0)
        model.set_jacobian(defaults.jacobian, defaults.fd_step)
        model.fit_references(graphs)
        model.to(device)
        loss = build_loss(5.0, 100.0, weight)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        train_step(model, batch, loss, optimizer, 10.0)  # warm-up
        seconds = timed(lambda m=model, s=loss, o=optimizer: steps_of(m, batch, s, o, steps), device)
        out[name] = steps * len(graphs) / seconds
        say(f"training painn-small {name:>15}: {out[name]:7.2f} structures/s (4 x 64 atoms; rows: {defaults.jacobian})")
    out["hessian_cost_ratio"] = out["without_hessian"] / out["with_hessian"]
    return out


# ------------------------------------------------------------------------------------------------ MD


def md_rate(calc, atoms, steps: int, device) -> tuple[float, float]:
    """(seconds of the first step, steps/s after it) of NVE velocity Verlet at 1 fs from 300 K."""
    from ffdistill.evaluate.md import dynamics, thermalised

    dyn = dynamics(thermalised(atoms, calc, 300.0, 0), "nve", 300.0, 1.0)
    first = timed(lambda: dyn.run(1), device)
    if first > TEACHER_MAX_FIRST_STEP_S:
        return first, float("nan")
    return first, steps / timed(lambda: dyn.run(steps), device)


def student_calculator(name: str, device):
    from ffdistill.calculator import PotentialCalculator
    from ffdistill.students import build_student

    torch.manual_seed(0)
    model = build_student(name, [14], 5.0).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return PotentialCalculator(model)


def torchsim_vs_ase(device, quick: bool, replicas: int = 16) -> dict:
    """Atom-steps/s of ``replicas`` 64-atom Si cells: one batched torch-sim state against one ASE run each."""
    try:
        import torch_sim as ts

        from ffdistill.deploy.torchsim import StudentModel
    except ImportError as error:
        return {"skipped": str(error)}
    from ffdistill.evaluate.md import dynamics, thermalised

    steps = 5 if quick else 20
    calc = student_calculator("painn-small", device)
    cells = [silicon(64, seed=k) for k in range(replicas)]
    model = StudentModel(calc.potential, device=device, dtype=torch.float32)
    state = ts.io.atoms_to_state(cells, device, torch.float32)
    ts.integrate(state, model, integrator=ts.nve, n_steps=1, temperature=300, timestep=0.001)  # warm-up
    batched = timed(
        lambda: ts.integrate(state, model, integrator=ts.nve, n_steps=steps, temperature=300, timestep=0.001), device
    )
    runs = [dynamics(thermalised(atoms, calc, 300.0, k), "nve", 300.0, 1.0) for k, atoms in enumerate(cells)]
    runs[0].run(1)  # warm-up
    one_by_one = timed(lambda: [dyn.run(steps) for dyn in runs], device)
    atom_steps = replicas * 64 * steps
    row = {
        "replicas": replicas,
        "atoms_each": 64,
        "steps": steps,
        "torchsim_atom_steps_per_s": atom_steps / batched,
        "ase_atom_steps_per_s": atom_steps / one_by_one,
    }
    row["torchsim_speedup"] = row["torchsim_atom_steps_per_s"] / row["ase_atom_steps_per_s"]
    say(
        f"torch-sim {row['torchsim_atom_steps_per_s']:.0f} atom-steps/s vs ASE one at a time "
        f"{row['ase_atom_steps_per_s']:.0f} ({row['torchsim_speedup']:.2f}x), {replicas} x 64 atoms"
    )
    return row


def committee_cost(device, quick: bool, members: int = 4) -> dict:
    """Force calls per second of one painn-small student and of a committee of ``members`` (K force calls, one
    per member, and the spread) on a 64-atom Si cell: what the committee's uncertainty costs."""
    from ffdistill.calculator import PotentialCalculator
    from ffdistill.students.committee import Committee

    one = student_calculator("painn-small", device)
    committee = PotentialCalculator(Committee([student_calculator("painn-small", device).potential] * members))
    atoms, calls = silicon(64), 5 if quick else 20
    rates = {}
    for name, calc in (("student", one), ("committee", committee)):
        atoms.calc = calc
        atoms.get_forces()  # warm-up

        def forces(atoms=atoms, calc=calc):
            for _ in range(calls):
                atoms.positions[0, 0] += 1e-4  # a new structure each call
                calc.calculate(atoms, ["energy", "forces"])

        rates[name] = calls / timed(forces, device)
    row = {"members": members, "student_calls_per_s": rates["student"], "committee_calls_per_s": rates["committee"]}
    row["committee_cost_in_student_calls"] = rates["student"] / rates["committee"]
    say(f"committee of {members}: {row['committee_cost_in_student_calls']:.2f} student force calls per call")
    return row


def md(teacher, why_not: str | None, device, quick: bool) -> dict:
    """Students' and teacher's MD rates per size, and each student's speed-up over the teacher."""
    out, last = {}, None  # last: (atoms, first-step seconds) of the teacher's previous size
    for atoms_count in SIZES:
        atoms, row = silicon(atoms_count), {}
        for name in STUDENTS:
            steps = (3 if quick else 20) if atoms_count < 4096 else (2 if quick else 5)
            _, rate = md_rate(student_calculator(name, device), atoms, steps, device)
            row[name] = {"steps_per_s": rate, "ns_per_day": rate * 86400 / 1e6}
        row["teacher"], last = teacher_md(teacher, why_not, atoms, last, device, quick)
        for name in STUDENTS:
            t = row["teacher"].get("steps_per_s")
            row[f"speedup_{name}"] = row[name]["steps_per_s"] / t if t else None
        out[str(atoms_count)] = row
        say(md_line(atoms_count, row))
    return out


def teacher_md(teacher, why_not, atoms, last, device, quick: bool):
    """The teacher's rate at this size, or why it was skipped; and what the next size predicts from."""
    if teacher is None:
        return {"skipped": why_not}, last
    if last is not None:
        predicted = last[1] * len(atoms) / last[0]
        if predicted > TEACHER_MAX_FIRST_STEP_S or last[1] > TEACHER_MAX_FIRST_STEP_S:
            reason = f"first step predicted {predicted:.0f} s (> {TEACHER_MAX_FIRST_STEP_S:.0f} s) from {last[0]} atoms"
            return {"skipped": reason}, last
    first, rate = md_rate(teacher.as_calculator(), atoms, 2 if quick else 5, device)
    if first > TEACHER_MAX_FIRST_STEP_S:
        return {"skipped": f"first step took {first:.0f} s (> {TEACHER_MAX_FIRST_STEP_S:.0f} s)"}, (len(atoms), first)
    return {"steps_per_s": rate, "ns_per_day": rate * 86400 / 1e6, "first_step_s": first}, (len(atoms), first)


def md_line(atoms_count: int, row: dict) -> str:
    parts = [f"MD {atoms_count:>5} atoms:"]
    for name in STUDENTS:
        speedup = row[f"speedup_{name}"]
        ratio = f", {speedup:.1f}x the teacher" if speedup else ""
        parts.append(f"{name} {row[name]['steps_per_s']:.2f} steps/s ({row[name]['ns_per_day']:.3f} ns/day{ratio});")
    teacher = row["teacher"]
    if "skipped" in teacher:
        parts.append(f"teacher skipped: {teacher['skipped']}")
    else:
        parts.append(f"teacher {teacher['steps_per_s']:.3f} steps/s ({teacher['ns_per_day']:.4f} ns/day)")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer frames, steps and repeats (a short CPU run)")
    parser.add_argument("--only", choices=["torchsim", "committee"], help="run one part only")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from ffdistill.devices import resolve
    from ffdistill.errors import FFDistillError

    try:
        device = resolve(args.device, "--device")
    except FFDistillError as error:
        sys.exit(f"throughput: {error}")
    started = time.perf_counter()
    say(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, quick={args.quick}")
    if args.only:
        part = {"torchsim": torchsim_vs_ase, "committee": committee_cost}[args.only]
        print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), **part(device, args.quick)}))
        return
    teacher, why_not = load_sevenn(device)
    report = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    report["quick"] = args.quick
    if teacher is None:
        say(why_not)
        report["labelling"] = {"skipped": why_not}
    else:
        report["teacher"] = f"{teacher.spec} ({teacher.version})"
        report["labelling"] = labelling(teacher, device, args.quick)
    from ffdistill.teachers import load_teacher

    morse = load_teacher("morse", device=device)
    report["rows_vmap_vs_loop"] = {"morse": vmap_vs_loop(morse, "morse", device, args.quick)}
    if teacher is not None:
        report["rows_vmap_vs_loop"]["sevenn"] = vmap_vs_loop(teacher, "sevenn", device, args.quick)
        report["sevenn_batched_vs_looped_forward"] = batched_vs_looped_forward(teacher, device, args.quick)
    report["training"] = training(device, args.quick)
    report["torchsim_vs_ase"] = torchsim_vs_ase(device, args.quick)
    report["committee_cost"] = committee_cost(device, args.quick)
    report["md"] = md(teacher, why_not, device, args.quick)
    report["wall_s"] = time.perf_counter() - started
    print(json.dumps(report))


if __name__ == "__main__":
    main()
