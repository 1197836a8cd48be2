"""`roberta ablate` and `roberta report`: recipe comparisons at matched data and compute.

Every arm of an ablation is the same base config plus a few `--set` overrides, trained on the same
prepared data, with the same token budget (train.max_tokens: real tokens seen, the paper's
B*L*S) and, for seed k, the same data-order/initialisation seed k. Arms run one after another.
Each arm's directory records what defines it (ARM_FILE: its full config, budget and data); re-running
reuses a finished arm and resumes an interrupted one only when that record is identical, and
otherwise refuses, naming the arm and what differs (--overwrite re-runs it). The report shows tokens, FLOPs and wall time per arm so the fairness is visible, and
calls a difference real only when it exceeds the spread across seeds.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from roberta.config import FORMATS, Config, apply_overrides
from roberta.errors import UserError
from roberta.optim import paper_lr, scaled_lr
from roberta.presets import get_preset

KINDS = ("masking", "formats", "batch-size", "custom")
ARM_FILE = "arm.json"  # in each arm's run directory: what defines the arm
TIE = 5e-5  # a loss difference that prints as 0.0000 names no winner
PAPER_FORMAT_ORDER = ("segment-pair+nsp", "sentence-pair+nsp", "full-sentences", "doc-sentences")
assert set(PAPER_FORMAT_ORDER) == set(FORMATS)


@dataclass
class Arm:
    name: str
    overrides: list[str] = field(default_factory=list)


def arms_for(kind: str, base: Config, custom: str | None = None, lr_rule: str = "sqrt") -> list[Arm]:
    """The paper's comparisons: Table 1 (masking), Table 2 (formats), Table 3 (batch size)."""
    if kind == "masking":
        return [Arm("static", ["masking.kind=static", f"masking.dupe_factor={base.masking.dupe_factor}"]),
                Arm("dynamic", ["masking.kind=dynamic"])]
    if kind == "formats":
        return [Arm(f, [f"data.format={f}"]) for f in PAPER_FORMAT_ORDER]
    if kind == "batch-size":
        b0, lr0 = base.train.batch_size, base.train.lr
        arms = []
        for b in (b0, 4 * b0, 16 * b0):
            lr = paper_lr(b) if lr_rule == "paper" else scaled_lr(lr0, b, b0, lr_rule)
            arms.append(Arm(f"batch-{b}", [f"train.batch_size={b}", f"train.lr={lr:.3g}"]))
        return arms
    if kind == "custom":
        return load_custom_arms(custom)
    raise UserError(f"ablate: unknown comparison {kind}; choose one of {', '.join(KINDS)}")


def load_custom_arms(path: str | None) -> list[Arm]:
    """A TOML or JSON file: {"arm name": {"section.field": value, ...}, ...} (TOML: one table per arm)."""
    if not path:
        raise UserError("ablate custom: give the arms file with --arms FILE (.toml or .json)")
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such arms file")
    try:
        if p.suffix == ".toml":
            import tomllib
            spec = tomllib.loads(p.read_text())
        else:
            spec = json.loads(p.read_text())
    except Exception as e:  # tomllib / json each raise their own decode errors
        raise UserError(f"{p}: cannot parse ({e})") from None
    if not isinstance(spec, dict) or not spec or not all(isinstance(v, dict) for v in spec.values()):
        raise UserError(f"{p}: expected a table per arm, e.g. [dynamic] masking.kind = \"dynamic\"")

    def flat(d: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            if isinstance(v, dict):
                out += flat(v, f"{prefix}{k}.")
            else:
                out.append(f"{prefix}{k}={str(v).lower() if isinstance(v, bool) else v}")
        return out
    return [Arm(name, flat(body)) for name, body in spec.items()]


def arm_config(base_preset: str, sets: list[str], arm: Arm, budget_tokens: int, seed: int,
               data_seq_len: int) -> Config:
    """The arm's config: the preset, then an evaluation interval giving about ten points on the
    loss-vs-tokens curve, then --set and the arm's own settings (which may set it otherwise)."""
    overrides = list(sets) + arm.overrides + [f"train.max_tokens={budget_tokens}", f"train.seed={seed}"]
    cfg = apply_overrides(get_preset(base_preset), overrides)
    steps = max(1, budget_tokens // (cfg.train.batch_size * (cfg.data.seq_len or data_seq_len)))
    return apply_overrides(get_preset(base_preset), [f"train.eval_interval={max(1, steps // 10)}", *overrides])


def arm_definition(cfg: Config, budget_tokens: int, data: str) -> dict:
    """What makes two runs of an arm the same run: the full config (which holds the budget as
    train.max_tokens and the seed), the budget and the prepared data."""
    definition = {"config": cfg.to_dict(), "budget_tokens": budget_tokens, "data": str(Path(data).resolve())}
    return json.loads(json.dumps(definition))  # as it reads back from ARM_FILE (tuples become lists)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def definition_diff(old: dict, new: dict) -> list[str]:
    """["train.max_tokens 10000 -> 20000", ...] between two arm definitions."""
    a, b = _flat(old), _flat(new)
    return [f"{k.removeprefix('config.')} {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def arm_state(run_dir: Path, definition: dict, label: str, overwrite: bool) -> str:
    """"new", "finished" (reuse), "interrupted" (resume) or "rerun" (--overwrite, the old run
    removed); a run of another definition is a UserError that says what differs."""
    import shutil

    if not run_dir.exists():
        return "new"
    record = run_dir / ARM_FILE
    try:
        old = json.loads(record.read_text()) if record.is_file() else None
    except ValueError:
        old = None
    if old == definition:
        return "finished" if (run_dir / "summary.json").is_file() else "interrupted"
    if overwrite:
        shutil.rmtree(run_dir)
        return "rerun"
    why = ("has no record of its config (written by an older version, or not by ablate)" if old is None
           else f"was run with {'; '.join(definition_diff(old, definition)[:4])}")
    raise UserError(f"ablate: arm {label} in {run_dir} {why}; re-run it with --overwrite, or choose a new --out")


def run_ablation(kind: str, data: str, budget_tokens: int, out: str, preset: str = "tiny",
                 sets: list[str] | None = None, seeds: int = 1, glue_dir: str | None = None,
                 glue_tasks: list[str] | None = None, custom: str | None = None, lr_rule: str = "sqrt",
                 progress: bool = True, finetune_args: dict | None = None, overwrite: bool = False) -> dict:
    from roberta.data.prepare import read_meta
    from roberta.train import pretrain

    if budget_tokens <= 0:
        raise UserError("ablate: --budget-tokens must be > 0")
    if seeds < 1:
        raise UserError(f"ablate: --seeds {seeds}: must be >= 1")
    data_seq_len = int(read_meta(data).get("seq_len") or 0)  # a missing or unprepared --data: an error before anything is written
    sets = sets or []
    base = apply_overrides(get_preset(preset), list(sets))
    arms = arms_for(kind, base, custom, lr_rule)
    outdir = Path(out)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"--out {outdir}: is a file, not a directory; choose a new --out")
    # every arm's state is decided before any arm runs: a stale arm is refused up front, not after hours
    plan = []
    for arm in arms:
        for seed in range(seeds):
            run_dir = outdir / arm.name / f"seed{seed}"
            cfg = arm_config(preset, sets, arm, budget_tokens, seed, data_seq_len)
            definition = arm_definition(cfg, budget_tokens, data)
            state = arm_state(run_dir, definition, f"{arm.name} seed {seed}", overwrite=False) if not overwrite else None
            plan.append((arm, seed, run_dir, cfg, definition, state))
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "ablation.json").write_text(json.dumps(
        {"kind": kind, "data": str(data), "budget_tokens": budget_tokens, "preset": preset, "sets": sets,
         "seeds": seeds, "arms": [dataclasses.asdict(a) for a in arms]}, indent=2))
    run_dirs = []
    for arm, seed, run_dir, cfg, definition, state in plan:
        run_dirs.append(run_dir)
        if state is None:  # --overwrite: decided now, so a refused plan never deletes anything
            state = arm_state(run_dir, definition, f"{arm.name} seed {seed}", overwrite=True)
        if state == "finished":
            print(f"ablate: {arm.name} seed {seed} already finished with the same config and budget; reusing it")
        else:
            verb = {"new": "", "interrupted": " (resuming an interrupted run)",
                    "rerun": " (--overwrite: the earlier run of another config was removed)"}[state]
            print(f"ablate: {arm.name} seed {seed}{verb}: {' '.join(arm.overrides)} -> {run_dir}")
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / ARM_FILE).write_text(json.dumps(definition, indent=2))
            pretrain(str(data), str(run_dir), cfg, resume=state == "interrupted", progress=progress)
        if glue_dir and glue_tasks:
            finetune_run(run_dir, glue_dir, glue_tasks, finetune_args or {})
    return make_report(run_dirs, outdir, title=f"{kind} ablation at {budget_tokens:,} tokens per arm")


def finetune_run(run_dir: Path, glue_dir: str, tasks: list[str], args: dict) -> None:
    """Fine-tune a finished arm on each task (skipping tasks already done): run_dir/glue/TASK/metrics.json
    holds the median over fine-tuning seeds, as the paper reports."""
    from roberta.finetune import FinetuneConfig, finetune
    from roberta.tasks import glue_task

    cfg = FinetuneConfig(**args)
    for task in tasks:
        target = run_dir / "glue" / task
        if (target / "metrics.json").is_file():
            continue
        finetune(glue_task(task, glue_dir), str(run_dir), str(target), cfg)


# ---------------------------------------------------------------- report

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


def read_run(run_dir: Path) -> RunResult:
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"{run_dir}: no summary.json (not a finished `roberta pretrain` run)")
    s = json.loads(summary_path.read_text())
    curve = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            if "eval_loss" in rec:
                curve.append((rec["tokens"], rec["eval_loss"]))
    tasks, task_metric = {}, {}
    for m in sorted((run_dir / "glue").glob("*/metrics.json")):
        r = json.loads(m.read_text())
        tasks[r.get("task", m.parent.name)] = float(r["value"])
        task_metric[r.get("task", m.parent.name)] = r.get("metric", "")
    seeded = run_dir.name.startswith("seed")
    return RunResult(arm=run_dir.parent.name if seeded else run_dir.name, seed=run_dir.name if seeded else "seed0",
                     tokens=int(s["tokens"]), flops=float(s["flops"]), elapsed=float(s["elapsed"]),
                     eval_loss=float(s["eval_loss"]), eval_perplexity=float(s["eval_perplexity"]),
                     curve=curve, tasks=tasks, task_metric=task_metric)


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
                 f"({'identical' if min(tok) == max(tok) else f'{(max(tok) - min(tok)) / max(tok):.2%} apart'}).")
    lines += ["", "![held-out loss vs tokens](loss_vs_tokens.png)"]
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

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, runs) in enumerate(arms.items()):
        for j, r in enumerate(runs):
            if r.curve:
                xs, ys = zip(*r.curve)
                ax.plot(xs, ys, color=f"C{i}", alpha=0.9 if j == 0 else 0.5, label=name if j == 0 else None,
                        marker="o", markersize=3)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("held-out MLM loss (nats)")
    ax.set_title("held-out loss vs tokens")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_vs_tokens.png", dpi=120)
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


__all__ = ["run_ablation", "make_report", "arms_for", "Arm"]
