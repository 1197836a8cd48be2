"""The peak the MFU is measured against: a datasheet table for known GPUs, else a matmul probe.

MFU = model FLOPs per second (roberta.model.training_flops) / peak. On a CPU there is no
datasheet worth trusting (clocks, AVX width and the other tenants all matter), so the peak is the
best of several warmed-up 2048 x 2048 fp32 matmuls measured on the spot; on a GPU it is the dense
bf16 tensor-core rate from the vendor's datasheet, or a bf16 probe for unknown cards.
"""

from __future__ import annotations

import time

import torch

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, from the vendors' datasheets (SXM parts).
# (V100 has no bf16: its fp16 tensor-core rate.) roberta.plan reads the same table.
GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                 "A10": 125e12, "V100": 125e12, "4090": 165e12, "3090": 71e12}


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
    """Best FLOP/s of `repeats` n x n matmuls after one warm-up (fp32 on CPU, bf16 on GPU)."""
    n = n or (2048 if device.type == "cpu" else 8192)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
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
