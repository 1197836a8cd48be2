"""`roberta finetune`: the paper's fine-tuning protocol, on GLUE or any labelled data.

    checkpoint -> RobertaClassifier (<s> -> dense -> tanh -> dropout -> projection)
    for lr in the grid, for each seed:
        AdamW (weight decay 0.1, betas 0.9/0.98, eps 1e-6), 6% warmup then linear decay,
        evaluate on dev after every epoch, keep the best epoch
    report the median over seeds at the best lr (Liu et al. 2019 report medians over runs)

Every finished (lr, seed) run is a line of OUT/runs.jsonl (with its dev outputs, and the best
weights per lr in OUT/best-per-lr/ until OUT/model is written), and OUT/job.json records what
defines the job: the same command into the same --out after an interrupt reuses the finished runs
and trains the rest; another configuration is refused, naming what differs.

`from_scratch` trains the same architecture from random initialisation: the baseline that shows
what pretraining bought. Inputs longer than the model are truncated, or with long="chunk" split
into chunks whose predictions (class probabilities or regression values) are averaged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from roberta.training import checkpoint as ckpt
from roberta.config import OptimConfig
from roberta.training.distributed import pick_device
from roberta.errors import UserError
from roberta.outdir import settings_diff, with_defaults
from roberta.downstream.batches import Encoded, encode, forward, length_batches, pack_length
from roberta.downstream.metrics import REGRESSION_METRICS, all_metrics
from roberta.model import RobertaClassifier, build_classifier, max_seq_len
from roberta.training.optim import build_optimizer, lr_at, set_lr
from roberta.downstream.predict import save_finetuned  # the artifact's format lives with its reader
from roberta.downstream.tasks import Example, TaskData, find_glue_tasks, glue_task, targets
from roberta.training.precision import resolve_precision
from roberta.tokenizer import load_tokenizer

PAPER_LR_GRID = (1e-5, 2e-5, 3e-5)
SMALL_LR_GRID = (3e-4, 1e-4, 5e-5, 3e-5)  # Turc et al. 2019's grid for BERT-Tiny..Medium
SMALL_MODEL_HIDDEN = 512  # at or below this width a checkpoint gets SMALL_LR_GRID by default
SUBSAMPLE_SEED = 0  # one fixed subset, so pretrained and from-scratch runs see the same examples
JOB_FILE = "job.json"  # in OUT: what defines the job (config, checkpoint, data); a re-run continues only that
RUNS_FILE = "runs.jsonl"  # in OUT: one line per finished (lr, seed) run -- the record a re-run reuses
STATES_DIR = "best-per-lr"  # in OUT until OUT/model is written: each lr's best weights so far
NOT_IDENTITY = ("threads", "progress", "pack")  # how a job runs, not what it computes: may change between re-runs


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
    pack: str = "auto"  # "auto" | "on" | "off": examples packed into rows without padding (batches.pack_length)
    progress: bool = True  # one bar over the whole job's steps, with its ETA, on stderr (on a terminal); False: --quiet


@torch.no_grad()
def predict(model: RobertaClassifier, data: Encoded, batch_size: int, precision: str = "auto",
            pack: int = 0) -> np.ndarray:
    """(n_examples, n_out): class probabilities, or regression values (n_out = 1), averaged over
    each example's chunks."""
    model.eval()
    n_out = model.classifier.out_proj.out_features
    per_input = np.zeros((len(data.ids), n_out))
    for idx in length_batches(data.lengths, batch_size, None):
        logits = forward(model, data.ids, idx, precision, pack)
        per_input[idx] = (logits.softmax(-1) if n_out > 1 else logits).cpu().numpy()
    sums = np.zeros((len(data.y), n_out))
    np.add.at(sums, data.owner, per_input)
    return sums / np.bincount(data.owner, minlength=len(data.y))[:, None]


def score(model: RobertaClassifier, data: Encoded, batch_size: int, precision: str = "auto",
          pack: int = 0) -> dict[str, float]:
    return scores_of(predict(model, data, batch_size, precision, pack), data.y)


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
    test: Encoded | None = None  # scored once per run at its best dev epoch; never selects anything
    pack_train: int = 0  # row length examples are packed into while training (batches.pack_length); 0 = padded
    pack_eval: int = 0  # the same when scoring


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
    test = None if task.test is None else encode(tok, task.test, targets(task.test, task.labels, task.label_source),
                                                 max_len, cfg.long)

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
    pack = {training: pack_length(cfg.pack, device, precision, model_cfg.attention_dropout, training, max_len)
            for training in (True, False)}
    return Setup(task, train, dev, new_model, ck, max_len, device, precision, why, model_cfg, test, pack[True], pack[False])


def _packing(pack: int) -> str:
    return f"examples packed into {pack}-token rows" if pack else "padded length-bucketed batches"


def steps_per_run(s: Setup, cfg: FinetuneConfig) -> int:
    return cfg.epochs * math.ceil(len(s.train.ids) / cfg.batch_size)


def _train_epoch(model, optimizer, s: Setup, cfg: FinetuneConfig, lr: float, rng: np.random.Generator,
                 step: int, bar: tqdm | None) -> tuple[float, int]:
    """One pass over train in length-bucketed batches. -> (mean train loss, steps taken so far)."""
    model.train()
    total_steps, loss_sum = steps_per_run(s, cfg), 0.0
    batches = length_batches(s.train.lengths, cfg.batch_size, rng)
    for idx in batches:
        set_lr(optimizer, lr_at(step / total_steps, cfg.warmup_fraction, lr))
        logits = forward(model, s.train.ids, idx, s.precision, s.pack_train)
        y = torch.from_numpy(s.train.y[s.train.owner[idx]]).to(s.device)
        loss = F.mse_loss(logits[:, 0], y) if s.task.regression else F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        step += 1
        if bar is not None:
            bar.update()
    return float(loss_sum) / len(batches), step  # one host sync per epoch, not per step


def train_seed(s: Setup, cfg: FinetuneConfig, lr: float, seed: int, log: Callable[[str], None],
               bar: tqdm | None = None) -> tuple[dict, dict | None]:
    """Fine-tune one model; evaluate on dev after every epoch. -> (the run's record: per-epoch
    metrics, the best epoch, its dev outputs and, with a test set, its test scores there; the
    weights at the best epoch on the CPU when cfg.save_model, else None)."""
    model = s.new_model(seed)
    optimizer = build_optimizer(model, OptimConfig(weight_decay=cfg.weight_decay), lr)
    rng = np.random.default_rng(seed)
    step, history, metric = 0, [], s.task.metric
    best_value, best_state, best_outputs = -math.inf, None, None
    keep_state = cfg.save_model or s.test is not None
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        if bar is not None:
            bar.set_postfix_str(f"lr {lr:g} seed {seed} epoch {epoch}/{cfg.epochs}", refresh=False)
        train_loss, step = _train_epoch(model, optimizer, s, cfg, lr, rng, step, bar)
        outputs = predict(model, s.dev, cfg.eval_batch_size, s.precision, s.pack_eval)
        scores = scores_of(outputs, s.dev.y)
        if epoch == 1 or scores[metric] > best_value:  # as best_epoch(): the first of the maxima, NaN never wins
            best_value = scores[metric] if scores[metric] == scores[metric] else -math.inf
            best_outputs = outputs
            if keep_state:  # a CPU copy of the weights at the best epoch so far
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        history.append({"epoch": epoch, "train_loss": train_loss, **scores, "seconds": time.perf_counter() - t0})
        log(f"lr {lr:g} seed {seed} epoch {epoch}/{cfg.epochs}: train loss {train_loss:.4f}, "
            f"dev {' '.join(f'{k} {100 * v:.2f}' for k, v in scores.items())} ({time.perf_counter() - t0:.0f}s)")
        best = best_epoch([h[metric] for h in history])
        if cfg.patience and epoch - best >= cfg.patience:
            log(f"lr {lr:g} seed {seed}: early stop after epoch {epoch} ({cfg.patience} epoch(s) without a dev improvement)")
            if bar is not None:  # the steps it will not take leave the job's total, so the ETA stays true
                bar.total -= (cfg.epochs - epoch) * (steps_per_run(s, cfg) // cfg.epochs)
                bar.refresh()
            break
    best = best_epoch([h[metric] for h in history])
    record = {"lr": lr, "seed": seed, "value": history[best - 1][metric], "best_epoch": best, "history": history,
              "dev_outputs": np.asarray(best_outputs).round(6).tolist()}
    if s.test is not None:  # once, at the epoch dev chose: the test set selects nothing
        model.load_state_dict(best_state)
        test = scores_of(predict(model, s.test, cfg.eval_batch_size, s.precision, s.pack_eval), s.test.y)
        record.update(test_value=test[metric], test_metrics=test)
    return record, best_state if cfg.save_model else None


def finetune(task: TaskData, checkpoint: str | Path, out: str | Path, cfg: FinetuneConfig,
             log: Callable[[str], None] = print, overwrite: bool = False) -> dict:
    """Run the grid x seeds, write OUT/metrics.json (+ labels.json, runs.jsonl, dev_outputs.json,
    model/) and return the summary. An OUT holding this same job continues it (its finished runs
    are reused) or, if it finished, returns its summary; a job of other settings is refused unless
    `overwrite`, which replaces it."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ck = ckpt.resolve_checkpoint(checkpoint)
    if not cfg.lrs:
        model_cfg = ckpt.load_config(ck).model
        cfg = dataclasses.replace(cfg, lrs=default_lr_grid(model_cfg))
        log(f"lr grid {', '.join(f'{lr:g}' for lr in cfg.lrs)} (the default for a {model_cfg.layers} x "
            f"{model_cfg.hidden} model; choose with --lr / --lr-grid)")
    out, definition = Path(out), job_definition(task, ck, cfg)
    runs = finished_runs(out, definition, overwrite)  # before setup: a refusal costs nothing
    if runs is None:
        log(f"{out}: this job already finished; its results stand (delete {out} to run it again)")
        return json.loads((out / "metrics.json").read_text())
    s = setup(task, ck, cfg)
    open_job(out, definition, runs)  # after setup: a refused input writes nothing
    test = "" if s.test is None else f", {len(s.test.y):,} test examples"
    log(f"{task.name}: {len(s.train.y):,} train inputs -> {len(s.train.ids):,} sequences, {len(s.dev.y):,} dev examples "
        f"-> {len(s.dev.ids):,} sequences{test} (max {s.max_len} tokens, {cfg.long}); mean train length "
        f"{s.train.lengths.mean():.1f} tokens; {s.device}, {s.precision} ({s.precision_why}); {'from scratch (random init)' if cfg.from_scratch else f'from {s.checkpoint}'}; "
        f"{_packing(s.pack_train)} in training, {_packing(s.pack_eval)} in scoring (--pack {cfg.pack})")
    if cfg.from_scratch and len(cfg.lrs) == 1:
        log(f"note: one lr ({cfg.lrs[0]:g}) for a from-scratch baseline; a random init usually wants a higher lr "
            "than a pretrained model, so tune each arm over its own --lr-grid (`finetune --baseline scratch` does; docs/downstream.md)")
    return write_results(s, cfg, out, run_grid(s, cfg, out, runs, log), log)


# ------------------------------------------------------------- the job in OUT: resumable, never mixed

def job_definition(t: TaskData, checkpoint: Path, cfg: FinetuneConfig) -> dict:
    """What makes two `finetune` runs the same job: every setting that changes a result, the
    checkpoint, and the task (its examples by fingerprint), as it reads back from JOB_FILE."""
    definition = {"config": job_definition_config(cfg),
                  "checkpoint": str(Path(checkpoint).resolve()),
                  "task": {"name": t.name, "metric": t.metric, "labels": list(t.labels), "train": _fingerprint(t.train),
                           "dev": _fingerprint(t.dev), "test": None if t.test is None else _fingerprint(t.test)}}
    return json.loads(json.dumps(definition))  # tuples become lists, as in the file


def job_definition_config(cfg: FinetuneConfig) -> dict:
    return json.loads(json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IDENTITY}))


def _fingerprint(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.text, e.pair, e.label]).encode())
    return f"{len(examples)} examples, sha256 {h.hexdigest()[:16]}"


def finished_runs(out: Path, definition: dict, overwrite: bool) -> list[dict] | None:
    """The finished runs of this job already in OUT ([] for a new job), or None if it finished.
    A job of another definition is a UserError naming what differs, unless `overwrite` (then it
    is replaced; the same job is continued either way, as `ablate --overwrite` treats its arms)."""
    try:
        old = json.loads((out / JOB_FILE).read_text()) if (out / JOB_FILE).is_file() else None
    except ValueError:
        old = None
    if old is not None:  # a setting added since the job ran: it ran with the setting's default
        old = with_defaults(old, {"config": job_definition_config(FinetuneConfig())})
    if old is not None and old != definition and not overwrite:
        raise UserError(f"--out {out} holds a finetune job with other settings ({'; '.join(settings_diff(old, definition)[:4])}); "
                        "run it with those to continue it, pass --overwrite to replace it, or choose a new --out")
    if old != definition:
        return []
    if (out / "metrics.json").is_file():
        return None
    runs, seen = [], set()
    for line in (out / RUNS_FILE).read_text().splitlines() if (out / RUNS_FILE).is_file() else []:
        try:
            r = json.loads(line)
        except ValueError:  # the line an interrupt cut short
            continue
        if isinstance(r, dict) and "dev_outputs" in r and (r["lr"], r["seed"]) not in seen:
            seen.add((r["lr"], r["seed"]))
            runs.append(r)
    return runs


def open_job(out: Path, definition: dict, runs: list[dict]) -> None:
    """OUT ready for the job's remaining runs: JOB_FILE, and runs.jsonl holding exactly `runs` (a
    line cut short is gone, so the next run's line starts on a line of its own)."""
    out.mkdir(parents=True, exist_ok=True)
    if not runs:  # a new job: nothing an earlier one left may pass for its own (OUT/model is replaced at the end)
        for name in ("metrics.json", "dev_outputs.json", "labels.json"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / STATES_DIR, ignore_errors=True)
        (out / JOB_FILE).write_text(json.dumps(definition, indent=2))
    tmp = out / (RUNS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in runs))
    os.replace(tmp, out / RUNS_FILE)


def run_grid(s: Setup, cfg: FinetuneConfig, out: Path, runs: list[dict], log: Callable[[str], None]) -> list[dict]:
    """Train each (lr, seed) not among `runs` (finished ones: reused), committing each as it ends,
    under one progress bar for the whole job. -> every run, in grid order."""
    grid = [(lr, seed) for lr in cfg.lrs for seed in range(cfg.seeds)]
    done = {(r["lr"], r["seed"]) for r in runs}
    todo = [key for key in grid if key not in done]
    if runs:
        log(f"{out}: reusing {len(runs)} finished run(s) of this job from {RUNS_FILE}; {len(todo)} to train")
    _prune_states(out, runs)

    def say(line: str) -> None:  # a log line clears the bar and redraws it below, instead of tearing it
        with tqdm.external_write_mode():
            log(line)

    with tqdm(total=len(todo) * steps_per_run(s, cfg), desc="finetune", unit="step",
              disable=None if cfg.progress else True) as bar:
        for lr, seed in todo:
            record, state = train_seed(s, cfg, lr, seed, say, bar)
            _commit(out, record, state, runs)
    order = {key: i for i, key in enumerate(grid)}
    return sorted(runs, key=lambda r: order[(r["lr"], r["seed"])])


def _best_of(runs: list[dict]) -> dict:
    """The run with the highest dev value (the first on ties; NaN never wins)."""
    return max(runs, key=lambda r: r["value"] if r["value"] == r["value"] else -math.inf)


def _state_path(out: Path, lr: float, seed: int) -> Path:
    return out / STATES_DIR / f"lr{lr!r}-seed{seed}.safetensors"


def _commit(out: Path, record: dict, state: dict | None, runs: list[dict]) -> None:
    """Make a finished run durable: its weights if it is its lr's best so far, then its line in
    runs.jsonl (what a re-run trusts, so written last, flushed to disk)."""
    if state is not None and _best_of([r for r in runs if r["lr"] == record["lr"]] + [record]) is record:
        path = _state_path(out, record["lr"], record["seed"])
        path.parent.mkdir(exist_ok=True)
        save_file(state, str(path.with_suffix(".tmp")), metadata={"format": "pt"})
        os.replace(path.with_suffix(".tmp"), path)
    with open(out / RUNS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    runs.append(record)
    _prune_states(out, runs)


def _prune_states(out: Path, runs: list[dict]) -> None:
    """Keep one set of weights per lr on disk (its best finished seed's), not one per run."""
    if not (out / STATES_DIR).is_dir():
        return
    keep = {_state_path(out, best["lr"], best["seed"])
            for best in (_best_of([r for r in runs if r["lr"] == lr]) for lr in {r["lr"] for r in runs})}
    for path in (out / STATES_DIR).iterdir():
        if path not in keep:
            path.unlink()


def _best_state(s: Setup, cfg: FinetuneConfig, out: Path, run: dict, log: Callable[[str], None]) -> dict:
    """The weights of `run` at its best epoch: kept on disk since it finished, or (if they are
    gone, e.g. a job from before they were kept) that one run trained again."""
    path = _state_path(out, run["lr"], run["seed"])
    if path.is_file():
        return load_file(str(path))
    log(f"the weights of lr {run['lr']:g} seed {run['seed']} were not kept; training that run again for {out}/model")
    return train_seed(s, cfg, run["lr"], run["seed"], log)[1]


def write_results(s: Setup, cfg: FinetuneConfig, out: Path, runs: list[dict], log: Callable[[str], None]) -> dict:
    """Select (the median over seeds per lr, the best lr, its best seed for OUT/model) and write
    OUT's files; metrics.json last, since its presence says the job finished."""
    task = s.task
    medians = {lr: float(np.median([r["value"] for r in runs if r["lr"] == lr])) for lr in cfg.lrs}
    best_lr = max(cfg.lrs, key=lambda lr: medians[lr])
    chosen = [r for r in runs if r["lr"] == best_lr]
    summary = {
        "task": task.name, "metric": task.metric, "value": medians[best_lr],
        "per_seed": [r["value"] for r in chosen], "best_epoch": [r["best_epoch"] for r in chosen],
        "lr": best_lr, "lr_grid": {f"{lr:g}": medians[lr] for lr in cfg.lrs},
        "per_seed_metrics": [{k: v for k, v in r["history"][r["best_epoch"] - 1].items() if k not in ("epoch", "seconds")}
                             for r in chosen],
        "checkpoint": str(s.checkpoint), "from_scratch": cfg.from_scratch,
        "train_examples": len(s.train.y), "dev_examples": len(s.dev.y), "dev_held_out": task.held_out,
        "labels": list(task.labels), "config": dataclasses.asdict(cfg),
    }
    if s.test is not None:  # each seed at the lr and epoch dev chose
        summary.update(test_value=float(np.median([r["test_value"] for r in chosen])),
                       test_per_seed=[r["test_value"] for r in chosen], test_examples=len(s.test.y))
    if len(cfg.lrs) > 1:
        log(f"lr {best_lr:g} won: median dev {task.metric} by lr "
            + ", ".join(f"{lr:g} {100 * medians[lr]:.2f}" for lr in cfg.lrs))
    best_run = _best_of(chosen)
    if cfg.save_model:
        save_finetuned(out / "model", _best_state(s, cfg, out, best_run, log), s, cfg, {
            "task": task.name, "metric": task.metric, "lr": best_lr, "seed": best_run["seed"],
            "epoch": best_run["best_epoch"], "value": best_run["value"], "checkpoint": str(s.checkpoint),
            "from_scratch": cfg.from_scratch, "pairs": task.pairs})
        summary["model"] = {"path": str(out / "model"), "seed": best_run["seed"], "epoch": best_run["best_epoch"],
                            "value": best_run["value"]}
    (out / "labels.json").write_text(json.dumps({"labels": list(task.labels), "regression": task.regression}))
    # the chosen lr's dev outputs per seed: what the paired comparison (roberta.downstream.compare) resamples
    (out / "dev_outputs.json").write_text(json.dumps({
        "metric": task.metric, "gold": s.dev.y.tolist(), "seeds": [r["seed"] for r in chosen],
        "outputs": [r["dev_outputs"] for r in chosen]}))
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(out / STATES_DIR, ignore_errors=True)
    return summary


def evaluate_glue(checkpoint: str | Path, glue_dir: str | Path, out: str | Path, cfg: FinetuneConfig,
                  log: Callable[[str], None] = print, overwrite: bool = False) -> dict[str, dict]:
    """Fine-tune on every GLUE task present under glue_dir; -> {task: summary}."""
    return {name: finetune(glue_task(name, glue_dir), checkpoint, Path(out) / name, cfg, log, overwrite)
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
