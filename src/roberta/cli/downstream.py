"""finetune, glue, predict, probe: labelled data on top of a pretrained checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from roberta.cli.common import add_device, add_overwrite, add_precision, add_quiet, add_renamed, add_threads, command, set_threads
from roberta.errors import UserError
from roberta.outdir import claim_out


GLUE_TASKS = ["sst2", "cola", "mrpc", "rte", "stsb", "mnli", "qnli", "qqp"]


def add_task_options(s: argparse.ArgumentParser, probe: bool = False) -> None:
    """Which labelled data: a GLUE task by name, or any file with named columns. (A probe has no
    epochs or lr: its penalty is cross-validated on --train, and --dev only scores it.)"""
    s.add_argument("--glue", choices=GLUE_TASKS, help="a GLUE task by name (needs --glue-dir)")
    s.add_argument("--glue-dir", help="the GLUE data directory (one subdirectory per task, as distributed)")
    s.add_argument("--train", help="training examples: .tsv / .csv / .jsonl / .jsonl.gz with a header or fields")
    s.add_argument("--dev", help="dev examples, same format: " + ("the probe is scored on them" if probe else
                                                                  "selects the epoch and lr, and is reported")
                   + " (default: a fixed 10%% of --train, held out)")
    s.add_argument("--test", help="labelled examples, same format, scored once " + ("by the fitted probe" if probe else
                   "at the lr and epoch dev selected") + ": a score that selected nothing")
    s.add_argument("--text-column", default="text", help="the column (field) holding the text")
    s.add_argument("--text-pair-column", default=None, help="the second text of a sentence-pair task")
    s.add_argument("--label-column", default="label", help="the column holding the label")
    s.add_argument("--task", choices=["classification", "regression"], default="classification",
                   help="what the labels are (with --train/--dev)")
    s.add_argument("--metric", choices=["accuracy", "f1", "mcc", "pearson", "spearman"], default=None,
                   help=("the metric that picks the penalty (cross-validated on --train) and is reported on --dev"
                         if probe else "the dev metric that selects epoch and lr") + " (default: the task's)")


def add_finetune_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: a grid chosen from the checkpoint's size: the paper's "
                        "1e-5,2e-5,3e-5 for base/large, 3e-4,1e-4,5e-5,3e-5 for small encoders)")
    s.add_argument("--lr-grid", nargs="?", const="1e-5,2e-5,3e-5", default=None, metavar="LR,LR,...",
                   help="try each lr, report the best median (alone: the paper's 1e-5,2e-5,3e-5)")
    s.add_argument("--batch-size", type=int, default=32, help="examples per step")
    s.add_argument("--epochs", type=int, default=10, help="epochs per run; the best dev epoch is reported")
    s.add_argument("--seeds", type=int, default=1, help="runs per lr; the median is reported")
    s.add_argument("--warmup", type=float, default=0.06, help="warmup fraction of all steps, then linear decay")
    s.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    s.add_argument("--dropout", type=float, default=0.1, help="dropout while fine-tuning")
    s.add_argument("--seq-len", type=int, default=0, help="tokens per input, <s> </s> included (0 = the model's maximum)")
    add_renamed(s, "--max-len", "--seq-len", type=int)
    s.add_argument("--long", choices=["truncate", "chunk"], default="truncate",
                   help="inputs longer than --seq-len: truncate, or average predictions over chunks")
    s.add_argument("--max-train", type=int, default=0, help="fine-tune on a fixed random subsample of N examples (0 = all)")
    s.add_argument("--max-dev", type=int, default=0, help="evaluate on a fixed random subsample of N examples (0 = all)")
    s.add_argument("--from-scratch", action="store_true", help="same architecture, random init: the baseline")
    add_threads(s)
    add_precision(s)
    add_device(s)
    add_pack(s)
    s.add_argument("--patience", type=int, default=0,
                   help="stop a run after N epochs without a dev improvement (0 = never)")
    add_quiet(s)


def add_pack(s) -> None:
    s.add_argument("--pack", choices=["auto", "on", "off"], default="auto",
                   help="examples packed into rows without padding, each attending only to itself (the logits "
                        "are the padded batch's); auto: where varlen attention runs (a GPU in bf16), since "
                        "on a CPU length-bucketed batches are as fast")


def finetune_config(a):
    from roberta.downstream.finetune import PAPER_LR_GRID, FinetuneConfig

    if a.lr_grid is not None and a.lr is not None:
        raise UserError("pass --lr or --lr-grid, not both")
    try:
        # neither: () = finetune.default_lr_grid, chosen from the checkpoint's size
        lrs = tuple(float(x) for x in a.lr_grid.split(",")) if a.lr_grid is not None else ((a.lr,) if a.lr is not None else ())
    except ValueError:
        raise UserError(f"--lr-grid {a.lr_grid}: expected comma-separated numbers, e.g. "
                        f"{','.join(f'{x:g}' for x in PAPER_LR_GRID)}") from None
    for name in ("batch_size", "epochs", "seeds"):
        if getattr(a, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if not all(0 < lr < float("inf") for lr in lrs):
        raise UserError(f"--lr {','.join(f'{x:g}' for x in lrs)}: a learning rate must be > 0, e.g. 2e-5")
    for name, lo, hi in (("max_train", 0, None), ("max_dev", 0, None), ("threads", 0, None), ("seq_len", 0, None),
                         ("warmup", 0, 1), ("weight_decay", 0, None), ("dropout", 0, 1)):
        v = getattr(a, name)
        if not (lo <= v and (hi is None or v < hi)):  # also false for NaN
            raise UserError(f"--{name.replace('_', '-')} {v:g}: must be >= {lo}" + (f" and < {hi}" if hi else ""))
    if 0 < a.seq_len < 3:
        raise UserError(f"--seq-len {a.seq_len}: must be 0 (the model's maximum) or >= 3 (<s> a token </s>)")
    return FinetuneConfig(lrs=lrs, batch_size=a.batch_size, epochs=a.epochs, seeds=a.seeds,
                          warmup_fraction=a.warmup, weight_decay=a.weight_decay, dropout=a.dropout,
                          max_len=a.seq_len, long=a.long, max_train=a.max_train, max_dev=a.max_dev,
                          from_scratch=a.from_scratch, threads=a.threads, device=a.device, precision=a.precision,
                          patience=a.patience, pack=a.pack, progress=not a.quiet)


def lr_list(text: str | None, flag: str) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"{flag} {text}: expected comma-separated numbers, e.g. 1e-3,3e-4,1e-4") from None


def task_from_args(a, command: str, dev_use: str):
    """--glue TASK --glue-dir D, or --train F [--dev F] with column flags (finetune's and probe's);
    --test F with either. Without --dev a fixed tenth of train is held out, and the console says so
    (`dev_use`: what the held-out examples do)."""
    from roberta.downstream.tasks import HOLD_OUT_EVERY, file_task, glue_task

    if a.glue:
        if a.train or a.dev or not a.glue_dir:
            raise UserError("--glue TASK needs --glue-dir DIR (and no --train/--dev)")
        return glue_task(a.glue, a.glue_dir, test=a.test)
    if not a.train:
        raise UserError(f"{command}: pass --glue TASK --glue-dir DIR, or --train FILE [--dev FILE]")
    task = file_task(a.train, a.dev, a.text_column, a.text_pair_column, a.label_column,
                     regression=a.task == "regression", metric=None, test=a.test)
    if task.held_out:
        print(f"no --dev: holding out {100 // HOLD_OUT_EVERY}% of {Path(a.train).name} ({task.held_out:,} examples) "
              f"for {dev_use}")
    return task


def cmd_finetune(a) -> None:
    from roberta.downstream.finetune import JOB_FILE, finetune

    task = task_from_args(a, "finetune", "selecting epoch and lr")
    if a.metric:
        task.metric = a.metric
    cfg = finetune_config(a)
    # an --out holding a finetune job is this command's own: finetune continues it, or names what differs
    claim_out(a.out, a.overwrite, "finetune", own=lambda p: (p / JOB_FILE).is_file())
    try:
        if a.baseline == "scratch":
            from roberta.downstream.compare import finetune_with_baseline

            r = finetune_with_baseline(task, a.checkpoint, a.out, cfg, lr_list(a.baseline_lr_grid, "--baseline-lr-grid"),
                                       overwrite=a.overwrite)
        else:
            r = finetune(task, a.checkpoint, a.out, cfg, overwrite=a.overwrite)
    except KeyboardInterrupt:
        print(f"finetune: interrupted; its finished runs are kept in {a.out}: run the same command again to continue",
              file=sys.stderr)
        raise
    test = "" if "test_value" not in r else (
        f"; test {r['metric']} {100 * r['test_value']:.2f} (median; per seed "
        f"{', '.join(f'{100 * v:.2f}' for v in r['test_per_seed'])}; at the lr and epochs dev selected)")
    print(f"{r['task']}: {r['metric']} {100 * r['value']:.2f} (median of {cfg.seeds} seed(s) at lr {r['lr']:g}; "
          f"per seed {', '.join(f'{100 * v:.2f}' for v in r['per_seed'])}; best epochs {r['best_epoch']}){test} "
          f"-> {a.out}/metrics.json")
    keys = (("task", "metric", "value", "per_seed", "best_epoch") + (("test_value", "test_per_seed") if test else ())
            + (("baseline_value", "delta", "interval") if a.baseline else ()))
    print(json.dumps({k: r[k] for k in keys}))


def cmd_glue(a) -> None:
    import tempfile

    from roberta.downstream.finetune import evaluate_glue, glue_table

    with tempfile.TemporaryDirectory() as tmp:
        results = evaluate_glue(a.checkpoint, a.glue_dir, a.out or tmp, finetune_config(a), overwrite=a.overwrite)
    table, average = glue_table(results)
    print(table)
    print(json.dumps({**{name: r["value"] for name, r in results.items()}, "average": average / 100}))


def cmd_predict(a) -> None:
    from roberta.downstream.predict import Finetuned, predict_files
    from roberta.downstream.tasks import Columns, first_row_columns, quote_columns, read_examples

    set_threads(a.threads)
    model = Finetuned(a.checkpoint, device=a.device, precision=a.precision, pack=a.pack)
    examples, has_labels = [], True
    for path in a.inputs:
        names = first_row_columns(path)
        label = a.label_column or ("label" if "label" in names else None)
        if a.label_column and a.label_column not in names:
            raise UserError(f"{path}:1: no column {a.label_column!r} (has: {quote_columns(names)}); "
                            "choose it with --label-column, or leave it out to predict unlabelled rows")
        has_labels = has_labels and label is not None
        examples += read_examples(path, Columns(a.text_column, a.text_pair_column, label))
    if a.text_pair_column is None and model.record.get("pairs"):
        raise UserError(f"{model.path} was trained on sentence pairs; pass --text-pair-column")
    metrics = predict_files(model, examples, has_labels, a.out, a.batch_size, progress=not a.quiet)
    print(f"{len(examples):,} predictions -> {a.out}")
    if metrics is not None:
        print(f"{model.metric} {100 * metrics[model.metric]:.2f} on {len(examples):,} labelled rows")
        print(json.dumps(metrics))


def cmd_probe(a) -> None:
    from roberta.downstream.probe import ProbeConfig, probe

    task = task_from_args(a, "probe", "scoring the probe")
    if a.metric:
        task.metric = a.metric
    cfg = ProbeConfig(max_len=a.seq_len, max_train=a.max_train, max_dev=a.max_dev, threads=a.threads,
                      progress=not a.quiet)
    r = probe(task, a.checkpoint, a.out, cfg, baseline=a.baseline)
    keys = ("task", "metric", "value") + (("test_value",) if "test_value" in r else ()) + \
        (("baseline_value", "delta", "interval") if a.baseline else ())
    print(json.dumps({k: r[k] for k in keys}))


def register(sub) -> None:
    s = command(sub, "finetune", "fine-tune on a GLUE task or any labelled data",
                "roberta finetune --checkpoint runs/r --glue sst2 --glue-dir glue --out ft/sst2 --seeds 3\n"
                "roberta finetune --checkpoint runs/r --train train.jsonl --dev dev.jsonl --out ft/mine")
    s.add_argument("--checkpoint", required=True, help="the pretrained checkpoint (or run) to start from")
    s.add_argument("--out", required=True, help="where metrics.json, labels.json, runs.jsonl and model/ go; the same "
                   "command again continues an interrupted job here")
    add_task_options(s)
    add_finetune_options(s)
    s.add_argument("--baseline", choices=["scratch"], default=None,
                   help="also fine-tune the same architecture from random init (same examples and seeds, its own "
                        "lr grid) and report the difference with a 95%% paired-bootstrap interval")
    s.add_argument("--baseline-lr-grid", default=None, metavar="LR,LR,...",
                   help="the scratch arm's lr grid (default: the pretrained arm's)")
    add_overwrite(s)
    s.set_defaults(fn=cmd_finetune)

    s = command(sub, "glue", "fine-tune on every GLUE task found; print the paper's table",
                "roberta glue --checkpoint runs/r --glue-dir glue --out ft/glue --lr-grid")
    s.add_argument("--checkpoint", required=True, help="the pretrained checkpoint (or run) to start from")
    s.add_argument("--glue-dir", required=True, help="the GLUE data directory (one subdirectory per task)")
    s.add_argument("--out", default=None, help="keep each task's metrics.json here (default: not kept); the same "
                   "command again continues an interrupted task here")
    add_finetune_options(s)
    add_overwrite(s)
    s.set_defaults(fn=cmd_glue)

    s = command(sub, "predict", "label new text with a fine-tuned model (a `finetune` output)",
                "roberta predict --checkpoint ft/mine new.jsonl --out preds.jsonl",
                "Label new text with a fine-tuned model: one JSON object per input row, in input order (the\n"
                "label and class probabilities, or the value); with gold labels the metric is printed too.")
    s.add_argument("--checkpoint", required=True, help="a `roberta finetune` --out directory (or its model/)")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help=".tsv / .csv / .jsonl / .jsonl.gz with named columns")
    s.add_argument("--out", required=True, help="preds.jsonl: one JSON object per input row, in input order")
    s.add_argument("--text-column", default="text", help="the column (field) holding the text")
    s.add_argument("--text-pair-column", default=None, help="the second text, for a model trained on pairs")
    s.add_argument("--label-column", default=None,
                   help="gold labels: the metric is printed (default: a 'label' column when there is one)")
    s.add_argument("--batch-size", type=int, default=64, help="examples per forward pass")
    add_device(s)
    add_pack(s)
    add_threads(s)
    add_precision(s)
    add_quiet(s)
    s.set_defaults(fn=cmd_predict)

    s = command(sub, "probe", "frozen features + logistic regression: what the encoder already knows",
                "roberta probe --checkpoint runs/r --glue sst2 --glue-dir glue --out probe/sst2 --baseline random")
    s.add_argument("--checkpoint", required=True, help="the pretrained checkpoint (or run) to probe")
    s.add_argument("--out", required=True, help="where metrics.json goes")
    add_task_options(s, probe=True)
    s.add_argument("--baseline", choices=["random"], default=None,
                   help="also probe the same network at random init; report the difference and a 95%% interval")
    s.add_argument("--seq-len", type=int, default=0, help="tokens per input, <s> </s> included (0 = the model's maximum)")
    add_renamed(s, "--max-len", "--seq-len", type=int)
    s.add_argument("--max-train", type=int, default=0, help="a fixed random subsample of N training examples (0 = all)")
    s.add_argument("--max-dev", type=int, default=0, help="a fixed random subsample of N dev examples (0 = all)")
    add_threads(s)
    add_quiet(s)
    s.set_defaults(fn=cmd_probe)
