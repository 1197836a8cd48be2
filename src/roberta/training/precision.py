"""The compute precision: `train.precision` / `--precision` = auto | fp32 | bf16.

bf16 means torch.autocast: the matmuls (and attention) run in bf16, while the master weights,
the optimizer state, LayerNorm (model.LayerNorm computes in fp32), the softmax inside the loss and
the loss itself stay fp32. auto picks bf16 on a GPU and on a CPU with native bf16 GEMMs, fp32
elsewhere.

Detection on a CPU reads the CPU's feature flags (x86 `avx512_bf16` / `amx_bf16`, Arm `bf16`),
which is what oneDNN dispatches its bf16 kernels on. A timed bf16-vs-fp32 matmul was considered
and rejected: on a shared machine it can flip from run to run, and a precision that depends on
the neighbours' load would make two runs of one command differ. Without those flags the same
bf16 matmul is emulated -- measured 0.3 GFLOP/s against ~130 fp32 on an AVX2 EPYC -- so an
explicit bf16 there is honoured but the log says it will be slow.
"""

from __future__ import annotations

import functools
import platform
import typing

import torch

from roberta.config import Precision

PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16 / AMX; Arm FEAT_BF16


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 `flags`, Arm `Features`); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_native_bf16() -> tuple[bool, str]:
    """(whether this CPU has bf16 GEMMs in hardware, the evidence in words)."""
    if not torch.backends.mkldnn.is_available():
        return False, "this torch has no oneDNN (its CPU bf16 matmuls)"
    found = [f for f in NATIVE_BF16_FLAGS if f in cpu_flags()]
    if found:
        return True, f"the CPU has {'/'.join(found)}"
    return False, f"no native bf16 on this CPU ({platform.machine()}: no {'/'.join(NATIVE_BF16_FLAGS[:2])} flag)"


def resolve_precision(pref: str, device: torch.device | str) -> tuple[str, str]:
    """"auto" | "fp32" | "bf16" on `device` -> ("fp32" | "bf16", why), for the run log."""
    device = torch.device(device)
    if pref not in PRECISIONS:
        raise ValueError(f"precision {pref!r}: choose one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        return ("bf16", "auto: bf16 on a GPU") if pref == "auto" else (pref, "as asked")
    native, evidence = cpu_native_bf16()
    if pref == "auto":
        return ("bf16" if native else "fp32"), f"auto: {evidence}"
    if pref == "bf16" and not native:
        return "bf16", f"as asked, but {evidence}: bf16 is emulated and much slower than fp32 here"
    return pref, "as asked"
