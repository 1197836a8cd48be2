"""`roberta finetune`: the paper's fine-tuning protocol, on GLUE or any labelled data.

    checkpoint -> RobertaClassifier (<s> -> dense -> tanh -> dropout -> projection)
    for lr in the grid, for each seed:
        AdamW (weight decay 0.1, betas 0.9/0.98, eps 1e-6), 6% warmup then linear decay,
        evaluate on dev after every epoch, keep the best epoch
    report the median over seeds at the best lr (Liu et al. 2019 report medians over runs)

`from_scratch` trains the same architecture from random initialisation: the baseline that shows
what pretraining bought. Inputs longer than the model are truncated, or with long="chunk" split
into chunks whose predictions (class probabilities or regression values) are averaged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from roberta.training import checkpoint as ckpt
from roberta.config import OptimConfig
from roberta.training.distributed import pick_device
from roberta.training.parallelize import autocast
from roberta.errors import UserError
from roberta.downstream.batches import Encoded, encode, forward, length_batches
from roberta.downstream.metrics import REGRESSION_METRICS, all_metrics
from roberta.model import RobertaClassifier, build_classifier, max_seq_len
from roberta.training.optim import build_optimizer, lr_at, set_lr
from roberta.data.loader import pad_rows
from roberta.downstream.predict import save_finetuned  # the artifact's format lives with its reader
from roberta.downstream.tasks import Example, TaskData, find_glue_tasks, glue_task, targets
from roberta.training.precision import resolve_precision
from roberta.tokenizer import BOS_ID, EOS_ID, load_tokenizer

PAPER_LR_GRID = (1e-5, 2e-5, 3e-5)
SMALL_LR_GRID = (3e-4, 1e-4, 5e-5, 3e-5)  # Turc et al. 2019's grid for BERT-Tiny..Medium
SMALL_MODEL_HIDDEN = 512  # at or below this width a checkpoint gets SMALL_LR_GRID by default
SUBSAMPLE_SEED = 0  # one fixed subset, so pretrained and from-scratch runs see the same examples


@dataclass
class FinetuneConfig:
    lrs: tuple[float, ...] = ()  # () = default_lr_grid(the checkpoint's model config)
    batch_size: int = 32  # examples per optimizer step
    epochs: int = 10  # passes over the training set; the best dev epoch is reported
    seeds: int = 1  # runs per lr with different seeds; the median is reported (the paper: 5)
    warmup_fraction: float = 0.06  # linear warmup over this share of the steps, then linear decay
    weight_decay: float = 0.1  # AdamW decoupled weight decay (the paper's GLUE setting)
    dropout: float = 0.1  # the paper's; replaces whatever the checkpoint was pretrained with
    max_len: int = 0  # tokens per input incl. <s> </s>; 0 = all the checkpoint's positions
    long: str = "truncate"  # "truncate" | "chunk": cut long inputs, or score overlapping windows and average
    max_train: int = 0  # 0 = all; else a fixed random subsample
    max_dev: int = 0  # 0 = all dev examples; else a fixed random subsample
    from_scratch: bool = False  # random init instead of the checkpoint's weights (a baseline)
    patience: int = 0  # stop a run after this many epochs without a dev improvement; 0 = never
    save_model: bool = True  # write OUT/model/ (the best run at its best epoch)
    eval_batch_size: int = 64  # examples per forward when scoring dev
    threads: int = 0  # torch intra-op threads; 0 = torch's default (on a shared CPU, 1 can beat 2 several times)
    device: str = "auto"  # "auto" (a GPU when there is one) | "cpu" | "cuda"
    precision: str = "auto"  # "auto" | "fp32" | "bf16" (roberta.training.precision): bf16 on a GPU and on a CPU that has it
    progress: bool = True  # a bar per epoch on stderr (on a terminal); False: --quiet


@torch.no_grad()
def predict(model: RobertaClassifier, data: Encoded, batch_size: int, precision: str = "auto") -> np.ndarray:
    """(n_examples, n_out): class probabilities, or regression values (n_out = 1), averaged over
    each example's chunks."""
    model.eval()
    n_out = model.classifier.out_proj.out_features
    per_input = np.zeros((len(data.ids), n_out))
    for idx in length_batches(data.lengths, batch_size, None):
        logits = forward(model, data.ids, idx, precision)
        per_input[idx] = (logits.softmax(-1) if n_out > 1 else logits).cpu().numpy()
    sums = np.zeros((len(data.y), n_out))
    np.add.at(sums, data.owner, per_input)
    return sums / np.bincount(data.owner, minlength=len(data.y))[:, None]


def score(model: RobertaClassifier, data: Encoded, batch_size: int, precision: str = "auto") -> dict[str, float]:
    return scores_of(predict(model, data, batch_size, precision), data.y)


def scores_of(out: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Every metric for model outputs (n, n_out) (probabilities, or values when n_out = 1)."""
    regression = out.shape[1] == 1
    pred = out[:, 0] if regression else out.argmax(1)
    return all_metrics(pred, y, regression, out.shape[1])


def default_lr_grid(model_cfg) -> tuple[float, ...]:
    """The lr grid a checkpoint gets when none is given: the paper's 1e-5..3e-5 was tuned for base
    and large; small encoders want 10x more (a `tiny` checkpoint at 2e-5 scored SST-2 64.3 where
    3e-4 gave ~79), so models up to SMALL_MODEL_HIDDEN wide get Turc et al.'s grid."""
    return SMALL_LR_GRID if model_cfg.hidden <= SMALL_MODEL_HIDDEN else PAPER_LR_GRID


def best_epoch(values: list[float]) -> int:
    """1-based epoch of the highest dev score (the first, on ties; NaN never wins)."""
    return int(np.argmax(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-np.inf))) + 1


def subsample(examples: list[Example], n: int) -> list[Example]:
    if not n or n >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng(SUBSAMPLE_SEED).choice(len(examples), n, replace=False))
    return [examples[i] for i in keep]


@dataclass
class Setup:
    """Everything a fine-tuning run needs, built once for all learning rates and seeds."""
    task: TaskData
    train: Encoded
    dev: Encoded
    new_model: Callable[[int], RobertaClassifier]
    checkpoint: Path
    max_len: int
    device: torch.device
    precision: str = "fp32"  # resolved: "fp32" | "bf16"
    precision_why: str = ""
    model_cfg: object = None  # the ModelConfig the classifier is built with (dropout replaced)


def setup(task: TaskData, checkpoint: str | Path, cfg: FinetuneConfig) -> Setup:
    ck = ckpt.resolve_checkpoint(checkpoint)
    model_cfg = ckpt.load_config(ck).model
    model_max = max_seq_len(model_cfg)
    if cfg.max_len > model_max:
        raise UserError(f"--seq-len {cfg.max_len}: {ck} was built for at most {model_max} tokens")
    if cfg.long not in ("truncate", "chunk"):
        raise UserError(f"--long {cfg.long}: choose truncate or chunk")
    if task.regression != (task.metric in REGRESSION_METRICS) or (task.metric == "f1" and len(task.labels) != 2):
        raise UserError(f"metric {task.metric} does not fit a {'regression' if task.regression else f'{len(task.labels)}-class'} task")
    max_len = cfg.max_len or model_max
    device = pick_device(cfg.device, option=f"--device {cfg.device}")
    ckpt.check_tokenizer_fits(ck, model_cfg.vocab_size)
    tok = load_tokenizer(ck)
    train_ex, dev_ex = subsample(task.train, cfg.max_train), subsample(task.dev, cfg.max_dev)
    train = encode(tok, train_ex, targets(train_ex, task.labels, task.label_source), max_len, cfg.long)
    dev = encode(tok, dev_ex, targets(dev_ex, task.labels, task.label_source), max_len, cfg.long)

    model_cfg = dataclasses.replace(model_cfg, dropout=cfg.dropout, attention_dropout=cfg.dropout)
    encoder = None
    if not cfg.from_scratch:
        encoder = {k.removeprefix("roberta."): v for k, v in ckpt.load_weights(ck).items() if k.startswith("roberta.")}

    def new_model(seed: int) -> RobertaClassifier:
        model = build_classifier(model_cfg, max(len(task.labels), 1), device, seed=seed)
        if encoder is not None:
            try:
                model.roberta.load_state_dict(encoder)
            except RuntimeError as e:
                raise UserError(f"{ck / 'model.safetensors'}: encoder weights do not fit config.json ({e})") from None
        return model

    precision, why = resolve_precision(cfg.precision, device)
    return Setup(task, train, dev, new_model, ck, max_len, device, precision, why, model_cfg)


def train_seed(s: Setup, cfg: FinetuneConfig, lr: float, seed: int, log: Callable[[str], None]) -> dict:
    """Fine-tune one model; evaluate on dev after every epoch. -> per-epoch metrics + the best."""
    model = s.new_model(seed)
    optimizer = build_optimizer(model, OptimConfig(weight_decay=cfg.weight_decay), lr)
    rng = np.random.default_rng(seed)
    total_steps = cfg.epochs * math.ceil(len(s.train.ids) / cfg.batch_size)
    lengths, step, history = s.train.lengths, 0, []
    best_value, best_state, best_outputs = -math.inf, None, None
    for epoch in range(1, cfg.epochs + 1):
        t0, loss_sum = time.perf_counter(), 0.0
        model.train()
        batches = length_batches(lengths, cfg.batch_size, rng)
        for idx in tqdm(batches, desc=f"lr {lr:g} seed {seed} epoch {epoch}/{cfg.epochs}", unit="step", leave=False,
                        disable=None if cfg.progress else True):
            set_lr(optimizer, lr_at(step / total_steps, cfg.warmup_fraction, lr))
            logits = forward(model, s.train.ids, idx, s.precision)
            y = torch.from_numpy(s.train.y[s.train.owner[idx]]).to(s.device)
            loss = F.mse_loss(logits[:, 0], y) if s.task.regression else F.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            step += 1
        outputs = predict(model, s.dev, cfg.eval_batch_size, s.precision)
        scores = scores_of(outputs, s.dev.y)
        if scores[s.task.metric] > best_value:  # NaN never counts as an improvement
            best_value, best_outputs = scores[s.task.metric], outputs
            if cfg.save_model:  # a CPU copy of the weights at the best epoch so far
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        loss_sum = float(loss_sum)  # one host sync per epoch, not per step
        history.append({"epoch": epoch, "train_loss": loss_sum / len(batches), **scores,
                        "seconds": time.perf_counter() - t0})
        log(f"lr {lr:g} seed {seed} epoch {epoch}/{cfg.epochs}: train loss {loss_sum / len(batches):.4f}, "
            f"dev {' '.join(f'{k} {100 * v:.2f}' for k, v in scores.items())} ({time.perf_counter() - t0:.0f}s)")
        best = best_epoch([h[s.task.metric] for h in history])
        if cfg.patience and epoch - best >= cfg.patience:
            log(f"lr {lr:g} seed {seed}: early stop after epoch {epoch} ({cfg.patience} epoch(s) without a dev improvement)")
            break
    best = best_epoch([h[s.task.metric] for h in history])
    return {"lr": lr, "seed": seed, "value": history[best - 1][s.task.metric], "best_epoch": best,
            "metrics": history[best - 1], "history": history, "state": best_state,
            "dev_outputs": best_outputs if best_outputs is not None else outputs}


def finetune(task: TaskData, checkpoint: str | Path, out: str | Path, cfg: FinetuneConfig,
             log: Callable[[str], None] = print) -> dict:
    """Run the grid x seeds, write OUT/metrics.json (+ labels.json, runs.jsonl) and return the summary."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    s = setup(task, checkpoint, cfg)
    if not cfg.lrs:
        cfg = dataclasses.replace(cfg, lrs=default_lr_grid(s.model_cfg))
        log(f"lr grid {', '.join(f'{lr:g}' for lr in cfg.lrs)} (the default for a {s.model_cfg.layers} x "
            f"{s.model_cfg.hidden} model; choose with --lr / --lr-grid)")
    n_train, n_dev = len(s.train.y), len(s.dev.y)
    log(f"{task.name}: {n_train:,} train inputs -> {len(s.train.ids):,} sequences, {n_dev:,} dev examples "
        f"-> {len(s.dev.ids):,} sequences (max {s.max_len} tokens, {cfg.long}); mean train length "
        f"{s.train.lengths.mean():.1f} tokens; {s.device}, {s.precision} ({s.precision_why}); {'from scratch (random init)' if cfg.from_scratch else f'from {s.checkpoint}'}")
    if cfg.from_scratch and len(cfg.lrs) == 1:
        log(f"note: one lr ({cfg.lrs[0]:g}) for a from-scratch baseline; a random init usually wants a higher lr "
            "than a pretrained model, so tune each arm over its own --lr-grid (`finetune --baseline scratch` does; docs/downstream.md)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    with open(out / "runs.jsonl", "w") as f:  # one line per finished run, so a long grid shows progress
        for lr in cfg.lrs:
            for seed in range(cfg.seeds):
                r = train_seed(s, cfg, lr, seed, log)
                runs.append(r)
                _keep_best_state(runs, lr)
                f.write(json.dumps({k: r[k] for k in ("lr", "seed", "value", "best_epoch", "history")}) + "\n")
                f.flush()
    medians = {lr: float(np.median([r["value"] for r in runs if r["lr"] == lr])) for lr in cfg.lrs}
    best_lr = max(cfg.lrs, key=lambda lr: medians[lr])
    chosen = [r for r in runs if r["lr"] == best_lr]
    summary = {
        "task": task.name, "metric": task.metric, "value": medians[best_lr],
        "per_seed": [r["value"] for r in chosen], "best_epoch": [r["best_epoch"] for r in chosen],
        "lr": best_lr, "lr_grid": {f"{lr:g}": medians[lr] for lr in cfg.lrs},
        "per_seed_metrics": [{k: v for k, v in r["metrics"].items() if k not in ("epoch", "seconds")} for r in chosen],
        "checkpoint": str(s.checkpoint), "from_scratch": cfg.from_scratch,
        "train_examples": n_train, "dev_examples": n_dev, "labels": list(task.labels),
        "config": dataclasses.asdict(cfg),
    }
    if len(cfg.lrs) > 1:
        log(f"lr {best_lr:g} won: median dev {task.metric} by lr "
            + ", ".join(f"{lr:g} {100 * medians[lr]:.2f}" for lr in cfg.lrs))
    best_run = max(chosen, key=lambda r: r["value"] if r["value"] == r["value"] else -math.inf)
    if cfg.save_model and best_run["state"] is not None:
        save_finetuned(out / "model", best_run["state"], s, cfg, {
            "task": task.name, "metric": task.metric, "lr": best_lr, "seed": best_run["seed"],
            "epoch": best_run["best_epoch"], "value": best_run["value"], "checkpoint": str(s.checkpoint),
            "from_scratch": cfg.from_scratch, "pairs": task.pairs})
        summary["model"] = {"path": str(out / "model"), "seed": best_run["seed"], "epoch": best_run["best_epoch"],
                            "value": best_run["value"]}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    (out / "labels.json").write_text(json.dumps({"labels": list(task.labels), "regression": task.regression}))
    # the chosen lr's dev outputs per seed: what the paired comparison (roberta.downstream.compare) resamples
    (out / "dev_outputs.json").write_text(json.dumps({
        "metric": task.metric, "gold": s.dev.y.tolist(), "seeds": [r["seed"] for r in chosen],
        "outputs": [np.asarray(r["dev_outputs"]).round(6).tolist() for r in chosen]}))
    return summary


def _keep_best_state(runs: list[dict], lr: float) -> None:
    """Hold at most one set of weights per lr (its best seed so far), not one per run."""
    same = [r for r in runs if r["lr"] == lr and r["state"] is not None]
    keep = max(same, key=lambda r: r["value"] if r["value"] == r["value"] else -math.inf, default=None)
    for r in same:
        if r is not keep:
            r["state"] = None


def evaluate_glue(checkpoint: str | Path, glue_dir: str | Path, out: str | Path, cfg: FinetuneConfig,
                  log: Callable[[str], None] = print) -> dict[str, dict]:
    """Fine-tune on every GLUE task present under glue_dir; -> {task: summary}."""
    return {name: finetune(glue_task(name, glue_dir), checkpoint, Path(out) / name, cfg, log)
            for name in find_glue_tasks(glue_dir)}


def glue_table(results: dict[str, dict]) -> tuple[str, float]:
    """The paper's layout: one column per task, then the average (values x 100)."""
    names = list(results)
    values = [100 * results[n]["value"] for n in names]
    average = float(np.mean(values))
    cols = [(n, results[n]["metric"], f"{v:.1f}") for n, v in zip(names, values)] + [("avg", "", f"{average:.1f}")]
    width = max(8, *(len(c) + 2 for col in cols for c in col))
    rows = ["".join(c[i].rjust(width) for c in cols) for i in range(3)]
    return "\n".join(rows), average
