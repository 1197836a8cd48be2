"""Our fine-tuning pipeline against the standard one, on the same checkpoint and data.

    ours: `roberta.downstream.finetune.finetune` (RobertaClassifier, length-bucketed batches, AdamW from
          roberta.training.optim, 6% warmup then linear decay, dev after every epoch, best epoch kept)
    HF:   the checkpoint exported with `roberta export-hf`, loaded as
          transformers.RobertaForSequenceClassification, trained by transformers.Trainer
          (DataCollatorWithPadding, length-grouped sampling, the same lr / epochs / batch / warmup /
          weight decay / Adam betas and eps / dropout / seeds, eval every epoch, best epoch kept)

Both tokenize with the checkpoint's tokenizer, truncated to the same --max-len. The dev score is the
median over seeds of each run's best epoch; examples/s counts training examples over the whole
wall time of the runs (training and the per-epoch dev evaluations), one thread on a CPU.

    python benchmarks/finetune_bench.py                              # SST-2 subset, a fresh tiny model
    python benchmarks/finetune_bench.py --checkpoint runs/imdb-tiny --max-train 2000 --epochs 3

Without --checkpoint a `tiny` model is initialised at random with a tokenizer trained in-process on
the task's training text (seconds): the comparison is of the pipelines, not of pretraining.
Needs ROBERTA_SHARED_DATA (or ../shared/data) with glue/SST-2, and `transformers`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from roberta.downstream.finetune import FinetuneConfig, finetune, subsample
from roberta.downstream.tasks import glue_task

SHARED = Path(os.environ.get("ROBERTA_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def fresh_checkpoint(task, out: Path) -> Path:
    """A random-init `roberta-tiny` checkpoint with a 4K tokenizer trained on the task's training text."""
    from roberta.config import resolve_run
    from roberta.training.checkpoint import save_checkpoint
    from roberta.model import build_model
    from roberta.presets import roberta_tiny  # the 2019 architecture: RobertaForSequenceClassification
    from roberta.tokenizer import save_tokenizer, train_tokenizer

    tok = train_tokenizer(iter([e.text for e in task.train]), vocab_size=4000)
    save_tokenizer(tok, out / "tok")
    cfg = resolve_run(roberta_tiny(), {"vocab_size": tok.get_vocab_size(), "seq_len": 128})
    return save_checkpoint(out / "run", 0, build_model(cfg.model, seed=0), cfg, out / "tok")


def run_ours(task, ck: Path, a, work: Path, pack: str = "off") -> dict:
    cfg = FinetuneConfig(lrs=(a.lr,), batch_size=a.batch_size, epochs=a.epochs, seeds=a.seeds,
                         warmup_fraction=a.warmup, max_len=a.max_len, max_train=a.max_train, device="cpu",
                         threads=1, save_model=False, precision="fp32", pack=pack)  # the Trainer's default precision
    t0 = time.perf_counter()
    r = finetune(task, ck, work / f"ours-{pack}", cfg, log=lambda _: None)
    seconds = time.perf_counter() - t0
    return {"value": r["value"], "per_seed": r["per_seed"], "seconds": seconds,
            "examples_per_s": r["train_examples"] * a.epochs * a.seeds / seconds}


def run_hf(task, ck: Path, a, work: Path) -> dict:
    import transformers
    from transformers import (DataCollatorWithPadding, RobertaForSequenceClassification, Trainer,
                              TrainingArguments)

    from roberta.hf import export_hf

    transformers.logging.set_verbosity_error()
    hf_dir = work / "hf"
    export_hf(ck, hf_dir)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    train_ex = subsample(task.train, a.max_train)
    index = {label: i for i, label in enumerate(task.labels)}

    class Rows(torch.utils.data.Dataset):
        def __init__(self, examples):
            self.rows = [{**tok(e.text, truncation=True, max_length=a.max_len), "labels": index[e.label]} for e in examples]

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    train, dev = Rows(train_ex), Rows(task.dev)

    def accuracy(p):
        return {"accuracy": float((np.asarray(p.predictions).argmax(-1) == p.label_ids).mean())}

    # transformers 5 takes warmup as steps: the same fraction of all steps as ours
    warmup_steps = int(round(a.warmup * a.epochs * -(-len(train) // a.batch_size)))
    values, t0 = [], time.perf_counter()
    for seed in range(a.seeds):
        model = RobertaForSequenceClassification.from_pretrained(hf_dir, num_labels=len(task.labels),
                                                                 hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
        args = TrainingArguments(
            output_dir=str(work / f"hf-run{seed}"), learning_rate=a.lr, num_train_epochs=a.epochs,
            per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=64, warmup_steps=warmup_steps,
            weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.98, adam_epsilon=1e-6, lr_scheduler_type="linear",
            seed=seed, eval_strategy="epoch", save_strategy="no", logging_strategy="no", report_to=[],
            max_grad_norm=0.0,  # ours (and fairseq's RoBERTa fine-tuning) does not clip; the Trainer clips at 1.0 by default
            use_cpu=True, train_sampling_strategy="group_by_length", disable_tqdm=True, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                          data_collator=DataCollatorWithPadding(tok), compute_metrics=accuracy)
        trainer.train()
        values.append(max(h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h))
    seconds = time.perf_counter() - t0
    return {"value": float(statistics.median(values)), "per_seed": values, "seconds": seconds,
            "examples_per_s": len(train) * a.epochs * a.seeds / seconds}


IMPLS = {"ours": run_ours, "ours-packed": lambda *x: run_ours(*x, pack="on"), "HF": run_hf}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="our checkpoint (default: a fresh random-init tiny)")
    p.add_argument("--glue-dir", default=str(SHARED / "glue"))
    p.add_argument("--max-train", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)  # a random init wants a high lr (FINDINGS.md)
    p.add_argument("--warmup", type=float, default=0.06)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--max-len", type=int, default=66)
    p.add_argument("--impls", default="ours,HF",
                   help="ours (padded length-bucketed batches), ours-packed (--pack on: no padding), HF")
    a = p.parse_args()
    impls = a.impls.split(",")
    if set(impls) - IMPLS.keys():
        p.error(f"--impls {a.impls}: choose from {', '.join(IMPLS)}")
    torch.set_num_threads(1)
    if not (Path(a.glue_dir) / "SST-2" / "train.tsv").is_file():
        sys.exit(f"{a.glue_dir}/SST-2 not found; set ROBERTA_SHARED_DATA or --glue-dir")
    task = glue_task("sst2", a.glue_dir)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ck = Path(a.checkpoint) if a.checkpoint else fresh_checkpoint(task, work)
        from roberta.training.checkpoint import resolve_checkpoint

        ck = resolve_checkpoint(ck)
        for impl in impls:
            results[impl] = IMPLS[impl](task, ck, a, work)
    print(f"SST-2: {a.max_train} train sentences, dev {len(task.dev)}, {a.epochs} epochs, batch {a.batch_size}, "
          f"lr {a.lr:g}, warmup {a.warmup:g}, max_len {a.max_len}, {a.seeds} seeds, 1 CPU thread; checkpoint "
          f"{a.checkpoint or 'fresh random-init tiny'}")
    print(f"{'impl':<12}{'dev acc (median)':>18}{'per seed':>26}{'examples/s':>12}{'seconds':>9}")
    for impl, r in results.items():
        print(f"{impl:<12}{100 * r['value']:>18.2f}{', '.join(f'{100 * v:.1f}' for v in r['per_seed']):>26}"
              f"{r['examples_per_s']:>12.1f}{r['seconds']:>9.0f}")
    if "ours" in results and "HF" in results:
        d = results["ours"]["value"] - results["HF"]["value"]
        ratio = results["ours"]["examples_per_s"] / results["HF"]["examples_per_s"]
        print(f"ours - HF: {100 * d:+.2f} points; ours/HF examples/s: {ratio:.2f}x")
    if "ours" in results and "ours-packed" in results:
        print(f"packed/padded examples/s: {results['ours-packed']['examples_per_s'] / results['ours']['examples_per_s']:.2f}x")
    print(json.dumps({"config": vars(a), "results": results}))


if __name__ == "__main__":
    main()
