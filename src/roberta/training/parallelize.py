"""How the model is run, applied from outside it (as torchtitan's parallelize.py): the precision
policy (autocast; roberta.training.precision chooses it), float8, activation checkpointing and torch.compile
per block, and data parallelism (DDP, or FSDP2 per block).
The model code knows none of this; parameter names, hence checkpoints, are unchanged by it."""

from __future__ import annotations

import functools

import torch

from roberta.config import TrainConfig
from roberta.training.distributed import Dist
from roberta.training.perf import enable_float8
from roberta.training.precision import resolve_precision


def parallelize(model: torch.nn.Module, t: TrainConfig, dist: Dist) -> torch.nn.Module:
    """The model transforms in torchtitan's order: float8 (train.float8), activation
    checkpointing (train.activation_checkpointing), compile (train.compile), then data
    parallelism (train.fsdp: FSDP2, else DDP). Returns the module the loop calls (the model
    itself on one process); the transforms change no parameter name."""
    if t.float8:
        enable_float8(model, dist.device)
    if t.activation_checkpointing:
        checkpoint_blocks(model)
    if t.compile:
        compile_model(model)
    return wrap_model(model, dist, fsdp=t.fsdp)


def autocast(device: torch.device | str, precision: str = "auto"):
    """The precision policy as a context manager: bf16 autocast, or nothing (fp32)."""
    device = torch.device(device)
    chosen, _ = resolve_precision(precision, device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=chosen == "bf16")


def checkpoint_blocks(model: torch.nn.Module) -> None:
    """Activation checkpointing, per transformer block, in place: a block keeps only its input
    for backward and recomputes the rest (torch's non-reentrant checkpoint, which also replays
    the block's dropout masks). Applied from outside the model code, before compile and
    FSDP2 (torchtitan's order): the instance's `forward` is wrapped, so parameter names -- hence
    checkpoints -- do not change, and compile and fully_shard's hooks see the same module."""
    from torch.utils.checkpoint import checkpoint
    for layer in model.roberta.layers:
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)


def compile_model(model: torch.nn.Module, mode: str | None = None) -> None:
    """torch.compile each transformer block and the LM head's loss in place (parameter names,
    hence checkpoints, unchanged). The blocks share one compiled graph (compiling 1 layer costs
    what 24 do); the head's graph (dense, GELU, LayerNorm, vocabulary projection, fp32
    cross-entropy) takes any number of masked positions; the embeddings (three lookups, sum,
    LayerNorm, dropout) fuse into one kernel. The gather of the masked positions stays eager.
    `mode` is torch.compile's, for the embeddings and blocks (benchmarks/gpu_profile.py tries them)."""
    model.roberta.embeddings.compile(mode=mode)
    for layer in model.roberta.layers:
        layer.compile(mode=mode)
    model.lm_head.loss_sum = torch.compile(model.lm_head.loss_sum, dynamic=True)


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
    return DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
               gradient_as_bucket_view=True)
