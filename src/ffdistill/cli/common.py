"""Helpers the verb modules share: argument types, the device option and the run config."""

from __future__ import annotations

import argparse


def _rows(value: str) -> str | int:
    if value == "all":
        return "all"
    if value.isdigit() and int(value) >= 0:
        return int(value)
    raise argparse.ArgumentTypeError("--hessian-rows takes 'all' or a number of rows per frame")


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError("takes a whole number >= 1")
    return int(value)


def _device(args):
    """``--device`` as a torch device, with ``train.device``'s rules: CUDA asked for and missing is one line."""
    from ffdistill.devices import resolve

    return resolve(args.device, "--device")


def _shard(value: str) -> tuple[int, int]:
    i, _, n = value.partition("/")
    if not (i.isdigit() and n.isdigit()) or not 0 <= int(i) < int(n):
        raise argparse.ArgumentTypeError("--shard takes I/N with 0 <= I < N, e.g. 0/4")
    return int(i), int(n)


def _describe_rule(rule: str) -> str:
    kind, _, arg = rule.partition(":")
    return f"from each input frame's info[{arg!r}]" if kind == "info" else f"blocks of {arg} consecutive input frames"


def _config(args):
    """The config file is optional: `ffdistill train data.store=x.zarr` runs on the defaults."""
    from ffdistill.config import load_config

    path, overrides = (None, [args.config, *args.overrides]) if "=" in args.config else (args.config, args.overrides)
    return load_config(path, overrides)


#: Help for options a verb module adds without one, by (verb, option); "*" matches every verb.
HELP = {
    ("*", "--teacher"): "teacher spec: sevenn (SevenNet-0), chgnet, dxtb, mace:PATH, ase:MODULE:FACTORY, morse",
    ("*", "--trust-teacher"): "allow loading a pickled teacher checkpoint (a program, not data)",
    ("*", "--seed"): "random seed",
    ("*", "--teacher-python"): "run the teacher in this interpreter of another environment (a worker)",
    ("sample", "--temperature"): "MD temperatures, K (one or more)",
    ("sample", "--output"): "extxyz file to write (atomically)",
    ("merge", "shards"): "the shard stores of one labelling job",
    ("merge", "--output"): "label store to write (a zarr directory)",
    ("inspect", "--json"): "print the summary as JSON",
    ("migrate", "store"): "label store of an older format",
    ("select", "--max-atoms"): "skip structures with more atoms than this",
    ("compare", "config"): "YAML run config (the data, model and loss every method shares)",
    ("compare", "overrides"): "dotted overrides, e.g. train.max_steps=5000",
    ("compare", "--seeds"): "training seeds per method",
    ("compare", "--output"): "folder for students, metrics and the report",
    ("distill", "--rounds"): "on-policy rounds at most",
    ("distill", "--md-temperature"): "student MD temperature, K",
    ("distill", "--test-fraction"): "share of the initial store held out when no --test store is given",
    ("demo", "--output"): "folder for the demo's data, students, report and plots",
    ("evaluate", "--output"): "folder for report.md, metrics.json and plots",
    ("phonons", "--supercell"): "phonopy supercell, three integers",
    ("phonons", "--output"): "folder for the band structure, DOS and metrics",
    ("md", "model"): "student file (best.pt)",
    ("md", "--ensemble"): "nvt (Langevin) or nve (velocity Verlet)",
    ("md", "--temperature"): "K: initial velocities and the NVT thermostat",
    ("md", "--steps"): "MD steps",
    ("export", "--output"): "file to write: student.pt (TorchScript) or student.mliap.pkl (ML-IAP)",
    ("lammps", "model"): "student file (best.pt)",
    ("lammps", "--ensemble"): "nvt (Nosé–Hoover) or nve",
    ("lammps", "--steps"): "MD steps",
    ("serve", "model"): "student file (best.pt)",
}

#: One example per verb, shown at the end of its --help.
EXAMPLES = {
    "sample": "ffdistill sample --structure bulk:Si -n 40 --temperature 300 600 -o frames.extxyz",
    "label": "ffdistill label frames.extxyz -o labels.zarr --teacher sevenn --hessian-rows 4",
    "merge": "ffdistill merge part0.zarr part1.zarr -o labels.zarr",
    "inspect": "ffdistill inspect labels.zarr --verify",
    "migrate": "ffdistill migrate old_labels.zarr",
    "select": "ffdistill select md.extxyz --pick 100 --by fps -o picked.extxyz",
    "train": "ffdistill train configs/painn-small.yaml data.store=labels.zarr output=runs/distilled",
    "compare": "ffdistill compare configs/compare-si.yaml --seeds 3 -o compare_out",
    "distill": "ffdistill distill data.store=labels.zarr output=onpolicy --teacher sevenn --rounds 3",
    "demo": "ffdistill demo -o demo_out",
    "evaluate": "ffdistill evaluate runs/distilled/best.pt --data heldout.zarr --teacher sevenn -o eval",
    "phonons": "ffdistill phonons runs/distilled/best.pt --structure Si --teacher sevenn -o phonons",
    "check": "ffdistill check runs/distilled/best.pt",
    "md": "ffdistill md runs/distilled/best.pt frames.extxyz --temperature 300 --steps 10000 -o md.traj",
    "export": "ffdistill export runs/distilled/best.pt -o student.pt",
    "lammps": "ffdistill lammps runs/distilled/best.pt frames.extxyz --steps 10000 -o lammps_out",
    "serve": "ffdistill serve runs/distilled/best.pt --structure start.xyz --port 31415",
}


def explain(sub) -> None:
    """Fill in help lines that a verb left out, show every default, and add each verb's example."""
    for verb, parser in sub.choices.items():
        parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
        if verb in EXAMPLES:
            parser.epilog = f"example: {EXAMPLES[verb]}"
        for action in parser._actions:
            name = action.option_strings[-1] if action.option_strings else action.dest
            if not action.help:
                action.help = HELP.get((verb, name)) or HELP.get(("*", name))
