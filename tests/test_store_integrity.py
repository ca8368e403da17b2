"""Format 3 label stores: every array of every frame is checksummed and every chunk written, so
``inspect --verify`` names a deleted or altered chunk of any array, and train refuses a damaged store."""

import os
import shutil

import ase.io
import numpy as np
import pytest
import zarr
from conftest import write_frames

from ffdistill.cli import main
from ffdistill.data.labels import VERIFIED, LabelStore, label_file
from ffdistill.teachers import load_teacher

#: arrays whose values give every frame's span: altering them changes where frames start (caught on opening)
INDEX = {"n_atoms", "n_rows", "n_probes"}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("integrity")
    frames = write_frames(folder / "f.extxyz", n=3)
    label_file(load_teacher("morse"), frames, str(folder / "s.zarr"), rows=2, probes=1, progress=False)
    return str(folder / "s.zarr")


@pytest.fixture
def store(pristine, tmp_path):
    path = str(tmp_path / "s.zarr")
    shutil.copytree(pristine, path)
    return path


def _verify(path, capsys):
    code = main(["inspect", path, "--verify"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_an_intact_store_verifies(store, capsys):
    code, text = _verify(store, capsys)
    assert code == 0 and "intact" in text


@pytest.mark.parametrize("name", [*VERIFIED, "checksums"])
def test_a_deleted_chunk_of_any_array_is_named(store, capsys, name):
    shutil.rmtree(os.path.join(store, name, "c"))
    code, text = _verify(store, capsys)
    assert code == 2 and (f"array {name}: chunk 0" in text or name in INDEX and "corrupt" in text), text


@pytest.mark.parametrize("name", [*VERIFIED, "checksums"])
def test_an_altered_value_of_any_array_is_named_with_its_frame(store, capsys, name):
    array = zarr.open_group(store, mode="r+")[name]
    values = array[:]
    if values.dtype == bool:
        values[-1] = ~values[-1]
    elif values.dtype.kind == "f":
        values[-1] = np.where(np.isnan(values[-1]), 0.5, values[-1] + 1)  # reference labels are NaN when absent
    else:
        values[-1] = values[-1] + 1
    array[:] = values
    code, text = _verify(store, capsys)
    assert code == 2, text
    if name in INDEX:
        assert "corrupt" in text or "damaged" in text
    elif name == "checksums":
        assert "frame 2:" in text  # the last frame's recorded checksums no longer match its arrays
    else:
        last_frame = {"row_index", "hessian", "probe_vectors", "probe_products", "numbers", "positions", "forces"}
        assert f"{name} damaged" in text and ("frame 2:" in text or name not in last_frame), text


def test_training_refuses_a_damaged_store_in_one_line_naming_the_frame(store, tmp_path, capsys):
    shutil.rmtree(os.path.join(store, "forces", "c"))
    argv = ["train", f"data.store={store}", f"output={tmp_path / 'run'}", "model.student=painn-tiny", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "forces" in err and "damaged" in err
    assert not (tmp_path / "run").exists()


def _water_store(folder) -> str:
    """A labelled store of two rattled water molecules (open boundaries: pbc all False)."""
    from ase.build import molecule

    frames = []
    for k in range(2):
        atoms = molecule("H2O")
        atoms.rattle(0.02, seed=k)
        frames.append(atoms)
    ase.io.write(folder / "w.extxyz", frames)
    path = str(folder / "w.zarr")
    label_file(load_teacher("morse"), str(folder / "w.extxyz"), path, rows=1, progress=False)
    return path


def test_a_molecules_all_false_pbc_chunk_is_written_and_its_loss_detected(tmp_path, capsys):
    path = _water_store(tmp_path)
    assert not LabelStore(path).group["pbc"][:].any() and os.path.isdir(os.path.join(path, "pbc", "c"))
    shutil.rmtree(os.path.join(path, "pbc", "c"))
    code, text = _verify(path, capsys)
    assert code == 2 and "array pbc: chunk 0" in text


def test_a_format_2_molecule_store_without_its_fill_value_chunks_is_intact_and_migrates(tmp_path, capsys):
    """Format-2 stores were written the way zarr writes by default: a chunk equal to the fill value (a molecule's
    all-False pbc, all-zero probe counts) has no file. That is not damage there; migrating writes the chunks."""
    path = _water_store(tmp_path)
    group = zarr.open_group(path, mode="r+")
    del group["momenta"], group["checksums"]  # left: format 2's one checksum per frame
    group.attrs["format_version"] = 2
    for name in ("pbc", "n_probes"):  # what zarr's default left out
        assert not group[name][:].any()
        shutil.rmtree(os.path.join(path, name, "c"))
    code, text = _verify(path, capsys)
    assert code == 0 and "intact" in text and "missing" not in text, text
    assert main(["migrate", path, "-q"]) == 0
    migrated = LabelStore(path)
    assert migrated.verify() == [] and not migrated.group["pbc"][:].any()
    assert os.path.isdir(os.path.join(path, "pbc", "c"))


def test_a_format_2_store_that_lost_its_atomic_numbers_is_damaged(tmp_path, capsys):
    """Not every missing chunk of a format-2 store is a fill value: element 0 was never written."""
    path = _water_store(tmp_path)
    group = zarr.open_group(path, mode="r+")
    del group["momenta"], group["checksums"]
    group.attrs["format_version"] = 2
    shutil.rmtree(os.path.join(path, "numbers", "c"))
    code, text = _verify(path, capsys)
    assert code == 2 and "array numbers: chunk 0 missing" in text, text


@pytest.mark.parametrize("version", [2, 3])
def test_an_older_store_loads_with_a_note_and_migrates_to_the_same_frames(store, capsys, version):
    group = zarr.open_group(store, mode="r+")
    del group["momenta"]  # what a format-3 store looks like
    if version == 2:
        del group["checksums"]  # and a format-2 one
    else:  # format 3's checksum columns: those of every array before the momenta
        group["checksums"].resize((group["n_atoms"].shape[0], len(VERIFIED) - 1))
    group.attrs["format_version"] = version
    old = LabelStore(store)
    note = capsys.readouterr().err
    assert "ffdistill migrate" in note and not old.v4 and ("momenta" in note) == (version == 3), note
    before = [old.raw_frame(i) for i in range(len(old))]
    assert main(["migrate", store, "-q"]) == 0
    new = LabelStore(store)
    assert new.v4 and new.attrs["format_version"] == 4 and os.path.isdir(store + f".format{version}")
    assert new.verify() == []
    for i, frame in enumerate(before):
        after = new.raw_frame(i)
        assert np.isnan(after["momenta"]).all() and after["momenta"].shape == (after["numbers"].shape[0], 3)
        for name, value in frame.items():
            if name != "checksums":
                np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_sampled_frames_keep_their_momenta_and_inspect_reports_their_kinetic_temperature(tmp_path, capsys):
    from ase import units
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    frames = []
    for seed in range(3):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
        MaxwellBoltzmannDistribution(atoms, temperature_K=900, rng=np.random.default_rng(seed))
        Stationary(atoms)
        frames.append(atoms)
    copy = frames[0].copy()
    copy.set_momenta(None)  # a rattled copy carries none
    ase.io.write(tmp_path / "f.extxyz", [*frames, copy])
    path = str(tmp_path / "s.zarr")
    label_file(load_teacher("morse"), str(tmp_path / "f.extxyz"), path, rows=1, progress=False)
    store = LabelStore(path)
    frames = ase.io.read(tmp_path / "f.extxyz", ":3")  # the momenta as the file holds them
    for i, atoms in enumerate(frames):
        np.testing.assert_array_equal(store.raw_frame(i)["momenta"], atoms.get_momenta())
    assert np.isnan(store.raw_frame(3)["momenta"]).all()
    by_hand = []  # 3N - 3 degrees of freedom: the centre of mass carries none (Stationary)
    for atoms in frames:
        kinetic = 0.5 * np.sum(atoms.get_momenta() ** 2 / atoms.get_masses()[:, None])
        by_hand.append(2 * kinetic / ((3 * len(atoms) - 3) * units.kB))
    found = store.summary()["kinetic_temperature_K"]
    assert found["frames"] == 3 and found["mean"] == pytest.approx(np.mean(by_hand), rel=1e-9)
    assert main(["inspect", path]) == 0
    assert f"{np.mean(by_hand):.0f} K mean over the 3 frames with momenta" in capsys.readouterr().out


def test_a_second_writer_is_refused_and_a_dead_writers_lock_taken_over(tmp_path):
    import subprocess
    import sys

    from ffdistill.errors import StoreError

    frames = write_frames(tmp_path / "f.extxyz", n=2)
    out = str(tmp_path / "s.zarr")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "s.zarr.lock").write_text(str(sleeper.pid))  # a live process holds the store
        with pytest.raises(StoreError, match=f"pid {sleeper.pid}"):
            label_file(load_teacher("morse"), frames, out, rows=1, progress=False)
        assert not os.path.exists(out + ".partial")
    finally:
        sleeper.kill()
        sleeper.wait()
    label_file(load_teacher("morse"), frames, out, rows=1, progress=False)  # its process is gone: taken over
    assert LabelStore(out).verify() == [] and not os.path.exists(out + ".lock")
