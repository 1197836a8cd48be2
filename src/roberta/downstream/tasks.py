"""Labelled data for fine-tuning: the GLUE tsv layouts by name, and any .tsv/.csv/.jsonl(.gz) file.

Every row is checked: a ragged or empty row, an empty text or an unreadable label is a UserError
naming file:line, because a silently dropped or shifted row corrupts a metric without a trace.
GLUE's tsv files are split on tabs only: their quotes are not CSV quoting, and a `"` inside a
sentence must never swallow the following lines. Text is normalised as the pretraining reader
does (`<br />` -> newline, trimmed), so fine-tuning sees text the way pretraining did.
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from roberta.data.readers import normalize
from roberta.errors import UserError

FILE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".jsonl.gz")
Column = str | int  # a header name, or a 0-based position in a header-less tsv
QUOTE_CHARS = 40  # of a cell quoted in an error: a header-less file's "column name" can be a whole document
FLAGS = {"text": "--text-column", "pair": "--text-pair-column", "label": "--label-column"}


@dataclass(frozen=True)
class Example:
    text: str
    pair: str | None
    label: str  # as written; mapped to an index (classification) or a float (regression) later
    where: str  # "path:line", for error messages


@dataclass(frozen=True)
class Columns:
    text: Column
    pair: Column | None
    label: Column | None  # None: unlabelled rows (prediction), Example.label is ""


@dataclass(frozen=True)
class GlueTask:
    folder: str
    columns: Columns
    metric: str  # the number the paper's table reports (see metrics.METRICS)
    labels: tuple[str, ...] = ()  # fixed label order; () = regression
    header: bool = True
    dev: str = "dev.tsv"


GLUE_TASKS = {
    "sst2": GlueTask("SST-2", Columns("sentence", None, "label"), "accuracy", ("0", "1")),
    "cola": GlueTask("CoLA", Columns(3, None, 1), "mcc", ("0", "1"), header=False),
    "mrpc": GlueTask("MRPC", Columns("#1 String", "#2 String", "Quality"), "f1", ("0", "1")),
    "rte": GlueTask("RTE", Columns("sentence1", "sentence2", "label"), "accuracy", ("entailment", "not_entailment")),
    "stsb": GlueTask("STS-B", Columns("sentence1", "sentence2", "score"), "pearson"),
    "mnli": GlueTask("MNLI", Columns("sentence1", "sentence2", "gold_label"), "accuracy",
                     ("contradiction", "entailment", "neutral"), dev="dev_matched.tsv"),
    "qnli": GlueTask("QNLI", Columns("question", "sentence", "label"), "accuracy", ("entailment", "not_entailment")),
    "qqp": GlueTask("QQP", Columns("question1", "question2", "is_duplicate"), "f1", ("0", "1")),
}


@dataclass
class TaskData:
    name: str
    metric: str
    labels: tuple[str, ...]  # index -> label, saved with the results; () = regression
    train: list[Example]
    dev: list[Example]
    label_source: str = "the training data"  # named in the unseen-label error
    test: list[Example] | None = None  # scored once at the selected lr/epoch, never used to select
    held_out: int = 0  # > 0: no dev file, dev is this many examples held out of train (hold_out)

    @property
    def regression(self) -> bool:
        return not self.labels

    @property
    def pairs(self) -> bool:
        """Whether the task's inputs are sentence pairs (saved with a fine-tuned model)."""
        return self.train[0].pair is not None


# ---------------------------------------------------------------------------------------- rows

def quote_cell(value) -> str:
    """repr() of a cell, cut to QUOTE_CHARS characters."""
    text = str(value)
    return repr(text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "...")


def quote_columns(names: list) -> str:
    return ", ".join(map(quote_cell, names))


def _looks_like_data(cell: str) -> bool:
    """A header cell that reads as a value, not a name: a number (a label), or prose (longer than
    QUOTE_CHARS characters, or five words or more)."""
    try:
        float(cell)
        return True
    except ValueError:
        return len(cell) > QUOTE_CHARS or len(cell.split()) >= 5


def check_header(path: Path, names: list[str], columns: Columns) -> None:
    """Every column asked for is in the header (line 1); when one is not and the header's cells
    look like data (_looks_like_data), the file most likely has no header at all: say so."""
    wanted = {what: c for what, c in (("text", columns.text), ("pair", columns.pair), ("label", columns.label))
              if c is not None}
    missing = [what for what, c in wanted.items() if c not in names]
    if not missing:
        return
    if any(_looks_like_data(n) for n in names):
        raise UserError(f"{path}:1: the first row looks like data, not a header ({quote_columns(names[:3])}"
                        f"{', ...' if len(names) > 3 else ''}): does the file have a header? add one with the "
                        f"columns {','.join(map(str, wanted.values()))}")
    what = missing[0]
    raise UserError(f"{path}:1: no column {quote_cell(wanted[what])} in the header (has: {quote_columns(names)}); "
                    f"choose it with {FLAGS[what]}")


def _csv_records(f) -> Iterator[tuple[int, list[str]]]:
    """(line where the record starts, cells): a quoted field can span lines, and an error about the
    record belongs where it begins."""
    reader = csv.reader(f)
    start = 1
    for row in reader:
        yield start, row
        start = reader.line_num + 1


def _tabular_rows(path: Path, delimiter: str, header: bool, columns: Columns | None = None
                  ) -> Iterator[tuple[int, dict]]:
    """(line number, {column: value}) for a .tsv (tabs only) or .csv (CSV quoting) file; with
    `columns`, the header is checked for them first (check_header)."""
    stray = "tab" if delimiter == "\t" else "comma or quote"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: MRPC begins with a BOM
            if delimiter == "\t":
                rows = ((n, line.rstrip("\r\n").split("\t")) for n, line in enumerate(f, 1))
            else:
                rows = _csv_records(f)
            names: list[Column] | None = None
            for n, row in rows:
                if not any(cell.strip() for cell in row):
                    raise UserError(f"{path}:{n}: empty row; remove blank lines from the file")
                if names is None:
                    if header:
                        names = [c.strip() for c in row]
                        if columns is not None:
                            check_header(path, names, columns)
                        continue
                    names = list(range(len(row)))
                if len(row) != len(names):
                    raise UserError(f"{path}:{n}: {len(row)} columns where the {'header' if header else 'first row'} "
                                    f"has {len(names)}; fix the row (a stray {stray} or line break inside a field?)")
                yield n, dict(zip(names, row))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e})") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    raise UserError(f"{path}:{n}: empty row; remove blank lines from the file")
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise UserError(f"{path}:{n}: expected a JSON object per line")
                yield n, obj
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None


def _cell(row: dict, column: Column, where: str, what: str) -> str:
    if column not in row:
        raise UserError(f"{where}: no column {quote_cell(column)} (has: {quote_columns(list(row))}); "
                        f"choose it with {FLAGS[what]}")
    value = row[column]
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise UserError(f"{where}: column {column!r} holds {type(value).__name__}, expected a string or number")
    value = normalize(value) if what != "label" else value.strip()
    if not value:
        raise UserError(f"{where}: empty {what} in column {column!r}")
    return value


def _rows(path: Path, header: bool, columns: Columns | None = None) -> Iterator[tuple[int, dict]]:
    if path.name.endswith(".tsv"):
        return _tabular_rows(path, "\t", header, columns)
    if path.name.endswith(".csv"):
        return _tabular_rows(path, ",", header, columns)
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return _jsonl_rows(path)
    raise UserError(f"{path}: unsupported file type; use {', '.join(FILE_SUFFIXES)}")


def first_row_columns(path: str | Path, header: bool = True) -> list[Column]:
    """The column names of a file's first row ([] for an empty file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    for _, row in _rows(path, header):
        return list(row)
    return []


def read_examples(path: str | Path, columns: Columns, header: bool = True) -> list[Example]:
    """Every row of a .tsv / .csv / .jsonl / .jsonl.gz file as an Example; errors name file:line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    rows = _rows(path, header, columns)
    out = []
    for n, row in rows:
        where = f"{path}:{n}"
        out.append(Example(_cell(row, columns.text, where, "text"),
                           None if columns.pair is None else _cell(row, columns.pair, where, "pair"),
                           "" if columns.label is None else _cell(row, columns.label, where, "label"), where))
    if not out:
        raise UserError(f"{path}: no examples (the file is empty or has only a header)")
    return out


# -------------------------------------------------------------------------------------- labels

def _label_key(label: str) -> tuple:
    try:
        return (0, float(label), label)  # numeric labels in numeric order: "2" before "10"
    except ValueError:
        return (1, 0.0, label)


def label_order(train: list[Example]) -> tuple[str, ...]:
    """The stable order of string labels: sorted (numbers numerically), saved with the results so
    that index i means the same label at training, evaluation and prediction time."""
    return tuple(sorted({e.label for e in train}, key=_label_key))


def targets(examples: list[Example], labels: tuple[str, ...], source: str) -> np.ndarray:
    """Label indices (int64) for classification, or floats (float32) when `labels` is empty."""
    if not labels:
        out = np.empty(len(examples), dtype=np.float32)
        for i, e in enumerate(examples):
            try:
                out[i] = float(e.label)
            except ValueError:
                raise UserError(f"{e.where}: label {e.label!r} is not a number (regression task)") from None
        return out
    index = {label: i for i, label in enumerate(labels)}
    out = np.empty(len(examples), dtype=np.int64)
    for i, e in enumerate(examples):
        if e.label not in index:
            raise UserError(f"{e.where}: label {e.label!r} does not occur in {source}; "
                            f"known labels: {', '.join(labels)}")
        out[i] = index[e.label]
    return out


# --------------------------------------------------------------------------------------- tasks

def glue_task(name: str, glue_dir: str | Path, test: str | Path | None = None) -> TaskData:
    """A GLUE task's train and dev files; `test`: a labelled file in the task's own layout (GLUE's
    test sets carry no labels)."""
    if name not in GLUE_TASKS:
        raise UserError(f"--glue {name}: unknown task; choose one of {', '.join(GLUE_TASKS)}")
    spec = GLUE_TASKS[name]
    folder = Path(glue_dir) / spec.folder
    train = read_examples(folder / "train.tsv", spec.columns, spec.header)
    dev = read_examples(folder / spec.dev, spec.columns, spec.header)
    test_ex = None if test is None else read_examples(test, spec.columns, spec.header)
    return TaskData(name, spec.metric, spec.labels, train, dev, f"GLUE {name}'s labels", test_ex)


def find_glue_tasks(glue_dir: str | Path) -> list[str]:
    """The GLUE tasks whose train and dev files are present under glue_dir."""
    glue_dir = Path(glue_dir)
    if not glue_dir.is_dir():
        raise UserError(f"{glue_dir}: no such directory")
    found = [name for name, spec in GLUE_TASKS.items()
             if (glue_dir / spec.folder / "train.tsv").is_file() and (glue_dir / spec.folder / spec.dev).is_file()]
    if not found:
        raise UserError(f"{glue_dir}: no GLUE task folders ({', '.join(s.folder for s in GLUE_TASKS.values())}) "
                        "with train.tsv and dev.tsv")
    return found


HOLD_OUT_EVERY = 10  # no dev file: every 10th training example (by label) selects epoch and lr
HOLD_OUT_SEED = 0  # one fixed split, so every run of a command holds out the same examples


def hold_out(examples: list[Example], every: int = HOLD_OUT_EVERY,
             seed: int = HOLD_OUT_SEED) -> tuple[list[Example], list[Example]]:
    """(train, dev): every `every`-th example in label order (random order within a label, fixed
    seed), so dev has each label's share of train (and for regression, the spread of values);
    both keep the file's order."""
    shuffled = np.random.default_rng(seed).permutation(len(examples))
    by_label = sorted(shuffled.tolist(), key=lambda i: _label_key(examples[i].label))  # stable: random within a label
    held = set(by_label[::every])
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def file_task(train: str | Path, dev: str | Path | None, text_column: str = "text", pair_column: str | None = None,
              label_column: str = "label", regression: bool = False, metric: str | None = None,
              test: str | Path | None = None, dev_flag: str = "--dev") -> TaskData:
    """Labelled files with named columns. dev None: a fixed tenth of train is held out as dev
    (`hold_out`; TaskData.held_out says how many); `test`: scored, never used to select."""
    columns = Columns(text_column, pair_column, label_column)
    train_ex = read_examples(train, columns)
    labels = () if regression else label_order(train_ex)  # from all of train: the held-out part too
    if not regression and len(labels) < 2:
        raise UserError(f"{train}: only one label ({labels[0]!r}) in column {label_column!r}; "
                        "classification needs two or more (or pass --task regression)")
    held = 0
    if dev is None:
        if len(train_ex) < 2:
            raise UserError(f"{train}: {len(train_ex)} example; too few to hold out a dev set, pass {dev_flag} FILE")
        train_ex, dev_ex = hold_out(train_ex)
        held = len(dev_ex)
    else:
        dev_ex = read_examples(dev, columns)
    test_ex = None if test is None else read_examples(test, columns)
    return TaskData(Path(train).name, metric or ("pearson" if regression else "accuracy"), labels, train_ex, dev_ex,
                    f"the training data ({train})", test_ex, held)
