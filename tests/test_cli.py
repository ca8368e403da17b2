"""End to end through the command line, with the Morse toy teacher standing in for SevenNet."""

import json

import ase.io
import numpy as np
import pytest
import torch

from ffdistill import load_calculator
from ffdistill.cli import main


def test_sample_label_train_and_use_the_student(tmp_path, capsys):
    frames, store, run = tmp_path / "frames.extxyz", tmp_path / "labels.zarr", tmp_path / "run"
    assert main(["sample", "--teacher", "morse", "--structure", "Cu", "-n", "10", "--temperature", "300", "600", "--interval", "2", "-o", str(frames), "-q"]) == 0
    sampled = ase.io.read(frames, ":")
    assert len(sampled) == 10 and all(len(a) == 32 for a in sampled)
    assert main(["label", str(frames), "--teacher", "morse", "--hessian-rows", "3", "-o", str(store), "-q"]) == 0
    assert main(["inspect", str(store), "--json"]) == 0
    capsys.readouterr()
    overrides = [f"data.store={store}", f"output={run}", "model.student=painn-tiny", "train.epochs=2", "data.batch_size=5"]
    assert main(["train", *overrides, "-q"]) == 0
    assert "best student saved" in capsys.readouterr().out
    atoms = sampled[0]
    atoms.calc = load_calculator(str(run / "best.pt"))
    assert torch.isfinite(torch.as_tensor(atoms.get_forces())).all()
    history = json.load(open(run / "history.json"))
    assert len(history) == 2 and history[-1]["val"]["hessian_row_mae"] >= 0


def _write_bad_files(folder):
    from ase.build import bulk

    good = bulk("Cu", "fcc", a=3.6, cubic=True)
    ase.io.write(folder / "good.extxyz", good)
    (folder / "broken.extxyz").write_text("2\nLattice=\"1 0 0 0 1 0 0 0 1\" Properties=species:S:1:pos:R:3\nCu 0 0\n")
    (folder / "nocell.extxyz").write_text('1\npbc="T T T" Properties=species:S:1:pos:R:3\nCu 0.0 0.0 0.0\n')
    nan = good.copy()
    nan.positions[0, 0] = np.nan
    ase.io.write(folder / "nan.extxyz", nan)
    (folder / "empty.extxyz").write_text("")
    (folder / "student.pt").write_bytes(b"not a checkpoint")
    (folder / "bad.yaml").write_text("train: [1, 2\n")


#: verb, arguments (files from _write_bad_files), the one line the user must see
BAD_INPUTS = [
    (["label", "broken.extxyz", "-o", "o.zarr", "--teacher", "morse"], "malformed"),
    (["label", "nocell.extxyz", "-o", "o.zarr", "--teacher", "morse"], "no cell"),
    (["label", "nan.extxyz", "-o", "o.zarr", "--teacher", "morse"], "non-finite positions"),
    (["label", "empty.extxyz", "-o", "o.zarr", "--teacher", "morse"], "empty"),
    (["label", "good.extxyz", "-o", "o.zarr", "--teacher", "nonsense"], "unknown teacher spec"),
    (["label", "good.extxyz", "-o", "o.zarr", "--teacher", "sevenn:good.extxyz"], "--trust-teacher"),
    (["inspect", "good.extxyz"], "no label store"),
    (["merge", "nowhere.zarr", "-o", "m.zarr"], "no label store"),
    (["train", "data.store=nowhere.zarr"], "no label store"),
    (["train", "loss.hesian=2"], "did you mean loss.hessian"),
    (["train", "train.epochs=many"], "must be int"),
    (["train", "bad.yaml"], "not valid YAML"),
    (["train", "missing.yaml"], "not found"),
    (["sample", "--teacher", "morse", "--structure", "Unobtainium", "-o", "x.extxyz"], "neither a file nor a known structure"),
    (["md", "student.pt", "good.extxyz", "-o", "x.traj"], "not a readable student file"),
    (["export", "student.pt", "-o", "x.pt"], "not a readable student file"),
    (["evaluate", "student.pt", "--data", "nowhere.zarr", "--teacher", "morse", "-o", "ev"], "no such file|no label store|not a readable"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS, ids=[" ".join(a[:2]) for a, _ in BAD_INPUTS])
def test_bad_input_exits_non_zero_with_one_line_and_writes_nothing(argv, message, capsys, tmp_path, monkeypatch):
    import re

    monkeypatch.chdir(tmp_path)
    _write_bad_files(tmp_path)
    before = set(p.name for p in tmp_path.iterdir())
    assert main(argv + ["-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and len(err.splitlines()) == 1, err
    assert set(p.name for p in tmp_path.iterdir()) == before  # nothing half-written
