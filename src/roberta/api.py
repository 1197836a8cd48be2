"""The Python API: `roberta.load(path)` -> a model you can query.

    m = roberta.load("runs/quick")           # a checkpoint dir or a RUN_DIR (its latest checkpoint)
    m.fill_mask("The <mask> is red.")        # [{"token": " sky", "score": 0.41, "sequence": ...}, ...]
    m.embed(["a sentence", "another"])       # (2, hidden) mean-pooled last-layer vectors
"""

from __future__ import annotations

from pathlib import Path

import torch

from roberta.training.checkpoint import load_model
from roberta.data.loader import pad_rows
from roberta.errors import UserError, WrongModelError
from roberta.model import RobertaMLM, max_seq_len
from roberta.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID, load_tokenizer, special_names


class Pretrained:
    def __init__(self, model: RobertaMLM, tokenizer, path: Path):
        self.model, self.tokenizer, self.path = model.eval(), tokenizer, path
        self.max_len = max_seq_len(model.cfg)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __getattr__(self, name: str):  # only for names a Pretrained lacks
        if name in ("predict", "outputs"):
            raise WrongModelError(
                f"{self.path} is a pretrained (masked-LM) checkpoint, which has no .{name}(): use .fill_mask() "
                f"or .embed() here, or fine-tune it (`roberta finetune --checkpoint {self.path} ...`) and "
                "roberta.load() its --out to predict labels")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (B, T) ids and attention mask on the model's device; a text too long keeps
        its closing </s>."""
        enc = [e.ids if len(e.ids) <= self.max_len else e.ids[: self.max_len - 1] + [EOS_ID]
               for e in self.tokenizer.encode_batch(texts)]
        ids, mask = pad_rows(enc)
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def fill_mask(self, text: str, top_k: int = 5) -> list[dict] | list[list[dict]]:
        """The top_k tokens for <mask>, best first: [{"token", "token_id", "score", "sequence"}].
        With several <mask>s, one such list per mask (as transformers' fill-mask pipeline), each
        predicted on its own with the other masks left in place. `<mask>` works with every
        tokenizer: with one whose mask token is another (ModernBERT's [MASK]), either is accepted."""
        mask = special_names(self.tokenizer)[4]
        if isinstance(text, str) and mask != "<mask>":
            text = text.replace("<mask>", mask)
        if not isinstance(text, str) or mask not in text:
            also = f" (or {mask}, this tokenizer's)" if mask != "<mask>" else ""
            raise UserError(f"fill-mask: the text must contain <mask>{also}: {text!r}")
        if top_k < 1:
            raise UserError(f"fill-mask: top_k={top_k}; must be >= 1")
        ids, attn = self._encode([text])
        where = (ids[0] == MASK_ID).nonzero().flatten().tolist()
        if len(where) == 0:
            raise UserError("fill-mask: <mask> was cut off by the model's maximum length")
        h = self.model.roberta(ids, attn)[0, where]  # (n_masks, C): only these go through the LM head
        logits = self.model.lm_head(h, self.model.roberta.embeddings.word_embeddings.weight)
        logits = logits[:, : self.tokenizer.get_vocab_size()]  # rows past the tokenizer's are padding
        top = logits.softmax(-1).topk(min(top_k, logits.shape[-1]))
        results = []
        for m, pos in enumerate(where):
            out = []
            for p, i in zip(top.values[m].tolist(), top.indices[m].tolist()):
                filled = ids[0].clone()
                filled[pos] = i
                body = [t for t in filled.tolist() if t not in (BOS_ID, EOS_ID, PAD_ID)]  # other masks stay
                out.append({"token": self.tokenizer.decode([i]), "token_id": i, "score": p,
                            "sequence": self.tokenizer.decode(body, skip_special_tokens=False)})
            results.append(out)
        return results[0] if len(results) == 1 else results

    @torch.no_grad()
    def embed(self, texts: list[str] | str, batch_size: int = 32) -> torch.Tensor:
        """Sentence vectors: the mean of the last layer's states over real tokens, (N, hidden).
        A single string is one text: (1, hidden); an empty list gives (0, hidden)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            bad = next(t for t in texts if not isinstance(t, str))
            raise TypeError(f"embed: expected strings, got a {type(bad).__name__}")
        if not texts:
            return torch.zeros(0, self.model.cfg.hidden, device=self.device)
        out = []
        for i in range(0, len(texts), batch_size):
            ids, attn = self._encode(texts[i : i + batch_size])
            h = self.model.roberta(ids, attn)
            m = attn.unsqueeze(-1).to(h.dtype)
            out.append((h * m).sum(1) / m.sum(1))
        return torch.cat(out)


def load(path: str | Path, device: str = "cpu") -> Pretrained:
    model, ck = load_model(path, device)
    return Pretrained(model, load_tokenizer(ck), ck)


def load_any(path: str | Path, device: str = "cpu"):
    """A fine-tuned model (a `finetune` OUT or OUT/model) -> predict.Finetuned; else Pretrained."""
    from roberta.downstream.predict import Finetuned, finetuned_dir

    if finetuned_dir(path) is not None:
        return Finetuned(path, device=device)
    return load(path, device)
