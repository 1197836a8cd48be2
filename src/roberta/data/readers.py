"""Stream documents out of .txt / directories / .jsonl(.gz) / .parquet / .arrow inputs, and
Hugging Face dataset directories (save_to_disk, load_dataset's cache, the hub cache: hf_datasets.py).

Nothing is dropped silently: every skipped line, row, file or byte is counted in `ReadStats`, the
first few of each kind are reported with file:line, and the summary says how much went in and
how much came out. Invalid UTF-8 bytes are skipped (and counted), never guessed at.

Memory is bounded by the longest *piece*, not the longest line: .txt lines are read in pieces of
READ_BYTES, and a document longer than MAX_DOC_CHARS (a 50 MB line with no newline, a book in one
JSON string) is cut, at a sentence end where there is one, into consecutive documents of at most
that size, with a warning. (A bounded document also bounds the tokenizer: byte-level BPE on one
space-free run of n characters takes time and memory growing faster than n.)
A .jsonl line must be parsed whole, so one over MAX_JSONL_LINE_BYTES is skipped (and reported).
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from roberta.data.hf_datasets import hf_dataset_files
from roberta.data.sentences import sentence_cuts
from roberta.errors import UserError

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".parquet", ".arrow")
NOT_CORPUS = "file not a corpus format"  # ReadStats.skipped's reason for a directory's other files
SHOW_SKIPPED_FILES = 5  # names on the warning line
MAX_SKIPPED_FILES = 100  # names kept in meta.json per reason; the count has them all
MAX_WARNINGS = 3  # per kind of problem; the summary has the full counts
READ_BYTES = 1 << 20
MAX_DOC_CHARS = 100_000  # ~25K tokens; BPE time and memory grow faster than linearly in a space-free run
MAX_JSONL_LINE_BYTES = 64 << 20
PARQUET_BATCH_ROWS = 1024
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SURROGATE = re.compile("[\ud800-\udfff]")  # invalid bytes under surrogateescape, or lone \ud8xx escapes


@dataclass
class ReadStats:
    files: int = 0
    documents: int = 0
    bytes_in: int = 0  # bytes of the input files as read (decompressed), parquet: of the text column
    invalid_bytes: int = 0  # invalid UTF-8 bytes (or lone surrogate escapes) dropped from kept text
    skipped: dict = field(default_factory=dict)  # reason -> count of skipped lines / rows / files
    skipped_files: dict = field(default_factory=dict)  # reason -> the first MAX_SKIPPED_FILES files skipped
    cut: int = 0  # over-long documents cut into pieces (nothing dropped)
    cut_into: int = 0  # ... the number of documents they became
    quiet: bool = False  # count only: a second pass over the same inputs (a sample's size) warns once
    _warned: dict = field(default_factory=dict)

    def warn(self, kind: str, message: str) -> None:
        n = self._warned[kind] = self._warned.get(kind, 0) + 1
        if n <= MAX_WARNINGS and not self.quiet:
            more = " (further warnings of this kind suppressed; the summary counts them)" if n == MAX_WARNINGS else ""
            tqdm.write(f"warning: {message}{more}", file=sys.stderr)  # tqdm.write: keeps a progress bar intact

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.warn(reason, f"{where}: {reason}{detail}; skipped")

    def skip_files(self, directory: Path, files: list[Path]) -> None:
        """A directory's files that are not a corpus format: counted, named (one line), kept in meta.json."""
        self.skipped[NOT_CORPUS] = self.skipped.get(NOT_CORPUS, 0) + len(files)
        kept = self.skipped_files.setdefault(NOT_CORPUS, [])
        kept.extend(str(f) for f in files[: MAX_SKIPPED_FILES - len(kept)])
        names = ", ".join(str(f.relative_to(directory)) for f in files[:SHOW_SKIPPED_FILES])
        more = ", ..." if len(files) > SHOW_SKIPPED_FILES else ""
        self.warn(f"{NOT_CORPUS} in {directory}",
                  f"skipped {len(files):,} file(s) in {directory}/ that are not a corpus format: {names}{more} "
                  f"(read are {', '.join(SUFFIXES)} and Hugging Face dataset directories)")

    def clean(self, text: str, where: str) -> str:
        """Drop invalid bytes / lone surrogates (tokenizers cannot encode them), counting them."""
        if not _SURROGATE.search(text):
            return text
        bad = len(_SURROGATE.findall(text))
        self.invalid_bytes += bad
        self.warn("invalid UTF-8", f"{where}: {bad} invalid UTF-8 byte(s) dropped")
        return _SURROGATE.sub("", text)

    def summary(self) -> str:
        parts = [f"{human_bytes(self.bytes_in)} in {self.files} file(s) -> {self.documents:,} documents"]
        if self.invalid_bytes:
            parts.append(f"{self.invalid_bytes:,} invalid UTF-8 bytes dropped")
        for reason, n in sorted(self.skipped.items()):
            parts.append(f"{n:,} skipped ({reason})")
        if self.cut:
            parts.append(f"{self.cut:,} over-long document(s) cut into {self.cut_into:,}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"files": self.files, "documents": self.documents, "bytes": self.bytes_in,
                "invalid_utf8_bytes": self.invalid_bytes, "skipped": dict(self.skipped),
                "skipped_files": {reason: list(files) for reason, files in self.skipped_files.items()},
                "cut_documents": self.cut, "cut_into": self.cut_into}


def human_bytes(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:,.1f} GB"


SNIFF_BYTES = 64 << 10
MAX_INVALID_FRACTION = 0.25  # of the first SNIFF_BYTES; Latin-1 prose mistaken for UTF-8 stays well below
_MAGIC = ((b"\x1f\x8b", "gzip-compressed"), (b"PK\x03\x04", "a zip archive"), (b"BZh", "bzip2-compressed"),
          (b"\xfd7zXZ\x00", "xz-compressed"), (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
          (b"7z\xbc\xaf\x27\x1c", "a 7z archive"), (b"PAR1", "a parquet file"), (b"\x7fELF", "an executable"))


def sniff_not_text(path: Path) -> str | None:
    """Why a .txt / .jsonl file is not text (compressed, an archive, binary), or None if it looks
    like text. Only the first SNIFF_BYTES are read: a few invalid bytes in a real text file are
    dropped and counted later, not refused here."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if b"\x00" in head:
        return "binary (it contains NUL bytes)"
    text = codecs.getincrementaldecoder("utf-8")("surrogateescape").decode(head, False)
    invalid = len(_SURROGATE.findall(text))
    if head and invalid / len(head) > MAX_INVALID_FRACTION:
        return f"not UTF-8 text ({invalid / len(head):.0%} of its first {human_bytes(len(head))} are invalid UTF-8)"
    return None


def _check_is_text(path: Path) -> None:
    if path.name.endswith((".gz", ".parquet", ".arrow")):
        return  # read by gzip / pyarrow, which check their own formats
    why = sniff_not_text(path)
    if why:
        hint = ("decompress it (gzipped JSON lines may keep the .jsonl.gz name)" if "compressed" in why
                else "pass UTF-8 text (.txt, .jsonl), .jsonl.gz, .parquet or .arrow")
        raise UserError(f"{path}: is {why}, not a {path.suffix} text file; {hint}")


def expand_inputs(inputs: list[str], stats: ReadStats | None = None) -> list[Path]:
    """Files to read, in order; a directory means its supported files, recursively, sorted. The
    other files met in a directory (README.md, a .csv, a man page .gz) are not read: with `stats`,
    they are counted and named (ReadStats.skip_files), so that none goes missing without a word."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir() and (p / "meta.json").is_file() and any(p.glob("*.tokens.bin")):
            raise UserError(f"{p}: is prepared data (token shards from `roberta prepare`), not a corpus; "
                            "pass the text files it was prepared from")
        if p.is_dir() and ((p / "tokenizer.json").is_file() or any(p.glob("checkpoint-*"))):
            raise UserError(f"{p}: is a tokenizer, checkpoint or run directory, not a corpus; "
                            "pass text files (.txt, .jsonl, .jsonl.gz, .parquet, .arrow) or a directory of them")
        if p.is_dir():
            others: list[Path] = []
            found = _directory_files(p, others)
            if not found:
                listed = f" (it has {len(others):,} other file(s), e.g. {others[0].name})" if others else ""
                raise UserError(f"{p}: directory has no {', '.join(SUFFIXES)} files{listed}")
            if others and stats is not None:
                stats.skip_files(p, others)
            files.extend(found)
        elif p.is_file():
            if not p.name.endswith(SUFFIXES):
                raise UserError(f"{p}: unsupported file type; use {', '.join(SUFFIXES)} or a directory of them")
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or directory")
    for f in files:
        _check_is_text(f)
    return files


def _directory_files(directory: Path, others: list[Path]) -> list[Path]:
    """The supported files under `directory` (hidden ones aside), depth first in name order; the
    rest are appended to `others`. A Hugging Face dataset met on the way gives the files of its
    own layout (one split, not the `datasets` cache's intermediate files; hf_datasets notes them)."""
    hf_files = hf_dataset_files(directory, SUFFIXES)
    if hf_files is not None:
        return hf_files
    files = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if not entry.is_symlink():  # as rglob: a linked directory is not entered (no cycles)
                files.extend(_directory_files(entry, others))
        elif entry.is_file():
            (files if entry.name.endswith(SUFFIXES) else others).append(entry)
    return files


def normalize(text: str) -> str:
    """HTML line breaks (IMDB's `<br />`) become newlines; surrounding whitespace is trimmed."""
    return _BR.sub("\n", text).strip() if "<" in text else text.strip()


def cut_long(text: str, limit: int = MAX_DOC_CHARS) -> list[str]:
    """Cut text into pieces of <= limit characters: at the last sentence end in the last tenth of
    the window, else at the last whitespace in its second half, else (a run with no space at all)
    exactly at limit."""
    pieces = []
    while len(text) > limit:
        lo = limit - limit // 10
        ends = sentence_cuts(text[lo:limit])
        cut = lo + ends[-1] if ends else max(text.rfind(c, limit // 2, limit) for c in " \n\t")
        cut = cut if cut > 0 else limit
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    return pieces


def _read_txt(path: Path, stats: ReadStats) -> Iterator[tuple[str, str]]:
    """Documents are separated by blank lines. Yields (file:line, raw text not yet normalised)."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")  # a piece may end mid-character
    lineno = blank = size = doc_line = 0
    doc: list[str] = []
    cut = yielded = False  # cut: the open document has been cut already
    continued = False  # the previous piece ended inside a line
    with open(path, "rb") as f:
        while raw := f.readline(READ_BYTES):
            stats.bytes_in += len(raw)
            lineno += not continued
            complete = raw.endswith(b"\n")
            text = stats.clean(decoder.decode(raw, complete), f"{path}:{lineno}")
            if complete and not continued and not text.strip():  # a blank line ends the document
                blank += 1
                if doc:
                    yielded = True
                    yield f"{path}:{doc_line}", "".join(doc)
                doc, size, cut = [], 0, False
                continue
            continued = not complete
            doc_line = doc_line if doc else lineno
            doc.append(text)
            size += len(text)
            if size > MAX_DOC_CHARS:  # emit all but the tail, which may still grow
                pieces = cut_long("".join(doc))
                if not cut:
                    stats.cut, stats.cut_into, cut = stats.cut + 1, stats.cut_into + 1, True
                    stats.warn("cut", f"{path}:{doc_line}: document longer than {MAX_DOC_CHARS:,} characters "
                                      "(a line with no newline?); cut into documents of at most that size")
                stats.cut_into += len(pieces) - 1
                yielded = True
                for piece in pieces[:-1]:
                    yield f"{path}:{doc_line}", piece
                doc, size = [pieces[-1]], len(pieces[-1])
    doc.append(stats.clean(decoder.decode(b"", True), f"{path}:{lineno}"))
    if "".join(doc).strip():
        yield f"{path}:{doc_line}", "".join(doc)
    elif not yielded:
        stats.skip("file with no text", str(path), f" ({lineno:,} lines, all blank)" if lineno else " (empty)")


def _read_jsonl(path: Path, text_field: str, stats: ReadStats) -> Iterator[tuple[str, str]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = yielded = 0
    try:
        with opener(path, "rb") as f:
            while raw := f.readline(MAX_JSONL_LINE_BYTES):
                lineno += 1
                stats.bytes_in += len(raw)
                if len(raw) == MAX_JSONL_LINE_BYTES and not raw.endswith(b"\n"):
                    while (rest := f.readline(READ_BYTES)) and not rest.endswith(b"\n"):
                        stats.bytes_in += len(rest)
                    stats.bytes_in += len(rest)
                    stats.skip(f"line over {human_bytes(MAX_JSONL_LINE_BYTES)}", f"{path}:{lineno}")
                    continue
                if not raw.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    if isinstance(e, UnicodeDecodeError):  # salvage: drop the invalid bytes, then parse
                        try:
                            obj = json.loads(stats.clean(raw.decode("utf-8", "surrogateescape"), where))
                        except json.JSONDecodeError as e2:
                            stats.skip("line is not valid JSON", where, f" ({e2.msg})")
                            continue
                    else:
                        stats.skip("line is not valid JSON", where, f" ({e.msg} at column {e.colno})")
                        continue
                if not isinstance(obj, dict):
                    stats.skip("line is not a JSON object", where)
                    continue
                if text_field not in obj:
                    keys = ", ".join(list(obj)[:8]) or "none"
                    stats.skip(f"no field '{text_field}'", where, f" (fields: {keys}; choose one with --text-column)")
                    continue
                value = obj[text_field]
                if not isinstance(value, str):
                    stats.skip(f"field '{text_field}' is not a string", where, f" ({type(value).__name__})")
                    continue
                if b"\\ud" in raw or b"\\uD" in raw:  # a \ud8xx escape may leave a lone surrogate
                    value = stats.clean(value, where)
                yielded += 1
                yield where, value
        if not yielded:
            stats.skip("file with no documents", str(path), f" ({lineno:,} lines)")
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{path}:{lineno + 1}: cannot read ({e})") from None


def _pyarrow(path: Path, what: str):
    try:
        import pyarrow
    except ImportError:
        raise UserError(f"{path}: reading {what} needs pyarrow (pip install 'roberta[parquet]')") from None
    return pyarrow


def _is_binary_text(path: Path, schema, text_field: str) -> bool:
    """Check that `text_field` is a text column of `schema`: True for bytes, False for strings."""
    pa = _pyarrow(path, "Arrow data")
    if text_field not in schema.names:
        raise UserError(f"{path}: no column '{text_field}' (columns: {', '.join(schema.names)}); "
                        "choose one with --text-column")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)):
        raise UserError(f"{path}: column '{text_field}' holds {kind}, not text; choose one with --text-column")
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _read_parquet(path: Path, text_field: str, stats: ReadStats) -> Iterator[tuple[str, str]]:
    pa = _pyarrow(path, "parquet")
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    binary = _is_binary_text(path, pf.schema_arrow, text_field)
    # iter_batches reads one row group at a time and hands it out in small batches
    batches = (b.column(0) for b in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]))
    yield from _column_rows(path, batches, binary, stats)


def _read_arrow(path: Path, text_field: str, stats: ReadStats) -> Iterator[tuple[str, str]]:
    """An Arrow IPC file: the stream format `datasets` writes (save_to_disk, its cache), or the
    random-access file format (Feather v2), one record batch at a time. The file is memory-mapped,
    as `datasets` does: a batch (which can be a whole shard) is read in place, not copied to the
    heap, and turned into Python strings PARQUET_BATCH_ROWS rows at a time."""
    pa = _pyarrow(path, "Arrow files")
    with pa.memory_map(str(path)) as f:
        try:
            file_format = f.read(6) == b"ARROW1"
            f.seek(0)
            reader = pa.ipc.open_file(f) if file_format else pa.ipc.open_stream(f)
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{path}: not a readable Arrow file ({e})") from None
        binary = _is_binary_text(path, reader.schema, text_field)
        if file_format:
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        try:
            yield from _column_rows(path, (b.column(text_field) for b in batches), binary, stats)
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{path}: cannot read further ({e}); is the file complete?") from None


def _column_rows(path: Path, batches: Iterator, binary: bool, stats: ReadStats) -> Iterator[tuple[str, str]]:
    """(where, text) for each row of a text column handed out in Arrow arrays; nulls are skipped."""
    row = yielded = 0
    # Python strings for at most PARQUET_BATCH_ROWS rows at a time, however large a batch is
    pieces = (c.slice(i, PARQUET_BATCH_ROWS) for c in batches for i in range(0, len(c), PARQUET_BATCH_ROWS))
    for column in pieces:
        for value in column.to_pylist():
            row += 1
            if value is None:
                stats.skip("null text", f"{path} row {row}")
                continue
            if binary:
                stats.bytes_in += len(value)
                value = stats.clean(value.decode("utf-8", "surrogateescape"), f"{path} row {row}")
            else:
                stats.bytes_in += len(value.encode("utf-8", "surrogatepass"))
            yielded += 1
            yield f"{path} row {row}", value
    if not yielded:
        stats.skip("file with no documents", str(path), f" ({row:,} rows)")


def iter_documents(inputs: list[str], text_field: str = "text", stats: ReadStats | None = None) -> Iterator[str]:
    """Normalised, non-empty documents of at most MAX_DOC_CHARS characters, from all inputs in order.

    The inputs are checked now (missing file, empty directory, unsupported type raise UserError
    before anything is read); the documents are then streamed."""
    stats = stats if stats is not None else ReadStats()
    return _documents(expand_inputs(inputs, stats), text_field, stats)


def expected_bytes(inputs: list[str], text_field: str = "text") -> int:
    """What ReadStats.bytes_in will count once every input is read, known before reading: the
    size of plain files, a gzip file's recorded original size, a parquet column's uncompressed
    size. It is the total of the progress bars of train-tokenizer and prepare (their ETA)."""
    total = 0
    for path in expand_inputs(inputs):
        size = path.stat().st_size
        if path.name.endswith(".gz") and size >= 18:
            with open(path, "rb") as f:
                f.seek(-4, 2)
                original = int.from_bytes(f.read(4), "little")  # ISIZE: the size modulo 2**32
            size = original + (size // 2**32 + (original < size)) * 2**32 if size >= 2**32 else original
        elif path.name.endswith(".parquet"):
            try:
                import pyarrow.parquet as pq

                meta = pq.ParquetFile(path).metadata
                names = [meta.schema.column(i).name for i in range(meta.num_columns)]
                column = names.index(text_field) if text_field in names else None
                if column is not None:
                    size = sum(meta.row_group(g).column(column).total_uncompressed_size
                               for g in range(meta.num_row_groups))
            except Exception:  # an estimate only: the reader itself reports a bad file
                pass
        total += size
    return total


def read_with_progress(docs: Iterator[str], inputs: list[str], stats: ReadStats, desc: str, enabled: bool = True,
                       text_field: str = "text") -> Iterator[str]:
    """`docs` unchanged, while a bar on stderr counts the input bytes read against expected_bytes
    (rate and ETA). Only on a terminal, and not when `enabled` is false (--quiet)."""
    bar = tqdm(total=expected_bytes(inputs, text_field) or None, desc=desc, unit="B", unit_scale=True,
               unit_divisor=1000, mininterval=0.5, disable=None if enabled else True)
    try:
        for doc in docs:
            bar.update(stats.bytes_in - bar.n)
            yield doc
        bar.update(stats.bytes_in - bar.n)
    finally:
        bar.close()


def _documents(files: list[Path], text_field: str, stats: ReadStats) -> Iterator[str]:
    for path in files:
        stats.files += 1
        if path.name.endswith(".txt"):
            raw_docs = _read_txt(path, stats)
        elif path.name.endswith(".parquet"):
            raw_docs = _read_parquet(path, text_field, stats)
        elif path.name.endswith(".arrow"):
            raw_docs = _read_arrow(path, text_field, stats)
        else:
            raw_docs = _read_jsonl(path, text_field, stats)
        for where, raw in raw_docs:
            doc = normalize(raw)
            if not doc:
                stats.skip("empty text", where)
                continue
            pieces = [doc]
            if len(doc) > MAX_DOC_CHARS:  # one JSON string or parquet value can be a whole book
                pieces = [p.strip() for p in cut_long(doc)]
                stats.cut += 1
                stats.cut_into += len(pieces)
                stats.warn("cut", f"{where}: a document of {len(doc):,} characters cut into {len(pieces)} "
                                  f"documents of at most {MAX_DOC_CHARS:,}")
            for piece in pieces:
                stats.documents += 1
                yield piece
