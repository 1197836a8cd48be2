"""A uniform document sample of a corpus, streamed: `train-tokenizer --sample-bytes N`.

BPE training holds word counts in memory and reads every document; on a corpus of hundreds of
GB a sample learns the same merges (the frequent ones) at a fraction of the time. The sample is
drawn in two streamed passes: the first counts the corpus's text bytes, the second keeps each
document independently with probability N / total -- every document of every file has the same
chance, so files contribute in proportion to their size, and the expected sample size is N
bytes. The draws come from one seeded generator in reading order: the same inputs and seed
give the same sample. Nothing is held in memory beyond one document.
"""

from __future__ import annotations

import random
import re
from typing import Iterable, Iterator

from roberta.errors import UserError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str, option: str = "--sample-bytes") -> int:
    """'500M' -> 524288000, '1G', '2.5G', '1000000' -> bytes (binary units; a trailing B is optional)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", str(text), flags=re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"{option} {text}: expected a positive size like 500M, 1G or 1000000")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def text_bytes(docs: Iterable[str]) -> int:
    return sum(len(d.encode("utf-8")) for d in docs)


def sample_documents(docs: Iterable[str], total_bytes: int, sample_bytes: int, seed: int = 0) -> Iterator[str]:
    """The documents of `docs` (whose text totals `total_bytes`, from `text_bytes` on a first
    pass), each kept with probability sample_bytes / total_bytes; all of them when the corpus is
    no larger than sample_bytes."""
    keep = sample_bytes / total_bytes if total_bytes else 1.0
    if keep >= 1.0:
        yield from docs
        return
    rng = random.Random(seed)
    for doc in docs:
        if rng.random() < keep:
            yield doc
