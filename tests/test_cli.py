"""Issue 2: the end-to-end path through the command line, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from roberta.errors import UserError


def _one_line_error(r, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.slow
def test_pretrain_save_reload_evaluate_end_to_end(tmp_path, data_dir):
    run = tmp_path / "run"
    r = run_cli("pretrain", "--data", data_dir, "--out", run, "--preset", "tiny", "--quiet",
                "--set", "model.layers=2", "--set", "model.hidden=64", "--set", "model.heads=2",
                "--set", "model.ffn=128", "--set", "train.max_steps=8", "--set", "train.batch_size=8",
                "--set", "train.eval_interval=4", "--set", "train.checkpoint_interval=4",
                "--set", "train.log_interval=2", "--set", "train.peak_flops=1e11",
                "--set", "train.eval_sequences=16")
    assert r.returncode == 0, r.stderr
    # the end: one done line naming the checkpoint, then the commands that use it
    assert r.stdout.count("done: step 8") == 1 and f"checkpoint {run}/checkpoint-000008" in r.stdout
    assert f"next: roberta evaluate --checkpoint {run}/checkpoint-000008 --data {data_dir}" in r.stdout
    assert "roberta finetune --checkpoint" in r.stdout
    # metrics.jsonl: training records with the contract's keys, and eval records
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in records if "loss" in x]
    evals = [x for x in records if "eval_loss" in x]
    assert {"step", "tokens", "loss", "lr", "tokens_per_s"} <= set(train[0])
    assert [x["step"] for x in evals] == [4, 8]
    assert train[-1]["step"] == 8 and train[-1]["tokens"] > train[0]["tokens"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 8 and summary["tokens"] == train[-1]["tokens"]

    # the checkpoint reloads into an identical model
    import roberta
    from roberta.training.checkpoint import load_model

    ck = run / "checkpoint-000008"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in ck.iterdir()}
    model, path = load_model(run)  # RUN_DIR -> its latest checkpoint
    assert path == ck
    saved = load_file(str(ck / "model.safetensors"))
    state = model.state_dict()
    assert set(saved) == set(state)
    for k, v in saved.items():
        assert torch.equal(state[k], v), k
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in ck.iterdir())  # never a pickle

    # evaluate: last stdout line is the JSON contract; held-out loss equals the run's last eval
    r = run_cli("evaluate", "--checkpoint", run, "--data", data_dir, "--max-sequences", "16")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(result) >= {"mlm_loss", "perplexity", "tokens"}
    assert result["tokens"] > 0
    assert result["mlm_loss"] == pytest.approx(evals[-1]["eval_loss"], rel=1e-5)

    # fill-mask on the command line and through the API agree
    r = run_cli("fill-mask", "--checkpoint", run, "Return the <mask> of the list.", "--top-k", "3")
    assert r.returncode == 0, r.stderr
    preds = roberta.load(run).fill_mask("Return the <mask> of the list.", top_k=3)
    assert len(r.stdout.strip().splitlines()) == 3
    assert f"{preds[0]['score']:.4f}" in r.stdout.splitlines()[0]


@pytest.mark.slow
def test_pretrain_refuses_to_overwrite_a_run(tmp_path, data_dir):
    args = ["pretrain", "--data", data_dir, "--out", tmp_path / "run", "--quiet", "--set", "model.layers=1",
            "--set", "model.hidden=32", "--set", "model.heads=2", "--set", "model.ffn=64",
            "--set", "train.max_steps=2", "--set", "train.batch_size=4", "--set", "train.peak_flops=1e11"]
    assert run_cli(*args).returncode == 0
    _one_line_error(run_cli(*args), "--resume")


def test_train_tokenizer_and_prepare_cli(tmp_path, corpus_file):
    tok = tmp_path / "tok"
    r = run_cli("train-tokenizer", corpus_file, "--out", tok, "--vocab-size", "600")
    assert r.returncode == 0, r.stderr
    assert {"tokenizer.json", "vocab.json", "merges.txt"} <= {p.name for p in tok.iterdir()}
    r = run_cli("prepare", corpus_file, "--tokenizer", tok, "--out", tmp_path / "data", "--seq-len", "64",
                "--threads", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["read"]["documents"] == meta["splits"]["train"]["documents"] + meta["splits"]["valid"]["documents"]
    assert meta["vocab_size"] == 600 and meta["dtype"] == "uint16"


@pytest.mark.parametrize("case", ["missing", "empty", "not-checkpoint", "unknown-key", "seq-len", "bad-type", "no-gpu"])
def test_bad_input_is_one_line_error(tmp_path, data_dir, tokenizer_dir, case):
    if case == "missing":
        r = run_cli("prepare", tmp_path / "nope.txt", "--tokenizer", tokenizer_dir, "--out", tmp_path / "d")
        _one_line_error(r, "nope.txt", "no such file")
    elif case == "empty":
        (tmp_path / "empty.txt").write_text("\n\n  \n")
        r = run_cli("prepare", tmp_path / "empty.txt", "--tokenizer", tokenizer_dir, "--out", tmp_path / "d",
                    "--threads", "1")
        _one_line_error(r, "empty.txt", "no documents")
    elif case == "not-checkpoint":
        (tmp_path / "junk").mkdir()
        _one_line_error(run_cli("fill-mask", "--checkpoint", tmp_path / "junk", "a <mask>"), "junk", "not a checkpoint")
    elif case == "unknown-key":
        r = run_cli("pretrain", "--data", data_dir, "--out", tmp_path / "r", "--set", "train.max_step=3")
        _one_line_error(r, "train.max_step", "did you mean train.max_steps")
    elif case == "seq-len":
        r = run_cli("pretrain", "--data", data_dir, "--out", tmp_path / "r", "--set", "data.seq_len=600",
                    "--set", "model.max_positions=514")
        _one_line_error(r, "data.seq_len=600", "model.max_positions")
    elif case == "bad-type":
        r = run_cli("pretrain", "--data", data_dir, "--out", tmp_path / "r", "--set", "train.lr=fast")
        _one_line_error(r, "train.lr=fast", "float")
    elif case == "no-gpu":
        if torch.cuda.is_available():
            pytest.skip("a GPU is visible")
        r = run_cli("pretrain", "--data", data_dir, "--out", tmp_path / "r", "--set", "train.device=cuda")
        _one_line_error(r, "train.device=cuda", "no CUDA GPU is visible")


def test_non_utf8_bytes_are_skipped_and_counted(tmp_path, tokenizer_dir):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"caf\xe9 au lait is good.\n\nsecond \xff\xfe document here.\n")
    r = run_cli("prepare", path, "--tokenizer", tokenizer_dir, "--out", tmp_path / "d", "--threads", "1",
                "--valid-fraction", "0", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "3 invalid UTF-8 bytes dropped" in r.stdout and "bad.txt:3" in r.stderr
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["read"]["invalid_utf8_bytes"] == 3 and meta["splits"]["train"]["documents"] == 2


# ---- issue 15: outputs are never silently overwritten; a checkpoint's tokenizer must be its own

@pytest.fixture(scope="module")
def small_run(tmp_path_factory, data_dir):
    from conftest import tiny_config
    from roberta.training.loop import pretrain

    run = tmp_path_factory.mktemp("small_run") / "run"
    pretrain(str(data_dir), str(run), tiny_config(max_steps=1), progress=False)
    return run


def test_outputs_are_not_overwritten_without_overwrite(tmp_path, small_run, corpus_file, tokenizer_dir):
    import shutil

    from roberta.cli import main

    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    ck = next(run.glob("checkpoint-*"))
    before = (ck / "tokenizer.json").read_bytes()
    # the repro: a small tokenizer trained into a checkpoint directory
    argv = ["train-tokenizer", str(corpus_file), "--out", str(ck), "--vocab-size", "500"]
    assert main(argv) == 2 and (ck / "tokenizer.json").read_bytes() == before
    assert main(argv + ["--overwrite"]) == 0 and (ck / "tokenizer.json").read_bytes() != before
    # ... and then every loader refuses the pair instead of printing garbage
    import roberta
    with pytest.raises(UserError, match="not the one the model was saved with"):
        roberta.load(ck)
    r = run_cli("fill-mask", "--checkpoint", ck, "a <mask> b")
    _one_line_error(r, "not the one the model was saved with")
    # prepare: a second run into the same --out is refused, accepted with --overwrite
    out = tmp_path / "data"
    prep = ["prepare", str(corpus_file), "--tokenizer", str(tokenizer_dir), "--out", str(out), "--seq-len", "64",
            "--threads", "1", "--quiet"]
    assert main(prep) == 0
    meta = (out / "meta.json").read_bytes()
    assert main(prep) == 2 and (out / "meta.json").read_bytes() == meta
    assert main(prep + ["--overwrite"]) == 0
    # export-hf into a non-empty directory
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    assert main(["export-hf", "--checkpoint", str(small_run), "--out", str(tmp_path / "hf")]) == 2
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["notes.txt"]


def test_checkpoint_tokenizer_config_says_the_models_real_length(small_run):
    from roberta.training.checkpoint import latest_checkpoint, load_config
    from roberta.model import max_seq_len

    ck = latest_checkpoint(small_run)
    length = json.loads((ck / "tokenizer_config.json").read_text())["model_max_length"]
    assert length == max_seq_len(load_config(ck).model) == load_config(ck).model.max_positions - 2 != 512


def test_fill_mask_and_embed_take_what_a_user_gives_them(small_run, monkeypatch):
    import roberta

    m = roberta.load(small_run)
    vocab = m.tokenizer.get_vocab_size()
    assert len(m.fill_mask("a <mask> b", top_k=100_000)) == vocab  # clamped to the vocabulary
    with pytest.raises(UserError, match="top_k=0"):
        m.fill_mask("a <mask> b", top_k=0)
    two = m.fill_mask("The <mask> sat on the <mask>.", top_k=3)  # one list per mask, each filled
    assert len(two) == 2 and all(len(per) == 3 for per in two)
    for per, other in ((two[0], "on the<mask>"), (two[1], "The<mask>")):
        assert all(other in r["sequence"] and r["sequence"].count("<mask>") == 1 for r in per)
    one = m.embed("one string")
    assert one.shape == (1, m.model.cfg.hidden)
    torch.testing.assert_close(one, m.embed(["one string"]))
    assert m.embed([]).shape == (0, m.model.cfg.hidden)
    with pytest.raises(TypeError, match="expected strings"):
        m.embed([1, 2])
    ids, attn = m._encode(["x"])
    assert ids.device == attn.device == m.device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        roberta.load(small_run, device="cuda")


def test_fill_mask_cli_prints_each_mask_and_clamps_top_k(small_run):
    r = run_cli("fill-mask", "--checkpoint", small_run, "--top-k", "100000", "The <mask> sat on the <mask>.")
    assert r.returncode == 0, r.stderr
    assert "<mask> 1 of 2:" in r.stdout and "<mask> 2 of 2:" in r.stdout


def test_pretrain_warns_when_the_data_length_overrides_the_presets(tmp_path, data_dir, capsys):
    from roberta.cli.pretrain import seq_len_warning
    from roberta.config import apply_overrides
    from roberta.presets import tiny

    note = seq_len_warning("tiny", tiny(), str(data_dir))  # data prepared at 64, tiny says 128
    assert "--seq-len 64" in note and "tiny's 128" in note and "--set data.seq_len=128" in note
    given = apply_overrides(tiny(), ["data.seq_len=128"])
    assert seq_len_warning("tiny", given, str(data_dir)) is None


# --- issue 17: the face of the command line -------------------------------------------------------

def _commands():
    from roberta.cli import build_parser

    return build_parser()._subparsers._group_actions[0].choices


def test_every_flag_of_every_command_has_help_and_every_command_an_example():
    import argparse

    for name, parser in _commands().items():
        for action in parser._actions:
            if action.help is argparse.SUPPRESS:
                assert any(a.dest == action.dest and a.help is not argparse.SUPPRESS for a in parser._actions), \
                    (name, action.option_strings)  # a hidden old spelling of a visible flag, nothing else
                continue
            assert action.help and len(action.help) > 5, (name, action.option_strings or action.dest)
        text = parser.format_help()
        assert "\nexample:\n  roberta " in text or "\nexample:\n  torchrun" in text, name
        for action in parser._actions:  # defaults are shown (0 / off / unset ones say what they mean)
            if action.option_strings and action.default not in (None, False, 0, "", [], argparse.SUPPRESS):
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action.option_strings)


def test_preset_lists_its_choices_and_each_commands_own_default():
    from roberta.presets import PRESETS

    for command, default in (("pretrain", "tiny"), ("plan", "base"), ("ablate", "tiny")):
        text = " ".join(_commands()[command].format_help().split())
        assert "{" + ",".join(PRESETS) + "}" in text and f"(default: {default})" in text, command


def test_top_level_help_lists_the_workflow_and_version(capsys):
    from roberta import __version__
    from roberta.cli import main

    r = run_cli("--help")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    order = [r.stdout.index(f"\n    {c}") for c in ("quickstart", "train-tokenizer", "prepare", "pretrain",
                                                  "evaluate", "finetune", "export-hf")]
    assert order == sorted(order), "commands are listed in workflow order"
    assert "example" in r.stdout and "Parsing and printing only" not in r.stdout
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"roberta {__version__}"


OLD_SPELLINGS = [  # (old command line, the same with today's names)
    ("train-tokenizer c --out t --text-field body", "train-tokenizer c --out t --text-column body"),
    ("prepare c --tokenizer t --out d --text-field body", "prepare c --tokenizer t --out d --text-column body"),
    ("pretrain --data d --out r --init-from ck", "pretrain --data d --out r --checkpoint ck"),
    ("finetune --checkpoint c --out o --max-len 64", "finetune --checkpoint c --out o --seq-len 64"),
    ("import-hf --model m --out o", "import-hf --checkpoint m --out o"),
    ("quickstart --steps 5", "quickstart --max-steps 5"),
    ("plan --batch-size 8 --steps 5", "plan --batch-size 8 --max-steps 5"),
    ("ablate masking --data d --out o --budget-tokens 2e6", "ablate masking --data d --out o --max-tokens 2e6"),
    ("evaluate --checkpoint c --glue-dir g --epochs 2", "glue --checkpoint c --glue-dir g --epochs 2"),
    ("prepare c --tokenizer t --out d --workers 2", "prepare c --tokenizer t --out d --threads 2"),
]


@pytest.mark.parametrize("old,new", OLD_SPELLINGS, ids=[o.split()[0] for o, _ in OLD_SPELLINGS])
def test_old_flag_spellings_still_work_with_a_one_line_note(old, new, capsys):
    from roberta.cli import _moved, build_parser

    parsed_old = vars(build_parser().parse_args(_moved(old.split())))
    notes = capsys.readouterr().err.strip().splitlines()
    parsed_new = vars(build_parser().parse_args(new.split()))
    assert parsed_old == parsed_new
    assert len(notes) == 1 and notes[0].startswith("note: ") and "old" in notes[0], notes
    assert capsys.readouterr().err == ""  # today's names: no note


def test_pretrain_config_reruns_a_saved_run_exactly(tmp_path, data_dir):
    from roberta.cli import main

    sets = ["model.layers=1", "model.hidden=32", "model.heads=2", "model.ffn=64", "train.max_steps=3",
            "train.batch_size=4", "train.peak_flops=1e11", "train.threads=1",
            "train.lr_scaling=sqrt", "train.eval_interval=3"]  # scaling: config.json records the scaled lr
    first = tmp_path / "first"
    assert main(["pretrain", "--data", str(data_dir), "--out", str(first), "--quiet",
                 *[x for s in sets for x in ("--set", s)]]) == 0
    again = tmp_path / "again"
    assert main(["pretrain", "--data", str(data_dir), "--out", str(again), "--quiet",
                 "--config", str(first / "config.json")]) == 0
    assert json.loads((again / "config.json").read_text()) == json.loads((first / "config.json").read_text())
    a, b = load_file(str(first / "checkpoint-000003" / "model.safetensors")), load_file(
        str(again / "checkpoint-000003" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # --set on top of a saved config; a run directory works as well as its config.json
    more = tmp_path / "more"
    assert main(["pretrain", "--data", str(data_dir), "--out", str(more), "--quiet", "--config", str(first),
                 "--set", "train.max_steps=4"]) == 0
    assert json.loads((more / "summary.json").read_text())["step"] == 4


def _fake_terminal(monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    return term


def test_train_tokenizer_and_prepare_show_a_bar_with_a_total_unless_quiet(tmp_path, corpus_file, monkeypatch):
    from roberta.cli import main

    term = _fake_terminal(monkeypatch)
    assert main(["train-tokenizer", str(corpus_file), "--out", str(tmp_path / "tok"), "--vocab-size", "600"]) == 0
    assert main(["prepare", str(corpus_file), "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "d"),
                 "--seq-len", "64", "--threads", "1"]) == 0
    shown = term.getvalue()
    size = f"{corpus_file.stat().st_size / 1e3:.0f}k"
    for name in ("train-tokenizer", "prepare"):  # the bar ends at 100% of the input's bytes: its ETA was right
        last = [ln for ln in shown.replace("\r", "\n").splitlines() if ln.startswith(name + ":")][-1]
        assert "100%" in last and f"| {size}/{size} [" in last, last
    term.truncate(0)
    assert main(["train-tokenizer", str(corpus_file), "--out", str(tmp_path / "tok2"), "--vocab-size", "600",
                 "--quiet"]) == 0
    assert "%|" not in term.getvalue()


def test_expected_bytes_is_what_reading_counts(tmp_path, corpus_docs):
    """The bars' total is known before reading and equals what reading then counts, for each format."""
    import gzip

    from roberta.data.readers import ReadStats, expected_bytes, iter_documents

    docs = corpus_docs[:200]
    (tmp_path / "a.txt").write_text("\n\n".join(docs))
    lines = "".join(json.dumps({"text": d}) + "\n" for d in docs)
    (tmp_path / "b.jsonl").write_text(lines)
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(lines)
    inputs = [str(tmp_path / n) for n in ("a.txt", "b.jsonl", "c.jsonl.gz")]
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": docs}), tmp_path / "d.parquet")
    for path in [*inputs, str(tmp_path / "d.parquet")]:
        stats = ReadStats()
        for _ in iter_documents([path], "text", stats):
            pass
        expected = expected_bytes([path])
        assert abs(expected - stats.bytes_in) <= 0.02 * stats.bytes_in, (path, expected, stats.bytes_in)


# ---- issue 23: the rough edges a new user hit

def test_fill_mask_table_keeps_one_row_per_candidate_with_newlines_escaped(small_run):
    r = run_cli("fill-mask", "--checkpoint", small_run, "--top-k", "3", "First line.\nThe <mask> is\tred.")
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()
    assert len(rows) == 3, r.stdout  # a newline in the sequence no longer splits a row in two
    assert all("First line.\\nThe" in row and "is\\tred." in row for row in rows), r.stdout


@pytest.mark.parametrize("argv", [["report", "RUN"], ["--markdown"]], ids=["report", "markdown"])
def test_a_reader_that_leaves_early_ends_the_command_quietly(small_run, argv):
    """`roberta report run | head -5`: the pipe is closed before the command writes; Python's
    advice (SIGPIPE note): stdout to devnull, exit quietly -- no BrokenPipeError traceback."""
    import subprocess
    import sys

    argv = [str(small_run) if a == "RUN" else a for a in argv]
    p = subprocess.Popen([sys.executable, "-m", "roberta", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the first line is written
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 1, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err


def _threads_after(argv: list[str], **env: str) -> int:
    """The threads a fresh interpreter holds once `roberta ARGV` is done (Linux: /proc/self/task);
    the BLAS libraries are held to one thread so that only the tokenizer's pool can vary."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
    for key in ("RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
        if env.get(key) == "":
            del env[key]
    code = ("import os, sys; from roberta.cli import main; assert main(sys.argv[1:]) == 0; "
            "print(len(os.listdir('/proc/self/task')))")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_threads_bounds_the_tokenizer_pool_of_train_tokenizer_and_prepare(tmp_path, corpus_file, tokenizer_dir):
    tok = ["train-tokenizer", str(corpus_file), "--vocab-size", "300", "--quiet"]
    five = _threads_after(tok + ["--out", str(tmp_path / "t5"), "--threads", "5"], TOKENIZERS_PARALLELISM="")
    one = _threads_after(tok + ["--out", str(tmp_path / "t1"), "--threads", "1"], TOKENIZERS_PARALLELISM="")
    assert five - one == 5  # `tokenizers` started exactly the pool asked for; with one thread, none
    # prepare --threads 1: one process, and its encode_batch does not spread over the cores either,
    # whatever the environment says
    prep = ["prepare", str(corpus_file), "--tokenizer", str(tokenizer_dir), "--seq-len", "64", "--quiet"]
    assert _threads_after(prep + ["--out", str(tmp_path / "d1"), "--threads", "1"],
                          RAYON_NUM_THREADS="6", TOKENIZERS_PARALLELISM="true") < 6


def test_quickstart_threads_reach_its_pretraining(tmp_path, monkeypatch):
    import roberta.quickstart as qs
    from roberta.cli import main

    seen = []

    class Stop(Exception):
        pass

    def fake_pretrain(data, run, cfg, progress=True):
        seen.append(cfg.train.threads)
        raise Stop

    docs = [f"Document {i} says that the value of a list is returned. It ends here." for i in range(60)]
    monkeypatch.setattr(qs, "stdlib_documents", lambda: iter(docs))
    monkeypatch.setattr(qs, "pretrain", fake_pretrain)
    for argv in (["--threads", "3"], []):
        with pytest.raises(Stop):
            main(["quickstart", "--out", str(tmp_path / "q"), "--quiet", *argv])
    assert seen == [3, 0]  # 0, the default, stays the automatic choice (train.threads=0)


def test_help_texts_say_what_the_command_does():
    import re
    from pathlib import Path

    from roberta.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    helps = {name: {a.dest: a.help for a in commands[name]._actions} for name in ("probe", "finetune")}
    assert "epoch" not in helps["probe"]["dev"] and "lr" not in helps["probe"]["dev"]  # a probe has neither
    assert "epoch" not in helps["probe"]["metric"] and "epoch" in helps["finetune"]["metric"]
    assert "selects the epoch and lr" in helps["finetune"]["dev"]
    # the quickstart's promised minutes are the README's
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    promised = re.search(r"runs `roberta quickstart` \(~(\d+) min", readme).group(1)
    assert re.search(r"~(\d+) min", commands["quickstart"].description).group(1) == promised


# the commands that run torch or the tokenizer: each takes --threads (the README says so)
COMPUTING = ("quickstart", "train-tokenizer", "prepare", "pretrain", "evaluate", "finetune", "glue", "predict",
             "probe", "fill-mask", "ablate")


def test_every_command_that_computes_takes_threads():
    from roberta.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    missing = [name for name in COMPUTING if "--threads" not in commands[name]._option_string_actions]
    assert not missing, f"no --threads on {missing}"
    assert set(COMPUTING) | {"export-hf", "import-hf", "plan", "report"} == set(commands)  # a new command is classified
