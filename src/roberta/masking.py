"""MLM masking (Devlin et al. 2019; Liu et al. 2019, section 4.1), vectorised over the batch.

Dynamic masking draws a fresh mask each time a sequence is seen, yet every mask is a pure
function of (seed, epoch, sequence index): the random numbers come from a counter-based hash of
that key and the token position, not from a running stream. So a sequence gets the same mask on
any rank, in any batch composition, and after a resume. Static masking (BERT) is the same
function with epoch replaced by `epoch % dupe_factor`: exactly dupe_factor fixed masks per
sequence, cycling, stored as nothing more than the seed (they are recomputed, bit-identical, on
demand -- cheaper than BERT's 10 copies of the corpus and than storing positions).
"""

from __future__ import annotations

import torch

IGNORE = -100
_STREAM_SELECT, _STREAM_ACTION, _STREAM_RANDOM = 1, 2, 3


def _i64(x: int) -> int:
    return x - (1 << 64) if x >= (1 << 63) else x


_C1, _C2 = _i64(0xBF58476D1CE4E5B9), _i64(0x94D049BB133111EB)
_GOLD = _i64(0x9E3779B97F4A7C15)


def _srl(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser: a bijective avalanche hash of int64 (wrapping arithmetic)."""
    x = (x ^ _srl(x, 30)) * _C1
    x = (x ^ _srl(x, 27)) * _C2
    return x ^ _srl(x, 31)


def sequence_keys(seed: int, epochs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """One int64 key per sequence draw: (B,) from (B,) epochs and (B,) sequence indices."""
    base = _mix(torch.full_like(indices, seed, dtype=torch.int64) * _GOLD + 0x5EED)
    return _mix(_mix(base ^ epochs.to(torch.int64) * _C1) ^ indices.to(torch.int64) * _C2)


def hashed_uniform(keys: torch.Tensor, positions: torch.Tensor, stream: int) -> torch.Tensor:
    """Uniform [0, 1) floats, (B, T), a pure function of (key, position, stream)."""
    x = _mix(keys[:, None] ^ _mix(positions.to(torch.int64) * _GOLD + stream))
    return _srl(x, 40).to(torch.float32) * (1.0 / (1 << 24))


def mask_tokens(input_ids: torch.Tensor, *, vocab_size: int, mask_token_id: int,
                special_token_ids, mask_prob: float = 0.15, generator: torch.Generator | None = None,
                mask_token_prob: float = 0.8, random_token_prob: float = 0.1,
                exact_count: bool = False, seq_keys: torch.Tensor | None = None,
                word_start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Select mask_prob of the real tokens; replace 80% by <mask>, 10% by a random real token,
    keep 10%. Returns (inputs, labels) with labels = IGNORE where not selected.

    input_ids: (B, T) int64. special_token_ids are never selected nor used as replacements.
    seq_keys: (B,) from `sequence_keys` for reproducible per-sequence masks; otherwise the
        numbers come from torch.rand(generator=generator), like Hugging Face's collator.
    exact_count: select exactly round(mask_prob * n_real) tokens per sequence (with whole_word:
        the fewest whole words, by random order, that cover that many tokens).
    word_start: (vocab_size,) bool, True for tokens that begin a word (byte-level BPE: text starts
        with 'Ġ'); given, whole words are masked. A token after a special token also starts a word.
    """
    B, T = input_ids.shape
    device = input_ids.device
    specials = torch.as_tensor(sorted(set(int(i) for i in special_token_ids)), device=device)
    eligible = ~torch.isin(input_ids, specials)
    positions = torch.arange(T, device=device)

    def uniform(stream: int, shape_like_positions=positions) -> torch.Tensor:
        if seq_keys is not None:
            return hashed_uniform(seq_keys.to(device), shape_like_positions, stream)
        return torch.rand((B, T), generator=generator, device=device)

    if word_start is not None:
        starts = word_start.to(device)[input_ids] & eligible
        prev_special = torch.ones_like(eligible)
        prev_special[:, 1:] = ~eligible[:, :-1]
        starts |= eligible & prev_special
        word = torch.cumsum(starts, dim=1) - 1  # word index of each token, shared within a word
        word = torch.where(eligible, word.clamp(min=0), T)  # ineligible -> a sentinel slot
        word_scores = torch.cat([uniform(_STREAM_SELECT), torch.full((B, 1), 2.0, device=device)], 1)
        scores = word_scores.gather(1, word)
    else:
        word = None
        scores = torch.where(eligible, uniform(_STREAM_SELECT), torch.full((B, T), 2.0, device=device))

    if exact_count:
        n_real = eligible.sum(1)
        k = torch.round(n_real.to(torch.float64) * mask_prob).to(torch.int64)  # as Python's round()
        order = torch.argsort(scores, dim=1, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, positions.expand(B, T).contiguous())
        if word is None:
            selected = rank < k[:, None]
        else:  # a word is in when its first token in the random order ranks below k
            first = torch.full((B, T + 1), T, dtype=torch.int64, device=device)
            first.scatter_reduce_(1, word, rank, reduce="amin")
            selected = (first.gather(1, word) < k[:, None]) & eligible
    else:
        selected = (scores < mask_prob) & eligible

    action = uniform(_STREAM_ACTION)
    to_mask = selected & (action < mask_token_prob)
    to_random = selected & (action >= mask_token_prob) & (action < mask_token_prob + random_token_prob)
    real = torch.ones(vocab_size, dtype=torch.bool, device=device)
    real[specials[specials < vocab_size]] = False
    real_ids = torch.nonzero(real).squeeze(1)
    pick = (uniform(_STREAM_RANDOM) * len(real_ids)).long().clamp_(max=len(real_ids) - 1)
    random_ids = real_ids[pick]

    inputs = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    inputs = torch.where(to_random, random_ids, inputs)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))
    return inputs, labels


def masking_stats(original: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
                  mask_token_id: int, eligible_tokens: int) -> dict:
    """Realised mask rate and the shares of <mask> / random / kept among the selected tokens."""
    selected = labels != IGNORE
    n = int(selected.sum())
    masked = int((selected & (inputs == mask_token_id)).sum())
    kept = int((selected & (inputs == original)).sum())
    return {"mask_rate": n / max(eligible_tokens, 1), "mask_share": masked / max(n, 1),
            "random_share": (n - masked - kept) / max(n, 1), "keep_share": kept / max(n, 1)}
