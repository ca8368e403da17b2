"""Streaming training data: batches, rows and references read lazily from the store are those of the in-memory
walk (``store.graph`` + ``select_rows`` with one generator), in any number of worker processes and ranks."""

import ase.io
import numpy as np
import pytest
import torch

import ffdistill.training.trainer as train_module
from ffdistill.config import load_config
from ffdistill.data import frames as frames_module
from ffdistill.data.frames import BatchPlan, FrameDataset, frame_loader, reference_statistics
from ffdistill.data.labels import label_file
from ffdistill.data.sampling import select_rows
from ffdistill.distributed import Ranks
from ffdistill.errors import InputError
from ffdistill.graph import batch_graphs
from ffdistill.students import build_student
from ffdistill.training.trainer import teacher_force_error, train_from_config

CUTOFF = 4.0
FIELDS = (
    "Z",
    "R",
    "cell",
    "edge_index",
    "shifts",
    "batch",
    "ptr",
    "energy",
    "forces",
    "hessian_rows",
    "row_index",
    "probe_vectors",
    "probe_products",
    "probe_owner",
)


@pytest.fixture(scope="module")
def probe_store(tmp_path_factory, emt_teacher):
    """10 Cu frames, 6 Hessian rows and 3 probes each; even frames carry their own labels (EMT's, shifted)."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from conftest import rattled_cu

    frames = []
    for k in range(10):
        atoms = rattled_cu(k)
        atoms.info["group"] = k
        if k % 2 == 0:
            atoms.calc = EMT()
            energy, forces = atoms.get_potential_energy() + 0.1, 1.1 * atoms.get_forces()
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    folder = tmp_path_factory.mktemp("probes")
    ase.io.write(folder / "cu.extxyz", frames)
    return label_file(emt_teacher, str(folder / "cu.extxyz"), str(folder / "cu.zarr"), rows=6, probes=3, progress=False)


def expected_batches(store, indices, batch_size, rows, seed, temperature=None, hessian_labels="both"):
    """By hand, in memory: one generator gives the order, then each structure's rows in batch order."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(indices), generator=generator).tolist()
    batches = []
    for start in range(0, len(indices), batch_size):
        graphs = [store.graph(indices[k], CUTOFF) for k in order[start : start + batch_size]]
        if hessian_labels == "rows":
            graphs = [g._replace(probe_vectors=None, probe_products=None, probe_owner=None) for g in graphs]
        if hessian_labels == "probes":
            graphs = [g._replace(hessian_rows=None, row_index=None) for g in graphs]
        batches.append([select_rows(g, rows, generator, temperature) for g in graphs])
    return batches


def assert_same_batch(got, want):
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        assert a is None or torch.equal(a, b), name


@pytest.mark.parametrize(
    "temperature, workers, hessian_labels",
    [
        (None, 0, "both"),
        (0.3, 0, "both"),
        (None, 2, "both"),
        (0.3, 2, "rows"),
        (None, 0, "probes"),
    ],
)
def test_streamed_batches_and_rows_are_the_in_memory_ones(probe_store, temperature, workers, hessian_labels):
    indices = [9, 0, 4, 7, 2, 5, 1, 8, 3]
    want = expected_batches(probe_store, indices, 4, 2, seed=11, temperature=temperature, hessian_labels=hessian_labels)
    dataset = FrameDataset(probe_store, indices, CUTOFF, reference=True, hessian_labels=hessian_labels)
    plan = BatchPlan(dataset, 4, 2, temperature=temperature, seed=11)
    got = list(frame_loader(plan, workers=workers))
    assert len(got) == len(want) == 3
    for loaded, graphs in zip(got, want):
        assert not loaded.idle
        assert_same_batch(loaded.graph, batch_graphs(graphs))
    assert {len(g.row_index) for g in want[0] if g.row_index is not None} <= {2}  # 2 of the 6 stored rows


def test_each_rank_loads_only_its_slice_and_draws_the_rows_one_process_draws(probe_store, monkeypatch):
    indices = list(range(9))  # batches of 4, 4 and 1: rank 1 has nothing in the last one
    want = expected_batches(probe_store, indices, 4, 1, seed=3)
    read = []
    original = probe_store.graph
    monkeypatch.setattr(probe_store, "graph", lambda i, *a, **kw: read.append(i) or original(i, *a, **kw))
    for rank in (0, 1):
        read.clear()
        plan = BatchPlan(FrameDataset(probe_store, indices, CUTOFF), 4, 1, ranks=Ranks(rank, 2), seed=3)
        got = list(frame_loader(plan))
        assert len(got) == 3
        for loaded, graphs in zip(got, want):
            mine = graphs[rank::2]
            assert loaded.idle == (not mine)
            assert_same_batch(loaded.graph, batch_graphs(mine or graphs[:1]))
        assert len(read) == 5  # rank 0: 2 + 2 + 1 of its own; rank 1: 2 + 2 + the idle stand-in, not 9


def test_validation_rows_are_drawn_once_and_every_pass_scores_the_same(probe_store, tmp_path):
    for rows, expected in (("1", 1), ("null", 6)):
        config = load_config(
            None,
            [
                f"data.store={probe_store.path}",
                f"data.val_rows_per_structure={rows}",
                "data.batch_size=3",
                "data.rows_per_structure=2",
                f"output={tmp_path}",
            ],
        )
        val_set = FrameDataset(probe_store, [1, 3, 5, 7, 9], CUTOFF)
        loaders = train_module._loaders(config, val_set, val_set, Ranks(), torch.device("cpu"))
        passes = [[loaded.graph for loaded in loaders.val] for _ in range(2)]
        for a, b in zip(*passes):
            assert_same_batch(a, b)
            assert len(a.row_index) == expected * a.n_structures


@pytest.mark.parametrize("reference", [True, False])
def test_references_from_the_store_arrays_match_the_graph_fit(probe_store, monkeypatch, reference):
    monkeypatch.setattr(frames_module, "BLOCK_FRAMES", 3)  # several blocks, frames missing from some
    indices = [8, 1, 2, 6, 5, 9]
    graphs = [probe_store.graph(i, CUTOFF, reference=reference) for i in indices]
    stats = reference_statistics(probe_store, indices, reference)
    assert stats.elements == [29]
    order = np.argsort(indices)
    np.testing.assert_array_equal(stats.counts, np.full((6, 1), 4.0))  # 4-atom cubic cells
    np.testing.assert_allclose(stats.energies, [float(graphs[k].energy) for k in order], rtol=1e-6)
    forces = torch.cat([g.forces for g in graphs]).double()
    assert stats.force_rms == pytest.approx(float(forces.pow(2).mean().sqrt()), rel=1e-6)
    by_graphs, by_arrays = (build_student("painn-tiny", [29], CUTOFF) for _ in range(2))
    by_graphs.fit_references(graphs)
    by_arrays.set_references(stats.counts, stats.energies, stats.force_rms)
    torch.testing.assert_close(by_arrays.energy_ref, by_graphs.energy_ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(by_arrays.energy_scale, by_graphs.energy_scale, rtol=1e-6, atol=0)


def test_teacher_error_from_the_arrays_is_the_mean_of_each_frames_error(probe_store, monkeypatch):
    monkeypatch.setattr(frames_module, "BLOCK_FRAMES", 3)
    assert teacher_force_error(probe_store, [0, 1, 2]) is None  # frame 1 has no reference labels
    frames = [probe_store.frame(i)[1] for i in (0, 2, 4, 6, 8)]
    by_frame = np.mean([np.abs(f["forces"] - f["ref_forces"]).mean() for f in frames])
    assert teacher_force_error(probe_store, [8, 0, 4, 2, 6]) == pytest.approx(by_frame, rel=1e-12)


def _config(store, out, **extra):
    overrides = [
        f"data.store={store}",
        f"output={out}",
        "model.student=painn-tiny",
        "model.cutoff=4.0",
        "train.epochs=3",
        "train.max_steps=6",
        "train.validate_every=4",
        "train.lr=5e-3",
        "train.warmup_steps=2",
        "data.batch_size=4",
        "data.rows_per_structure=2",
        "loss.hessian=1.0",
    ]
    return load_config(None, overrides + [f"{k}={v}" for k, v in extra.items()])


def test_two_loader_workers_train_exactly_what_the_training_process_alone_trains(emt_store, tmp_path):
    runs = {}
    for workers in (0, 2):
        config = _config(emt_store, tmp_path / f"w{workers}", **{"data.workers": workers})
        result = train_from_config(config, progress=False)
        assert [h["step"] for h in result.history] == [
            4,
            6,
        ]  # 13 frames in 4 steps an epoch; the ceiling (max_steps) at 6
        runs[workers] = (result.history, torch.load(tmp_path / f"w{workers}" / "checkpoint.pt", weights_only=True))
    (history0, saved0), (history2, saved2) = runs[0], runs[2]
    assert history2 == history0
    for part in ("model", "ema"):
        assert saved0[part].keys() == saved2[part].keys()
        for name in saved0[part]:
            assert torch.equal(saved0[part][name], saved2[part][name]), (part, name)


def test_loader_settings_are_checked_before_training(emt_store, tmp_path):
    for key, value in (
        ("data.workers", -1),
        ("data.prefetch_factor", 0),
        ("data.val_rows_per_structure", 0),
        ("train.max_steps", 0),
    ):
        with pytest.raises(InputError, match=key):
            train_from_config(_config(emt_store, tmp_path / "run", **{key: value}), progress=False)


def test_extxyz_input_is_read_frame_by_frame_with_everything_ase_reads(tmp_path):
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from conftest import rattled_cu

    from ffdistill.data.io import iter_structures

    frames = [rattled_cu(k, reps=(1, 1, 1 + k % 2)) for k in range(5)] + [molecule("CH3CH2OH")]
    for k, atoms in enumerate(frames):
        atoms.info.update(group=k // 2, tag=f"frame {k}")
        if k % 2:
            atoms.calc = EMT()
            atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    ase.io.write(tmp_path / "mixed.extxyz", frames)
    ase.io.write(tmp_path / "mixed.extxyz.gz", frames)  # compressed as ASE reads it
    whole = ase.io.read(tmp_path / "mixed.extxyz", ":")
    for name, start in (("mixed.extxyz", 0), ("mixed.extxyz", 4), ("mixed.extxyz.gz", 1)):
        streamed = list(iter_structures(str(tmp_path / name), start=start))
        assert len(streamed) == len(whole) - start
        for got, want in zip(streamed, whole[start:]):
            assert got == want and got.info == want.info  # numbers, positions, cell, pbc; info
            assert (got.calc is None) == (want.calc is None)
            if want.calc is not None:
                assert got.calc.results.keys() == want.calc.results.keys()
                np.testing.assert_array_equal(got.get_forces(), want.get_forces())


def test_cached_frames_equal_streamed_frames_and_are_read_once(emt_store):
    from ffdistill.data.frames import FrameDataset
    from ffdistill.data.labels import LabelStore

    store = LabelStore(emt_store)
    streamed, cached = FrameDataset(store, [0, 2], 4.0), FrameDataset(store, [0, 2], 4.0, cache=True)
    for k in range(2):
        expected = store.graph([0, 2][k], 4.0)  # built directly from the store, not through a dataset
        for got in (streamed[k], cached[k]):
            for name in ("R", "forces", "hessian_rows", "edge_index"):
                assert torch.equal(getattr(got, name), getattr(expected, name)), name
    assert cached[1] is cached[1] and streamed[1] is not streamed[1]
