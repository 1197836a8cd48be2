"""`roberta pretrain`: the training loop, one code path from one CPU to many GPUs.

    for each step:  global batch -> this rank's micro-batches -> mask -> forward/backward
                    (loss normalised by the masked tokens of the whole global batch) -> AdamW
                    -> log, evaluate, checkpoint

Plain `python` is rank 0 of 1; under `torchrun` every rank runs this same loop on its share of
each global batch (roberta.data.loader.shard) and PyTorch's DDP or FSDP2 averages the gradients.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from roberta.training import checkpoint as ckpt
from roberta.config import Config, ModelConfig, TrainConfig, parse_duration, resolve_run, resume_changes
from roberta.data.formats import batch_token_budget, build_sequences
from roberta.data.loader import Batch, BatchStream, collate, shard
from roberta.data.prepare import load_split, read_meta
from roberta.training.distributed import (Dist, all_gather_object, all_reduce_sum, barrier, broadcast_object, full_state,
                                 init_distributed, is_collective_failure, load_full_state, max_over_ranks, no_sync,
                                 shutdown, to_device)
from roberta.errors import UserError
from roberta.training.evaluate import eval_batches, loss_to_ppl, masked_token_count, mlm_loss, unigram_loss
from roberta.training.interrupt import GracefulStop, TrainingInterrupted
from roberta.masking import IGNORE, Masker, mask_counts, masking_stats
from roberta.model import build_model, count_parameters, training_flops
from roberta.training.optim import Budget, build_optimizer, set_lr, step_if_finite
from roberta.training.parallelize import autocast, parallelize
from roberta.training.perf import PeakFlops
from roberta.training.precision import resolve_precision
from roberta.training.runlog import RunLog, last_record, truncate_metrics
from roberta.training.threads import Threads
from roberta.tokenizer import MASK_ID, SPECIAL_IDS, data_tokenizer_fingerprint, load_tokenizer, same_tokenizer


@dataclass
class TrainState:
    """Everything the loop counts; saved in trainer_state.json and restored by --resume."""
    step: int = 0
    sequences: int = 0
    tokens: int = 0  # real (non-pad) tokens seen: the paper's B*L*S
    masked_tokens: int = 0  # tokens the MLM loss was computed on
    flops: float = 0.0  # model training FLOPs (roberta.model.training_flops), summed over ranks
    elapsed: float = 0.0  # wall seconds in the loop (training, evaluation, checkpoints), summed over resumes
    skipped_steps: int = 0  # non-finite losses
    threads: int = 0  # torch CPU threads in use: a resumed train.threads=0 run keeps them (roberta.training.threads)
    data: dict = field(default_factory=dict)  # BatchStream position

    def add(self, r: dict) -> None:
        """Count one finished step (PendingStep.result())."""
        self.step += 1
        self.sequences += r["sequences"]
        self.tokens += r["tokens"]
        self.masked_tokens += r["masked"]
        self.flops += r["flops"]
        self.skipped_steps += not r["finite"]


class Throughput:
    """Tokens/s and MFU over the steps since the last record (training time only: evaluation
    and checkpoints are not in it)."""

    def __init__(self, peak: PeakFlops, world: int, is_main: bool):
        self.peak, self.world, self.is_main = peak, world, is_main
        self.tokens, self.flops, self.seconds = 0, 0.0, 0.0

    def add(self, r: dict, seconds: float) -> None:
        self.tokens, self.flops, self.seconds = self.tokens + r["tokens"], self.flops + r["flops"], self.seconds + seconds

    def read(self) -> dict:
        """The window's rates; starts the next window."""
        rates = {"tokens_per_s": self.tokens / self.seconds,
                 "mfu": self.peak.mfu(self.flops / self.seconds / self.world) if self.is_main else None}
        self.tokens, self.flops, self.seconds = 0, 0.0, 0.0
        return rates


def check_finite(r: dict, bad_in_row: int, limit: int, step: int, lr: float) -> int:
    """Consecutive non-finite steps so far (their updates were skipped on the device); too many
    stop the run with what to change."""
    bad_in_row = 0 if r["finite"] else bad_in_row + 1
    if bad_in_row >= limit:
        raise UserError(f"the loss was not finite (NaN or inf) for {bad_in_row} steps in a row, up to "
                        f"step {step} (lr {lr:.3g}); those updates were skipped and the run stopped "
                        f"(train.max_bad_steps={limit}). Lower train.lr, raise warmup or set "
                        f"optim.grad_clip=1.0, then --resume from the last checkpoint")
    return bad_in_row


def seed_dropout(seed: int, rank: int) -> None:
    """Each rank draws its own dropout masks (the model init before this is the same everywhere)."""
    torch.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def rng_state(dist: Dist) -> dict[str, torch.Tensor]:
    """Every rank's dropout RNG, gathered (a collective): {"cpu.RANK": ..., "cuda.RANK": ...}."""
    mine = {f"cpu.{dist.rank}": torch.get_rng_state()}
    if dist.device.type == "cuda":
        mine[f"cuda.{dist.rank}"] = torch.cuda.get_rng_state(dist.device)
    return {k: v for part in all_gather_object(mine, dist) for k, v in part.items()}


def set_rng_state(state: dict[str, torch.Tensor], dist: Dist, seed: int) -> None:
    """Restore this rank's dropout RNG as rng_state saved it. Call it last before the first step:
    anything drawing from the global RNG in between would shift every later dropout mask."""
    if f"cpu.{dist.rank}" not in state:  # resumed on more ranks than were saved: fresh masks
        seed_dropout(seed + 1, dist.rank)
        return
    torch.set_rng_state(state[f"cpu.{dist.rank}"])
    if dist.device.type == "cuda" and f"cuda.{dist.rank}" in state:
        torch.cuda.set_rng_state(state[f"cuda.{dist.rank}"], dist.device)


@dataclass
class MaskedStep:
    """This rank's share of one global batch, masked on the host, so that every shape and count
    is known without asking the device: per micro-batch (inputs, labels, flat indices of the
    masked positions, attention mask or None, NSP labels or None, document ids or None)."""
    micro: list[tuple]
    counts: list[float]  # masked tokens, sequences, real tokens, training FLOPs (this rank)
    mask_counts: torch.Tensor | None = None  # summed masking.mask_counts, on logging steps
    data_state: dict = field(default_factory=dict)  # the BatchStream position after this batch


def mask_step(micro_batches: list[Batch], masker: Masker, cfg: Config, with_stats: bool = False) -> MaskedStep:
    """Mask each micro-batch on the host and count what the step will see (masked tokens,
    sequences, real tokens, FLOPs): the device never has to be asked."""
    micro, counts, stats = [], [0.0, 0.0, 0.0, 0.0], None
    for mb in micro_batches:
        inputs, labels = masker(mb.input_ids, mb.epochs, mb.indices)
        positions = labels.view(-1).ne(IGNORE).nonzero().squeeze(1)
        # no mask when nothing is padded: SDPA then takes its fastest (flash) kernels
        attn = mb.attention_mask if mb.tokens < mb.input_ids.numel() else None
        n, tokens = len(positions), mb.tokens
        flops = training_flops(cfg.model, tokens, n, cfg.data.seq_len)  # as roberta plan counts
        counts = [counts[0] + n, counts[1] + len(mb.indices), counts[2] + tokens, counts[3] + flops]
        micro.append((inputs, labels, positions, attn, mb.nsp_labels, mb.document_ids))
        if with_stats:  # realised masking, reported on logging steps
            c = mask_counts(mb.input_ids, inputs, labels, MASK_ID, SPECIAL_IDS)
            stats = c if stats is None else stats + c
    return MaskedStep(micro, counts, stats)


class PendingStep:
    """A launched step's numbers, still on the device; `result()` is the step's one host sync."""

    def __init__(self, values: torch.Tensor, nsp: bool, mask_counts: torch.Tensor | None):
        self.values, self.nsp, self.mask_counts = values, nsp, mask_counts

    def result(self) -> dict:
        (mlm_sum, nsp_sum, n_masked, n_seqs, tokens, flops, norm, finite, stop) = self.values.tolist()
        r = {"loss": mlm_sum / max(n_masked, 1), "nsp_loss": nsp_sum / max(n_seqs, 1) if self.nsp else None,
             "grad_norm": norm, "finite": bool(finite), "masked": int(n_masked), "sequences": int(n_seqs),
             "tokens": int(tokens), "flops": flops, "stop": stop > 0}
        if self.mask_counts is not None:
            r.update(masking_stats(self.mask_counts.tolist()))
        return r


def launch_step(model, optimizer, prep: MaskedStep, dist: Dist, cfg: Config,
                stop: GracefulStop | None = None) -> PendingStep:
    """One optimizer step over this rank's micro-batches, queued on the device without waiting
    for it: inputs go up pinned and non-blocking, the sparse head gathers at host-known
    positions, and a non-finite loss or gradient norm skips the update on the device (fused
    AdamW's found_inf). The loss is the sum over the global batch's masked tokens divided by
    their count (not an average of micro-batch means). Whether any rank was asked to stop
    (`stop`, a signal) rides on the step's loss all-reduce: every rank learns it at no cost."""
    device = dist.device
    local = all_reduce_sum(to_device(torch.tensor(prep.counts, dtype=torch.float64), device), dist)
    # DDP/FSDP average gradients over ranks; scaling by world makes that the global-batch sum
    mlm_scale = dist.world / local[0].clamp(min=1)
    nsp_scale = dist.world / local[1].clamp(min=1)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # MLM and NSP loss sums, stop requests
    for i, mb in enumerate(prep.micro):
        inputs, labels, positions, attn, nsp, docs = (None if x is None else to_device(x, device) for x in mb)
        with no_sync(model, skip=i < len(prep.micro) - 1):
            with autocast(device, cfg.train.precision):
                out = model(inputs, labels, attn, nsp, masked_positions=positions, document_ids=docs)
                loss = out["mlm_loss_sum"] * mlm_scale
                if "nsp_loss_sum" in out:
                    loss = loss + out["nsp_loss_sum"] * nsp_scale
                    sums[1] += out["nsp_loss_sum"].detach()
            loss.backward()
        sums[0] += out["mlm_loss_sum"].detach()
    if stop is not None and stop.requested:
        sums[2] = 1.0
    all_reduce_sum(sums, dist)
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    values = torch.cat([sums[:2], local, grad_norm.detach().reshape(1).double()])
    finite = values.isfinite().all()
    step_if_finite(optimizer, finite)
    optimizer.zero_grad(set_to_none=True)
    stats = None
    if prep.mask_counts is not None:
        stats = all_reduce_sum(to_device(prep.mask_counts.double(), device), dist)
    return PendingStep(torch.cat([values, finite.reshape(1).double(), sums[2:]]), cfg.model.nsp_head, stats)


def evaluation_set(data_dir: str, valid, train, cfg: Config, vocab_size: int, is_main: bool) -> tuple[list, str]:
    """The fixed masked tokens the run is scored on, and their split. The held-out ("valid")
    split's, unless it has none (a corpus too small for prepare's --valid-fraction to give it a
    document): then the training split's, labelled "train" wherever the number is reported,
    with a warning -- a loss on training data is never reported as held-out."""
    evals = eval_batches(valid, cfg.data.seq_len, vocab_size, cfg.train.eval_sequences) if valid.n_docs else []
    if masked_token_count(evals):
        return evals, "valid"
    if is_main:
        print(f"warning: {data_dir} has no held-out tokens (its valid split is empty); the run's evaluation "
              "scores the TRAINING split and reports it as train-split loss. For a held-out number run "
              "`roberta prepare` again with a larger --valid-fraction (or a larger corpus)")
    return eval_batches(train, cfg.data.seq_len, vocab_size, cfg.train.eval_sequences), "train"


def completed_summary(out: Path, step: int) -> dict | None:
    """--resume of a run whose budget is already spent: the summary it wrote when it finished,
    marked already_complete (nothing is trained, evaluated or written again)."""
    path = out / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    return {**summary, "already_complete": True} if summary.get("step") == step else None


def check_data(data_dir: str, meta: dict) -> None:
    tok_dir = Path(data_dir) / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        raise UserError(f"{data_dir}: prepared data has no tokenizer/ copy; run `roberta prepare` again")
    if not same_tokenizer(tok_dir, data_dir, meta):
        raise UserError(f"{tok_dir}: tokenizer differs from the one the data was prepared with "
                        f"(fingerprint {data_tokenizer_fingerprint(data_dir, meta)}); run `roberta prepare` again with the intended tokenizer")


def pretrain(data_dir: str, out: str, cfg: Config, resume: bool = False, progress: bool = True,
             init_from: str | None = None) -> dict:
    """Train; returns the run's summary. SIGINT/SIGTERM during the run finish the step, write a
    checkpoint and raise roberta.training.interrupt.TrainingInterrupted (the handlers are restored after)."""
    dist = init_distributed(cfg.train.device, parse_duration(cfg.train.dist_timeout))
    try:
        with GracefulStop() as stop:
            try:
                summary = _pretrain(data_dir, Path(out), cfg, resume, progress, dist, init_from, stop)
            except TrainingInterrupted:
                barrier(dist)  # every rank stopped after the same step and saved together
                raise
        barrier(dist)  # no rank tears gloo/NCCL down while another still talks to it
        return summary
    except RuntimeError as e:
        if dist.active and is_collective_failure(e):
            raise UserError(f"rank {dist.rank}: lost contact with another rank ({str(e).splitlines()[0][-160:]}); "
                            f"every rank stops within train.dist_timeout={cfg.train.dist_timeout}. Look for the "
                            "first error in the other ranks' output, then restart with --resume") from None
        raise
    finally:
        shutdown(dist)


def _find_resume_point(out: Path, resume: bool, dist: Dist) -> Path | None:
    """Rank 0 looks at the run directory and every rank gets the same answer (or the same error):
    the checkpoint to resume from, or None for a fresh run."""
    answer: tuple[str | None, str | None] = (None, None)
    if dist.is_main:
        latest = ckpt.latest_checkpoint(out) if resume else None
        if latest is None and out.exists() and any(out.glob("checkpoint-*")):
            answer = (None, f"{out}: holds no complete checkpoint to resume from; choose a new --out"
                      if resume else f"{out}: already holds checkpoints; pass --resume to continue, or choose a new --out")
        else:
            answer = (str(latest) if latest else None, None)
            if resume and latest is None:
                print(f"note: --resume found no checkpoint in {out}; starting from scratch")
    latest, error = broadcast_object(answer, dist)
    if error:
        raise UserError(error)
    return Path(latest) if latest else None


def _check_resume(out: Path, latest: Path | None, cfg: Config) -> tuple[Config | None, list[tuple]]:
    """A resumed run keeps the config it was saved with (its config.json, else its checkpoint's):
    `cfg` (resolved) may raise its budgets and change runtime settings, nothing else
    (roberta.config.resume_changes says what, and refuses the rest before anything is written).
    Returns the saved config (None for a fresh run) and the budgets raised: [(key, saved, asked)]."""
    if latest is None:
        return None, []
    where = out if (out / "config.json").is_file() else latest
    saved = ckpt.load_config(where)
    # older runs say the lr_scaling their lr was already scaled by: the lr is what they ran at
    saved.train = dataclasses.replace(saved.train, lr_scaling="none")
    return saved, resume_changes(saved, cfg, str(where / "config.json"))


def _with_raises(saved: Config, raised: list[tuple]) -> Config:
    return dataclasses.replace(saved, train=dataclasses.replace(
        saved.train, **{key.split(".")[1]: now for key, _, now in raised}))


def _start_run_dir(out: Path, cfg: Config, latest: Path | None, dist: Dist, extended: Config | None) -> None:
    """A fresh run starts with an empty metrics.jsonl and its resolved config.json; a resumed
    one loses only a half-written checkpoint, and its config.json records a raised budget
    (`extended`: the saved config with the raise in it)."""
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial(out)
        if latest is None:
            (out / "metrics.jsonl").unlink(missing_ok=True)
            (out / "config.json").write_text(cfg.to_json())
        elif extended is not None:
            (out / "config.json").write_text(extended.to_json())


def _record_raises(out: Path, raised: list[tuple], state: TrainState, before: Budget, after: Budget,
                   peak_lr: float) -> None:
    """Rank 0, once the metrics of replayed steps are dropped: each raised budget is an event in
    metrics.jsonl (written directly: it is not a metric for the integrations) and a console line
    with what it does to the lr, whose schedule runs on the used fraction of the budget."""
    if not raised:
        return
    with open(out / "metrics.jsonl", "a") as f:
        for key, was, now in raised:
            f.write(json.dumps({"step": state.step, "tokens": state.tokens, "event": "budget_raised", "key": key,
                                "from": was, "to": now}) + "\n")
    for key, was, now in raised:
        print(f"extending the budget: {key} {was} -> {now}")
    print(f"lr at step {state.step:,}: {before.lr(state, peak_lr):.3g} -> {after.lr(state, peak_lr):.3g} "
          f"(the decay is stretched over the larger budget)")


def _duration_words(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def budget_words(t: TrainConfig) -> str:
    """What ends the run, in words (train.*: Budget's rule): "1,000 steps"; "2,000,000 tokens";
    "10 min of training (train.max_time=10m)". A token or time budget replaces the step budget."""
    parts = [f"{t.max_tokens:,} tokens"] if t.max_tokens else []
    if t.max_time:
        parts.append(f"{_duration_words(parse_duration(t.max_time))} of training (train.max_time={t.max_time})")
    if not parts:
        return f"{t.max_steps:,} steps"
    words = " or ".join(parts) + (", whichever ends first" if len(parts) > 1 else "")
    return words + ("; train.max_steps does not apply under a token or time budget" if t.max_steps else "")


def init_from_model(init_from: str, data_dir: str, meta: dict) -> ModelConfig:
    """Continued pretraining: the --checkpoint checkpoint's model config, once its vocabulary is
    known to be the data's."""
    ck = ckpt.resolve_checkpoint(init_from)
    saved = ckpt.load_config(ck).model
    if (ck / "tokenizer.json").is_file():
        same = same_tokenizer(ck, data_dir, meta)
    else:
        same = saved.vocab_size == meta["vocab_size"]
    if not same or saved.vocab_size < meta["vocab_size"]:
        raise UserError(f"--checkpoint {init_from}: its vocabulary differs from the tokenizer {data_dir} was "
                        f"prepared with; run `roberta prepare --tokenizer {ck}` on your corpus and train on that")
    return saved


@dataclass
class Run:
    """What setup_run builds: everything the loop reads or advances."""
    cfg: Config
    dist: Dist
    out: Path
    model: torch.nn.Module  # the bare model: checkpoints, evaluation, parameter count
    parallel_model: torch.nn.Module  # what the loop calls: the model, or its DDP/FSDP2 wrapper
    optimizer: torch.optim.Optimizer
    state: TrainState
    budget: Budget
    stream: BatchStream
    next_batch: Callable[[int], "MaskedStep"]  # step done so far -> the next global batch, masked
    evals: list
    eval_split: str  # "valid", or "train" when the data has no held-out split
    log: RunLog
    meter: Throughput
    latest: Path | None  # the checkpoint resumed from
    rng: dict | None  # its saved dropout RNG
    tok_dir: Path
    n_params: int
    done_before: dict | None = None  # a resumed run that had already finished: its summary
    threads: Threads | None = None  # checks, while training, whether the thread count still suits the machine

    def evaluate(self) -> dict:
        with autocast(self.dist.device, self.cfg.train.precision):
            r = mlm_loss(self.model, self.evals, self.dist.device)
        s = self.state
        self.log.write({"step": s.step, "tokens": s.tokens, "eval_loss": r["mlm_loss"],
                        "eval_perplexity": r["perplexity"], "eval_tokens": r["tokens"], "eval_split": self.eval_split})
        held = "held-out" if self.eval_split == "valid" else "train-split"
        self.log.print(f"eval step {s.step}: {s.tokens:,} tokens, {held} loss {r['mlm_loss']:.4f}, "
                       f"perplexity {r['perplexity']:.2f}")
        return r

    def finish(self, record: dict, last_eval: dict, already_complete: bool, data_dir: str) -> dict:
        """The run's summary (the last record, completed), written to summary.json on rank 0, with
        the ratio of its perplexity to the unigram baseline's (rank 0 only: no collective)."""
        s, main = self.state, self.dist.is_main
        summary = {**record, **{k: v for k, v in dataclasses.asdict(s).items() if k != "data"},
                   "final_lr": self.budget.lr(s, self.cfg.train.lr), "parameters": self.n_params,
                   "peak_flops": self.meter.peak.value, "world_size": self.dist.world,
                   "already_complete": already_complete, "eval_loss": last_eval["mlm_loss"],
                   "eval_perplexity": last_eval["perplexity"], "eval_split": self.eval_split,
                   "checkpoint": str(ckpt.latest_checkpoint(self.out)) if main else None}
        if main:
            summary.update(self.unigram_baseline(data_dir, last_eval))
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def unigram_baseline(self, data_dir: str, last_eval: dict) -> dict:
        """The unigram model of the training split on the run's evaluation tokens (what `roberta
        evaluate` prints beside the model): a bincount over the split, once, at the end."""
        u = unigram_loss(load_split(data_dir, "train").tokens, read_meta(data_dir)["vocab_size"], self.evals)
        return {"unigram_perplexity": u["perplexity"],
                "ratio_to_unigram": loss_to_ppl(last_eval["mlm_loss"] - u["mlm_loss"])}

    def save(self) -> None:
        weights, opt_state = full_state(self.parallel_model, self.optimizer, self.dist)  # collectives: every rank
        rng = rng_state(self.dist)
        if self.dist.is_main:
            ckpt.save_checkpoint(self.out, self.state.step, self.model, self.cfg, self.tok_dir,
                                 trainer_state=dataclasses.asdict(self.state), rng=rng,
                                 keep=self.cfg.train.keep_checkpoints, weights=weights, optimizer_state=opt_state)


def setup_run(data_dir: str, out: Path, cfg: Config, resume: bool, progress: bool, dist: Dist,
              init_from: str | None) -> Run:
    """Resolve the config, load the data, build (or restore) the model, optimizer and stream."""
    meta = read_meta(data_dir)
    check_data(data_dir, meta)
    latest = _find_resume_point(out, resume, dist)
    cfg = resolve_run(cfg, meta, dist.world, resumed=ckpt.load_config(latest).model if latest else None,
                      init_from=init_from_model(init_from, data_dir, meta) if init_from else None)
    saved, raised = _check_resume(out, latest, cfg)
    t = cfg.train
    threads = Threads(t.threads, dist.device, dist.is_main)  # measures what others use during the setup
    if dist.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # only the few fp32 matmuls outside autocast
    tok_dir = Path(data_dir) / "tokenizer"
    train_split, valid_split = load_split(data_dir, "train", verify=True), load_split(data_dir, "valid", verify=True)
    order = build_sequences(train_split, cfg.data.format, cfg.data.seq_len, seed=t.seed)
    if len(order) == 0:
        raise UserError(f"{data_dir}: no training sequences could be built")
    token_budget = batch_token_budget(train_split, cfg.data.format, t.batch_size, cfg.data.seq_len)
    accum = t.batch_size // (t.micro_batch_size * dist.world)
    stream = BatchStream(order, t.batch_size, t.seed, token_budget=token_budget, min_draws=accum * dist.world,
                         multiple_of=dist.world)
    evals, eval_split = evaluation_set(data_dir, valid_split, train_split, cfg, meta["vocab_size"], dist.is_main)
    _start_run_dir(out, cfg, latest, dist, _with_raises(saved, raised) if raised else None)

    model = build_model(cfg.model, dist.device, seed=t.seed)
    if latest is None and init_from:
        init_ck = ckpt.resolve_checkpoint(init_from)
        # an NSP head the checkpoint lacks starts fresh; one the format does not train is left behind
        ckpt.load_state(model, ckpt.load_weights(init_ck), init_ck / "model.safetensors",
                        allow_missing=("nsp_head.",), allow_unexpected=("nsp_head.",))
    if latest is not None:
        ckpt.load_state(model, ckpt.load_weights(latest), latest / "model.safetensors")
    parallel_model = parallelize(model, t, dist)
    optimizer = build_optimizer(parallel_model, cfg.optim, t.lr)
    state, rng = TrainState(), None
    if latest is not None:
        opt_state, rng, st = ckpt.load_training_state(latest)
        load_full_state(parallel_model, optimizer, opt_state, dist)
        state = TrainState(**{k: v for k, v in st.items() if k in TrainState.__dataclass_fields__})
        stream.load_state_dict(state.data)
        if dist.is_main:
            truncate_metrics(out / "metrics.jsonl", state.step)
    state.threads = threads.start(saved=state.threads)
    masker = Masker.for_run(cfg, load_tokenizer(tok_dir).get_vocab())
    budget = Budget(cfg)
    done_before = completed_summary(out, state.step) if latest is not None and budget.done(state) else None
    n_params = count_parameters(model)
    precision, why = resolve_precision(t.precision, dist.device)
    if dist.is_main and not done_before:
        print(f"model: {n_params / 1e6:.2f}M parameters ({cfg.model.layers}x{cfg.model.hidden}); "
              f"{len(order):,} training sequences ({cfg.data.format}, seq_len {cfg.data.seq_len}); "
              f"batch {t.batch_size} = {t.micro_batch_size} x {accum} accumulation x {dist.world} rank(s); "
              f"peak lr {t.lr:g}; device {dist.device}" + (f"; resuming from {latest}" if latest else ""))
        print(f"precision: {precision} ({why})")
        print(f"budget: {budget_words(t)}")
        _record_raises(out, raised, state, Budget(saved) if saved else budget, budget, t.lr)
    log = RunLog(out, dist.is_main, progress, *budget.bar(), initial=budget.bar_position(state),
                 step=state.step, report_to=t.report_to, config=cfg.to_dict()) if not done_before else None

    def next_batch(step: int) -> MaskedStep:
        """Global batch number step + 1, collated and masked on the host (called while the device
        still runs the step before it); masking statistics on the steps that are logged."""
        draws = stream.next_batch()
        micro = [collate(train_split, order, d) for d in shard(draws, dist.rank, dist.world, accum)]
        prep = mask_step(micro, masker, cfg, with_stats=is_log_step(step, t.log_interval))
        prep.data_state = stream.state_dict()
        return prep

    meter = Throughput(PeakFlops(dist.device, t.peak_flops, bf16=precision == "bf16"), dist.world,
                       dist.is_main) if not done_before else None
    return Run(cfg, dist, out, model, parallel_model, optimizer, state, budget, stream, next_batch, evals, eval_split,
               log, meter, latest, rng, tok_dir, n_params, done_before, threads)


def train_record(state: TrainState, r: dict, lr: float, rates: dict) -> dict:
    """A training step's metrics.jsonl record (also the base of the run's summary)."""
    return {"step": state.step, "sequences": state.sequences, "tokens": state.tokens,
            "masked_tokens": state.masked_tokens, "flops": state.flops,
            "loss": r["loss"], "loss_bits": r["loss"] / math.log(2), "nsp_loss": r["nsp_loss"],
            "lr": lr, "grad_norm": r["grad_norm"], **rates, "elapsed": state.elapsed,
            "skipped_steps": state.skipped_steps,
            **{k: r[k] for k in ("mask_rate", "mask_share", "random_share", "keep_share") if k in r}}


def is_log_step(step: int, interval: int) -> bool:
    """step: the steps done before this one; the first step is always logged."""
    return step == 0 or (step + 1) % interval == 0


def _pretrain(data_dir, out: Path, cfg: Config, resume, progress, dist: Dist, init_from,
              stop: GracefulStop | None = None) -> dict:
    run = setup_run(data_dir, out, cfg, resume, progress, dist, init_from)
    if run.done_before:  # --resume of a finished run: nothing to do
        return run.done_before
    cfg, state, budget, t = run.cfg, run.state, run.budget, run.cfg.train
    # a resumed run that is already complete reports its last logged step, not an empty record
    record = last_record(out / "metrics.jsonl", "loss") if run.latest is not None and dist.is_main else {}
    last_eval, last_saved, first_step, bad_in_row = None, state.step, state.step, 0
    elapsed0, t_start = state.elapsed, time.perf_counter()

    run.model.train()
    upcoming = run.next_batch(state.step)
    # the dropout RNG is seeded or restored last, so that nothing before the first step draws from it
    if run.rng is None:
        seed_dropout(t.seed, dist.rank)
    else:
        set_rng_state(run.rng, dist, t.seed)
    while not budget.done(state):
        t0 = time.perf_counter()
        lr = budget.lr(state, t.lr)
        set_lr(run.optimizer, lr)
        log_now = is_log_step(state.step, t.log_interval)
        pending = launch_step(run.parallel_model, run.optimizer, upcoming, dist, cfg, stop)
        state.data = upcoming.data_state
        upcoming = run.next_batch(state.step + 1)  # on the host, overlapping the device's work
        r = pending.result()  # the step's one host sync
        now = time.perf_counter()
        state.add(r)
        run.meter.add(r, now - t0)
        # seconds in the loop, summed over resumes; under a time budget the ranks agree on the
        # slowest clock (an all-reduce, once per step): they must agree on the lr and the last step
        state.elapsed = elapsed0 + now - t_start
        if budget.max_time:
            state.elapsed = max_over_ranks(state.elapsed, dist)
        bad_in_row = check_finite(r, bad_in_row, t.max_bad_steps, state.step, lr)
        done = budget.done(state)
        if log_now or done:  # one record: metrics.jsonl, the integrations, and the summary
            record = train_record(state, r, lr, run.meter.read())
            run.log.write(record)
        run.log.progress(budget.bar_position(state), loss=f"{r['loss']:.3f}", tok_s=f"{record.get('tokens_per_s', 0):.0f}")
        run.threads.check(state.step, run.log)
        if state.step % t.eval_interval == 0 or done:
            last_eval = run.evaluate()
        if state.step % t.checkpoint_interval == 0 or done:
            run.save()
            last_saved = state.step
        if r["stop"] and not done:  # a signal on some rank; every rank saw it in this step's all-reduce
            if last_saved != state.step:
                run.save()
            run.log.close()
            raise TrainingInterrupted((stop and stop.signum) or signal.SIGTERM, state.step,
                                      str(ckpt.latest_checkpoint(out)) if dist.is_main else None)
    if last_eval is None:  # a resumed run that was already complete
        last_eval = run.evaluate()
    if last_saved != state.step:
        run.save()
    run.log.close()
    return run.finish(record, last_eval, already_complete=run.latest is not None and state.step == first_step,
                      data_dir=data_dir)
