"""Where frames and Hessian rows come from."""

import numpy as np
import pytest
import torch
from conftest import rattled_cu

from ffdistill.data.sampling import perturbed_copies, select_rows, teacher_md_frames
from ffdistill.graph import from_ase


def _graph_with_rows(norms):
    graph = from_ase(rattled_cu(0), 3.0)
    k = len(norms)
    rows = torch.zeros(k, graph.n_atoms, 3)
    rows[:, 0, 0] = torch.tensor(norms)
    return graph._replace(hessian_rows=rows, row_index=torch.arange(k))


def test_uniform_row_sampling_is_uniform_and_keeps_rows_with_their_labels():
    graph = _graph_with_rows([1.0, 2.0, 3.0, 4.0])
    generator = torch.Generator().manual_seed(0)
    counts = np.zeros(4)
    for _ in range(4000):
        picked = select_rows(graph, 1, generator)
        counts[int(picked.row_index)] += 1
        assert float(picked.hessian_rows[0, 0, 0]) == float(picked.row_index) + 1
    assert np.abs(counts / 4000 - 0.25).max() < 0.03


def test_biased_sampler_follows_its_softmax_probabilities():
    norms = [0.5, 1.0, 2.0, 3.0]
    temperature = 1.0
    graph = _graph_with_rows(norms)
    expected = np.exp(np.array(norms) / temperature)
    expected /= expected.sum()
    generator = torch.Generator().manual_seed(1)
    n = 6000
    counts = np.bincount([int(select_rows(graph, 1, generator, temperature).row_index) for _ in range(n)], minlength=4)
    chi2 = (((counts - n * expected) ** 2) / (n * expected)).sum()
    assert chi2 < 16.27, (counts / n, expected)  # chi-square, 3 degrees of freedom, p = 0.001


def test_perturbed_copies_rattle_and_strain():
    base = rattled_cu(0, (2, 1, 1))
    copies = perturbed_copies([base], 3, seed=0)
    assert len(copies) == 3 and all(len(c) == len(base) for c in copies)
    assert all(not np.allclose(c.cell.array, base.cell.array) for c in copies)
    assert all(np.abs(c.get_scaled_positions() - base.get_scaled_positions()).max() > 1e-3 for c in copies)


def test_teacher_md_frames_are_spaced_and_distinct(morse_teacher):
    frames = teacher_md_frames(
        morse_teacher, rattled_cu(0, (2, 2, 2)), n_frames=3, temperature=300, interval=3, equilibration=2
    )
    assert len(frames) == 3
    assert np.abs(frames[1].positions - frames[0].positions).max() > 1e-3
    assert frames[0].calc is None  # plain structures: labels come from `ffdistill label`


def test_burn_in_ends_when_the_windowed_kinetic_temperature_settles_as_worked_out_by_hand(morse_teacher, monkeypatch):
    """Scripted kinetic temperatures: 30 steps at 2T, then T. The 50 fs window at 2 fs holds 25 steps, and its mean
    T (1 + k/25) with k steps at 2T is within 10 % of T once k ≤ 2: k = 55 − s at step s, so s = 53 (106 fs)."""
    import itertools

    from ffdistill.data import sampling

    target = 300.0
    script = itertools.chain([2 * target] * 30, itertools.repeat(target))
    monkeypatch.setattr(sampling, "kinetic_temperature", lambda atoms: next(script))
    frames = teacher_md_frames(morse_teacher, rattled_cu(0), n_frames=1, temperature=target, interval=1)
    assert frames[0].info["burn_in_fs"] == 106.0


def test_kept_frames_carry_their_momenta_and_kinetic_temperature_with_3n_minus_3_dof(morse_teacher):
    frames = teacher_md_frames(morse_teacher, rattled_cu(0, (2, 2, 2)), n_frames=2, temperature=600, seed=3)
    for atoms in frames:
        p, m = atoms.get_momenta(), atoms.get_masses()
        kinetic = sum(float(np.dot(p[i], p[i])) / (2 * m[i]) for i in range(len(atoms)))  # eV
        total = p.sum(0)
        kinetic -= float(np.dot(total, total)) / (2 * m.sum())  # the centre of mass's
        by_hand = 2 * kinetic / ((3 * len(atoms) - 3) * 8.617333262e-5)
        assert atoms.info["kinetic_temperature_K"] == pytest.approx(by_hand, rel=1e-6)
        assert atoms.info["burn_in_fs"] >= 20.0  # at least the 10 equilibration steps of 2 fs
    assert np.abs(frames[1].positions - frames[0].positions).max() > 1e-2  # 50 fs apart by default


def test_sampling_options_out_of_range_are_refused_before_any_md(morse_teacher, tmp_path):
    from ffdistill.data.sampling import sample_to_file
    from ffdistill.errors import InputError

    for kwargs, key in (
        ({"interval": 0}, "--interval"),
        ({"n_frames": 0}, "-n"),
        ({"temperatures": (-5.0,)}, "--temp"),
    ):
        with pytest.raises(InputError, match=key):
            sample_to_file(morse_teacher, "Cu", str(tmp_path / "x.extxyz"), **kwargs)
    assert not (tmp_path / "x.extxyz").exists()


def test_structure_names_with_a_prefix_remove_the_ambiguity():
    from ase.build import bulk, molecule

    from ffdistill.data.sampling import load_structure

    assert len(load_structure("Si")) == 64 and len(load_structure("molecule:Si")) == 1  # an atom, not a crystal
    cu = load_structure("bulk:Cu")
    assert cu.pbc.all() and np.allclose(cu.cell.array, bulk("Cu", cubic=True).cell.array)
    water = load_structure("molecule:H2O")
    assert not water.pbc.any() and water.get_chemical_formula() == molecule("H2O").get_chemical_formula()
    assert water.positions.min() >= 6.0 - 1e-9  # centred in 6 Å of vacuum


def test_a_molecules_kinetic_temperature_counts_neither_its_drift_nor_its_tumbling():
    from ase.build import molecule

    from ffdistill.data.sampling import kinetic_temperature

    water = molecule("H2O")
    centred = water.positions - water.get_center_of_mass()
    rigid = np.cross([0.01, -0.02, 0.015], centred) + [0.003, 0.0, -0.002]  # rotation plus translation, Å/fs-ish
    water.set_velocities(rigid)
    assert abs(kinetic_temperature(water)) < 1e-8
    bend = np.zeros((3, 3))
    bend[1], bend[2] = [0.0, 0.01, 0.0], [0.0, -0.01, 0.0]  # the hydrogens move apart symmetrically
    bend[0] = -(bend[1] + bend[2]) * water.get_masses()[1] / water.get_masses()[0]  # momentum stays zero
    water.set_velocities(rigid + bend)
    internal = 0.5 * float((water.get_masses()[:, None] * bend**2).sum())  # eV (ASE units: amu Å² / (ASE time)²)
    assert kinetic_temperature(water) == pytest.approx(2 * internal / (3 * 8.617333262e-5), rel=1e-6)


def test_a_molecule_that_falls_apart_ends_its_run_with_a_warning_and_its_broken_frames_are_not_kept(tmp_path):
    """H2 on a Morse curve (ASE's, D 4.7 eV, r0 0.74 Å) at 8,000 K dissociates (seed 0: after 10 frames): the run
    stops at the first kept frame whose bonds differ from the start and names the bond; copies fill the frames it
    did not give, and every frame written is an intact molecule (its H–H distance, measured here). At 300 K the
    same run keeps every frame (the check does not fire on bond vibrations)."""
    import warnings

    import ase.io
    from ase.calculators.morse import MorsePotential

    from ffdistill.data.sampling import sample_to_file
    from ffdistill.teachers.ase_calc import ASETeacher

    teacher = ASETeacher(MorsePotential(epsilon=4.7, r0=0.74, rho0=1.4, rcut1=2.5, rcut2=3.0), spec="morse-h2")
    out = str(tmp_path / "h2.extxyz")
    with pytest.warns(UserWarning, match=r"bonds changed \(H0–H1\) after 10 of 19 frames"):
        sample_to_file(teacher, "molecule:H2", out, n_frames=24, temperatures=(8000.0,), md_fraction=0.8,
                       interval=5, progress=False)  # fmt: skip
    frames = ase.io.read(out, ":")
    md = [a for a in frames if "kinetic_temperature_K" in a.info]
    assert len(frames) == 24 and len(md) == 10
    assert all(a.get_distance(0, 1) < 1.5 * 2 * 0.31 for a in md)  # the copies rattle these by 0.04 Å
    cold = out.replace(".extxyz", "_cold.extxyz")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no warning at 300 K
        sample_to_file(teacher, "molecule:H2", cold, n_frames=20, temperatures=(300.0,), md_fraction=1.0,
                       interval=5, progress=False)  # fmt: skip
    assert len([a for a in ase.io.read(cold, ":") if "kinetic_temperature_K" in a.info]) == 20


def test_a_molecule_that_falls_apart_in_every_run_is_one_clear_error_and_no_file(tmp_path):
    """H2 bound by 0.01 eV at 8,000 K (kT = 0.69 eV) flies apart before its first kept frame in every run: one
    InputError naming the structure, and nothing written."""
    from ase.calculators.morse import MorsePotential

    from ffdistill.data.sampling import sample_to_file
    from ffdistill.errors import InputError
    from ffdistill.teachers.ase_calc import ASETeacher

    teacher = ASETeacher(MorsePotential(epsilon=0.01, r0=0.74, rho0=1.4, rcut1=2.5, rcut2=3.0), spec="weak-h2")
    out = tmp_path / "h2.extxyz"
    with pytest.warns(UserWarning, match="bonds changed"), pytest.raises(InputError, match="molecule:H2 stayed whole"):
        sample_to_file(teacher, "molecule:H2", str(out), n_frames=8, temperatures=(8000.0,), runs=2, progress=False)
    assert list(tmp_path.iterdir()) == []
