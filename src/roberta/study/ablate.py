"""`roberta ablate` and `roberta report`: recipe comparisons at matched data and compute.

Every arm of an ablation is the same base config plus a few `--set` overrides, trained on the same
prepared data, with the same token budget (train.max_tokens: real tokens seen, the paper's
B*L*S) and, for seed k, the same data-order/initialisation seed k. Arms run one after another.
Each arm's directory records what defines it (ARM_FILE: its full config, budget and data); re-running
reuses a finished arm and resumes an interrupted one only when that record is identical, and
otherwise refuses, naming the arm and what differs (--overwrite re-runs it). The report shows
tokens, FLOPs and wall time per arm so the fairness is visible, and calls a difference real only
when it exceeds the spread across seeds. Each arm can be scored downstream: fine-tuned (median
over seeds) or probed on GLUE tasks or on the user's own labelled files, all loaded before the
first arm trains, so that a bad file is an error before hours of pretraining, not after.

Architectures of different speed are compared fairly at a matched wall-clock budget too
(--max-time: train.max_time for every arm instead of a token budget); the report then plots the
held-out loss against seconds as well as tokens.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from roberta.config import FORMATS, Config, apply_overrides
from roberta.errors import UserError
from roberta.outdir import settings_diff, with_defaults
from roberta.config import scaled_lr
from roberta.training.optim import paper_lr
from roberta.presets import get_preset
from roberta.study.report import make_report

KINDS = ("masking", "formats", "batch-size", "architecture", "custom")
SIZE_KEYS = ("layers", "hidden", "heads")  # what the architecture arms share; the rest of model.* is the architecture
ARM_FILE = "arm.json"  # in each arm's run directory: what defines the arm
EVALS = ("finetune", "probe")  # how an arm is scored on a labelled task
PROBE_MAX_TRAIN = 2000  # a probe's training examples per task: enough for a linear read-out, seconds on a CPU
PAPER_FORMAT_ORDER = ("segment-pair+nsp", "sentence-pair+nsp", "full-sentences", "doc-sentences")
FORMAT_ARMS = PAPER_FORMAT_ORDER + ("packed-documents",)  # Table 2's order, then ModernBERT's packing
assert set(FORMAT_ARMS) == set(FORMATS)


@dataclass
class Arm:
    name: str
    overrides: list[str] = field(default_factory=list)


def arms_for(kind: str, base: Config, custom: str | None = None, lr_rule: str = "sqrt", preset: str = "tiny",
             sets: list[str] | None = None) -> list[Arm]:
    """The paper's comparisons: Table 1 (masking), Table 2 (formats), Table 3 (batch size); and
    RoBERTa's architecture against ModernBERT's at the same size."""
    if kind == "masking":
        return [Arm("static", ["masking.kind=static", f"masking.dupe_factor={base.masking.dupe_factor}"]),
                Arm("dynamic", ["masking.kind=dynamic"])]
    if kind == "formats":
        return [Arm(f, [f"data.format={f}"]) for f in FORMAT_ARMS]
    if kind == "batch-size":
        b0, lr0 = base.train.batch_size, base.train.lr
        arms = []
        for b in (b0, 4 * b0, 16 * b0):
            lr = paper_lr(b) if lr_rule == "paper" else scaled_lr(lr0, b, b0, lr_rule)
            arms.append(Arm(f"batch-{b}", [f"train.batch_size={b}", f"train.lr={lr:.3g}"]))
        return arms
    if kind == "architecture":
        return architecture_arms(preset, sets or [])
    if kind == "custom":
        return load_custom_arms(custom)
    raise UserError(f"ablate: unknown comparison {kind}; choose one of {', '.join(KINDS)}")


# the same size in each family: (2019 architecture, ModernBERT's)
ARCHITECTURE_PAIRS = {"tiny": ("roberta-tiny", "modern-tiny"), "roberta-tiny": ("roberta-tiny", "modern-tiny"),
                      "modern-tiny": ("roberta-tiny", "modern-tiny"), "small": ("small", "modern-small"),
                      "modern-small": ("small", "modern-small"), "base": ("base", "modern-base"),
                      "modern-base": ("base", "modern-base"), "large": ("large", "modern-large"),
                      "modern-large": ("large", "modern-large")}


def architecture_arms(preset: str, sets: list[str]) -> list[Arm]:
    """`roberta` vs `modern`: the model keys in which the preset size's two families differ
    (family, norm, bias, GeGLU and its width, rotary bases, window, global spacing, dropout), at
    the preset's layers, hidden and heads. Masking and everything else stay the preset's, so only
    the architecture differs; a model key given with --set is every arm's."""
    if preset not in ARCHITECTURE_PAIRS:
        raise UserError(f"ablate architecture: --preset {preset} has no pair of families; choose one of "
                        f"{', '.join(ARCHITECTURE_PAIRS)}")
    ours, theirs = (get_preset(p).model for p in ARCHITECTURE_PAIRS[preset])
    given = {s.split("=", 1)[0].strip() for s in sets}
    keys = [f.name for f in dataclasses.fields(theirs) if f.name not in SIZE_KEYS and f"model.{f.name}" not in given
            and getattr(theirs, f.name) != getattr(ours, f.name)]

    def text(v) -> str:
        return str(v).lower() if isinstance(v, bool) else str(v)
    return [Arm("roberta", [f"model.{k}={text(getattr(ours, k))}" for k in keys]),
            Arm("modern", [f"model.{k}={text(getattr(theirs, k))}" for k in keys])]


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
               data_seq_len: int, max_time: str = "") -> Config:
    """The arm's config: the preset, then an evaluation interval giving about ten points on the
    loss-vs-tokens curve, then --set and the arm's own settings (which may set it otherwise).
    max_time: a wall-clock budget instead of tokens (its step count unknown: the preset's or
    --set's train.eval_interval)."""
    budget = [f"train.max_time={max_time}"] if max_time else [f"train.max_tokens={budget_tokens}"]
    overrides = list(sets) + arm.overrides + budget + [f"train.seed={seed}"]
    if max_time:
        return apply_overrides(get_preset(base_preset), overrides)
    cfg = apply_overrides(get_preset(base_preset), overrides)
    steps = max(1, budget_tokens // (cfg.train.batch_size * (cfg.data.seq_len or data_seq_len)))
    return apply_overrides(get_preset(base_preset), [f"train.eval_interval={max(1, steps // 10)}", *overrides])


def arm_definition(cfg: Config, budget_tokens: int, data: str) -> dict:
    """What makes two runs of an arm the same run: the full config (which holds the budget as
    train.max_tokens and the seed), the budget and the prepared data."""
    definition = {"config": cfg.to_dict(), "budget_tokens": budget_tokens, "data": str(Path(data).resolve())}
    return json.loads(json.dumps(definition))  # as it reads back from ARM_FILE (tuples become lists)


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
    if old is not None:  # a key added since the arm ran: it ran with the key's default
        old = with_defaults(old, {"config": json.loads(json.dumps(Config().to_dict()))})
    if old == definition:
        return "finished" if (run_dir / "summary.json").is_file() else "interrupted"
    if overwrite:
        shutil.rmtree(run_dir)
        return "rerun"
    why = ("has no record of its config (written by an older version, or not by ablate)" if old is None
           else f"was run with {'; '.join(settings_diff(old, definition)[:4])}")
    raise UserError(f"ablate: arm {label} in {run_dir} {why}; re-run it with --overwrite, or choose a new --out")


def run_ablation(kind: str, data: str, budget_tokens: int, out: str, preset: str = "tiny",
                 sets: list[str] | None = None, seeds: int = 1, glue_dir: str | None = None,
                 glue_tasks: list[str] | None = None, custom: str | None = None, lr_rule: str = "sqrt",
                 progress: bool = True, finetune_args: dict | None = None, overwrite: bool = False,
                 probe_tasks: list[str] | None = None, tasks: list[tuple[str, object]] | None = None,
                 max_time: str = "") -> dict:
    """Train every arm x seed (reusing finished ones), score each downstream, write OUT/report.md.
    glue_tasks / probe_tasks: GLUE names under glue_dir, fine-tuned / probed; tasks: more (how,
    TaskData) pairs, how in EVALS (the user's own labelled files). max_time (e.g. "10m"): every
    arm trains for that wall-clock time instead of budget_tokens."""
    from roberta.data.prepare import read_meta

    if max_time:
        check_max_time(kind, max_time)
        budget_tokens = 0
    elif budget_tokens <= 0:
        raise UserError("ablate: --max-tokens must be > 0")
    if seeds < 1:
        raise UserError(f"ablate: --seeds {seeds}: must be >= 1")
    meta = read_meta(data)  # a missing or unprepared --data: an error before anything is written
    sets = sets or []
    arms = arms_for(kind, apply_overrides(get_preset(preset), list(sets)), custom, lr_rule, preset, sets)
    outdir = Path(out)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"--out {outdir}: is a file, not a directory; choose a new --out")
    plan = plan_arms(arms, seeds, outdir, preset, sets, budget_tokens, data, int(meta.get("seq_len") or 0), overwrite,
                     max_time)
    if kind == "masking":
        static = next(cfg for arm, _, _, cfg, _, _ in plan if arm.name == "static")
        check_masking_budget(data, meta, budget_tokens, static.masking.dupe_factor)
    evals = downstream_tasks(glue_dir, glue_tasks or [], probe_tasks or []) + list(tasks or [])
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "ablation.json").write_text(json.dumps(
        {"kind": kind, "data": str(data), "budget_tokens": budget_tokens, **({"max_time": max_time} if max_time else {}),
         "preset": preset, "sets": sets,
         "seeds": seeds, "arms": [dataclasses.asdict(a) for a in arms]}, indent=2))
    for arm, seed, run_dir, cfg, definition, state in plan:
        train_arm(arm, seed, run_dir, cfg, definition, state, data, progress)
        finetune_run(run_dir, None, [t for how, t in evals if how == "finetune"], finetune_args or {}, overwrite)
        if any(how == "probe" for how, _ in evals):  # frozen features: a signal where fine-tuning cannot separate arms
            from roberta.downstream.probe import probe_run

            probe_run(run_dir, None, [t for how, t in evals if how == "probe"], max_train=PROBE_MAX_TRAIN)
    per_arm = f"{max_time} of training" if max_time else f"{budget_tokens:,} tokens"
    return make_report([run_dir for _, _, run_dir, *_ in plan], outdir, title=f"{kind} ablation at {per_arm} per arm")


def check_max_time(kind: str, max_time: str) -> None:
    """A wall-clock budget needs a unit, and is refused where the kind's fairness check counts tokens."""
    from roberta.config import parse_duration

    if parse_duration(max_time, "--max-time") <= 0 or not max_time.strip()[-1:].isalpha():
        raise UserError(f"--max-time {max_time}: give a positive duration with its unit, e.g. 10m, 90s or 2h")
    if kind == "masking":
        raise UserError("ablate masking: give --max-tokens; static and dynamic masking differ only past "
                        "masking.dupe_factor epochs, which a token budget is checked to cover and a time budget cannot be")


def plan_arms(arms: list[Arm], seeds: int, outdir: Path, preset: str, sets: list[str], budget_tokens: int,
              data: str, data_seq_len: int, overwrite: bool, max_time: str = "") -> list[tuple]:
    """(arm, seed, run_dir, cfg, definition, state) for every run. Every arm's state is decided
    before any arm runs: a stale arm is refused up front, not after hours (with --overwrite it is
    decided when its turn comes, so a refused plan never deletes anything)."""
    plan = []
    for arm in arms:
        for seed in range(seeds):
            run_dir = outdir / arm.name / f"seed{seed}"
            cfg = arm_config(preset, sets, arm, budget_tokens, seed, data_seq_len, max_time)
            definition = arm_definition(cfg, budget_tokens, data)
            state = arm_state(run_dir, definition, f"{arm.name} seed {seed}", overwrite=False) if not overwrite else None
            plan.append((arm, seed, run_dir, cfg, definition, state))
    return plan


def check_masking_budget(data: str, meta: dict, budget_tokens: int, dupe_factor: int) -> None:
    """Static masking draws mask number (epoch % dupe_factor) of a sequence, dynamic mask number
    epoch: the two arms draw the same masks -- they are the same run, to the bit -- until a
    sequence is drawn for the (dupe_factor + 1)-th time. A budget that never gets there would spend
    the compute of two runs on one, and the report would call it a tie: refused before any compute.
    (Epochs counted from the training tokens; <s> and </s> make a real epoch a little longer.)"""
    tokens = int(meta["splits"]["train"]["tokens"])
    epochs = budget_tokens / max(tokens, 1)
    if epochs > dupe_factor:
        return
    fewer = ("" if dupe_factor == 1 else
             f", or --set masking.dupe_factor=1 (one fixed mask per sequence) with "
             f"--max-tokens >= 2 epochs = {2 * tokens:,}")
    raise UserError(f"ablate masking: --max-tokens {budget_tokens:,} covers {epochs:.2g} epochs of {data} "
                    f"({tokens:,} training tokens), and static masking with masking.dupe_factor={dupe_factor} draws the "
                    f"same masks as dynamic for the first {dupe_factor} epoch(s), so the two arms would be the same run; "
                    f"give --max-tokens >= {2 * dupe_factor} epochs = {2 * dupe_factor * tokens:,} tokens (each static "
                    f"mask seen twice){fewer}, or a smaller corpus")


def downstream_tasks(glue_dir: str | None, glue_tasks: list[str], probe_tasks: list[str]) -> list[tuple[str, object]]:
    """(how, TaskData) for the GLUE tasks named, read now: a missing file is an error before the
    first arm trains, not after it."""
    from roberta.downstream.tasks import glue_task

    if (glue_tasks or probe_tasks) and not glue_dir:
        raise UserError(f"ablate: GLUE tasks ({', '.join(glue_tasks + probe_tasks)}) need --glue-dir DIR")
    loaded = {name: glue_task(name, glue_dir) for name in dict.fromkeys(glue_tasks + probe_tasks)}
    return [("finetune", loaded[n]) for n in glue_tasks] + [("probe", loaded[n]) for n in probe_tasks]


def train_arm(arm: Arm, seed: int, run_dir: Path, cfg: Config, definition: dict, state: str | None, data: str,
              progress: bool) -> None:
    """Pretrain one arm x seed, resume it, or reuse it as arm_state decided."""
    from roberta.training.loop import pretrain

    if state is None:  # --overwrite: decided now, so a refused plan never deletes anything
        state = arm_state(run_dir, definition, f"{arm.name} seed {seed}", overwrite=True)
    if state == "finished":
        print(f"ablate: {arm.name} seed {seed} already finished with the same config and budget; reusing it")
        return
    verb = {"new": "", "interrupted": " (resuming an interrupted run)",
            "rerun": " (--overwrite: the earlier run of another config was removed)"}[state]
    print(f"ablate: {arm.name} seed {seed}{verb}: {' '.join(arm.overrides)} -> {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ARM_FILE).write_text(json.dumps(definition, indent=2))
    pretrain(str(data), str(run_dir), cfg, resume=state == "interrupted", progress=progress)


def finetune_run(run_dir: Path, glue_dir: str | None, tasks: list, args: dict, overwrite: bool = False) -> None:
    """Fine-tune a finished arm on each task (a GLUE name under glue_dir, or a TaskData) into
    run_dir/glue/NAME, whose metrics.json holds the median over fine-tuning seeds, as the paper
    reports. finetune reuses a finished job there, continues an interrupted one, and refuses one of
    other settings (--ft-epochs changed, say) unless `overwrite`."""
    from roberta.downstream.finetune import FinetuneConfig, finetune
    from roberta.downstream.tasks import glue_task

    cfg = FinetuneConfig(**args)
    for t in tasks:
        task = glue_task(t, glue_dir) if isinstance(t, str) else t
        finetune(task, str(run_dir), str(run_dir / "glue" / task.name), cfg, overwrite=overwrite)


__all__ = ["run_ablation", "make_report", "arms_for", "Arm"]
