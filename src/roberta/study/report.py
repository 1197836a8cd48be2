"""One pretraining run at a glance, from its metrics.jsonl: `loss.png` (written at the end of every
run) and the summary `roberta report RUN` prints. A run still in progress, or one that was
interrupted, is read as far as it got. (Comparisons of several runs: ablate.make_report.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

from roberta.errors import UserError


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


def run_summary(run_dir: Path) -> dict:
    """The run's last numbers: steps, tokens, final train / held-out loss and perplexity, throughput."""
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("loss") is not None]
    evals = [r for r in records if r.get("eval_loss") is not None]
    if not train and not evals:
        raise UserError(f"{run_dir / 'metrics.jsonl'}: holds no records yet (the run has not logged a step)")
    last = train[-1] if train else {}
    s = {"run": str(run_dir), "finished": (run_dir / "summary.json").is_file(),
         "step": max(r["step"] for r in records), "tokens": max(r.get("tokens", 0) for r in records),
         "train_loss": last.get("loss"), "elapsed": last.get("elapsed"),
         "eval_step": evals[-1]["step"] if evals else None,
         "eval_loss": evals[-1]["eval_loss"] if evals else None}
    s["train_perplexity"] = math.exp(s["train_loss"]) if s["train_loss"] is not None else None
    s["eval_perplexity"] = evals[-1].get("eval_perplexity") if evals else None
    # over the whole run, evaluations and checkpoints included, as a user waits for it
    s["tokens_per_s"] = last["tokens"] / last["elapsed"] if last.get("elapsed") else None
    return s


def format_summary(s: dict) -> str:
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    state = "finished" if s["finished"] else "not finished (no summary.json): as far as it got"
    eval_at = f" (step {s['eval_step']:,})" if s["eval_step"] is not None and s["eval_step"] != s["step"] else ""
    return "\n".join([
        f"run: {s['run']} ({state})",
        f"steps: {s['step']:,}; tokens: {s['tokens']:,}",
        f"train loss: {num(s['train_loss'], '.4f')} (perplexity {num(s['train_perplexity'], '.2f')}, last batch)",
        f"held-out loss: {num(s['eval_loss'], '.4f')} (perplexity {num(s['eval_perplexity'], '.2f')}){eval_at}",
        f"tokens/s: {num(s['tokens_per_s'], ',.0f')} over {num(s['elapsed'], ',.1f')} s "
        "(evaluation and checkpoints included)",
    ])
