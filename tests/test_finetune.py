"""Fine-tuning: GLUE layouts, the generic loader, metrics, labels, row errors, best-epoch selection,
and a short end-to-end `roberta finetune` that must learn a separable task."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch

from conftest import run_cli, tiny_config
from roberta.errors import UserError
from roberta.downstream.batches import encode, length_batches
from roberta.downstream.finetune import best_epoch
from roberta.downstream.metrics import accuracy, average_ranks, f1, matthews, pearson, spearman
from roberta.downstream.tasks import GLUE_TASKS, Columns, file_task, find_glue_tasks, glue_task, label_order, read_examples, targets
from roberta.tokenizer import BOS_ID, EOS_ID, load_tokenizer


def write(path, text: str, encoding: str = "utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


# Two rows per file, laid out exactly as the GLUE distribution ships them.
GLUE_FILES = {
    "SST-2": "sentence\tlabel\nit 's a charming journey . \t1\nunflinchingly bleak \t0\n",
    "CoLA": "gj04\t1\t\tThe sailors rode the breeze.\ngj04\t0\t*\tThe more we study verbs.\n",
    "MRPC": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
            "1\t1355540\t1355592\tHe said the pie business doesn 't fit .\t\" The pie business does not fit .\n"
            "0\t2029631\t2029565\tMagnarelli said Racicot hated it .\tHis wife said he was \" 100 percent .\n",
    "RTE": "index\tsentence1\tsentence2\tlabel\n0\tDana Reeve has died.\tReeve had an accident.\tnot_entailment\n"
           "1\tA is B.\tB is A.\tentailment\n",
    "STS-B": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
             "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man is dancing.\tA man dances.\t5.000\n"
             "1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA child rides.\tA cat sleeps.\t0.250\n",
    "MNLI": "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label\n"
            "0\t1\t1e\tgov\t(\t(\t(\t(\tCats purr.\tCats make sounds.\tentailment\tentailment\n"
            "1\t2\t2c\tgov\t(\t(\t(\t(\tDogs bark.\tDogs are silent.\tcontradiction\tcontradiction\n",
    "QNLI": "index\tquestion\tsentence\tlabel\n0\tWho?\tHim.\tentailment\n1\tWhy?\tNo.\tnot_entailment\n",
    "QQP": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\tHow to cook?\tHow do I cook?\t1\n"
           "1\t3\t4\tWhat is 2+2?\tWho won?\t0\n",
}

# (task, first row's text, pair, label)
FIRST_ROWS = {
    "sst2": ("it 's a charming journey .", None, "1"),
    "cola": ("The sailors rode the breeze.", None, "1"),
    "mrpc": ("He said the pie business doesn 't fit .", "\" The pie business does not fit .", "1"),
    "rte": ("Dana Reeve has died.", "Reeve had an accident.", "not_entailment"),
    "stsb": ("A man is dancing.", "A man dances.", "5.000"),
    "mnli": ("Cats purr.", "Cats make sounds.", "entailment"),
    "qnli": ("Who?", "Him.", "entailment"),
    "qqp": ("How to cook?", "How do I cook?", "1"),
}


@pytest.fixture
def glue_dir(tmp_path):
    for folder, text in GLUE_FILES.items():
        dev = "dev_matched.tsv" if folder == "MNLI" else "dev.tsv"
        write(tmp_path / folder / "train.tsv", text)
        write(tmp_path / folder / dev, text)
    return tmp_path


def test_each_glue_layout_is_parsed(glue_dir):
    assert find_glue_tasks(glue_dir) == list(GLUE_TASKS)
    for name, (text, pair, label) in FIRST_ROWS.items():
        task = glue_task(name, glue_dir)
        assert len(task.train) == len(task.dev) == 2, name
        e = task.train[0]
        assert (e.text, e.pair, e.label) == (text, pair, label), name
        assert e.where.endswith(":1" if name == "cola" else ":2"), (name, e.where)  # CoLA has no header
        y = targets(task.train, task.labels, task.label_source)
        if name == "stsb":
            assert task.regression and y.tolist() == [5.0, 0.25]
        else:
            assert not task.regression and task.labels[y[0]] == label
    # a quote must not swallow the rest of the file (tab-split, not CSV)
    assert glue_task("mrpc", glue_dir).train[1].pair == "His wife said he was \" 100 percent ."


def test_generic_loader_reads_tsv_csv_jsonl_and_gz(tmp_path):
    rows = [("A film, \"great\" fun.", "yes", "pos"), ("Dull <br /><br />and long.", "no", "neg"), ("Fine.", "ok", "pos")]
    write(tmp_path / "d.tsv", "review\tother\tlabel\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows))
    csv_lines = ["review,other,label"] + [",".join(['"' + a.replace('"', '""') + '"', b, c]) for a, b, c in rows]
    write(tmp_path / "d.csv", "\r\n".join(csv_lines) + "\r\n")
    jsonl = "".join(json.dumps({"review": a, "other": b, "label": c}) + "\n" for a, b, c in rows)
    write(tmp_path / "d.jsonl", jsonl)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write(jsonl)
    columns = Columns("review", "other", "label")
    expected = [("A film, \"great\" fun.", "yes", "pos"), ("Dull \n\nand long.", "no", "neg"), ("Fine.", "ok", "pos")]
    for name in ("d.tsv", "d.csv", "d.jsonl", "d.jsonl.gz"):
        got = [(e.text, e.pair, e.label) for e in read_examples(tmp_path / name, columns)]
        assert got == expected, name
    with pytest.raises(UserError, match="unsupported file type"):
        read_examples(write(tmp_path / "d.txt", "x"), columns)
    with pytest.raises(UserError, match=r"d\.jsonl:1: no column 'text'.*--text-column"):
        read_examples(tmp_path / "d.jsonl", Columns("text", None, "label"))


def test_metrics_match_hand_computed_values():
    pred, gold = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 1, 0, 0, 0, 1])
    assert accuracy(pred, gold) == pytest.approx(4 / 6)
    assert f1(pred, gold) == pytest.approx(2 / 3)  # tp 2, fp 1, fn 1
    assert matthews(pred, gold) == pytest.approx(1 / 3)  # (2*2 - 1*1) / sqrt(3*3*3*3)
    assert f1(np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0])) == pytest.approx(2 / 3)
    assert matthews(np.array([0, 2, 2, 0]), np.array([0, 1, 2, 0])) == pytest.approx(6 / math.sqrt(80))  # 3 classes
    assert matthews(np.array([1, 1, 1]), np.array([1, 0, 1])) == 0.0  # constant prediction: defined as 0
    assert matthews(gold, gold) == pytest.approx(1.0) and matthews(1 - gold, gold) == pytest.approx(-1.0)
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    assert average_ranks(np.array([10, 20, 20, 5])).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2, 3], [1, 10, 100]) == pytest.approx(1.0)


def test_string_labels_keep_a_stable_order_and_unseen_dev_labels_are_errors(tmp_path):
    train = write(tmp_path / "train.tsv", "text\tlabel\na\tpos\nb\tneg\nc\tpos\n")
    dev = write(tmp_path / "dev.tsv", "text\tlabel\nd\tneg\ne\tpos\n")
    task = file_task(train, dev)
    assert task.labels == ("neg", "pos")
    assert targets(task.train, task.labels, task.label_source).tolist() == [1, 0, 1]
    assert targets(task.dev, task.labels, task.label_source).tolist() == [0, 1]
    numeric = read_examples(write(tmp_path / "n.tsv", "text\tlabel\na\t10\nb\t2\nc\t-1\n"), Columns("text", None, "label"))
    assert label_order(numeric) == ("-1", "2", "10")
    bad = write(tmp_path / "bad.tsv", "text\tlabel\nd\tneg\ne\tneutral\n")
    task = file_task(train, bad)
    with pytest.raises(UserError, match=rf"{bad}:3: label 'neutral' does not occur in the training data.*neg, pos"):
        targets(task.dev, task.labels, task.label_source)
    with pytest.raises(UserError, match="only one label"):
        file_task(write(tmp_path / "one.tsv", "text\tlabel\na\tpos\n"), dev)


@pytest.mark.parametrize("name, content, line, message", [
    ("ragged.tsv", "text\tlabel\na\t1\nb\t1\textra\n", 3, "3 columns where the header has 2"),
    ("blank.tsv", "text\tlabel\na\t1\n\nb\t0\n", 3, "empty row"),
    ("notext.tsv", "text\tlabel\na\t1\n \t0\n", 3, "empty text"),
    ("nolabel.tsv", "text\tlabel\na\t1\nb\t\n", 3, "empty label"),
    ("ragged.csv", "text,label\na,1\nb,1,2\n", 3, "3 columns where the header has 2"),
    ("blank.jsonl", '{"text": "a", "label": 1}\n\n', 2, "empty row"),
    ("broken.jsonl", '{"text": "a", "label": 1}\n{"text": \n', 2, "not valid JSON"),
])
def test_ragged_and_empty_rows_name_file_and_line(tmp_path, name, content, line, message):
    path = write(tmp_path / name, content)
    with pytest.raises(UserError, match=rf"{path}:{line}: .*{message}"):
        read_examples(path, Columns("text", None, "label"))


@pytest.mark.parametrize("name, content", [
    ("headerless.csv", '"' + "A review that goes on, and on about the film. " * 45 + '",pos\n"Short, but data.",neg\n'),
    ("headerless.tsv", "great film, would watch again\t1\nawful\t0\n"),
])
def test_a_file_without_a_header_is_named_as_such_at_line_1(tmp_path, name, content):
    """Issue 23: a header-less file quoted a 2,000-character document as a "column name", at the
    line where the next record ended."""
    path = write(tmp_path / name, content)
    with pytest.raises(UserError) as e:
        file_task(path, path)
    message = str(e.value)
    assert message.startswith(f"{path}:1: the first row looks like data, not a header ("), message
    assert message.endswith("does the file have a header? add one with the columns text,label"), message
    assert len(message) < len(str(path)) + 200, message  # a cell is quoted by its first 40 characters


def test_header_and_multi_line_record_errors_point_where_they_are(tmp_path):
    named = write(tmp_path / "named.csv", "review,sentiment\na,pos\nb,neg\n")
    with pytest.raises(UserError, match=rf"{named}:1: no column 'text' in the header \(has: 'review', 'sentiment'\); "
                                        "choose it with --text-column"):
        file_task(named, named)
    multi = write(tmp_path / "multi.csv", 'text,label\n"one line",pos\n"a record\nover three\nlines",neg,extra\n')
    with pytest.raises(UserError, match=rf"{multi}:3: 3 columns where the header has 2"):  # where it starts
        read_examples(multi, Columns("text", None, "label"))


def test_regression_labels_must_be_numbers(tmp_path):
    train = write(tmp_path / "t.jsonl", '{"s": "a", "y": 1.5}\n{"s": "b", "y": "high"}\n')
    task = file_task(train, train, text_column="s", label_column="y", regression=True)
    with pytest.raises(UserError, match=rf"{train}:2: label 'high' is not a number"):
        targets(task.train, task.labels, task.label_source)


def test_best_epoch_selection_picks_the_maximum():
    assert best_epoch([0.50, 0.71, 0.64]) == 2
    assert best_epoch([0.2, 0.1, 0.3]) == 3
    assert best_epoch([0.7, 0.7, 0.6]) == 1  # the first on ties
    assert best_epoch([float("nan"), -0.2, -0.5]) == 2  # NaN never wins (MCC/Pearson can be negative)


def test_length_batches_cover_every_input_once_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=1000)
    batches = length_batches(lengths, 32, np.random.default_rng(1), pool=10)
    assert len(batches) == math.ceil(1000 / 32)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    shuffled = np.random.default_rng(2).permutation(1000)
    padded_random = sum(len(b) * lengths[b].max() for b in np.array_split(shuffled, len(batches)))
    assert padded < 0.75 * padded_random
    ordered = np.concatenate(length_batches(lengths, 64, None))
    assert (np.diff(lengths[ordered]) >= 0).all()


def test_truncation_frames_pairs_and_chunking_covers_long_texts(tokenizer_dir, tmp_path):
    from roberta.downstream.tasks import Example

    tok = load_tokenizer(tokenizer_dir)
    long_text = " ".join(["the value of the attribute is returned"] * 40)
    ex = [Example(long_text, None, "1", "x:1"), Example("short", None, "0", "x:2")]
    y = np.array([1, 0])
    enc = encode(tok, ex, y, 32, "truncate")
    assert [len(i) for i in enc.ids][0] == 32 and enc.ids[0][0] == BOS_ID and enc.ids[0][-1] == EOS_ID
    pair = encode(tok, [Example(long_text, long_text, "1", "x:1")], y[:1], 32, "truncate").ids[0]
    assert len(pair) == 32 and pair.count(EOS_ID) == 3  # <s> A </s></s> B </s>
    chunks = encode(tok, ex, y, 32, "chunk")
    n_body = len(tok.encode(long_text, add_special_tokens=False).ids)
    assert chunks.owner.tolist() == [0] * math.ceil(n_body / 30) + [1]
    assert all(len(c) <= 32 and c[0] == BOS_ID and c[-1] == EOS_ID for c in chunks.ids)
    assert sum(len(c) - 2 for c in chunks.ids[:-1]) == n_body  # every token lands in exactly one chunk


def save_tiny_checkpoint(path, tokenizer_dir, seed: int = 0, preset: str = "tiny"):
    """An untrained small model of `preset` (weights from `seed`) saved as a checkpoint with the test tokenizer."""
    import dataclasses

    from roberta.training.checkpoint import save_checkpoint
    from roberta.model import build_model

    cfg = tiny_config(preset)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=1000, max_positions=66))
    return save_checkpoint(path, 0, build_model(cfg.model, seed=seed), cfg, tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tokenizer_dir):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), tokenizer_dir)


def _separable(n: int, seed: int) -> list[dict]:
    """Sentiment by keyword: 'good'/'great' vs 'bad'/'awful' among neutral filler words."""
    rng = np.random.default_rng(seed)
    filler = "the value of a list is returned when this function and module file object".split()
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = list(rng.choice(filler, size=rng.integers(4, 12)))
        words.insert(int(rng.integers(0, len(words))), rng.choice(["good", "great"] if label == "pos" else ["bad", "awful"]))
        rows.append({"review": " ".join(words), "sentiment": label})
    return rows


@pytest.mark.slow
def test_finetune_learns_a_separable_task_end_to_end(tmp_path, tiny_checkpoint):
    train = tmp_path / "train.jsonl.gz"
    with gzip.open(train, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in _separable(400, 0))
    dev = write(tmp_path / "dev.csv", "review,sentiment\n" + "".join(f"{r['review']},{r['sentiment']}\n" for r in _separable(100, 1)))
    out = tmp_path / "out"
    r = run_cli("finetune", "--checkpoint", tiny_checkpoint, "--train", train, "--dev", dev, "--out", out,
                "--text-column", "review", "--label-column", "sentiment", "--lr", "1e-3", "--batch-size", "16",
                "--epochs", "3", "--seeds", "2", "--max-train", "320")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {k: metrics[k] for k in ("task", "metric", "value", "per_seed", "best_epoch")}
    assert metrics["metric"] == "accuracy" and metrics["train_examples"] == 320 and metrics["dev_examples"] == 100
    assert len(metrics["per_seed"]) == 2 and metrics["value"] == pytest.approx(np.median(metrics["per_seed"]))
    assert metrics["value"] >= 0.9, metrics  # chance is 0.5
    assert json.loads((out / "labels.json").read_text())["labels"] == ["neg", "pos"]
    for run in map(json.loads, (out / "runs.jsonl").read_text().splitlines()):
        scores = [h["accuracy"] for h in run["history"]]
        assert run["value"] == max(scores) and scores[run["best_epoch"] - 1] == max(scores)


@pytest.mark.slow
def test_cli_reports_user_errors_and_evaluates_every_glue_task(tmp_path, tiny_checkpoint):
    write(tmp_path / "t.tsv", "text\tlabel\na\tpos\nb\tneg\n")
    write(tmp_path / "d.tsv", "text\tlabel\na\tpos\nb\tmaybe\n")
    r = run_cli("finetune", "--checkpoint", tiny_checkpoint, "--train", tmp_path / "t.tsv", "--dev", tmp_path / "d.tsv",
                "--out", tmp_path / "o")
    assert r.returncode == 2 and f"{tmp_path / 'd.tsv'}:3: label 'maybe'" in r.stderr and "Traceback" not in r.stderr
    glue = tmp_path / "glue"
    for folder in ("SST-2", "STS-B", "RTE"):
        write(glue / folder / "train.tsv", GLUE_FILES[folder])
        write(glue / folder / "dev.tsv", GLUE_FILES[folder])
    r = run_cli("glue", "--checkpoint", tiny_checkpoint, "--glue-dir", glue, "--epochs", "1", "--out", tmp_path / "g")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result) == {"sst2", "rte", "stsb", "average"}
    assert result["average"] == pytest.approx(np.mean([result["sst2"], result["rte"], result["stsb"]]), abs=1e-3)
    assert lines[-4].split() == ["sst2", "rte", "stsb", "avg"] and lines[-3].split() == ["accuracy", "accuracy", "pearson"]
    assert (tmp_path / "g" / "stsb" / "metrics.json").is_file()
    r = run_cli("evaluate", "--checkpoint", tiny_checkpoint)
    assert r.returncode == 2 and "required: --data" in r.stderr
    if not torch.cuda.is_available():  # asking for a GPU that is not there is a user error, not a traceback
        r = run_cli("finetune", "--checkpoint", tiny_checkpoint, "--train", tmp_path / "t.tsv", "--dev",
                    tmp_path / "t.tsv", "--out", tmp_path / "o", "--device", "cuda")
        assert r.returncode == 2 and "--device cuda: no CUDA GPU" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_from_scratch_starts_from_random_weights_and_warns_about_a_single_lr(tmp_path, tokenizer_dir):
    from roberta.training.checkpoint import load_weights
    from roberta.downstream.finetune import FinetuneConfig, setup
    from roberta.downstream.tasks import file_task

    # "pretrained" weights that no fine-tuning seed's init reproduces
    tiny_checkpoint = save_tiny_checkpoint(tmp_path / "ck", tokenizer_dir, seed=12345)

    write(tmp_path / "t.tsv", "text\tlabel\n" + "".join(f"{r['review']}\t{r['sentiment']}\n" for r in _separable(40, 0)))
    task = file_task(tmp_path / "t.tsv", tmp_path / "t.tsv", "text", None, "label")
    saved = load_weights(tiny_checkpoint)["roberta.embeddings.word_embeddings.weight"]
    pretrained = setup(task, tiny_checkpoint, FinetuneConfig(device="cpu")).new_model(0)
    scratch = setup(task, tiny_checkpoint, FinetuneConfig(device="cpu", from_scratch=True)).new_model(0)
    assert torch.equal(pretrained.roberta.embeddings.word_embeddings.weight, saved)
    assert not torch.allclose(scratch.roberta.embeddings.word_embeddings.weight, saved)
    # same architecture either way
    assert [p.shape for p in scratch.parameters()] == [p.shape for p in pretrained.parameters()]
    r = run_cli("finetune", "--checkpoint", tiny_checkpoint, "--train", tmp_path / "t.tsv", "--dev", tmp_path / "t.tsv",
                "--out", tmp_path / "o", "--epochs", "1", "--lr", "1e-3", "--from-scratch", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "note: one lr (0.001) for a from-scratch baseline" in r.stdout
    r = run_cli("finetune", "--checkpoint", tiny_checkpoint, "--train", tmp_path / "t.tsv", "--dev", tmp_path / "t.tsv",
                "--out", tmp_path / "o2", "--epochs", "1", "--lr-grid", "1e-3,3e-3", "--from-scratch", "--device", "cpu")
    assert r.returncode == 0 and "note: one lr" not in r.stdout


# ---- issue 23: an interrupted job continues; one bar for the whole job; no --dev; --test

# a grid of 2 lrs x 2 seeds x 2 epochs; one thread: on a loaded 2-core machine torch's default of 2 ran 20x slower
FT_ARGS = ["--text-column", "review", "--label-column", "sentiment", "--lr-grid", "1e-3,3e-4", "--batch-size", "16",
           "--epochs", "2", "--seeds", "2", "--device", "cpu", "--threads", "1"]


def _sentiment_tsv(path, n: int, seed: int):
    return write(path, "review\tsentiment\n" + "".join(f"{r['review']}\t{r['sentiment']}\n" for r in _separable(n, seed)))


def _finetune_argv(ck, train, dev, out, *more) -> list[str]:
    split = ["--train", str(train)] + (["--dev", str(dev)] if dev else [])
    return ["finetune", "--checkpoint", str(ck), *split, "--out", str(out), *FT_ARGS, *more]


def _runs(out) -> list[dict]:
    """runs.jsonl without wall-clock times."""
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    for r in runs:
        for h in r["history"]:
            h.pop("seconds")
    return runs


def test_an_interrupted_finetune_continues_where_it_stopped(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """Ctrl-C in the third of four (lr, seed) runs, then the same command again: the two finished runs
    are reused (not retrained), the rest run, and everything written equals an uninterrupted job's."""
    import roberta.downstream.finetune as ft
    from roberta.cli import main
    from roberta.training.checkpoint import load_weights

    train, dev = _sentiment_tsv(tmp_path / "train.tsv", 96, 0), _sentiment_tsv(tmp_path / "dev.tsv", 40, 1)
    assert main(_finetune_argv(tiny_checkpoint, train, dev, tmp_path / "whole", "--quiet")) == 0
    real, steps = ft.forward, []

    def forward(model, ids, idx, precision="auto", pack=0, stop_at=None):
        if model.training:
            steps.append(1)
            if len(steps) == stop_at:
                raise KeyboardInterrupt
        return real(model, ids, idx, precision, pack)

    out = tmp_path / "out"
    monkeypatch.setattr(ft, "forward", lambda *a: forward(*a, stop_at=2 * 12 + 3))  # 6 steps x 2 epochs per run
    assert main(_finetune_argv(tiny_checkpoint, train, dev, out, "--quiet")) == 130
    assert "run the same command again to continue" in capsys.readouterr().err
    assert len(_runs(out)) == 2
    steps.clear()
    monkeypatch.setattr(ft, "forward", lambda *a: forward(*a))
    assert main(_finetune_argv(tiny_checkpoint, train, dev, out, "--quiet")) == 0
    assert "reusing 2 finished run(s)" in capsys.readouterr().out
    assert len(steps) == 2 * 12  # only the two unfinished runs trained
    assert _runs(out) == _runs(tmp_path / "whole")
    whole, again = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", out))
    for key in ("value", "per_seed", "best_epoch", "lr", "lr_grid", "per_seed_metrics"):
        assert again[key] == whole[key], key
    a, b = load_weights(tmp_path / "whole" / "model"), load_weights(out / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "dev_outputs.json").read_text() == (tmp_path / "whole" / "dev_outputs.json").read_text()

    # a finished job run again: nothing retrained, the same result
    steps.clear()
    assert main(_finetune_argv(tiny_checkpoint, train, dev, out, "--quiet")) == 0
    assert not steps and "already finished" in capsys.readouterr().out
    # another configuration into the same --out: refused, naming what differs; --overwrite starts over
    before = (out / "runs.jsonl").read_text()
    assert main(_finetune_argv(tiny_checkpoint, train, dev, out, "--quiet", "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert "epochs 2 -> 1" in err and "--overwrite" in err and (out / "runs.jsonl").read_text() == before
    assert main(_finetune_argv(tiny_checkpoint, train, dev, out, "--quiet", "--epochs", "1", "--overwrite")) == 0
    assert [len(r["history"]) for r in _runs(out)] == [1, 1, 1, 1]


@pytest.mark.slow
def test_ctrl_c_in_a_real_finetune_process_then_the_same_command_finishes(tmp_path, tiny_checkpoint):
    """A real SIGINT to `python -m roberta finetune` after its first run: exit 130 with a line
    saying how to continue, and the same command then finishes the job in that --out, reusing it."""
    import signal
    import subprocess
    import sys
    import time

    train, dev = _sentiment_tsv(tmp_path / "train.tsv", 960, 0), _sentiment_tsv(tmp_path / "dev.tsv", 40, 1)
    argv = [sys.executable, "-m", "roberta", *_finetune_argv(tiny_checkpoint, train, dev, tmp_path / "out")]
    runs = tmp_path / "out" / "runs.jsonl"
    # a shell starts background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt
    # handler: the child gets the default disposition a user's terminal gives it, whoever runs pytest
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (runs.is_file() and runs.read_text().endswith("\n")):
        time.sleep(0.005)
    assert proc.poll() is None, "the job ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)  # in the second of four runs
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "run the same command again to continue" in err
    finished = _runs(tmp_path / "out")
    assert 1 <= len(finished) < 4
    r = run_cli(*argv[3:])
    assert r.returncode == 0, r.stderr
    assert f"reusing {len(finished)} finished run(s)" in r.stdout
    assert _runs(tmp_path / "out")[: len(finished)] == finished
    assert len(_runs(tmp_path / "out")) == 4 and (tmp_path / "out" / "model" / "model.safetensors").is_file()


def test_finetune_shows_one_bar_over_the_whole_job_unless_quiet(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    import io
    import sys

    from roberta.cli import main

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    train, dev = _sentiment_tsv(tmp_path / "train.tsv", 96, 0), _sentiment_tsv(tmp_path / "dev.tsv", 40, 1)
    assert main(_finetune_argv(tiny_checkpoint, train, dev, tmp_path / "o")) == 0
    lines = term.getvalue().replace("\r", "\n").splitlines()
    bars = [ln for ln in lines if "%|" in ln]
    total = 2 * 2 * 2 * 6  # lrs x seeds x epochs x steps per epoch
    assert bars and all(ln.startswith("finetune:") for ln in bars), bars[:3]  # one job bar, no bar per epoch
    assert "100%" in bars[-1] and f"| {total}/{total} [" in bars[-1], bars[-1]
    assert "lr 0.001 seed 0 epoch 1/2: train loss" in capsys.readouterr().out  # the per-epoch lines stay
    # an early stop takes the steps it will not run off the total: the bar still ends at 100%
    term.truncate(0)
    term.seek(0)
    assert main(_finetune_argv(tiny_checkpoint, train, dev, tmp_path / "p", "--lr-grid", "1e-7", "--seeds", "1",
                               "--epochs", "8", "--patience", "1")) == 0
    last = [ln for ln in term.getvalue().replace("\r", "\n").splitlines() if "%|" in ln][-1]
    done = int(last.split("| ")[1].split("/")[0])
    assert "100%" in last and f"| {done}/{done} [" in last and done < 8 * 6 and done % 6 == 0, last
    term.truncate(0)
    assert main(_finetune_argv(tiny_checkpoint, train, dev, tmp_path / "q", "--quiet")) == 0
    assert "%|" not in term.getvalue()


def test_no_dev_holds_out_a_fixed_stratified_tenth_of_train(tmp_path):
    from collections import Counter

    train = write(tmp_path / "t.tsv", "text\tlabel\n" + "".join(f"t{i}\t{'pos' if i % 4 else 'neg'}\n" for i in range(200)))
    task = file_task(train, None)
    assert (len(task.train), len(task.dev)) == (180, 20) and task.held_out == 20
    everything = read_examples(train, Columns("text", None, "label"))
    assert sorted(e.where for e in task.train + task.dev) == sorted(e.where for e in everything)  # a split, no loss
    assert Counter(e.label for e in task.dev) == {"pos": 15, "neg": 5}  # the train's label shares
    assert [e.where for e in file_task(train, None).dev] == [e.where for e in task.dev]  # fixed, not random per run
    assert task.labels == ("neg", "pos")
    with pytest.raises(UserError, match=r"one\.tsv: 1 example.*pass --dev"):
        file_task(write(tmp_path / "one.tsv", "text\tlabel\na\t0.5\n"), None, regression=True)


def test_finetune_without_dev_holds_out_and_scores_test_once_per_seed(tmp_path, tiny_checkpoint, capsys):
    """--train alone: a held-out tenth selects epoch and lr (and says so); --test is scored at the
    selected lr and epoch of each seed: the saved model's test accuracy is its seed's test score."""
    from roberta.cli import main
    from roberta.downstream.predict import Finetuned

    train, test = _sentiment_tsv(tmp_path / "train.tsv", 200, 0), _sentiment_tsv(tmp_path / "test.tsv", 40, 2)
    out = tmp_path / "o"
    assert main(_finetune_argv(tiny_checkpoint, train, None, out, "--test", str(test), "--quiet")) == 0
    stdout = capsys.readouterr().out
    assert "no --dev: holding out 10% of train.tsv (20 examples) for selecting epoch and lr" in stdout
    m = json.loads((out / "metrics.json").read_text())
    assert (m["train_examples"], m["dev_examples"], m["test_examples"]) == (180, 20, 40)
    assert len(m["test_per_seed"]) == 2 and m["test_value"] == pytest.approx(np.median(m["test_per_seed"]))
    printed = json.loads(stdout.strip().splitlines()[-1])
    assert printed["test_value"] == m["test_value"] and printed["test_per_seed"] == m["test_per_seed"]
    assert f"test accuracy {100 * m['test_value']:.2f}" in stdout
    rows = [line.split("\t") for line in test.read_text().splitlines()[1:]]
    preds = Finetuned(out, precision=m["config"]["precision"]).predict([text for text, _ in rows])
    saved = np.mean([p["label"] == label for p, (_, label) in zip(preds, rows)])
    assert saved == pytest.approx(m["test_per_seed"][m["model"]["seed"]])


def test_packed_finetune_and_predict_equal_padded(tiny_checkpoint, tmp_path, capsys):
    """--pack on (examples packed into rows without padding, as on a GPU by default) trains the same
    model as padded batches (fp32, no dropout: the same gradients up to rounding), and predicts the same."""
    from roberta.cli import main
    from roberta.downstream.predict import Finetuned

    train, dev = _sentiment_tsv(tmp_path / "train.tsv", 96, 0), _sentiment_tsv(tmp_path / "dev.tsv", 40, 1)
    outs = {}
    for pack in ("off", "on"):
        outs[pack] = tmp_path / pack
        assert main(_finetune_argv(tiny_checkpoint, train, dev, outs[pack], "--pack", pack, "--precision", "fp32",
                                   "--dropout", "0", "--quiet")) == 0  # dropout would draw other masks
    log = capsys.readouterr().out
    assert "examples packed into 64-token rows in training" in log and "padded length-bucketed batches in training" in log
    runs = {pack: _runs(out) for pack, out in outs.items()}
    for a, b in zip(runs["off"], runs["on"]):
        assert a["best_epoch"] == b["best_epoch"]
        assert [h["train_loss"] for h in a["history"]] == pytest.approx([h["train_loss"] for h in b["history"]], rel=1e-4)
    texts = [line.split("\t")[0] for line in dev.read_text().splitlines()[1:]]
    model = Finetuned(outs["on"], device="cpu", precision="fp32", pack="on")
    assert model.pack == 64
    packed = model.predict(texts)
    model.pack = 0
    padded = model.predict(texts)
    assert [p["label"] for p in packed] == [p["label"] for p in padded]
    assert max(abs(p["probabilities"][k] - q["probabilities"][k]) for p, q in zip(packed, padded) for k in p["probabilities"]) <= 1e-5


def test_a_job_recorded_before_a_setting_existed_is_continued(tiny_checkpoint, tmp_path, capsys):
    """job.json written by an older version lacks a setting added since: the job ran with its
    default, so the same command finds the job finished instead of refusing it."""
    from roberta.cli import main

    train, dev = _sentiment_tsv(tmp_path / "train.tsv", 48, 0), _sentiment_tsv(tmp_path / "dev.tsv", 20, 1)
    out = tmp_path / "o"
    argv = _finetune_argv(tiny_checkpoint, train, dev, out, "--seeds", "1", "--epochs", "1", "--quiet")
    assert main(argv) == 0
    job = json.loads((out / "job.json").read_text())
    del job["config"]["patience"]
    (out / "job.json").write_text(json.dumps(job))
    capsys.readouterr()
    assert main(argv) == 0
    assert "this job already finished; its results stand" in capsys.readouterr().out
