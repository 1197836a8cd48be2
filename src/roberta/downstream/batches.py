"""Fine-tuning inputs: examples encoded to token ids (truncated or chunked), batched by length,
and the classifier's forward pass on one batch. Shared by fine-tuning, prediction and probing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from roberta.data.loader import pad_rows
from roberta.downstream.tasks import Example
from roberta.errors import UserError
from roberta.model import RobertaClassifier
from roberta.tokenizer import BOS_ID, EOS_ID
from roberta.training.parallelize import autocast


@dataclass
class Encoded:
    """Model inputs; with long="chunk" several inputs belong to one example (`owner`)."""
    ids: list[list[int]]  # one token-id list per input, framed <s> ... </s>
    owner: np.ndarray  # (n_inputs,) example index of each input
    y: np.ndarray  # (n_examples,) class indices or regression targets

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(i) for i in self.ids), dtype=np.int64, count=len(self.ids))


def encode(tokenizer, examples: list[Example], y: np.ndarray, max_len: int, long: str) -> Encoded:
    if long == "truncate":
        # the tokenizer's post-processor frames `<s> A </s>` / `<s> A </s></s> B </s>`, and its
        # truncation budgets for those special tokens (longest_first for pairs)
        tokenizer.enable_truncation(max_length=max_len)
        inputs = [(e.text, e.pair) if e.pair is not None else e.text for e in examples]
        ids = [enc.ids for enc in tokenizer.encode_batch(inputs)]
        return Encoded(ids, np.arange(len(ids)), y)
    if examples[0].pair is not None:
        raise UserError("--long chunk applies to single-text tasks; sentence pairs are truncated (--long truncate)")
    tokenizer.no_truncation()
    body = max_len - 2
    ids, owner = [], []
    for i, enc in enumerate(tokenizer.encode_batch([e.text for e in examples], add_special_tokens=False)):
        for start in range(0, max(len(enc.ids), 1), body):
            ids.append([BOS_ID, *enc.ids[start : start + body], EOS_ID])
            owner.append(i)
    return Encoded(ids, np.asarray(owner), y)


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None,
                   pool: int = 50) -> list[np.ndarray]:
    """Index batches of similar length, so that little compute goes into padding.

    Training (rng given): shuffle, sort by length within pools of `pool` batches, shuffle the
    batches — random order, little padding, exactly ceil(n / batch_size) batches.
    Evaluation (rng None): sorted by length throughout."""
    if rng is None:
        pools = [np.argsort(lengths, kind="stable")]
    else:
        perm, size = rng.permutation(len(lengths)), batch_size * pool
        pools = [p[np.argsort(lengths[p], kind="stable")] for p in (perm[i : i + size] for i in range(0, len(perm), size))]
    batches = [p[i : i + batch_size] for p in pools for i in range(0, len(p), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def forward(model: RobertaClassifier, ids: list[list[int]], idx: np.ndarray, precision: str = "auto") -> torch.Tensor:
    """Logits (fp32) for the inputs idx, on the model's device, under `precision`'s autocast."""
    device = next(model.parameters()).device
    input_ids, mask = (t.to(device, non_blocking=True) for t in pad_rows([ids[i] for i in idx]))
    with autocast(device, precision):
        return model(input_ids, mask).float()
