"""select: exactly the matching frames, counted per rule, in flat memory; FPS picks the known answer."""

import os
import subprocess
import sys

import ase.db
import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from ffdistill.cli import main
from ffdistill.data.select import (
    FrameFilter,
    farthest_point_order,
    parse_composition,
    parse_elements,
    pick_groups,
    select_frames,
)
from ffdistill.errors import InputError


def _frame(symbols: str, a: float, reps=(1, 1, 1), energy_per_atom=None, **info):
    atoms = bulk(symbols[:2], "fcc", a=a, cubic=True) * reps
    if symbols == "Cu3Au":
        atoms.numbers[0] = 79  # L1_2: one Au per cubic cell of four
    if symbols == "CuAu":
        atoms.numbers[:2] = 79
    atoms.rattle(0.01, seed=len(info))
    if energy_per_atom is not None:
        atoms.calc = SinglePointCalculator(atoms, energy=energy_per_atom * len(atoms), forces=np.zeros((len(atoms), 3)))
    atoms.info.update(info)
    return atoms


#: (frame, the rule that must drop it, or None to keep it). Rules are tried in the order of RULES.
MIXED = [
    (lambda: bulk("Si", "diamond", a=5.43, cubic=True), "elements"),
    (lambda: bulk("Si", "diamond", a=5.43, cubic=True), "elements"),
    (lambda: _frame("Au", 4.08), "require"),
    (lambda: _frame("Cu", 3.6, reps=(2, 2, 2), energy_per_atom=-3.5, source="md"), "max_atoms"),
    (lambda: _frame("CuAu", 3.8, energy_per_atom=-3.5, source="md"), "composition"),
    (lambda: _frame("Cu3Au", 3.7, energy_per_atom=2.0, source="md"), "energy_window"),
    (lambda: _frame("Cu3Au", 3.7, source="md"), "energy_window"),  # no energy: cannot be in the window
    (lambda: _frame("Cu3Au", 3.7, energy_per_atom=-3.5, source="rattle"), "where"),
    (lambda: _frame("Cu3Au", 3.7, energy_per_atom=-3.4, source="md"), None),
    (lambda: _frame("Cu3Au", 3.72, energy_per_atom=-3.6, source="md", group=3), None),
]
RULES = FrameFilter(
    elements=parse_elements(["Cu", "Au"]),
    require=parse_elements(["Cu"]),
    max_atoms=16,
    composition=parse_composition("Cu3Au"),
    energy_window=(-4.0, -3.0),
    where={"source": "md"},
)


def _expected_drops():
    counts = {}
    for _, rule in MIXED:
        if rule:
            counts[rule] = counts.get(rule, 0) + 1
    return counts


@pytest.fixture
def mixed(tmp_path):
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, [make() for make, _ in MIXED], format="extxyz")
    return str(path)


def test_select_keeps_exactly_the_matching_frames_and_counts_each_rule(mixed, tmp_path):
    out = str(tmp_path / "kept.extxyz")
    summary = select_frames([mixed], out, RULES)
    kept = ase.io.read(out, ":")
    assert summary.read == len(MIXED) and summary.kept == summary.written == 2
    assert {k: v for k, v in summary.dropped.items() if v} == _expected_drops()
    assert [a.get_potential_energy() / len(a) for a in kept] == pytest.approx([-3.4, -3.6])
    assert kept[1].info["group"] == 3 and not os.path.exists(out + ".partial")


def test_select_reads_and_writes_ase_databases(mixed, tmp_path):
    db_in = str(tmp_path / "mixed.db")
    with ase.db.connect(db_in) as db:
        for atoms in ase.io.read(mixed, ":"):
            db.write(atoms, **{k: v for k, v in atoms.info.items()})
    summary = select_frames([db_in], str(tmp_path / "kept.db"), RULES)
    assert summary.kept == 2 and {k: v for k, v in summary.dropped.items() if v} == _expected_drops()
    assert ase.db.connect(str(tmp_path / "kept.db")).count() == 2


def test_composition_accepts_formulas_and_ratios():
    assert parse_composition("SiO2") == pytest.approx({14: 1 / 3, 8: 2 / 3})
    assert parse_composition("Si:O=1:2") == parse_composition("Si2O4")
    with pytest.raises(InputError, match="composition"):
        parse_composition("Xq2")


def test_cli_prints_the_summary_and_bad_input_is_one_line(mixed, tmp_path, capsys):
    out = str(tmp_path / "k.extxyz")
    rules = ["--elements", "Cu", "Au", "--max-atoms", "16", "--where", "source=md"]
    code = main(["select", mixed, "-o", out, *rules, "-q"])
    printed = capsys.readouterr().out
    assert code == 0 and "kept 5" in printed and "elements 2" in printed and "max_atoms 1" in printed
    assert "where 2" in printed and len(ase.io.read(out, ":")) == 5
    (tmp_path / "bad.extxyz").write_text("3\nnot a header\nCu 0 0\n")
    assert main(["select", str(tmp_path / "bad.extxyz"), "-o", out, "-q"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("ffdistill select: error: cannot read") and "\n" not in error
    with pytest.raises(InputError, match="no such file"):
        select_frames([str(tmp_path / "missing.extxyz")], out)


MEMORY_PROBE = """
import resource, sys
from ffdistill.data.select import FrameFilter, select_frames
summary = select_frames([sys.argv[1]], sys.argv[2], FrameFilter(max_atoms=500))
print(summary.kept, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_kib(source: str, output: str) -> tuple[int, int]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", MEMORY_PROBE, source, output]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    kept, rss = done.stdout.split()
    return int(kept), int(rss)


def test_select_memory_stays_flat_from_one_to_ten_times_the_input(tmp_path):
    # 108-atom frames: holding 2000 of them in memory costs ~9 MiB, far above the allowance below.
    frames = []
    for k in range(200):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3)
        atoms.rattle(0.05, seed=k)
        frames.append(atoms)
    ase.io.write(tmp_path / "one.extxyz", frames, format="extxyz")
    (tmp_path / "ten.extxyz").write_text((tmp_path / "one.extxyz").read_text() * 10)
    kept_one, rss_one = _peak_rss_kib(str(tmp_path / "one.extxyz"), str(tmp_path / "out1.extxyz"))
    kept_ten, rss_ten = _peak_rss_kib(str(tmp_path / "ten.extxyz"), str(tmp_path / "out10.extxyz"))
    assert (kept_one, kept_ten) == (200, 2000)
    assert rss_ten - rss_one < 4 * 1024, f"peak RSS grew {(rss_ten - rss_one) / 1024:.1f} MiB for 10x the input"


def test_fps_picks_the_corners_of_a_square_before_its_interior():
    corners = np.array([[0, 0], [4, 0], [0, 4], [4, 4]], dtype=float)
    interior = np.array([[2, 2], [1, 2], [2, 3], [3, 1], [1.5, 1.5]])
    points = np.concatenate([interior[:2], corners, interior[2:]])  # corners at positions 2..5
    order = farthest_point_order(points, 5)
    assert sorted(order[:4].tolist()) == [2, 3, 4, 5]
    assert order[4] == 0, "the square's centre is farthest from all four corners"
    assert farthest_point_order(np.array([[0.0], [1.0], [10.0], [4.0]]), 3, first=0).tolist() == [0, 2, 3]


def test_picking_keeps_groups_whole_and_within_the_budget():
    descriptors = np.array([[0.0], [0.1], [5.0], [5.1], [9.0], [2.0]])
    groups = ["a", "a", "b", "b", "c", "d"]
    picked = pick_groups(descriptors, groups, n_frames=4)
    chosen = {groups[i] for i in picked}
    assert len(picked) <= 4 and all(groups.count(g) == sum(groups[i] == g for i in picked) for g in chosen)
    # FPS order of the group means: c, a, b, d; b would overshoot 4 frames, so d comes instead.
    assert chosen == {"c", "a", "d"} and picked.tolist() == [0, 1, 4, 5]


def test_select_pick_by_fps_writes_the_most_distinct_frames(tmp_path):
    lattice = [3.3, 3.31, 3.6, 3.61, 3.9]  # FPS with the RDF descriptor must spread over lattice constants
    frames = [_frame("Cu", a) for a in lattice]
    ase.io.write(tmp_path / "in.extxyz", frames, format="extxyz")
    summary = select_frames([str(tmp_path / "in.extxyz")], str(tmp_path / "picked.extxyz"), pick=3, by="fps")
    picked = sorted(round(a.cell[0, 0], 2) for a in ase.io.read(tmp_path / "picked.extxyz", ":"))
    assert summary.written == 3 and picked[0] in (3.3, 3.31) and picked[-1] == 3.9 and picked[1] in (3.6, 3.61)
