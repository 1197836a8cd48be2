"""Shared fixtures: a small real corpus (tests/data/corpus.jsonl.gz, stdlib docstrings shipped fixed), a
tokenizer trained on it in-process, and prepared data -- built once per session, a few seconds in all."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# ../shared/data beside the repository; ROBERTA_SHARED_DATA overrides it (e.g. from a git worktree)
SHARED_DATA = Path(os.environ.get("ROBERTA_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_cli(*args: str, cwd: str | Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `roberta ARGS...` in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", "roberta", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


FIXTURES = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def corpus_docs() -> list[str]:
    """1,500 documents (0.86 MB): the first of roberta.data.corpus.stdlib_documents() on Python 3.11.7,
    shipped fixed so that every machine tests on the same text."""
    with gzip.open(FIXTURES / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory, corpus_docs) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with open(path, "w") as f:
        for d in corpus_docs:
            f.write(json.dumps({"text": d}) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus_docs) -> Path:
    from roberta.tokenizer import save_tokenizer, train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_tokenizer(iter(corpus_docs), vocab_size=1000), out)
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, corpus_file, tokenizer_dir) -> Path:
    from roberta.data.prepare import prepare

    out = tmp_path_factory.mktemp("data")
    prepare([str(corpus_file)], str(tokenizer_dir), str(out), seq_len=64, valid_fraction=0.05,
            workers=1, progress=False)
    return out


def tiny_config(preset: str = "tiny", **train):
    """A 2-layer, 64-wide model of `preset` (the default's family: tiny's) and a short run: seconds on a CPU."""
    import dataclasses

    from roberta.presets import get_preset

    cfg = get_preset(preset)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, layers=2, hidden=64, heads=2, ffn=128))
    defaults = dict(batch_size=8, max_steps=6, eval_interval=1000, checkpoint_interval=1000,
                    log_interval=1, eval_sequences=16, peak_flops=1e11)
    defaults.update(train)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **defaults))


def randomise(model, scale: float = 0.1, seed: int = 0) -> None:
    """Every parameter drawn at random (norm weights near 1, the rest normal(0, scale)), so that a
    weight in the wrong place, a position or a mask cannot hide behind a zero or a one."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if "norm" in name.lower() and name.endswith("weight") else scale * noise)
