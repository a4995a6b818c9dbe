"""Scale-out on torchrun: one process per device, DistributedDataParallel for the gradients,
rendezvous (single or multi node) by torchrun's environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world() -> World:
    """The process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), or a single process.
    gloo on CPU, nccl when every rank has a GPU."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    size = int(os.environ.get("WORLD_SIZE", 1))
    if size <= 1:
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() > local_rank else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def mean_over_ranks(value: float, world: World) -> float:
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item()) / world.size


def barrier(world: World):
    if world.distributed:
        dist.barrier()
