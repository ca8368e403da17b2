"""Semi-empirical tight binding (GFN1-xTB, optionally GFN2-xTB) by dxtb as an autograd teacher for molecules.

dxtb (https://github.com/grimme-lab/dxtb) writes the whole xTB calculation, SCF included, in torch:
forces and Hessian rows come from ``ffdistill.derivatives`` by autograd through every SCF iteration,
like any other energy model's. Install: ``pip install -e ".[dxtb]"`` (or ``".[test]"``), then
``pip install --no-deps -r requirements-dxtb.txt`` (dxtb's exact pins declare numpy<2; that file says why).
"""

from __future__ import annotations

import ase.units
import torch
from torch import Tensor

from ffdistill.errors import TeacherError
from ffdistill.graph import AtomicGraph
from ffdistill.teachers.base import Teacher

#: dxtb options set explicitly (dxtb 0.4.0 names; see ``dxtb.config.Config``).
SCF_OPTIONS = {
    # Autograd through every SCF iteration. dxtb's "implicit" mode (implicit function theorem) gives
    # right forces but wrong second derivatives: 1.8 eV/Å² off on ethanol's Hessian rows (dxtb 0.4.0).
    "scf_mode": "full",
    "scp_mode": "potential",  # the self-consistent quantity: the atomic/shell potential
    "mixer": "broyden",
    "damp": 0.5,
    "maxiter": 250,
    # Converged when the change of the potential between iterations has L2 norm < x_atol and largest
    # entry < x_atol_max (atomic units). Measured on ethanol: tightening all three to 1e-12 moved the
    # energy by 1e-13 eV, forces by 5e-14 eV/Å and Hessian rows by 5e-12 eV/Å².
    "x_atol": 1e-9,
    "x_atol_max": 1e-9,
    "f_atol": 1e-9,
    "force_convergence": True,  # an SCF that does not converge raises, and the structure is refused
    "fermi_etemp": 300.0,  # K, Fermi smearing of the occupations (the xtb program's default)
    "guess": "eeq",
    # dxtb caches results under the tensors' data pointers, which the allocator reuses between
    # displaced structures: a cached result could be returned for other positions. Off.
    "cache_enabled": False,
    "verbosity": 0,
}

METHODS = ("gfn1", "gfn2")


class DXTBTeacher(Teacher):
    """GFN1-xTB (``dxtb``, ``dxtb:gfn1``) or GFN2-xTB (``dxtb:gfn2``, needs tad-libcint) by dxtb, in float64.

    Molecules only: periodic structures are refused (dxtb 0.4.0 has no periodic boundary conditions).
    Neutral molecules (total charge 0); open shells are handled by the Fermi smearing, not by a spin
    multiplicity. Positions go to dxtb in Bohr and energies come back in Hartree: the teacher speaks
    eV and Å like every other. The SCF runs to the tolerances in ``SCF_OPTIONS`` (``scf_mode="full"``,
    potential change < 1e-9 a.u. in L2 and max norm, at most 250 Broyden iterations, 300 K Fermi
    smearing); a structure whose SCF does not converge raises ``TeacherError``.
    """

    has_autograd = True
    #: dxtb can run on GPUs, but its calculators are built for the CPU here and this has not been tested elsewhere
    cpu_only = "dxtb calculators are built on the CPU"
    dtype = torch.float64
    #: The energy uses no edges; keep the graph's neighbour list cheap.
    cutoff = 1.0
    #: One SCF per structure; vmap does not pass through dxtb's SCF loop.
    vectorize_rows = False
    elements = frozenset(range(1, 87))  # H to Rn, both parametrisations

    def __init__(self, method: str = "gfn1"):
        method = method.lower()
        if method not in METHODS:
            raise TeacherError(f"unknown dxtb method {method!r}: use dxtb:gfn1 or dxtb:gfn2")
        try:
            import dxtb
        except ImportError as error:
            message = f"the dxtb teacher needs dxtb (pip install --no-deps -r requirements-dxtb.txt): {error}"
            raise TeacherError(message) from error
        if method == "gfn2":
            try:
                import tad_libcint  # noqa: F401 - GFN2's multipole integrals
            except ImportError as error:
                message = f"dxtb:gfn2 needs tad-libcint (pip install --no-deps tad-libcint==0.3.0): {error}"
                raise TeacherError(message) from error
        self._dxtb, self.method = dxtb, method
        self._calculators: dict[tuple[int, ...], object] = {}
        self.spec = "dxtb" if method == "gfn1" else f"dxtb:{method}"
        self.version = f"dxtb {dxtb.__version__}, {method.upper()}-xTB"

    def calculator(self, numbers: Tensor):
        """dxtb's calculator for one molecule's atomic numbers, reset to its initial state.

        Building one costs 0.1-0.4 s, so the last one is kept for the next call; but dxtb 0.4.0 keeps
        state from a differentiable call that makes the next call's gradients wrong (ethanol: forces off
        by 0.5 eV/Å on the second call, energies right), so it is reset before every use.
        """
        key = tuple(int(z) for z in numbers)
        if key not in self._calculators:
            calculators = self._dxtb.calculators
            factory = calculators.GFN1Calculator if self.method == "gfn1" else calculators.GFN2Calculator
            self._calculators = {key: factory(numbers.cpu(), opts=dict(SCF_OPTIONS), dtype=torch.float64)}
        calc = self._calculators[key]
        calc.reset()
        self._dxtb.OutputHandler.verbosity = SCF_OPTIONS["verbosity"]  # a global, which any other calculator sets
        return calc

    def energy(self, graph: AtomicGraph) -> Tensor:
        """(B,) total energies in eV, differentiable in ``graph.R`` (Å) through the SCF."""
        if bool(graph.pbc.any()):
            raise TeacherError(f"teacher {self.spec} handles molecules only: periodic structures are refused")
        energies = []
        for b in range(graph.n_structures):
            lo, hi = int(graph.ptr[b]), int(graph.ptr[b + 1])
            calc = self.calculator(graph.Z[lo:hi])
            positions = graph.R[lo:hi].to(torch.float64) / ase.units.Bohr
            try:
                energy = calc.get_energy(positions, chrg=0)
            except Exception as error:  # SCFConvergenceError and friends: say which teacher broke
                message = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise TeacherError(f"teacher {self.spec} failed: {message}") from error
            energies.append(energy.reshape(()) * ase.units.Hartree)
        return torch.stack(energies).to(graph.R.dtype)
