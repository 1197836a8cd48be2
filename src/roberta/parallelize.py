"""How the model is run, applied from outside it (as torchtitan's parallelize.py): the precision
policy (autocast), torch.compile per block, and data parallelism (DDP, or FSDP2 per block).
The model code knows none of this; parameter names, hence checkpoints, are unchanged by it."""

from __future__ import annotations

import torch

from roberta.config import TrainConfig
from roberta.distributed import Dist


def parallelize(model: torch.nn.Module, t: TrainConfig, dist: Dist) -> torch.nn.Module:
    """Compile (train.compile), then wrap for data parallelism (train.fsdp); returns the module
    the loop calls (the model itself on one process)."""
    if t.compile:
        compile_model(model)
    return wrap_model(model, dist, fsdp=t.fsdp)


def autocast(device: torch.device):
    """The precision policy, one place: bf16 autocast on a GPU, plain fp32 on a CPU (no bf16 path there)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


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
