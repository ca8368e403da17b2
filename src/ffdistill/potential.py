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

from torch import Tensor

from ffdistill.contract import SECOND_DERIVATIVES, Capabilities, Outputs, Raw, Want
from ffdistill.graph import AtomicGraph

__all__ = ["SECOND_DERIVATIVES", "Capabilities", "Outputs", "Potential", "Raw", "Want"]


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
