"""Issue 23: "did it learn?" on the user's own corpus. The model beside a unigram model of the
training split and the untrained network, on the same masked tokens, with a bootstrap interval for
the ratio of perplexities, in `roberta evaluate`, pretrain's summary and closing line, and `report`."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from roberta.cli import main
from roberta.data.prepare import load_split, read_meta
from roberta.model import build_model
from roberta.presets import roberta_tiny, tiny
from roberta.training.evaluate import (SMALL_SET, SequenceLosses, bootstrap_ratio, compare_with_baselines,
                                       eval_batches, mlm_loss, unigram_logprobs, unigram_loss, verdict)

SMALL = ["--set", "model.layers=1", "--set", "model.hidden=32", "--set", "model.heads=2", "--set", "model.ffn=64",
         "--set", "train.batch_size=8", "--set", "train.eval_sequences=16", "--set", "train.peak_flops=1e11",
         "--set", "train.threads=1"]


def synthetic_losses(n: int, seed: int = 0) -> tuple[SequenceLosses, SequenceLosses]:
    """n sequences of 5-30 masked tokens; per token the model is 0.2 nats better than the unigram
    model on average, with a spread (sd 1 nat) like a real model's."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 31, n)
    uni = [rng.normal(6.0, 1.5, c) for c in counts]
    model = [u - 0.2 + rng.normal(0, 1.0, len(u)) for u in uni]
    return (SequenceLosses(np.array([m.sum() for m in model]), counts),
            SequenceLosses(np.array([u.sum() for u in uni]), counts))


def test_bootstrap_interval_holds_the_ratio_narrows_with_more_sequences_and_is_seeded():
    widths = {}
    for n in (50, 5000):
        model, uni = synthetic_losses(n)
        ratio = math.exp((model.loss_sums.sum() - uni.loss_sums.sum()) / model.counts.sum())
        low, high = bootstrap_ratio(model, uni)
        assert low < ratio < high
        widths[n] = high - low
    # 100x the sequences: ~10x narrower (1/sqrt(n)); 5,000 sequences pin the true exp(-0.2)
    assert 6 < widths[50] / widths[5000] < 15
    assert low < math.exp(-0.2) < high and high - low < 0.02
    assert bootstrap_ratio(model, uni) == (low, high)  # deterministic under its seed
    other = bootstrap_ratio(model, uni, seed=1)
    assert other != (low, high) and other == pytest.approx((low, high), rel=0.01)
    assert verdict(low, high).startswith("the model uses context")


def test_bootstrap_refuses_losses_on_different_tokens():
    model, uni = synthetic_losses(20)
    with pytest.raises(ValueError, match="same masked tokens"):
        bootstrap_ratio(model, SequenceLosses(uni.loss_sums, uni.counts + 1))


@pytest.fixture(scope="module")
def batches(data_dir):
    meta = read_meta(data_dir)
    return eval_batches(load_split(data_dir, "valid"), 64, meta["vocab_size"])


def tiny_model(seed: int = 0, **size):
    """The roberta-tiny preset (4 x 256, the 2019 architecture: its init's near-uniform logits and
    its LM head's biases are what the tests below use), sized for the data's vocabulary and length."""
    cfg = dataclasses.replace(roberta_tiny().model, vocab_size=1024, max_positions=66, **size)
    return build_model(cfg, seed=seed)


def small_model(seed: int = 0):
    return tiny_model(seed, layers=1, hidden=32, heads=2, ffn=64)


def test_per_sequence_losses_are_paired_and_leave_the_aggregate_bit_identical(data_dir, batches):
    model = small_model()
    plain = mlm_loss(model, batches)
    per = mlm_loss(model, batches, per_sequence=True)
    seqs = per.pop("sequences")
    assert per == plain  # the run's own evaluation number, bit for bit
    uni = unigram_loss(load_split(data_dir, "train").tokens, 1000, batches, per_sequence=True)
    useqs = uni.pop("sequences")
    assert uni == unigram_loss(load_split(data_dir, "train").tokens, 1000, batches)
    # the same masked tokens, sequence by sequence, for the model and the unigram baseline
    assert np.array_equal(seqs.counts, useqs.counts) and seqs.counts.sum() == plain["tokens"] == uni["tokens"]
    assert len(seqs.counts) == sum(len(b.labels) for b in batches)
    assert seqs.loss_sums.sum() / plain["tokens"] == pytest.approx(plain["mlm_loss"], rel=1e-5)
    assert useqs.loss_sums.sum() / uni["tokens"] == pytest.approx(uni["mlm_loss"], rel=1e-12)


def test_unigram_counts_in_chunks_give_the_whole_splits_frequencies(data_dir, monkeypatch):
    import roberta.training.evaluate as ev

    tokens = load_split(data_dir, "train").tokens
    whole = ev.unigram_logprobs(tokens, 1000)
    monkeypatch.setattr(ev, "COUNT_CHUNK", 1000)  # hundreds of chunks
    assert np.array_equal(ev.unigram_logprobs(tokens, 1000), whole)
    counts = np.bincount(tokens, minlength=1000) + 1
    assert np.allclose(np.exp(whole), counts / counts.sum())


def test_the_untrained_network_is_near_uniform_over_the_vocabulary(data_dir, batches):
    """At RoBERTa's init (normal(0, 0.02), LayerNorm before the tied decoder) the logits are nearly
    equal: the untrained network's perplexity is about the vocabulary size (here 1,024 rows)."""
    c = compare_with_baselines(tiny_model(seed=1), tiny_model(seed=0), load_split(data_dir, "train").tokens, 1000,
                               batches[:2])  # 64 sequences: near-equal logits vary little from token to token
    for name in ("untrained", "trained"):  # both are untrained networks here
        assert abs(math.log(c[name]["perplexity"] / 1024)) < 0.05, c[name]
    assert c["unigram"]["perplexity"] < 500  # the corpus's frequencies are far from uniform
    low, high = c["interval"]
    assert 1 < low < c["ratio"] < high  # an untrained network is worse than the token frequencies


def test_a_model_that_is_the_unigram_model_in_disguise_has_ratio_one(data_dir, batches):
    """An LM head that ignores its input and outputs the training split's log-frequencies: the
    same loss as the unigram baseline on every sequence, so a ratio of 1 with a narrow interval."""
    model = small_model()
    head = model.lm_head
    logp = unigram_logprobs(load_split(data_dir, "train").tokens, 1000)
    with torch.no_grad():
        for p in (head.dense.weight, head.dense.bias, head.layer_norm.bias):
            p.zero_()  # gelu(0) = 0 -> LayerNorm(0) = its bias = 0 -> logits = the head's bias
        head.bias.fill_(-50.0)  # the padded rows: never predicted
        head.bias[:1000] = torch.from_numpy(logp)
    c = compare_with_baselines(model, small_model(), load_split(data_dir, "train").tokens, 1000, batches)
    assert c["trained"]["mlm_loss"] == pytest.approx(c["unigram"]["mlm_loss"], rel=1e-6)
    low, high = c["interval"]
    assert c["ratio"] == pytest.approx(1, abs=1e-5) and 1 - 1e-4 < low <= 1 <= high < 1 + 1e-4
    assert verdict(low, high).startswith("not distinguishable from the unigram model")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir):
    from roberta.training.checkpoint import save_checkpoint

    cfg = tiny()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, layers=1, hidden=32, heads=2, ffn=64,
                                                             vocab_size=1024, max_positions=66))
    run = tmp_path_factory.mktemp("ck") / "run"
    save_checkpoint(run, 1, build_model(cfg.model, seed=3), cfg, tokenizer_dir)
    return run


def evaluate(capsys, *args) -> tuple[dict, str]:
    assert main(["evaluate", *map(str, args), "--quiet"]) == 0
    out, err = capsys.readouterr()
    return json.loads(out.strip().splitlines()[-1]), err


def test_evaluate_prints_the_three_models_the_ratio_and_its_interval(checkpoint, data_dir, capsys):
    result, err = evaluate(capsys, "--checkpoint", checkpoint, "--data", data_dir)
    assert {"mlm_loss", "perplexity", "tokens", "unigram_perplexity", "untrained_perplexity", "ratio_to_unigram",
            "ratio_interval"} <= set(result)
    low, high = result["ratio_interval"]
    assert low < result["ratio_to_unigram"] < high
    assert result["ratio_to_unigram"] == pytest.approx(result["perplexity"] / result["unigram_perplexity"])
    for name, prefix in (("untrained", "untrained_"), ("unigram", "unigram_"), ("trained", "")):
        loss = result[f"{prefix}loss" if prefix else "mlm_loss"]
        assert f"{name} model: loss {loss:.3f} nats, perplexity {result[prefix + 'perplexity']:.1f}" in err
    assert (f"trained / unigram perplexity = {result['ratio_to_unigram']:.2f} (95% interval {low:.2f}-{high:.2f}"
            in err)
    assert abs(math.log(result["untrained_perplexity"] / 1024)) < 0.05  # about the vocabulary size
    # an untrained checkpoint: worse than the token frequencies, and said so
    assert low > 1 and "WORSE than the unigram model" in err
    # the data's held-out split is small, and named so
    assert result["tokens"] < SMALL_SET
    assert f"small held-out set: {result['tokens']:,} masked tokens, too few to tell runs a few percent apart" in err
    assert "--max-sequences" in err


def test_evaluate_on_enough_tokens_has_no_small_set_note(checkpoint, data_dir, capsys):
    small, _ = evaluate(capsys, "--checkpoint", checkpoint, "--data", data_dir, "--split", "train",
                        "--max-sequences", "140")
    result, err = evaluate(capsys, "--checkpoint", checkpoint, "--data", data_dir, "--split", "train",
                           "--max-sequences", "1400")
    assert result["tokens"] >= SMALL_SET and "small" not in err
    assert f"train-split masked-token loss on {result['tokens']:,} masked tokens" in err  # not called held-out
    width = lambda r: r["ratio_interval"][1] - r["ratio_interval"][0]  # noqa: E731
    assert width(result) < width(small) / 2  # 10x the tokens: about sqrt(10)x narrower


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    import contextlib
    import io

    run = tmp_path_factory.mktemp("pretrain") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["pretrain", "--data", str(data_dir), "--out", str(run), "--quiet", *SMALL,
                     "--set", "train.max_steps=2"]) == 0
    return run, out.getvalue()


def test_pretrain_records_and_prints_the_ratio_to_the_unigram_model(finished_run, data_dir, capsys):
    run, out = finished_run
    summary = json.loads((run / "summary.json").read_text())
    # the unigram model of the training split on the run's own evaluation tokens
    batches = eval_batches(load_split(data_dir, "valid"), 64, 1000, 16)
    unigram = unigram_loss(load_split(data_dir, "train").tokens, 1000, batches)["perplexity"]
    assert summary["unigram_perplexity"] == unigram
    assert summary["ratio_to_unigram"] == pytest.approx(summary["eval_perplexity"] / unigram)
    [done] = [line for line in out.splitlines() if line.startswith("done:")]
    assert (f"held-out perplexity {summary['eval_perplexity']:.2f} (unigram model: {unigram:.2f}; "
            f"ratio {summary['ratio_to_unigram']:.2f})") in done
    # `roberta evaluate` on the same tokens gives the same baseline
    result, _ = evaluate(capsys, "--checkpoint", run, "--data", data_dir, "--max-sequences", "16")
    assert result["unigram_perplexity"] == unigram


def test_report_prints_the_ratio_to_the_unigram_model(finished_run, tmp_path, capsys):
    import shutil

    run, _ = finished_run
    summary = json.loads((run / "summary.json").read_text())
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    reported = json.loads(out.strip().splitlines()[-1])
    assert reported["unigram_perplexity"] == summary["unigram_perplexity"]
    assert reported["ratio_to_unigram"] == pytest.approx(summary["ratio_to_unigram"])
    assert (f"unigram model: perplexity {summary['unigram_perplexity']:.2f}; held-out / unigram perplexity "
            f"{summary['ratio_to_unigram']:.2f}") in out
    # a run from before the baseline was recorded, and a damaged summary.json
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "summary.json").write_text(json.dumps({k: v for k, v in summary.items()
                                                  if k not in ("unigram_perplexity", "ratio_to_unigram")}))
    assert main(["report", str(old)]) == 0
    assert "unigram model: - (not recorded by the version that ran it; `roberta evaluate` scores it)" in \
        capsys.readouterr().out
    (old / "summary.json").write_text('{"step": 2, "eval_')
    assert main(["report", str(old)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {old / 'summary.json'}: unreadable") and err.count("\n") == 1


@pytest.mark.slow
def test_quickstart_prints_the_three_models_and_the_ratios_interval(tmp_path, capsys):
    from roberta.quickstart import quickstart

    r = quickstart(tmp_path / "qs", steps=2, progress=False)
    out = capsys.readouterr().out
    low, high = r["interval"]
    assert low < r["ratio"] < high
    for name in ("untrained", "unigram", "trained"):
        res = r["results"][name]
        assert f"{name} model: loss {res['mlm_loss']:.3f} nats, perplexity {res['perplexity']:.1f}" in out
    assert f"trained / unigram perplexity = {r['ratio']:.2f} (95% interval {low:.2f}-{high:.2f}" in out
    assert r["results"]["unigram"]["tokens"] == r["results"]["trained"]["tokens"] == r["results"]["untrained"]["tokens"]
