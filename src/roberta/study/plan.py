"""`roberta plan`: the paper's arithmetic before spending compute.

Effective tokens are B * L * S (batch x sequence length x steps); training FLOPs use the same
accounting as the trainer (roberta.model.training_flops), so a plan and a measured run agree.
Memory is an estimate: fp32 master weights + grads + AdamW moments (16 bytes/parameter, sharded
over devices with FSDP) plus activations for one micro-batch under bf16 autocast with a fused
attention kernel (~34 * s * h bytes per layer per sequence; Korthikanti et al. 2022, without the
s^2 term that flash attention removes). With activation checkpointing (per block) a layer keeps
only its bf16 input (2 * s * h bytes) and one block at a time holds its full activations during
the recompute; the recompute costs one more forward of the blocks, ~1/3 more time.

Wall time is FLOPs / (devices x peak x MFU). Without a GPU's peak (--gpu, --peak-tflops) the
device is this machine's CPU, its peak measured on the spot as the trainer measures it on a CPU
(training/perf.py's matmul probe with torch's threads, in the precision `train.precision=auto`
picks here: bf16 where the CPU has native bf16, else fp32; a fraction of a second), under the same
assumed MFU (a CPU run of `tiny`/`small` reached 50-58% of such a probe: docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from roberta.config import MaskingConfig, ModelConfig
from roberta.errors import UserError
from roberta.model import MLM, count_parameters, padded_vocab_size, positions_for, training_flops
from roberta.config import scaled_lr
from roberta.training.optim import PAPER_LR_TABLE, paper_lr
from roberta.training.perf import GPU_PEAK_BF16, matmul_peak
from roberta.training.precision import cpu_native_bf16
from roberta.presets import get_preset

GPU_PEAK = {name.lower(): peak for name, peak in GPU_PEAK_BF16.items()}  # the trainer's MFU table
GPU_MEMORY = {"h100": 80e9, "h200": 141e9, "a100": 80e9, "l40s": 48e9, "l4": 24e9, "a10": 24e9, "v100": 32e9,
              "4090": 24e9, "3090": 24e9}
BERT_BATCH, BERT_LR = min(PAPER_LR_TABLE.items())  # BERT's (256, 1e-4): the reference point of the lr scaling rules
MASK_PROB = MaskingConfig().mask_prob  # the trainer's default: the FLOPs of the sparse head scale with it
CPU_PROBE_SIZE = 1024  # the quick probe's matrices: ~0.1 s, within the noise of the trainer's 2048


@dataclass
class Plan:
    batch_size: int
    seq_len: int
    steps: int
    tokens: float
    flops: float
    parameters: int
    lr_sqrt: float
    lr_linear: float
    lr_paper: float
    lr_preset: float  # what `roberta pretrain --preset P` uses at this batch (its lr, scaled by its rule)
    micro_batch: int
    accumulation: int
    memory_states_gb: float
    memory_activations_gb: float
    hours: float | None  # None: no peak to divide by (JSON null, never NaN)


def model_config(preset: str, vocab_size: int, seq_len: int) -> ModelConfig:
    """The model `roberta pretrain` builds for a tokenizer of vocab_size tokens (padded as it pads)."""
    cfg = get_preset(preset).model
    return dataclasses.replace(cfg, vocab_size=padded_vocab_size(vocab_size, cfg.vocab_multiple), max_positions=positions_for(seq_len, cfg.pad_token_id))


def cpu_peak() -> tuple[float, str]:
    """This machine's CPU peak in FLOP/s, probed as the trainer probes it on a CPU, and the precision."""
    import torch

    bf16 = cpu_native_bf16()[0]
    return matmul_peak(torch.device("cpu"), n=CPU_PROBE_SIZE, bf16=bf16), "bf16" if bf16 else "fp32"


def parameters(cfg: ModelConfig) -> int:
    import torch

    with torch.device("meta"):
        return count_parameters(MLM[cfg.family](cfg))  # the family's masked LM, on the meta device


def activation_bytes_per_sequence(cfg: ModelConfig, seq_len: int, checkpointing: bool = False) -> float:
    if checkpointing:  # every block's input, plus one block recomputed at a time
        return 2.0 * seq_len * cfg.hidden * cfg.layers + 34.0 * seq_len * cfg.hidden
    return 34.0 * seq_len * cfg.hidden * cfg.layers


RECOMPUTE_TIME = 4.0 / 3.0  # forward + backward = 3 forwards; checkpointing adds a fourth (blocks only)


def make_plan(preset: str, batch_size: int, seq_len: int, steps: int, vocab_size: int = 50265,
              gpus: int = 1, peak_flops: float = 0.0, mfu: float = 0.45, memory: float = 80e9,
              fsdp: bool = False, activation_checkpointing: bool = False) -> Plan:
    if batch_size < 1 or steps < 1 or seq_len < 8:
        raise UserError("plan: --batch-size, --max-steps must be >= 1 and --seq-len >= 8")
    if not 0 < mfu <= 1:
        raise UserError(f"plan: --mfu {mfu} must be in (0, 1]")
    cfg = model_config(preset, vocab_size, seq_len)
    n = parameters(cfg)
    tokens = float(batch_size) * seq_len * steps
    flops = training_flops(cfg, tokens, tokens * MASK_PROB, seq_len)
    states = 16.0 * n / (gpus if fsdp else 1)
    per_seq = activation_bytes_per_sequence(cfg, seq_len, activation_checkpointing)
    free = memory * 0.9 - states
    if free <= per_seq:
        raise UserError(f"plan: {preset} does not fit in {memory / 1e9:.0f} GB per device "
                        f"({states / 1e9:.1f} GB of weights and optimizer state); use more devices with FSDP")
    per_device = math.ceil(batch_size / gpus)
    micro = max(1, min(per_device, 2 ** int(math.log2(free / per_seq))))
    accumulation = math.ceil(per_device / micro)
    hours = None
    if peak_flops:
        hours = flops / (gpus * peak_flops * mfu) / 3600 * (RECOMPUTE_TIME if activation_checkpointing else 1.0)
    t = get_preset(preset).train
    return Plan(batch_size, seq_len, steps, tokens, flops, n,
                lr_sqrt=scaled_lr(BERT_LR, batch_size, BERT_BATCH, "sqrt"),
                lr_linear=scaled_lr(BERT_LR, batch_size, BERT_BATCH, "linear"), lr_paper=paper_lr(batch_size),
                lr_preset=scaled_lr(t.lr, batch_size, t.base_batch_size, t.lr_scaling), micro_batch=micro,
                accumulation=accumulation, memory_states_gb=states / 1e9,
                memory_activations_gb=micro * per_seq / 1e9, hours=hours)


def _fmt(x: float) -> str:
    for unit, scale in (("Z", 1e21), ("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _hours(h: float | None) -> str:
    if h is None:
        return "n/a (give --gpu or --peak-tflops)"
    return f"{h:,.1f}" if h >= 10 else f"{h:.2g}"


def render(plans: list[Plan], names: list[str], preset: str = "the preset") -> str:
    rows = [
        ("effective tokens (B*L*S)", lambda p: _fmt(p.tokens)),
        ("batch x seq x steps", lambda p: f"{p.batch_size} x {p.seq_len} x {p.steps:,}"),
        ("training FLOPs", lambda p: _fmt(p.flops)),
        ("parameters", lambda p: f"{p.parameters:,}"),
        ("lr: sqrt rule (256 -> 1e-4)", lambda p: f"{p.lr_sqrt:.2e}"),
        ("lr: linear rule", lambda p: f"{p.lr_linear:.2e}"),
        ("lr: paper's table", lambda p: f"{p.lr_paper:.2e}"),
        (f"lr: {preset}'s own (pretrain's)", lambda p: f"{p.lr_preset:.2e}"),
        ("micro-batch x accumulation", lambda p: f"{p.micro_batch} x {p.accumulation}"),
        ("weights+optimizer GB/device", lambda p: f"{p.memory_states_gb:.1f}"),
        ("activations GB/device", lambda p: f"{p.memory_activations_gb:.1f}"),
        ("wall time (hours)", lambda p: _hours(p.hours)),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [" " * width + "  " + "  ".join(f"{n:>22}" for n in names)]
    for label, fn in rows:
        lines.append(f"{label:<{width}}  " + "  ".join(f"{fn(p):>22}" for p in plans))
    if len(plans) == 2:
        a, b = plans
        lines.append(f"{'ratio (first / second)':<{width}}  tokens {a.tokens / b.tokens:.2f}x, FLOPs {a.flops / b.flops:.2f}x")
    return "\n".join(lines)
