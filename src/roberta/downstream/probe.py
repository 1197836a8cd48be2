"""`roberta probe`: what a frozen encoder's features already know.

    features = [mean of the last layer over real tokens ; the <s> vector]   (N, 2C), encoder frozen
    standardise with the training split's mean/std
    classification: multinomial logistic regression, L2 penalty; regression: ridge
    penalty chosen by k-fold cross-validation on the training split, then refit on all of it
    -> the dev metric

Seconds to minutes on a CPU, and it sees what fine-tuning washes out: fine-tuning trains every
weight, so a random init can catch up; a probe only reads what pretraining put there. The
baseline (`--baseline random`) is the same network at random init -- its mean-pooled output is a
random projection of bag-of-words, a strong baseline at small compute. The fit is L-BFGS in torch
(the problem is convex and small), no scikit-learn.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from roberta.training import checkpoint as ckpt
from roberta.downstream.compare import paired_bootstrap, verdict
from roberta.downstream.metrics import METRICS
from roberta.model import RobertaClassifier, build_classifier, max_seq_len
from roberta.downstream.tasks import TaskData, targets
from roberta.tokenizer import load_tokenizer

PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # L2 strength per example (the loss is a mean)
FOLDS = 5


@dataclasses.dataclass
class ProbeConfig:
    max_len: int = 0  # tokens per input incl. <s> </s>; 0 = the model's maximum
    max_train: int = 0  # 0 = all training examples; else a fixed random subsample
    max_dev: int = 0  # 0 = all dev examples; else a fixed random subsample
    batch_size: int = 64  # examples per forward when extracting features
    folds: int = FOLDS  # cross-validation folds choosing the penalty on the training features
    penalties: tuple[float, ...] = PENALTIES  # L2 penalties tried by cross-validation
    seed: int = 0  # the random-init baseline's weights
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    progress: bool = True  # a bar over the feature batches on stderr (on a terminal); False: --quiet


@torch.no_grad()
def features(model: RobertaClassifier, ids: list[list[int]], batch_size: int, progress: bool = False) -> np.ndarray:
    """(N, 2C): mean-pooled last layer over real tokens, then the <s> vector."""
    from roberta.data.loader import pad_rows
    from roberta.downstream.batches import length_batches

    model.eval()
    C = model.cfg.hidden
    out = np.zeros((len(ids), 2 * C), dtype=np.float32)
    lengths = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
    for idx in tqdm(length_batches(lengths, batch_size, None), desc="probe: features", unit="batch", leave=False,
                    disable=None if progress else True):
        input_ids, mask = pad_rows([ids[i] for i in idx])
        h = model.roberta(input_ids, mask)  # (B, T, C)
        m = mask.unsqueeze(-1).to(h.dtype)
        out[idx] = torch.cat([(h * m).sum(1) / m.sum(1), h[:, 0]], dim=1).numpy()
    return out


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, penalty: float) -> torch.Tensor:
    """Multinomial logistic regression, mean cross-entropy + penalty/2 * |W|^2 (bias unpenalised),
    by L-BFGS. x: (N, D) standardised, y: (N,) -> W (D + 1, K), the last row the bias."""
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    w = torch.zeros(xb.shape[1], n_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=200, tolerance_grad=1e-6, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xb @ w, y) + 0.5 * penalty * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def fit_ridge(x: torch.Tensor, y: torch.Tensor, penalty: float) -> torch.Tensor:
    """Ridge regression in closed form (bias unpenalised: y centred): -> (D + 1,)."""
    mean = y.mean()
    a = x.T @ x / len(x) + penalty * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(a, x.T @ (y - mean) / len(x))
    return torch.cat([w, mean.reshape(1)])


def _fit(x, y, regression: bool, n_classes: int, penalty: float) -> torch.Tensor:
    return fit_ridge(x, y, penalty) if regression else fit_logistic(x, y, n_classes, penalty)


def _apply(w: torch.Tensor, x: torch.Tensor, regression: bool) -> np.ndarray:
    """-> predictions: values (regression) or class indices."""
    out = x @ w[:-1] + w[-1]
    return out.numpy() if regression else out.argmax(1).numpy()


def choose_penalty(x, y, regression: bool, n_classes: int, metric: str, penalties, folds: int,
                   seed: int = 0) -> tuple[float, dict[str, float]]:
    """k-fold CV on the training split: -> (best penalty, {penalty: mean fold score})."""
    order = np.random.default_rng(seed).permutation(len(x))
    parts = np.array_split(order, folds)
    scores = {}
    for p in penalties:
        vals = []
        for k in range(folds):
            held = parts[k]
            fit = np.concatenate([parts[j] for j in range(folds) if j != k])
            w = _fit(x[fit], y[fit], regression, n_classes, p)
            vals.append(METRICS[metric](_apply(w, x[held], regression), y[held].numpy()))
        scores[p] = float(np.nanmean(vals))
    best = max(penalties, key=lambda p: scores[p] if scores[p] == scores[p] else -np.inf)
    return best, {f"{p:g}": v for p, v in scores.items()}


def probe_encoder(model: RobertaClassifier, train_ids, dev_ids, y_train, y_dev, task: TaskData,
                  cfg: ProbeConfig, test: tuple | None = None) -> dict:
    """Features -> CV'd penalty -> fit on all train -> dev predictions and metric (and, for
    test = (ids, y), the same fitted probe's test metric)."""
    ftr, fdv = (features(model, ids, cfg.batch_size, cfg.progress) for ids in (train_ids, dev_ids))
    mean, std = ftr.mean(0), ftr.std(0) + 1e-6
    x = torch.from_numpy((ftr - mean) / std).double()
    xd = torch.from_numpy((fdv - mean) / std).double()
    regression = task.regression
    y = torch.from_numpy(y_train).double() if regression else torch.from_numpy(y_train).long()
    n_classes = max(len(task.labels), 1)
    penalty, cv = choose_penalty(x, y, regression, n_classes, task.metric, cfg.penalties, cfg.folds)
    w = _fit(x, y, regression, n_classes, penalty)
    pred = _apply(w, xd, regression)
    r = {"value": float(METRICS[task.metric](pred, y_dev)), "penalty": penalty, "cv": cv, "pred": pred}
    if test is not None:
        xt = torch.from_numpy((features(model, test[0], cfg.batch_size, cfg.progress) - mean) / std).double()
        r["test_value"] = float(METRICS[task.metric](_apply(w, xt, regression), test[1]))
    return r


def probe(task: TaskData, checkpoint: str | Path, out: str | Path, cfg: ProbeConfig = ProbeConfig(),
          baseline: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Probe the checkpoint (and with baseline="random" the same network at random init); write
    OUT/metrics.json with task, metric, value (+ baseline_value, delta, interval)."""
    from roberta.downstream.batches import encode
    from roberta.downstream.finetune import subsample

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ck = ckpt.resolve_checkpoint(checkpoint)
    model_cfg = ckpt.load_config(ck).model
    max_len = min(cfg.max_len or max_seq_len(model_cfg), max_seq_len(model_cfg))
    tok = load_tokenizer(ck)
    train_ex, dev_ex = subsample(task.train, cfg.max_train), subsample(task.dev, cfg.max_dev)
    y_train = targets(train_ex, task.labels, task.label_source)
    y_dev = targets(dev_ex, task.labels, task.label_source)
    train_ids = encode(tok, train_ex, y_train, max_len, "truncate").ids
    dev_ids = encode(tok, dev_ex, y_dev, max_len, "truncate").ids
    test = None
    if task.test is not None:
        y_test = targets(task.test, task.labels, task.label_source)
        test = (encode(tok, task.test, y_test, max_len, "truncate").ids, y_test)

    def encoder(pretrained: bool) -> RobertaClassifier:
        model = build_classifier(model_cfg, max(len(task.labels), 1), "cpu", seed=cfg.seed)
        if pretrained:
            ckpt.load_state(model.roberta, {k.removeprefix("roberta."): v for k, v in ckpt.load_weights(ck).items()
                                            if k.startswith("roberta.")}, ck / "model.safetensors")
        return model

    log(f"probe {task.name}: {len(train_ex):,} train / {len(dev_ex):,} dev examples, max {max_len} tokens, "
        f"{cfg.folds}-fold CV over L2 penalties {', '.join(f'{p:g}' for p in cfg.penalties)}")
    r = probe_encoder(encoder(True), train_ids, dev_ids, y_train, y_dev, task, cfg, test)
    test_line = "" if test is None else f"; test {task.metric} {100 * r['test_value']:.2f}"
    log(f"{ck}: {task.metric} {100 * r['value']:.2f} (penalty {r['penalty']:g}){test_line}")
    summary = {"task": task.name, "metric": task.metric, "value": r["value"], "penalty": r["penalty"], "cv": r["cv"],
               "checkpoint": str(ck), "train_examples": len(train_ex), "dev_examples": len(dev_ex),
               **({} if test is None else {"test_value": r["test_value"], "test_examples": len(test[1])}),
               "max_len": max_len, "features": "mean-pooled last layer + <s>, standardised",
               "config": dataclasses.asdict(cfg)}
    if baseline is not None:
        b = probe_encoder(encoder(False), train_ids, dev_ids, y_train, y_dev, task, cfg)
        cmp = paired_bootstrap(r["pred"][None], b["pred"][None], y_dev, task.metric)
        summary.update({"baseline": baseline, "baseline_value": b["value"], "baseline_penalty": b["penalty"],
                        "delta": r["value"] - b["value"], "interval": cmp["interval"], "verdict": verdict(cmp)})
        log(f"random init (seed {cfg.seed}): {task.metric} {100 * b['value']:.2f} (penalty {b['penalty']:g}); "
            f"delta {100 * summary['delta']:+.2f}, 95% interval [{100 * cmp['interval'][0]:+.2f}, "
            f"{100 * cmp['interval'][1]:+.2f}] (bootstrap over dev examples) -- {summary['verdict']}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


__all__ = ["probe", "ProbeConfig", "features", "fit_logistic", "fit_ridge", "choose_penalty"]


def probe_run(run_dir: Path, glue_dir: str | None, tasks: list, max_train: int = 2000) -> None:
    """`roberta ablate --probe TASK` / `--task-eval probe`: probe a finished arm on each task (a GLUE
    name under glue_dir, or a TaskData; skipping those done), written as
    run_dir/glue/probe-NAME/metrics.json, so the report shows a `probe-NAME` column."""
    from roberta.downstream.tasks import glue_task

    for t in tasks:
        name = t if isinstance(t, str) else t.name
        target = Path(run_dir) / "glue" / f"probe-{name}"
        if (target / "metrics.json").is_file():
            continue
        task = glue_task(t, glue_dir) if isinstance(t, str) else t
        probe(dataclasses.replace(task, name=f"probe-{name}"), run_dir, target, ProbeConfig(max_train=max_train, threads=1))
