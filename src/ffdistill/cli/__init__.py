"""Thin command-line verbs over library functions of the same name."""

from __future__ import annotations

import argparse
import errno
import sys
import traceback
import warnings

from ffdistill.cli.common import explain


class _OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): ``ffdistill VERB: error: …``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``ffdistill`` parser: each verb group registers its own verbs (``cli/data.py``, ``training.py``,
    ``evaluation.py``, ``deploy.py``); the options every verb shares are added here."""
    from ffdistill.cli import data, deploy, evaluation, training

    parser = _OneLineParser(prog="ffdistill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (data, training, evaluation, deploy):
        group.add_parsers(sub)
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
    for name in ("label", "sample"):
        sub.choices[name].add_argument(
            "--teacher-timeout",
            type=float,
            default=None,
            help="seconds a worker teacher may take per frame before it is stopped (labelling then resumes on a "
            "re-run); default 300 s + 1 s per atom × (1 + Hessian rows and probes)",
        )
    for p in sub.choices.values():
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.add_argument("--debug", action="store_true", help="on an error, show the traceback after the one line")
    explain(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ffdistill.errors import FFDistillError

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*TorchScript.*|.*torch.jit.*|.*cuEquivariance.*|.*accelerat.*")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a refused option (2, its one line already printed)
        return int(stop.code or 0)
    try:
        args.func(args)
    except FFDistillError as error:
        print(f"ffdistill {args.command}: error: {error}", file=sys.stderr)
        if args.debug:
            traceback.print_exc()
        return 2
    except KeyboardInterrupt:
        print(f"ffdistill {args.command}: interrupted; re-run the same command to continue", file=sys.stderr)
        return 130
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        where = f" while writing {error.filename}" if error.filename else ""
        print(
            f"ffdistill {args.command}: error: no space left{where} ({error.strerror}); free space and re-run the "
            "same command: it continues from its last committed block or checkpoint",
            file=sys.stderr,
        )
        if args.debug:
            traceback.print_exc()
        return 2
    return 0


#: a full disk, a full quota, or a file-size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so writes fail)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
