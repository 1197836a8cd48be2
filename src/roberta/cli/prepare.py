"""prepare: a corpus tokenized into token shards with a held-out split."""

from __future__ import annotations

from roberta.cli.common import (TEXT_COLUMN_HELP, add_overwrite, add_quiet, add_renamed, add_threads, command,
                                set_tokenizer_threads)
from roberta.outdir import claim_out


def cmd_prepare(a) -> None:
    from roberta.data.prepare import prepare

    if a.threads == 1:  # one process; and `tokenizers` must not spread its encode_batch over every core
        set_tokenizer_threads(1)
    claim_out(a.out, a.overwrite, "prepare")
    r = prepare(a.inputs, a.tokenizer, a.out, seq_len=a.seq_len, valid_fraction=a.valid_fraction,
                text_field=a.text_column, workers=a.threads, progress=not a.quiet)
    print(r.summary())


def register(sub) -> None:
    s = command(sub, "prepare", "tokenize a corpus into token shards with a held-out split",
                "roberta prepare corpus/ --tokenizer tok --out data --seq-len 512",
                "Tokenize a corpus (the INPUTs train-tokenizer reads) into flat token files, document and\n"
                "sentence offsets and meta.json; documents go to the held-out split by a hash of their text.")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="corpus files or directories")
    s.add_argument("--tokenizer", required=True, help="a train-tokenizer --out (or import-hf --out) directory")
    s.add_argument("--out", required=True, help="the prepared-data directory to write")
    s.add_argument("--seq-len", type=int, default=512, help="tokens per training sequence (pretrain's data.seq_len)")
    s.add_argument("--valid-fraction", type=float, default=0.02, help="share of documents held out")
    s.add_argument("--text-column", default="text", help=TEXT_COLUMN_HELP)
    add_renamed(s, "--text-field", "--text-column")
    add_threads(s, "tokenizer processes (0 = all cores)")
    add_renamed(s, "--workers", "--threads", type=int)
    add_quiet(s)
    add_overwrite(s)
    s.set_defaults(fn=cmd_prepare)
