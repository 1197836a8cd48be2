"""The package's layers, enforced (docs/layout.md draws them): the model imports no I/O or
distribution module; data/ imports no model; nothing but the CLI imports study/.

Imports are read from the source (ast), including those inside functions, and followed
transitively through the package, so a rule cannot be dodged by a lazy import or a middleman.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "roberta"

# what the model may not reach: files, logs, checkpoints, datasets, processes and devices
IO_OR_DISTRIBUTION = ("roberta.training", "roberta.data", "roberta.outdir", "roberta.api", "roberta.cli", "roberta.hf",
                      "roberta.quickstart", "roberta.downstream", "roberta.study")


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


@lru_cache(maxsize=None)
def direct_imports(name: str) -> frozenset[str]:
    """The roberta modules `name` imports anywhere in its file (top level or inside functions)."""
    tree = ast.parse(MODULES[name].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            found |= submodules  # `from roberta.training import checkpoint`
            if len(submodules) < len(node.names):  # names defined in the module itself
                found.add(node.module)
    return frozenset(m for m in found if m in MODULES)


def reachable(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for m in direct_imports(todo.pop()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_package_is_found():
    assert {"roberta.model", "roberta.training.loop", "roberta.cli", "roberta.data.loader"} <= set(MODULES)
    assert "roberta.config" in direct_imports("roberta.model")  # the reader sees imports at all


def test_the_model_imports_no_io_or_distribution_module():
    bad = sorted(m for m in reachable("roberta.model") if under(m, IO_OR_DISTRIBUTION))
    assert not bad, f"roberta.model reaches {bad}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if under(m, ["roberta.data"])))
def test_data_imports_no_model(name):
    bad = sorted(m for m in reachable(name) if under(m, ["roberta.model", "roberta.training", "roberta.downstream",
                                                         "roberta.study"]))
    assert not bad, f"{name} reaches {bad}"


def test_nothing_but_the_cli_imports_study():
    importers = sorted(m for m in MODULES if not under(m, ["roberta.study", "roberta.cli"])
                       and any(under(i, ["roberta.study"]) for i in direct_imports(m)))
    assert not importers, f"{importers} import roberta.study (only roberta.cli may)"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m != "roberta"))
def test_no_import_cycles(name):
    """A module that reaches itself through its imports works only by the order of lazy imports;
    `config` <-> `optim` and `downstream.finetune` <-> `downstream.predict` were two such cycles."""
    cycle = sorted(m for m in direct_imports(name) if name in reachable(m) or m == name)
    assert not cycle, f"{name} imports {cycle}, which import {name} back"


def test_the_rules_would_catch_a_violation(tmp_path, monkeypatch):
    """The checker itself: a model that imported the checkpoint module would be reported."""
    fake = tmp_path / "model.py"
    fake.write_text("import torch\n\ndef f():\n    from roberta.training import checkpoint\n")
    monkeypatch.setitem(MODULES, "roberta.fake_model", fake)
    assert "roberta.training.checkpoint" in direct_imports("roberta.fake_model")
