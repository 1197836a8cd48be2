"""Where a GPU training step goes: step time and MFU for eager / compiled / compiled without
dropout, then a kernel-time breakdown (GEMM, attention, fused Triton elementwise, other) of the
compiled step and the top kernels. Ours only (train_bench.py compares against HF).

    python benchmarks/gpu_profile.py                     # base, seq 128, batch 256, bf16
    python benchmarks/gpu_profile.py --preset base --seq-len 512 --batch 64
    python benchmarks/gpu_profile.py --runs compiled --compile-mode max-autotune-no-cudagraphs   # or --coordinate-descent
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import statistics
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from roberta.model import training_flops
from roberta.training.perf import datasheet_peak, sync

import train_bench as tb


def kernel_group(name: str) -> str:
    n = name.lower()
    if "triton" in n:
        return "fused elementwise (Triton)"
    if any(s in n for s in ("flash", "fmha", "sdpa", "attention")):
        return "attention"
    if any(s in n for s in ("gemm", "nvjet", "cutlass", "sm90_xmma", "cublas")):
        return "GEMM"
    if "adam" in n:
        return "AdamW"
    return "other (eager elementwise, reductions, copies)"


def run(name: str, args, compile_: bool, dropout: float, device: torch.device, breakdown: bool) -> None:
    cfg = tb.make_config(args.preset, args.seq_len, args.batch, args.batch, compile_, dropout)
    data = tb.random_batches(3, args.batch, args.seq_len, tb.VOCAB[args.preset])  # host, as the loader gives them
    r = tb.Ours(cfg, device, tb.VOCAB[args.preset], args.compile_mode or None)
    for i in range(3):  # warm-up and compilation
        r.step(data[i % 3], data[(i + 1) % 3])
    sync(device)
    times, masked = [], []
    for i in range(args.steps):
        t0 = time.perf_counter()
        masked.append(r.step(data[i % 3], data[(i + 1) % 3]))
        sync(device)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    flops = training_flops(dataclasses.replace(cfg.model, sparse_head=True), args.batch * args.seq_len,
                           statistics.mean(masked), args.seq_len)
    peak = datasheet_peak(device) or 0.0
    mfu = f"  MFU {flops / t / peak:5.1%}" if peak else ""
    print(f"{name:<26} step {t * 1e3:7.1f} ms  {flops / t / 1e12:6.1f} TFLOP/s{mfu}", flush=True)
    if breakdown and device.type == "cuda":
        n = 3
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            for i in range(n):
                r.step(data[i % 3], data[(i + 1) % 3])
            sync(device)
        groups: collections.Counter = collections.Counter()
        kernels = [e for e in p.key_averages() if e.device_type == DeviceType.CUDA]  # kernels, not the ops above them
        for e in kernels:
            groups[kernel_group(e.key)] += e.self_device_time_total
        busy = sum(groups.values()) / n / 1e3
        print(f"  GPU busy {busy:.1f} ms of the {t * 1e3:.1f} ms step (idle {max(0.0, t * 1e3 - busy):.1f} ms): "
              + ", ".join(f"{g} {v / n / 1e3:.1f} ms" for g, v in groups.most_common()), flush=True)
        for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:12]:
            print(f"    {e.self_device_time_total / n / 1e3:6.2f} ms  {e.key[:100]}", flush=True)
    del r, data
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="base")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--compile-mode", default="", help="torch.compile mode for the blocks (e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--coordinate-descent", action="store_true", help="inductor's coordinate-descent tuning of Triton kernels")
    p.add_argument("--runs", default="eager,compiled,compiled-nodropout",
                   help="which of eager, compiled, compiled-nodropout (kernel breakdowns for the compiled ones)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.coordinate_descent:
        import torch._inductor.config as inductor_config
        inductor_config.coordinate_descent_tuning = True
    runs = {"eager": ("eager, dropout 0.1", False, 0.1, False), "compiled": ("compiled, dropout 0.1", True, 0.1, True),
            "compiled-nodropout": ("compiled, dropout 0", True, 0.0, True)}
    for key in args.runs.split(","):
        name, compile_, dropout, breakdown = runs[key]
        run(name, args, compile_, dropout, device, breakdown)


if __name__ == "__main__":
    main()
