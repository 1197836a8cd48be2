"""`roberta prepare`: documents -> flat token shards + document/sentence offsets + meta.json.

Layout of a prepared directory (format-agnostic: the input format is chosen at pretraining time):
    meta.json                     tokenizer hash, dtype, counts in/out, file sizes and checksums
    {train,valid}.tokens.bin      all documents' tokens back to back, no special tokens (uint16/32)
    {train,valid}.docs.bin        int64 [n_docs + 1]      token offset where each document starts
    {train,valid}.sents.bin       int64 [n_sents + 1]     token offset where each sentence starts
    tokenizer/                    a copy of the tokenizer the tokens were made with

Pipeline, streamed end to end: the main process reads and normalises documents (readers.py) and
groups them into chunks of <= CHUNK_DOCS documents and <= CHUNK_CHARS characters; `--threads`
worker processes encode each chunk with one `encode_batch` call over whole documents and map the
sentence splitter's cuts to token offsets; the main process appends each chunk, in input order,
to the train or valid files. At most IN_FLIGHT_PER_WORKER chunks per worker exist at any time, so memory is
O(workers x chunk) whatever the corpus size (`Pool.imap` would read the whole corpus ahead).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from roberta.data.readers import ReadStats, expected_bytes, iter_documents
from roberta.data.sentences import sentence_cuts
from roberta.errors import UserError
from roberta.tokenizer import load_tokenizer, tokenizer_fingerprint, tokenizer_hash

CHUNK_DOCS = 256
CHUNK_CHARS = 1 << 20
IN_FLIGHT_PER_WORKER = 2
MIN_SEQ_LEN = 8  # <s> A </s></s> B </s> needs room for at least a token on each side

_worker: dict = {}


def _hash_fraction(utf8: bytes) -> float:
    return int.from_bytes(hashlib.blake2b(utf8, digest_size=8).digest(), "little") / 2**64


@dataclass
class EncodedChunk:
    """A chunk of documents, encoded: the tokens of all of them back to back, and their shapes."""
    tokens: np.ndarray  # (n_tokens,) uint16/uint32
    doc_tokens: np.ndarray  # (n_docs,) int64, tokens per document
    doc_sents: np.ndarray  # (n_docs,) int64, sentences per document
    sent_tokens: np.ndarray  # (n_sents,) int64, tokens per sentence (all > 0)
    valid: np.ndarray  # (n_docs,) bool, the document goes to the validation split
    text_bytes: int  # UTF-8 bytes of the chunk's text


def encoder(tokenizer_dir: str):
    """The tokenizer as prepare uses it: no post-processor, so that (with add_special_tokens
    off anyway) offsets are the raw character spans, not trimmed of a token's leading space."""
    tok = load_tokenizer(tokenizer_dir)
    tok.post_processor = None
    return tok


def encode_chunk(docs: list[str], tok, valid_fraction: float, dtype) -> EncodedChunk:
    """Encode whole documents (one Encoding each: the fastest path through `tokenizers`) and find
    where each sentence starts: a sentence cut is a pre-tokenizer boundary (sentences.py), so the
    token covering the sentence's first character is its first token."""
    encodings = tok.encode_batch(docs, add_special_tokens=False)
    ids = [e.ids for e in encodings]  # each .ids access builds a new list: once only
    doc_tokens = np.fromiter(map(len, ids), np.int64, len(ids))
    tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype, int(doc_tokens.sum()))
    sent_tokens: list[int] = []
    doc_sents = np.zeros(len(docs), np.int64)
    for k, (e, doc, n) in enumerate(zip(encodings, docs, doc_tokens.tolist())):
        starts = [0, *(e.char_to_token(c) for c in sentence_cuts(doc)), n]
        sent_tokens.extend(b - a for a, b in zip(starts[:-1], starts[1:]))
        doc_sents[k] = len(starts) - 1
    utf8 = [d.encode("utf-8", "surrogatepass") for d in docs]
    valid = np.array([_hash_fraction(b) < valid_fraction for b in utf8], bool)
    return EncodedChunk(tokens, doc_tokens, doc_sents, np.array(sent_tokens, np.int64), valid, sum(map(len, utf8)))


def _init_worker(tokenizer_dir: str, valid_fraction: float, dtype: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # parallelism comes from the processes
    _worker.update(tok=encoder(tokenizer_dir), valid_fraction=valid_fraction, dtype=np.dtype(dtype))


def _encode_in_worker(docs: list[str]) -> EncodedChunk:
    return encode_chunk(docs, _worker["tok"], _worker["valid_fraction"], _worker["dtype"])


def chunk_documents(docs: Iterable[str], max_docs: int = CHUNK_DOCS, max_chars: int = CHUNK_CHARS) -> Iterator[list[str]]:
    chunk, size = [], 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc)
        if len(chunk) >= max_docs or size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def bounded_map(executor, fn, items: Iterable, in_flight: int) -> Iterator:
    """`fn(item)` for each item, in order, computed by `executor` (concurrent.futures), with at most
    `in_flight` items submitted and not yet returned (`Pool.imap`'s feeder thread would consume
    `items` as fast as it can: the whole corpus in memory)."""
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _SplitWriter:
    def __init__(self, out: Path, name: str, dtype):
        self.paths = {k: out / f"{name}.{k}.bin" for k in ("tokens", "docs", "sents")}
        self.files = {k: open(p, "wb") for k, p in self.paths.items()}
        self.dtype = dtype
        self.n_tokens = self.n_docs = self.n_sents = 0
        self.files["docs"].write(np.zeros(1, np.int64).tobytes())
        self.files["sents"].write(np.zeros(1, np.int64).tobytes())

    def add(self, chunk: EncodedChunk, select: np.ndarray) -> None:
        """Append the chunk's documents where `select` (n_docs,) is True."""
        if not select.any():
            return
        tokens, doc_tokens, sent_tokens = chunk.tokens, chunk.doc_tokens, chunk.sent_tokens
        if not select.all():
            tokens = tokens[np.repeat(select, doc_tokens)]
            sent_tokens = sent_tokens[np.repeat(select, chunk.doc_sents)]
            doc_tokens = doc_tokens[select]
        self.files["tokens"].write(tokens.astype(self.dtype, copy=False).tobytes())  # no copy: same dtype
        self.files["docs"].write((self.n_tokens + np.cumsum(doc_tokens)).tobytes())
        self.files["sents"].write((self.n_tokens + np.cumsum(sent_tokens)).tobytes())
        self.n_tokens += len(tokens)
        self.n_docs += len(doc_tokens)
        self.n_sents += len(sent_tokens)

    def close(self) -> dict:
        for f in self.files.values():
            f.close()
        return {"documents": self.n_docs, "sentences": self.n_sents, "tokens": self.n_tokens,
                "files": {k: {"name": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
                          for k, p in self.paths.items()}}

    def remove(self) -> None:
        for f in self.files.values():
            f.close()
        for p in self.paths.values():
            p.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class PrepareResult:
    meta: dict
    seconds: float
    read_summary: str
    out: str

    def summary(self) -> str:
        """One line: how much went in (and was skipped), how much came out, how fast."""
        s, o, r = self.meta["splits"], self.meta["out"], self.meta["read"]
        return (f"prepared: {self.read_summary} -> {o['tokens']:,} tokens in {o['sentences']:,} sentences "
                f"(train {s['train']['documents']:,} docs / {s['train']['tokens']:,} tokens, "
                f"valid {s['valid']['documents']:,} docs / {s['valid']['tokens']:,} tokens) "
                f"in {self.seconds:.1f}s, {r['bytes'] / 1e6 / max(self.seconds, 1e-9):.2f} MB/s -> {self.out}")


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prepare(inputs: list[str], tokenizer_dir: str, out: str, seq_len: int = 512,
            valid_fraction: float = 0.02, text_field: str = "text", workers: int = 0,
            progress: bool = True) -> PrepareResult:
    t0 = time.time()
    if not 0.0 <= valid_fraction < 1.0:
        raise UserError(f"--valid-fraction {valid_fraction}: must be in [0, 1)")
    if seq_len < MIN_SEQ_LEN:
        raise UserError(f"--seq-len {seq_len}: must be at least {MIN_SEQ_LEN}")
    if workers < 0:
        raise UserError(f"--threads {workers}: must be >= 0 (0 = all cores)")
    tok = encoder(tokenizer_dir)
    stats = ReadStats()
    docs = iter_documents(inputs, text_field, stats)  # checks the inputs before anything is written
    vocab_size = tok.get_vocab_size()
    dtype = np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
    outdir = Path(out)
    created = not outdir.exists()  # removed again if this run fails: a failed prepare leaves nothing behind
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "meta.json").unlink(missing_ok=True)  # the directory is "prepared" only once meta.json is back
    writers = {"train": _SplitWriter(outdir, "train", dtype), "valid": _SplitWriter(outdir, "valid", dtype)}
    workers = workers or default_workers()
    # over the input bytes read (known up front: an ETA); None: only on a terminal, not in logs
    bar = tqdm(total=expected_bytes(inputs, text_field) or None, desc="prepare", unit="B", unit_scale=True,
               unit_divisor=1000, mininterval=0.5, disable=None if progress else True)
    # a ProcessPoolExecutor, not a Pool: if workers die (e.g. prepare() called from a script
    # without a __main__ guard, which "spawn" re-imports), it fails instead of respawning forever
    pool = (ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                initargs=(str(tokenizer_dir), valid_fraction, dtype.name)) if workers > 1 else None)
    try:
        chunks = chunk_documents(docs)
        encoded = (bounded_map(pool, _encode_in_worker, chunks, IN_FLIGHT_PER_WORKER * workers) if pool
                   else (encode_chunk(c, tok, valid_fraction, dtype) for c in chunks))
        for chunk in encoded:
            writers["train"].add(chunk, ~chunk.valid)
            writers["valid"].add(chunk, chunk.valid)
            bar.update(stats.bytes_in - bar.n)
        splits = {name: w.close() for name, w in writers.items()}
        if stats.documents == 0:
            raise UserError(f"{' '.join(map(str, inputs))}: no documents found (empty corpus); {stats.summary()}")
        if splits["train"]["tokens"] == 0:
            raise UserError(f"all {stats.documents:,} documents went to the validation split; lower --valid-fraction")
    except BrokenProcessPool:
        for w in writers.values():
            w.remove()
        raise UserError("the tokenizer worker processes died; if you call prepare() from a script, put the call "
                        "under `if __name__ == '__main__':` (worker processes import the script), or use workers=1"
                        ) from None
    except BaseException:
        for w in writers.values():
            w.remove()
        if created:
            shutil.rmtree(outdir, ignore_errors=True)
        raise
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    meta = {
        "version": 1, "tokenizer_hash": tokenizer_hash(tokenizer_dir),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer_dir), "vocab_size": vocab_size,
        "dtype": dtype.name, "seq_len": seq_len, "valid_fraction": valid_fraction, "text_field": text_field,
        "inputs": [str(i) for i in inputs], "read": stats.to_dict(),
        "out": {k: sum(s[k] for s in splits.values()) for k in ("documents", "sentences", "tokens")},
        "splits": splits,
    }
    tok_out = outdir / "tokenizer"
    tok_out.mkdir(exist_ok=True)
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file():
            shutil.copy2(f, tok_out / f.name)
    tmp = outdir / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(outdir / "meta.json")
    return PrepareResult(meta=meta, seconds=time.time() - t0, read_summary=stats.summary(), out=str(out))


@dataclass
class Split:
    """A prepared split, memory-mapped."""
    tokens: np.ndarray  # (n_tokens,) uint16/uint32
    docs: np.ndarray  # (n_docs + 1,) int64 offsets
    sents: np.ndarray  # (n_sents + 1,) int64 offsets

    @property
    def n_docs(self) -> int:
        return len(self.docs) - 1


def read_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise UserError(f"{data_dir}: not a prepared data directory (no meta.json); run `roberta prepare` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: corrupt meta.json ({e}); run `roberta prepare` again") from None


def load_split(data_dir: str | Path, name: str, verify: bool = False) -> Split:
    meta = read_meta(data_dir)
    info = meta["splits"][name]
    arrays = {}
    for kind, dtype in (("tokens", meta["dtype"]), ("docs", "int64"), ("sents", "int64")):
        f = info["files"][kind]
        path = Path(data_dir) / f["name"]
        if not path.is_file():
            raise UserError(f"{path}: missing; the prepared data is incomplete, run `roberta prepare` again")
        if path.stat().st_size != f["bytes"]:
            raise UserError(f"{path}: size {path.stat().st_size} differs from meta.json's {f['bytes']} "
                            "(truncated or replaced); run `roberta prepare` again")
        if verify and file_sha256(path) != f["sha256"]:
            raise UserError(f"{path}: checksum differs from meta.json (corrupted or swapped); "
                            "run `roberta prepare` again")
        arrays[kind] = np.memmap(path, dtype=dtype, mode="r") if f["bytes"] else np.zeros(0, dtype)
    return Split(**arrays)
