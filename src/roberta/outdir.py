"""Output directories: a command never silently replaces what is already in its `--out`.

`claim_out` is called before any work: an absent or empty `--out` is fine; a non-empty one is
refused unless the caller says it is the command's own resumable output (`own`) or the user passed
`--overwrite`. The message names the directory and both ways out. pretrain has its own rule
(`--resume`), ablate its own per-arm check, and finetune continues only its own job
(job.json); `settings_diff` names what differs when they refuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from roberta.errors import UserError


def describe(p: Path) -> str:
    """What a directory holds, in a user's words, for error messages."""
    if (p / "meta.json").is_file():
        return "prepared data"
    if (p / "model.safetensors").is_file() or any(p.glob("checkpoint-*")):
        return "a checkpoint or run"
    if (p / "tokenizer.json").is_file():
        return "a tokenizer"
    n = sum(1 for _ in p.iterdir())
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def claim_out(out: str | Path, overwrite: bool, command: str, own: Callable[[Path], bool] | None = None) -> None:
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {p}: is a file, not a directory; choose a new --out")
    if not p.is_dir() or not any(p.iterdir()) or overwrite or (own is not None and own(p)):
        return
    raise UserError(f"--out {p}: not empty (holds {describe(p)}); `roberta {command}` would overwrite it -- "
                    "choose a new --out, or pass --overwrite to replace it")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def with_defaults(old: dict, defaults: dict) -> dict:
    """A record written before a setting existed, with that setting's default filled in (nested):
    the run it records ran with the default, so it must not read as a different run."""
    out = dict(old)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = with_defaults(out[k], v)
    return out


def settings_diff(old: dict, new: dict) -> list[str]:
    """["train.max_tokens 10000 -> 20000", ...] between the record of what is in an --out (an
    ablation arm's, a finetune job's) and what this command would run: the error names these."""
    a, b = _flat(old), _flat(new)
    return [f"{k.removeprefix('config.')} {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
