"""End to end through the command line, with the Morse toy teacher standing in for SevenNet."""

import json

import ase.io
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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "data.store=nowhere.zarr"], "no label store"),
        (["train", "loss.hesian=2"], "did you mean loss.hessian"),
        (["train", "train.epochs=many"], "must be int"),
        (["sample", "--teacher", "morse", "--structure", "Unobtainium", "-o", "x.extxyz"], "neither a file nor a known structure"),
        (["label", "x.extxyz", "-o", "y.zarr", "--teacher", "nonsense"], "unknown teacher spec"),
    ],
)
def test_bad_commands_exit_non_zero_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
