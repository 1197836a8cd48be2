"""Fine-tuning inputs: examples encoded to token ids (truncated or chunked), batched by length,
and the classifier's forward pass on one batch. Shared by fine-tuning, prediction and probing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from roberta.attention import varlen_runs
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


PACK_CHOICES = ("auto", "on", "off")


def pack_length(setting: str, device: torch.device, precision: str, attention_dropout: float, training: bool,
                max_len: int) -> int:
    """The row length inputs are packed into (each attending only to itself), or 0: padded batches.
    "auto" packs where varlen attention runs: a GPU in bf16 (while training, without attention
    dropout, which the kernel lacks). Elsewhere the packed rows' dense block mask costs what
    padding would: length-bucketed batches have little (docs/performance.md, fine-tuning)."""
    if setting not in PACK_CHOICES:
        raise UserError(f"--pack {setting}: choose one of {', '.join(PACK_CHOICES)}")
    if setting == "auto":
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        return max_len if varlen_runs(device, dtype, attention_dropout, training) else 0
    return max_len if setting == "on" else 0


def pack_rows(lengths: list[int], max_len: int) -> list[list[int]]:
    """First-fit decreasing: positions 0..n-1 grouped into rows of at most max_len tokens in all
    (an input longer than max_len gets a row of its own)."""
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if fit is None:
            rows.append([i])
            room.append(max_len - lengths[i])
        else:
            rows[fit].append(i)
            room[fit] -= lengths[i]
    return rows


def packed_batch(inputs: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Inputs packed into rows: (R, T) ids, their (R, T) document ids (0 = padding, 1..k = the
    row's k-th input) and `order`, the input each packed document is (row-major)."""
    rows = pack_rows([len(x) for x in inputs], max_len)
    input_ids, _ = pad_rows([[t for i in row for t in inputs[i]] for row in rows])
    docs, _ = pad_rows([np.repeat(np.arange(1, len(row) + 1), [len(inputs[i]) for i in row]) for row in rows], pad=0)
    return input_ids, docs, np.asarray([i for row in rows for i in row])


def forward(model: RobertaClassifier, ids: list[list[int]], idx: np.ndarray, precision: str = "auto",
            pack: int = 0) -> torch.Tensor:
    """Logits (fp32) for the inputs idx, in idx's order, on the model's device, under `precision`'s
    autocast. pack > 0: the inputs packed into rows of at most `pack` tokens, each attending only to
    itself (no padding but the rows' tails); the logits equal the padded batch's."""
    device = next(model.parameters()).device
    rows = [ids[i] for i in idx]
    if not pack:
        input_ids, mask = (t.to(device, non_blocking=True) for t in pad_rows(rows))
        with autocast(device, precision):
            return model(input_ids, mask).float()
    input_ids, docs, order = packed_batch(rows, pack)
    with autocast(device, precision):
        logits = model(input_ids.to(device, non_blocking=True), document_ids=docs.to(device, non_blocking=True)).float()
    return logits[torch.from_numpy(np.argsort(order)).to(device)]
