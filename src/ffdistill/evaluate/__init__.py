"""Evaluation of teachers and students, used alike by ``ffdistill evaluate``, ``demo`` and ``compare``.

=================  ==========================================================================
module             answers
=================  ==========================================================================
accuracy           energy / force / Hessian-row errors; ``load_test_set`` (one way to load one)
candidates         ``Candidate`` (teacher or student), ``load_for_inference``
md                 one MD set-up, stability monitor, NVT / NVE runs, relaxation
observables        RDF (NVT), VDOS (NVE) and their distances student vs teacher
vibrations         frequencies with rigid-body motion projected out, imaginary modes
phonons            phonopy bands, Γ and DOS
speed              interleaved timing, MD steps/s, cost growth
report             profiles, ``evaluate_models``, verdict, report files
=================  ==========================================================================

Heavy parts (report, phonopy, plots) load on first use; ``from ffdistill.evaluate import accuracy``
stays cheap for the trainer.
"""

from __future__ import annotations

from ffdistill.evaluate.accuracy import (
    TestSet,
    accuracy,  # noqa: E402  (the function shadows its module's name on purpose)
    load_test_set,
    store_test_set,
)

_LAZY = {
    "Candidate": "candidates",
    "load_for_inference": "candidates",
    "model_forces": "candidates",
    "Profile": "report",
    "PROFILES": "report",
    "Inputs": "report",
    "evaluate_models": "report",
    "evaluate_from_paths": "report",
    "write_report": "report",
    "markdown_tables": "report",
    "verdict": "report",
}

__all__ = ["TestSet", "accuracy", "load_test_set", "store_test_set", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"ffdistill.evaluate.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ffdistill.evaluate' has no attribute {name!r}")
