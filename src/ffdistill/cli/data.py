"""Verbs that make and read label stores: sample, label, merge, inspect, select."""

from __future__ import annotations

import json
import zipfile

from ffdistill.cli.common import _describe_rule, _device, _positive, _rows, _shard


def _teacher(args):
    """The teacher a labelling verb names, with its trust, worker interpreter, device and per-call timeout."""
    from ffdistill.teachers import load_teacher

    return load_teacher(
        args.teacher,
        trust=args.trust_teacher,
        python=args.teacher_python,
        device=_device(args),
        timeout=args.teacher_timeout,
    )


def cmd_sample(args) -> None:
    import ase.io

    from ffdistill.data.sampling import sample_to_file, temperature_summary

    teacher = _teacher(args)
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


def cmd_label(args) -> None:
    from ffdistill.data.labels import label_file

    teacher = _teacher(args)
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
    from ffdistill.data.labels import merge_stores

    store = merge_stores(args.shards, args.output, progress=not args.quiet)
    print(f"merged {len(args.shards)} shards ({len(store)} frames) into {args.output}")


def cmd_inspect(args) -> None:
    from ffdistill.data.labels import LabelStore
    from ffdistill.errors import StoreError

    if zipfile.is_zipfile(args.store):  # a student file or an export: what it is and what it needs
        from ffdistill.calculator import describe_file

        print(describe_file(args.store))
        return
    store = LabelStore(args.store)
    if args.verify:
        problems = store.verify()
        if problems:
            for line in problems[:-1]:
                print(line)
            raise StoreError(f"{args.store} is damaged: {problems[-1]} ({len(problems)} problem(s) listed)")
        print(f"{args.store}: intact ({len(store)} frames; every array's checksum and every chunk file verified)")
        return
    summary = store.summary()
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
        f"kinetic T      {_describe_temperatures(summary['kinetic_temperature_K'])}",
        f"teacher        {summary['teacher']['spec']} ({summary['teacher']['version']})",
        f"created        {summary['created']} by ffdistill {summary['ffdistill_version']}",
    ]
    print("\n".join(lines))


def _describe_temperatures(found: dict | None) -> str:
    if found is None:
        return "no frame carries momenta (copies, or frames not from ffdistill sample)"
    groups = found["group_means"]
    return (
        f"{found['mean']:.0f} K mean over the {found['frames']} frames with momenta ({found['min']:.0f}–"
        f"{found['max']:.0f} K; per group {groups['min']:.0f}–{groups['max']:.0f} K over {groups['groups']} groups)"
    )


def cmd_migrate(args) -> None:
    from ffdistill.data.labels import migrate_store

    kept = migrate_store(args.store, progress=not args.quiet)
    print(f"migrated {args.store} to the current format; the old store is kept at {kept}")


def cmd_select(args) -> None:
    from ffdistill.data.select import (
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


def add_parsers(sub) -> None:
    """Register sample, label, merge, inspect, migrate, select."""
    p = sub.add_parser("sample", help="sample configurations with the teacher (MD, rattle, strain)")
    p.add_argument("--teacher", default="sevenn")
    p.add_argument(
        "--structure",
        required=True,
        help="a structure file; bulk:NAME or molecule:NAME (ASE's ase.build names, e.g. bulk:Cu, molecule:H2O); "
        "or a named cell: Si (64 atoms), Si32, Si16, Cu, BaTiO3",
    )
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

    p = sub.add_parser("inspect", help="summarise a label store, or say what a student file or export is")
    p.add_argument("store", help="label store (a zarr directory), student file (best.pt) or TorchScript export")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--verify", action="store_true", help="check every frame of every array and every chunk file; list the damage"
    )
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("migrate", help="rewrite an older label store in the current format (checksums everywhere)")
    p.add_argument("store", help="label store of an older format; kept beside the new one as STORE.formatN")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "select", help="keep the frames of structure files or ASE databases that match rules; pick a diverse subset"
    )
    p.add_argument("inputs", nargs="+", help="ASE-readable files or ASE databases (.db)")
    p.add_argument("-o", "--output", required=True, help="extxyz file, or an ASE database if it ends in .db")
    p.add_argument("--elements", nargs="+", help="keep frames made only of these elements")
    p.add_argument("--require", nargs="+", default=[], help="keep frames that contain all of these elements")
    p.add_argument("--max-atoms", type=_positive)
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
    p.add_argument("--pick", type=_positive, help="write at most N of the kept frames, whole groups at a time")
    p.add_argument("--by", choices=["fps", "random"], default="fps", help="farthest-point sampling (default) or random")
    p.add_argument(
        "--descriptor-model", help="student file: FPS on its mean node features (default: per-element-pair RDF)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --by random")
    p.set_defaults(func=cmd_select)
