"""Verbs that train students: train, compare, distill, demo."""

from __future__ import annotations

import json

from ffdistill.cli.common import _config, _device


def cmd_train(args) -> None:
    from ffdistill.training.trainer import train_from_config

    config = _config(args)
    result = train_from_config(config, resume=args.resume, progress=not args.quiet)
    print(f"best student saved to {result.best_path} (validation force MAE {1000 * result.best_force_mae:.1f} meV/Å)")
    print(f"training stopped: {result.stop_reason}")


def cmd_compare(args) -> None:
    import dataclasses

    from ffdistill.workflows.compare import compare, table

    config = _config(args)
    if args.device is not None:  # one device for training and evaluation, as --device means everywhere
        _device(args)
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, device=args.device))
    methods = args.methods.split(",") if args.methods else None
    results = compare(config, methods, args.seeds, args.output, md_steps=args.md_steps, progress=not args.quiet)
    print(table(results))
    print(json.dumps({"methods": results, "seeds": args.seeds}))


def cmd_distill(args) -> None:
    from ffdistill.workflows.onpolicy import OnPolicySettings, distill

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


def cmd_demo(args) -> None:
    from ffdistill.workflows.demo import run_demo

    run_demo(args.output, quick=args.quick, progress=not args.quiet, device=_device(args))


def add_parsers(sub) -> None:
    """Register train, compare, distill, demo."""
    p = sub.add_parser("train", help="train a student from a YAML config with a.b=c overrides")
    p.add_argument("config", help="YAML config (optional: overrides alone run on the defaults)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.hessian=0 train.max_steps=5000")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.set_defaults(func=cmd_train)

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

    p = sub.add_parser("demo", help="distil SevenNet-0 into a fast student on silicon, end to end")
    p.add_argument("-o", "--output", default="demo_out")
    p.add_argument("--quick", action="store_true", help="a smaller run for smoke tests")
    p.set_defaults(func=cmd_demo)
