"""Where a run's numbers go: `metrics.jsonl` (always), the integrations train.report_to names
(TensorBoard, Weights & Biases: the same records, keyed by step), a tqdm progress bar, and at
the end `loss.png` -- on rank 0 only; the other ranks get a RunLog that does nothing, so the loop
never asks which rank it is on."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from roberta.config import report_targets
from roberta.errors import UserError

# train.report_to name -> (the module it needs, the extra that installs it)
_NEEDS = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def _require(name: str):
    module, extra = _NEEDS[name]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"train.report_to={name} needs the {extra} package: "
                        f"pip install 'roberta[{extra}]'") from None


class TensorBoardSink:
    def __init__(self, out: Path, initial_step: int):
        writer = _require("tensorboard").SummaryWriter
        # on resume, purge_step hides what the interrupted run logged after its checkpoint
        self.writer = writer(log_dir=str(out / "tensorboard"), purge_step=initial_step + 1 if initial_step else None)

    def write(self, step: int, scalars: dict) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One W&B run per process: project $WANDB_PROJECT (else "roberta"), named after the run
    directory, with the full config; its files go under $WANDB_DIR, else the run directory.
    WANDB_MODE=offline keeps everything local (`wandb sync` uploads it later)."""

    def __init__(self, out: Path, config: dict | None):
        wandb = _require("wandb")
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "roberta", name=out.name,
                                  config=config, dir=None if os.environ.get("WANDB_DIR") else str(out))
        except wandb.errors.Error as e:
            raise UserError(f"train.report_to=wandb: W&B did not start ({str(e).splitlines()[0]}); run "
                            "`wandb login`, or set WANDB_MODE=offline to log locally") from None

    def write(self, step: int, scalars: dict) -> None:
        self.run.log(scalars, step=step)  # a train and an eval record of one step become one row

    def close(self) -> None:
        self.run.finish()


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
                 initial: float = 0, step: int = 0, report_to: str = "none", config: dict | None = None):
        """total/unit: the budget the bar counts (steps, or % of a token or time budget); step: the
        step the run starts after (a resume)."""
        targets = report_targets(report_to)
        for name in targets:  # every rank: a missing package stops all of them, not rank 0 alone
            _require(name)
        self.enabled = enabled
        self.out = out
        self.path = out / "metrics.jsonl"
        self.sinks = []
        if enabled:
            self.sinks += [TensorBoardSink(out, step)] if "tensorboard" in targets else []
            self.sinks += [WandbSink(out, config)] if "wandb" in targets else []
        # a share of a budget has no meaningful count or rate: the bar shows the percentage alone
        fmt = "{desc}: {percentage:3.0f}%|{bar}| of the budget [{elapsed}<{remaining}{postfix}]" if unit == "%" else None
        self.bar = tqdm(total=total, initial=initial, unit=unit, desc="pretrain", disable=not (enabled and progress),
                        bar_format=fmt, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)

    def write(self, record: dict) -> None:
        """Append one record (train or eval) to metrics.jsonl and to each integration, keyed by step."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for sink in self.sinks:
            sink.write(record["step"], scalars)

    def print(self, line: str) -> None:
        """A line on the console (rank 0, unless quiet) that does not break the progress bar."""
        if self.enabled and not self.bar.disable:
            tqdm.write(line, file=sys.stdout)

    def progress(self, position: float | None = None, **postfix) -> None:
        """Advance the bar by one, or to `position` (in the bar's unit)."""
        self.bar.update(1 if position is None else position - self.bar.n)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        """End of the run: close the integrations and draw loss.png from metrics.jsonl."""
        self.bar.close()
        for sink in self.sinks:
            sink.close()
        if self.enabled and self.path.is_file():
            write_loss_plot(self.out)


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (not a `roberta pretrain` run directory)")
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not a JSON record ({e.msg}); was the file cut short?") from None
    return records


def loss_curves(records: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(tokens, train loss) and (tokens, held-out loss) points, in step order."""
    train = [(r["tokens"], r["loss"]) for r in records if r.get("loss") is not None and "tokens" in r]
    held_out = [(r["tokens"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None and "tokens" in r]
    return train, held_out


def write_loss_plot(run_dir: Path) -> Path:
    """run_dir/loss.png: train and held-out MLM loss against tokens seen. Uses matplotlib's Agg
    canvas directly, so no display is needed and pyplot's global state is left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train, held_out = loss_curves(read_metrics(run_dir))
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), color="C0", alpha=0.8, label="train (one batch)")
    if held_out:
        ax.plot(*zip(*held_out), color="C1", marker="o", markersize=4, label="held-out")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("MLM loss (nats)")
    ax.set_title(f"{run_dir.resolve().name}: loss vs tokens")
    ax.grid(alpha=0.3)
    if train or held_out:
        ax.legend()
    fig.tight_layout()
    path = run_dir / "loss.png"
    fig.savefig(path, dpi=120)
    return path
