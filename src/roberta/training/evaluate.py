"""Held-out masked-LM loss and perplexity on a fixed set of masked tokens.

Evaluation always uses the FULL-SENTENCES packing of the validation split and masks drawn from a
fixed key, whatever format or masking the run trained with: two runs (or three models in the
quickstart) are scored on exactly the same masked tokens, which is what makes them comparable.

"Did it learn?" (`compare_with_baselines`): the model against a unigram model of the training split
and the untrained network, on those tokens, with a bootstrap interval for model/unigram perplexity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
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


@dataclass
class SequenceLosses:
    """Per evaluation sequence (in eval_batches' order): summed cross-entropy (nats) over its
    masked tokens, and how many there are. What the bootstrap resamples."""
    loss_sums: np.ndarray  # (n_sequences,) float64
    counts: np.ndarray  # (n_sequences,) int64


@torch.no_grad()
def mlm_loss(model: torch.nn.Module, batches: list[EvalBatch], device: torch.device | str = "cpu",
             progress: bool = False, per_sequence: bool = False) -> dict:
    """Mean cross-entropy (nats) per masked token, perplexity, and how many tokens were scored.
    `progress`: a bar over the batches on stderr (on a terminal; `roberta evaluate` without --quiet).
    `per_sequence` (a bare RobertaMLM): also "sequences", a SequenceLosses. The aggregate stays the
    forward's own sum either way, so it equals the run's evaluation bit for bit."""
    was_training = model.training
    model.eval()
    total, count, per_seq = 0.0, 0, []
    hidden: list[torch.Tensor] = []  # the encoder's output of the batch just run, for the per-sequence sums
    hook = model.roberta.register_forward_hook(lambda m, i, o: hidden.append(o)) if per_sequence else None
    try:
        for b in tqdm(batches, desc="evaluate", unit="batch", disable=None if progress else True, leave=False):
            labels = b.labels.to(device)
            out = model(b.inputs.to(device), labels, b.attention_mask.to(device))
            total += float(out["mlm_loss_sum"])
            count += int(out["mlm_count"])
            if hook is not None:
                per_seq.append(_sequence_loss_sums(model, hidden.pop(), labels))
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
    if count == 0:  # a loss of 0 and a perplexity of 1 over nothing would read as a perfect model
        raise UserError("nothing to evaluate: the data gave no masked tokens (an empty split?)")
    loss = total / count
    result = {"mlm_loss": loss, "perplexity": loss_to_ppl(loss), "tokens": count}
    if per_sequence:
        result["sequences"] = SequenceLosses(np.concatenate(per_seq), sequence_counts(batches))
    return result


def _sequence_loss_sums(model: torch.nn.Module, h: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """(B,) summed cross-entropy per sequence from the encoder's output h (B, T, C): the model's own
    head at the masked positions (as its sparse head runs), per token instead of summed."""
    B, T = labels.shape
    flat = labels.reshape(-1)
    positions = flat.ne(IGNORE).nonzero().squeeze(1)  # (n_masked,)
    logits = model.lm_head(h.flatten(0, 1).index_select(0, positions),
                           model.roberta.embeddings.word_embeddings.weight)  # (n_masked, V)
    per_token = F.cross_entropy(logits.float(), flat.index_select(0, positions), reduction="none")
    sums = torch.zeros(B, dtype=torch.float64, device=h.device).index_add_(0, positions // T, per_token.double())
    return sums.cpu().numpy()


def sequence_counts(batches: list[EvalBatch]) -> np.ndarray:
    """(n_sequences,) masked tokens per evaluation sequence."""
    return np.concatenate([b.labels.ne(IGNORE).sum(1).numpy() for b in batches]).astype(np.int64)


# np.bincount converts its input to int64: counting a memory-mapped split in chunks keeps that
# copy at 128 MB whatever the corpus (a full pass, as the start-up checksum of the split already is)
COUNT_CHUNK = 1 << 24


def unigram_logprobs(train_tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """(vocab_size,) log p(token) under the training split's frequencies, add-one smoothed (a token
    the split never holds still gets a finite loss)."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for start in range(0, len(train_tokens), COUNT_CHUNK):
        counts += np.bincount(np.asarray(train_tokens[start:start + COUNT_CHUNK]), minlength=vocab_size)
    return np.log(counts / counts.sum())


def unigram_loss(train_tokens: np.ndarray, vocab_size: int, batches: list[EvalBatch],
                 per_sequence: bool = False) -> dict:
    """What a model that ignores context achieves: -log p(token) under the training split's
    token frequencies (add-one smoothed), on the same masked tokens. `per_sequence`: also
    "sequences", a SequenceLosses paired with mlm_loss's."""
    logp = unigram_logprobs(train_tokens, vocab_size)
    targets = np.concatenate([b.labels[b.labels != IGNORE].numpy() for b in batches])
    loss = float(-logp[targets].mean())
    result = {"mlm_loss": loss, "perplexity": loss_to_ppl(loss), "tokens": int(len(targets))}
    if per_sequence:
        sums = np.concatenate([np.where(b.labels != IGNORE, -logp[b.labels.clamp(min=0).numpy()], 0.0).sum(1)
                               for b in batches])
        result["sequences"] = SequenceLosses(sums, sequence_counts(batches))
    return result


def bootstrap_ratio(model: SequenceLosses, baseline: SequenceLosses, resamples: int = 1000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float]:
    """A `level` percentile interval for the perplexity ratio exp(mean model loss - mean baseline
    loss), resampling evaluation sequences with replacement. Paired: each resample takes the same
    sequences (so the same tokens) for both models, and masked tokens of one sequence move
    together (they share a context, so they are not independent draws)."""
    if not np.array_equal(model.counts, baseline.counts):
        raise ValueError("bootstrap_ratio: the two models were not scored on the same masked tokens")
    rng = np.random.default_rng(seed)
    n, diff = len(model.counts), model.loss_sums - baseline.loss_sums
    ratios = np.empty(resamples)
    for lo in range(0, resamples, 100):  # (100, n) indices at a time: bounded memory for any n
        idx = rng.integers(0, n, size=(min(100, resamples - lo), n))
        tokens = np.maximum(model.counts[idx].sum(1), 1)
        ratios[lo:lo + len(idx)] = np.exp(np.minimum(diff[idx].sum(1) / tokens, 700.0))
    low, high = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


# Below this many masked tokens the interval is called wide. Measured (tiny, 250 steps on the
# test corpus, ratio 0.84): the 95% interval's half-width is +-4% of the ratio at 1,100 masked
# tokens, +-2% at 4,500, +-1.3% at 8,900, narrowing as 1/sqrt(tokens); a better-trained model's
# losses spread more, so wider still. Under 10,000 it exceeds the 1-2% by which recipes differ
# (docs/recipes.md), so a ratio near 1 cannot be told from 1 there.
SMALL_SET = 10_000


def compare_with_baselines(model: torch.nn.Module, untrained: torch.nn.Module, train_tokens: np.ndarray,
                           vocab_size: int, batches: list[EvalBatch], device: torch.device | str = "cpu",
                           progress: bool = False, seed: int = 0) -> dict:
    """Did it learn? The model, the unigram model of the training split and the untrained network
    (the same architecture at its initialisation), all on the same masked tokens, with the ratio
    model / unigram perplexity and its 95% interval from a bootstrap over the sequences."""
    trained = mlm_loss(model, batches, device, progress, per_sequence=True)
    unigram = unigram_loss(train_tokens, vocab_size, batches, per_sequence=True)
    low, high = bootstrap_ratio(trained.pop("sequences"), unigram.pop("sequences"), seed=seed)
    return {"untrained": mlm_loss(untrained, batches, device, progress), "unigram": unigram, "trained": trained,
            "ratio": loss_to_ppl(trained["mlm_loss"] - unigram["mlm_loss"]), "interval": (low, high),
            "sequences": sum(len(b.labels) for b in batches)}


def verdict(low: float, high: float) -> str:
    """The ratio model / unigram perplexity in words, from its interval."""
    if high < 1:
        return "the model uses context: it predicts masked tokens better than their frequencies do"
    if low > 1:
        return "the model is WORSE than the unigram model: it has not yet learned even the token frequencies"
    return ("not distinguishable from the unigram model (the interval contains 1): train longer, or evaluate "
            "on more tokens")


def format_comparison(c: dict, more_tokens: str = "", held_out: bool = True) -> list[str]:
    """The lines `roberta evaluate` and the quickstart print for compare_with_baselines' result;
    `more_tokens`: how to get a larger set, for the small-set note; `held_out`: False when the
    tokens are the training split's."""
    what = "held-out" if held_out else "train-split"
    lines = [f"{what} masked-token loss on {c['trained']['tokens']:,} masked tokens ({c['sequences']:,} sequences):"]
    for name in ("untrained", "unigram", "trained"):
        r = c[name]
        lines.append(f"  {name:>9} model: loss {r['mlm_loss']:.3f} nats, perplexity {r['perplexity']:.1f}")
    low, high = c["interval"]
    lines.append(f"  trained / unigram perplexity = {c['ratio']:.2f} (95% interval {low:.2f}-{high:.2f}, "
                 f"bootstrap over sequences): {verdict(low, high)}")
    if c["trained"]["tokens"] < SMALL_SET:
        lines.append(f"  small {what} set: {c['trained']['tokens']:,} masked tokens, too few to tell runs a few percent apart"
                     + (f" ({more_tokens})" if more_tokens else ""))
    return lines
