"""Scale-out on torchrun: one process per device, rendezvous (single or multi node) by torchrun's
environment variables; DistributedDataParallel for the gradients, or FSDP (torch's fully_shard)
where weights, gradients, optimiser and EMA state are split over the ranks."""

from __future__ import annotations

import datetime
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


# how long a rank waits at a step's collectives (the gradients' all-reduce, the loss's mean): a rank
# that has not come by then has stalled, and the run stops instead of hanging for the long wait below
STEP_TIMEOUT = datetime.timedelta(minutes=30)
# how long the others wait at a barrier while rank 0 works alone: it encodes a data folder's latent
# cache, renders the validation video, writes checkpoints and the outputs
MAIN_WORK_TIMEOUT = datetime.timedelta(hours=2)
_main_work = None   # the process group of those waits (gloo: no device memory, any backend's ranks)


def init_world(gpus: bool = True) -> World:
    """The process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK), or a single process.
    gloo on CPU (also for a run told to stay on the CPU, `gpus` False), nccl when every rank has a GPU."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    size = int(os.environ.get("WORLD_SIZE", 1))
    if size <= 1:
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if gpus and torch.cuda.is_available() and torch.cuda.device_count() > local_rank else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=STEP_TIMEOUT)
    global _main_work
    _main_work = dist.new_group(backend="gloo", timeout=MAIN_WORK_TIMEOUT)
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def mean_over_ranks(value: float, world: World) -> float:
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item()) / world.size


def ranks_where(flag: bool, world: World) -> list[int]:
    """The ranks whose `flag` is set, known on every rank (one all-reduce of a flag per rank)."""
    if not world.distributed:
        return [0] if flag else []
    t = torch.zeros(world.size, dtype=torch.float64)
    t[world.rank] = float(flag)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return [rank for rank, value in enumerate(t.tolist()) if value]


def barrier(world: World):
    """Every rank waits for rank 0's work alone (up to MAIN_WORK_TIMEOUT)."""
    if world.distributed:
        dist.barrier(group=_main_work)


def gather_to_main(value, world: World) -> list | None:
    """Every rank's `value` (a picklable object), in rank order, on rank 0; None on the others."""
    if not world.distributed:
        return [value]
    gathered = [None] * world.size if world.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def all_gathered(value, world: World) -> list:
    """Every rank's `value` (a picklable object), in rank order, on every rank."""
    if not world.distributed:
        return [value]
    gathered = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def ranks_that_differ(facts: dict, world: World) -> tuple[str, list] | None:
    """The first of `facts` (what each rank read on its own: its copy of the run configuration, its
    data, its listing of the output folder) that is not the same on every rank, with every rank's
    value; None where all agree. Every rank gets the same answer, so every rank stops together:
    DDP would average the gradients of different runs without a word."""
    seen = all_gathered(facts, world)
    for key in dict.fromkeys(k for s in seen for k in s):   # every rank's keys, in one order on every rank
        values = [s.get(key) for s in seen]
        if any(v != values[0] for v in values):
            return key, values
    return None


def scatter_from_main(values: list | None, world: World):
    """Rank r's entry of `values` (given on rank 0) on every rank r."""
    if not world.distributed:
        return values[0]
    out = [None]
    dist.scatter_object_list(out, values if world.is_main else None, src=0)
    return out[0]


# --- FSDP (train.sharding "fsdp") -------------------------------------------------------------------


def shard_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`module` with every parameter split over the ranks (FSDP2's fully_shard, one unit): each rank
    keeps 1/N of the weights, their gradients and so of the optimiser and EMA state; the whole
    weights are gathered for the forward and backward of a step, the gradients reduce-scattered after it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    return fully_shard(module, mesh=mesh)


def is_sharded(tensor) -> bool:
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor
    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP shard (every rank must call this, in the same order); any other tensor as it is."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` (the whole tensor, held by every rank) split as `like` is: this rank's shard when `like`
    is an FSDP shard (no communication), else `full` itself."""
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full.detach().to(like.device), like.device_mesh, like.placements, src_data_rank=None)
