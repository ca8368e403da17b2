"""ASE calculator for a student exported by ``ffdistill export`` — needs torch, numpy and ASE only.

from standalone_calculator import ExportedStudent
atoms.calc = ExportedStudent("student.pt")
"""

import json

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.neighborlist import neighbor_list


class ExportedStudent(Calculator):
    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, path, **kwargs):
        super().__init__(**kwargs)
        extra = {"ffdistill.json": ""}
        self.model = torch.jit.load(path, _extra_files=extra)
        meta = json.loads(extra["ffdistill.json"])
        self.cutoff, self.elements = meta["cutoff"], set(meta["elements"])
        # A direct-force student returns (E, F) from its force head; others return E, forces by autograd.
        self.direct = meta.get("forces") == "direct"

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        unknown = set(self.atoms.numbers.tolist()) - self.elements
        if unknown:
            raise ValueError(f"the exported student does not know atomic numbers {sorted(unknown)}")
        i, j, S = neighbor_list("ijS", self.atoms, self.cutoff)
        order = np.lexsort((j, i))
        R = torch.tensor(self.atoms.positions, dtype=torch.float32, requires_grad=not self.direct)
        inputs = (
            torch.tensor(self.atoms.numbers, dtype=torch.long),
            R,
            torch.tensor(np.asarray(self.atoms.cell), dtype=torch.float32),
            torch.tensor(np.stack([i[order], j[order]]), dtype=torch.long),
            torch.tensor(S[order], dtype=torch.float32),
        )
        # The profiling executor specialises a traced graph after its first call, and the specialised graph's
        # backward fails on the next one ("tensor does not have a device"): run it unoptimised, as traced.
        with torch.jit.optimized_execution(False):
            if self.direct:
                with torch.no_grad():
                    energy, forces = self.model(*inputs)
            else:
                energy = self.model(*inputs)
                forces = -torch.autograd.grad(energy, R)[0]
        energy = float(energy.detach())
        self.results = {"energy": energy, "free_energy": energy, "forces": forces.detach().double().numpy()}
