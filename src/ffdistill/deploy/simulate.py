"""Moved to ``ffdistill.evaluate.md`` and ``ffdistill.evaluate.vibrations``; kept so that existing
imports (``from ffdistill.deploy.simulate import run_md``) keep working."""

from ffdistill.evaluate.md import (  # noqa: F401
    BOND_TOLERANCE,
    MAX_FORCE,
    Blowup,
    StabilityMonitor,
    bonded_pairs,
    md_stability,
    nve_energy_drift,
    nve_run,
    nvt_run,
    relax,
    rmsd,
    run_md,
)
from ffdistill.evaluate.vibrations import EV_AMU_A2_TO_CM1, frequencies_cm1, vibrational_frequencies  # noqa: F401
