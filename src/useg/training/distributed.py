"""Several training processes (``torchrun --nproc_per_node N -m useg train ...``; gloo on CPU,
NCCL on CUDA): where this process stands, the process group, and the sums across processes.

Each process takes its share of every step's tiles
(:meth:`useg.training.stream.TileStream.shard`), the loss of each process is scaled so that the
averaged gradients equal those of one process with an N times larger batch, and only rank 0
validates, writes checkpoints and logs (:func:`useg.training.loop.train`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from useg.device import resolve_device, resolve_precision

__all__ = ["Dist", "all_reduce_sum", "init_distributed", "shared_precision",
           "wait_until_released"]


@dataclass
class Dist:
    """Where this process stands in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """This process's place in a torchrun job (from its environment) and its device; joins the
    process group. Without torchrun: rank 0 of 1 on ``device_name``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device_name)
    import torch.distributed as dist

    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def all_reduce_sum(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """The sum of ``value`` over the processes of the job (``value`` itself in one process)."""
    if d.world > 1:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
        if dist.get_backend() == "gloo":
            wait_until_released(value)
    return value


def wait_until_released(value: torch.Tensor, timeout: float = 10.0) -> None:
    """Wait until no one but the caller holds ``value`` (at most ``timeout`` seconds)."""
    # gloo's worker thread lets go of a finished collective's tensors a moment after the call has
    # returned, and needs the GIL to do so. If the interpreter is already shutting down by then, it
    # kills that thread inside a C++ destructor and the process aborts ("terminate called without
    # an active exception"; a few runs in a hundred on a loaded machine). Handing the GIL over
    # until the worker has let go leaves nothing pending at exit.
    use_count = getattr(value, "_use_count", None)
    if use_count is None:
        return
    deadline = time.monotonic() + timeout
    while use_count() > 1 and time.monotonic() < deadline:
        time.sleep(0)


def shared_precision(precision: str, device: torch.device, d: Dist) -> str:
    """``precision`` resolved (:func:`useg.device.resolve_precision`) by the main process, so
    that every process of a job trains in the same one."""
    if d.world == 1:
        return resolve_precision(precision, device)
    import torch.distributed as dist

    choice = [resolve_precision(precision, device) if d.main else None]
    dist.broadcast_object_list(choice, src=0)
    return str(choice[0])
