"""The one contract every potential answers through, teacher or student.

``potential.predict(graph, want)`` returns ``Outputs``: the outputs ``want`` names, the rest None. A
potential implements only ``compute(graph, want) -> Raw`` (what the model itself gives: an energy, and
forces only if it predicts them) and declares its ``Capabilities``; everything derived (forces of an
energy model, stress, Hessian rows, Hessian-vector products) is taken in ``ffdistill.derivatives.evaluate``
and nowhere else, so signs and units live in one place:

    F = -dE/dR,  sigma = (1/V) dE/d(strain),  hessian_rows[k] = -dF/dR_r (row r = row_index[k]),
    probe_products[p] = -(dF/dR) v_p.

For a conservative model -dF/dR is the symmetric Hessian. For a direct-force model it is the negative
force Jacobian, which is not symmetric: ffdistill uses its *columns* -dF/dR_r, which is what finite
differences of the forces along coordinate r give. Hessian rows are the ones in ``graph.row_index``,
probes the vectors in ``graph.probe_vectors`` (``probe_owner`` says whose structure each belongs to).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

from ffdistill.graph import AtomicGraph

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


class Potential:
    """Mixin for teachers and students: set ``capabilities`` and ``cutoff``, implement ``compute``."""

    capabilities: Capabilities = Capabilities()
    cutoff: float = 5.0
    #: finite-difference step (Å) when second derivatives are not by autograd
    fd_step: float = 1e-3
    #: Hessian rows in one vmapped call (True) or one by one; vmap pays on GPUs, not always on CPUs
    vectorize_rows: bool = True

    def compute(self, graph: AtomicGraph, want: Want) -> Raw:
        raise NotImplementedError

    def predict(self, graph: AtomicGraph, want: Want = Want()) -> Outputs:
        from ffdistill import derivatives

        return derivatives.evaluate(self, graph, want)

    def energy(self, graph: AtomicGraph) -> Tensor:
        """(B,) energies, differentiable in positions and cell when the model is."""
        return self.compute(graph, Want(forces=False)).energy

    def check_elements(self, numbers) -> None:
        """Refuse elements the potential does not cover (one clear line); by default all are covered."""
