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

    model, ck = load_model(a.checkpoint)
    meta = read_meta(a.data)
    if meta["vocab_size"] != model.cfg.vocab_size:
        raise UserError(f"{a.data}: prepared with a {meta['vocab_size']}-token vocabulary but {ck} has "
                        f"{model.cfg.vocab_size}; evaluate on data prepared with the checkpoint's tokenizer")
    split = load_split(a.data, a.split)
    seq_len = a.seq_len or model.cfg.max_positions - model.cfg.pad_token_id - 1
    result = mlm_loss(model, eval_batches(split, seq_len, model.cfg.vocab_size, a.max_sequences))
    print(json.dumps(result))


def cmd_fill_mask(a) -> None:
    import roberta

    m = roberta.load(a.checkpoint)
    for r in m.fill_mask(a.text, top_k=a.top_k):
        print(f"{r['score']:.4f}  {r['token']!r:>16}  {r['sequence']}")


def cmd_quickstart(a) -> None:
    from roberta.quickstart import quickstart

    quickstart(a.out, steps=a.steps)


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

    s = sub.add_parser("quickstart", help="the whole recipe, end to end, on the embedded corpus")
    s.add_argument("--out", default="runs/quickstart")
    s.add_argument("--steps", type=int, default=0, help="override the number of training steps")
    s.set_defaults(fn=cmd_quickstart)
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
