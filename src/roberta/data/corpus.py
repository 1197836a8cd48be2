"""The embedded default corpus: text every Python installation carries, so the quickstart needs
no download. `pydoc_data.topics` (the language reference's help topics) plus the docstrings of
the standard library's modules, classes and functions, read with `ast` (nothing is imported or
executed). One topic or docstring = one document."""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path
from typing import Iterator

MIN_CHARS = 40  # shorter docstrings ("Return self.") are one-liners with no context to learn


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= MIN_CHARS:
                yield doc


def stdlib_documents() -> Iterator[str]:
    import pydoc_data.topics as topics  # a data module: a dict of strings

    for name in sorted(topics.topics):
        yield topics.topics[name].strip()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
    for path in sorted(stdlib.rglob("*.py")):
        if skip.intersection(path.relative_to(stdlib).parts):
            continue
        yield from _docstrings(path)
