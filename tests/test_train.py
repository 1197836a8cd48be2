"""The trainer: accounting, schedule, budgets, equivalences (micro-batches, ranks, resume), faults.

Runs use a 2 x 64 model on the session's prepared data (seq_len 64) and one torch thread per
process (two processes share this machine's two cores). Multi-process runs are real subprocesses
of `python -m roberta pretrain` with torchrun's environment variables, on gloo.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from roberta.config import apply_overrides
from roberta.errors import UserError
from roberta.presets import get_preset, tiny
from roberta.training.loop import pretrain

# The equivalences below are exact in fp32; bf16 (auto's choice on a CPU with native bf16) rounds
# differently per GEMM shape, and is held to fp32's losses in test_performance.py instead.
FP32 = ["train.precision=fp32"]
# One config for in-process and subprocess runs: 2 x 64 model, batch 8, 6 steps, 1 thread.
BASE_SETS = ["model.layers=2", "model.hidden=64", "model.heads=2", "model.ffn=128", "train.batch_size=8",
             "train.max_steps=6", "train.eval_interval=1000", "train.checkpoint_interval=1000",
             "train.log_interval=1", "train.eval_sequences=16", "train.peak_flops=1e11", "train.threads=1",
             *FP32]
NO_DROPOUT = ["model.dropout=0", "model.attention_dropout=0"]
# The same, but everything a user does not set stays at its default: the CPU peak is probed (the
# probe ran inside training and once broke bit-exact resume), dropout is on and the precision is
# auto's choice (bf16 on a CPU with native bf16: resume must be exact there too).
DEFAULT_SETS = [s for s in BASE_SETS if not s.startswith(("train.peak_flops=", "train.precision="))]


def run_inprocess(data_dir, out, *sets, resume=False, base=BASE_SETS, progress=False, preset="tiny"):
    all_sets = base + list(sets)
    cfg = apply_overrides(get_preset(preset), all_sets)
    return pretrain(str(data_dir), str(out), cfg, resume=resume,
                    progress=progress)


def cli_args(data_dir, out, *sets, resume=False, base=BASE_SETS) -> list[str]:
    args = [sys.executable, "-m", "roberta", "pretrain", "--data", str(data_dir), "--out", str(out), "--quiet"]
    for s in base + list(sets):
        args += ["--set", s]
    return args + (["--resume"] if resume else [])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(data_dir, out, *sets, world: int = 1, resume=False, base=BASE_SETS) -> list[subprocess.Popen]:
    """`world` processes of `roberta pretrain` with the environment torchrun would give them."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        if world > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                       WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
        procs.append(subprocess.Popen(cli_args(data_dir, out, *sets, resume=resume, base=base), env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def wait_all(procs, timeout=120) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        out.append((p.returncode, err))
    return out


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / f"checkpoint-{step:06d}" / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_records(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in metrics(run_dir) if "loss" in r}


# --- schedule and lr scaling ------------------------------------------------------------------

def test_lr_schedule_against_hand_computed_values():
    from roberta.training.optim import lr_at
    # warmup 10% to a peak of 1e-3, then linear to 0 at the end of the budget
    assert lr_at(0.0, 0.1, 1e-3) == 0.0
    assert lr_at(0.05, 0.1, 1e-3) == pytest.approx(5e-4)
    assert lr_at(0.1, 0.1, 1e-3) == pytest.approx(1e-3)
    assert lr_at(0.55, 0.1, 1e-3) == pytest.approx(1e-3 * 0.45 / 0.9)
    assert lr_at(0.9999, 0.1, 1e-3) == pytest.approx(1e-3 * 0.0001 / 0.9)
    assert lr_at(1.0, 0.1, 1e-3) == 0.0 and lr_at(1.2, 0.1, 1e-3) == 0.0
    assert lr_at(0.5, 0.0, 1e-3) == pytest.approx(5e-4)  # no warmup


def test_one_cycle_and_wsd_schedules_against_hand_computed_values():
    from roberta.training.optim import Budget, lr_at
    from roberta.training.loop import TrainState
    # one-cycle: up to the peak at half the budget, down to 0 at its end; the warmup key plays no part
    for warmup in (0.0, 0.1):
        assert lr_at(0.25, warmup, 1e-3, "one-cycle") == pytest.approx(5e-4)
        assert lr_at(0.5, warmup, 1e-3, "one-cycle") == pytest.approx(1e-3)
        assert lr_at(0.9, warmup, 1e-3, "one-cycle") == pytest.approx(2e-4)
    # wsd: warmup 10%, the peak held until 80%, then linear to 0 over the last 20%
    assert lr_at(0.05, 0.1, 1e-3, "wsd", 0.2) == pytest.approx(5e-4)
    assert lr_at(0.5, 0.1, 1e-3, "wsd", 0.2) == lr_at(0.79, 0.1, 1e-3, "wsd", 0.2) == 1e-3
    assert lr_at(0.9, 0.1, 1e-3, "wsd", 0.2) == pytest.approx(5e-4)
    assert lr_at(1.0, 0.1, 1e-3, "wsd", 0.2) == 0.0 == lr_at(1.0, 0.1, 1e-3, "one-cycle")
    # the trainer's schedule is the config's: a time budget of 100 s with wsd, decay over the last 30%
    cfg = apply_overrides(tiny(), ["train.max_time=100s", "train.schedule=wsd", "train.decay_fraction=0.3",
                                   "train.warmup_fraction=0.1", "train.lr=1e-3"])
    b = Budget(cfg)
    assert b.lr(TrainState(elapsed=60.0), 1e-3) == 1e-3
    assert b.lr(TrainState(elapsed=85.0), 1e-3) == pytest.approx(5e-4)
    with pytest.raises(UserError, match="train.decay_fraction=0.95 .*no stable phase"):
        apply_overrides(tiny(), ["train.schedule=wsd", "train.decay_fraction=0.95"])
    with pytest.raises(UserError, match="train.schedule=cosine: choose linear, one-cycle or wsd"):
        apply_overrides(tiny(), ["train.schedule=cosine"])


def test_budget_steps_tokens_and_warmup_conversion():
    from roberta.training.optim import Budget
    from roberta.training.loop import TrainState
    cfg = apply_overrides(tiny(), ["train.max_steps=200", "train.warmup_steps=20"])
    b = Budget(cfg)
    assert b.warmup == pytest.approx(0.1) and b.progress(TrainState(step=50)) == pytest.approx(0.25)
    # a token budget: 16 x 128 = 2048 tokens per step, 204,800 tokens = 100 steps, warmup 20 steps = 20%
    cfg = apply_overrides(tiny(), ["train.max_tokens=204800", "train.warmup_steps=20", "data.seq_len=128"])
    b = Budget(cfg)
    assert b.steps_estimate == 100 and b.warmup == pytest.approx(0.2)
    assert b.progress(TrainState(step=999, tokens=102400)) == pytest.approx(0.5)  # tokens override steps
    # a time budget uses warmup_fraction and the elapsed share
    cfg = apply_overrides(tiny(), ["train.max_time=2m", "train.warmup_fraction=0.05"])
    b = Budget(cfg)
    assert b.warmup == 0.05 and b.progress(TrainState(elapsed=90.0)) == pytest.approx(0.75)
    assert not b.done(TrainState(elapsed=119.9)) and b.done(TrainState(elapsed=120.0))


def test_lr_scaling_rules_and_paper_table():
    from roberta.config import scaled_lr
    from roberta.training.optim import PAPER_LR_TABLE, paper_lr
    assert scaled_lr(1e-4, 2048, 256, "none") == 1e-4
    assert scaled_lr(1e-4, 2048, 256, "sqrt") == pytest.approx(1e-4 * math.sqrt(8))
    assert scaled_lr(1e-4, 2048, 256, "linear") == pytest.approx(8e-4)
    assert PAPER_LR_TABLE == {256: 1e-4, 2048: 7e-4, 8192: 1e-3}
    assert paper_lr(2048) == pytest.approx(7e-4)
    # log-log halfway between 2K and 8K: sqrt(7e-4 * 1e-3)
    assert paper_lr(4096) == pytest.approx(math.sqrt(7e-4 * 1e-3))
    assert paper_lr(64) == 1e-4 and paper_lr(32768) == 1e-3


def test_lr_scaling_applies_to_the_run(data_dir, tmp_path):
    s = run_inprocess(data_dir, tmp_path / "run", "train.max_steps=2", "train.lr=1e-4", "train.base_batch_size=2",
                      "train.lr_scaling=sqrt", "train.warmup_fraction=0")
    assert train_records(tmp_path / "run")[1]["lr"] == pytest.approx(2e-4)  # 1e-4 * sqrt(8 / 2)
    assert s["final_lr"] == 0.0


# --- accounting --------------------------------------------------------------------------------

def test_tokens_and_flops_accounting_against_hand_computed_values(data_dir, tmp_path):
    from roberta.data.formats import build_sequences
    from roberta.data.loader import BatchStream, collate
    from roberta.data.prepare import load_split
    from roberta.masking import Masker

    from roberta.data.prepare import read_meta

    assert read_meta(data_dir)["vocab_size"] == 1000
    run = tmp_path / "run"
    s = run_inprocess(data_dir, run, "train.max_steps=2", preset="roberta-tiny")  # dense FFN, full attention
    recs = train_records(run)
    # Replay the two global batches the run drew, and count by hand.
    cfg = apply_overrides(get_preset("roberta-tiny"), BASE_SETS + ["model.vocab_size=1000"])
    split = load_split(data_dir, "train")
    plan = build_sequences(split, "full-sentences", 64, seed=0)
    stream = BatchStream(plan, 8, 0)
    masker = Masker.for_run(cfg, {})
    tokens = masked = 0
    flops = 0.0
    for step in (1, 2):
        b = collate(split, plan, stream.next_batch())
        n_tok = int(b.attention_mask.sum())
        n_mask = int(masker(b.input_ids, b.epochs, b.indices)[1].ne(-100).sum())
        tokens, masked = tokens + n_tok, masked + n_mask
        # 2 layers x (4 * 64^2 attention projections + 2 * 64 * 128 FFN) = 65,536 weights per token;
        # LM head 64^2 + 64 * 1024 (the 1000-token vocabulary padded to a multiple of 64) = 69,632
        # at each masked token; attention 12 * 2 * 64 * 64 per token
        flops += 6 * (65_536 * n_tok + 69_632 * n_mask) + 12 * 2 * 64 * 64 * n_tok
        r = recs[step]
        assert r["sequences"] == 8 * step
        assert r["tokens"] == tokens and r["masked_tokens"] == masked
        assert r["flops"] == pytest.approx(flops, rel=1e-12)
        assert r["loss_bits"] == pytest.approx(r["loss"] / math.log(2))
        assert 0 < r["mfu"] < 1 and r["tokens_per_s"] > 0
    assert s["tokens"] == tokens and s["masked_tokens"] == masked and s["flops"] == pytest.approx(flops)
    assert s["parameters"] == sum(v.numel() for v in weights(run, 2).values())
    assert s["eval_loss"] > 0 and s["eval_perplexity"] == pytest.approx(math.exp(s["eval_loss"]))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tokens"] == tokens and summary["step"] == 2


# --- equivalences ------------------------------------------------------------------------------

def test_four_micro_batches_of_8_equal_one_batch_of_32(data_dir, tmp_path):
    """Gradient accumulation is exact: the loss is normalised by the global batch's masked-token
    count, not averaged over micro-batch means. Dropout is off because its masks are drawn per
    micro-batch shape: with it on, the two runs are equal in distribution, not in value."""
    sets = NO_DROPOUT + ["train.batch_size=32", "train.max_steps=3", "train.lr=1e-3",
                         "train.checkpoint_interval=1", "train.keep_checkpoints=0"]
    run_inprocess(data_dir, tmp_path / "one", *sets, "train.micro_batch_size=32")
    run_inprocess(data_dir, tmp_path / "four", *sets, "train.micro_batch_size=8")
    assert max_diff(weights(tmp_path / "one", 3), weights(tmp_path / "four", 3)) <= 1e-6
    a, b = train_records(tmp_path / "one"), train_records(tmp_path / "four")
    assert a[3]["loss"] == pytest.approx(b[3]["loss"], abs=1e-5)
    assert a[3]["masked_tokens"] == b[3]["masked_tokens"]
    # the comparison means something: steps 2 and 3 moved the weights by far more than 1e-6
    assert max_diff(weights(tmp_path / "one", 1), weights(tmp_path / "one", 3)) > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("fsdp,optimizer", [(False, "adamw"), (True, "adamw"), (True, "stableadamw")],
                         ids=["ddp", "fsdp2", "fsdp2-stableadamw"])
def test_two_gloo_ranks_equal_one_process(data_dir, tmp_path, fsdp, optimizer):
    """Same global batch (8 = 2 ranks x 4, and one micro-batch of 2 accumulated twice per rank)
    on 2 gloo processes under DDP or FSDP2 ends with the same parameters as 1 process (StableAdamW
    too: its per-tensor RMS is over the whole tensor, not a rank's shard)."""
    sets = NO_DROPOUT + ["train.max_steps=4", "train.lr=1e-3", "train.checkpoint_interval=2", f"optim.name={optimizer}"]
    results = wait_all(launch(data_dir, tmp_path / "two", *sets, "train.micro_batch_size=2",
                              f"train.fsdp={str(fsdp).lower()}", world=2))
    assert all(rc == 0 for rc, _ in results), results
    run_inprocess(data_dir, tmp_path / "one", *sets)
    assert max_diff(weights(tmp_path / "one", 4), weights(tmp_path / "two", 4)) <= 1e-6
    a, b = train_records(tmp_path / "one"), train_records(tmp_path / "two")
    for step in (1, 4):
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], abs=1e-5)
        assert a[step]["tokens"] == b[step]["tokens"] and a[step]["masked_tokens"] == b[step]["masked_tokens"]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2
    # the mid-run checkpoint (gathered from the shards under FSDP2) resumes in one process, exactly
    import shutil
    shutil.rmtree(tmp_path / "two" / "checkpoint-000004")
    run_inprocess(data_dir, tmp_path / "two", *sets, resume=True)
    assert max_diff(weights(tmp_path / "one", 4), weights(tmp_path / "two", 4)) <= 1e-6


# --- resume and signals, at the default settings -------------------------------------------------

RESUME_SETS = ["train.max_steps=40", "train.checkpoint_interval=4"]


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> Path:
    """The 40-step run, never interrupted, that every interrupted-and-resumed run must reproduce."""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_inprocess(data_dir, run, *RESUME_SETS, base=DEFAULT_SETS)
    return run


@pytest.fixture(scope="module")
def uninterrupted_with_dropout(data_dir, tmp_path_factory) -> Path:
    """The same at roberta-tiny's defaults, whose dropout draws from the RNG that resume restores."""
    run = tmp_path_factory.mktemp("uninterrupted_dropout") / "run"
    run_inprocess(data_dir, run, *RESUME_SETS, base=DEFAULT_SETS, preset="roberta-tiny")
    return run


def assert_same_run(whole: Path, again: Path, steps: int = 40) -> None:
    """Every step's loss and the final weights, bit for bit."""
    a, b = train_records(whole), train_records(again)
    assert sorted(b) == list(range(1, steps + 1))  # records after the checkpoint were replaced, not doubled
    for step in range(1, steps + 1):
        assert b[step]["loss"] == a[step]["loss"], step
        assert b[step]["tokens"] == a[step]["tokens"], step
    assert max_diff(weights(whole, steps), weights(again, steps)) == 0.0


def wait_for_step(proc, run_dir: Path, step: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if max(train_records(run_dir) if (run_dir / "metrics.jsonl").is_file() else {}, default=0) >= step:
            return
        time.sleep(0.002)


@pytest.mark.parametrize("preset", ["tiny", "roberta-tiny"])
def test_resume_is_bit_exact_at_the_defaults(data_dir, tmp_path, request, preset):
    """A checkpoint mid-run, then --resume, with nothing set that a user would not set: the CPU
    peak is probed; the default preset (tiny: ModernBERT-family, warmup-stable-decay) and
    roberta-tiny, whose dropout is on. Losses at every step and the final weights equal the
    uninterrupted run's bit for bit (the probe used to draw from the dropout RNG after it was
    restored: step 11's loss differed in the 3rd digit)."""
    import shutil

    whole = request.getfixturevalue("uninterrupted" if preset == "tiny" else "uninterrupted_with_dropout")
    assert get_preset(preset).train.peak_flops == 0.0 and "train.peak_flops" not in str(DEFAULT_SETS)
    assert preset == "tiny" or get_preset(preset).model.dropout > 0
    resumed = tmp_path / "run"
    shutil.copytree(whole, resumed)
    for name in ("checkpoint-000040", "summary.json"):  # as if it stopped after the checkpoint at step 36
        shutil.rmtree(resumed / name) if (resumed / name).is_dir() else (resumed / name).unlink()
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    s = run_inprocess(data_dir, resumed, *RESUME_SETS, base=DEFAULT_SETS, resume=True, preset=preset)
    assert s["peak_flops"] > 0 and s["peak_flops"] != 1e11  # measured, not configured
    assert_same_run(whole, resumed)
    # pretrain() is a library call: it leaves the caller's signal handlers as it found them
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


def test_the_matmul_probe_leaves_the_global_rng_alone():
    from roberta.training.perf import matmul_peak

    before = torch.get_rng_state()
    assert matmul_peak(torch.device("cpu"), n=64, repeats=1) > 0
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.slow
def test_sigkill_and_resume_equals_the_uninterrupted_run(data_dir, tmp_path, uninterrupted):
    """kill -9 at some step after a checkpoint, then --resume, at the default settings: same loss
    at every step and the same final parameters as a run never interrupted (CPU, fp32, dropout on)."""
    killed = tmp_path / "killed"
    (proc,) = launch(data_dir, killed, *RESUME_SETS, base=DEFAULT_SETS)
    wait_for_step(proc, killed, 10)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "summary.json").exists()
    steps_before = max(train_records(killed))
    (resumed,) = launch(data_dir, killed, *RESUME_SETS, base=DEFAULT_SETS, resume=True)
    [(rc, err)] = wait_all([resumed])
    assert rc == 0, err
    assert_same_run(uninterrupted, killed)
    assert steps_before < 40


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_finishes_the_step_checkpoints_and_resumes_exactly(data_dir, tmp_path, uninterrupted, sig):
    """Ctrl-C or a scheduler's SIGTERM, sent to `python -m roberta pretrain`: the step finishes, a
    checkpoint is written at that step (not the last interval's), the exit code is 128 + the
    signal's number with one line saying how to resume, and that command ends where the
    uninterrupted run ends, bit for bit."""
    run = tmp_path / "run"
    (proc,) = launch(data_dir, run, *RESUME_SETS, base=DEFAULT_SETS)
    wait_for_step(proc, run, 5)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(sig)
    [(rc, err)] = wait_all([proc])
    assert rc == 128 + sig, err
    assert "Traceback" not in err
    stopped_at = max(train_records(run))
    assert 5 <= stopped_at < 40 and not (run / "summary.json").exists()
    assert (run / f"checkpoint-{stopped_at:06d}" / "model.safetensors").is_file()  # nothing lost
    [hint] = [line for line in err.splitlines() if "Resume with:" in line]
    assert f"after step {stopped_at}" in hint
    assert f"roberta pretrain --data {data_dir} --out {run}" in hint and hint.endswith("--resume")
    (resumed,) = launch(data_dir, run, *RESUME_SETS, base=DEFAULT_SETS, resume=True)
    [(rc, err)] = wait_all([resumed])
    assert rc == 0, err
    assert_same_run(uninterrupted, run)


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(data_dir, tmp_path):
    """SIGTERM to rank 1 of 2 gloo ranks only: both learn of it in the step's all-reduce, save one
    checkpoint together at that step and exit 143; it resumes (in one process) to the same end
    as a 1-process run that was never interrupted."""
    import shutil

    sets = NO_DROPOUT + RESUME_SETS + FP32  # 2 ranks = 1 process is exact in fp32 only (see FP32)
    procs = launch(data_dir, tmp_path / "two", *sets, world=2, base=DEFAULT_SETS)
    wait_for_step(procs[0], tmp_path / "two", 5)
    procs[1].send_signal(signal.SIGTERM)
    results = wait_all(procs)
    assert [rc for rc, _ in results] == [143, 143], results
    stopped_at = max(train_records(tmp_path / "two"))
    assert stopped_at < 40 and (tmp_path / "two" / f"checkpoint-{stopped_at:06d}").is_dir()
    assert "Resume with:" in results[0][1]
    run_inprocess(data_dir, tmp_path / "two", *sets, base=DEFAULT_SETS, resume=True)
    run_inprocess(data_dir, tmp_path / "one", *sets, base=DEFAULT_SETS)
    assert max_diff(weights(tmp_path / "one", 40), weights(tmp_path / "two", 40)) <= 1e-6
    shutil.rmtree(tmp_path / "one")


def test_a_second_signal_exits_at_once_and_a_duplicate_does_not(tmp_path):
    """The handler in a real process: the first SIGTERM only sets the flag; the same signal again
    within a second (torchrun's agent forwarding what the scheduler already sent) is ignored;
    one after that exits at once with 143."""
    script = tmp_path / "second.py"
    script.write_text(
        "import os, signal, time\n"
        "from roberta.training.interrupt import GracefulStop\n"
        "with GracefulStop() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.1)\n"
        "    assert stop.signum == signal.SIGTERM\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.1)\n"
        "    print('survived the duplicate', flush=True)\n"
        "    time.sleep(1.2)\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(10)\n"
        "    print('not reached', flush=True)\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 143, r.stderr
    assert "survived the duplicate" in r.stdout and "not reached" not in r.stdout
    assert "without a checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_signal_handlers_are_restored_after_the_block():
    from roberta.training.interrupt import GracefulStop

    before = signal.getsignal(signal.SIGINT)
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: only the flag
        time.sleep(0.05)
        assert stop.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
@pytest.mark.parametrize("how,inductor", [("SIGKILL", False), ("SIGSTOP", False), ("SIGKILL", True)],
                         ids=["dies", "hangs", "dies-with-inductor-loaded"])
def test_a_dead_or_hung_rank_stops_the_other_within_the_timeout(data_dir, tmp_path, monkeypatch, how, inductor):
    """Rank 1 is killed (its sockets close) or frozen (it stops answering) mid-run: rank 0 exits
    with a one-line error, at once or after train.dist_timeout, instead of hanging. With
    torch._inductor loaded (as in a compiled run; here by a sitecustomize, without compile's wait)
    rank 0 used to print the error and then hang in the process group's teardown, 1 run in 2."""
    if inductor:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text("import torch._inductor.config\n")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
    procs = launch(data_dir, tmp_path / "run", "train.max_steps=100000", "train.dist_timeout=3s", world=2)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(metrics(tmp_path / "run") if (tmp_path / "run" / "metrics.jsonl").is_file()
                                             else []) < 3:
            assert procs[0].poll() is None, procs[0].communicate()
            time.sleep(0.05)
        procs[1].send_signal(getattr(signal, how))
        t0 = time.time()
        _, err = procs[0].communicate(timeout=60)
        waited = time.time() - t0
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 2 and "lost contact with another rank" in err and "Traceback" not in err, err
    assert waited < 3 + 20


# --- budgets, faults, checkpoints ---------------------------------------------------------------

def test_time_budget_stops_on_time_with_lr_at_zero(data_dir, tmp_path):
    s = run_inprocess(data_dir, tmp_path / "run", "train.max_time=3s", "train.max_steps=1000000")
    recs = train_records(tmp_path / "run")
    last = recs[s["step"]]
    step_time = 3.0 / s["step"]  # an upper bound on the mean step time
    assert 3.0 <= s["elapsed"] <= 3.0 + 10 * step_time + 0.5
    assert s["final_lr"] == 0.0
    # the lr decayed along the wall clock: the last step ran at a small fraction of the peak
    peak = max(r["lr"] for r in recs.values())
    assert last["lr"] <= peak * 0.1
    assert s["step"] > 5 and (tmp_path / "run" / f"checkpoint-{s['step']:06d}").is_dir()


@pytest.mark.slow
def test_a_time_budget_on_two_ranks_ends_on_the_same_step(data_dir, tmp_path):
    """Each rank has its own clock; they take the slowest, so they agree on the lr and on the
    last step (a disagreement would leave one rank waiting in a collective: a dist_timeout error)."""
    results = wait_all(launch(data_dir, tmp_path / "run", "train.max_time=2s", "train.max_steps=1000000",
                              "train.dist_timeout=20s", world=2))
    assert [rc for rc, _ in results] == [0, 0], results
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["elapsed"] >= 2.0 and s["final_lr"] == 0.0 and s["world_size"] == 2


def test_non_finite_loss_skips_the_step_and_stops_after_m_in_a_row(data_dir, tmp_path, monkeypatch):
    from roberta.model import build_model
    RobertaMLM = type(build_model(apply_overrides(tiny(), ["model.vocab_size=64", "model.max_positions=8"]).model))
    forward = RobertaMLM.forward  # the default preset's model class
    calls = {"n": 0}
    bad_steps = {2, 4, 5, 6}  # one isolated bad step, then three in a row

    def poisoned(self, *a, **k):
        out = forward(self, *a, **k)
        if self.training:
            calls["n"] += 1
            if calls["n"] in bad_steps:
                out["mlm_loss_sum"] = out["mlm_loss_sum"] * float("nan")
        return out

    monkeypatch.setattr(RobertaMLM, "forward", poisoned)
    with pytest.raises(UserError, match=r"not finite .* 3 steps in a row, up to step 6"):
        run_inprocess(data_dir, tmp_path / "run", "train.max_steps=20", "train.max_bad_steps=3",
                      "train.checkpoint_interval=1", "train.keep_checkpoints=0")
    recs = train_records(tmp_path / "run")
    assert recs[2]["skipped_steps"] == 1 and recs[3]["skipped_steps"] == 1 and recs[5]["skipped_steps"] == 3
    # a skipped step leaves the weights untouched; a good step changes them
    assert max_diff(weights(tmp_path / "run", 1), weights(tmp_path / "run", 2)) == 0.0
    assert max_diff(weights(tmp_path / "run", 2), weights(tmp_path / "run", 3)) > 0.0


def test_a_run_from_before_vocabulary_padding_resumes_with_its_own_rows(data_dir, tmp_path):
    """Checkpoints written before model.vocab_multiple existed hold exactly the tokenizer's rows
    and no such key; --resume keeps their row count instead of refusing the run."""
    run = tmp_path / "run"
    run_inprocess(data_dir, run, "train.max_steps=2", "train.checkpoint_interval=1", "model.vocab_multiple=1")
    for config in [run / "config.json", *run.glob("checkpoint-*/config.json")]:  # as an older version wrote them
        d = json.loads(config.read_text())
        del d["model"]["vocab_multiple"]
        config.write_text(json.dumps(d))
    s = run_inprocess(data_dir, run, "train.max_steps=4", "train.checkpoint_interval=1", resume=True)
    assert s["step"] == 4
    assert weights(run, 4)["roberta.embeddings.word_embeddings.weight"].shape[0] == 1000  # not padded to 1024


@pytest.mark.parametrize("fused", [True, False])
def test_step_if_finite_skips_the_update_and_the_step_count(fused):
    """The fused AdamW decides on the device (found_inf, as GradScaler does); the other path on
    the host. Either way a non-finite step changes nothing, weight decay included."""
    from roberta.training.optim import step_if_finite

    w = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.AdamW([w], lr=0.1, weight_decay=0.01, fused=fused or None, foreach=False)
    w.grad = torch.full((4,), 0.5)
    step_if_finite(opt, torch.tensor(False))
    assert torch.equal(w.detach(), torch.ones(4))
    state = opt.state[w]
    assert not state or float(state["step"]) == 0.0
    step_if_finite(opt, torch.tensor(True))
    assert float(opt.state[w]["step"]) == 1.0 and (w.detach() < 1.0).all()
    assert not hasattr(opt, "found_inf")  # not left behind for the next step


def test_stableadamw_is_adamw_while_the_second_moment_keeps_up_and_clips_a_spike():
    """optim.name=stableadamw: with a gradient its second moment has seen (the same one each step)
    every update equals torch's AdamW; a 100x spike after it takes AdamW's step divided by the
    tensor's RMS(g^2 / v_hat), computed here by hand; an untouched tensor keeps AdamW's step."""
    from roberta.training.optim import StableAdamW

    kw = dict(lr=0.01, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    g = torch.randn(64, generator=torch.Generator().manual_seed(0))
    a, b = torch.nn.Parameter(torch.ones(64)), torch.nn.Parameter(torch.ones(64))
    ours, ref = StableAdamW([a], **kw), torch.optim.AdamW([b], foreach=False, **kw)
    for _ in range(5):
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        assert (a - b).abs().max() <= 1e-6
    before_a, before_b = a.detach().clone(), b.detach().clone()
    spike = 100 * g
    a.grad, b.grad = spike.clone(), spike.clone()
    ours.step()
    ref.step()
    v_hat = ours.state[a]["exp_avg_sq"] / (1 - 0.98 ** 6)
    rms = float((spike.square() / v_hat).mean().sqrt())
    assert rms > 2  # a spike: the second moment has not caught up
    assert (a.detach() - before_a).abs().max() < (b.detach() - before_b).abs().max() / 2
    assert torch.allclose(a.detach() - before_a, (b.detach() - before_b) / rms, rtol=1e-4, atol=1e-9)
    assert float(ours.state[a]["step"]) == 6.0


def test_stableadamw_trains_and_resumes_through_a_checkpoint(data_dir, tmp_path):
    """--set optim.name=stableadamw: the run trains (the loss falls) and its optimizer state
    (moments and step counts) goes through the pickle-free checkpoint: a resumed run equals the
    uninterrupted one bit for bit."""
    import shutil

    sets = NO_DROPOUT + ["train.max_steps=6", "train.lr=1e-3", "train.checkpoint_interval=3", "optim.name=stableadamw"]
    run_inprocess(data_dir, tmp_path / "whole", *sets)
    shutil.copytree(tmp_path / "whole", tmp_path / "resumed")
    for name in ("checkpoint-000006", "summary.json"):
        shutil.rmtree(tmp_path / "resumed" / name) if (tmp_path / "resumed" / name).is_dir() \
            else (tmp_path / "resumed" / name).unlink()
    run_inprocess(data_dir, tmp_path / "resumed", *sets, resume=True)
    assert max_diff(weights(tmp_path / "whole", 6), weights(tmp_path / "resumed", 6)) == 0.0
    records = train_records(tmp_path / "whole")
    assert records[6]["loss"] < records[1]["loss"]
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["optim"]["name"] == "stableadamw"


def train_step(model, optimizer, micro_batches, masker, dist, cfg, with_stats: bool = False) -> dict:
    """mask -> launch -> wait: one step, for tests without a loop to overlap."""
    from roberta.training.loop import launch_step, mask_step

    return launch_step(model, optimizer, mask_step(micro_batches, masker, cfg, with_stats), dist, cfg).result()


def one_layer_config(*sets: str):
    """A 1 x 64 model whose 1,000-token vocabulary is padded to 1,024 rows: a step takes milliseconds."""
    from roberta.config import resolve_run

    cfg = apply_overrides(tiny(), ["model.layers=1", "model.hidden=64", "model.heads=2", "model.ffn=128", *FP32, *sets])
    return resolve_run(cfg, {"vocab_size": 1000, "seq_len": 64})


def random_micro_batches(step: int, micro_batches: int = 1, rows: int = 8, seq_len: int = 64) -> list:
    """`rows` framed random sequences (seeded by `step`, drawn in epoch `step`), cut into micro-batches."""
    from roberta.data.loader import Batch

    ids = torch.randint(5, 1000, (rows, seq_len), generator=torch.Generator().manual_seed(step))
    ids[:, 0], ids[:, -1] = 0, 2
    cuts = torch.arange(rows).chunk(micro_batches)
    return [Batch(ids[c], torch.ones_like(ids[c]), torch.full((len(c),), step), c, None) for c in cuts]


@pytest.mark.slow
def test_compiled_training_matches_eager():
    """train.compile=true (compiled blocks, embeddings and head loss, any masked count) trains
    the same network as eager: same losses over three steps, within fp32 reordering."""
    from roberta.training.distributed import Dist
    from roberta.model import build_model
    from roberta.training.optim import build_optimizer
    from roberta.masking import Masker
    from roberta.training.parallelize import compile_model

    cfg = one_layer_config("model.dropout=0", "model.attention_dropout=0")

    def losses(compiled: bool) -> list[float]:
        model = build_model(cfg.model, "cpu", seed=0)
        if compiled:
            compile_model(model)
        opt, out = build_optimizer(model, cfg.optim, 1e-3), []
        for step in range(3):
            out.append(train_step(model, opt, random_micro_batches(step), Masker.for_run(cfg, {}), Dist(), cfg)["loss"])
        return out

    eager, compiled = losses(False), losses(True)
    assert eager[0] != eager[1]  # the steps see different masks and weights
    assert compiled == pytest.approx(eager, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_training_step_is_queued_on_the_gpu_without_a_host_sync():
    """Everything the host needs (shapes, masked counts) is known before the step; the one sync
    is PendingStep.result(). CUDA's sync debug mode raises on any other."""
    from roberta.training.distributed import Dist
    from roberta.training.interrupt import GracefulStop
    from roberta.model import build_model
    from roberta.training.optim import build_optimizer
    from roberta.masking import Masker
    from roberta.training.loop import launch_step, mask_step

    cfg = one_layer_config()
    asked = GracefulStop()
    asked.signum = signal.SIGTERM  # a stop request rides on the step's own all-reduce: no sync either
    dev = torch.device("cuda")
    model = build_model(cfg.model, dev, seed=0)
    opt = build_optimizer(model, cfg.optim, 1e-3)
    mbs = random_micro_batches(0, micro_batches=2)
    dist = Dist(device=dev)
    launch_step(model, opt, mask_step(mbs, Masker.for_run(cfg, {}), cfg), dist, cfg).result()  # warm-up
    prep = mask_step(mbs, Masker.for_run(cfg, {}), cfg, with_stats=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pending = launch_step(model, opt, prep, dist, cfg, asked)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    r = pending.result()
    assert r["stop"] and r["finite"] and r["sequences"] == 8 and r["masked"] == int(sum(p.numel() for _, _, p, *_ in prep.micro))


def test_keep_checkpoints_keeps_the_newest(data_dir, tmp_path):
    run_inprocess(data_dir, tmp_path / "run", "train.max_steps=5", "train.checkpoint_interval=1",
                  "train.keep_checkpoints=2")
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-000004",
                                                                                "checkpoint-000005"]
    run_inprocess(data_dir, tmp_path / "all", "train.max_steps=3", "train.checkpoint_interval=1",
                  "train.keep_checkpoints=0")
    assert len(list((tmp_path / "all").glob("checkpoint-*"))) == 3


@pytest.mark.parametrize("error", ["safetensors", "oserror"])
def test_a_failed_checkpoint_write_keeps_the_previous_one(data_dir, tmp_path, monkeypatch, error):
    """A full disk during the save of step 4: a one-line error, no half-written directory, and
    the run resumes from step 2 to the same end as a run that never failed."""
    import errno

    from safetensors import SafetensorError

    import roberta.training.checkpoint as ckpt
    sets = ["train.max_steps=6", "train.checkpoint_interval=2", "train.keep_checkpoints=0"]
    run_inprocess(data_dir, tmp_path / "whole", *sets)
    real_save = ckpt.save_file

    def full_disk(tensors, path, *a, **k):
        if "checkpoint-000004" in path:
            if error == "safetensors":
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(UserError, match=r"could not write checkpoint .*checkpoint-000004 .*No space left on device"
                                        r".*previous checkpoint is intact"):
        run_inprocess(data_dir, tmp_path / "run", *sets)
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if "checkpoint" in p.name) == ["checkpoint-000002"]
    monkeypatch.setattr(ckpt, "save_file", real_save)
    run_inprocess(data_dir, tmp_path / "run", *sets, resume=True)
    assert max_diff(weights(tmp_path / "whole", 6), weights(tmp_path / "run", 6)) == 0.0


def test_run_directory_and_resume_errors(data_dir, tmp_path):
    run_inprocess(data_dir, tmp_path / "run", "train.max_steps=2")
    with pytest.raises(UserError, match="already holds checkpoints; pass --resume"):
        run_inprocess(data_dir, tmp_path / "run", "train.max_steps=2")
    with pytest.raises(UserError, match="different model config"):
        run_inprocess(data_dir, tmp_path / "run", "train.max_steps=4", "model.ffn=256", resume=True)
    # resuming a finished run does no more steps and reports the same state
    s = run_inprocess(data_dir, tmp_path / "run", "train.max_steps=2", resume=True)
    assert s["step"] == 2 and s["eval_loss"] > 0
    # leftovers of a save killed midway are ignored and cleaned up
    (tmp_path / "run" / ".tmp-checkpoint-000004-123").mkdir()
    s = run_inprocess(data_dir, tmp_path / "run", "train.max_steps=3", resume=True)
    assert s["step"] == 3 and not list((tmp_path / "run").glob(".tmp-*"))


@pytest.mark.parametrize("sets, message", [
    (["train.batch_size=8", "train.micro_batch_size=3"], "not divisible by train.micro_batch_size=3"),
    (["model.max_positions=20"], "needs model.max_positions >= 66"),
    (["model.vocab_size=100"], "smaller than the data's vocabulary"),
])
def test_impossible_combinations_fail_before_training(data_dir, tmp_path, sets, message):
    with pytest.raises(UserError, match=message):
        run_inprocess(data_dir, tmp_path / "run", *sets)
    assert not (tmp_path / "run").exists()  # refused before the run directory was touched


@pytest.mark.parametrize("sets, message", [
    (["train.max_tim=2h"], "did you mean train.max_time"),
    (["train.log_interval=0"], "train.log_interval=0: must be >= 1"),
    (["train.micro_batch_size=64"], "must be between 0"),
    (["train.dist_timeout=soon"], "expected a duration"),
    (["train.device=tpu"], "choose auto, cpu or cuda"),
    (["train.max_steps=-5"], r"train.max_steps=-5: must be >= 0 \(0 = unset\)"),  # not "no budget is set"
    (["train.max_tokens=-1", "train.max_steps=0"], "train.max_tokens=-1: must be >= 0"),
    (["train.checkpoint_interval=-3"], "train.checkpoint_interval=-3: must be >= 1"),
    (["train.eval_sequences=0"], "train.eval_sequences=0: must be >= 1"),
    (["model.heads=0"], "model.heads=0: must be >= 1"),  # not a ZeroDivisionError
    (["train.peak_flops=-1"], "train.peak_flops=-1.0: must be >= 0"),
    (["model.dropout=1.5"], r"model.dropout=1.5: must be in \[0, 1\)"),
])
def test_bad_settings_are_refused(sets, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(tiny(), sets)


# --- held-out numbers, MFU, finished runs, progress -----------------------------------------------

@pytest.fixture(scope="module")
def no_valid_data(tmp_path_factory, corpus_docs, tokenizer_dir) -> Path:
    """Prepared data whose validation split is empty (as a corpus too small for --valid-fraction)."""
    from roberta.data.prepare import prepare

    base = tmp_path_factory.mktemp("novalid")
    corpus = base / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in corpus_docs[:300]))
    prepare([str(corpus)], str(tokenizer_dir), str(base / "data"), seq_len=64, valid_fraction=0.0,
            workers=1, progress=False)
    return base / "data"


def test_no_held_out_split_is_reported_as_train_split_loss(no_valid_data, tmp_path, capsys):
    """Nothing is called held-out that is not: the run warns, labels its evaluation as the train
    split's in metrics.jsonl, summary.json and the closing line; `evaluate` refuses to score
    zero tokens (exit 2, one line) instead of printing loss 0 / perplexity 1."""
    from conftest import run_cli
    from roberta.cli import main

    run = tmp_path / "run"
    args = ["pretrain", "--data", str(no_valid_data), "--out", str(run), "--quiet"]
    assert main([*args, *sum((["--set", s] for s in BASE_SETS + ["train.max_steps=2"]), [])]) == 0
    out = capsys.readouterr().out
    assert "has no held-out tokens" in out and "--valid-fraction" in out
    [done] = [line for line in out.splitlines() if line.startswith("done:")]
    assert "train-split (no held-out split) perplexity" in done and "held-out perplexity" not in done
    evals = [r for r in metrics(run) if "eval_loss" in r]
    assert evals and all(r["eval_split"] == "train" and r["eval_tokens"] > 0 for r in evals)
    assert json.loads((run / "summary.json").read_text())["eval_split"] == "train"
    r = run_cli("evaluate", "--checkpoint", run, "--data", no_valid_data)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    [error] = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert str(no_valid_data) in error and "no tokens to evaluate" in error and "--valid-fraction" in error
    assert "perplexity" not in r.stdout


def test_a_held_out_split_is_reported_as_held_out(data_dir, tmp_path, capsys):
    from roberta.cli import main

    run = tmp_path / "run"
    args = ["pretrain", "--data", str(data_dir), "--out", str(run), "--quiet"]
    assert main([*args, *sum((["--set", s] for s in BASE_SETS + ["train.max_steps=2"]), [])]) == 0
    out = capsys.readouterr().out
    assert "held-out perplexity" in out and "no held-out" not in out
    assert all(r["eval_split"] == "valid" for r in metrics(run) if "eval_loss" in r)


def test_mlm_loss_refuses_to_score_nothing():
    from roberta.training.evaluate import mlm_loss
    from roberta.model import build_model

    with pytest.raises(UserError, match="nothing to evaluate"):
        mlm_loss(build_model(one_layer_config().model, "cpu", seed=0), [])


@pytest.mark.parametrize("later", ["real", "low"], ids=["reprobe-reads-right", "every-probe-reads-low"])
def test_mfu_is_never_above_one_when_the_probe_reads_low(data_dir, tmp_path, monkeypatch, later):
    """A CPU probe taken while other work loads the machine reads low (here: 1 MFLOP/s, faked).
    At the default settings otherwise, no logged MFU exceeds 1: the peak is probed again when a
    window beats it, and raised to the achieved rate if even that probe reads low."""
    import roberta.training.perf as perf

    real, calls = perf.matmul_peak, []

    def probe(device, *a, **k):
        calls.append(device)
        return 1e6 if len(calls) == 1 or later == "low" else real(device, *a, **k)

    monkeypatch.setattr(perf, "matmul_peak", probe)
    s = run_inprocess(data_dir, tmp_path / "run", base=DEFAULT_SETS)
    mfu = [r["mfu"] for r in train_records(tmp_path / "run").values()]
    assert len(mfu) == 6 and all(0 < m <= 1.0 for m in mfu), mfu
    assert len(calls) >= 2 and s["peak_flops"] > 1e6  # re-probed and raised
    if later == "real":
        assert len(calls) == 2 and max(mfu) < 1.0  # the fresh probe is a real peak


def test_resuming_a_finished_run_says_so(data_dir, tmp_path, capsys):
    """--resume of a run whose budget is spent trains nothing, writes nothing, exits 0 and says
    the run is already complete (it used to print "loss nan")."""
    from roberta.cli import main

    run = tmp_path / "run"
    args = ["pretrain", "--data", str(data_dir), "--out", str(run), "--quiet",
            *sum((["--set", s] for s in BASE_SETS + ["train.max_steps=2"]), [])]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "already complete" in out and "at step 2" in out and "nan" not in out
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_the_progress_bar_counts_the_budget_that_ends_the_run(data_dir, tmp_path, capsys):
    """Under a token budget the step count is an estimate (padding makes more steps): the bar
    counts percent of the budget and ends at 100, never "0/10 ... 12it"."""
    from roberta.training.optim import Budget
    from roberta.training.loop import TrainState

    b = Budget(apply_overrides(tiny(), ["train.max_steps=7"]))
    assert b.bar() == (7, "step") and b.bar_position(TrainState(step=3)) == 3
    b = Budget(apply_overrides(tiny(), ["train.max_tokens=20480", "data.seq_len=128"]))
    assert b.bar() == (100, "%") and b.bar_position(TrainState(step=99, tokens=30000)) == 100
    run_inprocess(data_dir, tmp_path / "run", "train.max_tokens=3000", "train.max_steps=0", progress=True)
    last = capsys.readouterr().err.strip().splitlines()[-1].split("\r")[-1]
    assert "100%|" in last and "of the budget" in last and "it]" not in last and "it/s" not in last, last


def test_each_held_out_evaluation_is_printed_on_the_console(data_dir, tmp_path, capsys):
    """With the progress bar on (the CLI without --quiet), every evaluation prints a line with its
    step, tokens, loss and perplexity -- the numbers metrics.jsonl records for it."""
    run_inprocess(data_dir, tmp_path / "run", "train.max_steps=4", "train.eval_interval=2", progress=True)
    out = capsys.readouterr().out.splitlines()
    assert len([x for x in out if x.startswith("precision: ")]) == 1  # the run says once what it chose and why
    lines = [x for x in out if x.startswith("eval step")]
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "eval_loss" in x]
    assert len(lines) == len(evals) == 2
    for line, e in zip(lines, evals):
        assert line == (f"eval step {e['step']}: {e['tokens']:,} tokens, held-out loss {e['eval_loss']:.4f}, "
                        f"perplexity {e['eval_perplexity']:.2f}")
    run_inprocess(data_dir, tmp_path / "quiet", "train.max_steps=2", "train.eval_interval=2", progress=False)
    assert "eval step" not in capsys.readouterr().out
