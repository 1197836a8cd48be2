"""`roberta pretrain`: the training loop, one code path from one CPU to many GPUs.

    for each step:  global batch -> this rank's micro-batches -> mask -> forward/backward
                    (loss normalised by the masked tokens of the whole global batch) -> AdamW
                    -> log, evaluate, checkpoint
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from roberta import checkpoint as ckpt
from roberta.config import Config, parse_duration
from roberta.data.formats import NSP_FORMATS, batch_token_budget, build_plan
from roberta.data.loader import BatchStream, collate, shard
from roberta.data.prepare import load_split, read_meta
from roberta.distributed import Dist, all_reduce_sum, init_distributed, no_sync, shutdown, wrap_model
from roberta.errors import UserError
from roberta.evaluate import eval_batches, mlm_loss
from roberta.masking import mask_counts, mask_tokens, masking_stats, sequence_keys, word_start_table
from roberta.model import build_model, count_parameters, max_seq_len, training_flops
from roberta.optim import build_optimizer, lr_at, scaled_lr, set_lr
from roberta.tokenizer import MASK_ID, SPECIAL_IDS, load_tokenizer, tokenizer_hash

GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


@dataclass
class TrainState:
    step: int = 0
    sequences: int = 0
    tokens: int = 0  # real (non-pad) tokens seen: the paper's B*L*S
    masked_tokens: int = 0
    flops: float = 0.0
    elapsed: float = 0.0  # training seconds, summed over resumes
    skipped_steps: int = 0  # non-finite losses
    data: dict = field(default_factory=dict)


class Masker:
    """Masks a batch as the config says: dynamic (fresh per epoch) or static (epoch % dupe_factor)."""

    def __init__(self, cfg: Config, vocab: dict[str, int]):
        self.m, self.seed = cfg.masking, cfg.train.seed
        # random replacements come from the tokenizer's ids, even if model.vocab_size pads beyond them
        self.vocab_size = min(cfg.model.vocab_size, max(vocab.values()) + 1) if vocab else cfg.model.vocab_size
        self.word_start = word_start_table(vocab, self.vocab_size) if self.m.whole_word else None

    def __call__(self, input_ids: torch.Tensor, epochs: torch.Tensor, indices: torch.Tensor):
        if self.m.kind == "static":
            epochs = epochs % self.m.dupe_factor
        keys = sequence_keys(self.seed, epochs, indices)
        return mask_tokens(input_ids, vocab_size=self.vocab_size, mask_token_id=MASK_ID,
                           special_token_ids=SPECIAL_IDS, mask_prob=self.m.mask_prob,
                           mask_token_prob=self.m.mask_token_prob, random_token_prob=self.m.random_token_prob,
                           exact_count=self.m.exact_count, seq_keys=keys, word_start=self.word_start)


class Budget:
    """Which budget ends the run and how far along it is: tokens or time when set, else steps."""

    def __init__(self, cfg: Config):
        t = cfg.train
        self.max_steps, self.max_tokens = t.max_steps, t.max_tokens
        self.max_time = parse_duration(t.max_time) if t.max_time else 0.0
        steps_est = self.max_steps
        if self.max_tokens:
            steps_est = max(1, math.ceil(self.max_tokens / (t.batch_size * cfg.data.seq_len)))
        self.warmup = (t.warmup_steps / steps_est) if (t.warmup_steps and not self.max_time) else t.warmup_fraction
        self.warmup = min(self.warmup, 0.999)
        self.steps_estimate = steps_est

    def progress(self, s: TrainState) -> float:
        if self.max_tokens or self.max_time:
            p = [s.tokens / self.max_tokens] if self.max_tokens else []
            p += [s.elapsed / self.max_time] if self.max_time else []
            return max(p)
        return s.step / self.max_steps


def resolve_config(cfg: Config, meta: dict, explicit: set[str], dist: Dist) -> Config:
    """Fill in what comes from the data and the hardware; reject impossible combinations."""
    m, t = cfg.model, cfg.train
    if "model.vocab_size" not in explicit:
        m = dataclasses.replace(m, vocab_size=meta["vocab_size"])
    need = cfg.data.seq_len + m.pad_token_id + 1
    if "model.max_positions" in explicit:
        if m.max_positions < need:
            raise UserError(f"data.seq_len={cfg.data.seq_len} needs model.max_positions >= {need} "
                            f"(seq_len + padding_idx + 1); it is {m.max_positions}")
    else:
        m = dataclasses.replace(m, max_positions=max(need, m.max_positions if "model" in explicit else need))
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


def measure_peak_flops(device: torch.device) -> float:
    """Best of several warmed-up matmuls (fp32 on CPU, bf16 on GPU), or a table for known GPUs."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return peak
    n = 2048 if device.type == "cpu" else 8192
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(6):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train_step(model, optimizer, micro_batches, masker: Masker, dist: Dist, cfg: Config) -> dict:
    """One optimizer step over this rank's micro-batches; the loss is the sum over the global
    batch's masked tokens divided by their count (not an average of micro-batch means)."""
    masked, mask_sums = [], torch.zeros(4, dtype=torch.int64)
    for mb in micro_batches:
        inputs, labels = masker(mb.input_ids, mb.epochs, mb.indices)
        mask_sums += mask_counts(mb.input_ids, inputs, labels, MASK_ID, SPECIAL_IDS)  # on the CPU: no sync
        masked.append((mb, inputs.to(dist.device), labels.to(dist.device)))
    counts = torch.cat([mask_sums, torch.tensor([sum(len(mb.indices) for mb in micro_batches)])])
    *mask_sums, n_seqs = all_reduce_sum(counts.to(dist.device, torch.float64), dist).tolist()
    n_masked = mask_sums[1]  # selected tokens of the whole global batch
    use_bf16 = dist.device.type == "cuda"
    loss_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
    nsp_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
    for i, (mb, inputs, labels) in enumerate(masked):
        with no_sync(model, skip=i < len(masked) - 1), \
                torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(inputs, labels, mb.attention_mask.to(dist.device),
                        None if mb.nsp_labels is None else mb.nsp_labels.to(dist.device))
            # DDP averages gradients over ranks; multiply by world so the sum is over the global batch
            loss = out["mlm_loss_sum"] * (dist.world / max(n_masked, 1))
            if "nsp_loss_sum" in out:
                loss = loss + out["nsp_loss_sum"] * (dist.world / max(n_seqs, 1))
                nsp_sum += out["nsp_loss_sum"].detach().double()
            loss.backward()
        loss_sum += out["mlm_loss_sum"].detach().double()
    sums = all_reduce_sum(torch.stack([loss_sum, nsp_sum]), dist)
    mlm = float(sums[0]) / max(n_masked, 1)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        model.parameters(), cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
    finite = math.isfinite(mlm) and bool(torch.isfinite(grad_norm))
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    stats = masking_stats(mask_sums)  # realised over the global batch
    return {"loss": mlm, "nsp_loss": float(sums[1]) / max(n_seqs, 1) if cfg.model.nsp_head else None,
            "grad_norm": float(grad_norm), "finite": finite, "masked": int(n_masked), "sequences": int(n_seqs),
            **stats}


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def check_data(data_dir: str, meta: dict) -> None:
    tok_dir = Path(data_dir) / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        raise UserError(f"{data_dir}: prepared data has no tokenizer/ copy; run `roberta prepare` again")
    if tokenizer_hash(tok_dir) != meta["tokenizer_hash"]:
        raise UserError(f"{tok_dir}: tokenizer differs from the one the data was prepared with "
                        f"(hash {meta['tokenizer_hash']}); run `roberta prepare` again with the intended tokenizer")


# what a checkpoint fixes about the network; dropout, the sparse head and NSP stay the recipe's
ARCHITECTURE = ("vocab_size", "layers", "hidden", "heads", "ffn", "max_positions", "layer_norm_eps",
                "pad_token_id", "norm", "bias", "glu")


def init_from_config(cfg: Config, init_from: str, data_dir: str, meta: dict, explicit: set[str]) -> tuple[Config, set[str]]:
    """Continued pretraining: the architecture comes from the checkpoint (an explicit --set
    model.* still wins), the recipe from the preset; its vocabulary must be the data's."""
    ck = ckpt.resolve_checkpoint(init_from)
    saved = ckpt.load_config(ck).model
    if (ck / "tokenizer.json").is_file():
        same = load_tokenizer(ck).get_vocab() == load_tokenizer(Path(data_dir) / "tokenizer").get_vocab()
    else:
        same = saved.vocab_size == meta["vocab_size"]
    if not same or saved.vocab_size < meta["vocab_size"]:
        raise UserError(f"--init-from {init_from}: its vocabulary differs from the tokenizer {data_dir} was "
                        f"prepared with; run `roberta prepare --tokenizer {ck}` on your corpus and train on that")
    arch = {k: getattr(saved, k) for k in ARCHITECTURE if f"model.{k}" not in explicit}
    model = dataclasses.replace(cfg.model, **arch)
    longest = max_seq_len(model)
    if cfg.data.seq_len > longest:
        raise UserError(f"--init-from {init_from}: its position table holds sequences of up to {longest} tokens "
                        f"but data.seq_len is {cfg.data.seq_len}; prepare with --seq-len {longest} or less")
    return dataclasses.replace(cfg, model=model), explicit | {"model.vocab_size", "model.max_positions"}


def pretrain(data_dir: str, out: str, cfg: Config, explicit: set[str] | None = None,
             resume: bool = False, progress: bool = True, init_from: str | None = None) -> dict:
    dist = init_distributed(cfg.train.device)
    try:
        return _pretrain(data_dir, Path(out), cfg, explicit or set(), resume, progress, dist, init_from)
    finally:
        shutdown(dist)


def _pretrain(data_dir, out: Path, cfg: Config, explicit, resume, progress, dist: Dist, init_from) -> dict:
    meta = read_meta(data_dir)
    check_data(data_dir, meta)
    if "data.seq_len" not in explicit and meta.get("seq_len"):
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=int(meta["seq_len"])))
    if init_from:
        cfg, explicit = init_from_config(cfg, init_from, data_dir, meta, explicit)
    cfg = resolve_config(cfg, meta, explicit, dist)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    t = cfg.train
    tok_dir = Path(data_dir) / "tokenizer"
    train_split, valid_split = load_split(data_dir, "train", verify=True), load_split(data_dir, "valid", verify=True)
    plan = build_plan(train_split, cfg.data.format, cfg.data.seq_len, seed=t.seed)
    if len(plan) == 0:
        raise UserError(f"{data_dir}: no training sequences could be built")
    token_budget = batch_token_budget(train_split, cfg.data.format, t.batch_size, cfg.data.seq_len)
    accum = t.batch_size // (t.micro_batch_size * dist.world)
    stream = BatchStream(plan, t.batch_size, t.seed, token_budget=token_budget, min_draws=accum * dist.world,
                         multiple_of=dist.world)
    evals = eval_batches(valid_split if valid_split.n_docs else train_split, cfg.data.seq_len,
                         cfg.model.vocab_size, t.eval_sequences)

    model = build_model(cfg.model, dist.device, seed=t.seed)
    state = TrainState()
    latest = ckpt.latest_checkpoint(out) if resume else None
    if resume and latest is None and dist.is_main:
        print(f"note: --resume found no checkpoint in {out}; starting from scratch")
    if latest is None and init_from:
        init_ck = ckpt.resolve_checkpoint(init_from)
        # an NSP head the checkpoint lacks starts fresh; one the format does not train is left behind
        ckpt.load_state(model, ckpt.load_weights(init_ck), init_ck / "model.safetensors",
                        allow_missing=("nsp_head.",), allow_unexpected=("nsp_head.",))
    optimizer = build_optimizer(model, cfg.optim, t.lr)
    if latest is not None:
        saved = ckpt.load_config(latest)
        if saved.model != cfg.model:
            raise UserError(f"{latest}: was trained with a different model config; resume with the same --preset/--set (and --init-from)")
        model.load_state_dict(ckpt.load_weights(latest))
        opt_state, rng, st = ckpt.load_training_state(latest)
        optimizer.load_state_dict(opt_state)
        state = TrainState(**{k: v for k, v in st.items() if k in TrainState.__dataclass_fields__})
        stream.load_state_dict(state.data)
        set_rng_state(rng, dist.device)
    elif dist.is_main:
        if out.exists() and any(out.glob("checkpoint-*")):
            raise UserError(f"{out}: already holds checkpoints; pass --resume to continue, or choose a new --out")
        out.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl",):
            (out / name).unlink(missing_ok=True)
        (out / "config.json").write_text(cfg.to_json())
    ddp_model = wrap_model(model, dist)
    masker = Masker(cfg, load_tokenizer(tok_dir).get_vocab())
    budget = Budget(cfg)
    peak = t.peak_flops or measure_peak_flops(dist.device)
    n_params = count_parameters(model)
    if dist.is_main:
        print(f"model: {n_params / 1e6:.2f}M parameters ({cfg.model.layers}x{cfg.model.hidden}); "
              f"{len(plan):,} training sequences ({cfg.data.format}, seq_len {cfg.data.seq_len}); "
              f"batch {t.batch_size} = {t.micro_batch_size} x {accum} accumulation x {dist.world} rank(s); "
              f"peak lr {t.lr:g}; device {dist.device}")
    metrics_path = out / "metrics.jsonl"
    bar = tqdm(total=budget.steps_estimate if not budget.max_time else None, initial=state.step,
               desc="pretrain", disable=not (progress and dist.is_main), dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30)
    bad_in_row, window_tokens, window_flops, t_window = 0, 0, 0.0, time.perf_counter()
    last_eval, record = None, {}
    model.train()
    while budget.progress(state) < 1.0:
        t0 = time.perf_counter()
        draws = stream.next_batch()
        micro = [collate(train_split, plan, d) for d in shard(draws, dist.rank, dist.world, accum)]
        lr = lr_at(budget.progress(state), budget.warmup, t.lr)
        set_lr(optimizer, lr)
        r = train_step(ddp_model, optimizer, micro, masker, dist, cfg)
        tokens = int(all_reduce_sum(torch.tensor([sum(mb.tokens for mb in micro)], device=dist.device), dist))
        state.step += 1
        state.sequences += r["sequences"]
        state.tokens += tokens
        state.masked_tokens += r["masked"]
        step_flops = training_flops(cfg.model, tokens, r["masked"], cfg.data.seq_len)
        state.flops += step_flops
        state.elapsed += time.perf_counter() - t0
        state.data = stream.state_dict()
        window_tokens += tokens
        window_flops += step_flops
        if not r["finite"]:
            state.skipped_steps += 1
            bad_in_row += 1
            if bad_in_row >= t.max_bad_steps:
                raise UserError(f"{bad_in_row} non-finite losses in a row at step {state.step}; "
                                "lower train.lr or enable optim.grad_clip")
        else:
            bad_in_row = 0
        bar.update(1)
        if state.step % t.log_interval == 0 or budget.progress(state) >= 1.0 or state.step == 1:
            dt = time.perf_counter() - t_window
            record = {"step": state.step, "sequences": state.sequences, "tokens": state.tokens,
                      "masked_tokens": state.masked_tokens, "flops": state.flops,
                      "loss": r["loss"], "loss_bits": r["loss"] / math.log(2), "nsp_loss": r["nsp_loss"],
                      "lr": lr, "grad_norm": r["grad_norm"], "tokens_per_s": window_tokens / dt,
                      "mfu": window_flops / dt / peak / dist.world, "elapsed": state.elapsed,
                      "skipped_steps": state.skipped_steps,
                      **{k: r[k] for k in ("mask_rate", "mask_share", "random_share", "keep_share")}}
            window_tokens, window_flops, t_window = 0, 0.0, time.perf_counter()
            bar.set_postfix(loss=f"{r['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
            if dist.is_main:
                _log(metrics_path, record)
        if state.step % t.eval_interval == 0 or budget.progress(state) >= 1.0:
            last_eval = mlm_loss(model, evals, dist.device)
            if dist.is_main:
                _log(metrics_path, {"step": state.step, "tokens": state.tokens, "eval_loss": last_eval["mlm_loss"],
                                    "eval_perplexity": last_eval["perplexity"], "eval_tokens": last_eval["tokens"]})
            t_window = time.perf_counter()
        if state.step % t.checkpoint_interval == 0 or budget.progress(state) >= 1.0:
            if dist.is_main:
                ckpt.save_checkpoint(out, state.step, model, cfg, tok_dir, optimizer,
                                     dataclasses.asdict(state), rng_state(dist.device), keep=t.keep_checkpoints)
            t_window = time.perf_counter()
    bar.close()
    summary = {**record, "step": state.step, "tokens": state.tokens, "sequences": state.sequences,
               "masked_tokens": state.masked_tokens, "flops": state.flops, "elapsed": state.elapsed,
               "parameters": n_params, "peak_flops": peak, "skipped_steps": state.skipped_steps,
               "eval_loss": last_eval["mlm_loss"] if last_eval else None,
               "eval_perplexity": last_eval["perplexity"] if last_eval else None,
               "checkpoint": str(ckpt.latest_checkpoint(out)) if dist.is_main else None}
    if dist.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
