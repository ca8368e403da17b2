"""Where computation runs: one device per command, and a recorder that shows nothing strays from it.

``--device`` (cpu, cuda, cuda:K or auto) on every verb that computes means exactly what ``train.device``
means (``distributed.resolve_device``): asking for CUDA on a machine without it fails with one line.
Students, batches, the loss and autograd teachers live on that device; ASE-calculator teachers (EMT,
any ``ase:MODULE:FACTORY``) compute on the CPU, and say so once.

``DeviceAudit`` records, while an operation runs, every tensor torch functions return that is not on the
expected device, every tensor factory called without ``device=`` (it lands on the default device, the
CPU, whatever device the rest runs on) and every copy to the host. On a CPU-only machine the first check
cannot fail, the other two can: that is what lets CPU tests catch a hard-coded CPU tensor on a hot path.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

#: Factories that allocate on the default device unless given ``device=``.
FACTORIES = frozenset(
    {
        torch.tensor,
        torch.as_tensor,
        torch.zeros,
        torch.ones,
        torch.empty,
        torch.full,
        torch.arange,
        torch.linspace,
        torch.eye,
        torch.rand,
        torch.randn,
        torch.randint,
        torch.randperm,
    }
)
#: Factories that always allocate on the CPU.
HOST_ONLY = frozenset({torch.from_numpy})
#: Tensor methods that copy to the host (``.item()`` and ``float()`` read a value; they are not counted;
#: ``.to(host)`` is, on runs audited for another device).
HOST_COPIES = frozenset({torch.Tensor.cpu, torch.Tensor.numpy})


def resolve(name: str | torch.device, key: str = "--device") -> torch.device:
    """A device from a ``--device`` value, with ``train.device``'s rules; ``key`` names the option in errors."""
    from ffdistill.distributed import resolve_device

    return name if isinstance(name, torch.device) else resolve_device(str(name), key)


def device_of(potential) -> torch.device:
    """Where a potential computes, so inputs can be moved there: a teacher's ``device``, else a module's
    first parameter or buffer, else the CPU. A bound method (``teacher.energy``) computes where its owner does."""
    target = getattr(potential, "__self__", potential)
    device = getattr(target, "device", None)
    if isinstance(device, torch.device):
        return device
    if isinstance(target, torch.nn.Module):
        for tensor in itertools.chain(target.parameters(), target.buffers()):
            return tensor.device
    return torch.device("cpu")


def notice(message: str) -> None:
    """One line on stderr for something the user asked for and does not fully get (not an error)."""
    print(f"ffdistill: note: {message}", file=sys.stderr, flush=True)


@dataclass
class Finding:
    """One tensor that would not be where the computation runs, and the line that made it."""

    kind: str  #: "stray" (output off the device), "default-factory", "host-only" or "host-copy"
    what: str  #: the torch function
    where: str  #: module:function:line of the first caller outside torch
    function: str  #: module.qualified_name of that caller, matched against ``boundaries``


class DeviceAudit(TorchFunctionMode):
    """Records what strays from ``device`` while the ``with`` block runs (see the module docstring).

    ``boundaries`` names functions (``module.qualname``, e.g. ``ffdistill.graph.from_ase``) where host
    tensors are expected: reading inputs and copying results to numpy. Findings whose first caller outside
    torch is one of them are not reported by ``problems``.
    """

    def __init__(self, device: str | torch.device = "cpu", boundaries: Sequence[str] = ()):
        super().__init__()
        self.device, self.boundaries = torch.device(device), frozenset(boundaries)
        self.findings: list[Finding] = []
        self.outputs = 0  #: tensors returned by torch functions inside the block

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self._inspect_call(func, args, kwargs)
        out = func(*args, **kwargs)
        for tensor in _tensors(out):
            self.outputs += 1
            if not _same_device(tensor.device, self.device):
                self._record("stray", func, f" -> {tensor.device}")
        return out

    def _inspect_call(self, func, args, kwargs) -> None:
        if func in FACTORIES and kwargs.get("device") is None and not (args and isinstance(args[0], torch.Tensor)):
            self._record("default-factory", func)
        elif func in HOST_ONLY:
            self._record("host-only", func)
        elif func in HOST_COPIES:
            self._record("host-copy", func)
        elif func is torch.Tensor.to and self.device.type != "cpu" and _to_host(args[1:], kwargs):
            # on a CPU run ``.to(x.device)`` and ``.to("cpu")`` look alike: only ``.cpu()`` is caught there
            self._record("host-copy", func)

    def _record(self, kind: str, func, detail: str = "") -> None:
        where, function = _caller()
        self.findings.append(Finding(kind, getattr(func, "__name__", str(func)) + detail, where, function))

    def problems(self) -> list[Finding]:
        """Findings outside the declared boundaries: each is a tensor that would sit on the wrong device."""
        return [f for f in self.findings if f.function not in self.boundaries]

    def report(self) -> str:
        return "\n".join(f"{f.kind}: {f.what} at {f.where}" for f in self.problems())


def _tensors(out):
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, torch.Tensor):
                yield item


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _to_host(args, kwargs) -> bool:
    target = kwargs.get("device", args[0] if args else None)
    if isinstance(target, torch.Tensor):
        target = target.device
    try:
        return target is not None and not isinstance(target, torch.dtype) and torch.device(target).type == "cpu"
    except (TypeError, RuntimeError):
        return False


def _caller() -> tuple[str, str]:
    """The first frame outside torch and this module: where the call was written."""
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not (module == __name__ or module == "torch" or module.startswith("torch.")):
            code = frame.f_code
            name = getattr(code, "co_qualname", code.co_name)
            return f"{module}:{name}:{frame.f_lineno}", f"{module}.{name}"
        frame = frame.f_back
    return "?", "?"
