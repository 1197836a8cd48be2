"""Deterministic batches: which sequences each step sees, on which rank, in which micro-batch.

The training stream is the concatenation of epochs; epoch e visits every sequence of the plan
once in the order `permutation(seed, e)`. A global batch is the next `batch_size` draws (or, for
formats whose sequences are short, the next draws up to `batch_size * seq_len` real tokens, so
that tokens per batch stay about constant as in the paper). Rank r takes draws r, r + W, ...;
every rank therefore runs the same number of micro-batches each step (no uneven-shard hangs).
A draw is (epoch, index); its mask is a function of (seed, epoch, index), never of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from roberta.data.formats import SequencePlan, materialize
from roberta.data.prepare import Split
from roberta.tokenizer import PAD_ID


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) int64, padded with <pad>
    attention_mask: torch.Tensor  # (B, T) int64, 1 = real token
    epochs: torch.Tensor  # (B,)
    indices: torch.Tensor  # (B,)
    nsp_labels: torch.Tensor | None  # (B,)

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(split: Split, plan: SequencePlan, draws: list[tuple[int, int]]) -> Batch:
    seqs = [materialize(split, plan, i) for _, i in draws]
    T = max(len(s) for s in seqs)
    ids = np.full((len(seqs), T), PAD_ID, np.int64)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = s
    input_ids = torch.from_numpy(ids)
    nsp = None if plan.nsp_labels is None else torch.as_tensor(plan.nsp_labels[[i for _, i in draws]])
    return Batch(input_ids, input_ids.ne(PAD_ID).long(),
                 torch.tensor([e for e, _ in draws], dtype=torch.int64),
                 torch.tensor([i for _, i in draws], dtype=torch.int64), nsp)


class BatchStream:
    """Global batches of draws; resumable from `state_dict()` (epoch, offset into the epoch)."""

    def __init__(self, plan: SequencePlan, batch_size: int, seed: int, token_budget: int = 0,
                 min_draws: int = 1):
        self.plan, self.batch_size, self.seed = plan, batch_size, seed
        self.token_budget, self.min_draws = token_budget, min_draws
        self.epoch, self.offset = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.plan))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._order = self._permutation(self.epoch)

    def _draw(self) -> tuple[int, int]:
        if self.offset == len(self._order):
            self.epoch, self.offset = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        d = (self.epoch, int(self._order[self.offset]))
        self.offset += 1
        return d

    def next_batch(self) -> list[tuple[int, int]]:
        if not self.token_budget:
            return [self._draw() for _ in range(self.batch_size)]
        draws, tokens = [], 0
        while tokens < self.token_budget or len(draws) < self.min_draws:
            d = self._draw()
            draws.append(d)
            tokens += int(self.plan.lengths[d[1]])
        return draws


def shard(draws: list, rank: int, world: int, micro_batches: int) -> list[list]:
    """This rank's share of a global batch, cut into `micro_batches` near-equal micro-batches."""
    mine = draws[rank::world]
    bounds = np.linspace(0, len(mine), micro_batches + 1).round().astype(int)
    return [mine[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
