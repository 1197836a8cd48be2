"""plan, ablate, report: the paper's arithmetic, recipe comparisons, run reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from roberta.cli.common import Renamed, add_preset, add_quiet, add_sets, command
from roberta.errors import UserError


def cmd_plan(a) -> None:
    from dataclasses import asdict

    from roberta.study.plan import GPU_MEMORY, GPU_PEAK, cpu_peak, make_plan, render

    for name, lo in (("gpus", 1), ("vocab_size", 8), ("peak_tflops", 0), ("memory_gb", 0),
                     ("compare_batch", 0), ("compare_steps", 0)):
        if not getattr(a, name) >= lo:  # also refuses NaN
            raise UserError(f"--{name.replace('_', '-')} {getattr(a, name):g}: must be >= {lo}")
    gpu = (a.gpu or "").lower()
    if gpu and gpu not in GPU_PEAK:
        raise UserError(f"--gpu {a.gpu}: unknown; choose one of {', '.join(GPU_PEAK)} or give --peak-tflops")
    peak = a.peak_tflops * 1e12 if a.peak_tflops else GPU_PEAK.get(gpu, 0.0)
    device = f"{gpu or 'device'} (peak {peak / 1e12:.3g} TFLOP/s)"
    if not peak:  # no GPU named: this machine's CPU, measured as the trainer measures it
        peak, precision = cpu_peak()
        device = (f"this CPU (peak {peak / 1e9:.0f} GFLOP/s by a {precision} matmul probe just now; --gpu or "
                  "--peak-tflops for another device)")
    memory = a.memory_gb * 1e9 if a.memory_gb else GPU_MEMORY.get(gpu, 80e9)
    common = dict(vocab_size=a.vocab_size, gpus=a.gpus, peak_flops=peak, mfu=a.mfu, memory=memory, fsdp=a.fsdp,
                  activation_checkpointing=a.activation_checkpointing)
    plans = [make_plan(a.preset, a.batch_size, a.seq_len, a.max_steps, **common)]
    names = [f"{a.batch_size} x {a.max_steps:,} steps"]
    if a.compare_batch or a.compare_steps:
        b, s = a.compare_batch or a.batch_size, a.compare_steps or a.max_steps
        plans.append(make_plan(a.preset, b, a.seq_len, s, **common))
        names.append(f"{b} x {s:,} steps")
    print(f"plan: preset {a.preset}, {a.gpus} x {device}, MFU {a.mfu:.0%}")
    print(render(plans, names, a.preset))
    print(json.dumps([asdict(p) for p in plans]))


def cmd_ablate(a) -> None:
    from roberta.study.ablate import run_ablation

    tasks = [t for t in (a.glue_tasks or "").split(",") if t]
    try:
        budget = int(float(a.max_tokens)) if a.max_tokens is not None else 0
    except (ValueError, OverflowError):
        raise UserError(f"--max-tokens {a.max_tokens}: expected a number of tokens, e.g. 2e6") from None
    probes = [t for t in (a.probe or "").split(",") if t]
    if probes and not a.glue_dir:
        raise UserError("--probe TASK needs --glue-dir DIR")
    if tasks and not a.glue_dir:
        raise UserError("--glue-tasks TASK needs --glue-dir DIR")
    if a.threads is not None:
        if a.threads < 0:
            raise UserError(f"--threads {a.threads}: must be >= 0 (0 = automatic)")
        a.set = [*a.set, f"train.threads={a.threads}"]
    result = run_ablation(a.kind, a.data, budget, a.out, preset=a.preset, sets=a.set,
                          seeds=a.seeds, glue_dir=a.glue_dir, glue_tasks=tasks, custom=a.arms,
                          lr_rule=a.lr_rule, progress=not a.quiet, overwrite=a.overwrite,
                          finetune_args={"epochs": a.ft_epochs, "max_train": a.ft_max_train, "seeds": a.ft_seeds,
                                         "threads": a.threads or 1},  # one thread: measured fastest here
                          probe_tasks=probes, tasks=own_task(a, tasks + probes), max_time=a.max_time or "")
    print(Path(a.out, "report.md").read_text())
    print(json.dumps(result))


def own_task(a, glue_names: list[str]) -> list[tuple[str, object]]:
    """--task-train F [--task-dev F] with finetune's column flags: the user's labelled task, as
    (how, TaskData) per --task-eval; read now, so a bad file is refused before any arm trains."""
    from roberta.downstream.tasks import FILE_SUFFIXES, HOLD_OUT_EVERY, file_task
    from roberta.study.ablate import EVALS

    if not a.task_train:
        for flag, value in (("--task-dev", a.task_dev), ("--task-name", a.task_name), ("--task-eval", a.task_eval)):
            if value:
                raise UserError(f"{flag} needs --task-train FILE (the labelled examples of your task)")
        return []
    evals = [e for e in (a.task_eval or "finetune").split(",") if e]
    if not evals or any(e not in EVALS for e in evals):
        raise UserError(f"--task-eval {a.task_eval}: choose finetune, probe or finetune,probe")
    train = Path(a.task_train).name
    name = a.task_name or next((train.removesuffix(x) for x in sorted(FILE_SUFFIXES, key=len, reverse=True)
                                if train.endswith(x)), train)
    if name in (".", "..") or name != Path(name).name or name in glue_names:
        raise UserError(f"--task-name {name}: the report's column and RUN/glue/{name}: give a plain name "
                        "that no --glue-tasks/--probe task has")
    task = file_task(a.task_train, a.task_dev, a.text_column, a.text_pair_column, a.label_column,
                     regression=a.task == "regression", metric=a.metric, dev_flag="--task-dev")
    task.name = name
    if task.held_out:
        print(f"no --task-dev: holding out {100 // HOLD_OUT_EVERY}% of {train} ({task.held_out:,} examples) for "
              + ("selecting epoch and lr" if "finetune" in evals else "scoring the probe"))
    return [(e, task) for e in evals]


def cmd_report(a) -> None:
    if len(a.runs) == 1 and a.out is None:
        return report_run(Path(a.runs[0]))
    if a.out is None:
        raise UserError("report: comparing several runs writes report.md; give it a directory with --out DIR")
    from roberta.study.report import make_report

    result = make_report([Path(r) for r in a.runs], Path(a.out))
    print(Path(a.out, "report.md").read_text())
    print(json.dumps(result))


def report_run(run: Path) -> None:
    from roberta.training.runlog import write_loss_plot
    from roberta.study.report import format_summary, run_summary

    summary = run_summary(run)
    print(format_summary(summary))
    print(f"plot: {write_loss_plot(run)}")
    print(json.dumps(summary))


def register(sub) -> None:
    s = command(sub, "plan", "size a run: tokens, FLOPs, lr, memory, time; compare two recipes",
                "roberta plan --preset base --batch-size 8192 --max-steps 500000 --gpus 8 --gpu h100 \\\n"
                "             --compare-batch 256 --compare-steps 1000000")
    add_preset(s, "base", "the model whose parameters and FLOPs are counted")
    s.add_argument("--batch-size", type=int, required=True, help="global batch in sequences")
    s.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--max-steps", type=int, help="optimizer steps")
    which.add_argument("--steps", dest="max_steps", type=int, action=Renamed, new="--max-steps", help=argparse.SUPPRESS)
    s.add_argument("--vocab-size", type=int, default=50265, help="the tokenizer's vocabulary")
    s.add_argument("--gpus", type=int, default=1, help="devices (data parallel)")
    s.add_argument("--gpu", default="", help="h100, h200, a100, l40s, l4, a10, v100, 4090, 3090: peak and memory")
    s.add_argument("--peak-tflops", type=float, default=0.0, help="per-device peak instead of --gpu")
    s.add_argument("--memory-gb", type=float, default=0.0, help="per-device memory in GB (0 = from --gpu, else 80)")
    s.add_argument("--mfu", type=float, default=0.45, help="model FLOPs utilisation assumed for the wall time")
    s.add_argument("--fsdp", action="store_true", help="shard weights and optimizer state over --gpus")
    s.add_argument("--activation-checkpointing", action="store_true",
                   help="as train.activation_checkpointing=true: less activation memory, ~1/3 more time")
    s.add_argument("--compare-batch", type=int, default=0, help="a second recipe's batch (0 = the same)")
    s.add_argument("--compare-steps", type=int, default=0, help="a second recipe's steps (0 = the same)")
    s.set_defaults(fn=cmd_plan)

    s = command(sub, "ablate", "compare recipes at a matched token (or wall-clock) budget (the paper's tables)",
                "roberta ablate masking --data data --max-tokens 2e6 --out abl/masking --seeds 3\n"
                "roberta ablate architecture --data data --max-time 10m --out abl/arch-10m --seeds 3 --threads 2\n"
                "roberta ablate custom --data data --max-tokens 2e6 --out abl/mine --arms arms.toml\n"
                "roberta ablate formats --data data --max-tokens 2e6 --out abl/fmt --task-train reviews.jsonl "
                "--text-column review")
    s.add_argument("kind", choices=["masking", "formats", "batch-size", "architecture", "custom"],
                   help="masking: static vs dynamic (the budget must cover more than masking.dupe_factor epochs); "
                        "formats: the four input formats; batch-size: 256/2K/8K-style batches with --lr-rule; "
                        "architecture: roberta (--preset) vs modern (its modern-* twin's architecture at the same "
                        "layers, hidden and heads); custom: the arms in --arms")
    s.add_argument("--data", required=True, help="a prepare --out directory")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--max-tokens", help="real tokens per arm (train.max_tokens), e.g. 2e6")
    which.add_argument("--max-time", default=None, metavar="DURATION",
                       help="instead: wall-clock training time per arm (train.max_time), e.g. 10m: the fair budget "
                            "for arms of different speed (architecture); give --threads so every arm gets the same")
    which.add_argument("--budget-tokens", dest="max_tokens", action=Renamed, new="--max-tokens",
                       help=argparse.SUPPRESS)
    s.add_argument("--out", required=True, help="one run directory per arm and seed, and report.md")
    add_preset(s, "tiny", "every arm's starting Config (docs/config.md)")
    add_sets(s, "; applied to every arm")
    s.add_argument("--seeds", type=int, default=1, help="runs per arm; a difference must exceed their spread")
    s.add_argument("--glue-dir", default=None, help="fine-tune each arm on GLUE tasks from here")
    s.add_argument("--glue-tasks", default="", help="comma-separated, e.g. sst2,rte (with --glue-dir)")
    s.add_argument("--arms", default=None, help="custom: a .toml or .json file of named arms")
    s.add_argument("--ft-epochs", type=int, default=3, help="fine-tuning epochs per task (best dev epoch kept)")
    s.add_argument("--ft-max-train", type=int, default=0, help="fine-tuning examples per task (0 = all)")
    s.add_argument("--ft-seeds", type=int, default=3, help="fine-tuning seeds per task (median reported)")
    s.add_argument("--probe", default="", metavar="TASK[,TASK]",
                   help="add a frozen-feature probe column per arm (e.g. sst2; needs --glue-dir)")
    s.add_argument("--task-train", default=None, metavar="FILE",
                   help="your own labelled task, scored on every arm (.tsv / .csv / .jsonl / .jsonl.gz, as finetune's --train)")
    s.add_argument("--task-dev", default=None, metavar="FILE",
                   help="its dev examples (default: a fixed 10%% of --task-train, held out)")
    s.add_argument("--task-name", default=None, help="its column in the report (default: --task-train's file name)")
    s.add_argument("--task-eval", default=None, metavar="HOW[,HOW]",
                   help="how each arm is scored on it: finetune, probe, or finetune,probe (default: finetune)")
    s.add_argument("--text-column", default="text", help="--task-train's text column (field)")
    s.add_argument("--text-pair-column", default=None, help="its second text, for a sentence-pair task")
    s.add_argument("--label-column", default="label", help="its label column")
    s.add_argument("--task", choices=["classification", "regression"], default="classification",
                   help="what its labels are")
    s.add_argument("--metric", choices=["accuracy", "f1", "mcc", "pearson", "spearman"], default=None,
                   help="its metric (default: accuracy, or pearson for regression)")
    s.add_argument("--lr-rule", default="sqrt", choices=["sqrt", "linear", "paper", "none"],
                   help="batch-size: how the lr follows the batch")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads of every arm: shorthand for --set train.threads=N, and fine-tuning's threads "
                        "(default: pretraining automatic, fine-tuning 1)")
    add_quiet(s)
    s.add_argument("--overwrite", action="store_true",
                   help="re-run an arm whose directory holds a run of another config or budget")
    s.set_defaults(fn=cmd_ablate)

    s = command(sub, "report", "one run: its numbers and loss.png; several: a comparison table and plots",
                "roberta report runs/r\nroberta report runs/a runs/b --out cmp")
    s.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished (or running) pretraining runs")
    s.add_argument("--out", default=None, help="where the comparison's report.md goes (needed for several runs)")
    s.set_defaults(fn=cmd_report)
