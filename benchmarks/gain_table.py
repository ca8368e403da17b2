"""Every scoring of the gain benchmark in one table (not run in CI).

Reads ledgers written by ``gain_defaults.py`` (each entry one scoring of a held-out trajectory, misses included)
and prints one Markdown row per scoring, in the order scored, then as its last line one JSON object with the
same numbers. The docs' results page carries this table as printed.

    python benchmarks/gain_table.py benchmarks/results/gain_defaults_ledger.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gain_defaults import EQUAL, SYSTEMS, summary  # noqa: E402

HEADER = "\n".join(
    (
        "| system (teacher; training, held-out K) | scored | held-out seed | frames | seeds "
        "| force MAE meV/Å, undistilled → distilled (means) | **force ratio** (per seed) "
        "| **energy ratio** (per seed) | stress ratio | frequency ratio | NVT stable "
        "| steps to stop, distilled (first within 1 % of best) | teacher s per frame |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    )
)


def rows(ledger: list[dict]) -> tuple[list[str], list[dict]]:
    lines, records = [], []
    for entry in sorted(ledger, key=lambda e: e["scored_at"]):
        key, result = entry["key"], entry["result"]
        s = summary(result)
        record = {"key": key, "scored_at": entry["scored_at"], **s}
        records.append(record)
        lines.append(_row(key, entry["scored_at"], s, result))
        if (EQUAL, key["seeds"][0]) in {(r["method"], r["seed"]) for r in result["runs"]}:
            lines.append(_equal_cost_row(key, s))
    return lines, records


def _row(key: dict, scored_at: str, s: dict, result: dict) -> str:
    system = SYSTEMS[key["system"]]
    teacher = {"sevenn": "SevenNet-0", "dxtb": "GFN1-xTB"}.get(system.teacher, system.teacher)
    temps = ", ".join(f"{t:g}" for t in system.temperatures)
    name = f"{key['system']} ({teacher}; {temps}; {system.heldout_temperature:g})"
    force = f"{np.mean(s['force_undistilled']):.3g} → {np.mean(s['force_distilled']):.3g}"
    stable = s.get("nvt_stable", {})
    steps = ", ".join(f"{v[0]} ({v[1]})" for k, v in s["steps"].items() if k.startswith("distilled-"))
    timings = result["teacher"]["timings_s"]
    per_frame = (timings["frames.extxyz"] + timings["labels.zarr"]) / result["teacher"]["frames"]
    return (
        f"| {name} | {scored_at} | {key['heldout_seed']} | {key['frames']} | {len(key['seeds'])} | {force} "
        f"| **{s['force_ratio_mean']:.2f}** {_per_seed(s['force_ratio_per_seed'])} "
        f"| **{s['energy_ratio_mean']:.2f}** {_per_seed(s['energy_ratio_per_seed'])} "
        f"| {_mean(s, 'stress')} | {_mean(s, 'frequency')} "
        f"| {f'{sum(stable.values())}/{len(stable)}' if stable else '–'} | {steps} | {per_frame:.1f} |"
    )


def _equal_cost_row(key: dict, s: dict) -> str:
    frames = {v for k, v in s["training_frames"].items() if k.startswith(EQUAL)}
    force = s["force_ratio_at_equal_cost_per_seed"]
    energy = s["energy_ratio_at_equal_cost_per_seed"]
    return (
        f"| ↳ the same, against an undistilled student on {', '.join(map(str, sorted(frames)))} frames of equal "
        f"teacher cost | | | | | {np.mean(s[f'force_{EQUAL}']):.3g} (undistilled) | **{np.mean(force):.2f}** "
        f"{_per_seed(force)} | **{np.mean(energy):.2f}** {_per_seed(energy)} | | | | | |"
    )


def _per_seed(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in values) + ")"


def _mean(s: dict, label: str) -> str:
    key = f"{label}_ratio_mean"
    return f"{s[key]:.2f}" if key in s else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ledgers", nargs="+")
    args = parser.parse_args()
    ledger = [entry for path in args.ledgers for entry in json.load(open(path))]
    lines, records = rows(ledger)
    print(HEADER)
    print("\n".join(lines))
    print(json.dumps(records))


if __name__ == "__main__":
    main()
