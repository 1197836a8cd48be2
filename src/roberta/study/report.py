"""`roberta report`: one pretraining run at a glance (the summary `roberta report RUN` prints, from
its metrics.jsonl; a run still in progress, or one that was interrupted, is read as far as it
got), and the comparison of several runs (an ablation's report.md, table and plot)."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from roberta.errors import UserError
from roberta.training.runlog import read_metrics


def run_summary(run_dir: Path) -> dict:
    """The run's last numbers: steps, tokens, final train / held-out loss and perplexity, the ratio
    of that perplexity to the unigram model's (once the run has finished), throughput."""
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
    # the unigram baseline is scored when the run finishes, on the evaluation tokens of every eval
    s["unigram_perplexity"] = finished_summary(run_dir).get("unigram_perplexity") if s["finished"] else None
    unigram, ppl = s["unigram_perplexity"], s["eval_perplexity"]
    s["ratio_to_unigram"] = ppl / unigram if isinstance(unigram, (int, float)) and unigram > 0 and ppl else None
    # over the whole run, evaluations and checkpoints included, as a user waits for it
    s["tokens_per_s"] = last["tokens"] / last["elapsed"] if last.get("elapsed") else None
    return s


def finished_summary(run_dir: Path) -> dict:
    """The summary.json a finished run wrote."""
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); a finished run writes it whole, so it was damaged "
                        "afterwards: remove it and `roberta report` reads the run from metrics.jsonl") from None
    if not isinstance(summary, dict):
        raise UserError(f"{path}: not a run's summary (a JSON object); remove it and `roberta report` reads the "
                        "run from metrics.jsonl")
    return summary


def _unigram_line(s: dict) -> str:
    if s["ratio_to_unigram"] is None:
        why = "written when the run finishes" if not s["finished"] else "not recorded by the version that ran it"
        return f"unigram model: - ({why}; `roberta evaluate` scores it)"
    return (f"unigram model: perplexity {s['unigram_perplexity']:.2f}; held-out / unigram perplexity "
            f"{s['ratio_to_unigram']:.2f} (below 1 when the model uses context; `roberta evaluate` gives its "
            "95% interval)")


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
        _unigram_line(s),
        f"tokens/s: {num(s['tokens_per_s'], ',.0f')} over {num(s['elapsed'], ',.1f')} s "
        "(evaluation and checkpoints included)",
    ])


# ---------------------------------------------------------------- several runs (an ablation)

TIE = 5e-5  # a loss difference that prints as 0.0000 names no winner


@dataclass
class RunResult:
    arm: str
    seed: str
    tokens: int
    flops: float
    elapsed: float
    eval_loss: float
    eval_perplexity: float
    curve: list[tuple[int, float]]
    tasks: dict[str, float]
    task_metric: dict[str, str]
    curve_s: list[tuple[float, float]] = field(default_factory=list)  # (seconds in the loop, held-out loss)


def read_run(run_dir: Path) -> RunResult:
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"{run_dir}: no summary.json (not a finished `roberta pretrain` run)")
    s = json.loads(summary_path.read_text())
    curve, clock, evals = [], [], []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            if "eval_loss" in rec:
                curve.append((rec["tokens"], rec["eval_loss"]))
                evals.append((rec["step"], rec["eval_loss"]))
            elif rec.get("elapsed") is not None:
                clock.append((rec["step"], rec["elapsed"]))
    tasks, task_metric = {}, {}
    for m in sorted((run_dir / "glue").glob("*/metrics.json")):
        r = json.loads(m.read_text())
        tasks[r.get("task", m.parent.name)] = float(r["value"])
        task_metric[r.get("task", m.parent.name)] = r.get("metric", "")
    seeded = run_dir.name.startswith("seed")
    return RunResult(arm=run_dir.parent.name if seeded else run_dir.name, seed=run_dir.name if seeded else "seed0",
                     tokens=int(s["tokens"]), flops=float(s["flops"]), elapsed=float(s["elapsed"]),
                     eval_loss=float(s["eval_loss"]), eval_perplexity=float(s["eval_perplexity"]),
                     curve=curve, tasks=tasks, task_metric=task_metric, curve_s=seconds_curve(evals, clock))


def seconds_curve(evals: list[tuple[int, float]], clock: list[tuple[int, float]]) -> list[tuple[float, float]]:
    """(seconds, held-out loss) per evaluation: an evaluation record has a step, the training
    records the loop's clock (train "elapsed", every log_interval steps and at the last step);
    the clock at the evaluation's step is interpolated between the logged steps around it."""
    if not clock:
        return []
    out = []
    for step, loss in evals:
        before = [c for c in clock if c[0] <= step]
        after = [c for c in clock if c[0] >= step]
        if not before or not after:
            continue  # outside the logged clock (a record lost to an interruption): no time to give it
        (s0, t0), (s1, t1) = before[-1], after[0]
        out.append((t0 if s1 == s0 else t0 + (t1 - t0) * (step - s0) / (s1 - s0), loss))
    return out


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _spread(xs: list[float]) -> float:
    return max(xs) - min(xs) if len(xs) > 1 else float("nan")


def verdict(best: list[float], other: list[float]) -> str:
    """A difference counts only if it exceeds the seed spread of both arms (needs >= 2 seeds)."""
    if len(best) < 2 or len(other) < 2:
        return "not established (one seed: no spread to compare against)"
    gap = abs(_median(best) - _median(other))
    return "real (exceeds the seed spread)" if gap > max(_spread(best), _spread(other)) else "within the seed spread"


def make_report(run_dirs: list[Path], out: Path, title: str = "recipe comparison") -> dict:
    results = [read_run(Path(r)) for r in run_dirs]
    arms: dict[str, list[RunResult]] = {}
    for r in results:
        arms.setdefault(r.arm, []).append(r)
    tasks = sorted({t for r in results for t in r.tasks})
    out.mkdir(parents=True, exist_ok=True)

    header = ["arm", "seeds", "tokens", "FLOPs", "wall (s)", "held-out loss", "perplexity"] + tasks
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = {}
    for name, runs in arms.items():
        ppl = [r.eval_perplexity for r in runs]
        row = {"seeds": len(runs), "tokens": [r.tokens for r in runs], "flops": _median([r.flops for r in runs]),
               "elapsed": _median([r.elapsed for r in runs]), "eval_loss": _median([r.eval_loss for r in runs]),
               "eval_loss_all": [r.eval_loss for r in runs], "perplexity": _median(ppl),
               "tasks": {t: [r.tasks[t] for r in runs if t in r.tasks] for t in tasks}}
        table[name] = row
        spread = f" ± {_spread(ppl) / 2:.1f}" if len(runs) > 1 else ""
        cells = [name, str(len(runs)), f"{_median([r.tokens for r in runs]):,.0f}", f"{row['flops']:.3g}",
                 f"{row['elapsed']:.0f}", f"{row['eval_loss']:.4f}", f"{row['perplexity']:.2f}{spread}"]
        cells += [f"{_median(v) * 100:.1f}" if v else "–" for v in row["tasks"].values()]
        lines.append("| " + " | ".join(cells) + " |")

    lowest = min(table, key=lambda a: table[a]["eval_loss"])
    verdicts = {name: verdict(table[lowest]["eval_loss_all"], table[name]["eval_loss_all"])
                for name in table if name != lowest}
    tied = [name for name, v in verdicts.items()
            if table[name]["eval_loss"] - table[lowest]["eval_loss"] < TIE or v.startswith("within")]
    best = None if tied else lowest
    same = ("Same held-out masked tokens for every arm "
            "(FULL-SENTENCES packing of the validation split, fixed masks).")
    if tied:
        lines += ["", f"No winner: {', '.join([lowest, *tied])} are tied on held-out loss (a difference under "
                  f"{TIE:g} or within the seed spread). {same}"]
    else:
        lines += ["", f"Lowest held-out loss: **{lowest}**. {same}"]
    for name, v in verdicts.items():
        delta = table[name]["eval_loss"] - table[lowest]["eval_loss"]
        lines.append(f"- {lowest} vs {name}: Δloss {delta:+.4f} — {'tie' if delta < TIE else v}")
    tok = [t for row in table.values() for t in row["tokens"]]
    lines.append(f"\nTokens per run: min {min(tok):,}, max {max(tok):,} "
                 f"({'identical' if min(tok) == max(tok) else f'{(max(tok) - min(tok)) / max(tok):.2%} apart'}); "
                 f"wall time per run: min {min(r.elapsed for r in results):,.1f} s, "
                 f"max {max(r.elapsed for r in results):,.1f} s.")
    lines += ["", "![held-out loss vs tokens](loss_vs_tokens.png)"]
    if any(r.curve_s for r in results):
        lines.append("![held-out loss vs seconds](loss_vs_seconds.png)")
    if tasks:
        lines.append("![task scores](tasks.png)")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plot(arms, tasks, out)
    result = {"best": best, "lowest": lowest, "arms": {k: {kk: vv for kk, vv in v.items() if kk != "eval_loss_all"}
                                     for k, v in table.items()}}
    (out / "report.json").write_text(json.dumps(result, indent=2))
    return result


def _plot(arms: dict[str, list[RunResult]], tasks: list[str], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for curve, x_label, name in (("curve", "tokens seen", "tokens"), ("curve_s", "seconds of training", "seconds")):
        if name == "seconds" and not any(r.curve_s for runs in arms.values() for r in runs):
            continue  # runs that logged no clock (older versions): no time axis to draw
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for i, (arm, runs) in enumerate(arms.items()):
            for j, r in enumerate(runs):
                if getattr(r, curve):
                    xs, ys = zip(*getattr(r, curve))
                    # past the 10 default colours, arms differ by line style too
                    ax.plot(xs, ys, color=f"C{i % 10}", linestyle=("-", "--", ":")[i // 10 % 3],
                            alpha=0.9 if j == 0 else 0.5, label=arm if j == 0 else None, marker="o", markersize=3)
        ax.set_xlabel(x_label)
        ax.set_ylabel("held-out MLM loss (nats)")
        ax.set_title(f"held-out loss vs {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small" if len(arms) > 6 else None)
        fig.tight_layout()
        fig.savefig(out / f"loss_vs_{name}.png", dpi=120)
        plt.close(fig)
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        names = list(arms)
        for i, name in enumerate(names):
            vals = [r.tasks[task] * 100 for r in arms[name] if task in r.tasks]
            if vals:
                ax.scatter([i] * len(vals), vals, color=f"C{i}", alpha=0.6)
                ax.errorbar([i], [_median(vals)], yerr=[[_median(vals) - min(vals)], [max(vals) - _median(vals)]],
                            fmt="_", color="black", capsize=6)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(task)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "tasks.png", dpi=120)
    plt.close(fig)

