"""Downstream: the fine-tuned model as an artifact (OUT/model, predict, the API, export to a
transformers classifier), early stopping, the default lr by size, the paired comparison with a
from-scratch baseline, and frozen-feature probes."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from test_finetune import _separable, save_tiny_checkpoint, write

import roberta
from roberta.downstream.compare import paired_bootstrap, verdict
from roberta.config import ModelConfig
from roberta.downstream.finetune import SMALL_LR_GRID, PAPER_LR_GRID, FinetuneConfig, default_lr_grid, finetune
from roberta.downstream.probe import fit_logistic, fit_ridge
from roberta.downstream.tasks import file_task


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tokenizer_dir):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), tokenizer_dir)


@pytest.fixture(scope="module")
def sentiment_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("sentiment")
    train = d / "train.jsonl.gz"
    with gzip.open(train, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in _separable(320, 0))
    dev = write(d / "dev.csv", "review,sentiment\n" + "".join(f"{r['review']},{r['sentiment']}\n" for r in _separable(60, 1)))
    return train, dev


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_checkpoint, sentiment_files):
    """`roberta finetune` at its defaults except lr/epochs/seeds: OUT with OUT/model."""
    return _finetune(tmp_path_factory, tiny_checkpoint, sentiment_files)


@pytest.fixture(scope="module")
def finetuned_roberta(tmp_path_factory, tokenizer_dir, sentiment_files):
    """The same from a roberta-tiny (2019 architecture) checkpoint."""
    ck = save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt_roberta"), tokenizer_dir, preset="roberta-tiny")
    return _finetune(tmp_path_factory, ck, sentiment_files)


def _finetune(tmp_path_factory, checkpoint, sentiment_files):
    train, dev = sentiment_files
    out = tmp_path_factory.mktemp("ft") / "out"
    r = run_cli("finetune", "--checkpoint", checkpoint, "--train", train, "--dev", dev, "--out", out,
                "--text-column", "review", "--label-column", "sentiment", "--lr-grid", "1e-3,1e-5",
                "--batch-size", "16", "--epochs", "3", "--seeds", "2", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "lr 0.001 won" in r.stdout
    return out


@pytest.mark.slow
def test_finetune_writes_the_best_run_as_a_model_with_its_record(finetuned):
    metrics = json.loads((finetuned / "metrics.json").read_text())
    record = json.loads((finetuned / "model" / "finetune.json").read_text())
    runs = [json.loads(line) for line in (finetuned / "runs.jsonl").read_text().splitlines()]
    best = max((r for r in runs if r["lr"] == metrics["lr"]), key=lambda r: r["value"])
    assert (record["lr"], record["seed"], record["epoch"], record["value"]) == \
           (best["lr"], best["seed"], best["best_epoch"], best["value"])
    assert metrics["value"] == pytest.approx(np.median(metrics["per_seed"]))  # the report stays the median
    for name in ("model.safetensors", "config.json", "labels.json", "tokenizer.json", "vocab.json", "merges.txt"):
        assert (finetuned / "model" / name).is_file(), name
    dev = json.loads((finetuned / "dev_outputs.json").read_text())
    assert len(dev["gold"]) == 60 and len(dev["outputs"]) == 2  # the chosen lr's seeds, for the comparison
    assert record["value"] >= 0.9  # (that the weights are the best epoch's: the predict test)


@pytest.mark.slow
def test_predict_cli_and_api_agree_and_print_the_metric(tmp_path, finetuned, sentiment_files):
    _, dev = sentiment_files
    out = tmp_path / "preds.jsonl"
    r = run_cli("predict", "--checkpoint", finetuned, dev, "--text-column", "review", "--label-column", "sentiment",
                "--out", out)
    assert r.returncode == 0, r.stderr
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [line.split(",")[0] for line in dev.read_text().splitlines()[1:]]
    gold = [line.split(",")[1] for line in dev.read_text().splitlines()[1:]]
    assert len(preds) == len(texts) == 60
    assert all(set(p) == {"label", "probabilities"} and set(p["probabilities"]) == {"neg", "pos"} for p in preds)
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in preds)
    acc = np.mean([p["label"] == g for p, g in zip(preds, gold)])
    assert json.loads(r.stdout.strip().splitlines()[-1])["accuracy"] == pytest.approx(acc)
    record = json.loads((finetuned / "model" / "finetune.json").read_text())
    assert acc == pytest.approx(record["value"])  # the saved model is the recorded best epoch
    # the Python API, on OUT/model too, in input order (reversed input -> reversed output)
    api = roberta.load(finetuned / "model").predict(texts[::-1])
    assert [a["label"] for a in api] == [p["label"] for p in preds][::-1]
    assert api[0]["probabilities"]["pos"] == pytest.approx(preds[-1]["probabilities"]["pos"], abs=1e-5)
    # unlabelled input: predictions, no metric
    write(tmp_path / "u.tsv", "text\n" + "\n".join(texts[:5]) + "\n")
    r = run_cli("predict", "--checkpoint", finetuned, tmp_path / "u.tsv", "--out", tmp_path / "u.jsonl")
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["label"] for x in (tmp_path / "u.jsonl").read_text().splitlines()] == [p["label"] for p in preds[:5]]
    assert "accuracy" not in r.stdout
    r = run_cli("predict", "--checkpoint", tmp_path, tmp_path / "u.tsv", "--out", tmp_path / "x.jsonl")
    assert r.returncode == 2 and "not a fine-tuned model" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("run", ["finetuned", "finetuned_roberta"])
def test_export_hf_classifier_matches_our_logits_and_pipeline_labels(tmp_path, run, sentiment_files, request):
    finetuned = request.getfixturevalue(run)  # tiny (ModernBERT-family) and roberta-tiny
    transformers = pytest.importorskip("transformers")
    _, dev = sentiment_files
    r = run_cli("export-hf", "--checkpoint", finetuned, "--out", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "neg", "1": "pos"} and cfg["label2id"] == {"neg": 0, "pos": 1}
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    ours = roberta.load(finetuned)
    expected = "ModernBert" if ours.model.cfg.family == "modern" else "Roberta"
    assert type(hf).__name__ == f"{expected}ForSequenceClassification"
    texts = [line.split(",")[0] for line in dev.read_text().splitlines()[1:]][:16]
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = tok(texts, padding=True, return_tensors="pt")
    assert batch["attention_mask"].eq(0).any()  # a padded batch
    with torch.no_grad():
        theirs = hf(**batch).logits
        mine = ours.model(batch["input_ids"], batch["attention_mask"])
    assert (theirs - mine).abs().max() <= 1e-4 and mine.std() > 1e-3
    pipe = transformers.pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu")
    assert [p["label"] for p in pipe(texts)] == [p["label"] for p in ours.predict(texts)]


@pytest.mark.slow
def test_regression_predicts_values_and_exports_with_problem_type(tmp_path, tiny_checkpoint):
    transformers = pytest.importorskip("transformers")
    rows = _separable(60, 2)
    write(tmp_path / "r.tsv", "a\tb\ts\n" + "".join(f"{r['review']}\t{r['review'][::-1]}\t{len(r['review']) / 10:.2f}\n" for r in rows))
    r = run_cli("finetune", "--checkpoint", tiny_checkpoint, "--train", tmp_path / "r.tsv", "--dev", tmp_path / "r.tsv",
                "--text-column", "a", "--text-pair-column", "b", "--label-column", "s", "--task", "regression",
                "--lr", "1e-3", "--epochs", "1", "--out", tmp_path / "o", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = run_cli("predict", "--checkpoint", tmp_path / "o", tmp_path / "r.tsv", "--text-column", "a",
                "--text-pair-column", "b", "--label-column", "s", "--out", tmp_path / "p.jsonl")
    assert r.returncode == 0, r.stderr
    preds = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(preds) == 60 and all(set(p) == {"value"} for p in preds) and "pearson" in r.stdout
    r = run_cli("export-hf", "--checkpoint", tmp_path / "o" / "model", "--out", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["problem_type"] == "regression" and cfg["num_labels"] == 1
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    pairs = [(r["review"], r["review"][::-1]) for r in rows[:8]]
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = tok([p[0] for p in pairs], [p[1] for p in pairs], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        theirs = hf(**batch).logits[:, 0].numpy()
    from roberta.downstream.predict import Finetuned

    assert isinstance(roberta.load(tmp_path / "o"), Finetuned)
    # transformers computes in fp32; ours at the same precision (auto would be bf16 on a bf16 CPU)
    ours = [p["value"] for p in Finetuned(tmp_path / "o", precision="fp32").predict(pairs)]
    assert np.abs(theirs - np.asarray(ours)).max() <= 1e-4


def test_patience_stops_a_run_that_no_longer_improves(tmp_path, tiny_checkpoint, sentiment_files):
    train, dev = sentiment_files
    task = file_task(train, dev, "review", None, "sentiment")
    logs = []
    # lr 1e-7: the dev score cannot move much, so with patience 1 the run stops at the first non-improvement
    r = finetune(task, tiny_checkpoint, tmp_path / "o",
                 FinetuneConfig(lrs=(1e-7,), epochs=8, patience=1, batch_size=32, device="cpu", max_train=64), logs.append)
    run = json.loads((tmp_path / "o" / "runs.jsonl").read_text())
    hist = [h["accuracy"] for h in run["history"]]
    assert len(hist) < 8 and any("early stop" in line for line in logs)
    best = r["best_epoch"][0]
    assert all(h <= hist[best - 1] for h in hist[best:])  # stopped only after a non-improving epoch
    assert len(hist) - best == 1  # ... exactly `patience` of them


@pytest.mark.slow
def test_default_lr_grid_follows_the_checkpoints_size(tmp_path, tiny_checkpoint, sentiment_files):
    assert default_lr_grid(ModelConfig(hidden=256)) == SMALL_LR_GRID == (3e-4, 1e-4, 5e-5, 3e-5)
    assert default_lr_grid(ModelConfig(hidden=768)) == PAPER_LR_GRID
    train, dev = sentiment_files
    r = run_cli("finetune", "--checkpoint", tiny_checkpoint, "--train", train, "--dev", dev, "--out", tmp_path / "o",
                "--text-column", "review", "--label-column", "sentiment", "--epochs", "1", "--max-train", "32",
                "--device", "cpu")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert set(metrics["lr_grid"]) == {"0.0003", "0.0001", "5e-05", "3e-05"}
    assert "lr grid 0.0003, 0.0001, 5e-05, 3e-05 (the default for a 2 x 64 model" in r.stdout
    assert f"lr {metrics['lr']:g} won" in r.stdout


def test_paired_bootstrap_finds_a_real_gap_and_not_an_imaginary_one():
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 800)

    def arm(acc, seeds=5):  # (seeds, n) predictions right with probability acc
        return np.where(rng.random((seeds, len(gold))) < acc, gold, 1 - gold)

    same = paired_bootstrap(arm(0.8), arm(0.8), gold, "accuracy")
    assert same["interval"][0] < 0 < same["interval"][1] and verdict(same) == "no difference shown"
    gap = paired_bootstrap(arm(0.85), arm(0.75), gold, "accuracy")
    assert 0 < gap["interval"][0] < gap["delta"] < gap["interval"][1] and verdict(gap) == "pretrained better"
    assert gap["delta"] == pytest.approx(0.10, abs=0.03)
    # the interval is wide for a one-point gap on ~800 examples (SST-2 dev's size): not significant
    small = paired_bootstrap(arm(0.81), arm(0.80), gold, "f1")
    assert small["interval"][1] - small["interval"][0] > 0.02


def test_finetune_baseline_scratch_adds_the_comparison(tmp_path, tokenizer_dir, sentiment_files):
    ck = save_tiny_checkpoint(tmp_path / "ck", tokenizer_dir, seed=3)
    train, dev = sentiment_files
    r = run_cli("finetune", "--checkpoint", ck, "--train", train, "--dev", dev, "--out", tmp_path / "o",
                "--text-column", "review", "--label-column", "sentiment", "--lr-grid", "1e-3", "--baseline", "scratch",
                "--baseline-lr-grid", "1e-3,3e-4", "--epochs", "1", "--seeds", "2", "--max-train", "96", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    base = json.loads((tmp_path / "o" / "baseline-scratch" / "metrics.json").read_text())
    assert m["baseline_value"] == pytest.approx(base["value"]) and base["from_scratch"]
    assert set(base["lr_grid"]) == {"0.001", "0.0003"}  # its own grid
    assert m["delta"] == pytest.approx(m["value"] - m["baseline_value"])
    low, high = m["interval"]
    assert low <= high and m["verdict"] == verdict(m)
    assert json.loads(r.stdout.strip().splitlines()[-1])["interval"] == m["interval"]
    assert "95% interval" in r.stdout


def test_probe_fits_recover_known_solutions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g, dtype=torch.float64)
    w = torch.tensor([2.0, -1.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    y = (x @ w + 0.05 * torch.randn(400, generator=g, dtype=torch.float64))
    ridge = fit_ridge(x, y + 3.0, 1e-8)
    assert torch.allclose(ridge[:-1], w, atol=0.02) and ridge[-1].item() == pytest.approx(3.0 + y.mean().item(), abs=1e-6)
    assert fit_ridge(x, y, 100.0)[:-1].norm() < 0.1 * w.norm()  # the penalty shrinks
    labels = (x @ w > 0).long()
    W = fit_logistic(x, labels, 2, 1e-3)
    assert ((x @ W[:-1] + W[-1]).argmax(1) == labels).double().mean() > 0.97


@pytest.mark.slow
def test_probe_cli_with_random_baseline_writes_the_comparison(tmp_path, tiny_checkpoint, sentiment_files):
    train, dev = sentiment_files
    r = run_cli("probe", "--checkpoint", tiny_checkpoint, "--train", train, "--dev", dev, "--text-column", "review",
                "--label-column", "sentiment", "--baseline", "random", "--out", tmp_path / "p")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert m["task"] == "train.jsonl.gz" and m["metric"] == "accuracy"
    # random token embeddings of a keyword task are linearly separable from mean-pooled features
    assert m["value"] > 0.8 and m["baseline_value"] > 0.8
    assert m["delta"] == pytest.approx(m["value"] - m["baseline_value"])
    assert m["interval"][0] <= m["delta"] <= m["interval"][1]
    assert json.loads(r.stdout.strip().splitlines()[-1]).keys() == {"task", "metric", "value", "baseline_value", "delta", "interval"}


def test_ablate_probe_column_comes_from_probe_run(tmp_path, tokenizer_dir):
    from roberta.study.report import read_run
    from roberta.downstream.probe import probe_run

    run = tmp_path / "arm" / "seed0"
    save_tiny_checkpoint(run, tokenizer_dir)
    (run / "summary.json").write_text(json.dumps({"tokens": 1, "flops": 1.0, "elapsed": 1.0, "eval_loss": 1.0,
                                                  "eval_perplexity": 2.7}))
    glue = tmp_path / "glue" / "SST-2"
    for split, seed in (("train", 0), ("dev", 1)):
        write(glue / f"{split}.tsv", "sentence\tlabel\n" + "".join(
            f"{r['review']}\t{int(r['sentiment'] == 'pos')}\n" for r in _separable(80, seed)))
    probe_run(run, str(tmp_path / "glue"), ["sst2"], max_train=60)
    result = read_run(run)
    assert set(result.tasks) == {"probe-sst2"} and result.task_metric["probe-sst2"] == "accuracy"
    assert result.tasks["probe-sst2"] > 0.7  # keyword sentiment is linearly readable even at random init
    r = run_cli("ablate", "masking", "--data", tmp_path, "--max-tokens", "1e3", "--out", tmp_path / "a", "--probe", "sst2")
    assert r.returncode == 2 and "--probe TASK needs --glue-dir" in r.stderr


def test_probe_scores_a_test_file_with_the_probe_it_fitted(tmp_path, tiny_checkpoint, sentiment_files, capsys):
    """issue 23: probe --test. The test file here holds the dev examples, so the fitted probe must
    score them exactly as it scored dev (features standardised with train's statistics both times)."""
    from roberta.cli import main

    train, dev = sentiment_files
    out = tmp_path / "p"
    assert main(["probe", "--checkpoint", str(tiny_checkpoint), "--train", str(train), "--dev", str(dev), "--test",
                 str(dev), "--text-column", "review", "--label-column", "sentiment", "--max-train", "100",
                 "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["test_examples"] == m["dev_examples"] == 60 and m["test_value"] == m["value"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_value"] == m["test_value"]


# ---- issue 23: a model of the other kind, and exported models on long inputs

@pytest.fixture(scope="module")
def quick_finetuned(tmp_path_factory, tiny_checkpoint):
    """A finetune output in seconds (one epoch, one lr): for what does not need a trained classifier."""
    from roberta.downstream.finetune import finetune

    d = tmp_path_factory.mktemp("quick_ft")
    train = write(d / "t.tsv", "text\tlabel\n" + "".join(f"{r['review']}\t{r['sentiment']}\n" for r in _separable(40, 0)))
    finetune(file_task(train, train), tiny_checkpoint, d / "out",
             FinetuneConfig(lrs=(1e-3,), epochs=1, device="cpu", progress=False), log=lambda _: None)
    return d / "out"


def test_a_model_of_the_other_kind_says_what_to_use_instead(quick_finetuned, tiny_checkpoint):
    from roberta.errors import UserError

    ft, pretrained = roberta.load(quick_finetuned), roberta.load(tiny_checkpoint)
    for method in ("fill_mask", "embed"):
        with pytest.raises(UserError, match=rf"is a fine-tuned classifier, which has no \.{method}\(\): use "
                                            rf"\.predict\(texts\).*{tiny_checkpoint}"):
            getattr(ft, method)("a <mask> b")
        assert not hasattr(ft, method)  # an AttributeError as well: duck typing still works
    with pytest.raises(AttributeError, match=r"is a pretrained \(masked-LM\) checkpoint, which has no \.predict\(\)"):
        pretrained.predict(["a text"])
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):  # other names: the usual error
        ft.nothing
    r = run_cli("fill-mask", "--checkpoint", quick_finetuned, "a <mask> b")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: --checkpoint") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "roberta predict" in r.stderr and str(tiny_checkpoint) in r.stderr


@pytest.mark.slow
def test_exported_classifier_takes_long_inputs_with_truncation(tmp_path, quick_finetuned):
    """transformers' pipelines do not truncate unless asked (nothing in a model directory can make
    them): the export says how, at the model's real length, and then agrees with `predict`."""
    transformers = pytest.importorskip("transformers")
    r = run_cli("export-hf", "--checkpoint", quick_finetuned, "--out", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    max_len = json.loads((quick_finetuned / "model" / "finetune.json").read_text())["max_len"]
    assert f"for texts over {max_len} tokens, use pipeline('text-classification', model='{tmp_path / 'hf'}', " \
           "truncation=True)" in r.stdout
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    long = " ".join(["the value of a list is good"] * 60)
    assert tok.model_max_length == max_len < len(tok(long)["input_ids"])
    pipe = transformers.pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu", truncation=True,
                                 top_k=None)
    theirs = {p["label"]: p["score"] for p in pipe([long])[0]}
    ours = roberta.load(quick_finetuned).predict([long])[0]["probabilities"]
    assert theirs == pytest.approx(ours, abs=1e-4)
