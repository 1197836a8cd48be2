"""The Python API: `roberta.load(path)` -> a model you can query.

    m = roberta.load("runs/quick")           # a checkpoint dir or a RUN_DIR (its latest checkpoint)
    m.fill_mask("The <mask> is red.")        # [{"token": " sky", "score": 0.41, "sequence": ...}, ...]
    m.embed(["a sentence", "another"])       # (2, hidden) mean-pooled last-layer vectors
"""

from __future__ import annotations

from pathlib import Path

import torch

from roberta import checkpoint as ckpt
from roberta.errors import UserError
from roberta.model import RobertaMLM, build_model, max_seq_len
from roberta.tokenizer import EOS_ID, MASK_ID, PAD_ID, load_tokenizer


class Pretrained:
    def __init__(self, model: RobertaMLM, tokenizer, path: Path):
        self.model, self.tokenizer, self.path = model.eval(), tokenizer, path
        self.max_len = max_seq_len(model.cfg)

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (B, T) ids and attention mask; a text too long keeps its closing </s>."""
        enc = [e.ids if len(e.ids) <= self.max_len else e.ids[: self.max_len - 1] + [EOS_ID]
               for e in self.tokenizer.encode_batch(texts)]
        T = max(len(e) for e in enc)
        ids = torch.full((len(enc), T), PAD_ID, dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = torch.tensor(e)
        return ids, ids.ne(PAD_ID).long()

    @torch.no_grad()
    def fill_mask(self, text: str, top_k: int = 5) -> list[dict]:
        if "<mask>" not in text:
            raise UserError(f"fill-mask: the text must contain <mask>: {text!r}")
        ids, attn = self._encode([text])
        where = (ids[0] == MASK_ID).nonzero().flatten()
        if len(where) == 0:
            raise UserError("fill-mask: <mask> was cut off by the model's maximum length")
        pos = int(where[0])
        h = self.model.roberta(ids, attn)[0, pos]  # (C,): only this position goes through the LM head
        probs = self.model.lm_head(h, self.model.roberta.embeddings.word_embeddings.weight).softmax(-1)
        top = probs.topk(top_k)
        out = []
        for p, i in zip(top.values.tolist(), top.indices.tolist()):
            filled = ids[0].clone()
            filled[pos] = i
            out.append({"token": self.tokenizer.decode([i]), "token_id": i, "score": p,
                        "sequence": self.tokenizer.decode(filled.tolist(), skip_special_tokens=True)})
        return out

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Sentence vectors: the mean of the last layer's states over real tokens, (N, hidden)."""
        out = []
        for i in range(0, len(texts), batch_size):
            ids, attn = self._encode(texts[i : i + batch_size])
            h = self.model.roberta(ids, attn)
            m = attn.unsqueeze(-1).to(h.dtype)
            out.append((h * m).sum(1) / m.sum(1))
        return torch.cat(out)


def load_model(path: str | Path, device: str = "cpu") -> tuple[RobertaMLM, Path]:
    ck = ckpt.resolve_checkpoint(path)
    cfg = ckpt.load_config(ck)
    model = build_model(cfg.model, device)
    ckpt.load_state(model, ckpt.load_weights(ck), ck / "model.safetensors")
    return model, ck


def load(path: str | Path, device: str = "cpu") -> Pretrained:
    model, ck = load_model(path, device)
    return Pretrained(model, load_tokenizer(ck), ck)


def load_any(path: str | Path, device: str = "cpu"):
    """A fine-tuned model (a `finetune` OUT or OUT/model) -> predict.Finetuned; else Pretrained."""
    from roberta.predict import Finetuned, finetuned_dir

    if finetuned_dir(path) is not None:
        return Finetuned(path, device=device)
    return load(path, device)
