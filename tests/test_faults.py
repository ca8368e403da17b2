"""Fault injection through the CLI in-process (``cli.main(argv)``): each bad value, file or structure gives
exit status 2, one line on standard error naming the key, file or frame at fault, and nothing written."""

import json
import os
import shutil
import signal

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from conftest import run_cli, write_frames

from ffdistill.calculator import save_student
from ffdistill.cli import main
from ffdistill.data.labels import label_file, stores_equal
from ffdistill.students import build_student
from ffdistill.teachers import load_teacher


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
    label_file(load_teacher("morse"), str(folder / "cu.extxyz"), str(folder / "cu.zarr"), rows=1, progress=False)
    shutil.copytree(folder / "cu.zarr", folder / "damaged.zarr")
    shutil.rmtree(folder / "damaged.zarr" / "forces" / "c")  # every chunk of the forces gone
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
    ("inspect missing store", ["inspect", "{f}/none.zarr"], "none.zarr"),
    ("inspect --verify damaged store", ["inspect", "{f}/damaged.zarr", "--verify"], "forces"),
    ("migrate a text file", ["migrate", "{f}/notes.txt"], "notes.txt"),
    ("merge a damaged shard", ["merge", "{f}/damaged.zarr", "-o", "{o}"], "frames 0–1"),
    ("merge missing shard", ["merge", "{f}/none.zarr", "-o", "{o}"], "none.zarr"),
    ("select max atoms 0", ["select", "{f}/cu.extxyz", "--max-atoms", "0", "-o", "{o}.extxyz"], "--max-atoms"),
    ("select NaN coordinate", ["select", "{f}/nan.extxyz", "-o", "{o}.extxyz"], "structure 1"),
    (
        "compare unknown method",
        [
            "compare",
            "configs/painn-small.yaml",
            "data.store={f}/cu.zarr",
            "data.test_fraction=0.2",
            "--methods",
            "bogus",
            "-o",
            "{o}",
        ],
        "bogus",
    ),
    ("demo unknown device", ["demo", "--device", "tpu9", "-o", "{o}"], "tpu9"),
    (
        "phonons NaN structure",
        ["phonons", "--structure", "{f}/nan0.extxyz", "--teacher", "morse", "{f}/student.pt", "-o", "{o}"],
        "structure 0",
    ),
    ("check text student", ["check", "{f}/student.txt"], "not a PyTorch archive"),
    ("export text student", ["export", "{f}/student.txt", "-o", "{o}"], "student.txt"),
    ("md zero steps", ["md", "{f}/student.pt", "{f}/cu.extxyz", "--steps", "0", "-o", "{o}"], "--steps"),
    ("lammps zero steps", ["lammps", "{f}/student.pt", "{f}/cu.extxyz", "--steps", "0", "-o", "{o}"], "--steps"),
    (
        "serve NaN structure",
        ["serve", "{f}/student.pt", "--structure", "{f}/nan0.extxyz", "--unix", "{o}"],
        "structure 0",
    ),
    (
        "evaluate damaged store",
        ["evaluate", "{f}/student.pt", "--data", "{f}/damaged.zarr", "--teacher", "morse", "-o", "{o}"],
        "frames 0–1",
    ),
    ("train damaged store", [*TRAIN, "data.store={f}/damaged.zarr", "output={o}"], "frames 0–1"),
    (
        "distill a teacher other than the store's",
        ["distill", "--teacher", "emt", "model.student=painn-tiny", "data.store={f}/cu.zarr", "output={o}"],
        "morse",
    ),
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
    assert not os.listdir(tmp_path)  # nothing written: no output, no partial file, no folder


def test_distill_without_a_teacher_is_refused_by_the_parser(files, tmp_path, capsys):
    assert main(["distill", f"data.store={files}/none.zarr", f"output={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--teacher" in err and err.count("\n") == 0


def test_debug_adds_the_traceback_after_the_one_line(files, tmp_path, capsys):
    argv = ["label", f"{files}/og.extxyz", "--teacher", "morse", "-o", str(tmp_path / "o"), "-q"]
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ffdistill label: error:") and "Traceback (most recent call last)" in err


# Kills, full disks and file-size limits: a fresh process each (``fault_point`` kills the process it runs in).
@pytest.fixture(scope="module")
def six(tmp_path_factory):
    """Six Cu frames and the store an uninterrupted run labels from them (one row each)."""
    folder = tmp_path_factory.mktemp("kills")
    frames = write_frames(folder / "six.extxyz", n=6)
    label_file(load_teacher("morse"), frames, str(folder / "six.zarr"), rows=1, progress=False)
    return folder


@pytest.mark.parametrize("point", ["label.commit:2", "label.commit:3"])
def test_label_killed_between_block_and_commit_resumes_to_the_identical_store(six, tmp_path, point):
    argv = ["label", six / "six.extxyz", "--teacher", "morse", "--hessian-rows", "1", "-o", tmp_path / "s.zarr"]
    killed = run_cli(argv, fault=point)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "s.zarr").exists() and (tmp_path / "s.zarr.partial").exists()
    assert run_cli(argv).returncode == 0 and stores_equal(str(six / "six.zarr"), str(tmp_path / "s.zarr"))
    assert not (tmp_path / "s.zarr.partial").exists() and not (tmp_path / "s.zarr.lock").exists()


def test_label_on_a_full_disk_says_so_in_one_line_and_resumes_to_the_identical_store(six, tmp_path):
    argv = ["label", six / "six.extxyz", "--teacher", "morse", "--hessian-rows", "1", "-o", tmp_path / "s.zarr"]
    full = run_cli(argv, fault="label.commit:2:enospc")
    assert full.returncode == 2 and full.stderr.count("\n") == 1 and "no space left" in full.stderr, full.stderr
    assert not (tmp_path / "s.zarr").exists()
    assert run_cli(argv).returncode == 0 and stores_equal(str(six / "six.zarr"), str(tmp_path / "s.zarr"))


def test_merge_killed_mid_way_leaves_no_store_and_the_rerun_equals_one_workers_store(six, tmp_path):
    shards = []
    for i in range(2):
        shards.append(tmp_path / f"shard{i}.zarr")
        label_file(load_teacher("morse"), str(six / "six.extxyz"), str(shards[-1]), 1, shard=(i, 2), progress=False)
    argv = ["merge", *shards, "-o", tmp_path / "m.zarr"]
    assert run_cli(argv, fault="label.commit:2").returncode == -signal.SIGKILL and not (tmp_path / "m.zarr").exists()
    assert run_cli(argv).returncode == 0 and stores_equal(str(six / "six.zarr"), str(tmp_path / "m.zarr"))


def _train_argv(store, out):
    overrides = ["model.student=painn-tiny", "model.cutoff=4.0", "train.epochs=3", "train.validate_every=2"]
    overrides += ["data.batch_size=2", "train.warmup_steps=1", "data.rows_per_structure=1", "loss.hessian=1.0"]
    return ["train", f"data.store={store}", f"output={out}", *overrides]


@pytest.fixture(scope="module")
def straight(six, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main([*_train_argv(six / "six.zarr", out), "-q"]) == 0
    return json.load(open(out / "summary.json"))


def test_train_killed_while_writing_a_checkpoint_resumes_to_the_uninterrupted_run(six, straight, tmp_path):
    argv = _train_argv(six / "six.zarr", tmp_path / "run")
    assert run_cli(argv, fault="train.checkpoint:2").returncode == -signal.SIGKILL
    assert [p for p in os.listdir(tmp_path / "run") if ".tmp" in p], "the kill should fall mid-checkpoint"
    assert run_cli([*argv, "--resume"]).returncode == 0
    assert not [p for p in os.listdir(tmp_path / "run") if ".tmp" in p]
    resumed = json.load(open(tmp_path / "run" / "summary.json"))
    assert resumed["steps"] == straight["steps"]
    assert resumed["best_val_force_mae_meV_per_A"] == pytest.approx(straight["best_val_force_mae_meV_per_A"], 1e-5)


def test_train_past_a_file_size_limit_says_so_and_keeps_no_half_written_checkpoint(six, tmp_path):
    argv = _train_argv(six / "six.zarr", tmp_path / "run")
    limited = run_cli(argv, file_size=64 * 1024)  # the config and logs fit; a checkpoint (~0.3 MB) does not
    assert limited.returncode == 2 and limited.stderr.count("\n") == 1, limited.stderr
    assert "no space left" in limited.stderr and "File too large" in limited.stderr
    left = os.listdir(tmp_path / "run")
    assert "checkpoint.pt" not in left and not [p for p in left if ".tmp" in p], left
