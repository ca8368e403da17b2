"""Real teachers exercised against their own packages: CHGNet, dxtb (GFN1-xTB), SevenNet models by name.

Each test compares ffdistill's labels with the package's own calculator or with finite differences
done here, outside ffdistill. All weights ship inside the packages: nothing is downloaded.
"""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from conftest import assert_close

from ffdistill.errors import TeacherError
from ffdistill.teachers import load_teacher


def _central_differences(force_fn, atoms: Atoms, rows, h: float) -> np.ndarray:
    """Hessian rows -(F(R + h e_r) - F(R - h e_r)) / 2h from ``force_fn(atoms) -> (N, 3)``, done here."""
    out = []
    for r in rows:
        step = np.zeros(3 * len(atoms))
        step[r] = h
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions += step.reshape(-1, 3)
        minus.positions -= step.reshape(-1, 3)
        out.append(-(force_fn(plus) - force_fn(minus)) / (2 * h))
    return np.stack(out)


# --------------------------------------------------------------------------------------------- CHGNet


@pytest.fixture(scope="module")
def chgnet_teacher():
    pytest.importorskip("chgnet", reason="chgnet is not installed: pip install -e '.[test]' (CI installs it)")
    return load_teacher("chgnet")


def test_chgnet_labels_match_its_calculator(chgnet_teacher):
    """ffdistill's CHGNet labels (energy, forces, stress, finite-difference Hessian rows) against
    CHGNet's own ASE calculator, driven here. Seen here (chgnet 0.4.2, LiF, 8 atoms): energy, forces
    and stress identical; Hessian rows within 3e-7 eV/Å² (float32 rounding) on entries up to 4 eV/Å²."""
    from chgnet.model.dynamics import CHGNetCalculator

    atoms = bulk("LiF", "rocksalt", 4.03, cubic=True)
    atoms.rattle(0.03, seed=0)
    rows = [0, 5, 13]
    labels = chgnet_teacher.label(atoms, rows=rows)

    calc = CHGNetCalculator(use_device="cpu")
    reference = atoms.copy()
    reference.calc = calc
    assert labels.energy == pytest.approx(reference.get_potential_energy(), abs=1e-6)
    assert_close(labels.forces, reference.get_forces(), 1e-6, what="CHGNet forces")
    assert_close(labels.stress, reference.get_stress(voigt=False), 1e-7, what="CHGNet stress")

    def forces(displaced):
        displaced.calc = calc
        return displaced.get_forces()

    fd = _central_differences(forces, atoms, rows, h=chgnet_teacher.fd_step)
    assert_close(labels.hessian_rows, fd, 1e-5, what="CHGNet Hessian rows vs central differences of its calculator")
    assert np.abs(labels.hessian_rows).max() > 1.0  # a real, non-trivial Hessian


# ----------------------------------------------------------------------------------------------- dxtb


@pytest.fixture(scope="module")
def dxtb_teacher():
    pytest.importorskip("dxtb", reason="dxtb is not installed: see the README's install section (CI installs it)")
    return load_teacher("dxtb")


@pytest.fixture(scope="module")
def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.02, seed=1)
    return atoms


def test_dxtb_energy_matches_dxtb_called_directly(dxtb_teacher, ethanol):
    """GFN1-xTB energy of ethanol through ffdistill (Å, eV) against dxtb called here on its own, with
    its default options (Bohr, Hartree)."""
    import dxtb
    from ase.units import Bohr, Hartree

    labels = dxtb_teacher.label(ethanol)
    numbers = torch.tensor(ethanol.numbers)
    direct = dxtb.calculators.GFN1Calculator(numbers, dtype=torch.float64)
    energy = direct.get_energy(torch.tensor(ethanol.positions / Bohr, dtype=torch.float64)).item() * Hartree
    assert labels.energy == pytest.approx(energy, abs=1e-6)  # seen here: 2e-10 eV
    assert labels.energy == pytest.approx(-330.70977, abs=1e-4)  # GFN1-xTB, dxtb 0.4.0, as seen here
    assert labels.stress is None


def test_dxtb_forces_are_minus_the_energy_gradient(dxtb_teacher, ethanol):
    """Forces (autograd through the SCF) against central differences of the energy, a few coordinates.
    Seen here: within 2e-7 eV/Å over all 27 coordinates (h = 1e-4 Å)."""
    # The second call on a structure: dxtb 0.4.0's calculators, reused, got this one's gradients wrong.
    labels = [dxtb_teacher.label(ethanol) for _ in range(2)][-1]
    h = 1e-4
    for r in [0, 7, 13, 26]:
        step = np.zeros(3 * len(ethanol))
        step[r] = h
        energies = []
        for sign in (1, -1):
            displaced = ethanol.copy()
            displaced.positions += sign * step.reshape(-1, 3)
            with torch.no_grad():
                energies.append(float(dxtb_teacher.energy(dxtb_teacher.graph(displaced))))
        fd = -(energies[0] - energies[1]) / (2 * h)
        assert fd == pytest.approx(labels.forces.reshape(-1)[r], abs=1e-6), f"force component {r}"


def test_dxtb_hessian_rows_match_finite_differences(dxtb_teacher, ethanol):
    """Autograd Hessian rows (second derivatives through the SCF) against central differences of the
    forces. Seen here: max difference 1e-6 eV/Å² (h = 1e-4 Å; 1e-4 eV/Å² with h = 1e-3 Å) on entries
    up to 48 eV/Å². dxtb's "implicit" SCF mode was 1.8 eV/Å² off; a reused calculator 0.5 eV/Å in forces."""
    rows = [0, 13, 26]
    labels = dxtb_teacher.label(ethanol, rows=rows)
    fd = _central_differences(lambda a: dxtb_teacher.label(a).forces, ethanol, rows, h=1e-4)
    assert_close(labels.hessian_rows, fd, 1e-5, what="dxtb Hessian rows vs central differences")
    assert np.abs(labels.hessian_rows).max() > 10.0


def test_dxtb_gfn2_energy_matches_dxtb_called_directly(ethanol):
    pytest.importorskip("tad_libcint", reason="tad-libcint is not installed: see requirements-dxtb.txt")
    import dxtb
    from ase.units import Bohr, Hartree

    teacher = load_teacher("dxtb:gfn2")
    assert teacher.spec == "dxtb:gfn2"
    direct = dxtb.calculators.GFN2Calculator(torch.tensor(ethanol.numbers), dtype=torch.float64)
    energy = direct.get_energy(torch.tensor(ethanol.positions / Bohr, dtype=torch.float64)).item() * Hartree
    assert teacher.label(ethanol).energy == pytest.approx(energy, abs=1e-6)  # seen here: 4e-11 eV


def test_dxtb_refuses_periodic_structures(dxtb_teacher):
    with pytest.raises(TeacherError, match="molecules only"):
        dxtb_teacher.label(bulk("Si", "diamond", 5.43))


def test_dxtb_spec_names_the_method():
    pytest.importorskip("dxtb", reason="dxtb is not installed")
    with pytest.raises(TeacherError, match="unknown dxtb method"):
        load_teacher("dxtb:gfn3")
    assert load_teacher("dxtb:gfn1").spec == "dxtb"


# ------------------------------------------------------------------------------------ SevenNet by name


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec, model, modal",
    [
        ("sevenn:7net-0", "7net-0", None),
        ("sevenn:7net-l3i5", "7net-l3i5", None),
        ("sevenn:7net-mf-0@r2scan", "7net-mf-0", "R2SCAN"),
    ],
)
def test_sevennet_models_by_name_match_their_calculator(spec, model, modal):
    """Energy, forces and stress of each bundled SevenNet model (2-atom Si) equal sevenn's own
    SevenNetCalculator(model, modal) within float32 rounding."""
    from sevenn.calculator import SevenNetCalculator

    teacher = load_teacher(spec)
    atoms = bulk("Si", "diamond", 5.43)
    atoms.rattle(0.05, seed=0)
    labels = teacher.label(atoms)
    reference = atoms.copy()
    reference.calc = SevenNetCalculator(model, device="cpu", modal=modal)
    assert labels.energy == pytest.approx(reference.get_potential_energy(), abs=1e-4)
    assert_close(labels.forces, reference.get_forces(), 1e-4, what=f"{spec} forces")
    assert_close(labels.stress.ravel()[[0, 4, 8]], reference.get_stress()[:3], 1e-5, what=f"{spec} stress")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("sevenn:7net-mf-0", r"multi-modal: choose sevenn:7net-mf-0@MODAL, one of PBE, R2SCAN"),
        ("sevenn:7net-mf-0@hse", r"unknown modal 'hse' for SevenNet model 7net-mf-0: use one of PBE, R2SCAN"),
        ("sevenn:7net-0@PBE", r"single fidelity"),
    ],
)
def test_sevennet_modal_is_checked(spec, message):
    with pytest.raises(TeacherError, match=message):
        load_teacher(spec)
