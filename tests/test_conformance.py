"""The conformance kit (``ffdistill.testing.check_potential``) over every student preset and the teachers
of the test environment, and on deliberately broken potentials, which it must catch by name."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from ase.build import bulk

from ffdistill.potential import Outputs, Want
from ffdistill.students import PRESETS, build_student
from ffdistill.teachers.toy import MorsePotential
from ffdistill.testing import ConformanceError, check_potential


def _cu_cells():
    one = bulk("Cu", "fcc", a=3.6, cubic=True)
    one.rattle(0.05, seed=1)
    two = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    two.rattle(0.05, seed=2)
    return [one, two]


def _non_trivial(student):
    """Random weights everywhere: a fresh student's zero read-out would give zero forces, which pass any
    finite-difference check without testing anything."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return student


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_student_preset_passes_the_kit(preset):
    student = _non_trivial(build_student(preset, [29], cutoff=4.0)).double()
    report = check_potential(student, _cu_cells())
    names = {r.name for r in report.results}
    expected = {
        "outputs",
        "input-unchanged",
        "batched-equals-single",
        "second-derivatives",
        "invariance",
        "calculator",
        "torchscript",
    }
    direct = student.capabilities.direct
    expected |= set() if direct else {"forces-vs-energy", "stress-vs-strain"}
    assert names == expected, names


def test_float32_student_passes_with_float32_tolerances():
    student = _non_trivial(build_student("painn-tiny", [29], cutoff=4.0))
    report = check_potential(student, _cu_cells())
    assert report.passed and "second-derivatives" in {r.name for r in report.results}


def test_analytic_and_ase_teachers_pass_the_kit(morse_teacher, emt_teacher):
    check_potential(morse_teacher, _cu_cells())
    report = check_potential(emt_teacher, _cu_cells()[:1])  # finite-difference rows: against ASE Vibrations
    assert "hessian-vs-ase" in {r.name for r in report.results}


@pytest.mark.slow
def test_sevennet_passes_the_kit():
    from ffdistill.teachers import load_teacher

    sevennet = load_teacher("sevenn")
    si = bulk("Si", "diamond", a=5.43)
    si.rattle(0.03, seed=0)
    si2 = si.repeat((2, 1, 1))
    check_potential(sevennet, [si, si2])


def test_chgnet_passes_the_kit_with_float32_tolerances():
    pytest.importorskip("chgnet", reason="chgnet is not installed: pip install -e '.[test]' (CI installs it)")
    from ffdistill.teachers import load_teacher
    from ffdistill.testing import TOLERANCES

    si = bulk("Si", "diamond", a=5.43, cubic=True)
    si.rattle(0.03, seed=0)
    # CHGNet's surface is rough at the mÅ scale (measured here, 8-atom Si): its central-difference Hessian
    # at 1 mÅ differs from ASE's at 2 mÅ by 0.32 eV/Å² and is asymmetric by 0.06 eV/Å², far above float32
    # noise; the kit allows 5 % of the largest entry and still catches a wrong sign or a wrong unit
    rough = dataclasses.replace(TOLERANCES[torch.float32], fd_hessian_relative=0.05)
    report = check_potential(load_teacher("chgnet"), [si], tolerances=rough)
    assert "hessian-vs-ase" in {r.name for r in report.results}  # rows by central differences


def test_dxtb_passes_the_kit():
    pytest.importorskip("dxtb", reason="dxtb is not installed: see the README's install section (CI installs it)")
    from ase.build import molecule

    from ffdistill.teachers import load_teacher

    water, ammonia = molecule("H2O"), molecule("NH3")
    water.rattle(0.02, seed=0)
    report = check_potential(load_teacher("dxtb"), [water, ammonia])
    assert {"forces-vs-energy", "second-derivatives", "batched-equals-single"} <= {r.name for r in report.results}


def test_worker_teacher_passes_the_kit_and_gives_the_remote_exact_hessian(morse_teacher):
    import sys

    from ffdistill import derivatives
    from ffdistill.teachers import load_teacher

    worker = load_teacher("morse", python=sys.executable)
    try:
        report = check_potential(worker, _cu_cells())
        assert "hessian-vs-ase" in {r.name for r in report.results}
        graph = morse_teacher.graph(_cu_cells()[0])
        # the remote's autograd rows, not differences over the pipe: equal to the in-process Hessian
        assert torch.equal(derivatives.full_hessian(worker, graph), derivatives.full_hessian(morse_teacher, graph))
    finally:
        worker.close()


class _WrongForceSign(MorsePotential):
    def predict(self, graph, want=Want()) -> Outputs:
        out = super().predict(graph, want)
        return out._replace(forces=-out.forces)


class _MutatesInput(MorsePotential):
    def predict(self, graph, want=Want()) -> Outputs:
        graph.R.add_(1e-3)  # a "harmless" in-place shift: the caller's positions change
        return super().predict(graph, want)


@pytest.mark.parametrize(
    ("broken", "check"), [(_WrongForceSign, "forces-vs-energy"), (_MutatesInput, "input-unchanged")]
)
def test_broken_potentials_fail_with_the_check_named(broken, check):
    with pytest.raises(ConformanceError, match=check):
        check_potential(broken(), _cu_cells())
    report = check_potential(broken(), _cu_cells(), raise_on_failure=False)
    assert check in {r.name for r in report.failed}
    assert "outputs" not in {r.name for r in report.failed}


def test_check_verb_passes_a_saved_student_and_fails_with_one_line(tmp_path, capsys):
    from ffdistill.calculator import save_student
    from ffdistill.cli import main

    path = str(tmp_path / "student.pt")
    save_student(_non_trivial(build_student("schnet-tiny", [29], cutoff=4.0)), path)
    assert main(["check", path]) == 0
    assert "ok   forces-vs-energy" in capsys.readouterr().out
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    assert main(["check", path, "--structures", str(empty)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
