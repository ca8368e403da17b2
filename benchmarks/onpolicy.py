"""On-policy distillation against random sampling at equal teacher cost (EMT copper, hot student MD).

Measured (3 seeds, default settings, 300 K sampler; 2026-11-28): ``onpolicy_vs_random_force_ratio`` 0.36
(target ≤ 0.8: met); per seed 0.29, 0.45, 0.34; pooled-test force MAE 14.8 meV/Å on-policy (13.7–16.4)
vs 42.3 random (36.6–49.9). Teacher calls per seed, on-policy vs random: 91/89, 83/82, 91/89; the
on-policy arm used 4, 3, 4 rounds (stop rule met in seeds 1 and 2, seed 0 hit the 4-round limit at a
disagreement of 0.057 eV/Å) and ended with 40, 32, 40 labelled frames, the random arm with 23, 21, 23:
its extra MD frames cost 5 MD steps each on top of their label, so most of its budget went to MD. The
on-policy students are better on every part of the pool, the random students' own 900 K MD included
(13.4 vs 37.4 meV/Å; 1200 K teacher MD: 19.5 vs 61.7). All student MD at 900 K stayed stable (1.0 Å bond
tolerance) from round 0, so the stop rule acted through the disagreement (0.18–0.46 eV/Å in round 0).
Wall time 29.3 min (1761 s) for the 3 seeds with OMP_NUM_THREADS=1 on a 2-core machine that other jobs
kept at a load average of 5–7 (aim ≤ 60 min). Before teacher MD was charged (equal frames, not equal
cost; a 900 K teacher-MD test set) the ratio was 0.55. With ``--sampler-temperatures 300 900`` (the
sampler already covers the target): 0.52 (per seed 0.57, 0.56, 0.44; 14.7 vs 28.3 meV/Å; teacher calls
94/93, 94/93, 102/100; 3, 3, 4 rounds, stop rule met in all three; 15.5 min at a load average of 2–4).

The students are wanted for 900 K MD. Both arms start from the same initial labelled frames of the usual
sampler (teacher Langevin MD at ``--sampler-temperatures``, default 300 K only, one frame every 5 steps
of 2 fs; half of the frames are rattled/strained copies of the MD frames):

* on-policy (``ffdistill.workflows.onpolicy.distill``): rounds of train an ensemble → run each student's 900 K MD
  → label the frames where the ensemble's forces disagree most. It stops as ``ffdistill distill`` does:
  once every student's 900 K MD is stable for the target time (``md_steps``) and the largest disagreement
  is below ``threshold``, or after ``rounds`` rounds. Rounds used are reported.
* random: more frames of the same sampler: its teacher MD chains at the same temperatures continued
  (frames every 5 steps) plus rattled/strained copies of the new frames, as many as its budget allows.

Teacher cost, in force-call equivalents, is charged in full to each arm: every teacher MD step of the
sampler (counted by wrapping the teacher's calculator: equilibration, the steps between frames, the
first force call), one per labelled frame, plus Hessian rows/probes and spot checks as
``ffdistill.workflows.onpolicy`` counts them (none here: labels carry no rows, no spot checks). The student MD is
not teacher cost. The on-policy arm runs first; the random arm is then given exactly its budget: after
the shared initial sampler (MD + labels), each extra frame costs one label and each extra MD frame also
its 5 continuation MD steps, so it gets the most frames that fit (a labelled MD frame is charged both its
MD step and its label, although the MD step already computed those forces). Its cost is never above
the on-policy arm's and within 6 calls of it.

Both arms train the same ensemble (2 × painn-tiny, the same settings and seeds) and are scored on one
common test set, pooled over all seeds and built after all training: per seed, the final students of
both arms each run a fresh 900 K MD (new seeds, from initial frames, so none of these frames was labelled
for training), a few frames of each run are kept, and a hotter (1200 K) teacher MD run is added; the
teacher labels them all. Force MAE per student, averaged over the ensemble; the ratio is
on-policy MAE / random MAE averaged over seeds. Per-source MAEs (on-policy students' MD, random
students' MD, hot teacher MD) are reported too. The students' stability check uses a bond tolerance of
1.0 Å (``--bond-tolerance``): at the default 0.5 Å, EMT's own 900 K MD counts as blown up within
0.05–0.3 ps, so no student could ever meet the stop rule (the teacher's largest bond change over 1 ps
of 900 K MD was 0.8 Å in 12 runs).

    OMP_NUM_THREADS=1 python benchmarks/onpolicy.py [--seeds 3] [--sampler-temperatures 300 900] [--quick]

The last line printed is one JSON object of the figures. Re-running with the same ``-o`` resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import ase
import ase.io
import numpy as np
from ase.calculators.calculator import Calculator, all_changes

TEACHER = "ase:ase.calculators.emt:EMT"
HOT = 900.0  #: K: the students' MD (the stop rule's and the test set's)
HOTTER = 1200.0  #: K: the test set's teacher MD
INTERVAL = 5  #: teacher MD steps between sampler frames (as ``ffdistill sample``)


class CountingCalculator(Calculator):
    """An ASE calculator that forwards to the teacher's and counts its force calls."""

    implemented_properties = ("energy", "forces")

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        copy = self.atoms.copy()
        copy.calc = self.inner
        self.results = {"energy": copy.get_potential_energy(), "forces": copy.get_forces()}
        self.calls += 1


class CountingTeacher:
    """Just enough of a teacher for ``teacher_md_frames``, counting the MD's force calls."""

    def __init__(self, teacher):
        self.calc = CountingCalculator(teacher.as_calculator())

    def as_calculator(self):
        return self.calc


def md_chains(teacher, counts: list[int], temperatures: list[float], seed: int) -> tuple[list[list], int]:
    """Teacher MD at each temperature with ``counts[k]`` frames (every ``INTERVAL`` steps), and the force
    calls spent. A longer chain of the same seed starts with the shorter one's frames (continuation)."""
    from ffdistill.data.sampling import load_structure, teacher_md_frames

    counter, chains = CountingTeacher(teacher), []
    for k, (count, temperature) in enumerate(zip(counts, temperatures)):
        chains.append(
            teacher_md_frames(counter, load_structure("Cu"), count, temperature, interval=INTERVAL, seed=seed + k)
            if count
            else []
        )
    return chains, counter.calc.calls


def split(n: int, parts: int) -> list[int]:
    return [len(a) for a in np.array_split(np.arange(n), parts)]


def with_copies(md: list, n_copies: int, first_group: int, seed: int) -> list:
    """MD frames (two neighbouring frames per group) and rattled/strained copies keeping their groups."""
    from ffdistill.data.sampling import perturbed_copies

    for k, frame in enumerate(md):
        frame.info["group"] = first_group + k // 2
    return md + (perturbed_copies(md, n_copies, seed=seed) if md and n_copies else [])


def labelled(teacher, frames: list, path: str):
    """A label store of ``frames`` (energies and forces; no Hessian rows, so one teacher call per frame)."""
    from ffdistill.data.labels import LabelStore, label_file

    if os.path.isdir(path):
        return LabelStore(path)
    ase.io.write(path + ".extxyz", frames, format="extxyz")
    return label_file(teacher, path + ".extxyz", path, rows=0, progress=False)


def config(store: str, output: str, epochs: int, seed: int):
    from ffdistill.config import load_config

    overrides = [
        f"data.store={store}",
        f"output={output}",
        "model.student=painn-tiny",
        "model.cutoff=4.0",
        f"train.epochs={epochs}",
        "train.lr=5e-3",
        "train.warmup_steps=5",
        "data.batch_size=4",
        "loss.hessian=0",
        f"train.seed={seed}",
        f"data.split_seed={seed}",
    ]
    return load_config(None, overrides)


def random_extra(budget: int) -> tuple[int, int]:
    """(extra MD frames, extra copies) of the largest sampler top-up costing at most ``budget`` calls:
    half MD frames (``INTERVAL`` continuation steps + a label each), half copies of them (a label each)."""
    best = (0, 0)
    for k in range(2, max(budget, 0) + 1):
        if (k // 2) * INTERVAL + k <= budget:
            best = (k // 2, k - k // 2)
    return best


def run_seed(seed: int, teacher, monitor: str, folder: str, sizes: dict, settings_kw: dict) -> dict:
    """Both arms' training for one seed, at equal teacher cost; returns their costs and final students."""
    from ffdistill.data.labels import LabelStore
    from ffdistill.workflows.onpolicy import OnPolicySettings, copy_frames, distill, teacher_calls, train_ensemble

    os.makedirs(folder, exist_ok=True)
    temperatures, md_seed = sizes["sampler_temperatures"], 100 + 10 * seed
    n_init = sizes["initial"]
    counts = split(n_init // 2, len(temperatures))
    chains, md_cost = md_chains(teacher, counts, temperatures, md_seed)
    initial = labelled(
        teacher,
        with_copies([f for chain in chains for f in chain], n_init - sum(counts), 0, seed),
        os.path.join(folder, "initial.zarr"),
    )
    initial_cost = md_cost + teacher_calls(initial, False)

    settings = OnPolicySettings(
        test_store=monitor, seed=seed, new_frames=sizes["new_frames"], rounds=sizes["rounds"], **settings_kw
    )
    began = time.perf_counter()
    rounds = distill(config(initial.path, os.path.join(folder, "onpolicy"), sizes["epochs"], seed), settings, False)
    last = rounds[-1]
    onpolicy_cost = md_cost + last["teacher_calls_cumulative"]  # labels (initial + new) and spot checks
    onpolicy_s = time.perf_counter() - began

    began = time.perf_counter()
    extra_md, extra_copies = random_extra(onpolicy_cost - initial_cost)
    more = [c + e for c, e in zip(counts, split(extra_md, len(temperatures)))]
    longer, longer_cost = md_chains(teacher, more, temperatures, md_seed)
    new_md = [frame for chain, c in zip(longer, counts) for frame in chain[c:]]
    extra_frames = with_copies(new_md, extra_copies, 1 + int(initial.groups().max()), seed + 500)
    parts = [(initial, range(len(initial)))]
    if extra_frames:
        extra = labelled(teacher, extra_frames, os.path.join(folder, "random_extra.zarr"))
        parts.append((extra, range(len(extra))))
    random_path = os.path.join(folder, "random.zarr")
    copy_frames(parts, random_path)  # labels copied, not recomputed
    random_store = LabelStore(random_path)
    random_cost = longer_cost + teacher_calls(random_store, False)
    random_config = config(random_path, os.path.join(folder, "random"), sizes["epochs"], seed)
    random_students = train_ensemble(random_config, random_path, random_config.output, settings.ensemble, False)
    return {
        "seed": seed,
        "rounds_used": len(rounds),
        "onpolicy_converged": bool(last["converged"]),
        "onpolicy_md_stable_by_round": [f"{sum(r['md_stable'])}/{len(r['md_stable'])}" for r in rounds],
        "onpolicy_max_disagreement_by_round": [round(r["max_disagreement"], 4) for r in rounds],
        "monitor_force_mae_by_round": [round(r["heldout_force_mae_meV_per_A"], 2) for r in rounds],
        "initial_cost": initial_cost,
        "onpolicy_teacher_calls": onpolicy_cost,
        "random_teacher_calls": random_cost,
        "onpolicy_frames": last["train_frames"],
        "random_frames": len(random_store),
        "random_extra_md_frames": len(new_md),
        "random_extra_md_calls": longer_cost - md_cost,  # continuation steps: INTERVAL per extra MD frame
        "onpolicy_students": [
            os.path.join(folder, "onpolicy", f"round_{last['round']}", f"student_{k}", "best.pt")
            for k in range(settings.ensemble)
        ],
        "random_students": random_students,
        "onpolicy_train_s": round(onpolicy_s, 1),
        "random_train_s": round(time.perf_counter() - began, 1),
    }


def student_test_frames(students: list[str], start_store: str, settings, seed: int, keep: int, path: str) -> list:
    """``keep`` evenly spaced frames of each student's fresh 900 K MD (cached in ``path``)."""
    from ffdistill.workflows.onpolicy import md_starts, student_md

    if os.path.isfile(path):
        return ase.io.read(path, ":")
    frames = []
    starts = md_starts(start_store, len(students), 10_000 + seed)
    for k, (student, start) in enumerate(zip(students, starts)):
        visited = student_md(student, start, settings, 10_000 + 100 * seed + k)["frames"]
        picks = np.unique(np.linspace(0, len(visited) - 1, keep).round().astype(int)) if visited else []
        frames += [visited[i] for i in picks]
    ase.io.write(path + ".partial", frames, format="extxyz")
    os.replace(path + ".partial", path)
    return frames


def frame_errors(student: str, store_path: str) -> np.ndarray:
    """Per test frame, the student's force MAE (meV/Å) against the teacher."""
    from ffdistill.calculator import load_calculator
    from ffdistill.data.labels import LabelStore

    store, calc, errors = LabelStore(store_path), load_calculator(student), []
    for i in range(len(store)):
        atoms, labels = store.frame(i)
        atoms.calc = calc
        errors.append(1000 * float(np.abs(atoms.get_forces() - labels["forces"]).mean()))
    return np.array(errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run, too small to mean anything")
    parser.add_argument("-o", "--output", default="bench_onpolicy")
    parser.add_argument(
        "--sampler-temperatures",
        type=float,
        nargs="+",
        default=[300.0],
        help="K of the usual sampler's teacher MD (default 300: cool data, hot use)",
    )
    parser.add_argument("--rounds", type=int, default=4, help="most on-policy rounds (the last only trains)")
    parser.add_argument("--threshold", type=float, default=0.05, help="eV/Å: the stop rule's disagreement")
    parser.add_argument("--bond-tolerance", type=float, default=1.0, help="Å: the students' MD stability check")
    args = parser.parse_args()
    from ffdistill.data.sampling import load_structure, teacher_md_frames
    from ffdistill.teachers import load_teacher
    from ffdistill.workflows.onpolicy import OnPolicySettings

    sizes = {"initial": 16, "new_frames": 8, "rounds": args.rounds, "epochs": 40, "monitor": 8, "hotter": 24, "keep": 6}
    sizes["sampler_temperatures"] = args.sampler_temperatures
    settings_kw = {
        "teacher": TEACHER,
        "ensemble": 2,
        "md_steps": 300,
        "md_temperature": HOT,
        "md_interval": 10,
        "threshold": args.threshold,
        "bond_tolerance": args.bond_tolerance,
    }
    if args.quick:
        sizes.update(initial=8, new_frames=2, rounds=min(args.rounds, 2), epochs=3, monitor=4, hotter=4, keep=2)
        settings_kw.update(md_steps=40, threshold=0.0)  # barely trained students agree: exercise the labelling
    teacher, began = load_teacher(TEACHER), time.perf_counter()
    os.makedirs(args.output, exist_ok=True)
    # Only for the per-round progress figures of the on-policy arm; the score is the pooled set below.
    monitor_frames = teacher_md_frames(teacher, load_structure("Cu"), sizes["monitor"], HOT, interval=20, seed=998)
    monitor = labelled(teacher, monitor_frames, os.path.join(args.output, "monitor.zarr")).path
    results = []
    for seed in range(args.seeds):
        folder = os.path.join(args.output, f"seed_{seed}")
        results.append(run_seed(seed, teacher, monitor, folder, sizes, settings_kw))
        print(json.dumps({k: v for k, v in results[-1].items() if not k.endswith("students")}), flush=True)
    trained_s = time.perf_counter() - began

    # One test pool over all seeds: both arms' final students' 900 K MD, and hotter teacher MD.
    md_settings = OnPolicySettings(**settings_kw)
    sources: dict[str, list] = {"onpolicy_md": [], "random_md": []}
    for r in results:
        folder = os.path.join(args.output, f"seed_{r['seed']}")
        start_store = os.path.join(folder, "initial.zarr")
        for arm in ("onpolicy", "random"):
            sources[f"{arm}_md"] += student_test_frames(
                r[f"{arm}_students"],
                start_store,
                md_settings,
                r["seed"],
                sizes["keep"],
                os.path.join(folder, f"test_{arm}_md.extxyz"),
            )
    sources["teacher_hotter"] = teacher_md_frames(
        teacher, load_structure("Cu"), sizes["hotter"], HOTTER, interval=20, seed=999
    )
    pool = [
        ase.Atoms(numbers=f.numbers, positions=f.positions, cell=f.cell, pbc=f.pbc)  # no group ids
        for frames in sources.values()
        for f in frames
    ]
    test_store = labelled(teacher, pool, os.path.join(args.output, "test_pool.zarr")).path
    bounds = np.cumsum([0] + [len(f) for f in sources.values()])
    per_source = {name: slice(bounds[k], bounds[k + 1]) for k, name in enumerate(sources)}

    def score(students: list[str]) -> dict:
        errors = np.mean([frame_errors(s, test_store) for s in students], axis=0)  # ensemble-averaged
        out = {"pool": float(errors.mean())}
        out.update({name: float(errors[where].mean()) for name, where in per_source.items() if len(errors[where])})
        return out

    for r in results:
        r["onpolicy_mae"], r["random_mae"] = score(r["onpolicy_students"]), score(r["random_students"])
        r["ratio"] = r["onpolicy_mae"]["pool"] / r["random_mae"]["pool"]
        print(json.dumps({k: r[k] for k in ("seed", "onpolicy_mae", "random_mae", "ratio")}), flush=True)
    onpolicy = statistics.mean(r["onpolicy_mae"]["pool"] for r in results)
    random = statistics.mean(r["random_mae"]["pool"] for r in results)
    ratios = [r["ratio"] for r in results]
    print(
        json.dumps(
            {
                "onpolicy_vs_random_force_ratio": round(statistics.mean(ratios), 3),
                "ratio_of_mean_maes": round(onpolicy / random, 3),
                "per_seed_ratio": [round(x, 3) for x in ratios],
                "onpolicy_force_mae_meV_per_A": round(onpolicy, 2),
                "random_force_mae_meV_per_A": round(random, 2),
                "per_seed_force_mae_meV_per_A": [
                    [round(r["onpolicy_mae"]["pool"], 2), round(r["random_mae"]["pool"], 2)] for r in results
                ],
                "by_source_meV_per_A": {
                    arm: {
                        name: round(statistics.mean(r[f"{arm}_mae"][name] for r in results), 2)
                        for name in results[0][f"{arm}_mae"]
                    }
                    for arm in ("onpolicy", "random")
                },
                "teacher_calls_per_seed": {
                    "onpolicy": [r["onpolicy_teacher_calls"] for r in results],
                    "random": [r["random_teacher_calls"] for r in results],
                },
                "frames_per_seed": {
                    "onpolicy": [r["onpolicy_frames"] for r in results],
                    "random": [r["random_frames"] for r in results],
                },
                "rounds_used": [r["rounds_used"] for r in results],
                "converged": [r["onpolicy_converged"] for r in results],
                "test_frames": {name: int(where.stop - where.start) for name, where in per_source.items()},
                "seeds": args.seeds,
                "quick": args.quick,
                "sampler_temperatures_K": args.sampler_temperatures,
                "student_md_K": HOT,
                "threshold_eV_per_A": settings_kw["threshold"],
                "bond_tolerance_A": args.bond_tolerance,
                "train_s": round(trained_s, 1),
                "wall_s": round(time.perf_counter() - began, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
