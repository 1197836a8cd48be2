"""A fine-tuned model (`roberta finetune` OUT/model) as a `transformers` sequence classifier:
RobertaForSequenceClassification, or ModernBertForSequenceClassification for the modern family.

    export_classifier(OUT, DIR)   DIR loads with AutoModelForSequenceClassification and
                                  pipeline("text-classification", model=DIR)

Our ClassificationHead is RobertaClassificationHead (dropout -> dense -> tanh -> dropout ->
out_proj on <s>) under the same names (classifier.dense, classifier.out_proj), so only the
encoder's names change (hf.to_hf_state). The modern family's head is ModernBERT's (first-token
pooling -> dense -> GELU -> norm -> projection) under other names (hf_modern). id2label/label2id
carry the labels as they appear in the training data, so the pipeline returns the labels
`roberta predict` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from roberta.training import checkpoint as ckpt
from roberta.errors import UserError
from roberta.hf import hf_config, to_hf_state
from roberta.hf_modern import hf_modern_config, to_hf_modern_classifier_state
from roberta.downstream.predict import Finetuned
from roberta.tokenizer import save_tokenizer


def export_classifier(path: str | Path, out: str | Path) -> None:
    m = Finetuned(path, device="cpu")
    out = Path(out)
    if out.resolve() in (m.path.resolve(), m.path.parent.resolve()):
        raise UserError(f"--out {out}: is the input directory; choose another so the input stays intact")
    modern = m.model.cfg.family == "modern"
    if modern:
        config = hf_modern_config(m.model.cfg)
        # our fine-tuning pools the first token (ModernClassifier's default, "cls")
        config.update(architectures=["ModernBertForSequenceClassification"], classifier_pooling="cls")
    else:
        config = hf_config(m.model.cfg)
        config["architectures"] = ["RobertaForSequenceClassification"]
    config.pop("tie_word_embeddings")  # no LM head here
    if m.regression:
        config.update(num_labels=1, problem_type="regression", id2label={0: "LABEL_0"}, label2id={"LABEL_0": 0})
    else:
        config.update(num_labels=len(m.labels), problem_type="single_label_classification",
                      id2label={i: label for i, label in enumerate(m.labels)},
                      label2id={label: i for i, label in enumerate(m.labels)})
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    state = ckpt.model_state(m.model)
    state = to_hf_modern_classifier_state(state) if modern else to_hf_state(state)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    save_tokenizer(m.tokenizer, out, model_max_length=m.record["max_len"])
