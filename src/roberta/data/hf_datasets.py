"""Hugging Face dataset directories as corpus INPUTs: which files to read, and which split.

Recognised layouts (`datasets` itself is not needed; the files are read as Arrow / parquet):

    save_to_disk(Dataset)      state.json + data-00000-of-0000N.arrow       every file, in state.json's order
    save_to_disk(DatasetDict)  dataset_dict.json + one such directory per split   the `train` split
    load_dataset's cache       dataset_info.json + NAME-SPLIT[-0000i-of-0000N].arrow   the `train` split
    hub cache                  datasets--org--name/snapshots/<rev>/**.parquet   refs/main's snapshot, `train` split

Only the `train` split is read where a layout has several, because the others (test, validation)
are often what a pretrained model is later evaluated on; a note names the files left out, and a
split's own directory or file can be passed to read it instead. A layout without a `train` split
is read whole.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from roberta.errors import UserError
from roberta.data.hubcache import hub_snapshot, is_hub_repo, is_hub_snapshot

# split names the hub's and load_dataset's file naming uses, when dataset_info.json does not list them
COMMON_SPLITS = ("train", "validation", "valid", "dev", "test", "unsupervised", "eval", "evaluation")


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e}); is the dataset directory complete?") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object; is the dataset directory complete?")
    return value


def hf_dataset_files(directory: Path, suffixes: tuple[str, ...]) -> list[Path] | None:
    """The files of a Hugging Face dataset layout in `directory`, or None when it is not one."""
    if (directory / "dataset_dict.json").is_file():
        return _dataset_dict(directory, suffixes)
    if (directory / "state.json").is_file():
        return _saved_dataset(directory)
    if is_hub_repo(directory):
        snapshot, message = hub_snapshot(directory)
        note(message)
        return _split_files(snapshot, suffixes, _json_splits(snapshot))
    if (directory / "dataset_info.json").is_file() or is_hub_snapshot(directory):
        return _split_files(directory, suffixes, _json_splits(directory))
    return None


def _dataset_dict(directory: Path, suffixes: tuple[str, ...]) -> list[Path]:
    splits = _json(directory / "dataset_dict.json").get("splits") or []
    if "train" not in splits:
        listed = ", ".join(map(str, splits)) or "none"
        example = directory / str(splits[0]) if splits else directory / "SPLIT"
        raise UserError(f"{directory}: a saved DatasetDict with no 'train' split (splits: {listed}); "
                        f"pass the directory of the split to read, e.g. {example}")
    others = [s for s in splits if s != "train"]
    if others:
        note(f"{directory}: a DatasetDict; reading its 'train' split only (not {', '.join(others)}; "
             f"pass {directory / others[0]} to read that one)")
    files = hf_dataset_files(directory / "train", suffixes)
    if files is None:
        raise UserError(f"{directory / 'train'}: listed in dataset_dict.json but holds no saved dataset "
                        "(no state.json); save the DatasetDict again")
    return files


def _saved_dataset(directory: Path) -> list[Path]:
    entries = _json(directory / "state.json").get("_data_files")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "filename" in e for e in entries):
        raise UserError(f"{directory / 'state.json'}: no _data_files list; not a `save_to_disk` directory "
                        "this version understands")
    files = [directory / e["filename"] for e in entries]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{directory}: state.json lists {', '.join(missing)}, which is missing "
                        "(an interrupted save_to_disk?); save the dataset again")
    if not files:
        raise UserError(f"{directory}: a saved dataset with no data files (0 rows?)")
    return files


def _json_splits(directory: Path) -> tuple[str, ...]:
    """The split names dataset_info.json lists, else the usual ones."""
    info = directory / "dataset_info.json"
    splits = _json(info).get("splits") if info.is_file() else None
    return tuple(splits) if isinstance(splits, dict) and splits else COMMON_SPLITS


def split_of(relative: Path, splits: tuple[str, ...]) -> str | None:
    """The split a file belongs to by the hub's naming: a directory named after it
    (`train/0000.parquet`) or a name part (`train-00000-of-00002.parquet`, `imdb-train.arrow`)."""
    for split in splits:
        if split in relative.parts[:-1] or re.search(rf"(^|[-_.]){re.escape(split)}[-_.]", relative.name):
            return split
    return None


def _split_files(directory: Path, suffixes: tuple[str, ...], splits: tuple[str, ...]) -> list[Path]:
    # cache-*.arrow: results of `.map`/`.filter` that load_dataset cached beside the data (not the data)
    files = sorted(f for f in directory.rglob("*") if f.is_file() and f.name.endswith(suffixes)
                   and not f.name.startswith("cache-")
                   and not any(part.startswith(".") for part in f.relative_to(directory).parts))
    if not files:
        raise UserError(f"{directory}: a Hugging Face dataset directory with no {', '.join(suffixes)} files "
                        "(a dataset built by a loading script? load it with `datasets` and save_to_disk)")
    by_split: dict[str, list[Path]] = {}
    for f in files:
        by_split.setdefault(split_of(f.relative_to(directory), splits) or "no split", []).append(f)
    if "train" not in by_split:
        return files
    left_out = {s: len(fs) for s, fs in by_split.items() if s != "train"}
    if left_out:
        listed = ", ".join(f"{s}: {n} file(s)" for s, n in left_out.items())
        note(f"{directory}: reading the 'train' split only ({len(by_split['train'])} file(s)); left out {listed}")
    return by_split["train"]
