"""`roberta ablate` / `roberta report`: fair arms, resumable, and an honest report."""

from __future__ import annotations

import json
import re

import pytest

from roberta.study.ablate import Arm, arms_for, finetune_run, load_custom_arms, run_ablation
from roberta.study.report import make_report, verdict
from roberta.errors import UserError
from roberta.presets import tiny

SMALL = ["model.layers=1", "model.hidden=32", "model.heads=2", "model.ffn=64", "train.batch_size=4",
         "train.peak_flops=1e11", "train.eval_sequences=8", "train.log_interval=1"]


def _fake_run(root, arm, seed, loss, tokens=1000, sst2=None):
    d = root / arm / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"tokens": tokens, "flops": 1e9, "elapsed": 10.0,
                                                "eval_loss": loss, "eval_perplexity": 2.718281828 ** loss}))
    (d / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "tokens": s * 100, "eval_loss": loss + 1 / s})
                                               for s in (1, 5, 10)) + "\n")
    if sst2 is not None:
        (d / "glue" / "sst2").mkdir(parents=True)
        (d / "glue" / "sst2" / "metrics.json").write_text(json.dumps({"task": "sst2", "metric": "accuracy", "value": sst2}))
    return d


def test_report_from_fixture_runs(tmp_path):
    runs = [_fake_run(tmp_path, "static", 0, 5.0, sst2=0.80), _fake_run(tmp_path, "static", 1, 5.2, sst2=0.82),
            _fake_run(tmp_path, "dynamic", 0, 4.0, sst2=0.84), _fake_run(tmp_path, "dynamic", 1, 4.1, sst2=0.86)]
    out = tmp_path / "report"
    result = make_report(runs, out)
    assert result["best"] == "dynamic"
    assert result["arms"]["static"]["eval_loss"] == pytest.approx(5.1)
    assert result["arms"]["dynamic"]["tasks"]["sst2"] == [0.84, 0.86]
    md = (out / "report.md").read_text()
    assert "| dynamic | 2 |" in md and "85.0" in md  # median SST-2 of the dynamic arm, in points
    assert "real (exceeds the seed spread)" in md  # 4.05 vs 5.1 with spreads 0.1 / 0.2
    assert (out / "loss_vs_tokens.png").stat().st_size > 1000 and (out / "tasks.png").stat().st_size > 1000


def test_verdict_refuses_differences_within_noise():
    assert verdict([4.0, 4.3], [4.2, 4.5]).startswith("within")
    assert verdict([4.0, 4.1], [4.5, 4.6]).startswith("real")
    assert verdict([4.0], [4.5]).startswith("not established")


def test_paper_arms():
    from roberta.presets import roberta_tiny

    base = roberta_tiny()  # the paper's tables run on the 2019 architecture
    assert [a.name for a in arms_for("masking", base)] == ["static", "dynamic"]
    assert [a.name for a in arms_for("formats", base)] == ["segment-pair+nsp", "sentence-pair+nsp",
                                                           "full-sentences", "doc-sentences", "packed-documents"]
    arms = arms_for("batch-size", base, lr_rule="sqrt")
    assert [a.name for a in arms] == ["batch-16", "batch-64", "batch-256"]
    assert arms[1].overrides == ["train.batch_size=64", "train.lr=0.001"]  # 5e-4 * sqrt(4)


def test_custom_arms_toml_and_json(tmp_path):
    (tmp_path / "arms.toml").write_text('[plain]\n"masking.kind" = "dynamic"\n[ww]\nmasking.whole_word = true\n')
    arms = load_custom_arms(str(tmp_path / "arms.toml"))
    assert [(a.name, a.overrides) for a in arms] == [("plain", ["masking.kind=dynamic"]),
                                                     ("ww", ["masking.whole_word=true"])]
    (tmp_path / "arms.json").write_text(json.dumps({"a": {"train.lr": 0.001}}))
    assert load_custom_arms(str(tmp_path / "arms.json"))[0].overrides == ["train.lr=0.001"]
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="bad.json"):
        load_custom_arms(str(tmp_path / "bad.json"))


@pytest.fixture(scope="module")
def few_docs_data(tmp_path_factory, corpus_docs, tokenizer_dir):
    """Prepared data of a few short documents: a budget of seconds spans the > 10 epochs a masking
    ablation needs at the default dupe_factor (static and dynamic differ only after that)."""
    from roberta.data.prepare import prepare

    root = tmp_path_factory.mktemp("few")
    (root / "docs.txt").write_text("\n\n".join(d for d in corpus_docs[:100] if len(d) < 400))
    prepare([str(root / "docs.txt")], str(tokenizer_dir), str(root / "data"), seq_len=64, valid_fraction=0.2,
            workers=1, progress=False)
    return root / "data"


@pytest.mark.slow
def test_masking_ablation_runs_is_fair_and_resumable(tmp_path, few_docs_data, capsys):
    from roberta.data.prepare import read_meta

    data_dir = few_docs_data
    budget = 12 * read_meta(data_dir)["splits"]["train"]["tokens"]  # 12 epochs: past the static masks' 10
    out = tmp_path / "abl"
    result = run_ablation("masking", str(data_dir), budget, str(out), preset="tiny", sets=SMALL, progress=False)
    assert set(result["arms"]) == {"static", "dynamic"}
    tokens = [result["arms"][a]["tokens"] for a in ("static", "dynamic")]
    assert tokens[0] == tokens[1] and tokens[0][0] >= budget  # identical data, identical budget
    losses = [result["arms"][a]["eval_loss"] for a in ("static", "dynamic")]
    assert losses[0] != losses[1]  # past the first repeat of a static mask the runs differ
    cfgs = {a: json.loads((out / a / "seed0" / "config.json").read_text()) for a in ("static", "dynamic")}
    assert cfgs["static"]["masking"]["kind"] == "static" and cfgs["dynamic"]["masking"]["kind"] == "dynamic"
    assert cfgs["static"]["train"]["seed"] == cfgs["dynamic"]["train"]["seed"]
    assert (out / "report.md").is_file() and (out / "loss_vs_tokens.png").is_file()
    mtime = (out / "static" / "seed0" / "summary.json").stat().st_mtime_ns
    capsys.readouterr()
    run_ablation("masking", str(data_dir), budget, str(out), preset="tiny", sets=SMALL, progress=False)
    assert capsys.readouterr().out.count("already finished") == 2
    assert (out / "static" / "seed0" / "summary.json").stat().st_mtime_ns == mtime

    # arms are fine-tuned on GLUE tasks (median over seeds) and the report gains the task's column
    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    rows = [f"{'good fine great' if i % 2 else 'bad awful poor'} movie {i}\t{i % 2}" for i in range(24)]
    for split in ("train", "dev"):
        (glue / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    finetune_run(out / "dynamic" / "seed0", str(tmp_path / "glue"), ["sst2"], {"epochs": 1, "seeds": 2, "batch_size": 8})
    summary = json.loads((out / "dynamic" / "seed0" / "glue" / "sst2" / "metrics.json").read_text())
    assert summary["task"] == "sst2" and len(summary["per_seed"]) == 2
    result = make_report([out / "static" / "seed0", out / "dynamic" / "seed0"], tmp_path / "rep")
    assert result["arms"]["dynamic"]["tasks"]["sst2"] == [summary["value"]]
    assert "sst2" in (tmp_path / "rep" / "report.md").read_text()


# ---- issue 15, item 6: an arm is reused only if it is the same arm

def test_a_stale_arm_is_refused_and_overwrite_reruns_it(tmp_path, data_dir, capsys):
    out = tmp_path / "abl"
    arms = tmp_path / "arms.json"
    arms.write_text(json.dumps({"a": {"train.lr": 0.001}}))
    run_ablation("custom", str(data_dir), 600, str(out), preset="roberta-tiny", sets=SMALL, custom=str(arms),
                 progress=False)
    first = json.loads((out / "a" / "seed0" / "summary.json").read_text())["tokens"]
    # another budget, another arm definition, another preset: each refused, naming the arm and the difference
    for change, needle in ((dict(budget_tokens=1200), "train.max_tokens 600 -> 1200"),
                           (dict(sets=SMALL + ["train.warmup_fraction=0.2"]), "train.warmup_fraction 0.06 -> 0.2"),
                           (dict(preset="base"), "train.warmup_steps 0 -> 24000")):
        kw = dict(budget_tokens=600, preset="roberta-tiny", sets=SMALL, custom=str(arms), progress=False) | change
        with pytest.raises(UserError, match=r"arm a seed 0 .*" + re.escape(needle) + r".*--overwrite"):
            run_ablation("custom", str(data_dir), kw.pop("budget_tokens"), str(out), **kw)
    assert json.loads((out / "a" / "seed0" / "summary.json").read_text())["tokens"] == first  # untouched
    capsys.readouterr()
    result = run_ablation("custom", str(data_dir), 1200, str(out), preset="roberta-tiny", sets=SMALL,
                          custom=str(arms), progress=False, overwrite=True)
    assert "--overwrite" in capsys.readouterr().out
    tokens = result["arms"]["a"]["tokens"][0]
    assert tokens >= 1200 > first  # the report's title and its arms now agree
    assert "1,200 tokens per arm" in (out / "report.md").read_text()
    # the same command again: reused, not re-run
    run_ablation("custom", str(data_dir), 1200, str(out), preset="roberta-tiny", sets=SMALL, custom=str(arms),
                 progress=False)
    assert "already finished with the same config" in capsys.readouterr().out


def test_an_interrupted_identical_arm_is_resumed(tmp_path, data_dir, capsys):
    out = tmp_path / "abl"
    arms = tmp_path / "arms.json"
    arms.write_text(json.dumps({"a": {"train.checkpoint_interval": 1}}))
    run_ablation("custom", str(data_dir), 600, str(out), sets=SMALL, custom=str(arms), progress=False)
    run = out / "a" / "seed0"
    (run / "summary.json").unlink()  # as if killed after its last checkpoint
    capsys.readouterr()
    run_ablation("custom", str(data_dir), 600, str(out), sets=SMALL, custom=str(arms), progress=False)
    assert "resuming an interrupted run" in capsys.readouterr().out
    assert (run / "summary.json").is_file()


def test_an_arm_recorded_before_a_key_existed_is_reused(tmp_path, data_dir, capsys):
    """An arm run by an older version, whose record lacks a key added since (model.init,
    optim.name): it ran with that key's default, so the same command reuses it instead of refusing."""
    from roberta.study.ablate import ARM_FILE

    out = tmp_path / "abl"
    arms = tmp_path / "arms.json"
    arms.write_text(json.dumps({"a": {}}))
    run_ablation("custom", str(data_dir), 600, str(out), sets=SMALL, custom=str(arms), progress=False)
    record = out / "a" / "seed0" / ARM_FILE
    old = json.loads(record.read_text())
    del old["config"]["model"]["init"], old["config"]["optim"]["name"]
    record.write_text(json.dumps(old))
    capsys.readouterr()
    run_ablation("custom", str(data_dir), 600, str(out), sets=SMALL, custom=str(arms), progress=False)
    assert "already finished with the same config" in capsys.readouterr().out
    old["config"]["optim"]["beta2"] = 0.95  # a key it has, with another value: still refused
    record.write_text(json.dumps(old))
    with pytest.raises(UserError, match=r"optim.beta2 0.95 -> 0.98"):
        run_ablation("custom", str(data_dir), 600, str(out), sets=SMALL, custom=str(arms), progress=False)


def test_a_tie_names_no_winner(tmp_path):
    runs = [_fake_run(tmp_path, "static", 0, 4.0), _fake_run(tmp_path, "dynamic", 0, 4.0)]
    result = make_report(runs, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert result["best"] is None and "No winner" in md and "Lowest held-out loss" not in md
    runs = [_fake_run(tmp_path / "b", "static", s, 5.0 + s / 10) for s in (0, 1)]
    runs += [_fake_run(tmp_path / "b", "dynamic", s, 4.95 + s / 10) for s in (0, 1)]  # within the seed spread
    assert make_report(runs, tmp_path / "report2")["best"] is None
    runs = [_fake_run(tmp_path / "c", "static", 0, 5.0), _fake_run(tmp_path / "c", "dynamic", 0, 4.0)]
    assert make_report(runs, tmp_path / "report3")["best"] == "dynamic"


# ---- issue 23: an ablation scored on the user's own labelled files; masking too short to differ

def _sentiment_file(path, n: int):
    rows = [f"{'good fine great' if i % 2 else 'bad awful poor'} movie {i}\t{'pos' if i % 2 else 'neg'}" for i in range(n)]
    path.write_text("review\tsentiment\n" + "\n".join(rows) + "\n")
    return path


def test_ablate_fine_tunes_and_probes_each_arm_on_the_users_own_files(tmp_path, data_dir, capsys):
    from roberta.cli import main

    train = _sentiment_file(tmp_path / "mine.tsv", 60)
    arms = tmp_path / "arms.json"
    arms.write_text(json.dumps({"a": {"train.lr": 0.001}}))
    out = tmp_path / "abl"
    argv = ["ablate", "custom", "--data", str(data_dir), "--max-tokens", "600", "--out", str(out), "--arms", str(arms),
            *[x for s in SMALL for x in ("--set", s)], "--task-train", str(train), "--text-column", "review",
            "--label-column", "sentiment", "--task-eval", "finetune,probe", "--ft-epochs", "1", "--ft-seeds", "1",
            "--quiet"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "no --task-dev: holding out 10% of mine.tsv (6 examples)" in stdout
    run = out / "a" / "seed0"
    ft = json.loads((run / "glue" / "mine" / "metrics.json").read_text())
    probe = json.loads((run / "glue" / "probe-mine" / "metrics.json").read_text())
    assert (ft["task"], ft["train_examples"], ft["dev_examples"]) == ("mine", 54, 6)
    assert (probe["task"], probe["train_examples"], probe["dev_examples"]) == ("probe-mine", 54, 6)
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["arms"]["a"]["tasks"] == {"mine": [ft["value"]], "probe-mine": [probe["value"]]}
    assert "probe-mine" in (out / "report.md").read_text()


def test_a_masking_ablation_too_short_for_a_static_mask_to_repeat_is_refused(tmp_path, data_dir):
    """Static masking draws mask epoch % dupe_factor, dynamic mask epoch: the same masks, so the same
    run, until a sequence is drawn for the (dupe_factor + 1)-th time. Refused before any compute."""
    from roberta.data.prepare import read_meta

    n = read_meta(data_dir)["splits"]["train"]["tokens"]
    out = tmp_path / "abl"
    with pytest.raises(UserError, match=rf"--max-tokens 1,500 covers 0\.0\d+ epochs of .*\({n:,} training tokens\).*"
                                        rf"masking\.dupe_factor=10 .*same run.*--max-tokens >= 20 epochs = {20 * n:,}"):
        run_ablation("masking", str(data_dir), 1500, str(out), sets=SMALL, progress=False)
    with pytest.raises(UserError, match=rf"covers 1 epoch.*dupe_factor=1 .*--max-tokens >= 2 epochs = {2 * n:,}"):
        run_ablation("masking", str(data_dir), n, str(out), sets=SMALL + ["masking.dupe_factor=1"], progress=False)
    assert not out.exists()


def test_static_and_dynamic_masks_are_the_same_until_the_first_repeat():
    """Why the refusal above: for epochs below dupe_factor the two maskers return identical batches."""
    import torch

    from roberta.config import MaskingConfig
    from roberta.masking import Masker

    ids = torch.randint(5, 900, (8, 64))
    indices = torch.arange(8)
    static, dynamic = (Masker(MaskingConfig(kind=k, dupe_factor=3), 0, 1000) for k in ("static", "dynamic"))
    for epoch in range(5):
        epochs = torch.full((8,), epoch)
        same = torch.equal(static(ids, epochs, indices)[0], dynamic(ids, epochs, indices)[0])
        assert same == (epoch < 3), epoch


# ---- issue 21, part 5: RoBERTa's architecture vs ModernBERT's, at matched tokens and matched time

def _flat(cfg: dict) -> dict:
    return {f"{section}.{k}": v for section, values in cfg.items() for k, v in values.items()}


def test_architecture_arms_differ_only_in_the_architecture():
    from roberta.study.ablate import arm_config
    from roberta.presets import modern_tiny

    from roberta.presets import roberta_tiny

    arms = arms_for("architecture", roberta_tiny(), preset="roberta-tiny")
    assert [a.name for a in arms] == ["roberta", "modern"]
    cfgs = {a.name: arm_config("roberta-tiny", [], a, 10_000, 0, 128) for a in arms}
    assert cfgs["roberta"] == arm_config("roberta-tiny", [], Arm("plain"), 10_000, 0, 128)  # the preset itself
    assert cfgs["modern"].model == modern_tiny().model  # roberta-tiny's twin, sizes included
    a, b = (_flat(cfgs[n].to_dict()) for n in ("roberta", "modern"))
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {"model.family", "model.norm", "model.bias", "model.glu", "model.ffn", "model.dropout",
                      "model.attention_dropout", "model.local_window", "model.global_every"}
    assert cfgs["modern"].masking == cfgs["roberta"].masking  # modern-tiny's 30% masking is not architecture
    # a model key given with --set is every arm's, the sizes are always the preset's (or --set's)
    sized = {a.name: arm_config("base", SMALL, a, 10_000, 0, 128) for a in arms_for("architecture", tiny(), preset="base",
                                                                                       sets=SMALL)}
    assert sized["modern"].model.ffn == sized["roberta"].model.ffn == 64
    assert (sized["modern"].model.layers, sized["modern"].model.hidden) == (1, 32)
    assert sized["modern"].model.local_window == 128 and sized["modern"].model.family == "modern"  # modern-base's
    # the CPU recipe (tiny, ModernBERT-family itself) compares the two families at its own recipe
    for_tiny = {a.name: arm_config("tiny", [], a, 10_000, 0, 128) for a in arms_for("architecture", tiny(), preset="tiny")}
    import dataclasses

    at_tiny_size = dataclasses.replace(roberta_tiny().model, layers=tiny().model.layers)  # the sizes are the preset's
    assert for_tiny["roberta"].model == at_tiny_size and for_tiny["modern"].model.family == "modern"
    assert for_tiny["roberta"].train == for_tiny["modern"].train == arm_config("tiny", [], Arm("p"), 10_000, 0, 128).train
    with pytest.raises(UserError, match="--preset xl has no pair of families"):
        arms_for("architecture", tiny(), preset="xl")


def test_report_plots_loss_vs_seconds_from_the_training_clock(tmp_path):
    runs = []
    for arm, loss in (("roberta", 4.0), ("modern", 4.0)):
        d = _fake_run(tmp_path, arm, 0, loss)
        clock = [{"step": s, "tokens": s * 100, "loss": 5.0, "elapsed": s * 0.5} for s in (1, 4, 8, 10)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in clock)
                                         + (d / "metrics.jsonl").read_text())
        runs.append(d)
    from roberta.study.report import read_run

    assert read_run(runs[0]).curve_s == [(0.5, 5.0), (2.5, 4.2), (5.0, 4.1)]  # step 5: between steps 4 and 8
    result = make_report(runs, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert result["best"] is None and "No winner" in md  # a tie
    for plot in ("loss_vs_tokens.png", "loss_vs_seconds.png"):
        assert f"({plot})" in md and (tmp_path / "report" / plot).stat().st_size > 1000


def test_architecture_ablation_at_matched_tokens_and_matched_time(tmp_path, data_dir, capsys):
    from roberta.cli import main

    small = SMALL + ["train.eval_interval=20"]
    tokens = run_ablation("architecture", str(data_dir), 1200, str(tmp_path / "tok"), sets=small, progress=False)
    seen = [tokens["arms"][a]["tokens"][0] for a in ("roberta", "modern")]
    assert seen[0] == seen[1] >= 1200  # the same real tokens for both architectures
    cfgs = {a: json.loads((tmp_path / "tok" / a / "seed0" / "config.json").read_text()) for a in ("roberta", "modern")}
    assert (cfgs["roberta"]["model"]["family"], cfgs["modern"]["model"]["family"]) == ("roberta", "modern")
    a, b = _flat(cfgs["roberta"]), _flat(cfgs["modern"])
    assert {k for k in a if a[k] != b[k]} <= {f"model.{k}" for k in (
        "family", "norm", "bias", "glu", "ffn", "dropout", "attention_dropout", "local_window", "global_every",
        "rope_theta", "local_rope_theta", "position")}

    out = tmp_path / "time"
    argv = ["ablate", "architecture", "--data", str(data_dir), "--max-time", "2s", "--out", str(out), "--quiet",
            *[x for s in small for x in ("--set", s)]]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    for arm in ("roberta", "modern"):
        run = out / arm / "seed0"
        train = json.loads((run / "config.json").read_text())["train"]
        assert (train["max_time"], train["max_tokens"]) == ("2s", 0)
        assert 2.0 <= json.loads((run / "summary.json").read_text())["elapsed"] < 30  # stopped at the deadline
    md = (out / "report.md").read_text()
    assert "architecture ablation at 2s of training per arm" in md and "wall time per run: min 2." in md
    assert (out / "loss_vs_tokens.png").is_file() and (out / "loss_vs_seconds.png").is_file()
    assert json.loads(stdout.strip().splitlines()[-1])["arms"].keys() == {"roberta", "modern"}
    with pytest.raises(UserError, match="unit"):
        run_ablation("architecture", str(data_dir), 0, str(tmp_path / "x"), sets=small, max_time="2")
    with pytest.raises(UserError, match="masking: give --max-tokens"):
        run_ablation("masking", str(data_dir), 0, str(tmp_path / "x"), sets=small, max_time="2s")
