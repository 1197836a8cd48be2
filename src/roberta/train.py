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

import numpy as np
import torch

from roberta import checkpoint as ckpt
from roberta.config import Config, ModelConfig, parse_duration
from roberta.data.formats import NSP_FORMATS, batch_token_budget, build_plan
from roberta.data.loader import Batch, BatchStream, collate, shard
from roberta.data.prepare import load_split, read_meta
from roberta.distributed import (Dist, autocast, all_gather_object, all_reduce_sum, broadcast_object, full_state,
                                 init_distributed, is_collective_failure, load_full_state, max_over_ranks,
                                 barrier, checkpoint_blocks, no_sync, shutdown, to_device, wrap_model)
from roberta.errors import UserError
from roberta.evaluate import eval_batches, masked_token_count, mlm_loss
from roberta.interrupt import GracefulStop, TrainingInterrupted
from roberta.masking import IGNORE, mask_counts, mask_tokens, masking_stats, sequence_keys, word_start_table
from roberta.model import (build_model, count_parameters, max_seq_len, padded_vocab_size, positions_for,
                           training_flops)
from roberta.optim import build_optimizer, lr_at, scaled_lr, set_lr, step_if_finite
from roberta.perf import PeakFlops, enable_float8
from roberta.precision import resolve_precision
from roberta.runlog import RunLog, last_record, truncate_metrics
from roberta.tokenizer import MASK_ID, SPECIAL_IDS, data_tokenizer_fingerprint, load_tokenizer, tokenizer_fingerprint


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
    data: dict = field(default_factory=dict)  # BatchStream position


class Masker:
    """Masks a batch as the config says: dynamic (fresh per epoch) or static (epoch % dupe_factor)."""

    def __init__(self, cfg: Config, vocab: dict[str, int]):
        self.m, self.seed = cfg.masking, cfg.train.seed
        # random replacements come from the tokenizer's ids, even if model.vocab_size pads beyond them
        self.vocab_size = min(cfg.model.vocab_size, max(vocab.values()) + 1) if vocab else cfg.model.vocab_size
        self.word_start = word_start_table(vocab, self.vocab_size) if self.m.whole_word else None

    def __call__(self, input_ids: torch.Tensor, epochs: torch.Tensor, indices: torch.Tensor):
        """(B, T) ids, (B,) epochs and sequence indices -> (inputs, labels), on the host: the trainer
        masks while the device runs the previous step, and knows the masked count without a sync."""
        if self.m.kind == "static":
            epochs = epochs % self.m.dupe_factor
        keys = sequence_keys(self.seed, epochs, indices)
        return mask_tokens(input_ids, vocab_size=self.vocab_size, mask_token_id=MASK_ID,
                           special_token_ids=SPECIAL_IDS, mask_prob=self.m.mask_prob,
                           mask_token_prob=self.m.mask_token_prob, random_token_prob=self.m.random_token_prob,
                           exact_count=self.m.exact_count, seq_keys=keys, word_start=self.word_start)


class Budget:
    """Which budget ends the run and how far along it is (0..1): the largest used fraction of
    the token and time budgets when either is set, else steps. The lr schedule runs on this
    fraction, so a time budget decays the lr to 0 at the deadline."""

    def __init__(self, cfg: Config):
        t = cfg.train
        self.max_steps, self.max_tokens = t.max_steps, t.max_tokens
        self.max_time = parse_duration(t.max_time) if t.max_time else 0.0
        steps_est = self.max_steps
        if self.max_tokens:
            steps_est = max(1, math.ceil(self.max_tokens / (t.batch_size * cfg.data.seq_len)))
        # warmup_steps is a fraction of the (estimated) steps; a time budget has no step count
        self.warmup = (t.warmup_steps / steps_est) if (t.warmup_steps and not self.max_time) else t.warmup_fraction
        self.warmup = min(self.warmup, 0.999)
        self.steps_estimate = None if self.max_time else steps_est

    def progress(self, s: TrainState) -> float:
        if self.max_tokens or self.max_time:
            p = [s.tokens / self.max_tokens] if self.max_tokens else []
            p += [s.elapsed / self.max_time] if self.max_time else []
            return max(p)
        return s.step / self.max_steps

    def done(self, s: TrainState) -> bool:
        return self.progress(s) >= 1.0

    def bar(self) -> tuple[int, str]:
        """The progress bar's total and unit: steps under a step budget; percent of the budget
        under a token or time budget, whose step count is only an estimate."""
        return (self.max_steps, "step") if not (self.max_tokens or self.max_time) else (100, "%")

    def bar_position(self, s: TrainState) -> float:
        return s.step if not (self.max_tokens or self.max_time) else round(min(self.progress(s), 1.0) * 100, 1)


def resolve_config(cfg: Config, meta: dict, explicit: set[str], dist: Dist) -> Config:
    """Fill in what comes from the data and the hardware; reject impossible combinations."""
    m, t = cfg.model, cfg.train
    if "model.vocab_size" not in explicit:  # rows past the tokenizer's are never an input or a target
        m = dataclasses.replace(m, vocab_size=padded_vocab_size(meta["vocab_size"], m.vocab_multiple))
    elif m.vocab_size < meta["vocab_size"]:
        raise UserError(f"model.vocab_size={m.vocab_size} is smaller than the data's vocabulary "
                        f"({meta['vocab_size']}); leave it unset to take the tokenizer's size")
    need = positions_for(cfg.data.seq_len, m.pad_token_id)
    if "model.max_positions" in explicit:
        if m.max_positions < need:
            raise UserError(f"data.seq_len={cfg.data.seq_len} needs model.max_positions >= {need} "
                            f"(seq_len + padding_idx + 1); it is {m.max_positions}")
    else:
        m = dataclasses.replace(m, max_positions=need)
    nsp = cfg.data.format in NSP_FORMATS
    if nsp and not m.nsp_head:
        if "model.nsp_head" in explicit:
            raise UserError(f"data.format={cfg.data.format} trains next-sentence prediction; "
                            "it needs model.nsp_head=true")
        m = dataclasses.replace(m, nsp_head=True)
    micro = t.micro_batch_size or max(1, t.batch_size // dist.world)
    if t.batch_size % (micro * dist.world):
        raise UserError(f"train.batch_size={t.batch_size} is not divisible by train.micro_batch_size={micro} "
                        f"x {dist.world} rank(s); choose sizes that divide")
    lr = scaled_lr(t.lr, t.batch_size, t.base_batch_size, t.lr_scaling)
    t = dataclasses.replace(t, micro_batch_size=micro, lr=lr)
    return dataclasses.replace(cfg, model=m, train=t)


def compile_model(model: torch.nn.Module, mode: str | None = None) -> None:
    """torch.compile each transformer block and the LM head's loss in place (parameter names,
    hence checkpoints, unchanged). The blocks share one compiled graph (compiling 1 layer costs
    what 24 do); the head's graph (dense, GELU, LayerNorm, vocabulary projection, fp32
    cross-entropy) takes any number of masked positions; the embeddings (three lookups, sum,
    LayerNorm, dropout) fuse into one kernel. The gather of the masked positions stays eager.
    `mode` is torch.compile's, for the embeddings and blocks (benchmarks/gpu_profile.py tries them)."""
    model.roberta.embeddings.compile(mode=mode)
    for layer in model.roberta.layers:
        layer.compile(mode=mode)
    model.lm_head.loss_sum = torch.compile(model.lm_head.loss_sum, dynamic=True)


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
class PreparedStep:
    """This rank's share of one global batch, masked on the host, so that every shape and count
    is known without asking the device: per micro-batch (inputs, labels, flat indices of the
    masked positions, attention mask or None, NSP labels or None)."""
    micro: list[tuple]
    counts: list[float]  # masked tokens, sequences, real tokens, training FLOPs (this rank)
    mask_counts: torch.Tensor | None = None  # summed masking.mask_counts, on logging steps
    data_state: dict = field(default_factory=dict)  # the BatchStream position after this batch


def prepare_step(micro_batches: list[Batch], masker: Masker, cfg: Config, with_stats: bool = False) -> PreparedStep:
    micro, counts, stats = [], [0.0, 0.0, 0.0, 0.0], None
    for mb in micro_batches:
        inputs, labels = masker(mb.input_ids, mb.epochs, mb.indices)
        positions = labels.view(-1).ne(IGNORE).nonzero().squeeze(1)
        # no mask when nothing is padded: SDPA then takes its fastest (flash) kernels
        attn = mb.attention_mask if mb.tokens < mb.input_ids.numel() else None
        n, tokens = len(positions), mb.tokens
        flops = training_flops(cfg.model, tokens, n, cfg.data.seq_len)  # as roberta plan counts
        counts = [counts[0] + n, counts[1] + len(mb.indices), counts[2] + tokens, counts[3] + flops]
        micro.append((inputs, labels, positions, attn, mb.nsp_labels))
        if with_stats:  # realised masking, reported on logging steps
            c = mask_counts(mb.input_ids, inputs, labels, MASK_ID, SPECIAL_IDS)
            stats = c if stats is None else stats + c
    return PreparedStep(micro, counts, stats)


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


def launch_step(model, optimizer, prep: PreparedStep, dist: Dist, cfg: Config,
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
        inputs, labels, positions, attn, nsp = (None if x is None else to_device(x, device) for x in mb)
        with no_sync(model, skip=i < len(prep.micro) - 1):
            with autocast(device, cfg.train.precision):
                out = model(inputs, labels, attn, nsp, masked_positions=positions)
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


def train_step(model, optimizer, micro_batches: list[Batch], masker: Masker, dist: Dist, cfg: Config,
               with_stats: bool = False) -> dict:
    """prepare -> launch -> wait: one step, for callers without a loop to overlap (benchmarks)."""
    return launch_step(model, optimizer, prepare_step(micro_batches, masker, cfg, with_stats), dist, cfg).result()


def keep_saved_vocabulary(cfg: Config, saved: ModelConfig, explicit: set[str]) -> Config:
    """A resumed run keeps the vocabulary rows it was built with, when that is its only
    difference: one started before model.vocab_multiple existed (its rows = the tokenizer's)
    or with another multiple. Any other difference is left for the model-config check."""
    if {"model.vocab_size", "model.vocab_multiple"} & explicit:
        return cfg
    m = dataclasses.replace(cfg.model, vocab_size=saved.vocab_size, vocab_multiple=saved.vocab_multiple)
    return dataclasses.replace(cfg, model=m) if m == saved else cfg


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
    expected = data_tokenizer_fingerprint(data_dir, meta)
    if tokenizer_fingerprint(tok_dir) != expected:
        raise UserError(f"{tok_dir}: tokenizer differs from the one the data was prepared with "
                        f"(fingerprint {expected}); run `roberta prepare` again with the intended tokenizer")


# what a checkpoint fixes about the network; dropout, the sparse head and NSP stay the recipe's
ARCHITECTURE = ("vocab_size", "layers", "hidden", "heads", "ffn", "max_positions", "layer_norm_eps",
                "pad_token_id", "norm", "bias", "glu")


def init_from_config(cfg: Config, init_from: str, data_dir: str, meta: dict, explicit: set[str]) -> tuple[Config, set[str]]:
    """Continued pretraining: the architecture comes from the checkpoint (an explicit --set
    model.* still wins), the recipe from the preset; its vocabulary must be the data's."""
    ck = ckpt.resolve_checkpoint(init_from)
    saved = ckpt.load_config(ck).model
    if (ck / "tokenizer.json").is_file():
        same = tokenizer_fingerprint(ck) == data_tokenizer_fingerprint(data_dir, meta)
    else:
        same = saved.vocab_size == meta["vocab_size"]
    if not same or saved.vocab_size < meta["vocab_size"]:
        raise UserError(f"--checkpoint {init_from}: its vocabulary differs from the tokenizer {data_dir} was "
                        f"prepared with; run `roberta prepare --tokenizer {ck}` on your corpus and train on that")
    arch = {k: getattr(saved, k) for k in ARCHITECTURE if f"model.{k}" not in explicit}
    model = dataclasses.replace(cfg.model, **arch)
    longest = max_seq_len(model)
    if cfg.data.seq_len > longest:
        raise UserError(f"--checkpoint {init_from}: its position table holds sequences of up to {longest} tokens "
                        f"but data.seq_len is {cfg.data.seq_len}; prepare with --seq-len {longest} or less")
    return dataclasses.replace(cfg, model=model), explicit | {"model.vocab_size", "model.max_positions"}


def pretrain(data_dir: str, out: str, cfg: Config, explicit: set[str] | None = None,
             resume: bool = False, progress: bool = True, init_from: str | None = None) -> dict:
    """Train; returns the run's summary. SIGINT/SIGTERM during the run finish the step, write a
    checkpoint and raise roberta.interrupt.TrainingInterrupted (the handlers are restored after)."""
    dist = init_distributed(cfg.train.device, parse_duration(cfg.train.dist_timeout))
    try:
        with GracefulStop() as stop:
            try:
                summary = _pretrain(data_dir, Path(out), cfg, explicit or set(), resume, progress, dist, init_from, stop)
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


def _start_run_dir(out: Path, cfg: Config, resume: bool, dist: Dist) -> Path | None:
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
            out.mkdir(parents=True, exist_ok=True)
            ckpt.remove_partial(out)
            if latest is None:
                (out / "metrics.jsonl").unlink(missing_ok=True)
                (out / "config.json").write_text(cfg.to_json())
    latest, error = broadcast_object(answer, dist)
    if error:
        raise UserError(error)
    return Path(latest) if latest else None


def _pretrain(data_dir, out: Path, cfg: Config, explicit, resume, progress, dist: Dist, init_from,
              stop: GracefulStop | None = None) -> dict:
    meta = read_meta(data_dir)
    check_data(data_dir, meta)
    if "data.seq_len" not in explicit and meta.get("seq_len"):
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=int(meta["seq_len"])))
    if init_from:
        cfg, explicit = init_from_config(cfg, init_from, data_dir, meta, explicit)
    cfg = resolve_config(cfg, meta, explicit, dist)
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    if dist.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # only the few fp32 matmuls outside autocast
    tok_dir = Path(data_dir) / "tokenizer"
    train_split, valid_split = load_split(data_dir, "train", verify=True), load_split(data_dir, "valid", verify=True)
    plan = build_plan(train_split, cfg.data.format, cfg.data.seq_len, seed=t.seed)
    if len(plan) == 0:
        raise UserError(f"{data_dir}: no training sequences could be built")
    token_budget = batch_token_budget(train_split, cfg.data.format, t.batch_size, cfg.data.seq_len)
    accum = t.batch_size // (t.micro_batch_size * dist.world)
    stream = BatchStream(plan, t.batch_size, t.seed, token_budget=token_budget, min_draws=accum * dist.world,
                         multiple_of=dist.world)
    evals, eval_split = evaluation_set(data_dir, valid_split, train_split, cfg, meta["vocab_size"], dist.is_main)

    latest = _start_run_dir(out, cfg, resume, dist)
    if latest is not None:
        cfg = keep_saved_vocabulary(cfg, ckpt.load_config(latest).model, explicit)
    model = build_model(cfg.model, dist.device, seed=t.seed)
    if latest is None and init_from:
        init_ck = ckpt.resolve_checkpoint(init_from)
        # an NSP head the checkpoint lacks starts fresh; one the format does not train is left behind
        ckpt.load_state(model, ckpt.load_weights(init_ck), init_ck / "model.safetensors",
                        allow_missing=("nsp_head.",), allow_unexpected=("nsp_head.",))
    state, rng = TrainState(), None
    if latest is not None:
        saved = ckpt.load_config(latest)
        if saved.model != cfg.model:
            raise UserError(f"{latest}: was trained with a different model config; resume with the same "
                            "--preset/--set (and --checkpoint)")
        ckpt.load_state(model, ckpt.load_weights(latest), latest / "model.safetensors")
    if t.float8:  # model transforms in torchtitan's order: float8, checkpointing, compile, sharding
        enable_float8(model, dist.device)
    if t.activation_checkpointing:
        checkpoint_blocks(model)
    if t.compile:
        compile_model(model)
    ddp_model = wrap_model(model, dist, fsdp=t.fsdp)
    optimizer = build_optimizer(ddp_model, cfg.optim, t.lr)
    if latest is not None:
        opt_state, rng, st = ckpt.load_training_state(latest)
        load_full_state(ddp_model, optimizer, opt_state, dist)
        state = TrainState(**{k: v for k, v in st.items() if k in TrainState.__dataclass_fields__})
        stream.load_state_dict(state.data)
        if dist.is_main:
            truncate_metrics(out / "metrics.jsonl", state.step)
    masker = Masker(cfg, load_tokenizer(tok_dir).get_vocab())
    budget = Budget(cfg)
    if latest is not None and budget.done(state) and (done_before := completed_summary(out, state.step)):
        return done_before
    precision, why = resolve_precision(t.precision, dist.device)
    peak = PeakFlops(dist.device, t.peak_flops, bf16=precision == "bf16")
    n_params = count_parameters(model)
    if dist.is_main:
        print(f"model: {n_params / 1e6:.2f}M parameters ({cfg.model.layers}x{cfg.model.hidden}); "
              f"{len(plan):,} training sequences ({cfg.data.format}, seq_len {cfg.data.seq_len}); "
              f"batch {t.batch_size} = {t.micro_batch_size} x {accum} accumulation x {dist.world} rank(s); "
              f"peak lr {t.lr:g}; device {dist.device}" + (f"; resuming from {latest}" if latest else ""))
        print(f"precision: {precision} ({why})")
    log = RunLog(out, dist.is_main, progress, *budget.bar(), initial=budget.bar_position(state),
                 step=state.step, report_to=t.report_to, config=cfg.to_dict())

    def evaluate() -> dict:
        with autocast(dist.device, t.precision):
            r = mlm_loss(model, evals, dist.device)
        log.write({"step": state.step, "tokens": state.tokens, "eval_loss": r["mlm_loss"],
                   "eval_perplexity": r["perplexity"], "eval_tokens": r["tokens"], "eval_split": eval_split})
        return r

    def save() -> None:
        weights, opt_state = full_state(ddp_model, optimizer, dist)  # collectives: every rank
        rng = rng_state(dist)
        if dist.is_main:
            ckpt.save_checkpoint(out, state.step, model, cfg, tok_dir, trainer_state=dataclasses.asdict(state),
                                 rng=rng, keep=t.keep_checkpoints, weights=weights, optimizer_state=opt_state)

    bad_in_row, window_tokens, window_flops, window_time = 0, 0, 0.0, 0.0
    # a resumed run that is already complete reports its last logged step, not an empty record
    last_eval, last_saved, first_step = None, state.step, state.step
    record = last_record(out / "metrics.jsonl", "loss") if latest is not None and dist.is_main else {}
    elapsed0, t_start = state.elapsed, time.perf_counter()

    def clock() -> float:
        """Seconds in the loop, summed over resumes. Under a time budget the ranks take the
        slowest clock: they must agree on the lr and on which step is the last."""
        elapsed = elapsed0 + time.perf_counter() - t_start
        return max_over_ranks(elapsed, dist) if budget.max_time else elapsed

    def prepare(step: int) -> PreparedStep:
        """Global batch number step + 1, collated and masked on the host (called while the device
        still runs the step before it)."""
        draws = stream.next_batch()
        micro = [collate(train_split, plan, d) for d in shard(draws, dist.rank, dist.world, accum)]
        prep = prepare_step(micro, masker, cfg, with_stats=log_step(step))
        prep.data_state = stream.state_dict()
        return prep

    def log_step(step: int) -> bool:  # step: the steps done before this one
        return step == 0 or (step + 1) % t.log_interval == 0

    model.train()
    upcoming = prepare(state.step)
    # the dropout RNG is seeded or restored last, so that nothing before the first step draws from it
    if rng is None:
        seed_dropout(t.seed, dist.rank)
    else:
        set_rng_state(rng, dist, t.seed)
    while not budget.done(state):
        t0 = time.perf_counter()
        lr = lr_at(budget.progress(state), budget.warmup, t.lr)
        set_lr(optimizer, lr)
        log_now = log_step(state.step)
        pending = launch_step(ddp_model, optimizer, upcoming, dist, cfg, stop)
        state.data = upcoming.data_state
        upcoming = prepare(state.step + 1)  # on the host, overlapping the device's work
        r = pending.result()
        state.step += 1
        state.sequences += r["sequences"]
        state.tokens += r["tokens"]
        state.masked_tokens += r["masked"]
        state.flops += r["flops"]
        window_time += time.perf_counter() - t0
        window_tokens += r["tokens"]
        window_flops += r["flops"]
        state.elapsed = clock()
        if not r["finite"]:
            state.skipped_steps += 1
            bad_in_row += 1
            if bad_in_row >= t.max_bad_steps:
                raise UserError(f"the loss was not finite (NaN or inf) for {bad_in_row} steps in a row, up to "
                                f"step {state.step} (lr {lr:.3g}); those updates were skipped and the run stopped "
                                f"(train.max_bad_steps={t.max_bad_steps}). Lower train.lr, raise warmup or set "
                                f"optim.grad_clip=1.0, then --resume from the last checkpoint")
        else:
            bad_in_row = 0
        done = budget.done(state)
        if log_now or done:
            record = {"step": state.step, "sequences": state.sequences, "tokens": state.tokens,
                      "masked_tokens": state.masked_tokens, "flops": state.flops,
                      "loss": r["loss"], "loss_bits": r["loss"] / math.log(2), "nsp_loss": r["nsp_loss"],
                      "lr": lr, "grad_norm": r["grad_norm"], "tokens_per_s": window_tokens / window_time,
                      "mfu": peak.mfu(window_flops / window_time / dist.world) if dist.is_main else None, "elapsed": state.elapsed,
                      "skipped_steps": state.skipped_steps,
                      **{k: r[k] for k in ("mask_rate", "mask_share", "random_share", "keep_share") if k in r}}
            window_tokens, window_flops, window_time = 0, 0.0, 0.0
            log.write(record)
        log.progress(budget.bar_position(state), loss=f"{r['loss']:.3f}", tok_s=f"{record.get('tokens_per_s', 0):.0f}")
        if state.step % t.eval_interval == 0 or done:
            last_eval = evaluate()
        if state.step % t.checkpoint_interval == 0 or done:
            state.elapsed = clock()
            save()
            last_saved = state.step
        if r["stop"] and not done:  # a signal on some rank; every rank saw it in this step's all-reduce
            if last_saved != state.step:
                save()
            log.close()
            raise TrainingInterrupted((stop and stop.signum) or signal.SIGTERM, state.step,
                                      str(ckpt.latest_checkpoint(out)) if dist.is_main else None)
        state.elapsed = clock()
    if last_eval is None:  # a resumed run that was already complete
        last_eval = evaluate()
    if last_saved != state.step:
        save()
    log.close()
    summary = {**record, "step": state.step, "tokens": state.tokens, "sequences": state.sequences,
               "masked_tokens": state.masked_tokens, "flops": state.flops, "elapsed": state.elapsed,
               "final_lr": lr_at(budget.progress(state), budget.warmup, t.lr),
               "parameters": n_params, "peak_flops": peak.value, "world_size": dist.world,
               "skipped_steps": state.skipped_steps, "already_complete": latest is not None and state.step == first_step,
               "eval_loss": last_eval["mlm_loss"] if last_eval else None,
               "eval_perplexity": last_eval["perplexity"] if last_eval else None, "eval_split": eval_split,
               "checkpoint": str(ckpt.latest_checkpoint(out)) if dist.is_main else None}
    if dist.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
