"""The peak the MFU is measured against: a datasheet table for known GPUs, else a matmul probe.

MFU = model FLOPs per second (roberta.model.training_flops) / peak. On a CPU there is no
datasheet worth trusting (clocks, AVX width and the other tenants all matter), so the peak is the
best of several warmed-up 2048 x 2048 fp32 matmuls measured on the spot; on a GPU it is the dense
bf16 tensor-core rate from the vendor's datasheet, or a bf16 probe for unknown cards.

A probe taken while other work loads the machine reads low, and the run may then beat it: the
trainer's `PeakFlops` re-probes when a logging window achieves more than the peak, and if the
window still beats the new probe it takes the achieved rate as the peak. MFU is therefore never
above 1: an achieved rate is a lower bound on the peak.
"""

from __future__ import annotations

import time

import torch

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, from the vendors' datasheets (SXM parts).
# (V100 has no bf16: its fp16 tensor-core rate.) roberta.study.plan reads the same table.
GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                 "A10": 125e12, "V100": 125e12, "4090": 165e12, "3090": 71e12}
MAX_REPROBES = 3  # then the achieved rate alone raises the peak (a re-probe costs a few seconds on a CPU)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def datasheet_peak(device: torch.device) -> float:
    """The table's bf16 peak for this GPU; 0.0 on CPUs and unknown cards."""
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in GPU_PEAK_BF16.items() if key in name), 0.0)


def matmul_peak(device: torch.device, n: int = 0, repeats: int = 5, bf16: bool = False) -> float:
    """Best FLOP/s of `repeats` n x n matmuls after one warm-up (fp32 on CPU unless bf16, bf16 on GPU).
    The operands come from a private generator: the probe runs inside training, and drawing
    from the global RNG would shift every later dropout mask (and break bit-exact resume)."""
    device = torch.device(device)
    n = n or (2048 if device.type == "cpu" else 8192)
    dtype = torch.bfloat16 if bf16 or device.type != "cpu" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    best = float("inf")
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if i:  # the first one warms caches, thread pools and cuBLAS heuristics
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device: torch.device, configured: float = 0.0, bf16: bool = False) -> float:
    """train.peak_flops when given, else the datasheet value, else the probe (in the run's precision)."""
    return configured or datasheet_peak(device) or matmul_peak(device, bf16=bf16)


class PeakFlops:
    """The per-device peak a run's MFU divides by. `mfu(achieved)` never exceeds 1: when a window
    achieves more than the peak, a probed peak is measured again (the first probe read low, e.g.
    while another process loaded the machine) and, if still beaten, raised to the achieved rate.
    A configured or datasheet peak that is beaten is raised the same way (it was wrong)."""

    def __init__(self, device: torch.device, configured: float = 0.0, bf16: bool = False):
        self.device, self.bf16 = torch.device(device), bf16
        self.probed = not (configured or datasheet_peak(self.device))
        self.value = peak_flops(self.device, configured, bf16)
        self.reprobes = 0

    def mfu(self, achieved: float) -> float:
        """achieved: model FLOP/s per device over a logging window."""
        if achieved > self.value and self.probed and self.reprobes < MAX_REPROBES:
            self.reprobes += 1
            self.value = max(self.value, matmul_peak(self.device, bf16=self.bf16))
        self.value = max(self.value, achieved)
        return achieved / self.value


FLOAT8_MIN_CAPABILITY = (8, 9)  # Ada / Hopper: the first GPUs with float8 tensor cores


def enable_float8(model: torch.nn.Module, device: torch.device) -> None:
    """train.float8=true: the transformer blocks' linear layers as torchao float8 training
    layers (dynamic tensorwise scaling; weights, gradients and optimizer state stay fp32/bf16).
    Embeddings and the LM head stay bf16: the head is sparse and small, the embeddings a lookup.
    Parameter names do not change. MFU is still counted against the bf16 peak."""
    from roberta.errors import UserError
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < FLOAT8_MIN_CAPABILITY:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "a CPU"
        raise UserError(f"train.float8=true: needs a GPU with float8 tensor cores (Hopper/Ada, compute capability "
                        f">= 8.9); this run is on {where}; drop train.float8")
    try:
        from torchao.float8 import convert_to_float8_training
    except ImportError:
        raise UserError("train.float8=true: needs torchao (pip install torchao); or drop train.float8") from None
    convert_to_float8_training(
        model, module_filter_fn=lambda m, fqn: fqn.startswith("roberta.layers.") and isinstance(m, torch.nn.Linear)
        and m.in_features % 16 == 0 and m.out_features % 16 == 0)
