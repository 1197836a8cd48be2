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
    from roberta.checkpoint import load_model

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
                "--workers", "1", "--quiet")
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
                    "--workers", "1")
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
    r = run_cli("prepare", path, "--tokenizer", tokenizer_dir, "--out", tmp_path / "d", "--workers", "1",
                "--valid-fraction", "0", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "3 invalid UTF-8 bytes dropped" in r.stdout and "bad.txt:3" in r.stderr
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["read"]["invalid_utf8_bytes"] == 3 and meta["splits"]["train"]["documents"] == 2


# ---- issue 15: outputs are never silently overwritten; a checkpoint's tokenizer must be its own

@pytest.fixture(scope="module")
def small_run(tmp_path_factory, data_dir):
    from conftest import tiny_config
    from roberta.train import pretrain

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
            "--workers", "1", "--quiet"]
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
    from roberta.checkpoint import latest_checkpoint, load_config
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
    from roberta.cli import seq_len_warning
    from roberta.config import apply_overrides
    from roberta.presets import tiny

    note = seq_len_warning("tiny", tiny(), str(data_dir))  # data prepared at 64, tiny says 128
    assert "--seq-len 64" in note and "tiny's 128" in note and "--set data.seq_len=128" in note
    given = apply_overrides(tiny(), ["data.seq_len=128"])
    assert seq_len_warning("tiny", given, str(data_dir)) is None
