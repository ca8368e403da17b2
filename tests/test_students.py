"""Students are energy-only; derivatives come from the shared module and must be right."""

import numpy as np
import pytest
import torch
from conftest import assert_close, rattled_cu

from ffdistill import derivatives, load_calculator
from ffdistill.calculator import load_student, save_student
from ffdistill.errors import InputError
from ffdistill.graph import batch_graphs, from_ase
from ffdistill.potential import Want
from ffdistill.students import PRESETS, build_student
from ffdistill.teachers.toy import MorsePotential
from ffdistill.training.loss import DistillationLoss, HessianRowTerm, StudentOutput


@pytest.fixture
def student():
    torch.manual_seed(0)
    model = build_student("painn-tiny", [29], cutoff=4.0).double()
    with torch.no_grad():  # a fresh read-out is zero (E = element references): forces would be 0 and every
        model.readout[-1].weight.normal_(0.0, 0.5)  # derivative check trivially true
    return model


def test_presets_have_growing_parameter_counts():
    counts = [build_student(name, [14]).n_parameters() for name in ("painn-tiny", "painn-small", "painn-medium")]
    assert counts == sorted(counts) and counts[0] > 1000
    assert set(PRESETS) >= {"painn-tiny", "painn-small", "painn-medium"}


def test_student_forces_equal_finite_differences(student, cu_atoms):
    graph = from_ase(cu_atoms, 4.0, dtype=torch.float64)
    forces = derivatives.predict(student.energy, graph).forces
    assert_close(forces, derivatives.fd_forces(student.energy, graph), 1e-6, what="student forces")


def test_student_hessian_rows_equal_finite_differences_of_forces(student, cu_atoms):
    graph = from_ase(cu_atoms, 4.0, dtype=torch.float64)
    rows = [1, 6, 11]
    pred = derivatives.predict(student.energy, graph, create_graph=True)
    autograd = derivatives.hessian_rows(pred.forces, pred.positions, rows)
    fd = derivatives.fd_hessian_rows(lambda g: derivatives.predict(student.energy, g).forces, graph, rows, h=1e-4)
    assert_close(autograd, fd, 1e-5, what="student Hessian rows")


def test_student_is_translation_and_rotation_invariant(student, cluster):
    from ffdistill.students.painn import PaiNN

    model = PaiNN([1, 6, 8], channels=8, layers=2, cutoff=3.0).double()
    graph = from_ase(cluster, 3.0, dtype=torch.float64)
    rotated = cluster.copy()
    rotated.rotate(37, "x", center="COM")
    rotated.translate([0.3, -1.0, 2.0])
    e1, e2 = model.energy(graph), model.energy(from_ase(rotated, 3.0, dtype=torch.float64))
    assert_close(e1.detach(), e2.detach(), 1e-10, what="energy invariance")


def test_batched_student_equals_single(student):
    graphs = [from_ase(rattled_cu(k, (1 + k, 1, 1)), 4.0, dtype=torch.float64) for k in range(3)]
    batch = batch_graphs(graphs)
    pred = derivatives.predict(student.energy, batch)
    singles = [derivatives.predict(student.energy, g) for g in graphs]
    assert_close(pred.energy, torch.cat([p.energy for p in singles]), 1e-10, what="energies")
    assert_close(pred.forces, torch.cat([p.forces for p in singles]), 1e-10, what="forces")


def _labelled(potential, atoms, rows):
    graph = from_ase(atoms, 5.0, dtype=torch.float64)
    pred = derivatives.predict(potential.energy, graph, create_graph=True)
    hess = derivatives.hessian_rows(pred.forces, pred.positions, rows).detach()
    return graph._replace(
        energy=pred.energy.detach(), forces=pred.forces.detach(), hessian_rows=hess, row_index=torch.tensor(rows)
    )


def test_hessian_loss_is_zero_for_the_teacher_itself_and_positive_otherwise(cu_atoms):
    teacher = MorsePotential()
    batch = batch_graphs([_labelled(teacher, cu_atoms, [2, 7]), _labelled(teacher, rattled_cu(5), [0])])
    loss = DistillationLoss([HessianRowTerm(weight=1.0)])
    _, same = loss(teacher.predict(batch, Want(hessian_rows=True, probe_products=True)), batch)
    assert same["hessian"] < 1e-10
    _, other = loss(MorsePotential(D=1.2, a=1.4).predict(batch, Want(hessian_rows=True, probe_products=True)), batch)
    assert other["hessian"] > 1e-2
    out = teacher.predict(batch, Want(hessian_rows=True, probe_products=True))
    assert loss(StudentOutput(out.energy, out.forces, out.hessian_rows * 1.01), batch)[1]["hessian"] > 0


def test_saved_student_loads_as_plain_data_and_as_calculator(student, tmp_path, cu_atoms):
    path = str(tmp_path / "student.pt")
    save_student(student.float(), path, note="test")
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "ffdistill-student" and payload["arch"] == "painn"
    reloaded = load_student(path)
    graph = from_ase(cu_atoms, 4.0)
    assert_close(reloaded.energy(graph).detach(), student.float().energy(graph).detach(), 1e-6, what="reloaded energy")
    atoms = cu_atoms.copy()
    atoms.calc = load_calculator(path)
    pred = derivatives.predict(student.energy, graph, stress=True)
    assert atoms.get_potential_energy() == pytest.approx(float(pred.energy), rel=1e-6)
    assert_close(atoms.get_forces(), pred.forces, 1e-5, what="calculator forces")
    assert_close(atoms.get_stress(voigt=False), pred.stress[0], 1e-6, what="calculator stress")


def test_student_refuses_unknown_elements_and_non_student_files(student, tmp_path):
    from ase.build import bulk

    path = str(tmp_path / "student.pt")
    save_student(student, path)
    atoms = bulk("Si", "diamond", 5.43)
    atoms.calc = load_calculator(path)
    with pytest.raises(InputError, match="not trained on Si"):
        atoms.get_potential_energy()
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InputError, match="not an ffdistill student file"):
        load_student(str(tmp_path / "junk.pt"))
    torch.save({"a": np.float64(1.0).item()}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not an ffdistill student"):
        load_student(str(tmp_path / "other.pt"))


def test_forward_difference_rows_track_the_exact_rows_and_train(student, cu_atoms):
    """``model.jacobian=fd`` (the training default): rows by forward differences of the forces agree with
    the autograd rows to O(h), and the loss's gradient reaches the parameters through them."""
    graph = from_ase(cu_atoms, 4.0, dtype=torch.float64)._replace(row_index=torch.tensor([1, 6, 11]))
    want = Want(hessian_rows=True, differentiable=True)
    exact = student.predict(graph, want).hessian_rows
    student.set_jacobian("fd", 1e-6)
    try:
        approx = student.predict(graph, want).hessian_rows
        assert_close(approx.detach(), exact.detach(), 1e-4, what="fd rows vs autograd rows")
        assert exact.abs().max() > 1e-2
        approx.pow(2).sum().backward()
        assert any(p.grad is not None and p.grad.abs().max() > 0 for p in student.parameters())
    finally:
        student.set_jacobian("autograd")


def test_a_compiled_student_gives_the_same_forces_on_structures_of_different_sizes(tmp_path):
    """``load_calculator(compile=True)``: torch.compile with dynamic shapes, one compilation for every size."""
    import numpy as np
    from conftest import rattled_cu

    from ffdistill.calculator import load_calculator, save_student

    torch.manual_seed(0)
    student = build_student("painn-tiny", [29], 4.0)
    with torch.no_grad():
        for p in student.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    save_student(student, str(tmp_path / "s.pt"))
    plain, fast = load_calculator(str(tmp_path / "s.pt")), load_calculator(str(tmp_path / "s.pt"), compile=True)
    for reps in ((1, 1, 1), (2, 1, 1), (2, 2, 1)):  # 4, 8 and 16 atoms: new edge counts each time
        a, b = rattled_cu(1, reps), rattled_cu(1, reps)
        a.calc, b.calc = plain, fast
        forces = a.get_forces()
        np.testing.assert_allclose(b.get_forces(), forces, atol=1e-5 * max(1.0, np.abs(forces).max()))
        assert abs(b.get_potential_energy() - a.get_potential_energy()) <= 1e-5 * abs(a.get_potential_energy())
        assert np.abs(forces).max() > 1e-3
