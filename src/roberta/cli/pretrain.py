"""pretrain: a saved config or a preset, --set on top, then the training loop; resume and interrupts."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from roberta.cli.common import add_device, add_precision, add_preset, add_quiet, add_renamed, add_sets, command
from roberta.errors import UserError


def load_run_config(path: Path, flag: str):
    """A run's config.json (or a run directory's: its own, else its latest checkpoint's) as the run
    trained with it: nothing left to derive, the lr already scaled."""
    from roberta.config import Config

    if path.is_dir():
        from roberta.training.checkpoint import latest_checkpoint

        latest = latest_checkpoint(path) if not (path / "config.json").is_file() else None
        path = (latest or path) / "config.json"
    try:
        saved_dict = json.loads(path.read_text())
        sections = {f.name for f in dataclasses.fields(Config)}
        if not isinstance(saved_dict, dict) or not {"model", "train"} <= saved_dict.keys() <= sections:
            raise ValueError(f"its keys are not the config's sections {', '.join(sorted(sections))}")
        base = Config.from_dict(saved_dict)
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise UserError(f"{flag}: {path} is not a run's config.json ({e}); pass RUN/config.json of a pretraining "
                        "run") from None
    # runs written before lr_scaling was reset to none on resolution still say sqrt/linear: do not scale twice
    base.train = dataclasses.replace(base.train, lr_scaling="none")
    return base


def saved_run(out: str) -> Path | None:
    """The run directory --resume continues, when --out holds one (its config.json or a checkpoint)."""
    from roberta.training.checkpoint import latest_checkpoint

    path = Path(out)
    return path if (path / "config.json").is_file() or latest_checkpoint(path) else None


def run_config(a, notes: list[str] | None = None):
    """The Config to train. --resume of a run in --out: its saved config, each --set on top (the
    trainer then refuses anything but a raised budget or a runtime setting). A --preset or --config
    given with --resume must describe the saved run; the budget still changes only where a --set
    names it. Otherwise: the --preset (default tiny) or the --config, each --set on top; with
    --checkpoint, the preset's lr and warmup fitted to continued pretraining first (a --set still
    wins), and what was chosen and why appended to `notes`."""
    from roberta.config import RESUME_BUDGETS, apply_overrides, continued_pretraining
    from roberta.presets import get_preset

    run = saved_run(a.out) if a.resume else None
    if run is not None and not (a.preset or a.config):
        return fit_micro_batch(apply_overrides(load_run_config(run, "--resume"), a.set))
    base = load_run_config(Path(a.config), "--config") if a.config else get_preset(a.preset or "tiny")
    if getattr(a, "checkpoint", None) and not a.config:  # a saved --config is taken as it is
        base, chosen = continued_pretraining(base)
        if notes is not None and (note := continued_note(a.checkpoint, chosen, a.set)):
            notes.append(note)
    cfg = apply_overrides(base, a.set)
    if run is not None:
        saved, named = load_run_config(run, "--resume"), {item.split("=", 1)[0].strip() for item in a.set}
        budget = {k.split(".")[1]: getattr(saved.train, k.split(".")[1]) for k in RESUME_BUDGETS if k not in named}
        cfg.train = dataclasses.replace(cfg.train, **budget)
    return cfg


def continued_note(checkpoint: str, chosen: list[tuple[str, str]], sets: list[str]) -> str | None:
    """'continued pretraining from CK: lr 0.0001 (why), warmup 1% (why); set ... to override',
    for the choices no --set overrides; None when a --set overrides them all."""
    named = {item.split("=", 1)[0].strip() for item in sets}
    if "train.warmup_steps" in named:  # it takes precedence over the fraction
        named.add("train.warmup_fraction")
    kept = [(key, text) for key, text in chosen if key not in named]
    if not kept:
        return None
    return (f"continued pretraining from {checkpoint}: {', '.join(text for _, text in kept)}; "
            f"set {' / '.join(key for key, _ in kept)} to override")


def fit_micro_batch(cfg):
    """A saved micro_batch_size that does not divide the global batch over the ranks this resume
    runs on (a run resumed on more ranks) is derived again: batch_size / ranks."""
    t, world = cfg.train, int(os.environ.get("WORLD_SIZE", "1"))
    if t.micro_batch_size and t.batch_size % (t.micro_batch_size * world):
        cfg.train = dataclasses.replace(t, micro_batch_size=0)
    return cfg


def resume_command(a) -> str:
    """The command line that continues this run: --resume reads everything else from its config.json."""
    return shlex.join(["roberta", "pretrain", "--data", a.data, "--out", a.out, "--resume"])


def cmd_pretrain(a) -> int:
    from roberta.training.interrupt import TrainingInterrupted
    from roberta.training.loop import pretrain

    if a.config and a.preset:
        raise UserError("pass --config (a saved run) or --preset, not both; --set works on top of either")
    for flag, key in (("threads", "train.threads"), ("device", "train.device"), ("precision", "train.precision")):
        if getattr(a, flag) is not None:
            a.set = [*a.set, f"{key}={getattr(a, flag)}"]
    notes: list[str] = []
    cfg = run_config(a, notes)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    # with --checkpoint the model is the checkpoint's, not the preset's: its length is no preset's either
    note = None if a.checkpoint else seq_len_warning(a.preset or "tiny", cfg, a.data)
    if note and main_rank:
        print(f"warning: {note}", file=sys.stderr)
    if a.checkpoint:  # refused in one line before saying what continuing from it chose
        from roberta.training.checkpoint import resolve_checkpoint
        resolve_checkpoint(a.checkpoint)
    if main_rank:
        for note in notes:
            print(note)
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
              f"--resume with --set raising train.max_steps, train.max_tokens or train.max_time); "
              f"checkpoint {summary['checkpoint']}")
    held_out = summary.get("eval_split", "valid") == "valid"
    loss = f", loss {summary['loss']:.4f}" if "loss" in summary else ""
    # runs finished before the unigram baseline was recorded have no ratio in summary.json
    unigram = (f" (unigram model: {summary['unigram_perplexity']:.2f}; ratio {summary['ratio_to_unigram']:.2f})"
               if "ratio_to_unigram" in summary else "")
    print(f"done: step {summary['step']}, {summary['tokens']:,} tokens{loss}, "
          f"{'held-out' if held_out else 'train-split (no held-out split)'} perplexity "
          f"{summary['eval_perplexity']:.2f}{unigram}; checkpoint {summary['checkpoint']}")
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


def register(sub) -> None:
    s = command(sub, "pretrain", "pretrain a masked language model on prepared data",
                "roberta pretrain --data data --out runs/r --preset tiny --set train.max_time=2h\n"
                "roberta pretrain --data data --out runs/r --resume                # continue as it was saved\n"
                "roberta pretrain --data data --out runs/r --resume --set train.max_steps=20000   # train longer\n"
                "roberta pretrain --data data --out runs/r2 --config runs/r/config.json   # the same run again\n"
                "torchrun --nproc-per-node 8 -m roberta pretrain --data data --out runs/base --preset base",
                "Pretrain a masked language model. The run is one typed Config: a --preset (or a saved\n"
                "--config), then each --set on top; docs/config.md lists every key.")
    s.add_argument("--data", required=True, help="a prepare --out directory")
    s.add_argument("--out", required=True, help="the run directory: checkpoints, metrics.jsonl, summary.json")
    add_preset(s, None, "the starting Config (docs/config.md: each preset's values); not needed with --resume, "
               "which starts from the run's saved config.json (default: tiny)")
    s.add_argument("--config", default=None, metavar="CONFIG_JSON",
                   help="re-run a saved run exactly: its RUN/config.json (or the RUN directory); instead of --preset")
    add_sets(s)
    s.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint, with its saved config.json; a --set "
                        "may raise train.max_steps/max_tokens/max_time or change a runtime setting, nothing else")
    s.add_argument("--checkpoint", default=None,
                   help="start from this checkpoint's weights (continued pretraining; import-hf makes one); "
                        "the preset's lr and warmup give way to continued pretraining's (lr 1e-4, 1%% warmup, "
                        "docs/adapt.md) unless a --set names them")
    add_renamed(s, "--init-from", "--checkpoint")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads: shorthand for --set train.threads=N (default: the preset's, 0 = automatic: "
                        "the cores other processes leave idle)")
    add_device(s, default=None, help="shorthand for --set train.device=DEVICE (default: auto, a GPU when there is one)")
    add_precision(s, default=None, help="shorthand for --set train.precision=P "
                   "(default: auto, bf16 on a GPU and on a CPU with native bf16)")
    add_quiet(s)
    s.set_defaults(fn=cmd_pretrain)
