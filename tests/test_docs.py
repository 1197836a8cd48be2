"""The documentation cannot drift: docs/commands.md and docs/config.md are what docs/gen.py
generates from the parser and the config dataclasses, and the README's blocks marked
`<!-- runnable -->` run as written (at a tiny scale: the substitutions below, nothing else)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# what makes the README's five-minute example take seconds here; each must occur in the README
TINY = {"--vocab-size 8000": "--vocab-size 1000", "train.max_steps=300": "train.max_steps=4"}


def _gen():
    spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "docs" / "gen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["commands.md", "config.md"])
def test_generated_reference_pages_are_current(page):
    expected = _gen().PAGES[page]()
    assert (ROOT / "docs" / page).read_text() == expected, f"docs/{page} is stale: run `PYTHONPATH=src python docs/gen.py`"


def test_config_reference_lists_every_key_with_its_comment():
    from roberta.config import Config, all_keys

    text = (ROOT / "docs" / "config.md").read_text()
    for key in all_keys(Config()):
        assert f"| `{key}` |" in text, key
    for row in text.splitlines():  # every key says what it means (the `# comment` beside its field)
        if row.startswith("| `") and not row.startswith("| key"):
            assert row.rstrip().rsplit("|", 2)[-2].strip(), f"no meaning: {row}; add a # comment to its field"


def test_field_comments_are_read_from_the_source():
    source = "class A:\n    x: int = 1  # one\n    y: str = 'a#b'  # two\n    #    and more\n    z: int = 0\n"
    assert _gen().field_comments(source) == {("A", "x"): "one", ("A", "y"): "two and more", ("A", "z"): ""}


def runnable_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block right after a `<!-- runnable -->` line."""
    return re.findall(r"^<!-- runnable -->\n```(\w+)\n(.*?)^```", markdown, flags=re.M | re.S)


def roberta_on_path(tmp_path) -> dict[str, str]:
    """An environment in which `roberta` on PATH runs this checkout (as after `pip install -e .`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "roberta").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m roberta "$@"\n')
    (bin_dir / "roberta").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}


def test_the_readmes_runnable_blocks_run_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text()
    blocks = runnable_blocks(readme)
    assert [lang for lang, _ in blocks] == ["bash", "python"]
    for old in TINY:
        assert old in readme, f"tests/test_docs.py shrinks {old!r}, which the README no longer says"
    # run from a directory that looks like a clone (the example reads tests/data), with `roberta` on PATH
    (tmp_path / "tests").mkdir()
    shutil.copytree(ROOT / "tests" / "data", tmp_path / "tests" / "data")
    env = roberta_on_path(tmp_path)
    for lang, code in blocks:
        for old, new in TINY.items():
            code = code.replace(old, new)
        argv = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"README {lang} block failed:\n{code}\n--- stderr:\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr and not re.search(r"^error:", r.stderr, flags=re.M), r.stderr
    assert (tmp_path / "run" / "loss.png").is_file() and (tmp_path / "run" / "config.json").is_file()


def test_every_docs_link_in_the_readme_exists():
    for target in re.findall(r"\]\(((?:docs/)[^)#]*)", (ROOT / "README.md").read_text()):
        assert (ROOT / target).exists(), target


def test_the_guarantees_page_quotes_the_bad_input_case_count():
    from test_bad_input import CASES

    text = " ".join((ROOT / "docs" / "guarantees.md").read_text().split())
    assert f"was fed {len(CASES)} bad inputs" in text and f"({len(CASES)} cases" in text


def documented_commands() -> list[tuple[str, str]]:
    """(page, command line) of every `roberta ...` line in a shell block of the README and docs/,
    continuation lines joined; `[...]` marks optional flags (kept, unbracketed)."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if page.name in ("commands.md", "config.md"):  # generated from the parser itself
            continue
        for block in re.findall(r"^```(?:bash|sh)?\n(.*?)^```", page.read_text(), flags=re.M | re.S):
            for line in block.replace("\\\n", " ").splitlines():
                m = re.match(r"^\s*(?:torchrun\s.*?-m\s+)?roberta\s+(.*)$", line)
                args = re.sub(r"\s+#.*$", "", m.group(1)).strip() if m else ""
                if args and not re.search(r"[$…]|\.\.\.|\bHOST\b", args):
                    found.append((page.name, args.replace("[", "").replace("]", "")))
    return found


def test_every_documented_command_line_parses_with_todays_flag_names(capsys):
    import shlex

    from roberta.cli import _moved, build_parser

    lines = documented_commands()
    assert len(lines) > 30
    for page, line in lines:
        argv = shlex.split(line)
        try:
            build_parser().parse_args(_moved(argv))
        except SystemExit:
            pytest.fail(f"{page}: `roberta {line}` does not parse: {capsys.readouterr().err}")
        assert capsys.readouterr().err == "", f"{page}: `roberta {line}` uses an old spelling"
