"""train-tokenizer: a byte-level BPE tokenizer from a corpus."""

from __future__ import annotations

from roberta.cli.common import (TEXT_COLUMN_HELP, add_overwrite, add_quiet, add_renamed, add_threads, command,
                                set_tokenizer_threads)
from roberta.errors import UserError
from roberta.outdir import claim_out


def cmd_train_tokenizer(a) -> None:
    from roberta.data.readers import ReadStats, iter_documents, read_with_progress
    from roberta.tokenizer import save_tokenizer, train_tokenizer

    set_tokenizer_threads(a.threads)
    claim_out(a.out, a.overwrite, "train-tokenizer")
    stats = ReadStats()
    docs = iter_documents(a.inputs, a.text_column, stats)
    if a.sample_bytes:
        from roberta.data.sample import parse_bytes, sample_documents, text_bytes
        want = parse_bytes(a.sample_bytes)
        # a first streamed pass counts the text (its own quiet stats: warnings and totals are reported once)
        total = text_bytes(iter_documents(a.inputs, a.text_column, ReadStats(quiet=True)))
        docs = sample_documents(docs, total, want, a.seed)
        print(f"train-tokenizer: learning from a uniform document sample of ~{min(want, total):,} of {total:,} "
              f"text bytes (seed {a.seed})")
    tok = train_tokenizer(read_with_progress(docs, a.inputs, stats, "train-tokenizer", not a.quiet),
                          vocab_size=a.vocab_size, min_frequency=a.min_frequency)
    if stats.documents == 0:
        raise UserError(f"{' '.join(a.inputs)}: no documents found (empty corpus); {stats.summary()}")
    save_tokenizer(tok, a.out)
    print(f"tokenizer: {tok.get_vocab_size():,} tokens from {stats.summary()} -> {a.out}")


def register(sub) -> None:
    s = command(sub, "train-tokenizer", "train a byte-level BPE tokenizer on a corpus",
                "roberta train-tokenizer corpus/ --out tok --vocab-size 50265",
                "Train a byte-level BPE tokenizer (<s> <pad> </s> <unk> <mask> = ids 0-4; every byte is in the\n"
                "vocabulary). INPUTs are .txt files (documents separated by blank lines), .jsonl / .jsonl.gz,\n"
                ".parquet, Hugging Face save_to_disk directories, or directories of them (recursively).")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="corpus files or directories")
    s.add_argument("--out", required=True, help="the tokenizer directory to write")
    s.add_argument("--vocab-size", type=int, default=50265, help="tokens in the vocabulary, specials included")
    s.add_argument("--min-frequency", type=int, default=2, help="a merge must occur at least this often")
    s.add_argument("--text-column", default="text", help=TEXT_COLUMN_HELP)
    add_renamed(s, "--text-field", "--text-column")
    s.add_argument("--sample-bytes", default="",
                   help="learn from a uniform document sample of about this much text (e.g. 1G; default: all of it)")
    s.add_argument("--seed", type=int, default=0, help="the document sample's seed (with --sample-bytes)")
    add_threads(s, "tokenizer training threads (0 = all cores)")
    add_quiet(s)
    add_overwrite(s)
    s.set_defaults(fn=cmd_train_tokenizer)
