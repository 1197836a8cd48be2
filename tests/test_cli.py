"""Issue 2: the end-to-end path through the command line, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli


def _one_line_error(r, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_pretrain_save_reload_evaluate_end_to_end(tmp_path, data_dir):
    run = tmp_path / "run"
    r = run_cli("pretrain", "--data", data_dir, "--out", run, "--preset", "tiny", "--quiet",
                "--set", "model.layers=2", "--set", "model.hidden=64", "--set", "model.heads=2",
                "--set", "model.ffn=128", "--set", "train.max_steps=8", "--set", "train.batch_size=8",
                "--set", "train.eval_interval=4", "--set", "train.checkpoint_interval=4",
                "--set", "train.log_interval=2", "--set", "train.peak_flops=1e11",
                "--set", "train.eval_sequences=16")
    assert r.returncode == 0, r.stderr
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
    from roberta.api import load_model

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
