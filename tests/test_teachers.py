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
    "spec, mace, message",
    [
        ("nonsense", None, r"^unknown teacher spec 'nonsense': use sevenn"),
        ("ase:nope", None, r"^ase teacher spec must be ase:MODULE:FACTORY, got ase:nope$"),
        ("ase:no.such.module:X", None, r"^cannot load ASE calculator no\.such\.module:X: No module named 'no'$"),
        ("ase:ase.calculators.emt:Nope", None, r"^cannot load ASE calculator .*has no attribute 'Nope'$"),
        # without mace-torch the package is named, with how to get it; the file is not looked at
        ("mace:/no/such/file.model", "absent", r"^MACE teachers need mace-torch: .*--teacher-python"),
        ("mace:{there}", "absent", r"^MACE teachers need mace-torch: .*--teacher-python"),
        # with it (a stand-in module), a missing file is named by its path, and a file that is there needs trust
        ("mace:/no/such/file.model", "installed", r"^MACE model file not found: /no/such/file\.model$"),
        ("mace:{there}", "installed", r"^{there} is a pickled model .*pass --trust-teacher"),
    ],
)
def test_bad_specs_are_refused(spec, mace, message, tmp_path, monkeypatch):
    import re
    import sys
    import types

    if mace is not None:  # None in sys.modules makes ``import mace`` raise ImportError
        monkeypatch.setitem(sys.modules, "mace", types.ModuleType("mace") if mace == "installed" else None)
    there = tmp_path / "there.model"
    there.write_bytes(b"not really a model")
    spec, message = spec.format(there=there), message.replace("{there}", re.escape(str(there)))
    with pytest.raises(TeacherError, match=message) as caught:
        load_teacher(spec)
    if mace == "absent":
        assert "not found" not in str(caught.value) and spec[5:] not in str(caught.value)
    if mace == "installed":
        assert "mace-torch" not in str(caught.value)


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


#: EMT Hessian rows: the teacher's central differences (h = 1e-3 Å) vs ours (h = 1e-4 Å), eV/Å². The two
#: differ by their truncation errors, h²/6 · d³F/dR³: seen here 8e-6 on entries up to 9 eV/Å².
EMT_FD_ATOL = 1e-4


def test_ase_teacher_labels_match_the_calculator(emt_teacher, cu_atoms):
    """Energy, forces and the full stress tensor equal EMT's own; Hessian rows equal central differences
    (h = 1e-4 Å) of EMT's forces, computed here: rows 2 (atom 0, z) and 5 (atom 1, z), d²E/dR_r dR."""
    from ase.calculators.emt import EMT

    rows = [2, 5]
    labels = emt_teacher.label(cu_atoms, rows=rows)
    cu_atoms.calc = EMT()
    assert labels.energy == pytest.approx(cu_atoms.get_potential_energy(), rel=1e-14)
    assert_close(labels.forces, cu_atoms.get_forces(), 1e-12, what="forces")
    # ASE's Voigt order is xx, yy, zz, yz, xz, xy (eV/Å³, positive under tension); the labels are (3, 3)
    voigt = cu_atoms.get_stress()
    expected = np.empty((3, 3))
    for k, (a, b) in enumerate([(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]):
        expected[a, b] = expected[b, a] = voigt[k]
    assert labels.stress.shape == (3, 3) and np.abs(voigt[3:]).min() > 1e-5  # rattled: shear is not zero
    assert_close(labels.stress, expected, 1e-12, what="stress, all 9 components")
    step = 1e-4
    fd = np.empty((len(rows), len(cu_atoms), 3))
    for k, r in enumerate(rows):
        moved = []
        for sign in (1, -1):
            atoms = cu_atoms.copy()
            atoms.positions[r // 3, r % 3] += sign * step
            atoms.calc = EMT()
            moved.append(atoms.get_forces())
        fd[k] = -(moved[0] - moved[1]) / (2 * step)  # H[r, :] = -dF/dR_r
    assert labels.hessian_rows.shape == fd.shape and np.array_equal(labels.row_index, rows)
    assert np.abs(fd).max() > 1.0  # a real, non-trivial Hessian
    assert_close(labels.hessian_rows, fd, EMT_FD_ATOL, what="Hessian rows vs central differences")


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
