"""Stream documents out of .txt / directories / .jsonl(.gz) / .parquet inputs.

Nothing is dropped silently: every skipped line or byte is counted in `ReadStats`, the first few
are reported with file:line, and the summary says how much went in and how much came out.
Invalid UTF-8 bytes are skipped (and counted), never guessed at.
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from roberta.errors import UserError

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
MAX_WARNINGS = 5
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_BAD_BYTE = re.compile("[\udc80-\udcff]")


@dataclass
class ReadStats:
    files: int = 0
    documents: int = 0
    bytes_in: int = 0
    invalid_bytes: int = 0
    skipped: dict = field(default_factory=dict)  # reason -> count
    warnings: int = 0

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.warnings += 1
        if self.warnings <= MAX_WARNINGS:
            print(f"warning: {where}: {reason}; skipped", file=sys.stderr)

    def summary(self) -> str:
        parts = [f"{self.documents:,} documents from {self.files} file(s), {self.bytes_in / 1e6:.1f} MB"]
        if self.invalid_bytes:
            parts.append(f"{self.invalid_bytes:,} invalid UTF-8 bytes skipped")
        for reason, n in sorted(self.skipped.items()):
            parts.append(f"{n:,} skipped ({reason})")
        return "; ".join(parts)


def _decoder(stats: ReadStats):
    """bytes -> str; invalid UTF-8 bytes are dropped and counted in stats.invalid_bytes."""
    def decode(raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", errors="surrogateescape")  # each bad byte -> one lone surrogate
            stats.invalid_bytes += len(_BAD_BYTE.findall(text))
            return _BAD_BYTE.sub("", text)
    return decode


def expand_inputs(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(SUFFIXES))
            if not found:
                raise UserError(f"{p}: directory has no {', '.join(SUFFIXES)} files")
            files.extend(found)
        elif p.is_file():
            if not p.name.endswith(SUFFIXES):
                raise UserError(f"{p}: unsupported file type; use {', '.join(SUFFIXES)}")
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or directory")
    return files


def normalize(text: str) -> str:
    """HTML line breaks (IMDB's `<br />`) become newlines; surrounding whitespace is trimmed."""
    return _BR.sub("\n", text).strip()


def _read_txt(path: Path, stats: ReadStats) -> Iterator[str]:
    decode = _decoder(stats)
    lines: list[str] = []
    with open(path, "rb") as f:
        for raw in f:
            stats.bytes_in += len(raw)
            line = decode(raw).rstrip("\r\n")
            if line.strip():
                lines.append(line)
            elif lines:
                yield "\n".join(lines)
                lines = []
    if lines:
        yield "\n".join(lines)


def _read_jsonl(path: Path, text_field: str, stats: ReadStats) -> Iterator[str]:
    decode = _decoder(stats)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                stats.bytes_in += len(raw)
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(decode(raw))
                except json.JSONDecodeError:
                    stats.skip("line is not valid JSON", f"{path}:{lineno}")
                    continue
                if not isinstance(obj, dict) or text_field not in obj:
                    stats.skip(f"no field '{text_field}' (use --text-field)", f"{path}:{lineno}")
                    continue
                value = obj[text_field]
                if not isinstance(value, str):
                    stats.skip(f"field '{text_field}' is not a string", f"{path}:{lineno}")
                    continue
                yield value
    except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None


def _read_parquet(path: Path, text_field: str, stats: ReadStats) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading parquet needs pyarrow (pip install 'roberta[parquet]')") from None
    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise UserError(f"{path}: no column '{text_field}' (columns: {', '.join(pf.schema_arrow.names)}); "
                        "choose one with --text-field")
    for group in range(pf.num_row_groups):
        column = pf.read_row_group(group, columns=[text_field]).column(0)
        for value in column.to_pylist():
            if value is None:
                stats.skip("null text", f"{path} row group {group}")
                continue
            stats.bytes_in += len(value.encode("utf-8", errors="ignore"))
            yield value


def iter_documents(inputs: list[str], text_field: str = "text", stats: ReadStats | None = None) -> Iterator[str]:
    """Yield normalised, non-empty documents from all inputs in order."""
    stats = stats if stats is not None else ReadStats()
    for path in expand_inputs(inputs):
        stats.files += 1
        if path.name.endswith(".txt"):
            docs = _read_txt(path, stats)
        elif path.name.endswith(".parquet"):
            docs = _read_parquet(path, text_field, stats)
        else:
            docs = _read_jsonl(path, text_field, stats)
        for doc in docs:
            doc = normalize(doc)
            if not doc:
                stats.skip("empty document", str(path))
                continue
            stats.documents += 1
            yield doc
