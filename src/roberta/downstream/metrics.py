"""Downstream metrics as GLUE reports them, in numpy (no scipy / scikit-learn dependency).

Degenerate inputs (a constant prediction, one class only) give 0.0 where the formula divides by
zero, as scikit-learn does for Matthews: best-epoch selection must always get a number.
"""

from __future__ import annotations

import numpy as np


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(gold)))


def f1(pred: np.ndarray, gold: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class (GLUE's MRPC/QQP: label 1 = paraphrase / duplicate)."""
    pred, gold = np.asarray(pred) == positive, np.asarray(gold) == positive
    tp = int(np.sum(pred & gold))
    denom = int(np.sum(pred)) + int(np.sum(gold))  # 2tp + fp + fn
    return 2.0 * tp / denom if denom else 0.0


def matthews(pred: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation, multi-class form (Gorodkin 2004); equals the binary MCC for 2 classes."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    classes = np.union1d(pred, gold)
    p = np.array([np.sum(pred == c) for c in classes], dtype=np.float64)  # predicted per class
    t = np.array([np.sum(gold == c) for c in classes], dtype=np.float64)  # true per class
    s, c = float(len(gold)), float(np.sum(pred == gold))
    denom = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - p @ t) / denom) if denom > 0 else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx @ dx) * (dy @ dy))
    return float(dx @ dy / denom) if denom > 0 else 0.0


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks (as scipy.stats.rankdata)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]  # first index of each run of ties
    run = np.cumsum(starts) - 1
    bounds = np.r_[np.flatnonzero(starts), len(x)]
    mean_rank = (bounds[:-1] + bounds[1:] + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = mean_rank[run]
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(average_ranks(x), average_ranks(y))


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": matthews, "pearson": pearson, "spearman": spearman}
CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")


def all_metrics(pred: np.ndarray, gold: np.ndarray, regression: bool, n_classes: int = 2) -> dict[str, float]:
    """Every metric that applies: Pearson/Spearman for regression; accuracy, Matthews and (binary
    only) F1 for classification."""
    if regression:
        return {name: METRICS[name](pred, gold) for name in REGRESSION_METRICS}
    names = [m for m in CLASSIFICATION_METRICS if m != "f1" or n_classes == 2]
    return {name: METRICS[name](pred, gold) for name in names}
