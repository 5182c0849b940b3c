"""Process-group set-up for ``torchrun``: nccl on GPUs, gloo on CPU, one GPU per process."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """Where this process sits: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (in place on a copy); identity when not distributed."""
        values = values.detach().clone()
        if self.enabled:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (all ranks get the list)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def setup(device: str = "auto") -> Dist:
    """Join the process group when started by ``torchrun`` and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=dev if dev.type == "cuda" else None)
    return Dist(rank, world, local_rank, dev)


def teardown() -> None:
    """Destroy the process group, after a collection: a DDP wrapper left unreachable (its
    reducer holds the gloo group) is freed first, not at interpreter exit, where freeing a
    gloo group aborts the process now and then (see ``train.train``).  The caller drops
    its own references to the wrapper first."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
