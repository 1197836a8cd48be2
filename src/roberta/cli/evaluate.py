"""evaluate: held-out masked-token loss of a checkpoint, against the unigram model and the untrained network."""

from __future__ import annotations

import json
import sys

from roberta.cli.common import add_precision, add_quiet, add_threads, command, set_threads
from roberta.errors import UserError


def cmd_evaluate(a) -> None:
    from roberta.training.checkpoint import load_config, load_model
    from roberta.data.prepare import load_split, read_meta
    from roberta.training.evaluate import compare_with_baselines, eval_batches, format_comparison, masked_token_count
    from roberta.model import build_model, max_seq_len
    from roberta.training.parallelize import autocast
    from roberta.training.precision import resolve_precision
    from roberta.tokenizer import check_same_tokenizer

    set_threads(a.threads)
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
    # the network this checkpoint's run started from (its seed): what training changed
    untrained = build_model(model.cfg, device, seed=load_config(ck).train.seed)
    with autocast(device, precision):
        c = compare_with_baselines(model, untrained, load_split(a.data, "train").tokens, meta["vocab_size"],
                                   batches, device, progress=not a.quiet)
    more = "score more with --max-sequences, or run `roberta prepare` with a larger --valid-fraction"
    print("\n".join(format_comparison(c, more, held_out=a.split == "valid")), file=sys.stderr)
    t, u, n = c["trained"], c["unigram"], c["untrained"]
    print(json.dumps({**t, "unigram_loss": u["mlm_loss"], "unigram_perplexity": u["perplexity"],
                      "untrained_loss": n["mlm_loss"], "untrained_perplexity": n["perplexity"],
                      "ratio_to_unigram": c["ratio"], "ratio_interval": list(c["interval"])}))


def register(sub) -> None:
    s = command(sub, "evaluate", "held-out masked-token loss and perplexity of a checkpoint",
                "roberta evaluate --checkpoint runs/r --data data",
                "Held-out masked-token loss and perplexity of a checkpoint on prepared data, beside a unigram\n"
                "model of the training split and the untrained network on the same masked tokens, with the\n"
                "ratio to the unigram model's perplexity and its 95% interval (on stderr; stdout is one JSON\n"
                "line). GLUE fine-tuning moved to `roberta glue`.")
    s.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a run (its latest checkpoint)")
    s.add_argument("--data", required=True, help="a prepare --out directory made with the checkpoint's tokenizer")
    s.add_argument("--split", default="valid", choices=["valid", "train"], help="which split to score")
    s.add_argument("--seq-len", type=int, default=0, help="tokens per sequence (0 = the model's maximum)")
    s.add_argument("--max-sequences", type=int, default=1024, help="score at most this many sequences")
    add_threads(s)
    add_precision(s)
    add_quiet(s)
    s.set_defaults(fn=cmd_evaluate)
