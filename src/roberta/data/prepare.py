"""`roberta prepare`: documents -> flat token shards + document/sentence offsets + meta.json.

Layout of a prepared directory (format-agnostic: the input format is chosen at pretraining time):
    meta.json                     tokenizer hash, dtype, counts in/out, file sizes and checksums
    {train,valid}.tokens.bin      all documents' tokens back to back, no special tokens (uint16/32)
    {train,valid}.docs.bin        int64 [n_docs + 1]      token offset where each document starts
    {train,valid}.sents.bin       int64 [n_sents + 1]     token offset where each sentence starts
Documents are streamed; memory stays bounded by one chunk of documents whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import multiprocessing as mp
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from roberta.data.readers import ReadStats, iter_documents
from roberta.errors import UserError
from roberta.tokenizer import iter_batches, load_tokenizer, tokenizer_hash

CHUNK_DOCS = 512
# A sentence ends after . ! ? (plus closing quotes/brackets) followed by whitespace, or at a newline.
# The whitespace goes with the next sentence so that encoding sentence by sentence gives exactly
# the tokens of encoding the whole document (byte-level BPE attaches a space to the next word).
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*(?=\s+\S)|(?<=\S)(?=\n)")

_worker_tok = None


def split_sentences(text: str) -> list[str]:
    """Split into sentences whose concatenation is exactly `text`."""
    cuts = [m.end() for m in _SENT_END.finditer(text)]
    pieces, start = [], 0
    for cut in cuts:
        if cut > start:
            pieces.append(text[start:cut])
            start = cut
    pieces.append(text[start:])
    return [p for p in pieces if p]


def _init_worker(tokenizer_dir: str) -> None:
    global _worker_tok
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tok = load_tokenizer(tokenizer_dir)


def encode_documents(docs: list[str], tok=None) -> list[tuple[bytes, np.ndarray, np.ndarray]]:
    """-> per document: (its split key, token ids, sentence lengths in tokens)."""
    tok = tok or _worker_tok
    sentences = [split_sentences(d) for d in docs]
    flat = [s for sents in sentences for s in sents]
    encoded = tok.encode_batch(flat, add_special_tokens=False)
    out, i = [], 0
    for doc, sents in zip(docs, sentences):
        ids = [encoded[i + j].ids for j in range(len(sents))]
        i += len(sents)
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        tokens = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=int(lengths.sum()))
        out.append((len(doc.encode("utf-8", "surrogatepass")), split_key(doc), tokens, lengths[lengths > 0]))
    return out


def split_key(text: str) -> float:
    """A document's place in [0, 1): the train/valid split is by hash of the text, deterministic."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return h / 2**64


class _SplitWriter:
    def __init__(self, out: Path, name: str, dtype):
        self.paths = {k: out / f"{name}.{k}.bin" for k in ("tokens", "docs", "sents")}
        self.files = {k: open(p, "wb") for k, p in self.paths.items()}
        self.dtype = dtype
        self.n_tokens = self.n_docs = self.n_sents = 0
        self.files["docs"].write(np.zeros(1, np.int64).tobytes())
        self.files["sents"].write(np.zeros(1, np.int64).tobytes())

    def add(self, ids: np.ndarray, sent_lengths: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self.files["tokens"].write(ids.astype(self.dtype).tobytes())
        self.files["sents"].write((self.n_tokens + np.cumsum(sent_lengths)).astype(np.int64).tobytes())
        self.n_tokens += len(ids)
        self.n_docs += 1
        self.n_sents += len(sent_lengths)
        self.files["docs"].write(np.array([self.n_tokens], np.int64).tobytes())

    def close(self) -> dict:
        for f in self.files.values():
            f.close()
        return {"documents": self.n_docs, "sentences": self.n_sents, "tokens": self.n_tokens,
                "files": {k: {"name": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
                          for k, p in self.paths.items()}}


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


def prepare(inputs: list[str], tokenizer_dir: str, out: str, seq_len: int = 512,
            valid_fraction: float = 0.02, text_field: str = "text", workers: int = 0,
            progress: bool = True) -> PrepareResult:
    t0 = time.time()
    if not 0.0 <= valid_fraction < 1.0:
        raise UserError(f"--valid-fraction {valid_fraction}: must be in [0, 1)")
    tok = load_tokenizer(tokenizer_dir)
    vocab_size = tok.get_vocab_size()
    dtype = np.uint16 if vocab_size <= 65535 else np.uint32
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    writers = {"train": _SplitWriter(outdir, "train", dtype), "valid": _SplitWriter(outdir, "valid", dtype)}
    stats = ReadStats()
    docs = iter_documents(inputs, text_field, stats)
    workers = workers or os.cpu_count() or 1
    bar = tqdm(desc="prepare", unit="B", unit_scale=True, disable=not progress)
    pool = mp.get_context("spawn").Pool(workers, _init_worker, (str(tokenizer_dir),)) if workers > 1 else None
    try:
        chunks = iter_batches(docs, CHUNK_DOCS)
        encoded_chunks = pool.imap(encode_documents, chunks) if pool else (encode_documents(c, tok) for c in chunks)
        for encoded in encoded_chunks:
            for n_bytes, key, ids, lengths in encoded:
                writers["valid" if key < valid_fraction else "train"].add(ids, lengths)
                bar.update(n_bytes)
    finally:
        if pool:
            pool.terminate()
        bar.close()
    splits = {name: w.close() for name, w in writers.items()}
    if stats.documents == 0:
        raise UserError(f"{' '.join(inputs)}: no documents found (empty corpus); {stats.summary()}")
    if splits["train"]["tokens"] == 0:
        raise UserError("all documents went to the validation split; lower --valid-fraction")
    meta = {
        "version": 1, "tokenizer_hash": tokenizer_hash(tokenizer_dir), "vocab_size": vocab_size,
        "dtype": np.dtype(dtype).name, "seq_len": seq_len, "valid_fraction": valid_fraction,
        "inputs": [str(i) for i in inputs], "read": {"files": stats.files, "documents": stats.documents,
        "bytes": stats.bytes_in, "invalid_utf8_bytes": stats.invalid_bytes, "skipped": stats.skipped},
        "splits": splits,
    }
    (outdir / "meta.json").write_text(json.dumps(meta, indent=2))
    tok_out = outdir / "tokenizer"
    tok_out.mkdir(exist_ok=True)
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file():
            shutil.copy2(f, tok_out / f.name)
    return PrepareResult(meta=meta, seconds=time.time() - t0, read_summary=stats.summary())


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
