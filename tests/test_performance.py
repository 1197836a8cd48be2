"""The speed and memory switches: train.precision (bf16 on CPUs that have it), activation
checkpointing, float8's refusal off a Hopper-class GPU, and `roberta plan`'s accounting of them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from roberta.training import precision as prec
from roberta.training.parallelize import autocast
from roberta.config import Config, apply_overrides
from roberta.errors import UserError
from roberta.study.plan import make_plan

NATIVE_BF16 = prec.cpu_native_bf16()[0]
TWO_LAYERS = ["model.layers=2", "model.hidden=64", "model.heads=2", "model.ffn=128", "train.batch_size=8",
              "train.eval_interval=1000", "train.checkpoint_interval=1000", "train.log_interval=1",
              "train.eval_sequences=16", "train.peak_flops=1e11", "train.threads=1"]


# --- precision ---------------------------------------------------------------------------------

def test_auto_precision_follows_the_cpu_detection(monkeypatch):
    monkeypatch.setattr(prec, "cpu_native_bf16", lambda: (False, "no native bf16 on this CPU"))
    assert prec.resolve_precision("auto", "cpu") == ("fp32", "auto: no native bf16 on this CPU")
    assert not autocast(torch.device("cpu")).fast_dtype is None  # a context manager either way
    with autocast(torch.device("cpu"), "auto"):
        assert not torch.is_autocast_enabled("cpu")
    chosen, why = prec.resolve_precision("bf16", "cpu")  # asked for: honoured, with the warning in the log
    assert chosen == "bf16" and "slower" in why
    monkeypatch.setattr(prec, "cpu_native_bf16", lambda: (True, "the CPU has avx512_bf16"))
    assert prec.resolve_precision("auto", "cpu") == ("bf16", "auto: the CPU has avx512_bf16")
    with autocast(torch.device("cpu"), "auto"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    assert prec.resolve_precision("auto", "cuda")[0] == "bf16"  # no GPU needed to decide
    assert prec.resolve_precision("fp32", "cuda")[0] == "fp32"


def test_cpu_detection_reads_the_bf16_flags(monkeypatch):
    prec.cpu_flags.cache_clear()
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f"}))
    assert prec.cpu_native_bf16()[0] is False
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert prec.cpu_native_bf16() == (True, "the CPU has avx512_bf16")
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"amx_bf16", "amx_tile"}))
    assert prec.cpu_native_bf16()[0] is True


def test_precision_is_a_checked_key():
    assert Config().train.precision == "auto"
    assert apply_overrides(Config(), ["train.precision=fp32"]).train.precision == "fp32"
    with pytest.raises(UserError, match=r"train.precision=fp16: choose auto, fp32 or bf16"):
        apply_overrides(Config(), ["train.precision=fp16"])


def test_layer_norm_computes_in_fp32_under_cpu_autocast():
    """Under CPU autocast LayerNorm gets bf16 (autocast does not upcast it there, unlike CUDA); its
    output equals an fp32 LayerNorm's rounded once to bf16, in the input's dtype."""
    from roberta.model import LayerNorm

    ln = LayerNorm(64)
    x = (torch.randn(4, 64) * 50 + 1000).to(torch.bfloat16)  # a large mean: bf16 statistics lose it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ln(x)
    assert y.dtype == torch.bfloat16
    ref = torch.nn.functional.layer_norm(x.float(), (64,), eps=ln.eps).to(torch.bfloat16)
    assert torch.equal(y, ref)


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 GEMMs")
def test_bf16_training_matches_fp32(data_dir, tmp_path):
    """The default precision on this CPU (auto -> bf16) trains like fp32: the same data and masks,
    per-step losses within 0.05 nats over 40 steps, while the loss itself falls by 8x that."""
    from roberta.presets import tiny
    from roberta.training.loop import pretrain

    def losses(precision: str) -> list[float]:
        sets = TWO_LAYERS + ["train.max_steps=40", "train.lr=2e-3"] + ([f"train.precision={precision}"] if precision else [])
        cfg = apply_overrides(tiny(), sets)
        out = tmp_path / (precision or "default")
        pretrain(str(data_dir), str(out), cfg, progress=False)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r]

    fp32, bf16 = losses("fp32"), losses("")  # "" = the default, auto
    assert len(fp32) == len(bf16) == 40
    assert fp32 != bf16  # bf16 really ran
    assert fp32[0] - fp32[-1] > 0.4  # it learned (off the uniform 6.9 nats)
    diffs = [abs(a - b) for a, b in zip(fp32, bf16)]
    assert max(diffs) < 0.05, diffs
    assert abs(sum(fp32[-10:]) - sum(bf16[-10:])) / 10 < 0.02, (fp32[-10:], bf16[-10:])


# --- activation checkpointing -------------------------------------------------------------------

def _steps(cfg, checkpointing: bool, steps: int = 2):
    """Losses and final weights of `steps` trainer steps on random data, dropout on."""
    import test_train as tt
    from roberta.training.distributed import Dist
    from roberta.masking import Masker
    from roberta.training.parallelize import checkpoint_blocks
    from roberta.model import build_model
    from roberta.training.optim import build_optimizer
    from roberta.training.loop import seed_dropout

    model = build_model(cfg.model, "cpu", seed=0)
    if checkpointing:
        checkpoint_blocks(model)
    seed_dropout(0, 0)
    opt, losses = build_optimizer(model, cfg.optim, 1e-3), []
    for step in range(steps):
        losses.append(tt.train_step(model, opt, tt.random_micro_batches(step), Masker.for_run(cfg, {}), Dist(), cfg)["loss"])
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_activation_checkpointing_gives_the_same_losses_and_weights():
    """Recomputing each block in backward (dropout replayed) changes nothing the optimizer sees:
    same losses, same weights after two steps, at the default precision; parameter names unchanged."""
    import test_train as tt

    cfg = tt.one_layer_config("model.layers=2", "train.precision=auto")  # the default, not the equivalence tests' fp32
    plain_losses, plain = _steps(cfg, False)
    ck_losses, ck = _steps(cfg, True)
    assert plain_losses == ck_losses
    assert plain.keys() == ck.keys()
    assert max(float((plain[k] - ck[k]).abs().max()) for k in plain) == 0.0


@pytest.mark.slow
def test_activation_checkpointing_composes_with_compile():
    import test_train as tt
    from roberta.training.distributed import Dist
    from roberta.masking import Masker
    from roberta.training.parallelize import checkpoint_blocks
    from roberta.model import build_model
    from roberta.training.optim import build_optimizer
    from roberta.training.parallelize import compile_model

    cfg = tt.one_layer_config("model.dropout=0", "model.attention_dropout=0", "train.precision=fp32")
    eager, _ = _steps(cfg, False, steps=3)
    model = build_model(cfg.model, "cpu", seed=0)
    checkpoint_blocks(model)
    compile_model(model)
    opt = build_optimizer(model, cfg.optim, 1e-3)
    both = [tt.train_step(model, opt, tt.random_micro_batches(s), Masker.for_run(cfg, {}), Dist(), cfg)["loss"] for s in range(3)]
    assert both == pytest.approx(eager, rel=1e-5)


@pytest.mark.slow
def test_activation_checkpointing_composes_with_fsdp2(data_dir, tmp_path):
    """2 gloo ranks under FSDP2 with checkpointed blocks end with the parameters of 1 plain process."""
    import test_train as tt

    sets = tt.NO_DROPOUT + ["train.max_steps=3", "train.lr=1e-3"]
    results = tt.wait_all(tt.launch(data_dir, tmp_path / "two", *sets, "train.fsdp=true",
                                    "train.activation_checkpointing=true", world=2))
    assert all(rc == 0 for rc, _ in results), results
    tt.run_inprocess(data_dir, tmp_path / "one", *sets)
    assert tt.max_diff(tt.weights(tmp_path / "one", 3), tt.weights(tmp_path / "two", 3)) <= 1e-6


PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from roberta.config import ModelConfig
    from roberta.training.parallelize import checkpoint_blocks
    from roberta.model import build_model
    torch.set_num_threads(1)
    cfg = ModelConfig(vocab_size=1024, layers=6, hidden=256, heads=4, ffn=1024, max_positions=514, dropout=0.1,
                      attention_dropout=0.1)
    model = build_model(cfg, "cpu", seed=0)
    if sys.argv[1] == "1":
        checkpoint_blocks(model)
    def step(batch):
        ids = torch.randint(5, 1024, (batch, 512))
        labels = torch.where(torch.rand(batch, 512) < 0.15, ids, -100)
        model(ids, labels)["mlm_loss_sum"].backward()
    step(1)  # warm up: thread pools, kernels, gradient buffers
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(16)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
""")


def _peak_mb(checkpointing: bool) -> float:
    r = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, "1" if checkpointing else "0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return float(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_activation_checkpointing_lowers_peak_memory():
    """Peak memory of one forward + backward (6 x 256 layers, 16 x 512 tokens, default precision),
    measured as the growth of the process's max RSS in a fresh process: checkpointing keeps
    one block's activations instead of six, so the growth is less than half."""
    plain, ck = _peak_mb(False), _peak_mb(True)
    assert plain > 100  # the measurement sees the activations at all
    assert ck < 0.5 * plain, (plain, ck)


def test_plan_counts_activation_checkpointing():
    plain = make_plan("large", 256, 512, 1000, peak_flops=121e12, memory=24e9)
    ck = make_plan("large", 256, 512, 1000, peak_flops=121e12, memory=24e9, activation_checkpointing=True)
    # per sequence: 34 s h L bytes -> 2 s h L + 34 s h (one block recomputed at a time)
    per_seq = lambda p: p.memory_activations_gb / p.micro_batch  # noqa: E731
    assert per_seq(plain) == pytest.approx(34 * 512 * 1024 * 24 / 1e9)
    assert per_seq(ck) == pytest.approx((2 * 512 * 1024 * 24 + 34 * 512 * 1024) / 1e9)
    assert ck.micro_batch > plain.micro_batch and ck.accumulation < plain.accumulation
    assert ck.hours == pytest.approx(plain.hours * 4 / 3)


# --- float8 -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_float8_without_a_hopper_gpu_is_a_one_line_error(data_dir, tmp_path):
    from conftest import run_cli

    args = ["pretrain", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--quiet"]
    for s in TWO_LAYERS + ["train.max_steps=1", "train.float8=true", "train.device=cpu"]:
        args += ["--set", s]
    r = run_cli(*args)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: train.float8=true: needs a GPU with float8")
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_gpu_speed_script_dry_run_on_cpu(tmp_path):
    """benchmarks/gpu_speed.sh's CPU dry run: the bench (ours, and the modern family against HF's
    ModernBERT), the parity run and packed-vs-padded pretraining work, and float8 / Liger are
    skipped with a note rather than failing."""
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, DEVICE="cpu", PRESET="tiny", MODERN="tiny", BATCH="4", SEQ="32", IMPLS="ours", STEPS="3", SMALL="1",
               PY=sys.executable, OUT=str(tmp_path / "out"))
    r = subprocess.run(["bash", "benchmarks/gpu_speed.sh"], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "float8: skipped" in r.stdout and "done:" in r.stdout
    assert json.loads((tmp_path / "out" / "speed.log").read_text().strip().splitlines()[-1])["rows"][0]["impl"] == "ours"
    assert '"eval_loss"' in (tmp_path / "out" / "parity.txt").read_text()
    modern = json.loads((tmp_path / "out" / "speed_modern.log").read_text().strip().splitlines()[-1])["rows"]
    assert [r["impl"] for r in modern] == ["ours", "HF"]
    formats = (tmp_path / "out" / "formats.txt").read_text()
    assert "packed-documents: real tokens/s" in formats and "doc-sentences: real tokens/s" in formats


def test_finetune_and_evaluate_take_precision():
    from roberta.cli import build_parser
    from roberta.cli.downstream import finetune_config

    for cmd in (["finetune", "--checkpoint", "ck", "--glue", "sst2", "--out", "o"],
                ["evaluate", "--checkpoint", "ck", "--data", "d"]):
        assert build_parser().parse_args(cmd + ["--precision", "fp32"]).precision == "fp32"
        assert build_parser().parse_args(cmd).precision == "auto"
    assert finetune_config(build_parser().parse_args(["glue", "--checkpoint", "ck", "--glue-dir", "g",
                                                       "--precision", "bf16"])).precision == "bf16"
