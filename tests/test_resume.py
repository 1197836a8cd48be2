"""--resume continues the run in --out as it was saved (its config.json): no flags needed, a --set
may raise the budget (recorded) or change a runtime setting, anything else is refused in one line.
Budgets are printed in words and a duration needs a unit.

Runs go through the CLI in-process (roberta.cli.main) at the defaults a user runs: no --preset on
resume, nothing set but the model's size, the budget and the intervals that make a run short.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from roberta.cli import main
from roberta.config import Config, apply_overrides
from roberta.errors import UserError
from roberta.presets import tiny

# a 2 x 64 model, batch 8: a step takes milliseconds (the sizes, not a code path, are what is set)
SMALL = ["model.layers=2", "model.hidden=64", "model.heads=2", "model.ffn=128", "train.batch_size=8",
         "train.eval_sequences=16", "train.log_interval=1", "train.threads=1"]


def pretrain_args(data_dir, run: Path, *sets: str, resume: bool = False) -> list[str]:
    args = ["pretrain", "--data", str(data_dir), "--out", str(run), "--quiet"]
    for s in sets:
        args += ["--set", s]
    return args + (["--resume"] if resume else [])


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory) -> Path:
    """A 2-step run made with --set train.max_steps=2 (the preset's default is 1,000)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(pretrain_args(data_dir, run, *SMALL, "train.max_steps=2")) == 0
    return run


def test_resume_with_no_flags_continues_the_run_as_saved(data_dir, tmp_path, capsys):
    """Issue 23: a run started with --set train.max_steps=N, resumed as `pretrain --help` shows it
    (--data, --out, --resume; no --preset), used the preset's 1,000 steps (or refused the preset's
    model). It continues at its own config and ends at N; config.json is unchanged."""
    run = tmp_path / "run"
    assert main(pretrain_args(data_dir, run, *SMALL, "train.max_steps=4", "train.checkpoint_interval=2")) == 0
    config = (run / "config.json").read_bytes()
    shutil.rmtree(run / "checkpoint-000004")  # as if stopped after the checkpoint at step 2
    (run / "summary.json").unlink()
    capsys.readouterr()
    assert main(["pretrain", "--data", str(data_dir), "--out", str(run), "--resume", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "budget: 4 steps" in out
    assert json.loads((run / "summary.json").read_text())["step"] == 4
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000004"]
    assert (run / "config.json").read_bytes() == config
    assert [r["step"] for r in records(run) if "loss" in r] == [1, 2, 3, 4]


def test_resume_of_a_finished_run_with_no_flags_trains_nothing(data_dir, finished, capsys):
    before = files(finished)
    assert main(["pretrain", "--data", str(data_dir), "--out", str(finished), "--resume", "--quiet"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert files(finished) == before


def test_raising_the_step_budget_on_resume_trains_on_and_is_recorded(data_dir, finished, tmp_path, capsys):
    """--resume --set train.max_steps=M (M > N): trains to M; config.json says M (nothing else
    changed); metrics.jsonl holds the event; the console says so. The lr schedule is stretched:
    step 3 runs at the lr of progress 2/4, not 0 (the 2-step schedule had decayed to 0)."""
    from roberta.training.optim import lr_at

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    saved = json.loads((run / "config.json").read_text())
    capsys.readouterr()
    assert main(pretrain_args(data_dir, run, "train.max_steps=4", resume=True)) == 0
    out = capsys.readouterr().out
    assert "extending the budget: train.max_steps 2 -> 4" in out
    assert json.loads((run / "summary.json").read_text())["step"] == 4
    now = json.loads((run / "config.json").read_text())
    assert now["train"].pop("max_steps") == 4 and saved["train"].pop("max_steps") == 2 and now == saved
    [event] = [r for r in records(run) if "event" in r]
    assert event == {"step": 2, "tokens": event["tokens"], "event": "budget_raised", "key": "train.max_steps",
                     "from": 2, "to": 4}
    train = {r["step"]: r for r in records(run) if "loss" in r}
    assert sorted(train) == [1, 2, 3, 4]
    peak, warmup = saved["train"]["lr"], saved["train"]["warmup_fraction"]
    schedule, decay = saved["train"]["schedule"], saved["train"]["decay_fraction"]
    assert train[3]["lr"] == pytest.approx(lr_at(2 / 4, warmup, peak, schedule, decay)) and train[3]["lr"] > 0
    # resumed again with no flags: the raised budget is the run's now
    capsys.readouterr()
    assert main(["pretrain", "--data", str(data_dir), "--out", str(run), "--resume", "--quiet"]) == 0
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize("sets, message", [
    (["train.lr=0.0123"], f"train.lr is {tiny().train.lr} in {{config}}, not 0.0123; a resumed run keeps its config (only "
                         "train.max_steps, train.max_tokens and train.max_time may be raised); start a new --out "
                         "to change it"),
    (["masking.kind=static"], "masking.kind is dynamic in {config}, not static; a resumed run keeps its config"),
    (["train.max_steps=155", "train.lr=0.0123"], f"train.lr is {tiny().train.lr} in {{config}}, not 0.0123"),
    (["train.max_steps=1"], "train.max_steps is 2 in {config}, not 1; a budget may be raised on resume, "
                            "not lowered"),
    (["train.max_tokens=5000"], "train.max_tokens is unset in {config}, not 5000; a resume may raise a budget "
                                "the run has, not add or remove one"),
    (["train.precision=fp32"], "train.precision is auto in {config}, not fp32"),
    (["model.layers=3"], "model.layers is 2 in the checkpoint, not 3"),
])
def test_any_other_change_on_resume_is_refused_and_nothing_is_written(data_dir, finished, capsys, sets, message):
    """Issue 23: --resume --set train.lr=... --set masking.kind=static was accepted silently and
    config.json left as it was. Now: exit 2, one error line naming the key, the saved value and the
    asked one, and the run directory untouched."""
    before = files(finished)
    assert main(pretrain_args(data_dir, finished, *sets, resume=True)) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert line.startswith("error: --resume: ")
    assert message.format(config=finished / "config.json") in line
    assert files(finished) == before


def test_the_library_call_refuses_a_changed_config_on_resume(data_dir, finished):
    """roberta.training.loop.pretrain(resume=True) with the run's own settings but another lr and
    masking (what `--resume` plus the first run's flags and two more did) used to train on silently."""
    from roberta.training.loop import pretrain

    before = files(finished)
    sets = [*SMALL, "train.max_steps=3", "train.lr=0.001", "masking.kind=static"]
    with pytest.raises(UserError, match=r"^--resume: masking.kind is dynamic in .*config.json, not static;"):
        pretrain(str(data_dir), str(finished), apply_overrides(tiny(), sets), resume=True, progress=False)
    assert files(finished) == before


def test_runtime_settings_may_change_on_resume(data_dir, finished, tmp_path):
    """Threads, intervals, checkpoints kept: how the same steps are run and recorded, not what."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    config = (run / "config.json").read_bytes()
    assert main(pretrain_args(data_dir, run, "train.max_steps=3", "train.threads=2", "train.log_interval=5",
                              "train.keep_checkpoints=0", resume=True)) == 0
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000003"]
    # config.json records the raised budget only: a runtime setting belongs to that invocation
    saved, now = json.loads(config), json.loads((run / "config.json").read_text())
    assert now["train"]["threads"] == saved["train"]["threads"] == 1 and now["train"]["max_steps"] == 3


def test_a_preset_or_config_given_with_resume_must_be_the_run_and_keeps_its_budget(data_dir, finished, tmp_path,
                                                                                  capsys):
    """A job script that re-runs its own command line with --resume: the --preset and --set that
    made the run are accepted, and the preset's budget (1,000 steps) does not replace the run's:
    a budget changes only where a --set names it. A preset that is not the run's is refused, and
    so is a --config that differs from it; the run's own config.json is accepted."""
    before = files(finished)
    args = ["pretrain", "--data", str(data_dir), "--out", str(finished), "--quiet", "--preset", "tiny", "--resume"]
    assert main([*args, *sum((["--set", s] for s in SMALL), [])]) == 0  # all but its train.max_steps=2
    assert "already complete" in capsys.readouterr().out and files(finished) == before
    assert main(args[:-3] + ["--preset", "small", "--resume"]) == 2
    assert "model.family is modern in the checkpoint, not roberta" in capsys.readouterr().err
    other = json.loads((finished / "config.json").read_text())
    other["train"]["lr"] = 0.0123
    (tmp_path / "other.json").write_text(json.dumps(other))
    args = ["pretrain", "--data", str(data_dir), "--out", str(finished), "--quiet", "--resume", "--config"]
    assert main([*args, str(tmp_path / "other.json")]) == 2
    assert f"train.lr is {tiny().train.lr} in" in capsys.readouterr().err
    assert main([*args, str(finished / "config.json")]) == 0
    assert files(finished) == before


def test_the_printed_resume_command_is_the_plain_one():
    """After SIGINT the run prints how to continue it: the saved config has everything else (the
    slow signal tests in test_train.py run that command to the uninterrupted run's end)."""
    from roberta.cli.pretrain import resume_command

    a = argparse.Namespace(data="my data", out="runs/b", preset="small", config=None,
                           set=["train.max_steps=150", "train.lr=1e-3"])
    assert resume_command(a) == "roberta pretrain --data 'my data' --out runs/b --resume"


# --- budgets in words, durations with units ---------------------------------------------------------

def test_the_start_up_line_says_the_budget_in_words(data_dir, tmp_path, capsys):
    """A token budget ends this run (3 steps of 512 tokens); the time budget and the preset's
    max_steps are named as what they are."""
    run = tmp_path / "run"
    assert main(pretrain_args(data_dir, run, *SMALL, "train.max_tokens=1500", "train.max_time=10m")) == 0
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("budget:")]
    assert line == ("budget: 1,500 tokens or 10 min of training (train.max_time=10m), whichever ends first; "
                    "train.max_steps does not apply under a token or time budget")


@pytest.mark.parametrize("sets, words", [
    (["train.max_steps=1000"], "1,000 steps"),
    (["train.max_steps=0", "train.max_time=90m"], "1.5 h of training (train.max_time=90m)"),
    (["train.max_steps=0", "train.max_time=45s"], "45 s of training (train.max_time=45s)"),
    (["train.max_steps=0", "train.max_tokens=2000000"], "2,000,000 tokens"),
])
def test_budget_words(sets, words):
    from roberta.training.loop import budget_words

    assert budget_words(apply_overrides(tiny(), sets).train) == words


@pytest.mark.parametrize("item", ["train.max_time=6", "train.max_time=1.5", "train.dist_timeout=30"])
def test_a_duration_from_set_needs_a_unit(item):
    """train.max_time=6 used to mean 6 seconds, silently."""
    with pytest.raises(UserError, match=rf"--set {item}: give the duration a unit, s, m, h or d"):
        apply_overrides(tiny(), [item])


def test_a_saved_config_with_a_bare_duration_still_loads(tmp_path):
    """Runs written before units were required saved what was set ("6"): their config.json loads
    (and means seconds), for --config and --resume alike."""
    from roberta.cli.pretrain import load_run_config
    from roberta.training.optim import Budget

    d = apply_overrides(tiny(), ["data.seq_len=64"]).to_dict()
    d["train"]["max_time"] = "6"
    (tmp_path / "config.json").write_text(json.dumps(d))
    cfg = apply_overrides(load_run_config(tmp_path / "config.json", "--config"), [])
    assert cfg.train.max_time == "6" and Budget(cfg).max_time == 6.0
    assert isinstance(cfg, Config)


def test_a_saved_micro_batch_that_does_not_fit_more_ranks_is_derived_again(finished, monkeypatch):
    """A run saved at micro_batch_size 8 (batch 8, one process) resumed on 2 ranks: 8 x 2 does not
    divide 8, so the micro-batch is derived again (4 per rank) instead of refusing the resume."""
    from roberta.cli.pretrain import run_config
    from roberta.config import resolve_run

    a = argparse.Namespace(out=str(finished), resume=True, preset=None, config=None, set=[])
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert run_config(a).train.micro_batch_size == 8  # as saved
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = run_config(a)
    assert resolve_run(cfg, {"vocab_size": 1000, "seq_len": 64}, world=2).train.micro_batch_size == 4
