"""Verbs that run a student: md, export, lammps, serve."""

from __future__ import annotations

from ffdistill.cli.common import _device, _positive


def cmd_md(args) -> None:
    from ffdistill import load_calculator
    from ffdistill.data.sampling import load_structure
    from ffdistill.evaluate.md import run_md
    from ffdistill.evaluate.uncertainty import UncertaintyStop, UncertaintyWatch

    watch = None
    if args.uncertainty_threshold is not None or args.uncertainty_stop is not None:
        watch = UncertaintyWatch(
            f"{args.output}.uncertain.extxyz",
            f"{args.output}.uncertainty.log",
            args.uncertainty_threshold,
            args.uncertainty_stop,
            args.uncertainty_interval,
        )
    calc = load_calculator(args.model, device=_device(args), compile=args.compile)
    atoms = load_structure(args.structure)
    try:
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
            uncertainty=watch,
        )
    except UncertaintyStop as stop:
        print(f"{stop}; trajectory {args.output}, frames above threshold {watch.frames_path}")
        return
    print(f"{args.steps} steps done: trajectory {args.output}, energies {args.output}.log")
    if watch is not None:
        print(
            f"committee deviation: {watch.log_path}; frames above threshold (for ffdistill label): {watch.frames_path}"
        )


def cmd_export(args) -> None:
    import os

    from ffdistill.deploy.export import export_student

    source = os.path.join(args.run, "best.pt") if os.path.isdir(args.run) else args.run
    after = export_student(source, args.output, format=args.format)
    if args.format == "mliap":
        print(f"exported {source} to {args.output} (ML-IAP unified); in LAMMPS:\n{after}")
    else:
        print(f"exported {source} to {args.output}; ASE calculator without ffdistill: {after}")


def cmd_lammps(args) -> None:
    from ffdistill import load_calculator
    from ffdistill.data.sampling import load_structure
    from ffdistill.deploy.lammps import run_lammps_md

    atoms = load_structure(args.structure)
    run = run_lammps_md(
        load_calculator(args.model, compile=args.compile),
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
    from ffdistill.deploy.serve import load_template, serve

    calc = load_calculator(args.model, compile=args.compile)
    template = load_template(args.structure, calc.potential.elements)
    answered = serve(calc, template, unix=args.unix, port=args.port, host=args.host)
    print(f"served {answered} force requests; the server closed the connection")


COMPILE_HELP = (
    "run the student through torch.compile: ~2.5x faster per step after a first call that compiles (20-30 s on a "
    "CPU; needs a C++ compiler); worth it for runs of more than a few hundred steps"
)


def add_parsers(sub) -> None:
    """Register md, export, lammps, serve."""
    p = sub.add_parser("md", help="molecular dynamics with a saved student through ASE")
    p.add_argument("model")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.add_argument("structure", help="a structure file or a named structure")
    p.add_argument("--ensemble", choices=["nve", "nvt"], default="nvt")
    p.add_argument("--temperature", type=float, default=300.0)
    p.add_argument("--steps", type=_positive, default=1000)
    p.add_argument("--timestep", type=float, default=1.0, help="fs")
    p.add_argument("--interval", type=_positive, default=10, help="steps between saved frames and stability checks")
    p.add_argument("--resume", action="store_true", help="continue from the trajectory's last frame")
    p.add_argument(
        "--uncertainty-threshold",
        type=float,
        help="committees: write frames whose largest per-atom force deviation (eV/Å) exceeds this to "
        "OUTPUT.uncertain.extxyz, ready for ffdistill label (default: none)",
    )
    p.add_argument(
        "--uncertainty-stop", type=float, help="committees: stop the run when the deviation exceeds this (eV/Å)"
    )
    p.add_argument(
        "--uncertainty-interval", type=_positive, default=10, help="steps between uncertainty checks (default 10)"
    )
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

    p = sub.add_parser(
        "lammps", help="molecular dynamics with a saved student inside LAMMPS (fix external; one MPI rank)"
    )
    p.add_argument("model")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.add_argument("structure", help="a structure file or a named structure")
    p.add_argument("--ensemble", choices=["nve", "nvt"], default="nvt")
    p.add_argument("--temperature", type=float, default=300.0, help="K: start velocities and the NVT thermostat")
    p.add_argument("--steps", type=_positive, default=1000)
    p.add_argument("--timestep", type=float, default=1.0, help="fs")
    p.add_argument("--interval", type=_positive, default=10, help="steps between saved frames and thermo lines")
    p.add_argument("-o", "--output", required=True, help="trajectory file (.traj); thermo goes to OUTPUT.log")
    p.set_defaults(func=cmd_lammps)

    p = sub.add_parser("serve", help="the student as an i-PI client: i-PI or ASE's SocketIOCalculator drives it")
    p.add_argument("model")
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.add_argument("--structure", required=True, help="atoms in the server's order (the protocol sends no elements)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", help="unix socket name (i-PI's address; /tmp/ipi_NAME)")
    where.add_argument("--port", type=int, help="TCP port of the server")
    p.add_argument("--host", default="localhost", help="server host for --port")
    p.set_defaults(func=cmd_serve)
