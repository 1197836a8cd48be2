"""The single launch path: plain `python` is rank 0 of 1; under `torchrun` the environment says
rank and world size, and PyTorch's own DDP (or FSDP2) does the rest. gloo on CPU, NCCL on GPU."""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("ROBERTA_COLLECTIVE_TIMEOUT_MIN", "10")))


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_distributed(device_pref: str = "auto") -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if world > 1 and not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return Dist(rank, world, local_rank, device)


def all_reduce_sum(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    if dist.active:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def broadcast_object(obj, dist: Dist):
    if not dist.active:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_model(model: torch.nn.Module, dist: Dist, fsdp: bool = False) -> torch.nn.Module:
    if not dist.active:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard
        for layer in model.roberta.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)


def no_sync(model: torch.nn.Module, skip: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation."""
    if skip and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def barrier(dist: Dist) -> None:
    if dist.active:
        tdist.barrier()


def shutdown(dist: Dist) -> None:
    if dist.active and tdist.is_initialized():
        tdist.destroy_process_group()
