"""The paper's loss computed by hand, Hessian-vector probes, group-preserving splits, faithful baselines."""

import ase.io
import numpy as np
import pytest
import torch
from conftest import assert_close, rattled_cu

from ffdistill import derivatives
from ffdistill.data.frames import split_indices
from ffdistill.graph import batch_graphs, from_ase
from ffdistill.potential import Want
from ffdistill.students import build_student
from ffdistill.teachers.toy import MorsePotential
from ffdistill.training.loss import DistillationLoss, EnergyTerm, ForceTerm, HessianTerm, StudentOutput, build_loss


def _random_labels(atoms, n_rows: int, n_probes: int, seed: int):
    """One structure's labels as numpy arrays (per-structure layout, no batching)."""
    rng = np.random.default_rng(seed)
    n = len(atoms)
    return {
        "energy": rng.normal(size=1),
        "forces": rng.normal(size=(n, 3)),
        "rows": rng.normal(size=(n_rows, n, 3)),
        "row_index": rng.choice(3 * n, n_rows, replace=False),
        "probes": rng.normal(size=(n_probes, n, 3)),
        "vectors": rng.normal(size=(n_probes, n, 3)),
    }


def _graph(atoms, labels):
    t = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
    return from_ase(atoms, 4.0, dtype=torch.float64)._replace(
        energy=t(labels["energy"]),
        forces=t(labels["forces"]),
        hessian_rows=t(labels["rows"]),
        row_index=torch.as_tensor(labels["row_index"]),
        probe_vectors=t(labels["vectors"]),
        probe_products=t(labels["probes"]),
        probe_owner=torch.zeros(len(labels["vectors"]), dtype=torch.long),
    )


def _by_hand(ref, pred):
    """The reference normalisation written out with loops over structures, rows and atoms."""
    n_atoms = [len(r["forces"]) for r in ref]
    energy = np.mean([abs(p["energy"][0] - r["energy"][0]) / n for r, p, n in zip(ref, pred, n_atoms)])
    forces = sum(
        np.linalg.norm(p["forces"][i] - r["forces"][i]) for r, p in zip(ref, pred) for i in range(len(r["forces"]))
    )
    hessian = 0.0
    for r, p in zip(ref, pred):
        items = [(p["rows"][k], r["rows"][k]) for k in range(len(r["rows"]))] + [
            (p["probes"][k], r["probes"][k]) for k in range(len(r["probes"]))
        ]
        hessian += np.mean([sum(np.linalg.norm(a[i] - b[i]) for i in range(len(a))) for a, b in items])
    return {"energy": energy, "forces": forces / sum(n_atoms), "hessian": hessian / sum(n_atoms)}


def test_each_loss_term_equals_the_hand_calculation_on_two_structures_of_different_sizes():
    structures = [rattled_cu(0), rattled_cu(1, (2, 1, 1))]  # 4 and 8 atoms
    ref = [_random_labels(structures[0], 2, 1, 0), _random_labels(structures[1], 1, 3, 1)]
    pred = [_random_labels(structures[0], 2, 1, 2), _random_labels(structures[1], 1, 3, 3)]
    for r, p in zip(ref, pred):  # the student answers for the same rows and probes as the teacher
        p["row_index"], p["vectors"] = r["row_index"], r["vectors"]
    batch = batch_graphs([_graph(a, r) for a, r in zip(structures, ref)])
    student = batch_graphs([_graph(a, p) for a, p in zip(structures, pred)])
    out = StudentOutput(student.energy, student.forces, student.hessian_rows, probe_products=student.probe_products)
    _, values = build_loss(5.0, 100.0, 300.0)(out, batch)
    for name, expected in _by_hand(ref, pred).items():
        assert values[name] == pytest.approx(expected, rel=1e-12), name
    total, _ = build_loss(5.0, 100.0, 300.0)(out, batch)
    hand = _by_hand(ref, pred)
    assert float(total) == pytest.approx(5 * hand["energy"] + 100 * hand["forces"] + 300 * hand["hessian"], rel=1e-12)


def test_data_parallel_normalisation_gives_the_single_process_loss():
    """Ranks holding uneven shares: the mean over ranks of world × sum / global count is the global loss."""
    structures = [rattled_cu(0), rattled_cu(1, (2, 1, 1)), rattled_cu(2)]
    ref = [_random_labels(a, k + 1, 2 - k % 2, k) for k, a in enumerate(structures)]
    pred = [dict(_random_labels(a, k + 1, 2 - k % 2, 10 + k)) for k, a in enumerate(structures)]
    for r, p in zip(ref, pred):
        p["row_index"], p["vectors"] = r["row_index"], r["vectors"]
    loss = build_loss(5.0, 100.0, 300.0)

    def parts(indices):
        batch = batch_graphs([_graph(structures[i], ref[i]) for i in indices])
        student = batch_graphs([_graph(structures[i], pred[i]) for i in indices])
        return StudentOutput(
            student.energy, student.forces, student.hessian_rows, probe_products=student.probe_products
        ), batch

    single, _ = loss(*parts([0, 1, 2]))
    shards = [parts([0]), parts([1, 2])]
    counts = [{n: c for n, (_, c) in loss.contributions(*s).items()} for s in shards]
    global_counts = {n: sum(c[n] for c in counts) for n in counts[0]}
    ranks = [loss(*s, global_counts=global_counts, world=2)[0] for s in shards]
    assert float(sum(ranks) / 2) == pytest.approx(float(single), rel=1e-12)


@pytest.fixture
def student():
    torch.manual_seed(0)
    model = build_student("painn-tiny", [29], cutoff=4.0).double()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model


def _central_difference(force_fn, graph, v, h=1e-5):
    """-(F(R + h v) - F(R - h v)) / 2h, written out here rather than taken from the library."""
    plus, minus = force_fn(graph._replace(R=graph.R + h * v)), force_fn(graph._replace(R=graph.R - h * v))
    return -(plus - minus).detach() / (2 * h)


def test_student_hessian_vector_products_equal_finite_differences_of_its_forces(student):
    graph = from_ase(rattled_cu(3, (2, 1, 1)), 4.0, dtype=torch.float64)
    vectors = torch.as_tensor(derivatives.random_probes(graph.n_atoms, 3, seed=0, frame=0))
    pred = derivatives.predict(student.energy, graph, create_graph=True)
    owner = torch.zeros(3, dtype=torch.long)
    hv = derivatives.hessian_vector_products(pred.forces, pred.positions, vectors, owner, graph.batch).detach()
    forces = lambda g: derivatives.predict(student.energy, g).forces  # noqa: E731
    expected = torch.stack([_central_difference(forces, graph, v) for v in vectors])
    assert_close(hv, expected, 1e-8, what="conservative H·v")
    assert hv.abs().max() > 1e-3


def test_direct_student_jacobian_vector_products_equal_finite_differences_of_its_force_head():
    torch.manual_seed(0)
    model = build_student("painn-direct", [29], cutoff=4.0, channels=8, layers=2, n_basis=8).double()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    graphs = [from_ase(rattled_cu(k, (1 + k, 1, 1)), 4.0, dtype=torch.float64) for k in range(2)]
    vectors = [torch.as_tensor(derivatives.random_probes(g.n_atoms, 2, seed=1, frame=k)) for k, g in enumerate(graphs)]
    labelled = [
        g._replace(probe_vectors=v, probe_products=torch.zeros_like(v), probe_owner=torch.zeros(2, dtype=torch.long))
        for g, v in zip(graphs, vectors)
    ]
    batch = batch_graphs(labelled)
    head = lambda g: model.predict(g).forces  # noqa: E731
    for mode in ("autograd", "fd"):
        model.set_jacobian(mode, 1e-6)
        out = model.predict(batch, Want(hessian_rows=True, probe_products=True)).probe_products
        lo = 0
        for k, (g, v) in enumerate(zip(graphs, vectors)):
            expected = torch.stack([_central_difference(head, g, u) for u in v])
            assert_close(out[2 * k : 2 * k + 2, lo : lo + g.n_atoms], expected, 1e-4, what=f"{mode} J·v, structure {k}")
            lo += g.n_atoms
        assert out.abs().max() > 1e-2


def test_probe_loss_is_zero_when_student_and_teacher_are_one_potential():
    from ffdistill.teachers.toy import TorchModelTeacher

    teacher = TorchModelTeacher(MorsePotential(), "morse", cutoff=5.0)
    graphs = []
    for k, atoms in enumerate([rattled_cu(0), rattled_cu(1, (2, 1, 1))]):
        probes = derivatives.random_probes(len(atoms), 2, seed=0, frame=k)
        labels = teacher.label(atoms, [1], probes)
        t = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
        graphs.append(
            from_ase(atoms, 5.0, dtype=torch.float64)._replace(
                energy=t([labels.energy]),
                forces=t(labels.forces),
                hessian_rows=t(labels.hessian_rows),
                row_index=torch.as_tensor(labels.row_index),
                probe_vectors=t(labels.probe_vectors),
                probe_products=t(labels.probe_products),
                probe_owner=torch.zeros(2, dtype=torch.long),
            )
        )
    batch = batch_graphs(graphs)
    loss = DistillationLoss([HessianTerm(1.0)])
    assert (
        loss(MorsePotential().predict(batch, Want(hessian_rows=True, probe_products=True)), batch)[1]["hessian"] < 1e-10
    )
    assert (
        loss(MorsePotential(D=1.2, a=1.4).predict(batch, Want(hessian_rows=True, probe_products=True)), batch)[1][
            "hessian"
        ]
        > 1e-2
    )
    only_probes = batch._replace(row_index=None, hessian_rows=None)
    assert (
        loss(MorsePotential().predict(only_probes, Want(hessian_rows=True, probe_products=True)), only_probes)[1][
            "hessian"
        ]
        < 1e-10
    )


def test_fd_teacher_probe_products_equal_its_full_hessian_times_the_probe(emt_teacher):
    atoms = rattled_cu(4)
    probes = derivatives.random_probes(len(atoms), 2, seed=3, frame=0)
    labels = emt_teacher.label(atoms, range(3 * len(atoms)), probes)
    hessian = labels.hessian_rows.reshape(3 * len(atoms), -1)
    expected = np.stack([(hessian @ v.ravel()).reshape(-1, 3) for v in probes])
    assert_close(labels.probe_products, expected, 1e-4, what="EMT H·v")
    assert np.linalg.norm(probes.reshape(2, -1), axis=1) == pytest.approx([1.0, 1.0])


def _sampled(tmp_path, morse_teacher):
    from ffdistill.data.sampling import sample_to_file

    path = str(tmp_path / "sampled.extxyz")
    sample_to_file(
        morse_teacher,
        "Cu",
        path,
        n_frames=30,
        temperatures=(300.0, 900.0),
        runs=2,
        md_fraction=0.5,
        progress=False,
    )
    return path, ase.io.read(path, ":")


def test_sampled_copies_share_their_parents_group_and_blocks_span_100_fs(tmp_path, morse_teacher):
    _, frames = _sampled(tmp_path, morse_teacher)
    n_md = 15
    for k, copy in enumerate(frames[n_md:]):
        parent = frames[k % n_md]
        assert copy.info["group"] == parent.info["group"]
        # strain keeps fractional coordinates, rattle moves them a little: the parent is the nearest
        offsets = [copy.get_scaled_positions() - f.get_scaled_positions() for f in frames[:n_md]]
        distances = [np.abs(d - np.round(d)).mean() for d in offsets]
        assert int(np.argmin(distances)) == k % n_md  # it really is the copy of that parent
    # the default 50 fs a frame (25 steps of 2 fs): a block of 2 frames spans 100 fs; 4 runs of 3-4 frames in
    # blocks of 2: 8 groups
    assert len({f.info["group"] for f in frames}) == 8


def test_splits_never_put_one_group_on_two_sides(tmp_path, morse_teacher):
    from ffdistill.data.labels import LabelStore, label_file

    path, frames = _sampled(tmp_path, morse_teacher)
    store = label_file(morse_teacher, path, str(tmp_path / "s.zarr"), rows=1, progress=False)
    groups = store.groups()
    assert list(groups) == [f.info["group"] for f in frames]
    for seed in range(20):
        sides = split_indices(groups, 0.25, 0.25, seed)
        owners = [set(groups[s]) for s in sides]
        assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2]), seed
        assert sorted(sum(sides, [])) == list(range(len(frames))) and all(sides)
    assert LabelStore(str(tmp_path / "s.zarr")).summary()["groups"] == {"count": 8, "rule": "info:group"}


def test_without_group_ids_frames_are_grouped_in_stated_blocks(emt_teacher, tmp_path, capsys):
    from ffdistill.cli import main
    from ffdistill.data.labels import label_file

    frames = [rattled_cu(k) for k in range(7)]
    ase.io.write(tmp_path / "plain.extxyz", frames)
    store = label_file(
        emt_teacher, str(tmp_path / "plain.extxyz"), str(tmp_path / "b.zarr"), group_size=3, progress=False
    )
    assert list(store.groups()) == [0, 0, 0, 1, 1, 1, 2]
    assert main(["inspect", str(tmp_path / "b.zarr")]) == 0
    assert "blocks of 3 consecutive input frames" in capsys.readouterr().out
    frames[2].info["group"] = 5  # some frames named, others not: ambiguous
    ase.io.write(tmp_path / "mixed.extxyz", frames)
    assert (
        main(["label", str(tmp_path / "mixed.extxyz"), "--teacher", "morse", "-o", str(tmp_path / "m.zarr"), "-q"]) == 2
    )
    assert "1 of 7 structures carry info['group']" in capsys.readouterr().err
    assert not (tmp_path / "m.zarr").exists()


def test_teacher_forces_baseline_refuses_data_without_reference_labels(emt_store, tmp_path, capsys):
    from ffdistill.cli import main

    argv = [
        "compare",
        f"data.store={emt_store}",
        "data.test_fraction=0.2",
        "--methods",
        "undistilled,teacher-forces",
        "-o",
        str(tmp_path / "c"),
        "-q",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "teacher-forces" in err and "reference labels" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c" / "undistilled").exists()  # refused before any training


def test_energy_term_is_per_atom_and_force_term_per_atom_norm():
    """Two structures of 4 and 8 atoms, energy errors 0.4 and 0.8 eV: both 0.1 eV/atom."""
    a, b = rattled_cu(0), rattled_cu(1, (2, 1, 1))
    batch = batch_graphs([from_ase(a, 4.0), from_ase(b, 4.0)])
    batch = batch._replace(energy=torch.zeros(2), forces=torch.zeros(12, 3))
    forces = torch.zeros(12, 3)
    forces[0] = torch.tensor([3.0, 4.0, 0.0])  # |ΔF| = 5 on one atom of 12
    out = StudentOutput(torch.tensor([0.4, -0.8]), forces, None)
    _, values = DistillationLoss([EnergyTerm(1.0), ForceTerm(1.0)])(out, batch)
    assert values["energy"] == pytest.approx(0.1) and values["forces"] == pytest.approx(5 / 12)


def test_refitting_references_solves_the_element_offsets_by_least_squares():
    """After the refit, the energy residuals are orthogonal to the element counts (the normal equations),
    and a student whose energies are off by 0.3 eV per atom plus noise gets that 0.3 eV back."""
    from ase.build import molecule

    torch.manual_seed(0)
    model = build_student("painn-tiny", [1, 6, 8], cutoff=4.0).double()
    torch.nn.init.normal_(model.readout[-1].weight, std=0.3)
    graphs = []
    for k, name in enumerate(["CH3OH", "H2O", "CH4", "CO2", "C2H6", "H2CO"]):
        atoms = molecule(name)
        atoms.rattle(0.05, seed=k)
        g = from_ase(atoms, 4.0, dtype=torch.float64)
        graphs.append(g._replace(energy=model.energy(g).detach() + 0.3 * g.n_atoms))
    model.refit_references(graphs)
    counts = np.array([[int((g.Z == z).sum()) for z in (1, 6, 8)] for g in graphs])
    residuals = np.array([float(g.energy - model.energy(g).detach()) for g in graphs])
    assert np.abs(residuals).max() < 1e-9 and np.abs(counts.T @ residuals).max() < 1e-9


def test_stress_term_is_the_virial_error_per_atom_of_the_labelled_cells_worked_out_by_hand():
    from ffdistill.training.loss import StressTerm

    a, b = rattled_cu(0), rattled_cu(1, (2, 1, 1))
    a.set_cell(a.cell.array * 1.01, scale_atoms=True)
    labels = [np.diag([0.01, 0.02, 0.03]), np.full((3, 3), 0.005)]
    predicted = [np.zeros((3, 3)), np.eye(3) * 0.004]
    graphs = [
        from_ase(atoms, 4.0, dtype=torch.float64)._replace(stress=torch.as_tensor(s)[None])
        for atoms, s in zip((a, b), labels)
    ]
    batch = batch_graphs(graphs)
    out = StudentOutput(energy=torch.zeros(2, dtype=torch.float64), stress=torch.as_tensor(np.stack(predicted)))
    total, count = StressTerm(1.0).contribution(out, batch)
    by_hand = [
        np.sqrt(((p - s) ** 2).sum()) * abs(np.linalg.det(atoms.cell.array)) / len(atoms)
        for atoms, s, p in zip((a, b), labels, predicted)
    ]
    assert count == 2 and float(total) == pytest.approx(sum(by_hand), rel=1e-12)
    unlabelled = batch._replace(stress=torch.stack([batch.stress[0], torch.full((3, 3), float("nan"))]))
    total, count = StressTerm(1.0).contribution(out, unlabelled)  # a frame without stress adds nothing
    assert count == 1 and float(total) == pytest.approx(by_hand[0], rel=1e-12)


def test_training_fits_the_stress_when_the_store_carries_it_and_not_otherwise(emt_store, tmp_path):
    from ffdistill.config import load_config
    from ffdistill.training.trainer import train_from_config

    common = [f"data.store={emt_store}", "model.student=painn-tiny", "model.cutoff=4.0", "train.max_steps=4"]
    common += ["train.validate_every=2", "loss.hessian=0"]
    run = train_from_config(load_config(None, [*common, f"output={tmp_path / 'a'}"]), progress=False)
    assert run.history[-1]["train"]["stress"] > 0  # EMT gives Cu cells a stress: the term is on by default
    off = train_from_config(load_config(None, [*common, f"output={tmp_path / 'b'}", "loss.stress=0"]), progress=False)
    assert "stress" not in off.history[-1]["train"]
