"""EMA with four elements: the averaged student keeps its element table and its refitted references."""

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule

import ffdistill.training.trainer as train_module
from ffdistill.calculator import load_student
from ffdistill.config import load_config
from ffdistill.data.frames import split_indices
from ffdistill.data.labels import LabelStore, label_file
from ffdistill.teachers import load_teacher
from ffdistill.training.trainer import train_from_config


@pytest.fixture(scope="module")
def acetamide_store(tmp_path_factory):
    """12 rattled acetamide molecules (H, C, N, O) labelled by EMT, each its own group."""
    folder = tmp_path_factory.mktemp("acetamide")
    frames = []
    for k in range(12):
        atoms = molecule("CH3CONH2")
        atoms.rattle(0.05, seed=k)
        atoms.info["group"] = k
        frames.append(atoms)
    ase.io.write(folder / "frames.extxyz", frames)
    teacher = load_teacher("ase:ase.calculators.emt:EMT")
    label_file(teacher, str(folder / "frames.extxyz"), str(folder / "store.zarr"), rows=2, progress=False)
    return str(folder / "store.zarr")


def test_ema_keeps_four_elements_apart_and_its_references_refitted(acetamide_store, tmp_path, monkeypatch):
    tables = []  # the averaged student's element table each time it is saved as the best
    original = train_module.save_student
    monkeypatch.setattr(
        train_module,
        "save_student",
        lambda model, *a, **k: tables.append(model.z_to_species.clone()) or original(model, *a, **k),
    )
    overrides = [
        f"data.store={acetamide_store}",
        f"output={tmp_path / 'run'}",
        "model.student=painn-tiny",
        "model.cutoff=4.0",
        "data.batch_size=2",
        "data.val_fraction=0.25",
        "train.max_steps=60",  # well past the ~30 EMA updates after which the averaged table used to break
        "train.validate_every=20",
        "train.lr=5e-3",
    ]
    result = train_from_config(load_config(None, overrides), progress=False)
    student = load_student(result.best_path)
    assert student.elements == [1, 6, 7, 8] and tables
    for table in tables:  # H, C, N, O are species 0..3 and nothing else has one, at every save
        assert {z: int(table[z]) for z in range(119) if table[z] >= 0} == {1: 0, 6: 1, 7: 2, 8: 3}
    store = LabelStore(acetamide_store)
    # References: the saved student was refitted with its own weights, so a least-squares shift of its energy
    # residuals over the training frames (computed here with numpy from the store's labels) is ~zero.
    train_frames, _, _ = split_indices(store.groups(), 0.25, 0.0, 0)
    counts, residuals = [], []
    for frame in train_frames:
        graph = store.graph(frame, student.cutoff)
        counts.append([int((graph.Z == z).sum()) for z in student.elements])
        with torch.no_grad():
            residuals.append(float(graph.energy.sum()) - float(student.energy(graph).sum()))
    shift, *_ = np.linalg.lstsq(np.array(counts, float), np.array(residuals), rcond=None)
    # Shifts are degenerate for one molecule (only the combination C2 H5 N O is fixed): compare its energy.
    assert abs(float(np.array([5, 2, 1, 1]) @ shift)) < 1e-3
