"""The paper's method menu: direct-force students, SchNet, baselines, compare."""

import json

import ase.io
import numpy as np
import pytest
import torch
from conftest import assert_close, rattled_cu, write_frames

from ffdistill import derivatives
from ffdistill.graph import batch_graphs, from_ase
from ffdistill.potential import Want
from ffdistill.students import build_student
from ffdistill.students.base import teacher_embedding_table
from ffdistill.training.loss import ConsistencyTerm, DistillationLoss, NodeFeatureTerm, StudentOutput

#: Direct-force Jacobian columns, autograd vs forward differences (h = 1e-6 Å, float64).
JACOBIAN_ATOL = 1e-4


@pytest.fixture
def direct_student():
    torch.manual_seed(0)
    model = build_student("painn-direct", [29], cutoff=4.0, channels=8, layers=2, n_basis=8).double()
    for p in model.parameters():  # leave the zero-initialised read-out behind: a non-trivial model
        torch.nn.init.normal_(p, std=0.3)
    return model


def test_direct_force_jacobian_by_autograd_equals_finite_differences(direct_student):
    graph = from_ase(rattled_cu(0), 4.0, dtype=torch.float64)
    rows = torch.tensor([0, 5, 11])
    R = graph.R.detach().requires_grad_(True)
    forces = direct_student.compute(graph._replace(R=R), Want()).forces
    autograd = derivatives.force_jacobian_columns(forces, R, rows, graph.batch)
    fd = derivatives.fd_force_jacobian_columns(lambda g: direct_student.predict(g).forces, graph, rows, h=1e-6)
    assert_close(autograd.detach(), fd.detach(), JACOBIAN_ATOL, what="direct-force Jacobian")
    assert autograd.abs().max() > 1e-2
    # the force head is not conservative: its Jacobian is not symmetric
    J = derivatives.fd_force_jacobian_columns(
        lambda g: direct_student.predict(g).forces, graph, range(12), h=1e-6
    ).reshape(12, 12)
    assert (J - J.T).abs().max() > 1e-3 * J.abs().max()


@pytest.mark.parametrize("jacobian", ["autograd", "fd"])
def test_direct_student_rows_in_each_jacobian_mode_equal_central_differences_of_its_force_head(
    direct_student, jacobian
):
    graphs = [
        from_ase(rattled_cu(k), 4.0, dtype=torch.float64)._replace(row_index=torch.tensor([1, 7])) for k in range(2)
    ]
    batch = batch_graphs([g._replace(hessian_rows=torch.zeros(2, 4, 3, dtype=torch.float64)) for g in graphs])
    direct_student.set_jacobian(jacobian, 1e-6)
    out = direct_student.predict(batch, Want(hessian_rows=True, conservative_forces=True))
    h, expected = 1e-5, torch.zeros(4, 8, 3, dtype=torch.float64)
    with torch.no_grad():  # written out here: -(F(R + h e_r) - F(R - h e_r)) / 2h of the force head alone
        for k, r in enumerate(batch.row_index.tolist()):
            step = torch.zeros(8 * 3, dtype=torch.float64)
            step[r] = h
            plus = direct_student.compute(batch._replace(R=batch.R + step.view(8, 3)), Want()).forces
            minus = direct_student.compute(batch._replace(R=batch.R - step.view(8, 3)), Want()).forces
            expected[k] = -(plus - minus) / (2 * h)
    assert_close(out.hessian_rows, expected, JACOBIAN_ATOL, what=f"{jacobian} rows")
    assert expected.abs().max() > 1e-2
    assert out.conservative_forces is not None and not torch.allclose(out.conservative_forces, out.forces)


@pytest.mark.parametrize("name", ["schnet-tiny", "painn-tiny"])
def test_second_family_passes_the_conformance_checks(name, cu_atoms):
    torch.manual_seed(0)
    model = build_student(name, [29], cutoff=4.0).double()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    graph = from_ase(cu_atoms, 4.0, dtype=torch.float64)
    assert_close(
        derivatives.predict(model.energy, graph).forces,
        derivatives.fd_forces(model.energy, graph),
        1e-6,
        what=f"{name} forces",
    )
    pred = derivatives.predict(model.energy, graph, create_graph=True)
    rows = derivatives.hessian_rows(pred.forces, pred.positions, [0, 9])
    fd = derivatives.fd_hessian_rows(lambda g: derivatives.predict(model.energy, g).forces, graph, [0, 9], h=1e-4)
    assert_close(rows, fd, 1e-5, what=f"{name} Hessian rows")
    batch = batch_graphs([graph, from_ase(rattled_cu(2, (2, 1, 1)), 4.0, dtype=torch.float64)])
    assert_close(model.energy(batch).detach()[:1], model.energy(graph).detach(), 1e-10, what="batched == single")


def test_n2n_term_is_zero_at_its_optimum_and_its_gradient_reaches_the_projection():
    torch.manual_seed(0)
    term = NodeFeatureTerm(weight=1.0, student_channels=4, teacher_channels=3)
    graph = from_ase(rattled_cu(0), 3.0)
    student_features = torch.randn(graph.n_atoms, 4)
    target = term.projection(student_features).detach()
    out = StudentOutput(torch.zeros(1), torch.zeros(graph.n_atoms, 3), None, student_features)
    loss = DistillationLoss([term])
    total, values = loss(out, graph._replace(node_features=target))
    assert values["n2n"] < 1e-12
    total, values = loss(out, graph._replace(node_features=target + 0.1))
    total.backward()
    assert values["n2n"] > 0 and term.projection.weight.grad.abs().sum() > 0


def test_consistency_term_is_zero_when_the_energy_head_agrees(direct_student):
    graph = from_ase(rattled_cu(0), 4.0, dtype=torch.float64)
    out = direct_student(graph, Want(conservative_forces=True, differentiable=True))
    loss = DistillationLoss([ConsistencyTerm(1.0)])
    assert loss(out, graph._replace(forces=out.conservative_forces.detach()))[1]["consistency"] < 1e-12
    total, values = loss(out, graph._replace(forces=out.forces.detach()))
    total.backward()
    assert values["consistency"] > 0
    assert direct_student.readout[0].weight.grad.abs().sum() > 0  # reaches the energy head


def test_a2a_keeps_the_teacher_table_frozen_and_learns_its_map(tmp_path):
    from ase.build import molecule

    from ffdistill.calculator import load_student, save_student

    teacher = {1: np.array([1.0, 0.0, 0.5, 2.0]), 6: np.array([0.0, 1.0, -1.0, 0.0]), 8: np.array([3.0, 1.0, 0.0, 1.0])}
    torch.manual_seed(0)
    student = build_student("painn-tiny", [1, 6, 8], cutoff=4.0, teacher_embedding_dim=4)
    student.set_teacher_embeddings(teacher_embedding_table(student, teacher))
    assert all(p is not student.teacher_embeddings for p in student.parameters())
    graph = from_ase(molecule("CH3OH"), 4.0)
    # every forward maps the frozen table: the embedding of atom i is W e_teacher[Z_i] + b, by hand
    W, b = student.teacher_map.weight.detach(), student.teacher_map.bias.detach()
    by_hand = torch.stack([W @ torch.as_tensor(teacher[int(z)], dtype=torch.float32) + b for z in graph.Z])
    assert_close(student.embed(graph.Z).detach(), by_hand, 1e-6, what="a2a input features")
    torch.nn.init.normal_(student.readout[-1].weight, std=0.3)  # a read-out that depends on the embeddings
    derivatives.predict(student.energy, graph, create_graph=True).forces.pow(2).sum().backward()
    assert student.teacher_map.weight.grad.abs().sum() > 0
    assert student.teacher_embeddings.grad is None and not student.teacher_embeddings.requires_grad
    save_student(student, str(tmp_path / "a2a.pt"))
    again = load_student(str(tmp_path / "a2a.pt"))
    assert_close(again.energy(graph).detach(), student.energy(graph).detach(), 1e-6, what="a2a student after save/load")


def test_nonconservative_teacher_still_gives_a_conservative_student(tmp_path):
    from ffdistill.calculator import load_calculator
    from ffdistill.config import load_config
    from ffdistill.data.labels import label_file
    from ffdistill.deploy.simulate import nve_energy_drift
    from ffdistill.teachers.toy import CurlTeacher
    from ffdistill.training.trainer import train_from_config

    teacher = CurlTeacher(strength=0.5)
    frames = write_frames(tmp_path / "f.extxyz", n=8, reps=(2, 1, 1))
    label_file(teacher, frames, str(tmp_path / "s.zarr"), rows=2, progress=False)
    config = load_config(
        None,
        [
            f"data.store={tmp_path / 's.zarr'}",
            f"output={tmp_path / 'run'}",
            "model.student=painn-tiny",
            "model.cutoff=4.0",
            "train.epochs=3",
            "loss.hessian=1",
        ],
    )
    student = load_calculator(train_from_config(config, progress=False).best_path)
    start = rattled_cu(1, (2, 2, 2))
    student_drift = nve_energy_drift(student, start, steps=200, temperature=300)["drift_meV_per_atom_per_ps"]
    teacher_drift = nve_energy_drift(teacher.as_calculator(), start, steps=200, temperature=300)[
        "drift_meV_per_atom_per_ps"
    ]
    assert abs(student_drift) < 1.0, student_drift
    assert abs(teacher_drift) > 10 * max(abs(student_drift), 0.1), (teacher_drift, student_drift)


def test_compare_reports_each_seeds_test_errors_and_their_mean_and_spread_as_recomputed_by_hand(tmp_path, capsys):
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from ffdistill.calculator import PotentialCalculator, load_student
    from ffdistill.cli import main
    from ffdistill.config import load_config
    from ffdistill.data.frames import split_indices
    from ffdistill.data.labels import LabelStore

    frames = []
    for k in range(10):  # EMT energies and forces play the reference (DFT) labels; Morse is the teacher
        atoms = rattled_cu(k)
        atoms.info["group"] = k
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(atoms)
    ase.io.write(tmp_path / "f.extxyz", frames)
    store = tmp_path / "s.zarr"
    label = ["label", str(tmp_path / "f.extxyz"), "--teacher", "morse", "--hessian-rows", "3", "--node-features"]
    assert main([*label, "-o", str(store), "-q"]) == 0
    argv = [
        "compare",
        f"data.store={store}",
        "data.test_fraction=0.2",
        "model.student=painn-tiny",
        "model.cutoff=4.0",
        "train.epochs=1",
        "--seeds",
        "2",
        "--md-steps",
        "5",
        "-o",
        str(tmp_path / "cmp"),
        "-q",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])["methods"]
    assert set(result) == {"undistilled", "hessian", "n2n", "a2a", "teacher-forces"}
    # The held-out frames, and every method scored on them against the EMT reference labels, in numpy.
    data = load_config(None, []).data
    labels = LabelStore(str(store))
    _, _, test_idx = split_indices(labels.groups(), data.val_fraction, 0.2, data.split_seed)
    assert len(test_idx) == 2
    test = [labels.frame(i) for i in test_idx]
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines() if line.startswith("| ")}
    for method, per_seed in result.items():
        energy_mae, force_mae = [], []
        for seed in range(2):
            path = tmp_path / "cmp" / method / f"seed{seed}" / "best.pt"
            calc = PotentialCalculator(load_student(str(path)).double(), dtype=torch.float64)
            e_err, f_err = [], []
            for atoms, lab in test:
                atoms = atoms.copy()
                atoms.calc = calc
                e_err.append(abs(atoms.get_potential_energy() - lab["ref_energy"]) / len(atoms))
                f_err.append(np.abs(atoms.get_forces() - lab["ref_forces"]).ravel())
            energy_mae.append(1000 * np.mean(e_err))
            force_mae.append(1000 * np.concatenate(f_err).mean())
        assert per_seed["force_mae_meV_per_A"] == pytest.approx(force_mae, rel=1e-4), method
        assert per_seed["energy_mae_meV_per_atom"] == pytest.approx(energy_mae, rel=1e-4, abs=1e-3), method
        assert min(force_mae) > 1.0 and abs(force_mae[0] - force_mae[1]) > 0.01  # the seeds differ: a real spread
        # the table: mean ± population spread of the two seeds, (a + b) / 2 ± |a - b| / 2, to 3 and 2 digits
        for cell, (a, b) in ((rows[method][0], energy_mae), (rows[method][1], force_mae)):
            mean, spread = (float(x) for x in cell.split("±"))
            assert mean == pytest.approx((a + b) / 2, rel=5e-3, abs=1e-3), (method, cell)
            assert spread == pytest.approx(abs(a - b) / 2, rel=5e-2, abs=1e-3), (method, cell)
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["methods"] == result and saved["test_frames"] == 2
