"""Cost of teacher Hessian labels on SevenNet-0: batched VJPs vs a row loop vs finite differences,
and K sampled rows vs the full Hessian. All timings from this one run, on this machine.

    python benchmarks/hessian_labelling.py [--atoms 32|64] [--k 8]

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
from ase.build import bulk

from ffdistill import derivatives
from ffdistill.teachers import load_teacher


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def autograd_rows(teacher, graph, rows, vectorize):
    pred = derivatives.predict(teacher.energy, graph, create_graph=True)
    return derivatives.hessian_rows(pred.forces, pred.positions, rows, vectorize=vectorize)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--atoms", type=int, default=32, choices=[32, 64])
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    teacher = load_teacher("sevenn")
    reps = (2, 2, 1) if args.atoms == 32 else (2, 2, 2)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * reps
    atoms.rattle(0.05, seed=0)
    graph = teacher.graph(atoms)
    n_rows = 3 * len(atoms)
    everything = torch.arange(n_rows)
    sampled = torch.randperm(n_rows, generator=torch.Generator().manual_seed(0))[: args.k]
    autograd_rows(teacher, graph, sampled[:2], vectorize=False)  # warm-up

    t_force, _ = timed(lambda: derivatives.predict(teacher.energy, graph))
    t_loop, h_loop = timed(lambda: autograd_rows(teacher, graph, everything, vectorize=False))
    print(f"full Hessian, row-by-row VJPs: {t_loop:8.2f} s", flush=True)
    t_batched, h_batched = timed(lambda: autograd_rows(teacher, graph, everything, vectorize=True))
    print(f"full Hessian, vmapped VJPs:    {t_batched:8.2f} s", flush=True)
    force_fn = lambda g: derivatives.predict(teacher.energy, g).forces  # noqa: E731
    t_fd, h_fd = timed(lambda: derivatives.fd_hessian_rows(force_fn, graph, everything, h=1e-3))
    print(f"full Hessian, central FD:      {t_fd:8.2f} s", flush=True)
    t_k_loop, _ = timed(lambda: autograd_rows(teacher, graph, sampled, vectorize=False))
    t_k_batched, _ = timed(lambda: autograd_rows(teacher, graph, sampled, vectorize=True))
    best_full = min(t_loop, t_batched)
    best_k = min(t_k_loop, t_k_batched)
    figures = {
        "teacher": teacher.version,
        "atoms": len(atoms),
        "rows_full": n_rows,
        "k": args.k,
        "threads": torch.get_num_threads(),
        "seconds_force_call": t_force,
        "seconds_full_loop": t_loop,
        "seconds_full_batched": t_batched,
        "seconds_full_fd": t_fd,
        "seconds_k_rows_loop": t_k_loop,
        "seconds_k_rows_batched": t_k_batched,
        "batched_vs_loop_speedup": t_loop / t_batched,
        "fd_vs_batched_speedup": t_fd / t_batched,
        "fd_vs_best_autograd_speedup": t_fd / best_full,
        "sampled_rows_cost_fraction": best_k / best_full,
        "k_over_3n": args.k / n_rows,
        "max_abs_diff_batched_vs_loop": float((h_batched - h_loop).abs().max()),
        "max_abs_diff_fd_vs_autograd": float((h_fd - h_loop).abs().max()),
    }
    print(
        f"batched / loop speed-up: {figures['batched_vs_loop_speedup']:.2f}x;  "
        f"FD / batched: {figures['fd_vs_batched_speedup']:.2f}x"
    )
    print(
        f"K = {args.k} rows cost {figures['sampled_rows_cost_fraction']:.3f} of the full Hessian "
        f"(K/3N = {args.k / n_rows:.3f})"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
