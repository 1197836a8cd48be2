"""`roberta plan`: the paper's arithmetic, checked by hand and against a measured run."""

from __future__ import annotations

import dataclasses
import json

import pytest

from conftest import run_cli, tiny_config
from roberta.presets import get_preset
from roberta.config import ModelConfig
from roberta.model import training_flops
from roberta.study.plan import make_plan


def test_flops_by_hand():
    cfg = ModelConfig(vocab_size=10, layers=1, hidden=4, heads=2, ffn=8, max_positions=12)
    # body: qkv+out 4*4*4 = 64, ffn 4*8 + 8*4 = 64 -> 128; head: dense 16 + decoder 40 = 56
    # 6 * (128 * 100 + 56 * 15) + 12 * 1 * 4 * 10 * 100
    assert training_flops(cfg, 100, 15, 10) == 129_840
    dense = dataclasses.replace(cfg, sparse_head=False)
    assert training_flops(dense, 100, 15, 10) == 6 * (128 * 100 + 56 * 100) + 48_000


def test_paper_comparison_bert_vs_roberta():
    roberta = make_plan("base", 8192, 512, 500_000, gpus=8, peak_flops=989e12, mfu=0.45)
    bert = make_plan("base", 256, 512, 1_000_000, gpus=8, peak_flops=989e12, mfu=0.45)
    assert roberta.tokens / bert.tokens == 16.0
    # roberta-base's 124,697,433 (Hugging Face's count) plus the 39 rows (embedding + LM-head bias)
    # that pad the 50,265-token vocabulary to 50,304, a multiple of 64
    assert roberta.parameters == 124_697_433 + 39 * (768 + 1)
    assert roberta.lr_paper == pytest.approx(1e-3) and bert.lr_paper == pytest.approx(1e-4)
    assert roberta.lr_sqrt == pytest.approx(1e-4 * (8192 / 256) ** 0.5)
    assert roberta.micro_batch * roberta.accumulation * 8 >= 8192
    assert roberta.hours == pytest.approx(roberta.flops / (8 * 989e12 * 0.45) / 3600)


def test_plan_matches_a_measured_run(tmp_path, data_dir):
    from roberta.training.loop import pretrain

    cfg = tiny_config(max_steps=5, batch_size=8)
    summary = pretrain(str(data_dir), str(tmp_path / "run"), cfg, progress=False)
    seq_len = 64  # the fixture's prepared seq_len
    mcfg = dataclasses.replace(cfg.model, vocab_size=1024, max_positions=seq_len + 2)  # 1000 padded to 64s
    # exactly the trainer's accounting for the tokens it saw ...
    assert summary["flops"] == pytest.approx(training_flops(mcfg, summary["tokens"], summary["masked_tokens"], seq_len),
                                             rel=1e-12)
    # ... and the nominal plan (every position a real token) bounds it from above within the packing loss
    nominal = 8 * seq_len * 5
    assert 0.8 * nominal <= summary["tokens"] <= nominal


@pytest.mark.slow
def test_plan_cli(tmp_path):
    r = run_cli("plan", "--preset", "base", "--batch-size", "8192", "--seq-len", "512", "--max-steps", "500000",
                "--gpus", "8", "--gpu", "h100", "--compare-batch", "256", "--compare-steps", "1000000")
    assert r.returncode == 0, r.stderr
    assert "tokens 16.00x" in r.stdout
    plans = json.loads(r.stdout.strip().splitlines()[-1])
    assert plans[0]["tokens"] == 8192 * 512 * 500_000
    r = run_cli("plan", "--batch-size", "8", "--max-steps", "1", "--gpu", "tpu9")
    assert r.returncode == 2 and "unknown" in r.stderr


def _strict_json(line: str):
    """json.loads, but NaN / Infinity (which Python's json accepts and JSON does not) are errors."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(line, parse_constant=refuse)


def test_plan_on_a_cpu_is_valid_json_with_a_time_and_the_presets_own_lr():
    """Issue 23: with no GPU given, `plan` printed "hours": NaN and "wall time n/a", and only the
    paper's lr (1e-4 at batch 16) for `tiny`, whose preset trains at its own."""
    r = run_cli("plan", "--preset", "tiny", "--batch-size", "16", "--seq-len", "128", "--max-steps", "1000",
                "--vocab-size", "8000")
    assert r.returncode == 0, r.stderr
    plan = _strict_json(r.stdout.strip().splitlines()[-1])[0]
    assert "this CPU (peak" in r.stdout and "matmul probe" in r.stdout
    # FLOPs / (probed peak x MFU): the header's peak reproduces the hours to its printed precision
    peak = float(r.stdout.split("this CPU (peak ")[1].split(" GFLOP/s")[0]) * 1e9  # rounded to 1 GFLOP/s
    hours = [plan["flops"] / (p * 0.45) / 3600 for p in (peak + 0.5e9, peak - 0.5e9)]
    assert hours[0] <= plan["hours"] <= hours[1]
    own = get_preset("tiny").train.lr
    assert plan["lr_preset"] == pytest.approx(own) and plan["lr_paper"] == pytest.approx(1e-4)
    assert any(line.startswith("lr: tiny's own") and line.endswith(f" {own:.2e}") for line in r.stdout.splitlines())
    # base at the paper's batch: its own 6e-4 beside the paper's table
    base = make_plan("base", 8192, 512, 10, peak_flops=0.0)
    assert base.lr_preset == pytest.approx(6e-4) and base.hours is None
    assert _strict_json(json.dumps(dataclasses.asdict(base)))["hours"] is None
