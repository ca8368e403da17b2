"""The label store: contents, resume after interruption, refusal of bad input."""

import os
import signal
import subprocess
import sys
import time

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from conftest import write_frames

from ffdistill.cli import main
from ffdistill.data.labels import LabelStore, choose_rows, label_file, stores_equal
from ffdistill.errors import FFDistillError, StoreError
from ffdistill.teachers.base import Teacher


def test_store_holds_what_the_teacher_said(emt_teacher, cu_frames, tmp_path):
    store = label_file(emt_teacher, cu_frames, str(tmp_path / "s.zarr"), rows=5, seed=3, progress=False)
    frames = ase.io.read(cu_frames, ":")
    assert len(store) == len(frames)
    for i in (0, len(frames) - 1):
        atoms, labels = store.frame(i)
        expected = emt_teacher.label(frames[i], choose_rows(len(frames[i]), 5, 3, i))
        np.testing.assert_allclose(atoms.positions, frames[i].positions)
        np.testing.assert_allclose(labels["forces"], expected.forces)
        np.testing.assert_allclose(labels["hessian_rows"], expected.hessian_rows, rtol=1e-6, atol=1e-6)
        assert labels["row_index"].tolist() == expected.row_index.tolist()
    summary = store.summary()
    assert summary["frames"] == len(frames) and summary["elements"] == ["Cu"]
    assert summary["hessian_rows_per_frame"]["max"] == 5 and summary["teacher"]["spec"].startswith("ase:")
    assert store.attrs["units"]["hessian"] == "eV/Å²"


def test_full_hessian_rows(emt_teacher, cu_frames, tmp_path):
    store = label_file(emt_teacher, cu_frames, str(tmp_path / "s.zarr"), rows="all", progress=False)
    assert store.summary()["full_hessian"]
    _, labels = store.frame(0)
    H = labels["hessian_rows"].reshape(12, 12)
    np.testing.assert_allclose(H, H.T, atol=1e-3)


class InterruptingTeacher(Teacher):
    """Delegates to a real teacher and raises after ``budget`` frames, like a Ctrl-C."""

    def __init__(self, inner, budget):
        self.inner, self.budget = inner, budget
        self.spec, self.version, self.elements = inner.spec, inner.version, inner.elements

    def label(self, atoms, rows=(), probes=None):
        if self.budget == 0:
            raise KeyboardInterrupt
        self.budget -= 1
        return self.inner.label(atoms, rows, probes)


def test_resume_after_interruption_gives_identical_store(emt_teacher, tmp_path):
    frames = write_frames(tmp_path / "f.extxyz", n=7)
    reference = label_file(emt_teacher, frames, str(tmp_path / "ref.zarr"), rows=3, progress=False)
    out = str(tmp_path / "out.zarr")
    for budget in (2, 0, 3):  # interrupted twice, the second time before any progress
        with pytest.raises(KeyboardInterrupt):
            label_file(InterruptingTeacher(emt_teacher, budget), frames, out, rows=3, progress=False)
    assert not os.path.exists(out) and os.path.isdir(out + ".partial")
    label_file(emt_teacher, frames, out, rows=3, progress=False)
    assert len(reference) == 7 and stores_equal(reference.path, out)


#: Kills at random moments of one labelling job, each followed by a resume.
RANDOM_KILLS = 3


def test_resume_after_random_sigkills_gives_identical_store(tmp_path):
    from conftest import LAUNCH

    frames = write_frames(tmp_path / "f.extxyz", n=40, reps=(2, 1, 1))
    command = [
        sys.executable,
        "-c",
        LAUNCH,  # blocks of two frames, so that kills fall between many commits
        "label",
        frames,
        "--teacher",
        "ase:ase.calculators.emt:EMT",
        "--hessian-rows",
        "6",
        "-q",
    ]
    subprocess.run(command + ["-o", str(tmp_path / "ref.zarr")], check=True, capture_output=True)
    out = str(tmp_path / "out.zarr")
    rng = np.random.default_rng(0)
    progress = [0]
    for _ in range(RANDOM_KILLS):
        process = subprocess.Popen(command + ["-o", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and _frames_done(out + ".partial") <= progress[-1]:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside a frame, a write or a commit
        process.send_signal(signal.SIGKILL)
        process.wait()
        progress.append(_frames_done(out + ".partial"))
    assert progress[1] > 0 and progress[-1] < 40 and progress == sorted(progress), progress
    subprocess.run(command + ["-o", out], check=True, capture_output=True)
    assert stores_equal(str(tmp_path / "ref.zarr"), out)


def _frames_done(path):
    import json

    try:
        with open(os.path.join(path, "zarr.json")) as handle:
            return json.load(handle)["attributes"]["frames_done"]
    except (OSError, ValueError, KeyError):
        return 0


def test_resume_refuses_a_different_input_or_teacher(emt_teacher, morse_teacher, tmp_path):
    frames = write_frames(tmp_path / "f.extxyz", n=4)
    out = str(tmp_path / "out.zarr")
    with pytest.raises(KeyboardInterrupt):
        label_file(InterruptingTeacher(emt_teacher, 2), frames, out, rows=3, progress=False)
    with pytest.raises(StoreError, match="different input"):
        label_file(emt_teacher, write_frames(tmp_path / "g.extxyz", n=4, seed=9), out, rows=3, progress=False)
    with pytest.raises(StoreError, match="teacher_spec"):
        label_file(morse_teacher, frames, out, rows=3, progress=False)
    with pytest.raises(StoreError, match="hessian_rows"):
        label_file(emt_teacher, frames, out, rows=4, progress=False)


def _bad_inputs(tmp_path):
    good = bulk("Cu", "fcc", 3.6, cubic=True)
    overlapping = good.copy()
    overlapping.positions[1] = overlapping.positions[0] + [0.05, 0, 0]
    (tmp_path / "empty.xyz").write_text("")
    (tmp_path / "broken.extxyz").write_text('3\nLattice="oops\nCu 0 0\n')
    ase.io.write(tmp_path / "overlap.extxyz", [good, overlapping])
    ase.io.write(tmp_path / "silicon.extxyz", bulk("Si", "diamond", 5.43))
    return {
        "missing.xyz": "no such file",
        "empty.xyz": "empty",
        "broken.extxyz": "3 atoms, more than a file of 23 bytes can hold",
        "overlap.extxyz": "structure 1: atoms closer",
        "silicon.extxyz": "does not cover element",
    }


def test_each_bad_input_gets_one_line_and_no_store(tmp_path, capsys):
    for name, message in _bad_inputs(tmp_path).items():
        out = tmp_path / f"{name}.zarr"
        code = main(["label", str(tmp_path / name), "-o", str(out), "--teacher", "ase:ase.calculators.emt:EMT", "-q"])
        err = capsys.readouterr().err.strip()
        assert code == 2, name
        assert message in err and "\n" not in err, (name, err)
        assert not out.exists() and not (tmp_path / f"{name}.zarr.partial").exists(), name


def test_nan_teacher_output_stops_before_writing_it(tmp_path, cu_frames):
    from test_teachers import BrokenCalculator

    from ffdistill.teachers.ase_calc import ASETeacher

    with pytest.raises(FFDistillError, match="structure 0: teacher broken returned non-finite"):
        label_file(
            ASETeacher(BrokenCalculator(np.nan), spec="broken"),
            cu_frames,
            str(tmp_path / "x.zarr"),
            rows=1,
            progress=False,
        )
    assert not (tmp_path / "x.zarr").exists()


def test_reading_a_non_store_or_truncated_store_fails_clearly(tmp_path, emt_store):
    import shutil

    (tmp_path / "junk").mkdir()
    with pytest.raises(StoreError, match="not a readable label store|not an ffdistill"):
        LabelStore(str(tmp_path / "junk"))
    copy = tmp_path / "copy.zarr"
    shutil.copytree(emt_store, copy)
    shutil.rmtree(copy / "hessian" / "c")  # lose the chunks of one array
    store = LabelStore(str(copy))
    with pytest.raises(StoreError, match="corrupt"):
        store.frame(0)


def test_inspect_cli(emt_store, capsys):
    assert main(["inspect", emt_store]) == 0
    text = capsys.readouterr().out
    assert "frames         16" in text and "Cu" in text
    assert main(["inspect", emt_store, "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["hessian_rows_per_frame"]["setting"] == "6"


def test_shards_merge_into_the_unsharded_store(emt_teacher, tmp_path):
    from ffdistill.data.labels import merge_stores

    frames = write_frames(tmp_path / "f.extxyz", n=7)
    whole = label_file(emt_teacher, frames, str(tmp_path / "whole.zarr"), rows=3, seed=2, progress=False)
    shards = [str(tmp_path / f"s{i}.zarr") for i in range(3)]
    for i, path in enumerate(shards):
        assert len(label_file(emt_teacher, frames, path, rows=3, seed=2, progress=False, shard=(i, 3))) == len(
            range(i, 7, 3)
        )
    with pytest.raises(StoreError, match="exactly once"):
        merge_stores(shards[:2], str(tmp_path / "bad.zarr"), progress=False)
    merged = merge_stores(shards[::-1], str(tmp_path / "merged.zarr"), progress=False)
    assert stores_equal(whole.path, merged.path)
    other = label_file(emt_teacher, frames, str(tmp_path / "o.zarr"), rows=4, seed=2, progress=False, shard=(1, 3))
    with pytest.raises(StoreError, match="hessian_rows differs"):
        merge_stores([shards[0], other.path, shards[2]], str(tmp_path / "bad2.zarr"), progress=False)


def test_unwritable_or_full_output_fails_before_any_work(emt_teacher, cu_frames, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    with pytest.raises(StoreError, match="does not exist"):
        label_file(emt_teacher, cu_frames, str(tmp_path / "no" / "such" / "dir" / "s.zarr"), progress=False)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1024))
    with pytest.raises(StoreError, match="free"):
        label_file(emt_teacher, cu_frames, str(tmp_path / "s.zarr"), progress=False)
    assert not (tmp_path / "s.zarr.partial").exists()


def test_input_labels_become_the_reference_and_the_teacher_error_is_known(emt_teacher, tmp_path):
    """Frames of 4, 8 and 4 atoms carrying their own labels (ASE's Lennard-Jones, standing in for DFT), labelled
    by EMT: the teacher's force error is the MAE over all atoms between EMT's forces (ASE's own calculator,
    afresh) and the labels as read back from the file, worked out here in numpy."""
    from ase.calculators.emt import EMT
    from ase.calculators.lj import LennardJones
    from ase.calculators.singlepoint import SinglePointCalculator
    from conftest import rattled_cu

    from ffdistill.training.trainer import teacher_force_error

    frames = []
    for k, reps in enumerate([(1, 1, 1), (2, 1, 1), (1, 1, 1)]):
        atoms = rattled_cu(k, reps, amount=0.1)
        atoms.calc = LennardJones(sigma=2.3, epsilon=0.2, rc=5.0, smooth=True)
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(atoms)
    ase.io.write(tmp_path / "dft.extxyz", frames)
    store = label_file(emt_teacher, str(tmp_path / "dft.extxyz"), str(tmp_path / "s.zarr"), rows=2, progress=False)
    assert store.summary()["reference_labels"]
    written = ase.io.read(tmp_path / "dft.extxyz", ":")  # positions and forces as stored in the file (8 decimals)
    graph = store.graph(1, 4.0, dtype=torch.float64)
    np.testing.assert_array_equal(graph.forces.numpy(), written[1].get_forces())  # the file's labels
    teacher_graph = store.graph(1, 4.0, dtype=torch.float64, reference=False)
    emt = []
    for atoms in written:
        copy = atoms.copy()
        copy.calc = EMT()
        emt.append(copy.get_forces())
    np.testing.assert_allclose(teacher_graph.forces.numpy(), emt[1], rtol=0, atol=1e-12)  # the teacher's labels
    per_atom = [np.abs(f - atoms.get_forces()) for f, atoms in zip(emt, written)]
    assert min(np.mean(e) for e in per_atom) > 0.05  # LJ is not EMT: a telling error
    pooled = lambda frames: np.mean(np.concatenate([per_atom[i].ravel() for i in frames]))  # noqa: E731
    assert teacher_force_error(store, [0, 1, 2]) == pytest.approx(pooled([0, 1, 2]), rel=1e-12)
    assert teacher_force_error(store, [2, 1]) == pytest.approx(pooled([2, 1]), rel=1e-12)
    # over all atoms pooled, as the students' validation MAE: with frames of 4 and 8 atoms the mean of frame
    # means would differ
    assert abs(pooled([0, 1, 2]) / np.mean([np.mean(e) for e in per_atom]) - 1) > 1e-3
