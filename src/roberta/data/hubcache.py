"""The local Hugging Face hub cache, read without `huggingface_hub`.

`hf download` / `from_pretrained` keep each repository as

    models--org--name/  (or datasets--org--name/)
        refs/main                  the commit hash the `main` branch pointed at when last fetched
        snapshots/<hash>/...       that revision's files (symlinks into blobs/)
        blobs/<sha256>             the file contents

so a repository directory is turned into one snapshot: refs/main's, else (a cache filled for a
pinned revision only) the most recently written one. Reading every snapshot would read each
revision's files once more.
"""

from __future__ import annotations

from pathlib import Path

from roberta.errors import UserError

REPO_PREFIXES = ("models--", "datasets--", "spaces--")


def is_hub_repo(path: Path) -> bool:
    return path.is_dir() and (path.name.startswith(REPO_PREFIXES)
                              or ((path / "snapshots").is_dir() and (path / "refs").is_dir()))


def is_hub_snapshot(path: Path) -> bool:
    return path.parent.name == "snapshots" and path.parent.parent.name.startswith(REPO_PREFIXES)


def hub_snapshot(repo: Path) -> tuple[Path, str]:
    """models--org--name/ -> (its snapshot directory, a note saying which one and why)."""
    snapshots = sorted(p for p in (repo / "snapshots").glob("*") if p.is_dir())
    if not snapshots:
        raise UserError(f"{repo}: a hub cache directory with no snapshots/ (an interrupted download?); "
                        "download it again or pass a snapshot directory")
    ref = repo / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text().strip()
        if (repo / "snapshots" / commit).is_dir():
            return repo / "snapshots" / commit, f"{repo}: reading snapshot {commit[:12]} (refs/main)"
    latest = max(snapshots, key=lambda p: p.stat().st_mtime)
    why = "refs/main names none of them" if ref.is_file() else "no refs/main"
    others = f" of {len(snapshots)}" if len(snapshots) > 1 else ""
    return latest, f"{repo}: reading snapshot {latest.name[:12]}, the latest{others} ({why})"
