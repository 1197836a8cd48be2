"""`train-tokenizer --sample-bytes`: a uniform, streamed, seeded document sample."""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_cli
from roberta.data.readers import ReadStats, iter_documents
from roberta.data.sample import parse_bytes, sample_documents, text_bytes
from roberta.errors import UserError


def test_parse_bytes():
    assert parse_bytes("1000") == 1000
    assert parse_bytes("500M") == 500 << 20
    assert parse_bytes("1G") == parse_bytes("1GiB") == parse_bytes("1gb") == 1 << 30
    assert parse_bytes("2.5K") == 2560
    for bad in ("", "-1G", "0", "1X", "lots"):
        with pytest.raises(UserError, match="--sample-bytes"):
            parse_bytes(bad)


def _files(tmp_path) -> list[str]:
    """Three files of 6,000 / 3,000 / 1,000 one-line documents, each naming its file."""
    paths = []
    for name, n in (("a", 6000), ("b", 3000), ("c", 1000)):
        p = tmp_path / f"{name}.jsonl"
        p.write_text("".join(json.dumps({"text": f"{name} document {i:05d}"}) + "\n" for i in range(n)))
        paths.append(str(p))
    return paths


def test_the_sample_is_uniform_over_files_and_documents(tmp_path):
    files = _files(tmp_path)
    total = text_bytes(iter_documents(files, "text", ReadStats()))
    docs = list(sample_documents(iter_documents(files, "text", ReadStats()), total, total // 5, seed=0))
    # every document has probability 0.2: each file's count is Binomial(n, 0.2); 4 sigma
    for name, n in (("a", 6000), ("b", 3000), ("c", 1000)):
        k = sum(d.startswith(name + " ") for d in docs)
        assert abs(k - 0.2 * n) < 4 * math.sqrt(n * 0.2 * 0.8), (name, k)
    # ... and within a file, early and late documents alike (not the first 20%)
    late = sum(d.startswith("a ") and int(d.split()[-1]) >= 3000 for d in docs)
    assert abs(late - 600) < 4 * math.sqrt(3000 * 0.2 * 0.8)
    assert abs(text_bytes(docs) - total / 5) < 0.05 * total / 5


def test_the_sample_is_deterministic_per_seed_and_whole_when_large(tmp_path):
    files = _files(tmp_path)
    total = text_bytes(iter_documents(files, "text", ReadStats()))

    def draw(seed: int, want: int) -> list[str]:
        return list(sample_documents(iter_documents(files, "text", ReadStats()), total, want, seed))

    assert draw(0, 5000) == draw(0, 5000)
    assert draw(0, 5000) != draw(1, 5000)
    assert draw(0, total) == list(iter_documents(files, "text", ReadStats()))


def test_train_tokenizer_sample_bytes_cli(tmp_path, corpus_file):
    def train(out: str, *extra: str) -> str:
        r = run_cli("train-tokenizer", str(corpus_file), "--out", str(tmp_path / out), "--vocab-size", "600", *extra)
        assert r.returncode == 0, r.stderr
        return (tmp_path / out / "tokenizer.json").read_text()

    a, b = train("a", "--sample-bytes", "200K"), train("b", "--sample-bytes", "200K")
    assert a == b  # same seed, same sample, same vocabulary
    assert train("c", "--sample-bytes", "200K", "--seed", "1") != a
    assert train("d") != a  # the sample is not the whole corpus
    r = run_cli("train-tokenizer", str(corpus_file), "--out", str(tmp_path / "e"), "--sample-bytes", "lots")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --sample-bytes lots")
