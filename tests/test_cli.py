"""End to end through the command line, with the Morse toy teacher standing in for SevenNet."""

import json
import os

import ase.io
import numpy as np
import pytest
import torch

from ffdistill.cli import main


def _student_errors_by_hand(student_path, store, indices, h=1e-4):
    """Energy MAE (meV/atom), force MAE (meV/Å) and Hessian-row MAE (eV/Å²) of a saved student on store
    frames, in numpy: forces from its ASE calculator (float64 copy), rows -dF/dR_r by central differences."""
    from ffdistill.calculator import PotentialCalculator, load_student

    calc = PotentialCalculator(load_student(student_path).double(), dtype=torch.float64)

    def energy_forces(atoms):
        atoms = atoms.copy()
        atoms.calc = calc
        return atoms.get_potential_energy(), atoms.get_forces()

    e_err, f_err, h_err = [], [], []
    for i in indices:
        atoms, labels = store.frame(i)
        use_ref = np.isfinite(labels["ref_energy"]) and np.isfinite(labels["ref_forces"]).all()
        energy, forces = energy_forces(atoms)
        e_err.append(abs(energy - labels["ref_energy" if use_ref else "energy"]) / len(atoms))
        f_err.append(np.abs(forces - labels["ref_forces" if use_ref else "forces"]).ravel())
        for k, r in enumerate(labels["row_index"]):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[r // 3, r % 3] += h
            minus.positions[r // 3, r % 3] -= h
            row = -(energy_forces(plus)[1] - energy_forces(minus)[1]) / (2 * h)
            h_err.append(np.abs(row - labels["hessian_rows"][k]).ravel())
    return 1000 * np.mean(e_err), 1000 * np.concatenate(f_err).mean(), np.concatenate(h_err).mean()


def test_train_reports_the_validation_errors_recomputed_by_hand_from_the_saved_student(tmp_path, capsys):
    import re

    import yaml

    from ffdistill.data.frames import split_indices
    from ffdistill.data.labels import LabelStore

    frames, store, run = tmp_path / "frames.extxyz", tmp_path / "labels.zarr", tmp_path / "run"
    sample = ["sample", "--teacher", "morse", "--structure", "Cu", "-n", "10", "--temperature", "300", "600"]
    assert main([*sample, "--interval", "2", "-o", str(frames), "-q"]) == 0
    sampled = ase.io.read(frames, ":")
    assert len(sampled) == 10 and all(len(a) == 32 for a in sampled)
    assert main(["label", str(frames), "--teacher", "morse", "--hessian-rows", "3", "-o", str(store), "-q"]) == 0
    assert main(["inspect", str(store), "--json"]) == 0
    capsys.readouterr()
    overrides = [
        f"data.store={store}",
        f"output={run}",
        "model.student=painn-tiny",
        "train.max_steps=2",
        "train.validate_every=1",
        "data.batch_size=5",
    ]
    # validate on every stored row (null), not a seeded draw of them, so the row MAE is over rows known here
    assert main(["train", *overrides, "data.val_rows_per_structure=null", "-q"]) == 0
    saved = r"best student saved to .*best\.pt \(validation force MAE ([0-9.]+) meV/Å\)"
    printed = re.search(saved, capsys.readouterr().out)
    history = json.loads((run / "history.json").read_text())
    assert printed and len(history) == 2
    # best.pt holds the EMA weights of the validation with the lowest validation force MAE (the first, on a tie).
    best = min(range(len(history)), key=lambda k: history[k]["val"]["force_mae_meV_per_A"])
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    labels = LabelStore(str(store))
    _, val_idx, _ = split_indices(labels.groups(), data["val_fraction"], data["test_fraction"], data["split_seed"])
    assert 0 < len(val_idx) < len(sampled)  # whole groups of frames: at least the 20 % asked for
    energy_mae, force_mae, row_mae = _student_errors_by_hand(str(run / "best.pt"), labels, val_idx)
    reported = history[best]["val"]
    assert force_mae > 1.0 and row_mae > 1e-3  # an untrained-ish student: the numbers below are not zeros
    assert reported["force_mae_meV_per_A"] == pytest.approx(force_mae, rel=1e-4)
    assert reported["energy_mae_meV_per_atom"] == pytest.approx(energy_mae, rel=1e-4, abs=1e-3)
    assert reported["hessian_row_mae"] == pytest.approx(row_mae, rel=1e-3)
    assert float(printed.group(1)) == pytest.approx(force_mae, abs=0.051)  # printed to 0.1 meV/Å


def _write_bad_files(folder):
    from ase.build import bulk

    good = bulk("Cu", "fcc", a=3.6, cubic=True)
    ase.io.write(folder / "good.extxyz", good)
    (folder / "broken.extxyz").write_text('2\nLattice="1 0 0 0 1 0 0 0 1" Properties=species:S:1:pos:R:3\nCu 0 0\n')
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
    (
        ["sample", "--teacher", "morse", "--structure", "Unobtainium", "-o", "x.extxyz"],
        "neither a file nor a known structure",
    ),
    (["md", "student.pt", "good.extxyz", "-o", "x.traj"], "not an ffdistill student file"),
    (["export", "student.pt", "-o", "x.pt"], "not an ffdistill student file"),
    (
        ["evaluate", "student.pt", "--data", "nowhere.zarr", "--teacher", "morse", "-o", "ev"],
        "no such file|no label store|not a readable",
    ),
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


def test_every_option_has_a_help_line_and_every_verb_an_example_that_parses():
    import argparse
    import shlex

    from ffdistill.cli import build_parser
    from ffdistill.cli.common import EXAMPLES

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for verb, verb_parser in sub.choices.items():
        assert verb in EXAMPLES, verb
        for action in verb_parser._actions:
            assert action.help, (verb, action.option_strings or action.dest)
        assert parser.parse_args(shlex.split(EXAMPLES[verb])[1:]).command == verb
        page = os.path.join(os.path.dirname(__file__), "..", "docs", "cli", f"{verb}.md")
        assert f":path: {verb}" in open(page).read()  # its reference page in the docs
