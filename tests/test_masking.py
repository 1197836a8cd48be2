"""MLM masking: statistics on >= 1M tokens with fixed seeds, reproducibility (dynamic), cycling
(static), whole words with a real byte-level BPE tokenizer, exact counts, and the trainer's log."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import roberta
from roberta.masking import (IGNORE, mask_counts, mask_tokens,
                             masking_stats, sequence_keys, token_hashes, word_start_table)
from roberta.presets import tiny
from roberta.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID, SPECIAL_IDS, load_tokenizer
from roberta.masking import Masker

VOCAB = 1000  # small, so a random replacement that could hit a special token would, often
B, T = 2048, 512  # 1,048,576 tokens


def make_batch(batch: int = B, length: int = T, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    """<s> tokens </s> rows with a document break (</s>) inside and padding in 1 row of 4."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL_IDS), vocab, (batch, length), generator=g)
    ids[:, 0], ids[:, -1], ids[:, length // 3] = BOS_ID, EOS_ID, EOS_ID
    ends = torch.randint(length // 2, length - 1, (batch,), generator=g)
    for row in range(0, batch, 4):
        ids[row, ends[row]], ids[row, ends[row] + 1:] = EOS_ID, PAD_ID
    return ids


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return make_batch()


def keys_for(epoch: int, indices: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return sequence_keys(seed, torch.full_like(indices, epoch), indices)


def mask(input_ids, **kw):
    kw.setdefault("vocab_size", VOCAB)
    return mask_tokens(input_ids, mask_token_id=MASK_ID, special_token_ids=SPECIAL_IDS, **kw)


def shares(ids, inputs, labels) -> dict:
    return masking_stats(mask_counts(ids, inputs, labels, MASK_ID, SPECIAL_IDS))


@pytest.mark.parametrize("path", ["hash", "generator"])
@pytest.mark.parametrize("p,mask_share,random_share", [(0.15, 0.8, 0.1), (0.3, 0.5, 0.3)])
def test_rate_and_split(ids, path, p, mask_share, random_share):
    kw = dict(seq_keys=keys_for(0, torch.arange(B))) if path == "hash" \
        else dict(generator=torch.Generator().manual_seed(1))
    inputs, labels = mask(ids, mask_prob=p, mask_token_prob=mask_share, random_token_prob=random_share, **kw)
    s = shares(ids, inputs, labels)
    assert abs(s["mask_rate"] - p) < 0.003
    assert abs(s["mask_share"] - mask_share) < 0.01
    assert abs(s["random_share"] - random_share) < 0.01
    assert abs(s["keep_share"] - (1 - mask_share - random_share)) < 0.01


def test_labels_and_untouched_tokens(ids):
    inputs, labels = mask(ids, seq_keys=keys_for(0, torch.arange(B)))
    selected = labels != IGNORE
    assert selected.any() and torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])  # only selected tokens change
    assert inputs.dtype == labels.dtype == ids.dtype and inputs.shape == ids.shape


@pytest.mark.parametrize("specials", [SPECIAL_IDS, SPECIAL_IDS + (7, 500)])  # contiguous fast path, lookup
def test_specials_never_selected_nor_used(ids, specials):
    ids = ids.clone()
    ids[:, 5::50], ids[:, 6::50] = 7, 500  # the extra specials appear in the data
    inputs, labels = mask_tokens(ids, vocab_size=VOCAB, mask_token_id=MASK_ID, special_token_ids=specials,
                                 seq_keys=keys_for(0, torch.arange(B)))
    special = torch.isin(ids, torch.tensor(specials))
    assert (labels[special] == IGNORE).all()  # never selected
    assert torch.equal(inputs[special], ids[special])
    replaced = (labels != IGNORE) & (inputs != ids) & (inputs != MASK_ID)  # random replacements
    assert replaced.sum() > 10_000
    assert not torch.isin(inputs[replaced], torch.tensor(specials)).any()  # never a special id
    assert (inputs[replaced] < VOCAB).all()
    # a uniform draw over the real ids: every one of them turns up, none far more than its share
    counts = torch.bincount(inputs[replaced], minlength=VOCAB)[[i for i in range(VOCAB) if i not in specials]]
    assert counts.min() > 0 and counts.max() < 3 * counts.float().mean()


def test_dynamic_epochs_differ_and_keys_reproduce(ids):
    rows = torch.arange(B)
    a0, l0 = mask(ids, seq_keys=keys_for(0, rows))
    a1, l1 = mask(ids, seq_keys=keys_for(1, rows))
    assert ((l0 != IGNORE) != (l1 != IGNORE)).any(1).all()  # every sequence gets a fresh mask
    b0, m0 = mask(ids, seq_keys=keys_for(0, rows))
    assert torch.equal(a0, b0) and torch.equal(l0, m0)
    _, other_seed = mask(ids, seq_keys=keys_for(0, rows, seed=1))
    assert not torch.equal(l0, other_seed)


_CHILD = """
import hashlib, sys, torch
sys.path.insert(0, {src!r})
from roberta.masking import mask_tokens, sequence_keys
g = torch.Generator().manual_seed(3)
ids = torch.randint(5, 1000, (64, 256), generator=g)
idx = torch.arange(100, 164)
out = [mask_tokens(ids, vocab_size=1000, mask_token_id=4, special_token_ids=range(5), seq_keys=sequence_keys(
    7, torch.full_like(idx, 2), idx), **kw) for kw in ({{}}, {{"exact_count": True}})]
print(hashlib.sha256(b"".join(t.numpy().tobytes() for pair in out for t in pair)).hexdigest())
"""


def test_same_key_same_mask_in_another_process():
    import hashlib

    src = str(Path(roberta.__file__).resolve().parents[1])
    child = subprocess.run([sys.executable, "-c", _CHILD.format(src=src)], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert child.returncode == 0, child.stderr
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 1000, (64, 256), generator=g)
    idx = torch.arange(100, 164)
    out = [mask(ids, seq_keys=sequence_keys(7, torch.full_like(idx, 2), idx), **kw)
           for kw in ({}, {"exact_count": True})]
    assert child.stdout.strip() == hashlib.sha256(b"".join(t.numpy().tobytes() for pair in out for t in pair)).hexdigest()


@pytest.mark.parametrize("options", [{}, {"exact_count": True}, {"word_start": "random"},
                                     {"exact_count": True, "word_start": "random"}])
def test_mask_independent_of_batch_order_composition_and_padding(options):
    if options.get("word_start"):
        options = {**options, "word_start": torch.rand(VOCAB, generator=torch.Generator().manual_seed(0)) < 0.5}
    ids = make_batch(256, 128, seed=1)
    index = torch.arange(5000, 5256)
    inputs, labels = mask(ids, seq_keys=keys_for(4, index), **options)
    # the same sequences, shuffled, half of them batched with strangers and padded to 200
    g = torch.Generator().manual_seed(2)
    pick = torch.randperm(256, generator=g)[:128]
    strangers = make_batch(128, 200, seed=3)
    mixed = torch.full((256, 200), PAD_ID)
    mixed[:128, :128], mixed[128:] = ids[pick], strangers
    mixed_index = torch.cat([index[pick], torch.arange(9000, 9128)])
    order = torch.randperm(256, generator=g)
    inputs2, labels2 = mask(mixed[order], seq_keys=keys_for(4, mixed_index[order]), **options)
    back = torch.argsort(order)[:128]  # where the picked rows went
    assert torch.equal(inputs2[back, :128], inputs[pick]) and torch.equal(labels2[back, :128], labels[pick])
    assert (labels2[back, 128:] == IGNORE).all()


def masker(**masking) -> Masker:
    cfg = tiny()
    cfg = dataclasses.replace(cfg, masking=dataclasses.replace(cfg.masking, **masking),
                              model=dataclasses.replace(cfg.model, vocab_size=VOCAB))
    return Masker.for_run(cfg, {})


@pytest.mark.parametrize("dupe_factor", [10, 3])
def test_static_masks_cycle_through_dupe_factor(dupe_factor):
    m = masker(kind="static", dupe_factor=dupe_factor)
    ids = make_batch(64, 128, seed=4)
    index = torch.arange(64) * 7
    epochs = 3 * dupe_factor
    masks = [m(ids, torch.full((64,), e), index)[1] for e in range(epochs)]  # labels: (64, 128) each
    for row in range(64):
        distinct = {masks[e][row].numpy().tobytes() for e in range(epochs)}
        assert len(distinct) == dupe_factor  # exactly dupe_factor masks per sequence ...
    for e in range(dupe_factor, epochs):
        assert torch.equal(masks[e], masks[e % dupe_factor])  # ... seen in turn, epoch % dupe_factor
    dynamic = masker(kind="dynamic")
    fresh = [dynamic(ids, torch.full((64,), e), index)[1] for e in range(epochs)]
    assert all(len({fresh[e][row].numpy().tobytes() for e in range(epochs)}) == epochs for row in range(64))


def test_token_hashes_distinct_within_a_row():
    # exact counts rely on it: "h <= the k-th smallest h" then selects exactly k, with no ties
    h = token_hashes((64, 8192), seq_keys=keys_for(0, torch.arange(64)))
    assert all(len(torch.unique(row)) == 8192 for row in h)


@dataclasses.dataclass
class CompactMasks:
    """The masks of B sequences as BERT-style records: selected positions and the id the model
    sees there (<mask>, a random token, or the original), in CSR layout."""
    offsets: torch.Tensor  # (B + 1,) int64: row b's records are offsets[b]:offsets[b + 1]
    positions: torch.Tensor  # (N,) int16 (int32 when T > 32767)
    replacements: torch.Tensor  # (N,) int32

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.offsets, self.positions, self.replacements))


def compact_masks(inputs: torch.Tensor, labels: torch.Tensor) -> CompactMasks:
    """Materialise `mask_tokens` output as (positions, replacement ids) for inspection or export."""
    selected = labels != IGNORE
    rows, cols = selected.nonzero(as_tuple=True)  # row-major: sorted by row, then position
    offsets = torch.zeros(len(labels) + 1, dtype=torch.int64, device=labels.device)
    offsets[1:] = selected.sum(1).cumsum(0)
    pos_dtype = torch.int16 if labels.shape[1] <= 32767 else torch.int32
    return CompactMasks(offsets, cols.to(pos_dtype), inputs[rows, cols].to(torch.int32))


def apply_compact_masks(input_ids: torch.Tensor, masks: CompactMasks) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `compact_masks`: (inputs, labels) for the original (B, T) input_ids."""
    rows = torch.repeat_interleave(torch.arange(len(input_ids), device=input_ids.device),
                                   masks.offsets.diff())
    cols = masks.positions.long()
    inputs = input_ids.clone()
    inputs[rows, cols] = masks.replacements.to(input_ids.dtype)
    labels = torch.full_like(input_ids, IGNORE)
    labels[rows, cols] = input_ids[rows, cols]
    return inputs, labels


def test_compact_masks_round_trip(ids):
    inputs, labels = mask(ids[:256], seq_keys=keys_for(0, torch.arange(256)))
    cm = compact_masks(inputs, labels)
    assert cm.positions.dtype == torch.int16 and len(cm.positions) == int((labels != IGNORE).sum())
    again_inputs, again_labels = apply_compact_masks(ids[:256], cm)
    assert torch.equal(again_inputs, inputs) and torch.equal(again_labels, labels)
    assert cm.nbytes() < 0.25 * inputs.numel() * inputs.element_size()


@pytest.mark.parametrize("p", [0.15, 0.4])
def test_exact_count(ids, p):
    inputs, labels = mask(ids, mask_prob=p, exact_count=True, seq_keys=keys_for(0, torch.arange(B)))
    real = ~torch.isin(ids, torch.tensor(SPECIAL_IDS))
    expected = torch.tensor([round(p * int(n)) for n in real.sum(1)])
    assert torch.equal((labels != IGNORE).sum(1), expected)  # every row, exactly
    assert ((labels != IGNORE) & ~real).sum() == 0
    s = shares(ids, inputs, labels)
    assert abs(s["mask_share"] - 0.8) < 0.01 and abs(s["random_share"] - 0.1) < 0.01
    # and which tokens: no position favoured (first vs second third of the rows)
    sel = labels != IGNORE
    first, second = (sel[:, a:b].sum() / real[:, a:b].sum() for a, b in ((0, 170), (170, 340)))
    assert abs(first - second) < 0.003


def reference_words(tokens: list[str], ids: list[int]) -> list[int]:
    """Word number of each token, by the issue's rule, in plain Python: a word begins at a token
    starting with 'Ġ' or after a special token; specials belong to no word (-1)."""
    out, word, prev_special = [], -1, True
    for tok, i in zip(tokens, ids):
        if i in SPECIAL_IDS:
            out.append(-1)
            prev_special = True
            continue
        if prev_special or tok.startswith("\u0120"):
            word += 1
        out.append(word)
        prev_special = False
    return out


@pytest.fixture(scope="module")
def bpe_batch(tokenizer_dir, corpus_docs):
    """Real documents through the real byte-level BPE tokenizer, packed <s> doc </s> doc </s> ...,
    with each token's Ġ-word and the tokenizer's own pre-token (word_ids) per position."""
    tok = load_tokenizer(tokenizer_dir)
    stream, pre_words = [], []
    for d, enc in enumerate(tok.encode_batch(corpus_docs[:150])):
        stream += enc.ids[1:] if stream else enc.ids  # <s> a </s> b </s> ...
        pre_words += [(d, w) if w is not None else None for w in enc.word_ids][1 if d else 0:]
    n = min(len(stream) // 256, 300) * 256  # ~77K tokens
    ids = torch.tensor(stream[:n]).view(-1, 256)
    ids[:, 0] = BOS_ID  # every row a sequence of its own: <s> ...
    pre_words = [None if i % 256 == 0 else w for i, w in enumerate(pre_words[:n])]
    words = torch.tensor([reference_words([tok.id_to_token(i) for i in row], row) for row in ids.tolist()])
    return tok, ids, words, pre_words


@pytest.mark.parametrize("exact_count", [False, True])
def test_whole_word_with_byte_level_bpe(bpe_batch, exact_count):
    tok, ids, words, pre_words = bpe_batch
    word_start = word_start_table(tok.get_vocab(), tok.get_vocab_size())
    assert word_start.sum() > 100
    inputs, labels = mask(ids, vocab_size=tok.get_vocab_size(), word_start=word_start, exact_count=exact_count,
                          seq_keys=keys_for(0, torch.arange(len(ids))))
    selected = labels != IGNORE
    real = words >= 0
    flat_words = (torch.arange(len(ids))[:, None] * 256 + words)[real]  # word ids unique across rows
    n_words = torch.bincount(flat_words)  # tokens per word (0 for unused ids)
    hits = torch.bincount(flat_words, weights=selected[real].double(), minlength=len(n_words))
    assert ((hits == 0) | (hits == n_words)).all()  # a word: all its tokens or none
    assert (hits[n_words >= 2] > 0).sum() > 50  # multi-token words were masked (whole)
    assert ((labels != IGNORE) & ~real).sum() == 0
    # the tokenizer's own pre-tokens (the words HF's word_ids() reports) are never split either,
    # except runs of spaces, which the pre-tokenizer keeps together and Ġ separates
    by_pre: dict = {}
    for i, (s, w, ref) in enumerate(zip(selected.view(-1).tolist(), pre_words, words.view(-1).tolist())):
        if w is not None:
            by_pre.setdefault((i // 256, w), []).append((s, ref))
    whole = [len({s for s, _ in v}) == 1 for v in by_pre.values() if len({ref for _, ref in v}) == 1]
    assert all(whole) and len(whole) > 0.95 * len(by_pre)
    n_real = real.sum(1)
    k = torch.round(n_real.double() * 0.15).long()
    if exact_count:  # the fewest words covering k tokens: at least k, less than k + the last word
        longest = int(n_words.max())
        assert ((selected.sum(1) >= k) & (selected.sum(1) < k + longest)).all()
    else:
        assert abs(selected.sum() / real.sum() - 0.15) < 0.01
    # the same masking without word starts does split words: the check above can fail
    _, plain = mask(ids, vocab_size=tok.get_vocab_size(), seq_keys=keys_for(0, torch.arange(len(ids))))
    plain_hits = torch.bincount(flat_words, weights=(plain != IGNORE)[real].double(), minlength=len(n_words))
    assert ((plain_hits > 0) & (plain_hits < n_words)).any()


def test_generator_path_reproducible_with_seeded_generator(ids):
    a = mask(ids[:64], generator=torch.Generator().manual_seed(5))
    b = mask(ids[:64], generator=torch.Generator().manual_seed(5))
    c = mask(ids[:64], generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


def test_masker_draws_replacements_from_the_tokenizer_vocabulary():
    cfg = tiny()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=1024))  # padded model vocab
    m = Masker.for_run(cfg, {f"t{i}": i for i in range(600)})
    ids = make_batch(512, 128, vocab=600)
    inputs, labels = m(ids, torch.zeros(512, dtype=torch.int64), torch.arange(512))
    assert (inputs < 600).all() and (labels != IGNORE).any()


def test_bad_probabilities_raise():
    with pytest.raises(ValueError):
        mask(make_batch(2, 8), mask_prob=0.15, mask_token_prob=0.9, random_token_prob=0.2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_mask_on_gpu_and_cpu(ids):
    for kw in ({}, {"exact_count": True}, {"word_start": torch.rand(VOCAB) < 0.5}):
        cpu = mask(ids, seq_keys=keys_for(0, torch.arange(B)), **kw)
        gpu = mask(ids.cuda(), seq_keys=keys_for(0, torch.arange(B)).cuda(),
                   **{k: v.cuda() if torch.is_tensor(v) else v for k, v in kw.items()})
        assert all(torch.equal(c, g.cpu()) for c, g in zip(cpu, gpu))


def test_trainer_logs_realised_mask_rate_and_shares(data_dir, tmp_path):
    from conftest import tiny_config

    from roberta.training.loop import pretrain

    cfg = tiny_config(batch_size=16, max_steps=2)  # the default preset's masking rate (tiny: 30%)
    pretrain(str(data_dir), str(tmp_path / "run"), cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "mask_rate" in r]
    assert logged
    for r in logged:
        assert abs(r["mask_rate"] - cfg.masking.mask_prob) < 0.05  # ~1,000 real tokens per step, fixed seed
        assert 0.65 < r["mask_share"] < 0.95 and 0 <= r["random_share"] < 0.25 and 0 <= r["keep_share"] < 0.25
        assert abs(r["mask_share"] + r["random_share"] + r["keep_share"] - 1) < 1e-9
        assert r["masked_tokens"] > 0
