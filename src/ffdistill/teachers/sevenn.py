"""SevenNet teachers. SevenNet-0's weights ship inside the sevenn package: no download, ever."""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ffdistill.errors import TeacherError
from ffdistill.graph import AtomicGraph, edge_vectors, structure
from ffdistill.teachers.base import Teacher

#: Names of checkpoints bundled in the sevenn wheel, resolved to files without network access.
BUNDLED = {
    "7net-0": "SEVENNET_0_11Jul2024",
    "sevennet-0": "SEVENNET_0_11Jul2024",
    "7net-0_22may2024": "SEVENNET_0_22May2024",
    "7net-l3i5": "SEVENNET_l3i5",
    "7net-mf-0": "SEVENNET_MF_0",
}


class SevenNetTeacher(Teacher):
    """A SevenNet model evaluated as an energy-only function of positions and cell.

    The model's own force module is removed: forces, stress and Hessian rows come from
    ``ffdistill.derivatives`` like every other model's.
    """

    def __init__(self, name: str = "7net-0", trust: bool = False, modal: str | None = None):
        try:
            import sevenn
            import sevenn._keys as KEY
            from sevenn import _const
            from sevenn.util import load_checkpoint
        except ImportError as error:  # pragma: no cover - sevenn is a core dependency
            raise TeacherError(f"the sevenn package is needed for this teacher: {error}") from error
        path = _resolve(name, _const, trust)
        checkpoint = load_checkpoint(path)
        modal = _check_modal(name, modal, checkpoint.config.get(KEY.MODAL_MAP))
        model = checkpoint.build_model()
        model.set_is_batch_data(False)
        if modal:  # the modal's index as a first module, as sevenn deploys one (plain dicts lack data.x)
            model.prepare_modal_deploy(modal)
        model.delete_module_by_key("force_output")
        model.key_grad = None  # positions carry the gradient, not the model's own edge vectors
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model, self.KEY, self.modal = model, KEY, modal
        # Measured on a 2-core CPU: vmapped rows through e3nn's kernels ran ~3x slower than a loop.
        self.vectorize_rows = False
        self.cutoff = float(checkpoint.config[KEY.CUTOFF])
        self.elements = frozenset(int(z) for z in checkpoint.config[KEY.TYPE_MAP])
        self.spec = "sevenn" if name == "7net-0" else f"sevenn:{name}{'@' + modal if modal else ''}"
        self.version = f"sevenn {sevenn.__version__}, {os.path.basename(os.path.dirname(path))}"

    def _data(self, graph: AtomicGraph, b: int) -> dict:
        K = self.KEY
        sub = structure(graph, b)
        data = {
            K.NODE_FEATURE: sub.Z,
            K.ATOMIC_NUMBERS: sub.Z,
            K.POS: sub.R,
            K.EDGE_IDX: sub.edge_index,
            K.EDGE_VEC: edge_vectors(sub),
            K.CELL_VOLUME: torch.linalg.det(sub.cell[0]).abs(),
            K.NUM_ATOMS: torch.tensor(sub.n_atoms, device=sub.Z.device),
            K.BATCH: sub.batch,
        }
        if self.modal:
            data[K.DATA_MODALITY] = self.modal
        return data

    #: Several structures through the model in one call (sevenn's batch mode) rather than one by one. Off:
    #: measured on a CPU (1 thread, 4 x 64-atom Si, 4 rows each), batch mode took 1.5x as long with Hessian
    #: rows and the same for energy and forces. On a GPU one call per batch should pay; measure it with
    #: benchmarks/throughput.py, which prints which is faster on its device. The two differ by float32
    #: rounding of the energy sum, not in forces or rows.
    batch_structures: bool = False

    def energy(self, graph: AtomicGraph) -> Tensor:
        """(B,) energies, in one model call (``batch_structures``, not multi-modal) or structure by structure."""
        if self.batch_structures and graph.n_structures > 1 and not self.modal:
            return self._batched_energy(graph)
        energies = [
            self.model(self._data(graph, b))[self.KEY.PRED_TOTAL_ENERGY].reshape(()) for b in range(graph.n_structures)
        ]
        return torch.stack(energies)

    def _batched_energy(self, graph: AtomicGraph) -> Tensor:
        K = self.KEY
        data = {
            K.NODE_FEATURE: graph.Z,
            K.ATOMIC_NUMBERS: graph.Z,
            K.POS: graph.R,
            K.EDGE_IDX: graph.edge_index,
            K.EDGE_VEC: edge_vectors(graph),
            K.CELL_VOLUME: torch.linalg.det(graph.cell).abs(),
            K.NUM_ATOMS: graph.atoms_per_structure,
            K.BATCH: graph.batch,
        }
        self.model.set_is_batch_data(True)
        try:
            energy = self.model(data)[K.PRED_TOTAL_ENERGY]
        finally:
            self.model.set_is_batch_data(False)
        return energy

    def element_embeddings(self) -> dict:
        """Rows of SevenNet's one-hot -> feature linear map: one learned vector per element."""
        type_map = {int(z): int(i) for z, i in self.model.type_map.items()}
        weight = self.model._modules["onehot_to_feature_x"].linear.weight.detach().view(len(type_map), -1)
        return {z: weight[i].double().cpu().numpy() for z, i in type_map.items()}

    def node_features(self, graph: AtomicGraph) -> Tensor:
        """Scalar node features entering SevenNet's energy read-out (input of ``reduce_input_to_hidden``)."""
        features = []
        with torch.no_grad():
            for b in range(graph.n_structures):
                data = self._data(graph, b)
                for name, module in self.model._modules.items():
                    if name == "reduce_input_to_hidden":
                        break
                    data = module(data)
                features.append(data[self.KEY.NODE_FEATURE])
        return torch.cat(features)


def _check_modal(name: str, modal: str | None, modal_map: dict | None) -> str | None:
    """The modal (fidelity) of a multi-modal checkpoint, spelled as the checkpoint spells it (matched
    without regard to case, as sevenn's calculator documents); refuse a missing or unknown one."""
    if not modal_map:
        if modal:
            raise TeacherError(f"SevenNet model {name} has a single fidelity: drop @{modal} from the spec")
        return None
    available = ", ".join(sorted(modal_map))
    if not modal:
        raise TeacherError(f"SevenNet model {name} is multi-modal: choose sevenn:{name}@MODAL, one of {available}")
    for key in modal_map:
        if key.casefold() == modal.casefold():
            return key
    raise TeacherError(f"unknown modal {modal!r} for SevenNet model {name}: use one of {available}")


def _resolve(name: str, const, trust: bool) -> str:
    if name.lower() in BUNDLED:
        path = getattr(const, BUNDLED[name.lower()], None)
        if path is None or not os.path.isfile(path):
            raise TeacherError(f"SevenNet checkpoint {name} is not bundled in this sevenn install")
        return path
    if os.path.isfile(name):
        if not trust:
            raise TeacherError(
                f"{name} is a pickled checkpoint that can run code when loaded; pass --trust-teacher if you trust it"
            )
        return name
    raise TeacherError(
        f"unknown SevenNet model {name!r}: use one of {', '.join(sorted(BUNDLED))} or a local checkpoint path"
    )
