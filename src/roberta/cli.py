"""`roberta ...` subcommands. Parsing and printing only; the work lives in the modules."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from roberta.errors import UserError


def _config(preset: str, sets: list[str]):
    from roberta.config import apply_overrides
    from roberta.presets import get_preset

    cfg = apply_overrides(get_preset(preset), sets or [])
    explicit = {s.split("=", 1)[0].strip() for s in sets or []}
    return cfg, explicit


def cmd_train_tokenizer(a) -> None:
    from roberta.data.readers import ReadStats, iter_documents
    from roberta.tokenizer import save_tokenizer, train_tokenizer

    stats = ReadStats()
    docs = iter_documents(a.inputs, a.text_field, stats)
    tok = train_tokenizer(docs, vocab_size=a.vocab_size, min_frequency=a.min_frequency)
    if stats.documents == 0:
        raise UserError(f"{' '.join(a.inputs)}: no documents found (empty corpus); {stats.summary()}")
    save_tokenizer(tok, a.out)
    print(f"tokenizer: {tok.get_vocab_size():,} tokens from {stats.summary()} -> {a.out}")


def cmd_prepare(a) -> None:
    from roberta.data.prepare import prepare

    r = prepare(a.inputs, a.tokenizer, a.out, seq_len=a.seq_len, valid_fraction=a.valid_fraction,
                text_field=a.text_field, workers=a.workers, progress=not a.quiet)
    print(r.summary())


def cmd_pretrain(a) -> None:
    from roberta.train import pretrain

    cfg, explicit = _config(a.preset, a.set)
    summary = pretrain(a.data, a.out, cfg, explicit, resume=a.resume, progress=not a.quiet, init_from=a.init_from)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: step {summary['step']}, {summary['tokens']:,} tokens, loss {summary.get('loss', float('nan')):.4f}, "
              f"held-out perplexity {summary['eval_perplexity']:.2f}; checkpoint {summary['checkpoint']}")


def cmd_evaluate(a) -> None:
    from roberta.api import load_model
    from roberta.data.prepare import load_split, read_meta
    from roberta.evaluate import eval_batches, mlm_loss
    from roberta.model import max_seq_len

    model, ck = load_model(a.checkpoint)
    meta = read_meta(a.data)
    if meta["vocab_size"] != model.cfg.vocab_size:
        raise UserError(f"{a.data}: prepared with a {meta['vocab_size']}-token vocabulary but {ck} has "
                        f"{model.cfg.vocab_size}; evaluate on data prepared with the checkpoint's tokenizer")
    split = load_split(a.data, a.split)
    seq_len = a.seq_len or max_seq_len(model.cfg)
    result = mlm_loss(model, eval_batches(split, seq_len, model.cfg.vocab_size, a.max_sequences))
    print(json.dumps(result))


def cmd_fill_mask(a) -> None:
    import roberta

    m = roberta.load(a.checkpoint)
    for r in m.fill_mask(a.text, top_k=a.top_k):
        print(f"{r['score']:.4f}  {r['token']!r:>16}  {r['sequence']}")


def cmd_export_hf(a) -> None:
    from roberta.hf import export_hf

    for note in export_hf(a.checkpoint, a.out):
        print(f"note: {note}")
    print(f"exported -> {a.out} (transformers.AutoModelForMaskedLM / AutoTokenizer.from_pretrained load it)")


def cmd_import_hf(a) -> None:
    from roberta.hf import import_hf

    for note in import_hf(a.model, a.out):
        print(f"note: {note}")
    print(f"imported -> {a.out} (continue pretraining with `roberta pretrain --init-from {a.out}`)")


def cmd_quickstart(a) -> None:
    from roberta.quickstart import quickstart

    quickstart(a.out, steps=a.steps)


def cmd_plan(a) -> None:
    from dataclasses import asdict

    from roberta.plan import GPU_MEMORY, GPU_PEAK, make_plan, render

    gpu = (a.gpu or "").lower()
    if gpu and gpu not in GPU_PEAK:
        raise UserError(f"--gpu {a.gpu}: unknown; choose one of {', '.join(GPU_PEAK)} or give --peak-tflops")
    peak = a.peak_tflops * 1e12 if a.peak_tflops else GPU_PEAK.get(gpu, 0.0)
    memory = a.memory_gb * 1e9 if a.memory_gb else GPU_MEMORY.get(gpu, 80e9)
    common = dict(vocab_size=a.vocab_size, gpus=a.gpus, peak_flops=peak, mfu=a.mfu, memory=memory, fsdp=a.fsdp)
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
    from roberta.ablate import run_ablation

    tasks = [t for t in (a.glue_tasks or "").split(",") if t]
    result = run_ablation(a.kind, a.data, int(float(a.budget_tokens)), a.out, preset=a.preset, sets=a.set,
                          seeds=a.seeds, glue_dir=a.glue_dir, glue_tasks=tasks, custom=a.arms,
                          lr_rule=a.lr_rule, progress=not a.quiet)
    print(Path(a.out, "report.md").read_text())
    print(json.dumps(result))


def cmd_report(a) -> None:
    from roberta.ablate import make_report

    result = make_report([Path(r) for r in a.runs], Path(a.out))
    print(Path(a.out, "report.md").read_text())
    print(json.dumps(result))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roberta", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("train-tokenizer", help="train a byte-level BPE tokenizer")
    s.add_argument("inputs", nargs="+", metavar="INPUT")
    s.add_argument("--out", required=True)
    s.add_argument("--vocab-size", type=int, default=50265)
    s.add_argument("--min-frequency", type=int, default=2)
    s.add_argument("--text-field", default="text")
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

    s = sub.add_parser("evaluate", help="held-out MLM loss and perplexity")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--split", default="valid", choices=["valid", "train"])
    s.add_argument("--seq-len", type=int, default=0)
    s.add_argument("--max-sequences", type=int, default=1024)
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("fill-mask", help="predict the <mask> token in TEXT")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("text", metavar="TEXT")
    s.add_argument("--top-k", type=int, default=5)
    s.set_defaults(fn=cmd_fill_mask)

    s = sub.add_parser("export-hf", help="write a checkpoint as a Hugging Face RobertaForMaskedLM directory")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_export_hf)

    s = sub.add_parser("import-hf", help="turn a local Hugging Face RoBERTa directory into a checkpoint")
    s.add_argument("--model", required=True, help="a directory holding config.json + weights (+ tokenizer)")
    s.add_argument("--out", required=True)
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
    s.add_argument("--gpu", default="", help="h100, h200, a100, l4, a10, v100, 4090")
    s.add_argument("--peak-tflops", type=float, default=0.0, help="per-device peak instead of --gpu")
    s.add_argument("--memory-gb", type=float, default=0.0, help="per-device memory (default: from --gpu, else 80)")
    s.add_argument("--mfu", type=float, default=0.45)
    s.add_argument("--fsdp", action="store_true", help="shard weights and optimizer state over --gpus")
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
    s.add_argument("--lr-rule", default="sqrt", choices=["sqrt", "linear", "paper", "none"],
                   help="batch-size: how the lr follows the batch")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_ablate)

    s = sub.add_parser("report", help="table and plots for finished runs")
    s.add_argument("runs", nargs="+", metavar="RUN_DIR")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
