"""Thin command-line verbs over library functions of the same name."""

from __future__ import annotations

import argparse
import json
import sys
import warnings


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


def cmd_label(args) -> None:
    from ffdistill.labels import label_file
    from ffdistill.teachers import load_teacher

    device = _device(args)
    teacher = load_teacher(args.teacher, trust=args.trust_teacher, python=args.teacher_python, device=device)
    store = label_file(
        teacher,
        args.input,
        args.output,
        rows=args.hessian_rows,
        seed=args.seed,
        progress=not args.quiet,
        shard=args.shard,
        node_features=args.node_features,
        probes=args.hessian_probes,
        group_by=args.group_by,
        group_size=args.group_size,
        batch_size=args.batch_size,
    )
    print(f"wrote {len(store)} frames to {args.output}")


def cmd_merge(args) -> None:
    from ffdistill.labels import merge_stores

    store = merge_stores(args.shards, args.output, progress=not args.quiet)
    print(f"merged {len(args.shards)} shards ({len(store)} frames) into {args.output}")


def _shard(value: str) -> tuple[int, int]:
    i, _, n = value.partition("/")
    if not (i.isdigit() and n.isdigit()) or not 0 <= int(i) < int(n):
        raise argparse.ArgumentTypeError("--shard takes I/N with 0 <= I < N, e.g. 0/4")
    return int(i), int(n)


def cmd_inspect(args) -> None:
    from ffdistill.labels import LabelStore

    summary = LabelStore(args.store).summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    rows = summary["hessian_rows_per_frame"]
    lines = [
        f"store          {summary['path']}",
        f"frames         {summary['frames']} ({summary['atoms_total']} atoms; "
        f"{summary['atoms_per_frame']['min']}-{summary['atoms_per_frame']['max']} per frame)",
        f"elements       {' '.join(summary['elements'])}",
        f"labels         {', '.join(summary['labels'])}",
        f"hessian rows   {rows['setting']} per frame ({rows['min']}-{rows['max']})"
        f"{'  [full Hessian]' if summary['full_hessian'] else ''}",
        f"H·v probes     {summary['hessian_probes_per_frame']['max']} per frame",
        f"groups         {summary['groups']['count']} ({_describe_rule(summary['groups']['rule'])})",
        f"teacher        {summary['teacher']['spec']} ({summary['teacher']['version']})",
        f"created        {summary['created']} by ffdistill {summary['ffdistill_version']}",
    ]
    print("\n".join(lines))


def _describe_rule(rule: str) -> str:
    kind, _, arg = rule.partition(":")
    return f"from each input frame's info[{arg!r}]" if kind == "info" else f"blocks of {arg} consecutive input frames"


def cmd_sample(args) -> None:
    import ase.io

    from ffdistill.sampling import sample_to_file, temperature_summary
    from ffdistill.teachers import load_teacher

    device = _device(args)
    teacher = load_teacher(args.teacher, trust=args.trust_teacher, python=args.teacher_python, device=device)
    n = sample_to_file(
        teacher,
        args.structure,
        args.output,
        n_frames=args.n,
        temperatures=args.temperature,
        md_fraction=args.md_fraction,
        interval=args.interval,
        seed=args.seed,
        progress=not args.quiet,
        runs=args.runs,
    )
    print(f"wrote {n} frames to {args.output}")
    for line in temperature_summary(ase.io.read(args.output, ":")):
        print(line)


def cmd_train(args) -> None:
    from ffdistill.train import train_from_config

    config = _config(args)
    result = train_from_config(config, resume=args.resume, progress=not args.quiet)
    print(f"best student saved to {result.best_path} (validation force MAE {1000 * result.best_force_mae:.1f} meV/Å)")
    print(f"training stopped: {result.stop_reason}")


def _config(args):
    """The config file is optional: `ffdistill train data.store=x.zarr` runs on the defaults."""
    from ffdistill.config import load_config

    path, overrides = (None, [args.config, *args.overrides]) if "=" in args.config else (args.config, args.overrides)
    return load_config(path, overrides)


def cmd_demo(args) -> None:
    from ffdistill.demo import run_demo

    run_demo(args.output, quick=args.quick, progress=not args.quiet, device=_device(args))


def cmd_evaluate(args) -> None:
    import dataclasses

    from ffdistill.evaluate.report import PROFILES, evaluate_from_paths, markdown_tables

    device = _device(args)
    profile = PROFILES[args.profile]
    lengths = {"nvt_steps": args.md_steps, "nve_steps": args.md_steps, "nvt_runs": args.md_runs}
    profile = dataclasses.replace(profile, **{k: v for k, v in lengths.items() if v is not None})
    phonon_cell = None
    if args.phonons:
        from ffdistill.sampling import load_structure

        phonon_cell = load_structure(args.phonons)
    models = evaluate_from_paths(
        args.models,
        args.data,
        args.teacher,
        args.output,
        profile=profile,
        trust=args.trust_teacher,
        phonon_cell=phonon_cell,
        threads=args.threads,
        teacher_python=args.teacher_python,
        device=device,
    )
    print(markdown_tables(models))
    print(f"report, metrics.json and plots in {args.output}/")


def cmd_phonons(args) -> None:
    from ffdistill.evaluate.phonons import phonons_from_paths

    summary = phonons_from_paths(
        args.models,
        args.structure,
        args.teacher,
        args.output,
        tuple(args.supercell),
        trust=args.trust_teacher,
        teacher_python=args.teacher_python,
        device=_device(args),
    )
    for name, m in summary.items():
        print(
            f"{name}: band MAE {m['phonon_band_mae_cm1']:.1f} cm⁻¹, "
            f"Γ MAE {m['phonon_gamma_mae_cm1']:.1f} cm⁻¹ (vs teacher)"
        )
    print(f"phonons.png and phonons.json in {args.output}/")


def cmd_md(args) -> None:
    from ffdistill import load_calculator
    from ffdistill.evaluate.md import run_md
    from ffdistill.sampling import load_structure

    calc = load_calculator(args.model, device=_device(args))
    atoms = load_structure(args.structure)
    run_md(
        calc,
        atoms,
        args.ensemble,
        args.temperature,
        args.steps,
        args.output,
        timestep_fs=args.timestep,
        interval=args.interval,
        resume=args.resume,
        progress=not args.quiet,
    )
    print(f"{args.steps} steps done: trajectory {args.output}, energies {args.output}.log")


def cmd_export(args) -> None:
    import os

    from ffdistill.export import export_student

    source = os.path.join(args.run, "best.pt") if os.path.isdir(args.run) else args.run
    after = export_student(source, args.output, format=args.format)
    if args.format == "mliap":
        print(f"exported {source} to {args.output} (ML-IAP unified); in LAMMPS:\n{after}")
    else:
        print(f"exported {source} to {args.output}; ASE calculator without ffdistill: {after}")


def cmd_compare(args) -> None:
    import dataclasses
    import json
    import os

    from ffdistill.compare import compare, table

    config = _config(args)
    if args.device is not None:  # one device for training and evaluation, as --device means everywhere
        _device(args)
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, device=args.device))
    os.makedirs(args.output, exist_ok=True)
    methods = args.methods.split(",") if args.methods else None
    results = compare(config, methods, args.seeds, args.output, md_steps=args.md_steps, progress=not args.quiet)
    print(table(results))
    print(json.dumps({"methods": results, "seeds": args.seeds}))


def cmd_select(args) -> None:
    from ffdistill.select import (
        FrameFilter,
        parse_composition,
        parse_elements,
        parse_where,
        select_frames,
        student_descriptor,
    )

    rules = FrameFilter(
        elements=parse_elements(args.elements),
        require=parse_elements(args.require) or frozenset(),
        max_atoms=args.max_atoms,
        composition=parse_composition(args.composition) if args.composition else None,
        energy_window=tuple(args.energy_window) if args.energy_window else None,
        where=parse_where(args.where),
    )
    describe = student_descriptor(args.descriptor_model) if args.descriptor_model else None
    summary = select_frames(
        args.inputs, args.output, rules, pick=args.pick, by=args.by, describe=describe, seed=args.seed
    )
    print("\n".join(summary.lines() + [f"wrote {summary.written} frames to {args.output}"]))


def cmd_lammps(args) -> None:
    from ffdistill.lammps import run_lammps_md
    from ffdistill.sampling import load_structure

    atoms = load_structure(args.structure)
    run = run_lammps_md(
        args.model,
        atoms,
        args.ensemble,
        args.temperature,
        args.steps,
        args.output,
        timestep_fs=args.timestep,
        interval=args.interval,
    )
    print(
        f"{args.steps} LAMMPS steps done (final T {run.thermo['temp'][-1]:.0f} K): "
        f"trajectory {args.output}, thermo {args.output}.log"
    )


def cmd_serve(args) -> None:
    from ffdistill import load_calculator
    from ffdistill.serve import load_template, serve

    calc = load_calculator(args.model)
    template = load_template(args.structure, calc.potential.elements)
    answered = serve(calc, template, unix=args.unix, port=args.port, host=args.host)
    print(f"served {answered} force requests; the server closed the connection")


def cmd_check(args) -> None:
    from ffdistill.testing import check_potential, load_check_target

    potential, structures = load_check_target(
        args.target, args.structures, trust=args.trust_teacher, python=args.teacher_python
    )
    report = check_potential(potential, structures, raise_on_failure=False)
    print(report)
    if not report.passed:
        from ffdistill.errors import InputError

        raise InputError(f"{len(report.failed)} check(s) failed: {', '.join(r.name for r in report.failed)}")


def cmd_distill(args) -> None:
    from ffdistill.onpolicy import OnPolicySettings, distill

    settings = OnPolicySettings(
        rounds=args.rounds,
        ensemble=args.ensemble,
        new_frames=args.new_frames,
        md_steps=args.md_steps,
        md_temperature=args.md_temperature,
        timestep_fs=args.timestep,
        md_interval=args.md_interval,
        threshold=args.threshold,
        spot_check=args.spot_check,
        teacher=args.teacher,
        test_store=args.test,
        test_fraction=args.test_fraction,
        seed=args.seed,
        teacher_python=args.teacher_python,
    )
    config = _config(args)
    rounds = distill(config, settings, progress=not args.quiet)
    with open(f"{config.output}/report.md") as handle:
        print(handle.read().rstrip())
    print(f"{len(rounds)} rounds; students, data and metrics in {config.output}/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffdistill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("label", help="label structures with a teacher's energies, forces and Hessian rows")
    p.add_argument("input", help="any ASE-readable structure file")
    p.add_argument("-o", "--output", required=True, help="label store to write (a zarr directory)")
    p.add_argument("--teacher", default="sevenn", help="teacher spec (default: sevenn = SevenNet-0)")
    p.add_argument("--hessian-rows", type=_rows, default=4, help="'all' or K random rows per frame (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-teacher", action="store_true", help="allow loading a pickled teacher model file")
    p.add_argument("--node-features", action="store_true", help="also store the teacher's node features (n2n baseline)")
    p.add_argument(
        "--shard", type=_shard, default=(0, 1), help="I/N: label every N-th frame from the I-th (join with merge)"
    )
    p.add_argument("--hessian-probes", type=int, default=0, help="K random unit probes v per frame, stored with H·v")
    p.add_argument(
        "--group-by", default=None, help="info key naming each frame's group (default: 'group' when present)"
    )
    p.add_argument(
        "--group-size", type=int, default=10, help="without group ids: blocks of this many consecutive frames"
    )
    p.add_argument(
        "--batch-size",
        type=_positive,
        default=1,
        help="frames per teacher call, as one batched graph (default 1); committed together on disk",
    )
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("merge", help="join the shards of one labelling job into one store")
    p.add_argument("shards", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("inspect", help="summarise a label store")
    p.add_argument("store")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("sample", help="sample configurations with the teacher (MD, rattle, strain)")
    p.add_argument("--teacher", default="sevenn")
    p.add_argument("--structure", required=True, help="a structure file, or a name such as Si, Si64, Cu, BaTiO3")
    p.add_argument("-n", type=int, default=40, help="number of frames to write")
    p.add_argument("--temperature", type=float, nargs="+", default=[300.0, 600.0])
    p.add_argument("--md-fraction", type=float, default=0.5, help="share of frames from MD (the rest rattled/strained)")
    p.add_argument(
        "--interval", type=int, default=None, help="MD steps between kept frames (default: 50 fs apart, decorrelated)"
    )
    p.add_argument("--runs", type=int, default=1, help="independent MD runs per temperature (each its own groups)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-teacher", action="store_true")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("train", help="train a student from a YAML config with a.b=c overrides")
    p.add_argument("config", help="YAML config (optional: overrides alone run on the defaults)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.hessian=0 train.max_steps=5000")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="distil SevenNet-0 into a fast student on silicon, end to end")
    p.add_argument("-o", "--output", default="demo_out")
    p.add_argument("--quick", action="store_true", help="a smaller run for smoke tests")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "evaluate",
        help="accuracy, MD stability, NVE drift, RDF/VDOS, relaxation, frequencies, phonons and speed, with a report",
    )
    p.add_argument("models", nargs="+", help="student files (best.pt)")
    p.add_argument("--data", required=True, help="held-out label store, or a structure file to label with the teacher")
    p.add_argument("--teacher", default="sevenn")
    p.add_argument(
        "--profile",
        choices=["quick", "standard", "long"],
        default="standard",
        help="run lengths: quick (0.3 ps), standard (3 x 10 ps NVT + 5 ps NVE per student), long (5 x 50 ps + 20 ps)",
    )
    p.add_argument(
        "--md-steps", type=int, default=None, help="override the profile: steps (1 fs) per NVT run and for NVE"
    )
    p.add_argument("--md-runs", type=int, default=None, help="override the profile: NVT runs per student")
    p.add_argument(
        "--phonons",
        metavar="STRUCTURE",
        default=None,
        help="also phonon bands on this unit cell (file or name, e.g. Si)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads while timing (default: as set)")
    p.add_argument("--trust-teacher", action="store_true")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("md", help="molecular dynamics with a saved student through ASE")
    p.add_argument("model")
    p.add_argument("structure", help="a structure file or a named structure")
    p.add_argument("--ensemble", choices=["nve", "nvt"], default="nvt")
    p.add_argument("--temperature", type=float, default=300.0)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--timestep", type=float, default=1.0, help="fs")
    p.add_argument("--interval", type=int, default=10, help="steps between saved frames and stability checks")
    p.add_argument("--resume", action="store_true", help="continue from the trajectory's last frame")
    p.add_argument("-o", "--output", required=True, help="trajectory file (.traj)")
    p.set_defaults(func=cmd_md)

    p = sub.add_parser(
        "export", help="TorchScript student that runs without ffdistill, plus a standalone ASE calculator"
    )
    p.add_argument("run", help="a run folder (uses best.pt) or a student file")
    p.add_argument("-o", "--output", required=True)
    p.add_argument(
        "--format",
        choices=["torchscript", "mliap"],
        default="torchscript",
        help="torchscript (default; runs without ffdistill) or mliap (pair_style mliap unified in LAMMPS)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("compare", help="train and evaluate the paper's methods and baselines side by side")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated (default: all that apply; teacher-forces needs reference labels)",
    )
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--md-steps", type=int, default=200, help="NVT stability steps per trained student")
    p.add_argument("-o", "--output", default="compare_out")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "select", help="keep the frames of structure files or ASE databases that match rules; pick a diverse subset"
    )
    p.add_argument("inputs", nargs="+", help="ASE-readable files or ASE databases (.db)")
    p.add_argument("-o", "--output", required=True, help="extxyz file, or an ASE database if it ends in .db")
    p.add_argument("--elements", nargs="+", help="keep frames made only of these elements")
    p.add_argument("--require", nargs="+", default=[], help="keep frames that contain all of these elements")
    p.add_argument("--max-atoms", type=int)
    p.add_argument("--composition", help="a formula (SiO2) or ratios (Si:O=1:2) the frame must have")
    p.add_argument(
        "--energy-window",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="eV/atom; frames without an energy are dropped",
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="atoms.info (or database key) must equal VALUE (repeatable)",
    )
    p.add_argument("--pick", type=int, help="write at most N of the kept frames, whole groups at a time")
    p.add_argument("--by", choices=["fps", "random"], default="fps", help="farthest-point sampling (default) or random")
    p.add_argument(
        "--descriptor-model", help="student file: FPS on its mean node features (default: per-element-pair RDF)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --by random")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser(
        "lammps", help="molecular dynamics with a saved student inside LAMMPS (fix external; one MPI rank)"
    )
    p.add_argument("model")
    p.add_argument("structure", help="a structure file or a named structure")
    p.add_argument("--ensemble", choices=["nve", "nvt"], default="nvt")
    p.add_argument("--temperature", type=float, default=300.0, help="K: start velocities and the NVT thermostat")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--timestep", type=float, default=1.0, help="fs")
    p.add_argument("--interval", type=int, default=10, help="steps between saved frames and thermo lines")
    p.add_argument("-o", "--output", required=True, help="trajectory file (.traj); thermo goes to OUTPUT.log")
    p.set_defaults(func=cmd_lammps)

    p = sub.add_parser("serve", help="the student as an i-PI client: i-PI or ASE's SocketIOCalculator drives it")
    p.add_argument("model")
    p.add_argument("--structure", required=True, help="atoms in the server's order (the protocol sends no elements)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", help="unix socket name (i-PI's address; /tmp/ipi_NAME)")
    where.add_argument("--port", type=int, help="TCP port of the server")
    p.add_argument("--host", default="localhost", help="server host for --port")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("phonons", help="phonon bands and DOS of teacher and students with phonopy, overlaid")
    p.add_argument("models", nargs="+", help="student files (best.pt)")
    p.add_argument("--structure", required=True, help="unit cell at equilibrium: a file or a name such as Si, Cu")
    p.add_argument("--teacher", default="sevenn")
    p.add_argument("--supercell", type=int, nargs=3, default=[2, 2, 2])
    p.add_argument("--trust-teacher", action="store_true")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_phonons)

    p = sub.add_parser(
        "distill", help="on-policy rounds: train an ensemble, run its MD, label the frames it disputes, retrain"
    )
    p.add_argument("config", help="YAML run config; data.store is the initial label store, output the run folder")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=5000")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ensemble", type=int, default=3, help="students per round (different seeds)")
    p.add_argument("--new-frames", type=int, default=8, help="frames the teacher labels per round")
    p.add_argument(
        "--md-steps", type=int, default=400, help="Langevin steps per student and round (the target stable time)"
    )
    p.add_argument("--md-temperature", type=float, default=600.0)
    p.add_argument("--timestep", type=float, default=1.0, help="fs")
    p.add_argument("--md-interval", type=int, default=10, help="steps between candidate frames")
    p.add_argument(
        "--threshold", type=float, default=0.1, help="eV/Å: stop once MD is stable and disagreement is below this"
    )
    p.add_argument(
        "--spot-check", type=int, default=0, help="teacher force calls on this many top candidates; pick by true error"
    )
    p.add_argument(
        "--teacher", required=True, help="teacher spec, the one that labelled the store (a file never chooses code)"
    )
    p.add_argument("--test", help="held-out label store (default: hold out --test-fraction of the initial store)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser(
        "check",
        help="conformance kit: a student file or a teacher spec against finite differences, "
        "rotations, batching, ASE and its TorchScript export",
    )
    p.add_argument("target", help="student file (best.pt) or teacher spec (sevenn, chgnet, dxtb, mace:PATH, ...)")
    p.add_argument(
        "--structures",
        help="a few small structures (any ASE-readable file; default: the first two "
        "frames of a rattled cell of the target's elements)",
    )
    p.add_argument("--trust-teacher", action="store_true")
    p.add_argument("--teacher-python", metavar="PYTHON", default=None)
    p.set_defaults(func=cmd_check)

    for name in ("label", "sample", "evaluate", "md", "demo", "phonons"):
        sub.choices[name].add_argument(
            "--device",
            default="auto",
            help="cpu, cuda, cuda:K or auto (default: a GPU when there is one); ASE-calculator teachers stay on CPU",
        )
    sub.choices["compare"].add_argument(
        "--device", default=None, help="cpu, cuda, cuda:K or auto for training and evaluation (default: train.device)"
    )
    for name in ("label", "sample", "evaluate", "phonons", "distill"):
        sub.choices[name].add_argument(
            "--teacher-python",
            metavar="PYTHON",
            default=None,
            help="run the teacher in this interpreter of another environment (a worker; ffdistill importable there)",
        )
    for p in sub.choices.values():
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    from ffdistill.errors import FFDistillError

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*TorchScript.*|.*torch.jit.*|.*cuEquivariance.*|.*accelerat.*")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FFDistillError as error:
        print(f"ffdistill {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ffdistill {args.command}: interrupted; re-run the same command to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
