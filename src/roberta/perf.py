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


def matmul_peak(device: torch.device, n: int = 0, repeats: int = 5) -> float:
    """Best FLOP/s of `repeats` n x n matmuls after one warm-up (fp32 on CPU, bf16 on GPU).
    The operands come from a private generator: the probe runs inside training, and drawing
    from the global RNG would shift every later dropout mask (and break bit-exact resume)."""
    device = torch.device(device)
    n = n or (2048 if device.type == "cpu" else 8192)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
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


def peak_flops(device: torch.device, configured: float = 0.0) -> float:
    """train.peak_flops when given, else the datasheet value, else the probe."""
    return configured or datasheet_peak(device) or matmul_peak(device)


class PeakFlops:
    """The per-device peak a run's MFU divides by. `mfu(achieved)` never exceeds 1: when a window
    achieves more than the peak, a probed peak is measured again (the first probe read low, e.g.
    while another process loaded the machine) and, if still beaten, raised to the achieved rate.
    A configured or datasheet peak that is beaten is raised the same way (it was wrong)."""

    def __init__(self, device: torch.device, configured: float = 0.0):
        self.device = torch.device(device)
        self.probed = not (configured or datasheet_peak(self.device))
        self.value = peak_flops(self.device, configured)
        self.reprobes = 0

    def mfu(self, achieved: float) -> float:
        """achieved: model FLOP/s per device over a logging window."""
        if achieved > self.value and self.probed and self.reprobes < MAX_REPROBES:
            self.reprobes += 1
            self.value = max(self.value, matmul_peak(self.device))
        self.value = max(self.value, achieved)
        return achieved / self.value
