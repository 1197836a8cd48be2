"""The paper's four input formats (Liu et al. 2019, section 4.2) built from one prepared split,
and a fifth, PACKED-DOCUMENTS: FULL-SENTENCES' packing, each document attended to on its own.

A format turns documents/sentences into a `SequenceTable`: sequence i is the concatenation of
pieces `seq_ptr[i]:seq_ptr[i+1]`; a piece is a token span `tokens[start:end]` of the split, or a
separator (start == SEP_DOC: one `</s>` between documents; start == SEP_PAIR: `</s></s>` between
the two segments of a pair, as RoBERTa frames pairs). Every sequence is framed `<s> ... </s>`
and is never longer than seq_len: over-long sentences are cut into pieces.
A plan with `documents_apart` set (packed-documents) tells the loader to send each token's
document (`document_ids`) with the batch, so that attention and positions stop at a `</s>` between
documents; the tokens are FULL-SENTENCES' own.
Plans are deterministic for a seed and hold offsets only, never copies of the tokens.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, replace

import numpy as np

from roberta.data.prepare import Split

SEP_DOC, SEP_PAIR = -1, -2
SEP_LEN = {SEP_DOC: 1, SEP_PAIR: 2}


@dataclass
class SequenceTable:
    piece_start: np.ndarray  # int64 [n_pieces]; a token offset, or SEP_DOC / SEP_PAIR
    piece_end: np.ndarray  # int64 [n_pieces]
    seq_ptr: np.ndarray  # int64 [n_seqs + 1]
    lengths: np.ndarray  # int64 [n_seqs], framed length including <s> and </s>
    nsp_labels: np.ndarray | None  # int64 [n_seqs]: 1 = B follows A in its document, 0 = random
    doc_ids: np.ndarray  # int64 [n_seqs]: the document the sequence starts in
    documents_apart: bool = False  # packed-documents: no attention across a SEP_DOC, positions restart

    def __len__(self) -> int:
        return len(self.lengths)


class _Builder:
    """Accumulates pieces and sequences in typed arrays (8 bytes an entry, not a Python int's ~36)."""

    def __init__(self):
        self.starts, self.ends = array("q"), array("q")
        self.ptr = array("q", [0])
        self.lengths, self.labels, self.docs = array("q"), array("q"), array("q")
        self.cur = 0  # content tokens in the open sequence

    def piece(self, start: int, end: int) -> None:
        self.starts.append(start)
        self.ends.append(end)
        self.cur += SEP_LEN[start] if start < 0 else end - start

    def pair(self, a: list[tuple[int, int]], b: list[tuple[int, int]], doc: int, label: int) -> None:
        """One `<s> A </s></s> B </s>` sequence with its NSP label."""
        for s, e in a:
            self.piece(s, e)
        self.piece(SEP_PAIR, SEP_PAIR)
        for s, e in b:
            self.piece(s, e)
        self.close(doc, label)

    def close(self, doc: int, label: int = -1) -> None:
        if self.cur == 0:
            return
        self.ptr.append(len(self.starts))
        self.lengths.append(self.cur + 2)
        self.labels.append(label)
        self.docs.append(doc)
        self.cur = 0

    def table(self, nsp: bool) -> SequenceTable:
        return SequenceTable(_np(self.starts), _np(self.ends), _np(self.ptr), _np(self.lengths),
                            _np(self.labels) if nsp else None, _np(self.docs))


def _np(a: array) -> np.ndarray:
    return np.array(a, np.int64)


def _sentence_spans(split: Split, budget: int):
    """Yield (doc, start, end) for every sentence, over-long ones cut into pieces of <= budget."""
    doc_starts, sents = np.asarray(split.docs), np.asarray(split.sents)
    sent_doc = np.searchsorted(doc_starts, sents[:-1], side="right") - 1
    for s, e, d in zip(sents[:-1].tolist(), sents[1:].tolist(), sent_doc.tolist()):
        while e - s > budget:
            yield d, s, s + budget
            s += budget
        yield d, s, e


def full_sentences(split: Split, seq_len: int, cross_documents: bool = True) -> SequenceTable:
    """Contiguous whole sentences packed up to seq_len. FULL-SENTENCES crosses documents with an
    extra `</s>` between them; DOC-SENTENCES (cross_documents=False) never does."""
    budget = seq_len - 2
    b = _Builder()
    prev_doc, first_doc = -1, 0
    for doc, s, e in _sentence_spans(split, budget):
        boundary = doc != prev_doc and prev_doc >= 0
        if boundary and not cross_documents:
            b.close(first_doc)
        if b.cur == 0:
            first_doc = doc
        sep = 1 if (boundary and b.cur > 0) else 0
        if b.cur + sep + (e - s) > budget:
            b.close(first_doc)
            first_doc, sep = doc, 0
        if sep:
            b.piece(SEP_DOC, SEP_DOC)
        b.piece(s, e)
        prev_doc = doc
    b.close(first_doc)
    return b.table(nsp=False)


def _doc_sentences(split: Split, budget: int) -> list[list[tuple[int, int]]]:
    per_doc: list[list[tuple[int, int]]] = [[] for _ in range(split.n_docs)]
    for doc, s, e in _sentence_spans(split, budget):
        per_doc[doc].append((s, e))
    return per_doc


def _truncate_pair(a: list[tuple[int, int]], b: list[tuple[int, int]], budget: int):
    """BERT's truncate_seq_pair (drop one token at a time from the end of the longer side, ties
    from A) in closed form: O(pieces), not O(tokens x pieces)."""
    la, lb = sum(e - s for s, e in a), sum(e - s for s, e in b)
    excess = la + lb - budget
    if excess <= 0:
        return a, b
    gap = min(abs(la - lb), excess)  # first the longer side is trimmed down to the shorter one...
    la, lb = (la - gap, lb) if la >= lb else (la, lb - gap)
    rest = excess - gap  # ...then both alternately, A first
    return _keep_tokens(a, la - (rest + 1) // 2), _keep_tokens(b, lb - rest // 2)


def _keep_tokens(spans: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The first n tokens of a list of spans."""
    out = []
    for s, e in spans:
        if n <= 0:
            break
        out.append((s, min(e, s + n)))
        n -= out[-1][1] - s
    return out


def _random_other_doc(rng, n_docs: int, doc: int) -> int:
    other = int(rng.integers(n_docs - 1))
    return other + (other >= doc)


def segment_pairs(split: Split, seq_len: int, seed: int) -> SequenceTable:
    """SEGMENT-PAIR+NSP: two multi-sentence segments, 50% consecutive in one document (label 1),
    50% the second taken from another document (label 0); together <= seq_len."""
    rng = np.random.default_rng(seed)
    budget = seq_len - 4  # <s> A </s></s> B </s>
    per_doc = _doc_sentences(split, budget // 2)
    b = _Builder()
    for doc, sents in enumerate(per_doc):
        i = 0
        while i < len(sents):
            chunk, size = [], 0
            while i < len(sents) and (not chunk or size + sents[i][1] - sents[i][0] <= budget):
                chunk.append(sents[i])
                size += sents[i][1] - sents[i][0]
                i += 1
            n_sents = len(chunk)
            if n_sents == 1:  # one sentence: cut it in two so that a pair exists
                s, e = chunk[0]
                if e - s < 2:
                    continue
                m = (s + e) // 2
                chunk = [(s, m), (m, e)]
            cut = int(rng.integers(1, len(chunk)))
            a, nxt = chunk[:cut], chunk[cut:]
            is_next = bool(rng.random() < 0.5) or split.n_docs < 2
            if not is_next:
                other = per_doc[_random_other_doc(rng, split.n_docs, doc)]
                j = int(rng.integers(len(other))) if other else 0
                want = sum(e - s for s, e in nxt)
                nxt, got = [], 0
                while j < len(other) and got < want:
                    nxt.append(other[j])
                    got += other[j][1] - other[j][0]
                    j += 1
                if n_sents > 1:  # the unused consecutive sentences start the next chunk
                    i -= n_sents - cut
            a, nxt = _truncate_pair(a, nxt, budget)
            if not a or not nxt:
                continue
            b.pair(a, nxt, doc, int(is_next))
    return b.table(nsp=True)


def sentence_pairs(split: Split, seq_len: int, seed: int) -> SequenceTable:
    """SENTENCE-PAIR+NSP: two single sentences, next (label 1) or from another document (label 0)."""
    rng = np.random.default_rng(seed)
    budget = seq_len - 4
    per_doc = _doc_sentences(split, budget // 2)
    b = _Builder()
    for doc, sents in enumerate(per_doc):
        for k in range(len(sents) - 1):
            a = [sents[k]]
            is_next = bool(rng.random() < 0.5) or split.n_docs < 2
            if is_next:
                nxt = [sents[k + 1]]
            else:
                other = per_doc[_random_other_doc(rng, split.n_docs, doc)]
                if not other:
                    continue
                nxt = [other[int(rng.integers(len(other)))]]
            a, nxt = _truncate_pair(a, nxt, budget)
            b.pair(a, nxt, doc, int(is_next))
    return b.table(nsp=True)


def build_sequences(split: Split, fmt: str, seq_len: int, seed: int = 0) -> SequenceTable:
    if fmt == "full-sentences":
        return full_sentences(split, seq_len, cross_documents=True)
    if fmt == "packed-documents":
        return replace(full_sentences(split, seq_len, cross_documents=True), documents_apart=True)
    if fmt == "doc-sentences":
        return full_sentences(split, seq_len, cross_documents=False)
    if fmt == "segment-pair+nsp":
        return segment_pairs(split, seq_len, seed)
    if fmt == "sentence-pair+nsp":
        return sentence_pairs(split, seq_len, seed)
    raise ValueError(f"unknown format {fmt}")


def batch_token_budget(split: Split, fmt: str, batch_size: int, seq_len: int,
                       sample_tokens: int = 1_000_000) -> int:
    """Real tokens per global batch for `fmt`, or 0 for a fixed `batch_size` of sequences.

    FULL-SENTENCES is the reference (the paper's main setting): `batch_size` sequences of it.
    The other formats get a token budget equal to what that batch holds (paper, section 4.2:
    "we dynamically increase the batch size ... to achieve a similar number of total tokens as
    FULL-SENTENCES"). Packing whole sentences leaves a few tokens unused at each sequence's end,
    so the reference is measured by packing a prefix of the split, not assumed to be seq_len."""
    if fmt in ("full-sentences", "packed-documents"):  # the same sequences
        return 0
    i = int(np.searchsorted(split.sents, min(sample_tokens, int(split.sents[-1]))))
    end = int(split.sents[i])  # the first sentence boundary at or after sample_tokens
    docs = np.append(split.docs[: int(np.searchsorted(split.docs, end))], end)
    prefix = Split(split.tokens[:end], docs, split.sents[: i + 1])
    lengths = full_sentences(prefix, seq_len).lengths
    return int(round(batch_size * (float(lengths.mean()) if len(lengths) else seq_len)))


def materialize(split: Split, plan: SequenceTable, index: int, bos: int = 0, eos: int = 2) -> np.ndarray:
    """Token ids of sequence `index`, framed <s> ... </s>."""
    out = [np.array([bos], np.int64)]
    for j in range(plan.seq_ptr[index], plan.seq_ptr[index + 1]):
        s, e = int(plan.piece_start[j]), int(plan.piece_end[j])
        out.append(np.full(SEP_LEN[s], eos, np.int64) if s < 0 else np.asarray(split.tokens[s:e], np.int64))
    out.append(np.array([eos], np.int64))
    return np.concatenate(out)


def document_ids(plan: SequenceTable, index: int) -> np.ndarray:
    """(T,) int64, for each token of sequence `index` as `materialize` frames it, the number of the
    document it belongs to within the sequence: 1, 2, ... The `</s>` between two documents closes
    the first (`<s> A </s>` is document 1, `B ... </s>` document 2), as a lone `<s> A </s>` would."""
    sizes, docs, doc = [1], [1], 1  # <s>
    for j in range(plan.seq_ptr[index], plan.seq_ptr[index + 1]):
        s, e = int(plan.piece_start[j]), int(plan.piece_end[j])
        sizes.append(SEP_LEN[s] if s < 0 else e - s)
        docs.append(doc)
        doc += s == SEP_DOC
    sizes.append(1)  # </s>
    docs.append(doc)
    return np.repeat(np.array(docs, np.int64), sizes)
