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

from roberta.data.formats import SequenceTable, document_ids, materialize
from roberta.data.prepare import Split
from roberta.tokenizer import PAD_ID


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) int64, padded with <pad>
    attention_mask: torch.Tensor  # (B, T) int64, 1 = real token
    epochs: torch.Tensor  # (B,)
    indices: torch.Tensor  # (B,)
    nsp_labels: torch.Tensor | None  # (B,)
    document_ids: torch.Tensor | None = None  # (B, T) int64, packed-documents only: 0 = padding, k = k-th document

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def pad_rows(rows, pad: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows of any lengths -> (B, T) int64 ids right-padded with <pad> (or `pad`: document
    ids pad with 0), and the (B, T) attention mask (1 = real token). The one place rows become a
    batch (pretraining, fine-tuning, the Python API)."""
    lengths = [len(r) for r in rows]
    T = max(lengths)
    ids = np.full((len(rows), T), pad, np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return torch.from_numpy(ids), mask.long()


def collate(split: Split, plan: SequenceTable, draws: list[tuple[int, int]]) -> Batch:
    """The draws' (epoch, sequence) as one padded Batch."""
    input_ids, attention_mask = pad_rows([materialize(split, plan, i) for _, i in draws])
    nsp = None if plan.nsp_labels is None else torch.as_tensor(plan.nsp_labels[[i for _, i in draws]])
    docs = None
    if plan.documents_apart:  # (B, T), right-padded with 0 like the ids with <pad>
        docs, _ = pad_rows([document_ids(plan, i) for _, i in draws], pad=0)
    return Batch(input_ids, attention_mask,
                 torch.tensor([e for e, _ in draws], dtype=torch.int64),
                 torch.tensor([i for _, i in draws], dtype=torch.int64), nsp, docs)


class BatchStream:
    """Global batches of draws; resumable from `state_dict()` (epoch, offset into the epoch).

    Fixed mode (token_budget=0): `batch_size` draws. Token-budget mode: whole groups of
    `multiple_of` draws (one per rank) are added while that brings the batch's real tokens nearer
    to `token_budget` (a group is taken if at least half of it fits), so tokens per batch are
    about constant whatever the sequence lengths, and about as often under as over the budget.
    Either way a batch has at least `min_draws` draws and a multiple of `multiple_of`.
    """

    def __init__(self, plan: SequenceTable, batch_size: int, seed: int, token_budget: int = 0,
                 min_draws: int = 1, multiple_of: int = 1):
        if len(plan) == 0:
            raise ValueError("BatchStream needs a plan with at least one sequence")
        self.plan, self.batch_size, self.seed = plan, batch_size, seed
        self.token_budget, self.min_draws, self.multiple_of = token_budget, min_draws, max(1, multiple_of)
        self.epoch, self.offset = 0, 0
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {k: v for k, v in self._orders.items() if k >= epoch - 1}  # keep at most two
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.plan))
        return self._orders[epoch]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    def _take(self, n: int) -> list[tuple[int, int]]:
        """The next n draws, consumed."""
        draws = []
        for _ in range(n):
            if self.offset == len(self.plan):
                self.epoch, self.offset = self.epoch + 1, 0
            draws.append((self.epoch, int(self._order(self.epoch)[self.offset])))
            self.offset += 1
        return draws

    def next_batch(self) -> list[tuple[int, int]]:
        m = self.multiple_of
        groups_min = -(-max(self.min_draws, 1) // m)
        if not self.token_budget:
            return self._take(max(-(-self.batch_size // m), groups_min) * m)
        draws, tokens = [], 0
        while True:
            state = self.state_dict()
            group = self._take(m)
            group_tokens = int(self.plan.lengths[[i for _, i in group]].sum())
            if len(draws) >= groups_min * m and tokens + group_tokens / 2 > self.token_budget:
                self.load_state_dict(state)  # not taken: it starts the next batch
                return draws
            draws += group
            tokens += group_tokens


def shard(draws: list, rank: int, world: int, micro_batches: int) -> list[list]:
    """This rank's share of a global batch (draws rank, rank + world, ...), cut into exactly
    `micro_batches` near-equal, non-empty micro-batches; every rank gets the same count, so no
    rank waits at a collective that another rank never reaches."""
    mine = draws[rank::world]
    if len(draws) < world * micro_batches:
        raise ValueError(f"a global batch of {len(draws)} sequences cannot feed {world} rank(s) x "
                         f"{micro_batches} micro-batches; build it with min_draws >= {world * micro_batches}")
    bounds = np.linspace(0, len(mine), micro_batches + 1).round().astype(int)
    return [mine[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
