"""Fault injection through the CLI in-process (``cli.main(argv)``): each bad value, file or structure gives
exit status 2, one line on standard error naming the key, file or frame at fault, and nothing written."""

import os

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from ffdistill.calculator import save_student
from ffdistill.cli import main
from ffdistill.students import build_student


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    good = bulk("Cu", cubic=True)
    good.rattle(0.05, seed=0)
    ase.io.write(folder / "cu.extxyz", [good, good])
    nan = good.copy()
    nan.positions[1, 2] = np.nan
    ase.io.write(folder / "nan.extxyz", [good, nan])
    ase.io.write(folder / "nan0.extxyz", [nan])
    og = good.copy()
    og.numbers[0] = 118
    ase.io.write(folder / "og.extxyz", [og])
    (folder / "notes.txt").write_text("hello\nthis is not a structure\n")
    (folder / "xy.xyz").write_text("2\n\nXy 0 0 0\nCu 1.8 0 0\n")
    (folder / "huge.xyz").write_text("999999999\n\nCu 0 0 0\n")  # a count no file of 20 bytes can hold
    (folder / "count.xyz").write_text("abc\n\nCu 0 0 0\n")
    (folder / "student.txt").write_text("not a student\n")
    save_student(build_student("painn-tiny", [29], 4.0), str(folder / "student.pt"))
    return folder


TRAIN = ["train", "model.student=painn-tiny"]

#: (id, argv with {f} for the fixture folder and {o} for a fresh output path, text the one line must hold)
CASES = [
    ("label element the teacher lacks", ["label", "{f}/og.extxyz", "--teacher", "morse", "-o", "{o}"], "Og"),
    ("label unknown format", ["label", "{f}/notes.txt", "--teacher", "morse", "-o", "{o}"], "format"),
    ("label made-up symbol", ["label", "{f}/xy.xyz", "--teacher", "morse", "-o", "{o}"], "'Xy'"),
    ("label impossible atom count", ["label", "{f}/huge.xyz", "--teacher", "morse", "-o", "{o}"], "999999999 atoms"),
    ("label no atom count", ["label", "{f}/count.xyz", "--teacher", "morse", "-o", "{o}"], "'abc'"),
    ("md NaN start", ["md", "{f}/student.pt", "{f}/nan0.extxyz", "-o", "{o}"], "structure 0"),
    ("label missing file", ["label", "{f}/none.extxyz", "--teacher", "morse", "-o", "{o}"], "none.extxyz"),
    ("label NaN coordinate", ["label", "{f}/nan.extxyz", "--teacher", "morse", "-o", "{o}"], "structure 1"),
    (
        "label negative rows",
        ["label", "{f}/cu.extxyz", "--teacher", "morse", "--hessian-rows", "-1", "-o", "{o}"],
        "--hessian-rows",
    ),
    (
        "evaluate NaN coordinate",
        ["evaluate", "{f}/student.pt", "--data", "{f}/nan.extxyz", "--teacher", "morse", "-o", "{o}"],
        "structure 1",
    ),
    (
        "evaluate text student",
        ["evaluate", "{f}/student.txt", "--data", "{f}/cu.extxyz", "--teacher", "morse", "-o", "{o}"],
        "not a PyTorch archive",
    ),
    (
        "sample interval 0",
        ["sample", "--teacher", "morse", "--structure", "Cu", "--interval", "0", "-o", "{o}"],
        "--interval",
    ),
    ("sample no frames", ["sample", "--teacher", "morse", "--structure", "Cu", "-n", "0", "-o", "{o}"], "-n"),
    (
        "sample negative temperature",
        ["sample", "--teacher", "morse", "--structure", "Cu", "--temperature", "-5", "-o", "{o}"],
        "--temperature",
    ),
    ("sample unknown structure", ["sample", "--teacher", "morse", "--structure", "Xx9", "-o", "{o}"], "Xx9"),
]
for key, value in (
    ("data.batch_size", "0"),
    ("train.epochs", "0"),
    ("data.n_train", "0"),
    ("data.n_train", "-2"),
    ("data.val_fraction", "1"),
    ("data.rows_per_structure", "0"),
    ("model.jacobian", "exact"),
    ("model.cutoff", "0"),
    ("loss.hessian", "-1"),
    ("loss.hessian_normalisation", "maybe"),
    ("train.lr", ".nan"),
    ("train.max_steps", "0"),
    ("train.validate_every", "0"),
    ("train.lr_factor", "1.5"),
    ("train.patience_fraction", "1"),
    ("train.ema_decay", "1"),
):
    CASES.append(
        (f"train {key}={value}", [*TRAIN, "data.store={f}/none.zarr", "output={o}", f"{key}={value}"], f"{key}=")
    )


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_gives_one_line_exit_2_and_writes_nothing(files, tmp_path, capsys, argv, expected):
    output = tmp_path / "out"
    argv = [a.format(f=files, o=output) for a in argv]
    assert main([*argv, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("ffdistill ") and expected in err, err
    assert not os.path.exists(output) and not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_distill_without_a_teacher_is_refused_by_the_parser(files, tmp_path, capsys):
    assert main(["distill", f"data.store={files}/none.zarr", f"output={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--teacher" in err and err.count("\n") == 0


def test_debug_adds_the_traceback_after_the_one_line(files, tmp_path, capsys):
    argv = ["label", f"{files}/og.extxyz", "--teacher", "morse", "-o", str(tmp_path / "o"), "-q"]
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ffdistill label: error:") and "Traceback (most recent call last)" in err
