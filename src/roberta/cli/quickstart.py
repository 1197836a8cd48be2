"""The quickstart: the whole recipe end to end on text every Python carries."""

from __future__ import annotations

from roberta.cli.common import add_quiet, add_renamed, add_threads, command


def cmd_quickstart(a) -> None:
    from roberta.quickstart import quickstart

    quickstart(a.out, steps=a.max_steps, progress=not a.quiet, threads=a.threads)


def register(sub) -> None:
    s = command(sub, "quickstart", "the whole recipe end to end on text every Python carries (~5 min on a CPU)",
                "roberta quickstart --out runs/quickstart")
    s.add_argument("--out", default="runs/quickstart", help="where corpus, tokenizer, data and run go")
    s.add_argument("--max-steps", type=int, default=0, help="training steps (0 = the quickstart's 1,000)")
    add_renamed(s, "--steps", "--max-steps", type=int)
    add_threads(s, "the pretraining's torch CPU threads (0 = chosen for this machine)")
    add_quiet(s)
    s.set_defaults(fn=cmd_quickstart)
