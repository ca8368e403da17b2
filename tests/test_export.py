"""The exported student runs without ffdistill and agrees with the original."""

import json
import subprocess
import sys

import ase.io
import numpy as np
import torch
from conftest import rattled_cu

from ffdistill import load_calculator
from ffdistill.calculator import PotentialCalculator, save_student
from ffdistill.cli import main
from ffdistill.students import build_student

#: Exported vs original energies and forces, relative (float32 both sides, same neighbour list).
EXPORT_RELATIVE_TOLERANCE = 1e-5

RUN_WITHOUT_FFDISTILL = """
import json, sys, warnings
sys.modules["ffdistill"] = None  # importing ffdistill now fails: prove the export does not need it
sys.path.insert(0, sys.argv[1])
import ase.io
from standalone_calculator import ExportedStudent
warnings.simplefilter("error", UserWarning)  # no warning of the calculator's making reaches a user
calc = ExportedStudent(sys.argv[2])  # one calculator, called again and again, as in MD
out = []
for atoms in ase.io.read(sys.argv[3], ":"):
    atoms.calc = calc
    out.append({"energy": atoms.get_potential_energy(), "forces": atoms.get_forces().tolist()})
print(json.dumps(out))
"""


def test_exported_student_matches_the_original_without_ffdistill(tmp_path):
    torch.manual_seed(0)
    student = build_student("painn-tiny", [29], cutoff=4.0)
    for p in student.parameters():  # a non-trivial student: random read-out instead of zeros
        torch.nn.init.normal_(p, std=0.3) if p.dim() > 1 else None
    path = str(tmp_path / "best.pt")
    save_student(student, path)
    assert main(["export", path, "-o", str(tmp_path / "exported.pt"), "-q"]) == 0
    # sizes unlike the trace example; the same cell twice, moved: a traced graph's second call once failed
    structures = [rattled_cu(3, (2, 2, 2)), rattled_cu(5, (2, 2, 2)), rattled_cu(4, (3, 1, 1))]
    ase.io.write(tmp_path / "s.extxyz", structures)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_WITHOUT_FFDISTILL,
            str(tmp_path),
            str(tmp_path / "exported.pt"),
            str(tmp_path / "s.extxyz"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    exported = json.loads(result.stdout)
    for atoms, got in zip(structures, exported):
        atoms.calc = load_calculator(path)
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        assert abs(got["energy"] - energy) <= EXPORT_RELATIVE_TOLERANCE * abs(energy)
        assert np.abs(np.array(got["forces"]) - forces).max() <= EXPORT_RELATIVE_TOLERANCE * max(
            1.0, np.abs(forces).max()
        )
        assert np.abs(forces).max() > 1e-3  # a real comparison, not zeros against zeros


def test_inspect_says_in_one_line_what_a_student_file_and_an_export_are(tmp_path, capsys):
    student = build_student("painn-tiny", [8, 1], cutoff=3.5)
    path = str(tmp_path / "best.pt")
    save_student(student, path)
    assert main(["inspect", path]) == 0
    line = capsys.readouterr().out.strip()
    count = sum(p.numel() for p in student.parameters())
    assert line.count("\n") == 0 and f"{count} parameters" in line and "elements [1, 8]" in line
    assert "cutoff 3.5 Å" in line and "weights_only=True" in line
    assert main(["export", path, "-o", str(tmp_path / "ts.pt"), "-q"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "ts.pt")]) == 0
    out = capsys.readouterr().out
    assert "TorchScript export" in out and "a program" in out


def test_an_exported_committee_is_its_mean_without_ffdistill(tmp_path):
    from ffdistill.students.committee import Committee

    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        member = build_student("painn-tiny", [29], cutoff=4.0)
        for p in member.parameters():
            torch.nn.init.normal_(p, std=0.3) if p.dim() > 1 else None
        members.append(member)
    path = str(tmp_path / "committee.pt")
    save_student(Committee(members, scale=2.0), path)
    assert main(["export", path, "-o", str(tmp_path / "exported.pt"), "-q"]) == 0
    structures = [rattled_cu(3, (2, 2, 2)), rattled_cu(4, (3, 1, 1))]
    ase.io.write(tmp_path / "s.extxyz", structures)
    command = [sys.executable, "-c", RUN_WITHOUT_FFDISTILL, str(tmp_path), str(tmp_path / "exported.pt")]
    result = subprocess.run([*command, str(tmp_path / "s.extxyz")], capture_output=True, text=True, check=True)
    for atoms, got in zip(structures, json.loads(result.stdout)):
        each = []
        for member in members:  # the mean recomputed from each member's own calculator
            one = atoms.copy()
            one.calc = PotentialCalculator(member)
            each.append(one.get_forces())
        mean = np.mean(each, axis=0)
        assert np.abs(np.array(got["forces"]) - mean).max() <= EXPORT_RELATIVE_TOLERANCE * max(1.0, np.abs(mean).max())
        assert np.abs(each[0] - each[1]).max() > 1e-3  # members that differ: the mean is a real test
