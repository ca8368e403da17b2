"""Teacher adapters: spec parsing, element coverage, refusal of broken outputs, the real SevenNet-0."""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from conftest import assert_close

from ffdistill import derivatives
from ffdistill.errors import TeacherError
from ffdistill.teachers import load_teacher
from ffdistill.teachers.ase_calc import ASETeacher

SEVENNET_FD_ATOL = 5e-3  # eV/Å²


class BrokenCalculator(Calculator):
    """Returns whatever it is told to: NaN, absurd forces."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, force_value):
        super().__init__()
        self.force_value = force_value

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": 0.0, "forces": np.full((len(atoms), 3), self.force_value), "stress": np.zeros(6)}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nonsense", "unknown teacher"),
        ("ase:nope", "ase:MODULE:FACTORY"),
        ("ase:no.such.module:X", "cannot load"),
        ("mace:/no/such/file.model", "MACE|mace"),
    ],
)
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(TeacherError, match=message):
        load_teacher(spec)


@pytest.mark.parametrize("value, message", [(np.nan, "non-finite"), (5e3, "absurd force")])
def test_broken_teacher_outputs_are_refused(cu_atoms, value, message):
    teacher = ASETeacher(BrokenCalculator(value), spec="broken")
    with pytest.raises(TeacherError, match=message):
        teacher.label(cu_atoms, rows=[0])


def test_element_outside_teacher_is_refused(emt_teacher):
    with pytest.raises(TeacherError, match="does not cover element.*Si"):
        emt_teacher.label(bulk("Si", "diamond", 5.43))


def test_pickled_teacher_files_need_trust(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"not really a checkpoint")
    with pytest.raises(TeacherError, match="trust-teacher"):
        load_teacher(f"sevenn:{path}")


def test_ase_teacher_labels_match_the_calculator(emt_teacher, cu_atoms):
    from ase.calculators.emt import EMT

    labels = emt_teacher.label(cu_atoms, rows=[2, 5])
    cu_atoms.calc = EMT()
    assert labels.energy == pytest.approx(cu_atoms.get_potential_energy())
    assert_close(labels.forces, cu_atoms.get_forces(), 1e-12, what="forces")
    assert_close(labels.stress.ravel()[[0, 4, 8]], cu_atoms.get_stress()[:3], 1e-12, what="stress")
    assert labels.hessian_rows.shape == (2, len(cu_atoms), 3)


@pytest.mark.slow
def test_sevennet_matches_its_calculator_and_finite_differences():
    """The real SevenNet-0: ffdistill's energy-only wrapper reproduces SevenNetCalculator, and its
    autograd Hessian rows match central differences of its forces (float32: loose tolerance)."""
    from sevenn.calculator import SevenNetCalculator

    teacher = load_teacher("sevenn")
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.05, seed=0)
    rows = [0, 7, 20]
    labels = teacher.label(atoms, rows=rows)
    atoms.calc = SevenNetCalculator("7net-0", device="cpu")
    assert labels.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-4)
    assert_close(labels.forces, atoms.get_forces(), 1e-4, what="forces vs SevenNetCalculator")
    assert_close(labels.stress.ravel()[[0, 4, 8]], atoms.get_stress()[:3], 1e-5, what="stress")
    force_fn = lambda g: derivatives.predict(teacher.energy, g).forces  # noqa: E731
    # float32 (e3nn kernels will not run in float64): h = 3e-3 Å balances rounding and truncation;
    # seen here: max difference 5e-4 eV/Å² on entries up to 12 eV/Å².
    fd = derivatives.fd_hessian_rows(force_fn, teacher.graph(atoms), rows, h=3e-3)
    assert_close(
        labels.hessian_rows, fd.numpy(), SEVENNET_FD_ATOL, what="SevenNet-0 Hessian rows vs finite differences"
    )
    assert np.abs(labels.hessian_rows).max() > 1.0  # a real, non-trivial Hessian
