"""Issue 8: prepared-data integrity and no code execution from files a user may receive."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from conftest import run_cli, tiny_config
from roberta.errors import UserError

MARKER = Path("/tmp/roberta-pickle-was-executed")


class _Evil:
    def __reduce__(self):  # what a crafted pickle does when loaded
        import os
        return (os.system, (f"touch {MARKER}",))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_truncated_shard_is_detected_before_training(tmp_path, data_dir):
    from roberta.training.loop import pretrain

    data = _copy(data_dir, tmp_path / "data")
    tokens = data / "train.tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-10])
    with pytest.raises(UserError, match="train.tokens.bin.*truncated or replaced.*roberta prepare"):
        pretrain(str(data), str(tmp_path / "run"), tiny_config(), progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_swapped_shard_is_detected_by_checksum(tmp_path, data_dir):
    from roberta.training.loop import pretrain

    data = _copy(data_dir, tmp_path / "data")
    tokens = data / "train.tokens.bin"
    raw = bytearray(tokens.read_bytes())
    raw[100:104] = raw[200:204]  # same size, different content
    tokens.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="checksum"):
        pretrain(str(data), str(tmp_path / "run"), tiny_config(), progress=False)


def test_different_tokenizer_is_detected(tmp_path, data_dir, corpus_docs):
    from roberta.tokenizer import save_tokenizer, train_tokenizer
    from roberta.training.loop import pretrain

    data = _copy(data_dir, tmp_path / "data")
    save_tokenizer(train_tokenizer(iter(corpus_docs[:200]), vocab_size=700), data / "tokenizer")
    with pytest.raises(UserError, match="tokenizer differs"):
        pretrain(str(data), str(tmp_path / "run"), tiny_config(), progress=False)


def test_corrupt_meta_is_a_clear_error(tmp_path, data_dir):
    data = _copy(data_dir, tmp_path / "data")
    (data / "meta.json").write_text("{ not json")
    r = run_cli("pretrain", "--data", data, "--out", tmp_path / "run")
    assert r.returncode == 2 and "meta.json" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_malicious_pickles_are_never_executed(tmp_path, data_dir):
    from roberta.training.loop import pretrain

    MARKER.unlink(missing_ok=True)
    run = tmp_path / "run"
    pretrain(str(data_dir), str(run), tiny_config(max_steps=2), progress=False)
    ck = sorted(run.glob("checkpoint-*"))[-1]
    evil = pickle.dumps(_Evil())
    # 1) a pickle dropped beside a valid checkpoint is never read
    for name in ("optimizer.pt", "pytorch_model.bin", "rng_state.pth"):
        (ck / name).write_bytes(evil)
    assert run_cli("fill-mask", "--checkpoint", ck, "a <mask>").returncode == 0
    assert run_cli("pretrain", "--data", data_dir, "--out", run, "--resume", "--set", "train.max_steps=3",
                   "--set", "model.layers=2", "--set", "model.hidden=64", "--set", "model.heads=2",
                   "--set", "model.ffn=128", "--set", "train.batch_size=8", "--set", "train.peak_flops=1e11",
                   "--set", "train.eval_sequences=16", "--quiet").returncode == 0
    # 2) a pickle disguised as the weights file is refused with a clear error
    fake = tmp_path / "fake"
    _copy(ck, fake)
    (fake / "model.safetensors").write_bytes(evil)
    r = run_cli("fill-mask", "--checkpoint", fake, "a <mask>")
    assert r.returncode == 2 and "safetensors" in r.stderr and "Traceback" not in r.stderr
    # 3) a directory of pickles only is refused and the reason given
    only = tmp_path / "only"
    only.mkdir()
    (only / "pytorch_model.bin").write_bytes(evil)
    r = run_cli("fill-mask", "--checkpoint", only, "a <mask>")
    assert r.returncode == 2 and "never unpickles" in r.stderr
    assert not MARKER.exists(), "a pickle was executed"


_KILL_MID_WRITE = """
import os, signal, sys
import roberta.training.checkpoint as ck
real = ck.save_file
def dying_save_file(tensors, path, *a, **k):
    if "checkpoint-000006" in path and path.endswith("model.safetensors"):
        with open(path, "wb") as f:
            f.write(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)  # the process dies in the middle of writing checkpoint 6
    return real(tensors, path, *a, **k)
ck.save_file = dying_save_file
from roberta.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_checkpoint_write(tmp_path, data_dir):
    import subprocess
    import sys

    from roberta.training.checkpoint import latest_checkpoint

    sets = ["--set", "model.layers=1", "--set", "model.hidden=32", "--set", "model.heads=2", "--set", "model.ffn=64",
            "--set", "train.batch_size=4", "--set", "train.max_steps=8", "--set", "train.checkpoint_interval=3",
            "--set", "train.peak_flops=1e11", "--set", "train.eval_sequences=8", "--set", "train.keep_checkpoints=0"]
    run = tmp_path / "run"
    args = ["pretrain", "--data", str(data_dir), "--out", str(run), "--quiet", *sets]
    r = subprocess.run([sys.executable, "-c", _KILL_MID_WRITE, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    # the half-written checkpoint is invisible; the latest complete one is step 3 and loads
    assert latest_checkpoint(run).name == "checkpoint-000003"
    assert any(p.name.startswith(".tmp-checkpoint-000006") for p in run.iterdir())
    r = run_cli(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert latest_checkpoint(run).name == "checkpoint-000008"
    assert not any(p.name.startswith(".tmp-") for p in run.iterdir())  # leftovers cleaned up
    whole = tmp_path / "whole"
    assert run_cli("pretrain", "--data", str(data_dir), "--out", str(whole), "--quiet", *sets).returncode == 0
    from safetensors.torch import load_file
    a = load_file(str(run / "checkpoint-000008" / "model.safetensors"))
    b = load_file(str(whole / "checkpoint-000008" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)  # resume is exact
