"""The data of the potential contract: what a potential can give (``Capabilities``), what a caller asks for
(``Want``), what a potential computes itself (``Raw``) and what ``predict`` returns (``Outputs``).

Apart from ``potential`` so that ``derivatives`` (which builds ``Outputs``) and ``potential`` (whose ``predict``
calls ``derivatives``) do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

#: How a potential's second derivatives are taken.
SECOND_DERIVATIVES = ("autograd", "forward-difference", "central-difference")


@dataclass(frozen=True)
class Capabilities:
    """What a potential can give, declared once; ``derivatives.evaluate`` and ``testing`` read it."""

    #: "conservative": forces are -dE/dR (by autograd, or given by the model and consistent with E);
    #: "direct": a force head, not the gradient of the energy head.
    forces: str = "conservative"
    #: "autograd" (VJPs through the model), "forward-difference" (direct students, step ``fd_step``) or
    #: "central-difference" (models without an autograd graph, e.g. an ASE calculator; step ``fd_step``).
    second_derivatives: str = "autograd"
    #: stress for cells periodic in three directions
    stress: bool = True
    #: per-atom node features (feature-distillation baselines)
    features: bool = False

    def __post_init__(self):
        if self.forces not in ("conservative", "direct"):
            raise ValueError(f"forces must be 'conservative' or 'direct', got {self.forces!r}")
        if self.second_derivatives not in SECOND_DERIVATIVES:
            raise ValueError(f"second_derivatives must be one of {SECOND_DERIVATIVES}, got {self.second_derivatives!r}")

    @property
    def direct(self) -> bool:
        return self.forces == "direct"

    @property
    def autograd(self) -> bool:
        """Whether the model's outputs carry an autograd graph in positions."""
        return self.second_derivatives != "central-difference"


class Want(NamedTuple):
    """Which outputs to compute. Energy is always given."""

    forces: bool = True
    stress: bool = False  #: only for cells periodic in three directions (NaN otherwise)
    hessian_rows: bool = False  #: the rows ``graph.row_index``
    probe_products: bool = False  #: H·v along ``graph.probe_vectors``
    features: bool = False  #: (N, D) node features
    conservative_forces: bool = False  #: -dE/dR of a direct-force model's energy head
    #: outputs keep their autograd graph (training: the loss is differentiated through them)
    differentiable: bool = False


class Outputs(NamedTuple):
    """Named outputs of ``predict``; fields not asked for (or not applicable) are None."""

    energy: Tensor  #: (B,) eV
    forces: Tensor | None = None  #: (N, 3) eV/Å
    hessian_rows: Tensor | None = None  #: (K, N, 3) eV/Å², the rows ``graph.row_index``
    features: Tensor | None = None  #: (N, D)
    conservative_forces: Tensor | None = None  #: (N, 3) -dE/dR of a direct-force model's energy head
    probe_products: Tensor | None = None  #: (P, N, 3) eV/Å²
    stress: Tensor | None = None  #: (B, 3, 3) eV/Å³, ASE's sign


class Raw(NamedTuple):
    """What a model's ``compute`` gives: energies, and forces/stress only if the model predicts them
    itself (direct-force heads, calculators); derivatives of the energy are ``evaluate``'s job."""

    energy: Tensor  #: (B,)
    forces: Tensor | None = None
    stress: Tensor | None = None
    features: Tensor | None = None
