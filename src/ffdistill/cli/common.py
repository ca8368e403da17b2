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
