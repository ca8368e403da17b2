"""Data parallelism on torch.distributed: a flag, not a rewrite.

``train.devices=N`` spawns N local worker processes (gloo on CPU, NCCL on GPUs); under ``torchrun``
(multi-node) the process group comes from the environment. Every rank walks the same global batches
with the same random rows and keeps its own slice; loss terms are normalised by global counts, so
the averaged gradient equals the single-process one.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence) -> list:
        """This rank's share of a global batch (every world-th item)."""
        return list(items[self.rank :: self.world])

    def sum_counts(self, counts: dict[str, int]) -> dict[str, int]:
        """Counts summed over ranks (no gradient flows through counts)."""
        if self.world == 1:
            return counts
        names = sorted(counts)
        # NCCL reduces only tensors on the rank's GPU
        where = (
            torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        )
        tensor = torch.tensor([float(counts[n]) for n in names], device=where)
        dist.all_reduce(tensor)
        return {n: int(v) for n, v in zip(names, tensor.tolist())}


def current() -> Ranks:
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:K`` or ``auto`` (a GPU when there is one) as a device; under data parallelism
    ``cuda`` means this rank's GPU (``LOCAL_RANK``). Asking for CUDA without it fails with one line."""
    from ffdistill.errors import InputError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InputError(f"{key}={name} is not a device (use cpu, cuda, cuda:K or auto)") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{key}={name}, but CUDA is not available here (torch {torch.__version__}); use {key}=cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return device


def backend_for(device: torch.device) -> str:
    """NCCL for GPU tensors, gloo for CPU tensors: the backend follows the device, not the machine."""
    return "nccl" if device.type == "cuda" else "gloo"


def from_environment(backend: str = "gloo") -> bool:
    """Join the process group described by torchrun's variables, if any; True when joined."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2 or dist.is_initialized():
        return dist.is_initialized()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return True


def spawn(fn: Callable, devices: int, backend: str, *args) -> None:
    """Run ``fn(*args)`` in ``devices`` local processes joined in one process group."""
    port = _free_port()
    torch.multiprocessing.spawn(_worker, args=(devices, port, backend, fn, args), nprocs=devices, join=True)


def _worker(rank: int, world: int, port: int, backend: str, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
