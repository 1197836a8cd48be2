"""A fine-tuned model as an artifact: `finetune` writes OUT/model/, `roberta predict` and
`roberta.load(OUT).predict(...)` read it.

    OUT/model/
      config.json        our Config, with the classifier's model config (fine-tuning dropout)
      model.safetensors  RobertaClassifier weights (roberta.* + classifier.*) at the best dev epoch
      labels.json        {"labels": [...] (index -> label as in the training data), "regression": bool}
      finetune.json      where the weights came from: task, metric, lr, seed, epoch, dev value,
                         checkpoint, max_len, long
      tokenizer.json ... the checkpoint's tokenizer (HF-loadable files too)

model.safetensors + config.json make OUT/model a checkpoint directory as well, so `finetune
--checkpoint OUT/model` continues from the fine-tuned encoder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from roberta.training import checkpoint as ckpt
from roberta.training.distributed import pick_device
from roberta.training.precision import resolve_precision
from roberta.errors import UserError, WrongModelError
from roberta.downstream.batches import encode, forward, length_batches, pack_length
from roberta.downstream.metrics import all_metrics
from roberta.model import build_classifier
from roberta.downstream.tasks import Example, targets
from roberta.tokenizer import load_tokenizer, save_tokenizer

RECORD = "finetune.json"


def save_finetuned(out: Path, state: dict[str, torch.Tensor], s, cfg, record: dict) -> None:
    """Write OUT/model/ from a fine-tuning Setup `s` and the best run's weights."""
    out.mkdir(parents=True, exist_ok=True)
    base = ckpt.load_config(s.checkpoint)
    (out / "config.json").write_text(dataclasses.replace(base, model=s.model_cfg).to_json())
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "labels.json").write_text(json.dumps({"labels": list(s.task.labels), "regression": s.task.regression}))
    (out / RECORD).write_text(json.dumps({**record, "max_len": s.max_len, "long": cfg.long}, indent=2))
    save_tokenizer(load_tokenizer(s.checkpoint), out, model_max_length=s.max_len)


def finetuned_dir(path: str | Path) -> Path | None:
    """OUT/model for a finetune OUT, the directory itself if it is one, else None."""
    p = Path(path)
    for d in (p / "model", p):
        if (d / RECORD).is_file() and (d / "model.safetensors").is_file():
            return d
    return None


class Finetuned:
    """A fine-tuned classifier / regressor: `predict(texts_or_pairs)` -> one dict per input."""

    def __init__(self, path: str | Path, device: str = "auto", precision: str = "auto", pack: str = "auto"):
        d = finetuned_dir(path)
        if d is None:
            raise UserError(f"{path}: not a fine-tuned model (no model/{RECORD}); pass the --out directory of "
                            "`roberta finetune`")
        self.path, self.precision = d, precision  # "auto" | "fp32" | "bf16" (roberta.training.precision)
        self.record = json.loads((d / RECORD).read_text())
        lab = json.loads((d / "labels.json").read_text())
        self.labels, self.regression = tuple(lab["labels"]), bool(lab["regression"])
        cfg = ckpt.load_config(d)
        self.device = pick_device(device, option=f"--device {device}")
        self.model = build_classifier(cfg.model, max(len(self.labels), 1), self.device)
        ckpt.load_state(self.model, ckpt.load_weights(d), d / "model.safetensors")
        self.model.eval()
        self.tokenizer = load_tokenizer(d)
        # rows of the length it was fine-tuned at (pack_length: 0 = padded batches)
        self.pack = pack_length(pack, self.device, resolve_precision(precision, self.device)[0],
                                cfg.model.attention_dropout, False, self.record["max_len"])

    @property
    def metric(self) -> str:
        return self.record["metric"]

    def __getattr__(self, name: str):  # only for names a Finetuned lacks
        if name in ("fill_mask", "embed"):
            raise WrongModelError(
                f"{self.path} is a fine-tuned classifier, which has no .{name}(): use .predict(texts) for its labels, "
                f"or roberta.load() the pretrained checkpoint it was fine-tuned from ({self.record.get('checkpoint')}) "
                f"for .{name}()")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def outputs(self, examples: list[Example], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """(n, n_out): class probabilities, or values (n_out = 1), in input order."""
        data = encode(self.tokenizer, examples, np.zeros(len(examples)), self.record["max_len"], self.record["long"])
        n_out = max(len(self.labels), 1)
        per_input = np.zeros((len(data.ids), n_out))
        batches = length_batches(data.lengths, batch_size, None)
        with torch.no_grad():
            for idx in tqdm(batches, desc="predict", unit="batch", disable=None if progress else True):
                logits = forward(self.model, data.ids, idx, self.precision, self.pack)
                per_input[idx] = (logits.softmax(-1) if n_out > 1 else logits).cpu().numpy()
        sums = np.zeros((len(examples), n_out))
        np.add.at(sums, data.owner, per_input)  # long="chunk": average each example's chunks
        return sums / np.bincount(data.owner, minlength=len(examples))[:, None]

    def rows(self, out: np.ndarray) -> list[dict]:
        if self.regression:
            return [{"value": float(v[0])} for v in out]
        return [{"label": self.labels[int(p.argmax())],
                 "probabilities": {label: float(x) for label, x in zip(self.labels, p)}} for p in out]

    def predict(self, texts_or_pairs: Sequence[str | tuple[str, str]], batch_size: int = 64) -> list[dict]:
        """[{"label": ..., "probabilities": {label: p}}] or [{"value": v}], one per input, in order."""
        if isinstance(texts_or_pairs, str):
            texts_or_pairs = [texts_or_pairs]
        examples = []
        for i, t in enumerate(texts_or_pairs):
            text, pair = (t, None) if isinstance(t, str) else tuple(t)
            examples.append(Example(text, pair, "", f"input {i}"))
        return self.rows(self.outputs(examples, batch_size)) if examples else []


def predict_files(model: Finetuned, examples: list[Example], has_labels: bool, out: str | Path,
                  batch_size: int = 64, progress: bool = True) -> dict | None:
    """Write one JSON object per example to `out`; with labels, -> {metric: value, ...}."""
    outputs = model.outputs(examples, batch_size, progress=progress)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in model.rows(outputs))
    if not has_labels:
        return None
    y = targets(examples, model.labels, f"the labels {model.path} was trained with")
    pred = outputs[:, 0] if model.regression else outputs.argmax(1)
    return all_metrics(pred, y, model.regression, outputs.shape[1])
