"""Checkpoints: directories written atomically, holding no pickle.

    RUN_DIR/checkpoint-000100/
        config.json            the full Config (JSON)
        model.safetensors      weights (tied decoder stored once, as the word embeddings)
        tokenizer.json ...     the tokenizer files, so the directory is self-contained
        optimizer.safetensors  AdamW moments + step counts, flattened; RNG states      (training only)
        trainer_state.json     step, tokens, data position, param-group hyper-parameters (training only)

A checkpoint is written to a hidden temporary directory and renamed into place: a crash during the
write never leaves a broken latest checkpoint, and `latest_checkpoint` ignores leftovers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from roberta.config import Config
from roberta.errors import UserError
from roberta.training.distributed import pick_device
from roberta.model import RobertaMLM, build_model, max_seq_len

_NAME = re.compile(r"^checkpoint-(\d+)$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in Path(run_dir).iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    done = [p for p in checkpoint_dirs(run_dir) if (p / "model.safetensors").is_file() and (p / "config.json").is_file()]
    return done[-1] if done else None


def _is_hf_model_dir(p: Path) -> bool:
    """A transformers model directory: its config.json names a model_type (ours never does)."""
    try:
        c = json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(c, dict) and ("model_type" in c or "architectures" in c)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a RUN_DIR meaning its latest checkpoint."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such checkpoint or run directory")
    if not p.is_dir():
        raise UserError(f"{p}: a file, not a checkpoint; pass a checkpoint directory or a run directory "
                        "written by `roberta pretrain`")
    if (p / "meta.json").is_file() and any(p.glob("*.tokens.bin")):
        raise UserError(f"{p}: this is prepared data, not a checkpoint; pass it as --data, and as --checkpoint "
                        "a run directory written by `roberta pretrain`")
    if _is_hf_model_dir(p):
        raise UserError(f"{p}: a Hugging Face model directory, not a roberta checkpoint; run "
                        f"`roberta import-hf --checkpoint {p} --out DIR` and pass DIR")
    if (p / "model.safetensors").is_file() and (p / "config.json").is_file():
        return p
    latest = latest_checkpoint(p) if p.is_dir() else None
    pickles = sorted(f.name for f in p.iterdir() if f.suffix in PICKLE_SUFFIXES) if p.is_dir() else []
    if latest is None and pickles:
        raise UserError(f"{p}: holds only pickle files ({', '.join(pickles)}); roberta never unpickles "
                        "(a pickle can run code when loaded) -- convert the weights to safetensors, "
                        "or use `roberta import-hf` on a Hugging Face directory with model.safetensors")
    if latest is None:
        raise UserError(f"{p}: not a checkpoint (no config.json + model.safetensors) and not a run "
                        "directory with checkpoints; pass a directory written by `roberta pretrain`")
    return latest


def _set_model_max_length(path: Path, length: int) -> None:
    """The tokenizer was saved before any model existed (model_max_length 512); in a checkpoint it
    says the model's real limit, so that transformers truncates where the position table ends."""
    if not path.is_file():
        return
    try:
        config = json.loads(path.read_text())
    except ValueError:
        return  # not ours to repair; the copy stays as it was
    if isinstance(config, dict):
        path.write_text(json.dumps({**config, "model_max_length": length}, indent=2))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer state_dict -> ({"state.<param>.<name>": tensor}, param_groups for JSON).
    <param> is a parameter name (torch.distributed.checkpoint's format) or an index."""
    tensors = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            tensors[f"state.{pid}.{name}"] = torch.as_tensor(value).detach().contiguous().cpu()
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            pid, name = key[len("state."):].rsplit(".", 1)  # parameter names contain dots
            state.setdefault(int(pid) if pid.isdigit() else pid, {})[name] = value
    return {"state": state, "param_groups": groups}


def remove_partial(run_dir: Path) -> None:
    """Delete temporary directories left by a save that was killed midway."""
    for p in Path(run_dir).glob(".tmp-checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, cfg: Config,
                    tokenizer_dir: str | Path, optimizer: torch.optim.Optimizer | None = None,
                    trainer_state: dict | None = None, rng: dict[str, torch.Tensor] | None = None,
                    keep: int = 0, weights: dict[str, torch.Tensor] | None = None,
                    optimizer_state: dict | None = None) -> Path:
    """Write checkpoint-STEP atomically. `weights` / `optimizer_state` replace `model.state_dict()` /
    `optimizer.state_dict()` when the caller gathered them itself (FSDP2, names as keys)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"checkpoint-{step:06d}"
    tmp = run_dir / f".tmp-checkpoint-{step:06d}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        (tmp / "config.json").write_text(cfg.to_json())
        weights = model_state(model) if weights is None else {k: v.contiguous().cpu() for k, v in weights.items()}
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file():
                shutil.copy2(src, tmp / name)
        _set_model_max_length(tmp / "tokenizer_config.json", max_seq_len(cfg.model))
        save_file(weights, str(tmp / "model.safetensors"), metadata=weights_metadata(tmp))
        if optimizer is not None and optimizer_state is None:
            optimizer_state = optimizer.state_dict()
        if optimizer_state is not None:
            tensors, groups = flatten_optimizer(optimizer_state)
            tensors.update({f"rng.{k}": v for k, v in (rng or {}).items()})
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            state = dict(trainer_state or {}, param_groups=groups)
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(run_dir)
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error type
        shutil.rmtree(tmp, ignore_errors=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UserError(f"could not write checkpoint {final} ({reason}); the previous checkpoint is intact -- "
                        "fix the cause (a full disk?) and continue with --resume") from None
    if keep > 0:
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def weights_metadata(ckpt_dir: Path) -> dict[str, str]:
    """model.safetensors' header records the fingerprint of the tokenizer beside it: the weights'
    rows are that tokenizer's ids, and a tokenizer written over it later is detected on load."""
    from roberta.tokenizer import tokenizer_fingerprint

    meta = {"format": "pt"}
    if (ckpt_dir / "tokenizer.json").is_file():
        meta["tokenizer_fingerprint"] = tokenizer_fingerprint(ckpt_dir)
    return meta


def check_tokenizer_fits(ckpt: Path, vocab_rows: int) -> None:
    """A checkpoint's tokenizer and its model belong together: the tokenizer is the one the weights
    were saved with (the fingerprint in model.safetensors' header; checkpoints from before it have
    none), every id it produces has an embedding row, and the special tokens sit at ids 0-4
    (load_tokenizer checks). A tokenizer written over a checkpoint's (`train-tokenizer --out CKPT`)
    would otherwise run against the wrong rows and print garbage."""
    from safetensors import safe_open

    from roberta.tokenizer import load_tokenizer, tokenizer_fingerprint

    if not (ckpt / "tokenizer.json").is_file():
        return
    size = load_tokenizer(ckpt).get_vocab_size()
    fix = "they do not belong together (was the tokenizer replaced?); restore the checkpoint's own tokenizer"
    if size > vocab_rows:
        raise UserError(f"{ckpt}: its tokenizer has {size:,} tokens but the model only {vocab_rows:,} embedding rows; {fix}")
    try:
        with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
            saved = (f.metadata() or {}).get("tokenizer_fingerprint")
    except Exception:  # an unreadable file is reported by load_weights, with its own message
        return
    if saved and saved != tokenizer_fingerprint(ckpt):
        raise UserError(f"{ckpt}: its tokenizer ({size:,} tokens) is not the one the model was saved with; {fix}")


def load_config(ckpt: Path) -> Config:
    try:
        return Config.from_dict(json.loads((ckpt / "config.json").read_text()))
    except (json.JSONDecodeError, OSError) as e:
        raise UserError(f"{ckpt / 'config.json'}: unreadable ({e})") from None


def load_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(ckpt / "model.safetensors"))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UserError(f"{ckpt / 'model.safetensors'}: not a valid safetensors file ({e})") from None


def load_state(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str | Path,
               allow_missing: tuple[str, ...] = (), allow_unexpected: tuple[str, ...] = ()) -> None:
    """Load `weights` into `model`; any mismatch (other than keys starting with the allowed
    prefixes) is a UserError that names `where`, never a bare RuntimeError."""
    weights = {k: v for k, v in weights.items() if not k.startswith(allow_unexpected)}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shape mismatches
        detail = [line.strip() for line in str(e).splitlines()[1:]]
        raise UserError(f"{where}: weights do not fit the model ({'; '.join(detail)[:300]}); "
                        "was it written for another model config?") from None
    missing = [k for k in missing if not k.startswith(allow_missing)]
    if missing or unexpected:
        raise UserError(f"{where}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_training_state(ckpt: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """-> (optimizer state_dict, rng tensors, trainer_state)."""
    opt_path, state_path = ckpt / "optimizer.safetensors", ckpt / "trainer_state.json"
    if not opt_path.is_file() or not state_path.is_file():
        raise UserError(f"{ckpt}: has no optimizer/trainer state (an exported model?); cannot resume from it")
    try:
        tensors = load_file(str(opt_path))
        state = json.loads(state_path.read_text())
    except Exception as e:
        raise UserError(f"{ckpt}: corrupt training state ({e})") from None
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return unflatten_optimizer(tensors, state.pop("param_groups")), rng, state


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto", "cpu", "cuda", "cuda:1" or a torch.device; a GPU that is not there is a UserError."""
    if str(device) == "auto":
        return pick_device("auto")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device={device!r}: not a device; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device!r}: no CUDA GPU is visible here; use 'cpu' (or 'auto')")
    return d


def load_model(path: str | Path, device: str = "cpu") -> tuple[RobertaMLM, Path]:
    """A checkpoint (or a run directory's latest) as a model on `device`, and the checkpoint's path."""
    ck = resolve_checkpoint(path)
    cfg = load_config(ck)
    check_tokenizer_fits(ck, cfg.model.vocab_size)
    model = build_model(cfg.model, resolve_device(device))
    load_state(model, load_weights(ck), ck / "model.safetensors")
    return model, ck
