"""`roberta ...` subcommands. Parsing and printing only; the work lives in the modules."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from roberta.errors import UserError
from roberta.outdir import claim_out


def _config(preset: str, sets: list[str]):
    from roberta.config import apply_overrides
    from roberta.presets import get_preset

    return apply_overrides(get_preset(preset), sets or [])


def cmd_train_tokenizer(a) -> None:
    from roberta.data.readers import ReadStats, iter_documents
    from roberta.tokenizer import save_tokenizer, train_tokenizer

    claim_out(a.out, a.overwrite, "train-tokenizer")
    stats = ReadStats()
    docs = iter_documents(a.inputs, a.text_field, stats)
    if a.sample_bytes:
        from roberta.data.sample import parse_bytes, sample_documents, text_bytes
        want = parse_bytes(a.sample_bytes)
        # a first streamed pass counts the text (its own stats: warnings and totals are reported once)
        total = text_bytes(iter_documents(a.inputs, a.text_field, ReadStats()))
        docs = sample_documents(docs, total, want, a.seed)
        print(f"train-tokenizer: learning from a uniform document sample of ~{min(want, total):,} of {total:,} "
              f"text bytes (seed {a.seed})")
    tok = train_tokenizer(docs, vocab_size=a.vocab_size, min_frequency=a.min_frequency)
    if stats.documents == 0:
        raise UserError(f"{' '.join(a.inputs)}: no documents found (empty corpus); {stats.summary()}")
    save_tokenizer(tok, a.out)
    print(f"tokenizer: {tok.get_vocab_size():,} tokens from {stats.summary()} -> {a.out}")


def cmd_prepare(a) -> None:
    from roberta.data.prepare import prepare

    claim_out(a.out, a.overwrite, "prepare")
    r = prepare(a.inputs, a.tokenizer, a.out, seq_len=a.seq_len, valid_fraction=a.valid_fraction,
                text_field=a.text_field, workers=a.workers, progress=not a.quiet)
    print(r.summary())


def resume_command(a) -> str:
    """The command line that continues this run: the same data, directory, preset and settings."""
    args = ["roberta", "pretrain", "--data", a.data, "--out", a.out]
    args += ["--preset", a.preset] if a.preset != "tiny" else []
    for item in a.set:
        args += ["--set", item]
    return shlex.join(args + ["--resume"])


def cmd_pretrain(a) -> int:
    from roberta.interrupt import TrainingInterrupted
    from roberta.train import pretrain

    cfg = _config(a.preset, a.set)
    note = seq_len_warning(a.preset, cfg, a.data)
    if note and int(os.environ.get("RANK", "0")) == 0:
        print(f"warning: {note}", file=sys.stderr)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        summary = pretrain(a.data, a.out, cfg, resume=a.resume, progress=not a.quiet, init_from=a.init_from)
    except TrainingInterrupted as e:
        if main_rank:
            print(f"stopped by {signal.Signals(e.signum).name} after step {e.step}; checkpoint {e.checkpoint}. "
                  f"Resume with: {resume_command(a)}", file=sys.stderr)
        return e.exit_code
    if not main_rank:
        return 0
    if summary.get("already_complete"):
        print(f"already complete: {a.out} finished at step {summary['step']}; nothing to do (to train further, "
              f"raise train.max_steps, train.max_tokens or train.max_time and --resume); checkpoint {summary['checkpoint']}")
    held_out = summary.get("eval_split", "valid") == "valid"
    loss = f", loss {summary['loss']:.4f}" if "loss" in summary else ""
    print(f"done: step {summary['step']}, {summary['tokens']:,} tokens{loss}, "
          f"{'held-out' if held_out else 'train-split (no held-out split)'} perplexity "
          f"{summary['eval_perplexity']:.2f}; checkpoint {summary['checkpoint']}")
    ck = shlex.quote(str(summary["checkpoint"]))
    print(f"next: roberta evaluate --checkpoint {ck} --data {shlex.quote(a.data)}   (held-out perplexity)\n"
          f"      roberta finetune --checkpoint {ck} --train TRAIN.tsv --dev DEV.tsv --out FT   (a task)")
    return 0


def seq_len_warning(preset: str, cfg, data: str) -> str | None:
    """The sequence length is the data's (`prepare --seq-len`, default 512) unless data.seq_len is
    set; a preset's own length (tiny: 128) otherwise silently gives way, and a step costs several
    times more than the preset table suggests. Say so where it bites."""
    from roberta.data.prepare import read_meta
    from roberta.presets import SEQ_LEN

    if cfg.data.seq_len is not None:  # given: the run trains at it
        return None
    prepared, sized_for = read_meta(data).get("seq_len"), SEQ_LEN.get(preset)
    if not prepared or not sized_for or int(prepared) == sized_for:
        return None
    return (f"{data} was prepared with --seq-len {prepared}, so pretraining runs at {prepared} tokens per "
            f"sequence, not preset {preset}'s {sized_for}; pass --set data.seq_len={sized_for} "
            f"to train at the preset's length")


def cmd_evaluate(a) -> None:
    if (a.data is None) == (a.glue_dir is None):
        raise UserError("evaluate: pass --data DIR (held-out MLM perplexity) or --glue-dir DIR (fine-tune on GLUE)")
    if a.glue_dir is not None:
        return _evaluate_glue(a)
    from roberta.checkpoint import load_model
    from roberta.data.prepare import load_split, read_meta
    from roberta.evaluate import eval_batches, masked_token_count, mlm_loss
    from roberta.model import max_seq_len
    from roberta.parallelize import autocast
    from roberta.precision import resolve_precision
    from roberta.tokenizer import check_same_tokenizer

    model, ck = load_model(a.checkpoint)
    meta = read_meta(a.data)
    # the model's vocabulary may be padded past the tokenizer's (model.vocab_multiple)
    if (ck / "tokenizer.json").is_file():
        check_same_tokenizer(ck, a.data, meta, "the checkpoint")
    if meta["vocab_size"] > model.cfg.vocab_size:
        raise UserError(f"{a.data}: prepared with a different tokenizer ({meta['vocab_size']} tokens) than {ck} "
                        f"was trained with; evaluate on data prepared with the checkpoint's tokenizer")
    if a.seq_len < 0 or a.max_sequences < 1:
        raise UserError(f"--seq-len {a.seq_len} / --max-sequences {a.max_sequences}: need --seq-len >= 0 "
                        "(0 = the model's maximum) and --max-sequences >= 1")
    split = load_split(a.data, a.split)
    seq_len = a.seq_len or max_seq_len(model.cfg)
    batches = eval_batches(split, seq_len, meta["vocab_size"], a.max_sequences)
    if masked_token_count(batches) == 0:
        other = "valid" if a.split == "train" else "train"
        raise UserError(f"{a.data}: its {a.split} split has no tokens to evaluate ({split.n_docs} documents); "
                        f"run `roberta prepare` with a larger --valid-fraction or corpus, or pass --split {other}")
    device = next(model.parameters()).device
    precision, why = resolve_precision(a.precision, device)
    print(f"precision: {precision} ({why})", file=sys.stderr)  # stdout is the JSON result
    with autocast(device, precision):
        result = mlm_loss(model, batches)
    print(json.dumps(result))


def _evaluate_glue(a) -> None:
    import tempfile

    from roberta.downstream.finetune import evaluate_glue, glue_table

    with tempfile.TemporaryDirectory() as tmp:
        results = evaluate_glue(a.checkpoint, a.glue_dir, a.out or tmp, _finetune_config(a))
    table, average = glue_table(results)
    print(table)
    print(json.dumps({**{name: r["value"] for name, r in results.items()}, "average": average / 100}))


def _finetune_config(a):
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
    for name, lo, hi in (("max_train", 0, None), ("max_dev", 0, None), ("threads", 0, None), ("max_len", 0, None),
                         ("warmup", 0, 1), ("weight_decay", 0, None), ("dropout", 0, 1)):
        v = getattr(a, name)
        if not (lo <= v and (hi is None or v < hi)):  # also false for NaN
            raise UserError(f"--{name.replace('_', '-')} {v:g}: must be >= {lo}" + (f" and < {hi}" if hi else ""))
    if 0 < a.max_len < 3:
        raise UserError(f"--max-len {a.max_len}: must be 0 (the model's maximum) or >= 3 (<s> a token </s>)")
    return FinetuneConfig(lrs=lrs, batch_size=a.batch_size, epochs=a.epochs, seeds=a.seeds,
                          warmup_fraction=a.warmup, weight_decay=a.weight_decay, dropout=a.dropout,
                          max_len=a.max_len, long=a.long, max_train=a.max_train, max_dev=a.max_dev,
                          from_scratch=a.from_scratch, threads=a.threads, device=a.device, precision=a.precision,
                          patience=getattr(a, "patience", 0))


def cmd_finetune(a) -> None:
    from roberta.downstream.finetune import finetune

    task = _task_from_args(a, "finetune")
    if a.metric:
        task.metric = a.metric
    cfg = _finetune_config(a)
    claim_out(a.out, a.overwrite, "finetune")
    if a.baseline == "scratch":
        from roberta.downstream.compare import finetune_with_baseline

        r = finetune_with_baseline(task, a.checkpoint, a.out, cfg, _lr_list(a.baseline_lr_grid, "--baseline-lr-grid"))
    else:
        r = finetune(task, a.checkpoint, a.out, cfg)
    print(f"{r['task']}: {r['metric']} {100 * r['value']:.2f} (median of {cfg.seeds} seed(s) at lr {r['lr']:g}; "
          f"per seed {', '.join(f'{100 * v:.2f}' for v in r['per_seed'])}; best epochs {r['best_epoch']}) -> {a.out}/metrics.json")
    keys = ("task", "metric", "value", "per_seed", "best_epoch") + (("baseline_value", "delta", "interval") if a.baseline else ())
    print(json.dumps({k: r[k] for k in keys}))


def _lr_list(text: str | None, flag: str) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"{flag} {text}: expected comma-separated numbers, e.g. 1e-3,3e-4,1e-4") from None


def _task_from_args(a, command: str):
    """--glue TASK --glue-dir D, or --train F --dev F with column flags (finetune's and probe's)."""
    from roberta.downstream.tasks import file_task, glue_task

    if a.glue:
        if a.train or a.dev or not a.glue_dir:
            raise UserError("--glue TASK needs --glue-dir DIR (and no --train/--dev)")
        return glue_task(a.glue, a.glue_dir)
    if a.train and a.dev:
        return file_task(a.train, a.dev, a.text_column, a.text_pair_column, a.label_column,
                         regression=a.task == "regression", metric=None)
    raise UserError(f"{command}: pass --glue TASK --glue-dir DIR, or --train FILE --dev FILE")


def cmd_predict(a) -> None:
    from roberta.downstream.predict import Finetuned, predict_files
    from roberta.downstream.tasks import Columns, first_row_columns, read_examples

    model = Finetuned(a.checkpoint, device=a.device)
    examples, has_labels = [], True
    for path in a.inputs:
        names = first_row_columns(path)
        label = a.label_column or ("label" if "label" in names else None)
        if a.label_column and a.label_column not in names:
            raise UserError(f"{path}: no column {a.label_column!r} (has: {', '.join(map(str, names))}); "
                            "choose it with --label-column, or leave it out to predict unlabelled rows")
        has_labels = has_labels and label is not None
        examples += read_examples(path, Columns(a.text_column, a.text_pair_column, label))
    if a.text_pair_column is None and model.record.get("pairs"):
        raise UserError(f"{model.path} was trained on sentence pairs; pass --text-pair-column")
    metrics = predict_files(model, examples, has_labels, a.out, a.batch_size)
    print(f"{len(examples):,} predictions -> {a.out}")
    if metrics is not None:
        print(f"{model.metric} {100 * metrics[model.metric]:.2f} on {len(examples):,} labelled rows")
        print(json.dumps(metrics))


def cmd_probe(a) -> None:
    from roberta.downstream.probe import ProbeConfig, probe

    task = _task_from_args(a, "probe")
    if a.metric:
        task.metric = a.metric
    cfg = ProbeConfig(max_len=a.max_len, max_train=a.max_train, max_dev=a.max_dev, threads=a.threads)
    r = probe(task, a.checkpoint, a.out, cfg, baseline=a.baseline)
    keys = ("task", "metric", "value") + (("baseline_value", "delta", "interval") if a.baseline else ())
    print(json.dumps({k: r[k] for k in keys}))


def _add_finetune_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-5)")
    s.add_argument("--lr-grid", nargs="?", const="1e-5,2e-5,3e-5", default=None, metavar="LR,LR,...",
                   help="try each lr, report the best median (alone: the paper's 1e-5,2e-5,3e-5)")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--epochs", type=int, default=10, help="the best dev epoch is reported")
    s.add_argument("--seeds", type=int, default=1, help="runs per lr; the median is reported")
    s.add_argument("--warmup", type=float, default=0.06, help="warmup fraction of all steps")
    s.add_argument("--weight-decay", type=float, default=0.1)
    s.add_argument("--dropout", type=float, default=0.1)
    s.add_argument("--max-len", type=int, default=0, help="tokens per input (default: the model's maximum)")
    s.add_argument("--long", choices=["truncate", "chunk"], default="truncate",
                   help="inputs longer than --max-len: truncate, or average predictions over chunks")
    s.add_argument("--max-train", type=int, default=0, help="fine-tune on a fixed random subsample of N examples")
    s.add_argument("--max-dev", type=int, default=0, help="evaluate on a fixed random subsample of N examples")
    s.add_argument("--from-scratch", action="store_true", help="same architecture, random init: the baseline")
    s.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="bf16 autocast or fp32 (auto: bf16 on a GPU and on a CPU with native bf16)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: a GPU when there is one (bf16 autocast there), else the CPU")
    s.add_argument("--patience", type=int, default=0,
                   help="stop a run after N epochs without a dev improvement (default 0: never)")


def cmd_fill_mask(a) -> None:
    import roberta

    if a.top_k < 1:
        raise UserError(f"--top-k {a.top_k}: must be >= 1")
    m = roberta.load(a.checkpoint)
    results = m.fill_mask(a.text, top_k=a.top_k)
    several = bool(results) and isinstance(results[0], list)  # one list per <mask>
    for n, per_mask in enumerate(results if several else [results], start=1):
        if several:
            print(f"<mask> {n} of {len(results)}:")
        for r in per_mask:
            print(f"{r['score']:.4f}  {r['token']!r:>16}  {r['sequence']}")


def cmd_export_hf(a) -> None:
    from roberta.hf import export_hf

    claim_out(a.out, a.overwrite, "export-hf")
    from roberta.downstream.predict import finetuned_dir

    if finetuned_dir(a.checkpoint) is not None:  # a finetune output: a sequence classifier
        from roberta.downstream.hf_classifier import export_classifier

        export_classifier(a.checkpoint, a.out)
        print(f"exported -> {a.out} (transformers.AutoModelForSequenceClassification / pipeline('text-classification') load it)")
        return
    for note in export_hf(a.checkpoint, a.out):
        print(f"note: {note}")
    print(f"exported -> {a.out} (transformers.AutoModelForMaskedLM / AutoTokenizer.from_pretrained load it)")


def cmd_import_hf(a) -> None:
    from roberta.hf import import_hf

    claim_out(a.out, a.overwrite, "import-hf")
    for note in import_hf(a.model, a.out):
        print(f"note: {note}")
    print(f"imported -> {a.out} (continue pretraining with `roberta pretrain --init-from {a.out}`)")


def cmd_quickstart(a) -> None:
    from roberta.quickstart import quickstart

    quickstart(a.out, steps=a.steps)


def cmd_plan(a) -> None:
    from dataclasses import asdict

    from roberta.study.plan import GPU_MEMORY, GPU_PEAK, make_plan, render

    for name, lo in (("gpus", 1), ("vocab_size", 8), ("peak_tflops", 0), ("memory_gb", 0),
                     ("compare_batch", 0), ("compare_steps", 0)):
        if not getattr(a, name) >= lo:  # also refuses NaN
            raise UserError(f"--{name.replace('_', '-')} {getattr(a, name):g}: must be >= {lo}")
    gpu = (a.gpu or "").lower()
    if gpu and gpu not in GPU_PEAK:
        raise UserError(f"--gpu {a.gpu}: unknown; choose one of {', '.join(GPU_PEAK)} or give --peak-tflops")
    peak = a.peak_tflops * 1e12 if a.peak_tflops else GPU_PEAK.get(gpu, 0.0)
    memory = a.memory_gb * 1e9 if a.memory_gb else GPU_MEMORY.get(gpu, 80e9)
    common = dict(vocab_size=a.vocab_size, gpus=a.gpus, peak_flops=peak, mfu=a.mfu, memory=memory, fsdp=a.fsdp,
                  activation_checkpointing=a.activation_checkpointing)
    plans = [make_plan(a.preset, a.batch_size, a.seq_len, a.steps, **common)]
    names = [f"{a.batch_size} x {a.steps:,} steps"]
    if a.compare_batch or a.compare_steps:
        b, s = a.compare_batch or a.batch_size, a.compare_steps or a.steps
        plans.append(make_plan(a.preset, b, a.seq_len, s, **common))
        names.append(f"{b} x {s:,} steps")
    print(f"plan: preset {a.preset}, {a.gpus} x {gpu or 'device'} "
          f"({'peak ' + format(peak / 1e12, '.3g') + ' TFLOP/s' if peak else 'no peak given'}), MFU {a.mfu:.0%}")
    print(render(plans, names))
    print(json.dumps([asdict(p) for p in plans]))


def cmd_ablate(a) -> None:
    from roberta.study.ablate import run_ablation

    tasks = [t for t in (a.glue_tasks or "").split(",") if t]
    try:
        budget = int(float(a.budget_tokens))
    except (ValueError, OverflowError):
        raise UserError(f"--budget-tokens {a.budget_tokens}: expected a number of tokens, e.g. 2e6") from None
    probes = [t for t in (a.probe or "").split(",") if t]
    if probes and not a.glue_dir:
        raise UserError("--probe TASK needs --glue-dir DIR")
    result = run_ablation(a.kind, a.data, budget, a.out, preset=a.preset, sets=a.set,
                          seeds=a.seeds, glue_dir=a.glue_dir, glue_tasks=tasks, custom=a.arms,
                          lr_rule=a.lr_rule, progress=not a.quiet, overwrite=a.overwrite,
                          finetune_args={"epochs": a.ft_epochs, "max_train": a.ft_max_train, "seeds": a.ft_seeds,
                                         "threads": 1},
                          probe_tasks=probes)
    print(Path(a.out, "report.md").read_text())
    print(json.dumps(result))


def cmd_report(a) -> None:
    if len(a.runs) == 1 and a.out is None:
        return _report_run(Path(a.runs[0]))
    if a.out is None:
        raise UserError("report: comparing several runs writes report.md; give it a directory with --out DIR")
    from roberta.study.report import make_report

    result = make_report([Path(r) for r in a.runs], Path(a.out))
    print(Path(a.out, "report.md").read_text())
    print(json.dumps(result))


def _report_run(run: Path) -> None:
    from roberta.runlog import write_loss_plot
    from roberta.study.report import format_summary, run_summary

    summary = run_summary(run)
    print(format_summary(summary))
    print(f"plot: {write_loss_plot(run)}")
    print(json.dumps(summary))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error:` line like every other (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="roberta", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("train-tokenizer", help="train a byte-level BPE tokenizer")
    s.add_argument("inputs", nargs="+", metavar="INPUT")
    s.add_argument("--out", required=True)
    s.add_argument("--vocab-size", type=int, default=50265)
    s.add_argument("--min-frequency", type=int, default=2)
    s.add_argument("--text-field", default="text")
    s.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing what is there")
    s.add_argument("--sample-bytes", default="",
                   help="learn from a uniform document sample of about this much text (e.g. 1G); default: all of it")
    s.add_argument("--seed", type=int, default=0, help="the document sample's seed (with --sample-bytes)")
    s.set_defaults(fn=cmd_train_tokenizer)

    s = sub.add_parser("prepare", help="tokenize a corpus into token shards")
    s.add_argument("inputs", nargs="+", metavar="INPUT")
    s.add_argument("--tokenizer", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--seq-len", type=int, default=512)
    s.add_argument("--valid-fraction", type=float, default=0.02)
    s.add_argument("--text-field", default="text")
    s.add_argument("--workers", type=int, default=0, help="tokenizer processes (default: all cores)")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing what is there")
    s.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("pretrain", help="pretrain a masked language model")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--preset", default="tiny")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--resume", action="store_true")
    s.add_argument("--init-from", default=None, help="start from this checkpoint's weights (continued pretraining)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_pretrain)

    s = sub.add_parser("finetune", help="fine-tune on a GLUE task or any labelled data")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--glue", choices=["sst2", "cola", "mrpc", "rte", "stsb", "mnli", "qnli", "qqp"])
    s.add_argument("--glue-dir")
    s.add_argument("--train", help=".tsv / .csv / .jsonl / .jsonl.gz with a header or fields")
    s.add_argument("--dev")
    s.add_argument("--text-column", default="text")
    s.add_argument("--text-pair-column", default=None)
    s.add_argument("--label-column", default="label")
    s.add_argument("--task", choices=["classification", "regression"], default="classification")
    s.add_argument("--metric", choices=["accuracy", "f1", "mcc", "pearson", "spearman"], default=None,
                   help="the dev metric that selects epoch and lr (default: the task's)")
    _add_finetune_options(s)
    s.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing what is there")
    s.add_argument("--baseline", choices=["scratch"], default=None,
                   help="also fine-tune the same architecture from random init (same examples and seeds, its own "
                        "lr grid) and report the difference with a 95%% paired-bootstrap interval")
    s.add_argument("--baseline-lr-grid", default=None, metavar="LR,LR,...",
                   help="the scratch arm's lr grid (default: the pretrained arm's)")
    s.set_defaults(fn=cmd_finetune)

    s = sub.add_parser("predict", help="label new text with a fine-tuned model (`finetune` output)")
    s.add_argument("--checkpoint", required=True, help="a `roberta finetune` --out directory (or its model/)")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help=".tsv / .csv / .jsonl / .jsonl.gz")
    s.add_argument("--out", required=True, help="preds.jsonl: one JSON object per input row, in input order")
    s.add_argument("--text-column", default="text")
    s.add_argument("--text-pair-column", default=None)
    s.add_argument("--label-column", default=None,
                   help="gold labels: the metric is printed (default: a 'label' column when there is one)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("probe", help="frozen features + logistic regression: what the encoder already knows")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--glue", choices=["sst2", "cola", "mrpc", "rte", "stsb", "mnli", "qnli", "qqp"])
    s.add_argument("--glue-dir")
    s.add_argument("--train")
    s.add_argument("--dev")
    s.add_argument("--text-column", default="text")
    s.add_argument("--text-pair-column", default=None)
    s.add_argument("--label-column", default="label")
    s.add_argument("--task", choices=["classification", "regression"], default="classification")
    s.add_argument("--metric", choices=["accuracy", "f1", "mcc", "pearson", "spearman"], default=None)
    s.add_argument("--baseline", choices=["random"], default=None,
                   help="also probe the same network at random init; report delta and a 95%% interval")
    s.add_argument("--max-len", type=int, default=0)
    s.add_argument("--max-train", type=int, default=0)
    s.add_argument("--max-dev", type=int, default=0)
    s.add_argument("--threads", type=int, default=0)
    s.set_defaults(fn=cmd_probe)

    s = sub.add_parser("evaluate", help="held-out MLM perplexity (--data) or GLUE fine-tuning (--glue-dir)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", default=None, help="prepared data: held-out MLM loss and perplexity")
    s.add_argument("--glue-dir", default=None, help="fine-tune on every GLUE task found here; prints a table")
    s.add_argument("--out", default=None, help="with --glue-dir: keep each task's metrics.json here")
    s.add_argument("--split", default="valid", choices=["valid", "train"])
    s.add_argument("--seq-len", type=int, default=0)
    s.add_argument("--max-sequences", type=int, default=1024)
    _add_finetune_options(s)
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("fill-mask", help="predict the <mask> token in TEXT (each one, if several)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("text", metavar="TEXT")
    s.add_argument("--top-k", type=int, default=5, help="candidates per <mask> (at most the vocabulary)")
    s.set_defaults(fn=cmd_fill_mask)

    s = sub.add_parser("export-hf", help="write a checkpoint as a Hugging Face RobertaForMaskedLM directory")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing what is there")
    s.set_defaults(fn=cmd_export_hf)

    s = sub.add_parser("import-hf", help="turn a local Hugging Face RoBERTa directory into a checkpoint")
    s.add_argument("--model", required=True, help="a directory holding config.json + weights (+ tokenizer), "
                   "or a hub cache directory models--org--name (its refs/main snapshot)")
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing what is there")
    s.set_defaults(fn=cmd_import_hf)

    s = sub.add_parser("quickstart", help="the whole recipe, end to end, on the embedded corpus")
    s.add_argument("--out", default="runs/quickstart")
    s.add_argument("--steps", type=int, default=0, help="override the number of training steps")
    s.set_defaults(fn=cmd_quickstart)

    s = sub.add_parser("plan", help="size a run: tokens, FLOPs, lr, memory, time; compare two recipes")
    s.add_argument("--preset", default="base")
    s.add_argument("--batch-size", type=int, required=True)
    s.add_argument("--seq-len", type=int, default=512)
    s.add_argument("--steps", type=int, required=True)
    s.add_argument("--vocab-size", type=int, default=50265)
    s.add_argument("--gpus", type=int, default=1)
    s.add_argument("--gpu", default="", help="h100, h200, a100, l40s, l4, a10, v100, 4090, 3090")
    s.add_argument("--peak-tflops", type=float, default=0.0, help="per-device peak instead of --gpu")
    s.add_argument("--memory-gb", type=float, default=0.0, help="per-device memory (default: from --gpu, else 80)")
    s.add_argument("--mfu", type=float, default=0.45)
    s.add_argument("--fsdp", action="store_true", help="shard weights and optimizer state over --gpus")
    s.add_argument("--activation-checkpointing", action="store_true",
                   help="as train.activation_checkpointing=true: less activation memory, ~1/3 more time")
    s.add_argument("--compare-batch", type=int, default=0)
    s.add_argument("--compare-steps", type=int, default=0)
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("ablate", help="compare recipes at a matched token budget (the paper's tables)")
    s.add_argument("kind", choices=["masking", "formats", "batch-size", "custom"])
    s.add_argument("--data", required=True)
    s.add_argument("--budget-tokens", required=True, help="real tokens per arm, e.g. 2e6")
    s.add_argument("--out", required=True)
    s.add_argument("--preset", default="tiny")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every arm")
    s.add_argument("--seeds", type=int, default=1)
    s.add_argument("--glue-dir", default=None)
    s.add_argument("--glue-tasks", default="", help="comma-separated, e.g. sst2,rte")
    s.add_argument("--arms", default=None, help="custom: a .toml or .json file of named arms")
    s.add_argument("--ft-epochs", type=int, default=3, help="fine-tuning epochs per task (best dev epoch kept)")
    s.add_argument("--ft-max-train", type=int, default=0, help="fine-tuning examples per task (0 = all)")
    s.add_argument("--ft-seeds", type=int, default=3, help="fine-tuning seeds per task (median reported)")
    s.add_argument("--probe", default="", metavar="TASK[,TASK]",
                   help="add a frozen-feature probe column per arm (e.g. sst2; needs --glue-dir)")
    s.add_argument("--lr-rule", default="sqrt", choices=["sqrt", "linear", "paper", "none"],
                   help="batch-size: how the lr follows the batch")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--overwrite", action="store_true",
                   help="re-run an arm whose directory holds a run of another config or budget")
    s.set_defaults(fn=cmd_ablate)

    s = sub.add_parser("report", help="one run: its numbers and loss.png; several: a comparison table and plots")
    s.add_argument("runs", nargs="+", metavar="RUN_DIR")
    s.add_argument("--out", default=None, help="where the comparison's report.md goes (needed for several runs)")
    s.set_defaults(fn=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
