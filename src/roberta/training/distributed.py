"""The single launch path: plain `python` is rank 0 of 1; under `torchrun` the environment says
rank and world size, and PyTorch's own DDP (or FSDP2) does the rest. gloo on CPU, NCCL on GPU."""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from roberta.config import TrainConfig, parse_duration
from roberta.errors import UserError

DEFAULT_TIMEOUT_S = parse_duration(TrainConfig().dist_timeout)  # a dead rank stops the others within this


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


def pick_device(pref: str, local_rank: int = 0, option: str = "") -> torch.device:
    """"auto" | "cpu" | "cuda" -> a device; asking for a GPU that is not there is a user error
    named after the option that asked (default `train.device=cuda`)."""
    option = option or f"train.device={pref}"
    if pref not in ("auto", "cpu", "cuda"):
        raise UserError(f"{option}: choose auto, cpu or cuda")
    if pref == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option}: no CUDA GPU is visible here; use cpu (or auto)")
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`, without making the host wait: a copy from pageable memory
    first waits for the device's queue, one from pinned memory does not. On a CPU, `t` itself."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def init_distributed(device_pref: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> Dist:
    """Rank and world size from torchrun's environment; without it, rank 0 of 1 and no process
    group. A collective that waits longer than timeout_s (a rank died or hangs) raises on every
    rank instead of hanging: gloo honours the timeout directly, NCCL through its watchdog."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if world > 1 and not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # a timed-out NCCL collective aborts
        tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank, world, local_rank, device)


def all_reduce_sum(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    if dist.active:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def max_over_ranks(value: float, dist: Dist) -> float:
    """The largest of every rank's `value`: one number all ranks agree on (a clock, say)."""
    if not dist.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=dist.device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return float(t)


def all_gather_object(obj, dist: Dist) -> list:
    if not dist.active:
        return [obj]
    out = [None] * dist.world
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, dist: Dist):
    if not dist.active:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def no_sync(model: torch.nn.Module, skip: bool):
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP2) on all but the last
    micro-batch of an accumulation; a plain model has nothing to skip."""
    if skip and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif skip and hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def is_fsdp(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "no_sync") and hasattr(model, "module") else model


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, dist: Dist) -> tuple[dict | None, dict]:
    """(full model weights or None = read them from the model, optimizer state keyed by parameter
    name), for a checkpoint that loads on any number of ranks. Under FSDP2 the shards are gathered
    to rank 0 (a collective every rank must enter); the other ranks get empty dicts."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    if is_fsdp(model):
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)
    return None, get_optimizer_state_dict(_unwrap(model), optimizer)


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, opt_state: dict, dist: Dist) -> None:
    """Load an optimizer state written by `full_state` (FSDP2: every rank keeps its shard). The
    implementation flags (fused, foreach) stay this run's: a GPU checkpoint resumes on a CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    for saved, current in zip(opt_state["param_groups"], optimizer.param_groups):
        for key in ("fused", "foreach", "capturable", "differentiable"):
            if key in current:
                saved[key] = current[key]
    fsdp = is_fsdp(model)
    set_optimizer_state_dict(model if fsdp else _unwrap(model), optimizer, opt_state,
                             options=StateDictOptions(full_state_dict=fsdp))


def is_collective_failure(e: BaseException) -> bool:
    """A collective that failed because another rank died (connection reset) or stopped answering
    (timeout), as gloo and NCCL report it -- as opposed to a bug or an out-of-memory error."""
    text = str(e)
    return isinstance(e, tdist.DistError) or any(s in text for s in (
        "gloo/transport", "Connection closed by peer", "Connection reset by peer", "Timed out waiting",
        "NCCL communicator was aborted", "Watchdog caught collective operation timeout"))


def barrier(dist: Dist) -> None:
    if dist.active:
        tdist.barrier()


def shutdown(dist: Dist) -> None:
    if dist.active and tdist.is_initialized():
        tdist.destroy_process_group()
