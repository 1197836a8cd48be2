"""Where a run's numbers go: `metrics.jsonl` (always), TensorBoard event files (when the optional
`tensorboard` package is installed) and a tqdm progress bar -- on rank 0 only; the other ranks get
a RunLog that does nothing, so the loop never asks which rank it is on."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from tqdm import tqdm


def _summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; metrics.jsonl has everything
        return None
    return SummaryWriter(log_dir=str(log_dir))


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume: drop the records of steps after the checkpoint, which will be run again."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


def last_record(path: Path, key: str) -> dict:
    """The last record in metrics.jsonl that has `key` ({} when none)."""
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return next((r for r in reversed(records) if key in r), {})


class RunLog:
    def __init__(self, out: Path, enabled: bool, progress: bool, total: int | None, unit: str = "step",
                 initial: float = 0):
        """total/unit: the budget the bar counts (steps, or % of a token or time budget)."""
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.tb = _summary_writer(out / "tensorboard") if enabled else None
        # a share of a budget has no meaningful count or rate: the bar shows the percentage alone
        fmt = "{desc}: {percentage:3.0f}%|{bar}| of the budget [{elapsed}<{remaining}{postfix}]" if unit == "%" else None
        self.bar = tqdm(total=total, initial=initial, unit=unit, desc="pretrain", disable=not (enabled and progress),
                        bar_format=fmt, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)

    def write(self, record: dict) -> None:
        """Append one record (train or eval) to metrics.jsonl and to TensorBoard, keyed by step."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, record["step"])

    def progress(self, position: float | None = None, **postfix) -> None:
        """Advance the bar by one, or to `position` (in the bar's unit)."""
        self.bar.update(1 if position is None else position - self.bar.n)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
