"""Verbs that score students and teachers: evaluate, phonons, check."""

from __future__ import annotations

from ffdistill.cli.common import _device


def cmd_evaluate(args) -> None:
    import dataclasses

    from ffdistill.evaluate.report import PROFILES, evaluate_from_paths, markdown_tables

    device = _device(args)
    profile = PROFILES[args.profile]
    lengths = {"nvt_steps": args.md_steps, "nve_steps": args.md_steps, "nvt_runs": args.md_runs}
    profile = dataclasses.replace(profile, **{k: v for k, v in lengths.items() if v is not None})
    phonon_cell = None
    if args.phonons:
        from ffdistill.data.sampling import load_structure

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


def add_parsers(sub) -> None:
    """Register evaluate, phonons, check."""
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

    p = sub.add_parser("phonons", help="phonon bands and DOS of teacher and students with phonopy, overlaid")
    p.add_argument("models", nargs="+", help="student files (best.pt)")
    p.add_argument("--structure", required=True, help="unit cell at equilibrium: a file or a name such as Si, Cu")
    p.add_argument("--teacher", default="sevenn")
    p.add_argument("--supercell", type=int, nargs=3, default=[2, 2, 2])
    p.add_argument("--trust-teacher", action="store_true")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_phonons)

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
