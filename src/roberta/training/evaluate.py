"""Held-out masked-LM loss and perplexity on a fixed set of masked tokens.

Evaluation always uses the FULL-SENTENCES packing of the validation split and masks drawn from a
fixed key, whatever format or masking the run trained with: two runs (or three models in the
quickstart) are scored on exactly the same masked tokens, which is what makes them comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from roberta.data.formats import full_sentences
from roberta.data.loader import Batch, collate
from roberta.data.prepare import Split
from roberta.errors import UserError
from roberta.config import MaskingConfig
from roberta.masking import IGNORE, Masker

EVAL_SEED = 1234


@dataclass
class EvalBatch:
    inputs: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor


def eval_batches(split: Split, seq_len: int, vocab_size: int, n_sequences: int = 512,
                 batch_size: int = 32) -> list[EvalBatch]:
    plan = full_sentences(split, seq_len)
    n = min(n_sequences, len(plan))
    masker = Masker(MaskingConfig(), EVAL_SEED, vocab_size)  # the default masking, from a fixed key
    out = []
    for start in range(0, n, batch_size):
        batch: Batch = collate(split, plan, [(0, i) for i in range(start, min(n, start + batch_size))])
        inputs, labels = masker(batch.input_ids, batch.epochs, batch.indices)
        out.append(EvalBatch(inputs, labels, batch.attention_mask))
    return out


def masked_token_count(batches: list[EvalBatch]) -> int:
    """How many tokens `mlm_loss` would score."""
    return sum(int(b.labels.ne(IGNORE).sum()) for b in batches)


def loss_to_ppl(loss: float) -> float:
    return math.exp(min(loss, 700.0))


@torch.no_grad()
def mlm_loss(model: torch.nn.Module, batches: list[EvalBatch], device: torch.device | str = "cpu",
             progress: bool = False) -> dict:
    """Mean cross-entropy (nats) per masked token, perplexity, and how many tokens were scored.
    `progress`: a bar over the batches on stderr (on a terminal; `roberta evaluate` without --quiet)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b in tqdm(batches, desc="evaluate", unit="batch", disable=None if progress else True, leave=False):
        out = model(b.inputs.to(device), b.labels.to(device), b.attention_mask.to(device))
        total += float(out["mlm_loss_sum"])
        count += int(out["mlm_count"])
    model.train(was_training)
    if count == 0:  # a loss of 0 and a perplexity of 1 over nothing would read as a perfect model
        raise UserError("nothing to evaluate: the data gave no masked tokens (an empty split?)")
    loss = total / count
    return {"mlm_loss": loss, "perplexity": loss_to_ppl(loss), "tokens": count}


def unigram_loss(train_tokens: np.ndarray, vocab_size: int, batches: list[EvalBatch]) -> dict:
    """What a model that ignores context achieves: -log p(token) under the training split's
    token frequencies (add-one smoothed), on the same masked tokens."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    targets = np.concatenate([b.labels[b.labels != IGNORE].numpy() for b in batches])
    loss = float(-logp[targets].mean())
    return {"mlm_loss": loss, "perplexity": loss_to_ppl(loss), "tokens": int(len(targets))}
