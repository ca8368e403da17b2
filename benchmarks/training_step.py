"""Cost of the Hessian term in a training step: one step with s = 1 Hessian row per structure
divided by an undistilled step on the same batch (painn-small, 4 x 64-atom Si), for each way of taking
the student's rows: ``autograd`` (a VJP of the forces, so training pays a double backward) and ``fd``
(forward differences of the forces, one more force evaluation per wave of rows), with the rows of the two
compared. Steps are interleaved (plain, autograd, fd, plain, ...) and timed by this process's CPU time
(one thread), so load from other processes does not land on one method more than another.

    python benchmarks/training_step.py

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import json
import statistics
import time

import torch
from ase.build import bulk

from ffdistill.data.sampling import select_rows
from ffdistill.graph import batch_graphs
from ffdistill.potential import Want
from ffdistill.students import build_student
from ffdistill.teachers.toy import morse_teacher
from ffdistill.training.loss import build_loss
from ffdistill.training.trainer import train_step


def labelled_batch(n_structures: int = 4, rows: int = 4):
    teacher = morse_teacher()  # labels only need the right shapes; timing does not depend on values
    graphs = []
    for k in range(n_structures):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
        atoms.rattle(0.05, seed=k)
        labels = teacher.label(atoms, rows=list(range(rows)))
        graph = teacher.graph(atoms).to("cpu", dtype=torch.float32)
        as_t = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
        graphs.append(
            graph._replace(
                cutoff=5.0,
                energy=as_t([labels.energy]),
                forces=as_t(labels.forces),
                hessian_rows=as_t(labels.hessian_rows),
                row_index=torch.as_tensor(labels.row_index),
            )
        )
    return graphs


def interleaved_step_seconds(cases: dict, batch, repeats: int = 15) -> dict:
    """CPU seconds of each training step of each (model, loss) case, the cases taking turns (one round: each case
    once), after 3 warm-up rounds."""
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, (model, _) in cases.items()}
    times = {name: [] for name in cases}
    for k in range(repeats + 3):
        for name, (model, loss) in cases.items():
            start = time.process_time()
            train_step(model, batch, loss, optimizers[name], 10.0)
            if k >= 3:  # warm-up
                times[name].append(time.process_time() - start)
    return times


def row_difference(batch, fd_step: float) -> tuple[float, float]:
    """Max |rows_fd - rows_autograd| and max |rows| of one student on the batch (float32)."""
    torch.manual_seed(0)
    model = build_student("painn-small", [14])
    with torch.no_grad():  # a trained-looking read-out, not the zero one a fresh student starts with
        for p in model.readout.parameters():
            p.normal_(0.0, 0.3)
    want = Want(hessian_rows=True)
    exact = model.predict(batch, want).hessian_rows
    model.set_jacobian("fd", fd_step)
    approx = model.predict(batch, want).hessian_rows
    return float((approx - exact).abs().max()), float(exact.abs().max())


def _quartiles(values) -> list[float]:
    q = statistics.quantiles(values, n=4)
    return [round(min(values), 3), round(q[0], 3), round(q[1], 3), round(q[2], 3), round(max(values), 3)]


def main() -> None:
    torch.set_num_threads(1)
    graphs = labelled_batch()
    generator = torch.Generator().manual_seed(0)
    batch = batch_graphs([select_rows(g, 1, generator) for g in graphs])
    cases = {}
    for name, jacobian, weight in (
        ("undistilled", "autograd", 0.0),
        ("autograd", "autograd", 100.0),
        ("fd", "fd", 100.0),
    ):
        torch.manual_seed(0)
        model = build_student("painn-small", [14])
        model.set_jacobian(jacobian, FD_STEP)
        cases[name] = (model, build_loss(5.0, 100.0, weight))
    times = interleaved_step_seconds(cases, batch)
    seconds = {name: statistics.median(t) for name, t in times.items()}
    # the spread: each round's ratio (the cases of one round ran back to back, under the same load)
    rounds = {m: [h / u for h, u in zip(times[m], times["undistilled"])] for m in ("autograd", "fd")}
    error, scale = row_difference(batch, FD_STEP)
    figures = {
        "student": "painn-small",
        "parameters": cases["undistilled"][0].n_parameters(),
        "structures_per_batch": batch.n_structures,
        "atoms_per_structure": graphs[0].n_atoms,
        "rows_per_structure": 1,
        "threads": torch.get_num_threads(),
        "cpu_seconds_undistilled_step": seconds["undistilled"],
        "cpu_seconds_hessian_step_autograd": seconds["autograd"],
        "cpu_seconds_hessian_step_fd": seconds["fd"],
        "hessian_step_cost_ratio_autograd": seconds["autograd"] / seconds["undistilled"],
        "hessian_step_cost_ratio_fd": seconds["fd"] / seconds["undistilled"],
        "rounds": len(times["undistilled"]),
        **{f"hessian_step_cost_ratio_{m}_per_round_quartiles": _quartiles(r) for m, r in rounds.items()},
        "fd_step_A": FD_STEP,
        "fd_rows_max_error_eV_A2": error,
        "rows_max_abs_eV_A2": scale,
    }
    best = min(("autograd", "fd"), key=lambda m: figures[f"hessian_step_cost_ratio_{m}"])
    figures["hessian_step_cost_ratio"] = figures[f"hessian_step_cost_ratio_{best}"]
    figures["fastest"] = best
    print(
        f"CPU ms per step: undistilled {1000 * seconds['undistilled']:.1f}, autograd rows "
        f"{1000 * seconds['autograd']:.1f} ({figures['hessian_step_cost_ratio_autograd']:.2f}x), fd rows "
        f"{1000 * seconds['fd']:.1f} ({figures['hessian_step_cost_ratio_fd']:.2f}x); fd rows within {error:.1e} "
        f"of autograd (largest row entry {scale:.2f} eV/Å²)"
    )
    print(json.dumps(figures))


#: forward-difference step (Å) for the ``fd`` rows
FD_STEP = 1e-3


if __name__ == "__main__":
    main()
