"""MLM masking (Devlin et al. 2019; Liu et al. 2019, section 4.1), vectorised over the batch.

Each token's decisions come from one 32-bit hash h of (sequence key, position), read as a
uniform number in [0, 1) (int32 compares against thresholds; no floats, so the same bits on any
device):

    h < p                         the token is selected (Bernoulli(p) per token)
    h < 0.8 p                     ... and replaced by <mask>
    0.8 p <= h < 0.9 p            ... and replaced by a random real token (hash(h) picks which)
    0.9 p <= h < p                ... and kept
    (exact counts and whole words select by other rules and draw the 80/10/10 from hash(h))

A sequence's key is a pure function of (seed, epoch, sequence index) (`sequence_keys`), so its
mask is the same on any rank, in any batch composition or order, after a resume, and whatever
padding the batch adds. Dynamic masking draws a fresh key every epoch; static masking (BERT) is
the same function of epoch % dupe_factor: dupe_factor fixed masks per sequence, cycling,
recomputed bit-identically each time a sequence is drawn. That stores nothing -- BERT wrote
dupe_factor masked copies of the corpus, and even the compact form (positions + replacement ids,
tests/test_masking.py::compact_masks) takes ~ mask_prob * dupe_factor * 6 bytes per corpus token (9 at the defaults,
4.5x a uint16 corpus) -- and recomputing is just masking (~2 ms for 256 x 512 tokens on one
CPU core, 0.05% of a `tiny` training step). Row keys are 32 bits: two sequence draws share a
mask pattern with probability 2^-32. Without seq_keys, each row's key is drawn from torch's
generator (`generator=`), a running stream like Hugging Face's collator.
"""

from __future__ import annotations

import functools

import torch

from roberta.config import Config, MaskingConfig
from roberta.tokenizer import MASK_ID, SPECIAL_IDS, WORD_START

IGNORE = -100
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1


def _signed(x: int, bits: int) -> int:
    x &= (1 << bits) - 1
    return x - (1 << bits) if x >= (1 << (bits - 1)) else x


_C1, _C2 = _signed(0xBF58476D1CE4E5B9, 64), _signed(0x94D049BB133111EB, 64)
_GOLD = _signed(0x9E3779B97F4A7C15, 64)
_L1, _L2 = _signed(0x7FEB352D, 32), _signed(0x846CA68B, 32)
_GOLD32 = _signed(0x9E3779B9, 32)
_ACTION_STREAM, _RANDOM_STREAM = _signed(0x85EBCA6B, 32), _signed(0xC2B2AE35, 32)


def _srl(x: torch.Tensor, k: int, bits: int = 64) -> torch.Tensor:
    """Logical right shift (torch's >> is arithmetic) of int64, or of int32 with bits=32."""
    return (x >> k) & ((1 << (bits - k)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser: a bijective avalanche hash of int64 (wrapping arithmetic)."""
    x = (x ^ _srl(x, 30)) * _C1
    x = (x ^ _srl(x, 27)) * _C2
    return x ^ _srl(x, 31)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (Wellons' best two-round 32-bit hash): bijective, wrapping int32 arithmetic.
    x is left alone; the steps after the first run in place on the copy (half the allocations)."""
    x = x ^ _srl(x, 16, 32)
    x *= _L1
    x ^= _srl(x, 15, 32)
    x *= _L2
    x ^= _srl(x, 16, 32)
    return x


def _threshold(prob: float) -> int:
    """h < _threshold(prob) has probability round(prob * 2^32) / 2^32 for h uniform int32."""
    return _I32_MIN + min(round(prob * (1 << 32)), (1 << 32) - 1)


def sequence_keys(seed: int, epochs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """One int64 key per sequence draw: (B,) from (B,) epochs and (B,) sequence indices."""
    base = _mix(torch.full_like(indices, seed, dtype=torch.int64) * _GOLD + 0x5EED)
    return _mix(_mix(base ^ epochs.to(torch.int64) * _C1) ^ indices.to(torch.int64) * _C2)


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    """The low 32 bits of int64 values as int32 (exact two's complement on every device)."""
    return (((x & 0xFFFFFFFF) ^ (1 << 31)) - (1 << 31)).to(torch.int32)


@functools.lru_cache(maxsize=32)
def _position_hashes(T: int, device: torch.device) -> torch.Tensor:
    """(T,) int32: a fixed random value per position."""
    return _hash32(_to_int32((torch.arange(T, device=device) + 1) * _GOLD32))


def token_hashes(shape: tuple[int, int], device: torch.device | str = "cpu",
                 seq_keys: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, T) int32, uniform over all 2^32 values: hash(key of the row, position). Keys are
    seq_keys (B,), or drawn from `generator` when seq_keys is None."""
    B, T = shape
    device = torch.device(device)
    if seq_keys is None:
        keys = torch.randint(_I32_MIN, _I32_MAX, (B,), generator=generator, dtype=torch.int64,
                             device=device if generator is None else generator.device).to(device)
    else:
        keys = seq_keys.to(device)
    return _hash32(_to_int32(keys)[:, None] ^ _position_hashes(T, device))


@functools.lru_cache(maxsize=16)
def _special_table(vocab_size: int, specials: tuple[int, ...], device: torch.device):
    """(is_special (vocab_size,) bool, real_ids (n,) int64): the ids that may replace a token."""
    table = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    table[[i for i in specials if 0 <= i < vocab_size]] = True
    return table, torch.nonzero(~table).squeeze(1)


def word_start_table(vocab: dict[str, int], vocab_size: int, marker: str = WORD_START) -> torch.Tensor:
    """(vocab_size,) bool: tokens whose text begins with byte-level BPE's space marker 'Ġ'."""
    table = torch.zeros(vocab_size, dtype=torch.bool)
    ids = [i for tok, i in vocab.items() if tok.startswith(marker) and i < vocab_size]
    table[ids] = True
    return table


def mask_tokens(input_ids: torch.Tensor, *, vocab_size: int, mask_token_id: int,
                special_token_ids, mask_prob: float = 0.15, generator: torch.Generator | None = None,
                mask_token_prob: float = 0.8, random_token_prob: float = 0.1,
                exact_count: bool = False, seq_keys: torch.Tensor | None = None,
                word_start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Select mask_prob of the real tokens; replace 80% of them by <mask>, 10% by a random real
    token, keep 10%. Returns (inputs, labels), both (B, T); labels = IGNORE where not selected,
    else the original id.

    input_ids: (B, T) int64, ids < vocab_size. Tokens in special_token_ids (and <mask> itself) are
        never selected, and a random replacement is a uniform draw from the other ids below
        vocab_size -- never a special token.
    seq_keys: (B,) from `sequence_keys`: each row's mask is a pure function of its key (and not of
        the batch, its order or its padding). Without it, keys come from `generator`.
    exact_count: select exactly round(mask_prob * n) of a row's n real tokens instead of each with
        probability mask_prob. With word_start: the fewest whole words, in random order, that
        cover at least that many tokens (the last word may overshoot).
    word_start: (vocab_size,) bool, True for tokens that begin a word (`word_start_table`); given,
        whole words are selected (a token after a special token also begins a word). The
        80/10/10 choice stays per token, as in BERT's whole-word masking.
    """
    if not 0.0 <= mask_prob <= 1.0 or mask_token_prob < 0 or random_token_prob < 0 \
            or mask_token_prob + random_token_prob > 1.0 + 1e-9:
        raise ValueError(f"bad masking probabilities: mask_prob={mask_prob}, "
                         f"mask_token_prob={mask_token_prob}, random_token_prob={random_token_prob}")
    input_ids = input_ids.contiguous()
    B, T = input_ids.shape
    device = input_ids.device
    replaced = min(mask_token_prob + random_token_prob, 1.0)  # of the selected: <mask> or random
    specials = tuple(sorted({int(i) for i in special_token_ids} | {int(mask_token_id)}))
    is_special, real_ids = _special_table(vocab_size, specials, device)
    if specials == tuple(range(len(specials))):  # RoBERTa's ids 0-4: one compare, not a lookup
        eligible = input_ids >= len(specials)
    else:
        eligible = ~is_special[input_ids]  # (B, T)
    h = token_hashes((B, T), device, seq_keys, generator)  # (B, T) int32

    if word_start is None and not exact_count:
        # one hash decides everything: h < p selects, and h's place in [0, p) picks the action
        h = torch.where(eligible, h, _I32_MAX)  # never below a threshold (all < max for p < 1)
        selected = h < _threshold(mask_prob)
        to_mask = h < _threshold(mask_prob * mask_token_prob)
        to_random = (h < _threshold(mask_prob * replaced)) ^ to_mask  # to_mask lies inside
    else:
        if word_start is not None:
            starts = word_start.to(device)[input_ids]
            starts[:, 1:] |= ~eligible[:, :-1]  # a word also begins after a special token
            starts[:, 0] = True
            starts &= eligible
            word = (torch.cumsum(starts, dim=1) - 1).clamp_(min=0)  # (B, T) word number of each token
            # word w draws from the hash at position w (by number: rows stay padding-invariant)
        else:
            word = None
        if exact_count:
            selected = _select_exact(h, eligible, mask_prob, word)
        else:
            chosen = h < _threshold(mask_prob)  # (B, T) by word number
            selected = chosen.gather(1, word) & eligible
        action = _hash32(h ^ _ACTION_STREAM)  # independent of how the token was selected
        to_mask = (action < _threshold(mask_token_prob)) & selected
        to_random = (action < _threshold(replaced)) & selected & ~to_mask

    inputs = torch.where(to_mask, mask_token_id, input_ids)
    flat = to_random.view(-1).nonzero().squeeze(1)  # ~1.5% of tokens: draw the random ids there only
    if len(flat) and len(real_ids):
        r = _hash32(h.view(-1).index_select(0, flat) ^ _RANDOM_STREAM).long() & 0xFFFFFFFF
        inputs.view(-1).index_copy_(0, flat, real_ids[(r * len(real_ids)) >> 32].to(inputs.dtype))
    labels = torch.where(selected, input_ids, IGNORE)
    return inputs, labels


def _select_exact(h: torch.Tensor, eligible: torch.Tensor, mask_prob: float,
                  word: torch.Tensor | None) -> torch.Tensor:
    """(B, T) bool: the k = round(mask_prob * n_real) tokens (or the fewest whole words covering
    k tokens) with the smallest hashes. A row's hashes are all distinct (a bijection of distinct
    per-position values xor one key), so "h <= the k-th smallest h" selects exactly k, on any
    device, with no tie-breaking."""
    B, T = h.shape
    n_real = eligible.sum(1)
    k = torch.round(n_real.to(torch.float64) * mask_prob).to(torch.int64)  # half to even, as round()
    k_max = int(k.max()) if B else 0
    if k_max == 0:
        return torch.zeros_like(eligible)
    if word is None:
        key = h.masked_fill(~eligible, _I32_MAX)  # (B, T)
        smallest = torch.topk(key, k_max, dim=1, largest=False, sorted=True).values  # (B, k_max)
        threshold = smallest.gather(1, (k - 1).clamp(min=0)[:, None])
        return (key <= threshold) & (k > 0)[:, None] & eligible
    # whole words: word w's key is h at position w; take words in key order until k tokens
    n_words = word.masked_fill(~eligible, -1).amax(1) + 1  # (B,)
    word_key = h.masked_fill(torch.arange(T, device=h.device) >= n_words[:, None], _I32_MAX)  # by word number
    word_len = torch.zeros_like(word).scatter_add_(1, word, eligible.to(word.dtype))  # (B, T) tokens per word
    m = min(k_max, T)  # every word has >= 1 token, so at most k words are needed
    smallest, order = torch.topk(word_key, m, dim=1, largest=False, sorted=True)  # (B, m)
    covered = word_len.gather(1, order).cumsum(1)  # tokens covered by the first j + 1 words
    last = (covered < k[:, None]).sum(1, keepdim=True).clamp_(max=m - 1)  # the word that reaches k
    chosen = (word_key <= smallest.gather(1, last)) & (k > 0)[:, None]  # (B, T) by word number
    return chosen.gather(1, word) & eligible


def mask_counts(original: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor,
                mask_token_id: int, special_token_ids) -> torch.Tensor:
    """(4,) int64 sums to add up over micro-batches and ranks: [real tokens, selected,
    replaced by <mask>, kept unchanged]. A random draw equal to the original counts as kept."""
    selected = labels != IGNORE
    real = ~torch.isin(original, torch.as_tensor(list(special_token_ids), device=original.device))
    return torch.stack([real.sum(), selected.sum(), (selected & (inputs == mask_token_id)).sum(),
                        (selected & (inputs == original)).sum()]).cpu()


def masking_stats(counts) -> dict:
    """Realised mask rate and the shares of <mask> / random / kept among the selected tokens,
    from `mask_counts` (summed)."""
    real, n, masked, kept = (float(c) for c in counts)
    return {"mask_rate": n / max(real, 1), "mask_share": masked / max(n, 1),
            "random_share": (n - masked - kept) / max(n, 1), "keep_share": kept / max(n, 1)}


class Masker:
    """Masks a batch as a MaskingConfig says: dynamic (fresh per epoch) or static (epoch %
    dupe_factor), keyed by (seed, epoch, sequence index) so a mask never depends on batch order."""

    def __init__(self, m: MaskingConfig, seed: int, vocab_size: int, word_start: torch.Tensor | None = None):
        self.m, self.seed, self.vocab_size, self.word_start = m, seed, vocab_size, word_start

    @classmethod
    def for_run(cls, cfg: Config, vocab: dict[str, int]) -> "Masker":
        # random replacements come from the tokenizer's ids, even if model.vocab_size pads beyond them
        vocab_size = min(cfg.model.vocab_size, max(vocab.values()) + 1) if vocab else cfg.model.vocab_size
        word_start = word_start_table(vocab, vocab_size) if cfg.masking.whole_word else None
        return cls(cfg.masking, cfg.train.seed, vocab_size, word_start)

    def __call__(self, input_ids: torch.Tensor, epochs: torch.Tensor, indices: torch.Tensor):
        """(B, T) ids, (B,) epochs and sequence indices -> (inputs, labels), on the host: the trainer
        masks while the device runs the previous step, and knows the masked count without a sync."""
        if self.m.kind == "static":
            epochs = epochs % self.m.dupe_factor
        keys = sequence_keys(self.seed, epochs, indices)
        return mask_tokens(input_ids, vocab_size=self.vocab_size, mask_token_id=MASK_ID,
                           special_token_ids=SPECIAL_IDS, mask_prob=self.m.mask_prob,
                           mask_token_prob=self.m.mask_token_prob, random_token_prob=self.m.random_token_prob,
                           exact_count=self.m.exact_count, seq_keys=keys, word_start=self.word_start)
