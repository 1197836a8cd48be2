"""Did pretraining help? A paired comparison of two arms on the same dev examples and seeds.

    delta = median over seeds (arm A's dev metric) - median over seeds (arm B's)
    95% interval: paired bootstrap -- each replicate draws the dev examples with replacement and
    the seeds with replacement, the SAME draws for both arms (same examples, same seed indices),
    recomputes both medians and their difference; the 2.5th and 97.5th percentiles bound it.

Resampling the examples captures the dev set's finite size (SST-2's 872 sentences: a standard
error of ~1.4 points for one run); resampling the seeds captures run-to-run variance (init, order).
"no difference shown" when the interval contains 0. Each arm is at its OWN best lr: one shared lr
manufactures a gain (a random init wants a higher lr than a pretrained one).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from roberta.errors import UserError
from roberta.downstream.metrics import METRICS, REGRESSION_METRICS

BOOTSTRAP_SEED = 0


def _preds(outputs: np.ndarray, metric: str) -> np.ndarray:
    """(seeds, n, n_out) model outputs -> (seeds, n) predictions the metric takes."""
    return outputs[..., 0] if metric in REGRESSION_METRICS else outputs.argmax(-1)


def _median_metric(preds: np.ndarray, gold: np.ndarray, metric: str) -> float:
    return float(np.median([METRICS[metric](p, gold) for p in preds]))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, gold: np.ndarray, metric: str, samples: int = 1000,
                     seed: int = BOOTSTRAP_SEED) -> dict:
    """a, b: (seeds, n) predictions of the two arms on the same n dev examples, seed i of a paired
    with seed i of b. -> {"value", "baseline_value", "delta", "interval": [low, high]}."""
    if a.shape[1] != b.shape[1] or a.shape[1] != len(gold):
        raise UserError("paired comparison: the two arms were evaluated on different dev examples")
    k = min(len(a), len(b))
    a, b = a[:k], b[:k]
    rng = np.random.default_rng(seed)
    n = len(gold)
    deltas = np.empty(samples)
    accuracy = metric == "accuracy"  # the common case, vectorised: per-example correctness
    ca, cb = (a == gold).astype(np.float64), (b == gold).astype(np.float64)
    for i in range(samples):
        ex = rng.integers(0, n, n)
        sd = rng.integers(0, k, k)
        if accuracy:
            deltas[i] = np.median(ca[sd][:, ex].mean(1)) - np.median(cb[sd][:, ex].mean(1))
        else:
            deltas[i] = (_median_metric(a[sd][:, ex], gold[ex], metric)
                         - _median_metric(b[sd][:, ex], gold[ex], metric))
    value, base = _median_metric(a, gold, metric), _median_metric(b, gold, metric)
    low, high = np.nanpercentile(deltas, [2.5, 97.5])
    return {"value": value, "baseline_value": base, "delta": value - base,
            "interval": [float(low), float(high)], "seeds": k, "dev_examples": n, "bootstrap_samples": samples}


def verdict(r: dict) -> str:
    low, high = r["interval"]
    if low <= 0 <= high:
        return "no difference shown"
    return "pretrained better" if low > 0 else "baseline better"


def read_dev_outputs(run_dir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    path = Path(run_dir) / "dev_outputs.json"
    if not path.is_file():
        raise UserError(f"{path}: missing; it is written by `roberta finetune`")
    d = json.loads(path.read_text())
    return np.asarray(d["outputs"], dtype=np.float64), np.asarray(d["gold"]), d["metric"]


def compare_runs(arm: Path, baseline: Path, samples: int = 1000) -> dict:
    """The paired comparison of two finetune output directories (same task, dev set and seeds)."""
    out_a, gold, metric = read_dev_outputs(arm)
    out_b, gold_b, metric_b = read_dev_outputs(baseline)
    if metric != metric_b or not np.array_equal(gold, gold_b):
        raise UserError(f"{arm} and {baseline}: not the same task / dev examples; they cannot be paired")
    r = paired_bootstrap(_preds(out_a, metric), _preds(out_b, metric), gold, metric, samples)
    return {**r, "metric": metric, "verdict": verdict(r)}


def format_comparison(r: dict, name: str = "pretrained", baseline: str = "scratch") -> str:
    low, high = r["interval"]
    return (f"{name} {100 * r['value']:.2f} vs {baseline} {100 * r['baseline_value']:.2f} "
            f"({r['metric']}, median of {r['seeds']} seed(s)): delta {100 * r['delta']:+.2f}, 95% interval "
            f"[{100 * low:+.2f}, {100 * high:+.2f}] (paired bootstrap over {r['dev_examples']:,} dev examples "
            f"and seeds) -- {r['verdict']}")


BASELINE_DIR = "baseline-scratch"


def finetune_with_baseline(task, checkpoint, out, cfg, baseline_lrs: tuple[float, ...] = (), log=print,
                           overwrite: bool = False) -> dict:
    """`roberta finetune ... --baseline scratch`: the pretrained arm in OUT, the same architecture
    from random init in OUT/baseline-scratch (same examples, same seeds, its own lr grid), then
    the paired comparison added to OUT/metrics.json. Each arm is a finetune job of its own: an
    interrupted command run again continues whichever arm was unfinished."""
    import dataclasses

    from roberta.downstream.finetune import finetune

    if cfg.from_scratch:
        raise UserError("--baseline scratch compares a pretrained checkpoint with scratch; drop --from-scratch")
    out = Path(out)
    log("== arm 1/2: pretrained ==")
    finetune(task, checkpoint, out, cfg, log, overwrite)
    log("== arm 2/2: same architecture from random init ==")
    scratch_cfg = dataclasses.replace(cfg, from_scratch=True, save_model=False, lrs=baseline_lrs or cfg.lrs)
    finetune(task, checkpoint, out / BASELINE_DIR, scratch_cfg, log, overwrite)
    return add_comparison(out, out / BASELINE_DIR, log)


def add_comparison(out: Path, baseline_dir: Path, log=print) -> dict:
    """Pair two finished finetune outputs (the pretrained arm in OUT, the scratch arm in
    baseline_dir) and add baseline_value, delta, interval and verdict to OUT/metrics.json."""
    out, baseline_dir = Path(out), Path(baseline_dir)
    summary = json.loads((out / "metrics.json").read_text())
    base = json.loads((baseline_dir / "metrics.json").read_text())
    r = compare_runs(out, baseline_dir)
    summary.update({"baseline": "scratch", "baseline_value": r["baseline_value"], "baseline_lr": base["lr"],
                    "baseline_per_seed": base["per_seed"], "delta": r["delta"], "interval": r["interval"],
                    "verdict": r["verdict"], "comparison": {k: r[k] for k in ("seeds", "dev_examples", "bootstrap_samples")}})
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    log(format_comparison(r, "pretrained", f"scratch (lr {base['lr']:g})"))
    return summary
