"""ffdistill: distil force-field foundation models into fast students through teacher Hessians."""

__version__ = "0.1.0"

from ffdistill.graph import AtomicGraph  # noqa: E402

__all__ = ["AtomicGraph", "__version__", "load_calculator"]


def load_calculator(path: str, **kwargs):
    """An ASE calculator for a saved student (``torch.load(weights_only=True)`` under the hood)."""
    from ffdistill.calculator import load_calculator as _load

    return _load(path, **kwargs)
