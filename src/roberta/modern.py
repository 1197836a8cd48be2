"""The ModernBERT encoder and its heads (Warner et al. 2024): a plain nn.Module, no I/O, no distribution.

What differs from roberta.model's encoder, all as in AnswerDotAI's ModernBERT / transformers'
ModernBertModel: pre-norm blocks with a norm after the embeddings and a final norm, and no
attention norm in layer 0 (the embedding norm already normalises its input); no biases but the
decoder's (model.bias=false); a GeGLU FFN, gelu(x) * gate with ffn the gated width; rotary
positions 0..T-1 instead of a learned table (global layers base model.rope_theta, local layers
model.local_rope_theta); local layers attend only to tokens within +-local_window/2, and every
model.global_every-th layer (layer 0 included) attends globally. The MLM head is dense -> GELU ->
norm -> decoder tied to the embeddings + bias, with the same sparse-head contract as RobertaMLM.

Parameter names keep the roberta family's where a part is the same (`roberta.embeddings.
word_embeddings`, `roberta.layers.{i}`, `lm_head`), so the trainer, evaluation, compile and
fine-tuning see one shape of model; roberta.hf_modern renames to transformers' names.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from roberta.config import ModelConfig
import dataclasses

from roberta.attention import Segments, attend, document_positions, documents, key_padding_mask, unpack_documents
from roberta.layers import LayerNorm, LMHead, apply_rotary, mlm_losses, nsp_losses, require_resolved, rotary  # noqa: F401


def local_mask(seq_len: int, window: int, keys: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """The sliding-window mask of a local layer: True where query i may attend to key j, i.e.
    |i - j| <= window/2 and j is a real token. (T, T), or (B, 1, T, T) with a padding mask `keys`
    (B, 1, 1, T) or a block-diagonal document mask (B, 1, T, T). A padding query far from every
    real token would see no key at all (a NaN row that then spreads through the values), so each
    token always sees itself: real tokens are unaffected, their own key is inside the window."""
    idx = torch.arange(seq_len, device=device)
    near = (idx[:, None] - idx[None, :]).abs() <= window // 2  # (T, T)
    if keys is None:
        return near
    return (near & keys) | torch.eye(seq_len, dtype=torch.bool, device=device)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden, bias=cfg.bias)  # fused q, k, v (HF's Wqkv)
        self.out = nn.Linear(cfg.hidden, cfg.hidden, bias=cfg.bias)
        self.attention_dropout = cfg.attention_dropout
        self.out_dropout = nn.Dropout(cfg.attention_dropout)  # ModernBERT drops the output at the same rate

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        y = attend(q, k, v, attn_mask, self.attention_dropout if self.training else 0.0)
        return self.out_dropout(self.out(y.transpose(1, 2).reshape(B, T, C)))


class GeGLU(nn.Module):
    """up (C -> 2 ffn) split into x, gate -> gelu(x) * gate -> down (ffn -> C) (HF's Wi, Wo)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.hidden, 2 * cfg.ffn, bias=cfg.bias)
        self.down = nn.Linear(cfg.ffn, cfg.hidden, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.up(x).chunk(2, dim=-1)
        return self.down(self.dropout(F.gelu(h) * gate))


class Block(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + ffn(norm(x)). Layer 0 has no attention norm."""

    def __init__(self, cfg: ModelConfig, index: int):
        super().__init__()
        self.is_global = cfg.local_window == 0 or index % cfg.global_every == 0
        self.attention_norm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps, bias=cfg.bias) if index else nn.Identity()
        self.attention = Attention(cfg)
        self.ffn_norm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.ffn = GeGLU(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), rope, attn_mask)
        return x + self.ffn(self.ffn_norm(x))


class Embeddings(nn.Module):
    """Token embeddings -> norm -> dropout; positions enter as rotations inside attention."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.max_len = cfg.max_positions - cfg.pad_token_id - 1  # roberta.config.max_seq_len
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden, padding_idx=cfg.pad_token_id)
        self.norm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.max_len:  # the same bound as the roberta family's position table
            raise ValueError(f"input of {input_ids.shape[1]} tokens is longer than the model's {self.max_len}")
        return self.dropout(self.norm(self.word_embeddings(input_ids)))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        require_resolved(cfg)
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.layers))
        self.final_norm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps, bias=cfg.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, C) hidden states. attention_mask: (B, T), 1 = real token (right padding:
        positions are 0..T-1 whatever the mask, as in ModernBERT). document_ids: (B, T), 0 = padding,
        1..k = the row's k-th packed document: each token then attends (globally, or within its
        window) and counts its rotary position within its own document only; it replaces the mask."""
        x = self.embeddings(input_ids)
        if torch.is_autocast_enabled(x.device.type):  # the residual stream in autocast's dtype (see LayerNorm)
            x = x.to(torch.get_autocast_dtype(x.device.type))
        T, hs, c = x.shape[1], self.cfg.hidden // self.cfg.heads, self.cfg
        if document_ids is None:
            keys, positions = key_padding_mask(attention_mask), None  # (B, 1, 1, T) or None
        else:  # block-diagonal (B, 1, T, T) or varlen Segments; a window within stays a window of the document
            keys = documents(document_ids, x, c.attention_dropout, self.training)
            positions = document_positions(document_ids)
        rope = {True: rotary(T, hs, c.rope_theta, x.device, positions),
                False: rotary(T, hs, c.local_rope_theta, x.device, positions)}
        if not c.local_window:
            local = None
        elif isinstance(keys, Segments):  # varlen: the kernel's own window
            local = dataclasses.replace(keys, window=c.local_window)
        else:
            local = local_mask(T, c.local_window, keys, x.device)
        masks = {True: keys, False: local}
        for layer in self.layers:  # keyed by layer.is_global
            x = layer(x, rope[layer.is_global], masks[layer.is_global])
        return self.final_norm(x)


class ModernMLM(nn.Module):
    """Encoder + MLM head; called as RobertaMLM is (the trainer sees no difference)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.roberta = Encoder(cfg)
        self.lm_head = LMHead(cfg.hidden, cfg.vocab_size, cfg.layer_norm_eps, bias=cfg.bias)
        # ModernBERT has no next-sentence prediction; the +nsp formats (the paper's Table 2) get its sentence head
        self.nsp_head = ClassificationHead(cfg, 2) if cfg.nsp_head else None

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Dense MLM logits over every position: (B, T, V)."""
        h = self.roberta(input_ids, attention_mask, document_ids)
        return self.lm_head(h, self.roberta.embeddings.word_embeddings.weight)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                nsp_labels: torch.Tensor | None = None, masked_positions: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None) -> dict:
        """Summed losses {"mlm_loss_sum", "mlm_count"}: see RobertaMLM.forward and layers.mlm_losses."""
        h = self.roberta(input_ids, attention_mask, document_ids)  # (B, T, C)
        out = mlm_losses(self.lm_head, h, self.roberta.embeddings.word_embeddings.weight, labels,
                         self.cfg.sparse_head, masked_positions)
        if self.nsp_head is not None and nsp_labels is not None:
            out.update(nsp_losses(self.nsp_head(h, attention_mask), nsp_labels))
        return out


class ClassificationHead(nn.Module):
    """ModernBERT's sentence head: pooled vector -> dense -> GELU -> norm -> dropout -> projection.
    pooling "cls": the first token's state; "mean": the mean over real tokens."""

    def __init__(self, cfg: ModelConfig, n_out: int, pooling: str = "cls"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling={pooling!r}: choose cls or mean")
        self.pooling = pooling
        self.dense = nn.Linear(cfg.hidden, cfg.hidden, bias=cfg.bias)
        self.norm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out_proj = nn.Linear(cfg.hidden, n_out)

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.pooling == "cls":
            pooled = h[:, 0]  # (B, C)
        else:
            real = torch.ones(h.shape[:2], device=h.device) if attention_mask is None else attention_mask.to(h.dtype)
            pooled = (h * real[..., None]).sum(1) / real.sum(1, keepdim=True)  # (B, C)
        return self.out_proj(self.dropout(self.norm(F.gelu(self.dense(pooled)))))


class ModernClassifier(nn.Module):
    """Encoder + ModernBERT's sentence head, for fine-tuning: (B, T) ids -> (B, n_out) logits.
    Encoder parameter names match ModernMLM's `roberta.*`."""

    def __init__(self, cfg: ModelConfig, n_out: int, pooling: str = "cls"):
        super().__init__()
        self.cfg = cfg
        self.roberta = Encoder(cfg)
        self.classifier = ClassificationHead(cfg, n_out, pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """document_ids (see Encoder): packed examples, one row of logits per document, row-major."""
        h = self.roberta(input_ids, attention_mask, document_ids)
        if document_ids is not None:
            h, attention_mask = unpack_documents(h, document_ids)
        return self.classifier(h, attention_mask)


__all__ = ["ModernMLM", "ModernClassifier", "Encoder", "rotary", "apply_rotary", "local_mask"]
