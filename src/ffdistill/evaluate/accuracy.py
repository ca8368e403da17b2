"""Accuracy against labelled frames, and the one way to load a test set.

A test set is kept as structures plus labels, not as graphs: every model gets graphs built at its
own cutoff and dtype, so no radius is assumed for anyone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import ase
import numpy as np
import torch

from ffdistill.graph import AtomicGraph, batch_graphs, from_ase, to_ase
from ffdistill.potential import Want

#: Label fields carried from the store to every model's graphs.
LABELS = ("energy", "forces", "stress", "hessian_rows", "row_index")


def accuracy(model, graphs: Sequence[AtomicGraph], batch_size: int = 4, hessian: bool = True) -> dict[str, float]:
    """Energy MAE (meV/atom), force MAE (meV/Å), force cosine and Hessian-row MAE (eV/Å²) on ``graphs``.

    Scored through ``predict``: a direct-force student is judged by its force head (and its
    "rows" are columns of -dF/dR), an energy model by -dE/dR.
    """
    batches = (batch_graphs(graphs[start : start + batch_size]) for start in range(0, len(graphs), batch_size))
    return accuracy_of_batches(model, batches, hessian)


def accuracy_of_batches(model, batches: Iterable[AtomicGraph], hessian: bool = True) -> dict[str, float]:
    """``accuracy`` over batches already formed, read once: training validates from a streaming loader."""
    e_err, f_err, cos, h_err = [], [], [], []
    device = _device_of(model)
    for batch in batches:
        batch = batch.to(device)
        out = model.predict(batch, Want(hessian_rows=hessian))
        # errors stay on the model's device until the end: one copy to the host, not three per batch
        e_err.append((out.energy - batch.energy).abs() / batch.atoms_per_structure)
        f_err.append((out.forces - batch.forces).abs().flatten())
        cos.append(torch.nn.functional.cosine_similarity(out.forces, batch.forces, dim=-1))
        if out.hessian_rows is not None:
            h_err.append(_row_errors(out.hessian_rows, batch))
    return {
        "energy_mae_meV_per_atom": 1000 * _mean(e_err),
        "force_mae_meV_per_A": 1000 * _mean(f_err),
        "force_cosine": _mean(cos),
        "hessian_row_mae": _mean(h_err) if h_err else float("nan"),
    }


def _mean(parts: list) -> float:
    """Mean of all entries, accumulated in float64 whatever the model's dtype."""
    return float(torch.cat([p.detach().double().flatten() for p in parts]).mean())


def _device_of(model) -> torch.device:
    """Where a potential computes (a teacher's device, a module's weights): its batches go there."""
    from ffdistill.devices import device_of

    return device_of(model)


def _row_errors(rows: torch.Tensor, batch: AtomicGraph) -> torch.Tensor:
    """Absolute errors of each row's entries within its own structure."""
    owner = batch.batch[batch.row_index // 3]
    mask = batch.batch[None, :] == owner[:, None]
    return (rows - batch.hessian_rows).abs()[mask].flatten()


@dataclass
class TestSet:
    """Held-out structures with their labels (float64), whatever radius they were stored at."""

    atoms: list[ase.Atoms]
    labels: list[dict]
    #: True when the labels are the teacher's own (no independent reference such as DFT).
    teacher_is_reference: bool = True
    source: str = ""
    indices: list[int] | None = field(default=None)

    def __len__(self) -> int:
        return len(self.atoms)

    def graphs(self, cutoff: float, dtype: torch.dtype = torch.float32) -> list[AtomicGraph]:
        """Labelled graphs at ``cutoff`` (the model's own radius) in ``dtype``."""
        return [
            from_ase(a, cutoff, dtype=dtype, labels=False)._replace(**_cast(lab, dtype))
            for a, lab in zip(self.atoms, self.labels)
        ]

    def reference_forces(self) -> np.ndarray:
        return np.concatenate([lab["forces"].numpy() for lab in self.labels])


def _cast(labels: dict, dtype: torch.dtype) -> dict:
    return {k: None if v is None else v.to(dtype) if v.is_floating_point() else v for k, v in labels.items()}


def _from_graphs(graphs: Sequence[AtomicGraph], teacher_is_reference: bool, source: str, indices=None) -> TestSet:
    atoms = [to_ase(g)[0] for g in graphs]
    labels = [{k: getattr(g, k) for k in LABELS} for g in graphs]
    return TestSet(atoms, labels, teacher_is_reference, source, indices)


def load_test_set(data: str, teacher=None, indices: Sequence[int] | None = None, reference: bool = True) -> TestSet:
    """Held-out frames from a label store (``indices``, default all), or from a structure file
    labelled by ``teacher`` (energies and forces only)."""
    from ffdistill.data.labels import LabelStore

    if os.path.isdir(data):
        return store_test_set(LabelStore(data), indices, reference)
    return _labelled_by_teacher(data, teacher)


def store_test_set(store, indices: Sequence[int] | None = None, reference: bool = True) -> TestSet:
    """Frames ``indices`` of an open ``LabelStore``; their reference labels are used when present."""
    store.check_intact()  # scored frames must be the stored ones: a damaged store is refused, naming the frame
    indices = list(range(len(store))) if indices is None else list(indices)
    # The radius only shapes the throw-away graph here; each model rebuilds its own.
    graphs = [store.graph(i, cutoff=1.0, dtype=torch.float64, reference=reference) for i in indices]
    has_reference = reference and store.summary()["reference_labels"]
    return _from_graphs(graphs, not has_reference, store.path, indices)


def _labelled_by_teacher(path: str, teacher) -> TestSet:
    """Frames of a structure file: their own energies and forces (e.g. DFT) are the reference when
    every frame carries them; otherwise the teacher labels them and is the reference itself."""
    from ffdistill.data.io import checked_structures

    frames = list(checked_structures(path, teacher.check_elements if teacher is not None else None))
    own = [_own_labels(a) for a in frames]
    if all(lab is not None for lab in own):
        return TestSet(frames, own, False, path)
    labels = [teacher.label(a) for a in frames]
    return TestSet(frames, [_as_labels(lab.energy, lab.forces) for lab in labels], True, path)


def _own_labels(atoms: ase.Atoms) -> dict | None:
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    if "energy" not in results or "forces" not in results:
        return None
    return _as_labels(results["energy"], results["forces"])


def _as_labels(energy: float, forces) -> dict:
    return {
        "energy": torch.tensor([float(energy)], dtype=torch.float64),
        "forces": torch.as_tensor(np.asarray(forces, dtype=np.float64)),
        "stress": None,
        "hessian_rows": None,
        "row_index": None,
    }


def teacher_accuracy(teacher, test: TestSet) -> dict[str, float]:
    """The teacher's own error against the test set's reference labels (energies and forces)."""
    if teacher.has_autograd:
        graphs = test.graphs(teacher.cutoff, teacher.dtype)
        return accuracy(teacher, [g._replace(hessian_rows=None, row_index=None) for g in graphs], hessian=False)
    e_err, f_err, cos = [], [], []
    for atoms, lab in zip(test.atoms, test.labels):
        got = teacher.label(atoms)
        ref_f = lab["forces"].double().numpy()
        e_err.append(abs(got.energy - float(lab["energy"])) / len(atoms))
        f_err.append(np.abs(got.forces - ref_f).ravel())  # pooled over atoms, as ``accuracy`` scores students
        cos.append(_cosines(got.forces, ref_f))
    return {
        "energy_mae_meV_per_atom": 1000 * float(np.mean(e_err)),
        "force_mae_meV_per_A": 1000 * float(np.concatenate(f_err).mean()),
        "force_cosine": float(np.concatenate(cos).mean()),
        "hessian_row_mae": float("nan"),
    }


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each atom's cosine between its forces in ``a`` and in ``b``."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
