"""fill-mask, export-hf, import-hf: using a checkpoint, and moving it to and from Hugging Face."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from roberta.cli.common import Renamed, add_overwrite, add_threads, command, set_threads
from roberta.errors import UserError
from roberta.outdir import claim_out


def one_line(text: str) -> str:
    """`text` with newlines, tabs and other unprintable characters escaped as repr() writes them
    (a table row stays one line); printable characters, accents and all, stay as they are."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def cmd_fill_mask(a) -> None:
    from roberta.api import load
    from roberta.downstream.predict import RECORD, finetuned_dir

    if a.top_k < 1:
        raise UserError(f"--top-k {a.top_k}: must be >= 1")
    set_threads(a.threads)
    if (d := finetuned_dir(a.checkpoint)) is not None:
        source = json.loads((d / RECORD).read_text()).get("checkpoint", "the pretrained checkpoint it came from")
        raise UserError(f"--checkpoint {a.checkpoint}: is a fine-tuned classifier (a `roberta finetune` output), "
                        f"which does not fill masks; label text with `roberta predict --checkpoint {a.checkpoint} "
                        f"FILE --out preds.jsonl`, or fill masks with --checkpoint {source}")
    results = load(a.checkpoint).fill_mask(a.text, top_k=a.top_k)
    several = bool(results) and isinstance(results[0], list)  # one list per <mask>
    for n, per_mask in enumerate(results if several else [results], start=1):
        if several:
            print(f"<mask> {n} of {len(results)}:")
        for r in per_mask:
            print(f"{r['score']:.4f}  {r['token']!r:>16}  {one_line(r['sequence'])}")


def cmd_export_hf(a) -> None:
    from roberta.hf import export_hf

    claim_out(a.out, a.overwrite, "export-hf")
    from roberta.downstream.predict import finetuned_dir

    if finetuned_dir(a.checkpoint) is not None:  # a finetune output: a sequence classifier
        from roberta.downstream.hf_classifier import export_classifier

        export_classifier(a.checkpoint, a.out)
        print(f"exported -> {a.out} (transformers.AutoModelForSequenceClassification / pipeline('text-classification') load it)")
        _truncation_note(a.out, f"pipeline('text-classification', model='{a.out}', truncation=True)")
        return
    for note in export_hf(a.checkpoint, a.out):
        print(f"note: {note}")
    print(f"exported -> {a.out} (transformers.AutoModelForMaskedLM / AutoTokenizer.from_pretrained load it)")
    _truncation_note(a.out, f"pipeline('fill-mask', model='{a.out}', tokenizer_kwargs={{'truncation': True}})")


def _truncation_note(out: str, call: str) -> None:
    """transformers' tokenizers truncate only when asked (no setting of an exported directory can
    make that the default), and a text longer than the position table fails in the model."""
    config = Path(out) / "tokenizer_config.json"
    if config.is_file():
        n = json.loads(config.read_text())["model_max_length"]
        print(f"note: transformers' pipelines do not truncate unless asked: for texts over {n} tokens, use {call}")


def cmd_import_hf(a) -> None:
    from roberta.hf import import_hf

    claim_out(a.out, a.overwrite, "import-hf")
    for note in import_hf(a.checkpoint, a.out):
        print(f"note: {note}")
    print(f"imported -> {a.out} (continue pretraining with `roberta pretrain --checkpoint {a.out}`)")


def register(sub) -> None:
    s = command(sub, "fill-mask", "predict the <mask> token in TEXT (each one, if several)",
                "roberta fill-mask --checkpoint runs/r \"The capital of France is <mask>.\"")
    s.add_argument("--checkpoint", required=True, help="a checkpoint directory, or a run (its latest checkpoint)")
    s.add_argument("text", metavar="TEXT", help="text with one or more <mask>")
    s.add_argument("--top-k", type=int, default=5, help="candidates per <mask> (at most the vocabulary)")
    add_threads(s)
    s.set_defaults(fn=cmd_fill_mask)

    s = command(sub, "export-hf", "write a checkpoint or a fine-tuned model as a Hugging Face model directory",
                "roberta export-hf --checkpoint runs/r --out hf-model        # RobertaForMaskedLM\n"
                "roberta export-hf --checkpoint ft/mine --out hf-classifier  # RobertaForSequenceClassification")
    s.add_argument("--checkpoint", required=True,
                   help="a checkpoint or run (-> RobertaForMaskedLM; a modern-family one -> ModernBertForMaskedLM), "
                   "or a finetune --out (-> a sequence classifier)")
    s.add_argument("--out", required=True, help="the transformers model directory to write")
    add_overwrite(s)
    s.set_defaults(fn=cmd_export_hf)

    s = command(sub, "import-hf", "turn a local Hugging Face RoBERTa or ModernBERT directory into a checkpoint",
                "roberta import-hf --checkpoint ~/.cache/huggingface/hub/models--FacebookAI--roberta-base --out imported")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a directory holding config.json + weights (+ tokenizer), or a hub "
                       "cache directory models--org--name (its refs/main snapshot)")
    which.add_argument("--model", dest="checkpoint", action=Renamed, new="--checkpoint", help=argparse.SUPPRESS)
    s.add_argument("--out", required=True, help="the checkpoint directory to write")
    add_overwrite(s)
    s.set_defaults(fn=cmd_import_hf)
