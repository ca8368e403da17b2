"""Students and committees as torch-sim models (``torch-sim-atomistic`` 0.3.0, its ``ModelInterface``): batched
MD, relaxation and screening of many systems at once, through the same ``AtomicGraph`` and ``Potential.predict``
as every other engine.

    import torch_sim as ts
    from ffdistill.deploy.torchsim import StudentModel

    model = StudentModel("run/best.pt")                     # or a committee.pt
    state = ts.io.atoms_to_state(list_of_atoms, model.device, model.dtype)
    final = ts.integrate(state, model, integrator=ts.nvt_langevin, n_steps=1000, temperature=300, timestep=0.001)

Conventions at this boundary: torch-sim's cells are column vectors (``state.row_vector_cell`` is ASE's); energy
(n_systems,) eV, forces (n_atoms, 3) eV/Å, stress (n_systems, 3, 3) eV/Å³ with ASE's sign. A committee adds
``force_deviation`` (n_atoms,) eV/Å. Neighbour lists are built per system by vesin each call.
"""

from __future__ import annotations

import ase
import torch

from ffdistill.devices import resolve
from ffdistill.graph import AtomicGraph, batch_graphs, from_ase
from ffdistill.potential import Want

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
except ImportError as error:  # an optional engine: say what to install, once, when it is asked for
    needs = "the torch-sim adapter needs torch-sim-atomistic==0.3.0 (pip install ffdistill[torchsim])"
    raise ImportError(needs) from error


class StudentModel(ModelInterface):
    """A saved student or committee (a path, or the loaded module) as a torch-sim model."""

    def __init__(self, model, device: str | torch.device = "auto", dtype: torch.dtype = torch.float32):
        super().__init__()
        from ffdistill.calculator import load_student

        self._device, self._dtype = resolve(device, "device"), dtype
        model = load_student(model) if isinstance(model, str) else model
        self.potential = model.to(device=self._device, dtype=dtype).eval()
        for p in self.potential.parameters():
            p.requires_grad_(False)
        self._compute_forces = True
        self._compute_stress = bool(self.potential.capabilities.stress)
        self._memory_scales_with = "n_atoms_x_density"

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        if isinstance(state, dict):
            state = ts.SimState(**state, masses=torch.ones_like(state["positions"]))
        graph = graph_of_state(state, self.potential.cutoff).to(self._device, self._dtype)
        want = Want(stress=self._compute_stress and bool(state.pbc))
        if hasattr(self.potential, "predict_with_uncertainty"):
            out, extra = self.potential.predict_with_uncertainty(graph, want)
        else:
            out, extra = self.potential.predict(graph, want), {}
        results = {"energy": out.energy.detach(), "forces": out.forces.detach()}
        if want.stress:
            results["stress"] = out.stress.detach()
        results.update({k: v.detach() for k, v in extra.items()})
        return results


def graph_of_state(state, cutoff: float) -> AtomicGraph:
    """The batched ``AtomicGraph`` of a torch-sim state: one structure per system, ASE's row-vector cells."""
    positions = state.positions.detach().double().cpu().numpy()
    numbers = state.atomic_numbers.cpu().numpy()
    cells = state.row_vector_cell.detach().double().cpu().numpy()
    owner = state.system_idx.cpu().numpy()
    graphs = []
    for b in range(state.n_systems):
        mine = owner == b
        atoms = ase.Atoms(numbers[mine], positions[mine], cell=cells[b], pbc=bool(state.pbc))
        graphs.append(from_ase(atoms, cutoff, dtype=torch.float64, labels=False))
    return batch_graphs(graphs)
