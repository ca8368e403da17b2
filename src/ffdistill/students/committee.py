"""A committee: K students that differ only in their seed, used as one potential with an uncertainty.

Energy, forces and stress are the members' means. The spread of the members' forces is the uncertainty, with
one definition for MD, on-policy distillation and evaluation (F_ik: member k's force on atom i, F̄_i their
mean, s the calibration scale)::

    per-atom deviation   d_i = s · sqrt( (1/K) Σ_k |F_ik − F̄_i|² )      eV/Å
    frame deviation      max_i d_i
    frame error          max_i |F̄_i − F_i^ref|                          eV/Å, the same form against a reference

The members are seeded alike on few frames, so their raw spread is too small (overconfident). ``calibrate``
fits s on validation frames as the maximum-likelihood scale of a Gaussian per force component with variance
s² d_i²/3 (d_i at s = 1): s² = mean over atoms of |F̄_i − F_i^ref|² / d_i². Cost: K force calls per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ffdistill.errors import InputError
from ffdistill.graph import AtomicGraph
from ffdistill.potential import Outputs, Potential, Raw, Want

#: smallest deviation used as a divisor (eV/Å): identical members would otherwise divide by zero
TINY = 1e-12


class Committee(nn.Module, Potential):
    """K students as one ``Potential``: ``predict`` gives the members' means, ``predict_with_uncertainty`` adds
    the per-atom force deviation and the energy's standard deviation over members."""

    arch = "committee"

    def __init__(self, members: Sequence[nn.Module], scale: float = 1.0):
        super().__init__()
        if len(members) < 2:
            raise InputError(f"a committee needs at least 2 members, got {len(members)}")
        first = members[0]
        for m in members[1:]:
            if m.elements != first.elements or m.cutoff != first.cutoff or m.arch != first.arch:
                raise InputError("committee members must share architecture, elements and cutoff")
        self.members = nn.ModuleList(members)
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float64))
        self.elements, self.cutoff, self.capabilities = first.elements, first.cutoff, first.capabilities

    def compute(self, graph: AtomicGraph, want: Want) -> Raw:
        """Mean energy (and mean force head, for direct-force members): what an export traces."""
        raws = [m.compute(graph, want) for m in self.members]
        forces = None if raws[0].forces is None else torch.stack([r.forces for r in raws]).mean(0)
        return Raw(torch.stack([r.energy for r in raws]).mean(0), forces=forces)

    def predict(self, graph: AtomicGraph, want: Want = Want()) -> Outputs:
        return self.predict_with_uncertainty(graph, want)[0]

    def predict_with_uncertainty(self, graph: AtomicGraph, want: Want = Want()) -> tuple[Outputs, dict]:
        """The members' mean outputs, and ``{"force_deviation": (N,), "energy_std": (B,)}`` (calibrated)."""
        outs = [m.predict(graph, want._replace(forces=True)) for m in self.members]
        mean = Outputs(*(None if x is None else torch.stack(x).mean(0) for x in _fields(outs)))
        forces = torch.stack([o.forces for o in outs])
        energies = torch.stack([o.energy for o in outs])
        extra = {
            "force_deviation": self.scale.to(forces.dtype) * per_atom_deviation(forces),
            "energy_std": self.scale.to(energies.dtype) * energies.std(0, unbiased=False),
        }
        return mean, extra

    def check_elements(self, numbers) -> None:
        self.members[0].check_elements(numbers)

    def constructor_args(self) -> dict:
        return self.members[0].constructor_args()

    def n_parameters(self) -> int:
        return sum(m.n_parameters() for m in self.members)


def _fields(outs: list[Outputs]) -> list[list[Tensor] | None]:
    return [None if getattr(outs[0], f) is None else [getattr(o, f) for o in outs] for f in Outputs._fields]


def per_atom_deviation(forces: Tensor) -> Tensor:
    """(N,) sqrt of the mean over members of |F_k − F̄|², from (K, N, 3) member forces (uncalibrated)."""
    return (forces - forces.mean(0)).pow(2).sum(-1).mean(0).sqrt()


def frame_deviation(deviation: np.ndarray) -> float:
    """A frame's deviation: the largest per-atom deviation."""
    return float(np.max(deviation))


def frame_error(forces: np.ndarray, reference: np.ndarray) -> float:
    """A frame's error, defined like its deviation: the largest per-atom force error norm."""
    return float(np.linalg.norm(np.asarray(forces) - np.asarray(reference), axis=-1).max())


def calibration_scale(errors: np.ndarray, deviations: np.ndarray) -> float:
    """Maximum-likelihood s from per-atom force error vectors (M, 3) and uncalibrated deviations (M,)."""
    squared = np.sum(np.asarray(errors, dtype=float) ** 2, axis=-1)
    return float(np.sqrt(np.mean(squared / np.maximum(np.asarray(deviations, dtype=float), TINY) ** 2)))
