"""What every command's parser shares: one-line usage errors, help that shows defaults and
examples, old flag names, and the flags several commands take."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from roberta.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error:` line like every other (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
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


class Renamed(argparse.Action):
    """An old spelling of a flag: still works, says once on stderr what it is called now."""

    def __init__(self, option_strings, dest, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"note: {option_string} is now {self.new} (the old name still works, but will go)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_renamed(s: argparse.ArgumentParser, old: str, new: str, **kwargs) -> None:
    dest = new.lstrip("-").replace("-", "_")
    s.add_argument(old, dest=dest, action=Renamed, new=new, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                   **kwargs)

OVERWRITE_HELP = "write into a non-empty --out, replacing what is there"


QUIET_HELP = "no progress bar"


TEXT_COLUMN_HELP = "the text field of .jsonl / .parquet / Arrow inputs"


def command(sub, name: str, summary: str, example: str, description: str = "") -> argparse.ArgumentParser:
    return sub.add_parser(name, help=summary, description=(description or summary[0].upper() + summary[1:] + "."),
                          epilog="example:\n" + "\n".join("  " + ln for ln in example.strip().splitlines()),
                          formatter_class=Formatter)


def add_preset(s: argparse.ArgumentParser, default: str,
                help: str = "the starting Config (docs/config.md: each preset's values)") -> None:
    from roberta.presets import PRESETS

    s.add_argument("--preset", default=default, choices=list(PRESETS), help=help)


def add_sets(s: argparse.ArgumentParser, what: str = "") -> None:
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. train.max_steps=500 (repeatable; docs/config.md)" + what)


def add_threads(s: argparse.ArgumentParser, help: str = "torch CPU threads (0 = torch's default)") -> None:
    s.add_argument("--threads", type=int, default=0, help=help)


def set_threads(n: int) -> None:
    import torch

    if n < 0:
        raise UserError(f"--threads {n}: must be >= 0 (0 = torch's default)")
    if n:
        torch.set_num_threads(n)


def set_tokenizer_threads(n: int) -> None:
    """The threads `tokenizers` uses in this process (0 = its default: all cores). It reads the
    environment once, when its Rust thread pool (rayon) first starts: call this before any
    tokenizer work. One thread is TOKENIZERS_PARALLELISM=false (no pool); more, RAYON_NUM_THREADS."""
    if n < 0:
        raise UserError(f"--threads {n}: must be >= 0 (0 = all cores)")
    if n:
        os.environ["TOKENIZERS_PARALLELISM"] = "false" if n == 1 else "true"
        os.environ["RAYON_NUM_THREADS"] = str(n)


def add_precision(s: argparse.ArgumentParser, default: str | None = "auto",
                   help: str = "bf16 autocast or fp32 (auto: bf16 on a GPU and on a CPU with native bf16)") -> None:
    s.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=default, help=help)


def add_device(s: argparse.ArgumentParser, default: str | None = "auto",
                help: str = "auto: a GPU when there is one (bf16 autocast there), else the CPU") -> None:
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=default, help=help)


def add_quiet(s: argparse.ArgumentParser) -> None:
    s.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def add_overwrite(s: argparse.ArgumentParser) -> None:
    s.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
