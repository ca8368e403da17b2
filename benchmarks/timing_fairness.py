"""Is the teacher/student speed ratio fair under load? The ratio measured with a busy background
process against the ratio measured on a quiet machine, both by the evaluation's interleaved timing
(alternating calls on the same structure, warm-up, fixed torch threads, median), and, for contrast,
by timing the teacher's calls first and the students' afterwards with the load arriving in between.

    python benchmarks/timing_fairness.py [--teacher sevenn] [--busy 1] [--repeats 7]

Target: the loaded ratio within 20 % of the quiet one. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time

import numpy as np
import torch
from ase.build import bulk


def spin(stop) -> None:
    """A busy background process: one core of pure arithmetic until told to stop."""
    x = 0
    while not stop.is_set():
        for k in range(100_000):
            x += k * k


class Background:
    """``n`` busy processes for the duration of a ``with`` block."""

    def __init__(self, n: int):
        self.n, self.stop, self.procs = n, multiprocessing.Event(), []

    def __enter__(self):
        self.procs = [multiprocessing.Process(target=spin, args=(self.stop,), daemon=True) for _ in range(self.n)]
        for p in self.procs:
            p.start()
        time.sleep(0.5)  # let the scheduler see them
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for p in self.procs:
            p.join()


def candidates(teacher_spec: str):
    from ffdistill.evaluate.candidates import Candidate
    from ffdistill.students import build_student
    from ffdistill.teachers import load_teacher

    torch.manual_seed(0)
    student = build_student("painn-small", [14], cutoff=5.0)
    return Candidate.of_teacher(load_teacher(teacher_spec)), Candidate.of_student("painn-small", student)


def interleaved_ratio(teacher, student, atoms, repeats: int) -> float:
    from ffdistill.evaluate.speed import force_call_seconds

    t = force_call_seconds([teacher, student], atoms, repeats=repeats, warmup=1, threads=1)
    return t[teacher.name] / t[student.name]


def sequential_ratio_load_in_between(teacher, student, atoms, repeats: int, busy: int) -> float:
    """The unfair way: the teacher timed on a quiet machine, the student once the load has started."""
    from ffdistill.evaluate.speed import force_call_seconds

    t_teacher = force_call_seconds([teacher], atoms, repeats=repeats, threads=1)[teacher.name]
    with Background(busy):
        t_student = force_call_seconds([student], atoms, repeats=repeats, threads=1)[student.name]
    return t_teacher / t_student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--teacher", default="sevenn", help="teacher spec (a toy such as 'morse' if SevenNet is too slow)"
    )
    parser.add_argument("--busy", type=int, default=1, help="busy background processes")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--trials", type=int, default=3, help="quiet/busy pairs, alternated")
    args = parser.parse_args()
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    atoms.rattle(0.03, seed=0)
    teacher, student = candidates(args.teacher)
    started = time.perf_counter()
    quiet, busy = [], []
    for _ in range(args.trials):
        quiet.append(interleaved_ratio(teacher, student, atoms, args.repeats))
        with Background(args.busy):
            busy.append(interleaved_ratio(teacher, student, atoms, args.repeats))
        print(f"quiet {quiet[-1]:.2f}×  busy {busy[-1]:.2f}×", flush=True)
    naive = sequential_ratio_load_in_between(teacher, student, atoms, args.repeats, args.busy)
    ratio_quiet, ratio_busy = float(np.median(quiet)), float(np.median(busy))
    change = abs(ratio_busy / ratio_quiet - 1)
    figures = {
        "teacher": teacher.teacher.spec,
        "student": "painn-small",
        "atoms": len(atoms),
        "threads": 1,
        "busy_processes": args.busy,
        "repeats": args.repeats,
        "trials": args.trials,
        "ratio_quiet": ratio_quiet,
        "ratio_busy": ratio_busy,
        "relative_change": change,
        "within_20_percent": change <= 0.2,
        "ratio_sequential_load_in_between": naive,
        "sequential_relative_change": abs(naive / ratio_quiet - 1),
        "wall_s": time.perf_counter() - started,
    }
    print(
        f"interleaved: quiet {ratio_quiet:.2f}×, busy {ratio_busy:.2f}× ({100 * change:.0f} % apart); "
        f"sequential with load in between: {naive:.2f}×"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
