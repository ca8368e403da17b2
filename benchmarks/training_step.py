"""Cost of the Hessian term in a training step: one step with s = 1 Hessian row per structure
divided by an undistilled step on the same batch (painn-small, 4 x 64-atom Si).

    python benchmarks/training_step.py

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import json
import statistics
import time

import torch
from ase.build import bulk

from ffdistill.graph import batch_graphs
from ffdistill.loss import build_loss
from ffdistill.sampling import select_rows
from ffdistill.students import build_student
from ffdistill.teachers.toy import morse_teacher
from ffdistill.train import train_step


def labelled_batch(n_structures: int = 4, rows: int = 4):
    teacher = morse_teacher()  # labels only need the right shapes; timing does not depend on values
    graphs = []
    for k in range(n_structures):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
        atoms.rattle(0.05, seed=k)
        labels = teacher.label(atoms, rows=list(range(rows)))
        graph = teacher.graph(atoms).to("cpu", dtype=torch.float32)
        as_t = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
        graphs.append(graph._replace(cutoff=5.0, energy=as_t([labels.energy]), forces=as_t(labels.forces), hessian_rows=as_t(labels.hessian_rows), row_index=torch.as_tensor(labels.row_index)))
    return graphs


def median_step_seconds(model, batch, loss, repeats: int = 15) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(3):
        train_step(model, batch, loss, optimizer, 10.0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        train_step(model, batch, loss, optimizer, 10.0)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    graphs = labelled_batch()
    generator = torch.Generator().manual_seed(0)
    batch = batch_graphs([select_rows(g, 1, generator) for g in graphs])
    elements = [14]
    torch.manual_seed(0)
    model = build_student("painn-small", elements)
    t_plain = median_step_seconds(model, batch, build_loss(5.0, 100.0, 0.0))
    t_hessian = median_step_seconds(model, batch, build_loss(5.0, 100.0, 100.0))
    figures = {
        "student": "painn-small",
        "parameters": model.n_parameters(),
        "structures_per_batch": batch.n_structures,
        "atoms_per_structure": graphs[0].n_atoms,
        "rows_per_structure": 1,
        "threads": torch.get_num_threads(),
        "seconds_undistilled_step": t_plain,
        "seconds_hessian_step": t_hessian,
        "hessian_step_cost_ratio": t_hessian / t_plain,
    }
    print(f"undistilled step {1000 * t_plain:.1f} ms, Hessian step {1000 * t_hessian:.1f} ms: ratio {figures['hessian_step_cost_ratio']:.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
