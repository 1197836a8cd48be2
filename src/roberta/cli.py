"""The `roberta` command line: the parser (help, defaults, examples, old flag names) and one
short function per command that calls the module doing the work and prints its result."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

from roberta.errors import UserError
from roberta.outdir import claim_out


def _config(preset: str, sets: list[str], saved: str | None = None):
    from roberta.config import Config, apply_overrides
    from roberta.presets import get_preset

    if saved is None:
        return apply_overrides(get_preset(preset), sets or [])
    path = Path(saved)
    if path.is_dir():  # a run directory (or a checkpoint): its config.json, else its latest checkpoint's
        from roberta.checkpoint import latest_checkpoint

        latest = latest_checkpoint(path) if not (path / "config.json").is_file() else None
        path = (latest or path) / "config.json"
    try:
        saved_dict = json.loads(path.read_text())
        sections = {f.name for f in dataclasses.fields(Config)}
        if not isinstance(saved_dict, dict) or not {"model", "train"} <= saved_dict.keys() <= sections:
            raise ValueError(f"its keys are not the config's sections {', '.join(sorted(sections))}")
        base = Config.from_dict(saved_dict)
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise UserError(f"--config {saved}: not a run's config.json ({e}); pass RUN/config.json of a pretraining "
                        "run") from None
    # config.json holds the run as it ran: nothing left to derive, the lr already scaled (runs written
    # before lr_scaling was reset to none on resolution still say sqrt/linear: do not scale twice)
    base.train = dataclasses.replace(base.train, lr_scaling="none")
    return apply_overrides(base, sets or [])


def cmd_train_tokenizer(a) -> None:
    from roberta.data.readers import ReadStats, iter_documents, read_with_progress
    from roberta.tokenizer import save_tokenizer, train_tokenizer

    claim_out(a.out, a.overwrite, "train-tokenizer")
    stats = ReadStats()
    docs = iter_documents(a.inputs, a.text_column, stats)
    if a.sample_bytes:
        from roberta.data.sample import parse_bytes, sample_documents, text_bytes
        want = parse_bytes(a.sample_bytes)
        # a first streamed pass counts the text (its own stats: warnings and totals are reported once)
        total = text_bytes(iter_documents(a.inputs, a.text_column, ReadStats()))
        docs = sample_documents(docs, total, want, a.seed)
        print(f"train-tokenizer: learning from a uniform document sample of ~{min(want, total):,} of {total:,} "
              f"text bytes (seed {a.seed})")
    tok = train_tokenizer(read_with_progress(docs, a.inputs, stats, "train-tokenizer", not a.quiet),
                          vocab_size=a.vocab_size, min_frequency=a.min_frequency)
    if stats.documents == 0:
        raise UserError(f"{' '.join(a.inputs)}: no documents found (empty corpus); {stats.summary()}")
    save_tokenizer(tok, a.out)
    print(f"tokenizer: {tok.get_vocab_size():,} tokens from {stats.summary()} -> {a.out}")


def cmd_prepare(a) -> None:
    from roberta.data.prepare import prepare

    claim_out(a.out, a.overwrite, "prepare")
    r = prepare(a.inputs, a.tokenizer, a.out, seq_len=a.seq_len, valid_fraction=a.valid_fraction,
                text_field=a.text_column, workers=a.workers, progress=not a.quiet)
    print(r.summary())


def resume_command(a) -> str:
    """The command line that continues this run: the same data, directory, preset and settings."""
    args = ["roberta", "pretrain", "--data", a.data, "--out", a.out]
    args += ["--config", a.config] if a.config else ["--preset", a.preset] if a.preset != "tiny" else []
    for item in a.set:
        args += ["--set", item]
    return shlex.join(args + ["--resume"])


def cmd_pretrain(a) -> int:
    from roberta.interrupt import TrainingInterrupted
    from roberta.train import pretrain

    if a.config and a.preset != "tiny":
        raise UserError("pass --config (a saved run) or --preset, not both; --set works on top of either")
    for flag, key in (("threads", "train.threads"), ("device", "train.device"), ("precision", "train.precision")):
        if getattr(a, flag) is not None:
            a.set = [*a.set, f"{key}={getattr(a, flag)}"]
    cfg = _config(a.preset, a.set, a.config)
    note = seq_len_warning(a.preset, cfg, a.data)
    if note and int(os.environ.get("RANK", "0")) == 0:
        print(f"warning: {note}", file=sys.stderr)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        summary = pretrain(a.data, a.out, cfg, resume=a.resume, progress=not a.quiet, init_from=a.checkpoint)
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
    from roberta.checkpoint import load_model
    from roberta.data.prepare import load_split, read_meta
    from roberta.evaluate import eval_batches, masked_token_count, mlm_loss
    from roberta.model import max_seq_len
    from roberta.parallelize import autocast
    from roberta.precision import resolve_precision
    from roberta.tokenizer import check_same_tokenizer

    _set_threads(a.threads)
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
        result = mlm_loss(model, batches, progress=not a.quiet)
    print(json.dumps(result))


def cmd_glue(a) -> None:
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
                          patience=a.patience, progress=not a.quiet)


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

    _set_threads(a.threads)
    model = Finetuned(a.checkpoint, device=a.device, precision=a.precision)
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
    metrics = predict_files(model, examples, has_labels, a.out, a.batch_size, progress=not a.quiet)
    print(f"{len(examples):,} predictions -> {a.out}")
    if metrics is not None:
        print(f"{model.metric} {100 * metrics[model.metric]:.2f} on {len(examples):,} labelled rows")
        print(json.dumps(metrics))


def cmd_probe(a) -> None:
    from roberta.downstream.probe import ProbeConfig, probe

    task = _task_from_args(a, "probe")
    if a.metric:
        task.metric = a.metric
    cfg = ProbeConfig(max_len=a.seq_len, max_train=a.max_train, max_dev=a.max_dev, threads=a.threads,
                      progress=not a.quiet)
    r = probe(task, a.checkpoint, a.out, cfg, baseline=a.baseline)
    keys = ("task", "metric", "value") + (("baseline_value", "delta", "interval") if a.baseline else ())
    print(json.dumps({k: r[k] for k in keys}))


def _add_finetune_options(s: argparse.ArgumentParser) -> None:
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
    _renamed(s, "--max-len", "--seq-len", type=int)
    s.add_argument("--long", choices=["truncate", "chunk"], default="truncate",
                   help="inputs longer than --seq-len: truncate, or average predictions over chunks")
    s.add_argument("--max-train", type=int, default=0, help="fine-tune on a fixed random subsample of N examples (0 = all)")
    s.add_argument("--max-dev", type=int, default=0, help="evaluate on a fixed random subsample of N examples (0 = all)")
    s.add_argument("--from-scratch", action="store_true", help="same architecture, random init: the baseline")
    _add_threads(s)
    _add_precision(s)
    _add_device(s)
    s.add_argument("--patience", type=int, default=0,
                   help="stop a run after N epochs without a dev improvement (0 = never)")
    _add_quiet(s)


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
    for note in import_hf(a.checkpoint, a.out):
        print(f"note: {note}")
    print(f"imported -> {a.out} (continue pretraining with `roberta pretrain --checkpoint {a.out}`)")


def cmd_quickstart(a) -> None:
    from roberta.quickstart import quickstart

    quickstart(a.out, steps=a.max_steps, progress=not a.quiet)


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
    plans = [make_plan(a.preset, a.batch_size, a.seq_len, a.max_steps, **common)]
    names = [f"{a.batch_size} x {a.max_steps:,} steps"]
    if a.compare_batch or a.compare_steps:
        b, s = a.compare_batch or a.batch_size, a.compare_steps or a.max_steps
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
        budget = int(float(a.max_tokens))
    except (ValueError, OverflowError):
        raise UserError(f"--max-tokens {a.max_tokens}: expected a number of tokens, e.g. 2e6") from None
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


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and examples print as written; every flag shows its default (but not the
    uninformative ones: off switches and "not given")."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=min(100, shutil.get_terminal_size().columns))

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):  # argparse measures command names 2 columns short
            self._action_max_length += 2

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if default is None or isinstance(default, bool) or default in ("", [], argparse.SUPPRESS) or "%(default)" in text:
            return text
        if default == 0 and "(0 = " in text:  # the help already says what 0 means
            return text.replace("(0 = ", "(default: 0 = ")
        return super()._get_help_string(action)


class _Renamed(argparse.Action):
    """An old spelling of a flag: still works, says once on stderr what it is called now."""

    def __init__(self, option_strings, dest, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"note: {option_string} is now {self.new} (the old name still works, but will go)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _renamed(s: argparse.ArgumentParser, old: str, new: str, **kwargs) -> None:
    dest = new.lstrip("-").replace("-", "_")
    s.add_argument(old, dest=dest, action=_Renamed, new=new, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                   **kwargs)


# `roberta evaluate --glue-dir` fine-tuned on GLUE before `roberta glue` existed
_MOVED_COMMANDS = {("evaluate", "--glue-dir"): "glue"}

GLUE_TASKS = ["sst2", "cola", "mrpc", "rte", "stsb", "mnli", "qnli", "qqp"]
OVERWRITE_HELP = "write into a non-empty --out, replacing what is there"
QUIET_HELP = "no progress bar"
TEXT_COLUMN_HELP = "the text field of .jsonl / .parquet / Arrow inputs"

DESCRIPTION = """\
Pretrain RoBERTa-style masked language models on your own text -- on a laptop CPU, one GPU or many
GPUs through torchrun -- with the paper's recipe (masking, input format, batch size, lr scaling) as
switches; then measure, fine-tune, use and export them."""

EPILOG = """\
example (a few minutes on a laptop CPU; any .txt / .jsonl / .parquet corpus works):
  roberta train-tokenizer corpus.jsonl --out tok --vocab-size 8000
  roberta prepare corpus.jsonl --tokenizer tok --out data --seq-len 128
  roberta pretrain --data data --out run --preset tiny --set train.max_steps=300
  roberta evaluate --checkpoint run --data data
  roberta fill-mask --checkpoint run "Return the <mask> of the list."

`roberta COMMAND --help` shows a command's flags and an example; docs/commands.md has them all.
Flags name command options; a pretraining setting is a config key, `--set section.key=value`
(docs/config.md lists them)."""


def _command(sub, name: str, summary: str, example: str, description: str = "") -> argparse.ArgumentParser:
    return sub.add_parser(name, help=summary, description=(description or summary[0].upper() + summary[1:] + "."),
                          epilog="example:\n" + "\n".join("  " + ln for ln in example.strip().splitlines()),
                          formatter_class=_Formatter)


def _add_preset(s: argparse.ArgumentParser, default: str,
                help: str = "the starting Config (docs/config.md: each preset's values)") -> None:
    from roberta.presets import PRESETS

    s.add_argument("--preset", default=default, choices=list(PRESETS), help=help)


def _add_sets(s: argparse.ArgumentParser, what: str = "") -> None:
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. train.max_steps=500 (repeatable; docs/config.md)" + what)


def _add_threads(s: argparse.ArgumentParser) -> None:
    s.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")


def _set_threads(n: int) -> None:
    import torch

    if n < 0:
        raise UserError(f"--threads {n}: must be >= 0 (0 = torch's default)")
    if n:
        torch.set_num_threads(n)


def _add_precision(s: argparse.ArgumentParser, default: str | None = "auto",
                   help: str = "bf16 autocast or fp32 (auto: bf16 on a GPU and on a CPU with native bf16)") -> None:
    s.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=default, help=help)


def _add_device(s: argparse.ArgumentParser, default: str | None = "auto",
                help: str = "auto: a GPU when there is one (bf16 autocast there), else the CPU") -> None:
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=default, help=help)


def _add_quiet(s: argparse.ArgumentParser) -> None:
    s.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def _add_overwrite(s: argparse.ArgumentParser) -> None:
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def _add_task_options(s: argparse.ArgumentParser) -> None:
    """Which labelled data: a GLUE task by name, or any file with named columns."""
    s.add_argument("--glue", choices=GLUE_TASKS, help="a GLUE task by name (needs --glue-dir)")
    s.add_argument("--glue-dir", help="the GLUE data directory (one subdirectory per task, as distributed)")
    s.add_argument("--train", help="training examples: .tsv / .csv / .jsonl / .jsonl.gz with a header or fields")
    s.add_argument("--dev", help="dev examples, same format: selects the epoch and lr, and is reported")
    s.add_argument("--text-column", default="text", help="the column (field) holding the text")
    s.add_argument("--text-pair-column", default=None, help="the second text of a sentence-pair task")
    s.add_argument("--label-column", default="label", help="the column holding the label")
    s.add_argument("--task", choices=["classification", "regression"], default="classification",
                   help="what the labels are (with --train/--dev)")
    s.add_argument("--metric", choices=["accuracy", "f1", "mcc", "pearson", "spearman"], default=None,
                   help="the dev metric that selects epoch and lr (default: the task's)")


def build_parser() -> argparse.ArgumentParser:
    from roberta import __version__

    p = _Parser(prog="roberta", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter)
    p.add_argument("--version", action="version", version=f"roberta {__version__}")
    sub = p.add_subparsers(dest="command", required=True, title="commands (in workflow order)", metavar="COMMAND")

    s = _command(sub, "quickstart", "the whole recipe end to end on text every Python carries (~8 min on a CPU)",
                 "roberta quickstart --out runs/quickstart")
    s.add_argument("--out", default="runs/quickstart", help="where corpus, tokenizer, data and run go")
    s.add_argument("--max-steps", type=int, default=0, help="training steps (0 = the quickstart's 1,000)")
    _renamed(s, "--steps", "--max-steps", type=int)
    _add_quiet(s)
    s.set_defaults(fn=cmd_quickstart)

    s = _command(sub, "train-tokenizer", "train a byte-level BPE tokenizer on a corpus",
                 "roberta train-tokenizer corpus/ --out tok --vocab-size 50265",
                 "Train a byte-level BPE tokenizer (<s> <pad> </s> <unk> <mask> = ids 0-4; every byte is in the\n"
                 "vocabulary). INPUTs are .txt files (documents separated by blank lines), .jsonl / .jsonl.gz,\n"
                 ".parquet, Hugging Face save_to_disk directories, or directories of them (recursively).")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="corpus files or directories")
    s.add_argument("--out", required=True, help="the tokenizer directory to write")
    s.add_argument("--vocab-size", type=int, default=50265, help="tokens in the vocabulary, specials included")
    s.add_argument("--min-frequency", type=int, default=2, help="a merge must occur at least this often")
    s.add_argument("--text-column", default="text", help=TEXT_COLUMN_HELP)
    _renamed(s, "--text-field", "--text-column")
    s.add_argument("--sample-bytes", default="",
                   help="learn from a uniform document sample of about this much text (e.g. 1G; default: all of it)")
    s.add_argument("--seed", type=int, default=0, help="the document sample's seed (with --sample-bytes)")
    _add_quiet(s)
    _add_overwrite(s)
    s.set_defaults(fn=cmd_train_tokenizer)

    s = _command(sub, "prepare", "tokenize a corpus into token shards with a held-out split",
                 "roberta prepare corpus/ --tokenizer tok --out data --seq-len 512",
                 "Tokenize a corpus (the INPUTs train-tokenizer reads) into flat token files, document and\n"
                 "sentence offsets and meta.json; documents go to the held-out split by a hash of their text.")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="corpus files or directories")
    s.add_argument("--tokenizer", required=True, help="a train-tokenizer --out (or import-hf --out) directory")
    s.add_argument("--out", required=True, help="the prepared-data directory to write")
    s.add_argument("--seq-len", type=int, default=512, help="tokens per training sequence (pretrain's data.seq_len)")
    s.add_argument("--valid-fraction", type=float, default=0.02, help="share of documents held out")
    s.add_argument("--text-column", default="text", help=TEXT_COLUMN_HELP)
    _renamed(s, "--text-field", "--text-column")
    s.add_argument("--workers", type=int, default=0, help="tokenizer processes (0 = all cores)")
    _add_quiet(s)
    _add_overwrite(s)
    s.set_defaults(fn=cmd_prepare)

    s = _command(sub, "pretrain", "pretrain a masked language model on prepared data",
                 "roberta pretrain --data data --out runs/r --preset tiny --set train.max_time=2h\n"
                 "roberta pretrain --data data --out runs/r --resume                # continue where it stopped\n"
                 "roberta pretrain --data data --out runs/r2 --config runs/r/config.json   # the same run again\n"
                 "torchrun --nproc-per-node 8 -m roberta pretrain --data data --out runs/base --preset base",
                 "Pretrain a masked language model. The run is one typed Config: a --preset (or a saved\n"
                 "--config), then each --set on top; docs/config.md lists every key.")
    s.add_argument("--data", required=True, help="a prepare --out directory")
    s.add_argument("--out", required=True, help="the run directory: checkpoints, metrics.jsonl, summary.json")
    _add_preset(s, "tiny")
    s.add_argument("--config", default=None, metavar="CONFIG_JSON",
                   help="re-run a saved run exactly: its RUN/config.json (or the RUN directory); instead of --preset")
    _add_sets(s)
    s.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    s.add_argument("--checkpoint", default=None,
                   help="start from this checkpoint's weights (continued pretraining; import-hf makes one)")
    _renamed(s, "--init-from", "--checkpoint")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads: shorthand for --set train.threads=N (default: the preset's, 0 = torch's)")
    _add_device(s, default=None, help="shorthand for --set train.device=DEVICE (default: auto, a GPU when there is one)")
    _add_precision(s, default=None, help="shorthand for --set train.precision=P "
                   "(default: auto, bf16 on a GPU and on a CPU with native bf16)")
    _add_quiet(s)
    s.set_defaults(fn=cmd_pretrain)

    s = _command(sub, "evaluate", "held-out masked-token loss and perplexity of a checkpoint",
                 "roberta evaluate --checkpoint runs/r --data data",
                 "Held-out masked-token loss and perplexity of a checkpoint on prepared data (the last line\n"
                 "printed is JSON). GLUE fine-tuning moved to `roberta glue`.")
    s.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a run (its latest checkpoint)")
    s.add_argument("--data", required=True, help="a prepare --out directory made with the checkpoint's tokenizer")
    s.add_argument("--split", default="valid", choices=["valid", "train"], help="which split to score")
    s.add_argument("--seq-len", type=int, default=0, help="tokens per sequence (0 = the model's maximum)")
    s.add_argument("--max-sequences", type=int, default=1024, help="score at most this many sequences")
    _add_threads(s)
    _add_precision(s)
    _add_quiet(s)
    s.set_defaults(fn=cmd_evaluate)

    s = _command(sub, "finetune", "fine-tune on a GLUE task or any labelled data",
                 "roberta finetune --checkpoint runs/r --glue sst2 --glue-dir glue --out ft/sst2 --seeds 3\n"
                 "roberta finetune --checkpoint runs/r --train train.jsonl --dev dev.jsonl --out ft/mine")
    s.add_argument("--checkpoint", required=True, help="the pretrained checkpoint (or run) to start from")
    s.add_argument("--out", required=True, help="where metrics.json, labels.json and runs.jsonl go")
    _add_task_options(s)
    _add_finetune_options(s)
    s.add_argument("--baseline", choices=["scratch"], default=None,
                   help="also fine-tune the same architecture from random init (same examples and seeds, its own "
                        "lr grid) and report the difference with a 95%% paired-bootstrap interval")
    s.add_argument("--baseline-lr-grid", default=None, metavar="LR,LR,...",
                   help="the scratch arm's lr grid (default: the pretrained arm's)")
    _add_overwrite(s)
    s.set_defaults(fn=cmd_finetune)

    s = _command(sub, "glue", "fine-tune on every GLUE task found; print the paper's table",
                 "roberta glue --checkpoint runs/r --glue-dir glue --out ft/glue --lr-grid")
    s.add_argument("--checkpoint", required=True, help="the pretrained checkpoint (or run) to start from")
    s.add_argument("--glue-dir", required=True, help="the GLUE data directory (one subdirectory per task)")
    s.add_argument("--out", default=None, help="keep each task's metrics.json here (default: not kept)")
    _add_finetune_options(s)
    s.set_defaults(fn=cmd_glue)

    s = _command(sub, "predict", "label new text with a fine-tuned model (a `finetune` output)",
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
    _add_device(s)
    _add_threads(s)
    _add_precision(s)
    _add_quiet(s)
    s.set_defaults(fn=cmd_predict)

    s = _command(sub, "probe", "frozen features + logistic regression: what the encoder already knows",
                 "roberta probe --checkpoint runs/r --glue sst2 --glue-dir glue --out probe/sst2 --baseline random")
    s.add_argument("--checkpoint", required=True, help="the pretrained checkpoint (or run) to probe")
    s.add_argument("--out", required=True, help="where metrics.json goes")
    _add_task_options(s)
    s.add_argument("--baseline", choices=["random"], default=None,
                   help="also probe the same network at random init; report the difference and a 95%% interval")
    s.add_argument("--seq-len", type=int, default=0, help="tokens per input, <s> </s> included (0 = the model's maximum)")
    _renamed(s, "--max-len", "--seq-len", type=int)
    s.add_argument("--max-train", type=int, default=0, help="a fixed random subsample of N training examples (0 = all)")
    s.add_argument("--max-dev", type=int, default=0, help="a fixed random subsample of N dev examples (0 = all)")
    _add_threads(s)
    _add_quiet(s)
    s.set_defaults(fn=cmd_probe)

    s = _command(sub, "fill-mask", "predict the <mask> token in TEXT (each one, if several)",
                 "roberta fill-mask --checkpoint runs/r \"The capital of France is <mask>.\"")
    s.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a run (its latest checkpoint)")
    s.add_argument("text", metavar="TEXT", help="text with one or more <mask>")
    s.add_argument("--top-k", type=int, default=5, help="candidates per <mask> (at most the vocabulary)")
    s.set_defaults(fn=cmd_fill_mask)

    s = _command(sub, "export-hf", "write a checkpoint or a fine-tuned model as a Hugging Face model directory",
                 "roberta export-hf --checkpoint runs/r --out hf-model        # RobertaForMaskedLM\n"
                 "roberta export-hf --checkpoint ft/mine --out hf-classifier  # RobertaForSequenceClassification")
    s.add_argument("--checkpoint", required=True,
                   help="a checkpoint or run (-> RobertaForMaskedLM), or a finetune --out (-> a sequence classifier)")
    s.add_argument("--out", required=True, help="the transformers model directory to write")
    _add_overwrite(s)
    s.set_defaults(fn=cmd_export_hf)

    s = _command(sub, "import-hf", "turn a local Hugging Face RoBERTa directory into a checkpoint",
                 "roberta import-hf --checkpoint ~/.cache/huggingface/hub/models--FacebookAI--roberta-base --out imported")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a directory holding config.json + weights (+ tokenizer), or a hub "
                       "cache directory models--org--name (its refs/main snapshot)")
    which.add_argument("--model", dest="checkpoint", action=_Renamed, new="--checkpoint", help=argparse.SUPPRESS)
    s.add_argument("--out", required=True, help="the checkpoint directory to write")
    _add_overwrite(s)
    s.set_defaults(fn=cmd_import_hf)

    s = _command(sub, "plan", "size a run: tokens, FLOPs, lr, memory, time; compare two recipes",
                 "roberta plan --preset base --batch-size 8192 --max-steps 500000 --gpus 8 --gpu h100 \\\n"
                 "             --compare-batch 256 --compare-steps 1000000")
    _add_preset(s, "base", "the model whose parameters and FLOPs are counted")
    s.add_argument("--batch-size", type=int, required=True, help="global batch in sequences")
    s.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--max-steps", type=int, help="optimizer steps")
    which.add_argument("--steps", dest="max_steps", type=int, action=_Renamed, new="--max-steps", help=argparse.SUPPRESS)
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

    s = _command(sub, "ablate", "compare recipes at a matched token budget (the paper's tables)",
                 "roberta ablate masking --data data --max-tokens 2e6 --out abl/masking --seeds 3\n"
                 "roberta ablate custom --data data --max-tokens 2e6 --out abl/mine --arms arms.toml")
    s.add_argument("kind", choices=["masking", "formats", "batch-size", "custom"],
                   help="masking: static vs dynamic; formats: the four input formats; batch-size: 256/2K/8K-style "
                        "batches with --lr-rule; custom: the arms in --arms")
    s.add_argument("--data", required=True, help="a prepare --out directory")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--max-tokens", help="real tokens per arm (train.max_tokens), e.g. 2e6")
    which.add_argument("--budget-tokens", dest="max_tokens", action=_Renamed, new="--max-tokens",
                       help=argparse.SUPPRESS)
    s.add_argument("--out", required=True, help="one run directory per arm and seed, and report.md")
    _add_preset(s, "tiny", "every arm's starting Config (docs/config.md)")
    _add_sets(s, "; applied to every arm")
    s.add_argument("--seeds", type=int, default=1, help="runs per arm; a difference must exceed their spread")
    s.add_argument("--glue-dir", default=None, help="fine-tune each arm on GLUE tasks from here")
    s.add_argument("--glue-tasks", default="", help="comma-separated, e.g. sst2,rte (with --glue-dir)")
    s.add_argument("--arms", default=None, help="custom: a .toml or .json file of named arms")
    s.add_argument("--ft-epochs", type=int, default=3, help="fine-tuning epochs per task (best dev epoch kept)")
    s.add_argument("--ft-max-train", type=int, default=0, help="fine-tuning examples per task (0 = all)")
    s.add_argument("--ft-seeds", type=int, default=3, help="fine-tuning seeds per task (median reported)")
    s.add_argument("--probe", default="", metavar="TASK[,TASK]",
                   help="add a frozen-feature probe column per arm (e.g. sst2; needs --glue-dir)")
    s.add_argument("--lr-rule", default="sqrt", choices=["sqrt", "linear", "paper", "none"],
                   help="batch-size: how the lr follows the batch")
    _add_quiet(s)
    s.add_argument("--overwrite", action="store_true",
                   help="re-run an arm whose directory holds a run of another config or budget")
    s.set_defaults(fn=cmd_ablate)

    s = _command(sub, "report", "one run: its numbers and loss.png; several: a comparison table and plots",
                 "roberta report runs/r\nroberta report runs/a runs/b --out cmp")
    s.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished (or running) pretraining runs")
    s.add_argument("--out", default=None, help="where the comparison's report.md goes (needed for several runs)")
    s.set_defaults(fn=cmd_report)
    return p


def commands_markdown(parser: argparse.ArgumentParser) -> str:
    """docs/commands.md: the top-level help, then every command's --help as a terminal of 100
    columns shows it (`python -m roberta --markdown > docs/commands.md`)."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        commands = parser._subparsers._group_actions[0].choices  # in workflow order
        parts = ["# Commands\n\n<!-- generated by `python -m roberta --markdown > docs/commands.md`; "
                 "tests/test_docs.py checks it is current -->\n\n",
                 "".join(f"- [`roberta {name}`](#roberta-{name}): {action.help}\n"
                         for name, action in zip(commands, parser._subparsers._group_actions[0]._choices_actions)),
                 f"\n```text\n{parser.format_help()}```\n"]
        parts += [f"\n## roberta {name}\n\n```text\n{sub.format_help()}```\n" for name, sub in commands.items()]
        return "".join(parts)
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _moved(argv: list[str]) -> list[str]:
    """Old command lines that now belong to another command: say so, run the new one."""
    for (old, flag), new in _MOVED_COMMANDS.items():
        if argv[:1] == [old] and any(a == flag or a.startswith(flag + "=") for a in argv):
            print(f"note: `roberta {old} {flag}` is now `roberta {new}` (the old form still works, but will go)",
                  file=sys.stderr)
            return [new, *argv[1:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = _moved(list(sys.argv[1:] if argv is None else argv))
    if argv[:1] == ["--markdown"]:  # docs/commands.md is this output (tests/test_docs.py keeps it current)
        print(commands_markdown(build_parser()), end="")
        return 0
    args = build_parser().parse_args(argv)
    try:
        code = args.fn(args) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _end_process(code)
    return code


def _end_process(code: int) -> None:
    """Under torchrun, end the process as soon as the command is done (its files are closed by
    then): torch's gloo threads can abort the interpreter's own teardown ("terminate called without
    an active exception", exit -6), after a clean run now and then, and often when a peer died."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
