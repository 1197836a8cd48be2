"""roberta: pretrain RoBERTa-style masked language models on your own text, with the training
recipe (masking, input format, batch size, lr scaling) as first-class, comparable switches."""

__version__ = "0.1.0"


def load(path, device: str = "cpu"):
    """Load a checkpoint (or a run directory's latest) for fill_mask / embed, or a fine-tuned model
    (a `roberta finetune` output directory or its model/) for predict. See roberta.api."""
    from roberta.api import load_any
    return load_any(path, device)

