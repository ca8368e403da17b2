"""Fair timing: every model timed on the same structure, calls interleaved (teacher, student, teacher,
…) so that a background load or a CPU clock change hits all of them alike, after warm-up, at a fixed
torch thread count, and summarised by the median.

A force call is what MD pays per step: the ASE calculator on a structure it has not seen (graph and
neighbour list included), so nothing is served from a cache.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence

import ase
import numpy as np
import torch

#: Sizes for the cost-growth curve (atoms).
GROWTH_SIZES = (64, 512, 4096)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` intra-op threads (None: leave as is)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _probe(candidate, atoms: ase.Atoms) -> ase.Atoms:
    probe = atoms.copy()
    probe.calc = candidate.calculator()
    return probe


def _timed_call(probe: ase.Atoms, nudge: float) -> float:
    probe.positions[0, 0] += nudge  # a new structure each call: no cached result is reused
    start = time.perf_counter()
    probe.get_forces()
    return time.perf_counter() - start


def force_call_seconds(
    candidates: Sequence,
    atoms: ase.Atoms,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    skip: Sequence[str] = (),
) -> dict[str, float]:
    """Median seconds per force call of each candidate, calls interleaved round by round; the order
    within a round rotates so no model always runs first after an idle gap."""
    active = [c for c in candidates if c.name not in skip]
    if not active:
        return {}
    probes = {c.name: _probe(c, atoms) for c in active}
    times: dict[str, list] = {c.name: [] for c in active}
    with torch_threads(threads):
        for k in range(warmup + repeats):
            rotation = k % len(active)
            for c in active[rotation:] + active[:rotation]:
                t = _timed_call(probes[c.name], 1e-4 * (-1) ** k)
                if k >= warmup:
                    times[c.name].append(t)
    return {name: float(np.median(t)) for name, t in times.items()}


def md_rates(
    candidates: Sequence,
    atoms: ase.Atoms,
    steps: dict[str, int],
    blocks: int = 3,
    threads: int | None = None,
    timestep_fs: float = 1.0,
) -> dict[str, dict]:
    """Velocity Verlet steps/s and ns/day of each candidate: blocks of ``steps[name]`` steps, the
    candidates' blocks interleaved, median over blocks (after one warm-up step each)."""
    from ffdistill.evaluate.md import dynamics, thermalised

    runs = {
        c.name: dynamics(thermalised(atoms, c.calculator(), 300.0, 0), "nve", 300.0, timestep_fs) for c in candidates
    }
    rates: dict[str, list] = {name: [] for name in runs}
    with torch_threads(threads):
        for dyn in runs.values():
            dyn.run(1)
        for _ in range(blocks):
            for name, dyn in runs.items():
                start = time.perf_counter()
                dyn.run(steps[name])
                rates[name].append(steps[name] / (time.perf_counter() - start))
    return {name: _rate(float(np.median(r)), timestep_fs) for name, r in rates.items()}


def _rate(steps_per_second: float, timestep_fs: float) -> dict:
    return {"md_steps_per_second": steps_per_second, "ns_per_day": steps_per_second * timestep_fs * 86400 / 1e6}


def replicas(atoms: ase.Atoms, target: int) -> int:
    """Repeats per periodic direction to bring ``atoms`` closest to ``target`` atoms."""
    return max(1, int(round((target / len(atoms)) ** (1 / 3))))


def cost_growth(
    candidates: Sequence,
    atoms: ase.Atoms,
    sizes: Sequence[int] = GROWTH_SIZES,
    repeats: int = 5,
    threads: int | None = None,
    max_call_s: float = 20.0,
) -> dict[str, dict]:
    """Seconds per force call against system size (periodic cells replicated towards ``sizes``).

    A model is dropped from the next size when its predicted call (linear in N from this size)
    would exceed ``max_call_s``; it then says how far it went."""
    if not all(atoms.pbc):
        return {}
    growth: dict[str, dict] = {c.name: {} for c in candidates}
    dropped: set = set()
    for target in sizes:
        if len(dropped) == len(candidates):
            break
        big = atoms * ((replicas(atoms, target),) * 3)
        times = force_call_seconds(candidates, big, repeats=repeats, threads=threads, skip=dropped)
        for name, t in times.items():
            growth[name][str(len(big))] = t
            next_size = _next(sizes, target)
            if next_size and t * next_size / len(big) > max_call_s:
                dropped.add(name)
    return growth


def _next(sizes: Sequence[int], current: int) -> int | None:
    later = [s for s in sizes if s > current]
    return later[0] if later else None
