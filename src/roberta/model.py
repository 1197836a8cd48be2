"""The RoBERTa encoder and its heads: a plain nn.Module, no I/O, no distribution.

Faithful to fairseq/HF RoBERTa: learned absolute positions offset by padding_idx + 1 (position
ids are `cumsum(non-pad) + pad`, so seq_len 512 needs 514 rows), a single token type, post-LN
blocks, GELU, LM head dense -> GELU -> LayerNorm -> decoder tied to the word embeddings + bias.
Parameter names follow Hugging Face's where a module exists there, which keeps interop a rename.
Switches away from it, one at a time: model.norm=pre, model.glu, model.bias=false, and
model.position=rope (rotary positions at model.rope_theta in every layer, no position table).

The second family, ModernBERT's, lives in roberta.modern; build_model / build_classifier pick the
family by model.family, and the parts both share (LayerNorm, the MLM head, init) are roberta.layers.
"""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from roberta.config import ModelConfig, max_seq_len, padded_vocab_size, positions_for, uses_rope  # noqa: F401
from roberta.attention import attend, document_positions, documents, key_padding_mask, unpack_documents
from roberta.layers import (LayerNorm, LMHead, apply_rotary, count_parameters, init_weights,  # noqa: F401
                            materialise, mlm_losses, nsp_losses, require_resolved, rotary)
from roberta.modern import ModernClassifier, ModernMLM


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden, bias=cfg.bias)  # fused q, k, v
        self.out = nn.Linear(cfg.hidden, cfg.hidden, bias=cfg.bias)
        self.attention_dropout = cfg.attention_dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
        if rope is not None:  # model.position=rope
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        y = attend(q, k, v, attn_mask, self.attention_dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.glu = cfg.glu
        self.up = nn.Linear(cfg.hidden, cfg.ffn * (2 if cfg.glu else 1), bias=cfg.bias)
        self.down = nn.Linear(cfg.ffn, cfg.hidden, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.glu:
            a, g = h.chunk(2, dim=-1)
            return self.down(F.gelu(g) * a)
        return self.down(F.gelu(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attention = SelfAttention(cfg)
        self.attention_norm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.attention(self.attention_norm(x), attn_mask, rope))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attention_norm(x + self.dropout(self.attention(x, attn_mask, rope)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pad = cfg.pad_token_id
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden, padding_idx=cfg.pad_token_id)
        self.max_len = max_seq_len(cfg)
        # model.position=rope: no table; the attention rotates queries and keys instead
        self.position_embeddings = None if uses_rope(cfg) else nn.Embedding(cfg.max_positions, cfg.hidden,
                                                                            padding_idx=cfg.pad_token_id)
        self.token_type_embeddings = nn.Embedding(1, cfg.hidden)
        self.LayerNorm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor, document_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]
        if T > self.max_len:  # a shape check: no device sync, and a clearer error than an IndexError
            raise ValueError(f"input of {T} tokens is longer than the {self.max_len} the model takes "
                             f"(model.max_positions rows; positions start at padding_idx + 1)")
        if self.position_embeddings is None:
            return self.dropout(self.LayerNorm(self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]))
        # RoBERTa's positions: pad + 1, pad + 2, ... over real tokens, `pad` at padding. (B, T) ints,
        # computed from the ids (as fairseq/HF do) so left- or right-padding give the same states.
        not_pad = input_ids.ne(self.pad).int()
        positions = torch.cumsum(not_pad, dim=1) * not_pad + self.pad
        if document_ids is not None:  # packed documents: pad + 1, pad + 2, ... again in each document
            real = document_ids.ne(0).long()
            positions = (document_positions(document_ids) + 1) * real + self.pad
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        require_resolved(cfg)
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.final_norm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps) if cfg.norm == "pre" else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, C) hidden states. attention_mask: (B, T), 1 = real token.
        document_ids: (B, T), 0 = padding, 1..k = the row's k-th packed document: each token then
        attends and counts its position within its own document only (the padding is in it too)."""
        x = self.embeddings(input_ids, document_ids)
        if torch.is_autocast_enabled(x.device.type):  # the residual stream in autocast's dtype (see LayerNorm)
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if document_ids is not None:  # block-diagonal (B, 1, T, T), or varlen Segments on a GPU
            attn_mask = documents(document_ids, x, self.cfg.attention_dropout, self.training)
        else:
            attn_mask = key_padding_mask(attention_mask)  # (B, 1, 1, T) keys to attend to, or None
        rope = None
        if self.embeddings.position_embeddings is None:  # rotary: 0..T-1, restarting in each packed document
            positions = document_positions(document_ids) if document_ids is not None else None
            rope = rotary(input_ids.shape[1], self.cfg.hidden // self.cfg.heads, self.cfg.rope_theta, x.device,
                          positions)
        for layer in self.layers:
            x = layer(x, attn_mask, rope)
        return self.final_norm(x) if self.final_norm is not None else x


class ClassificationHead(nn.Module):
    """RoBERTa's sentence head: <s> vector -> dropout -> dense -> tanh -> dropout -> projection."""

    def __init__(self, hidden: int, n_out: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden, n_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.dropout(h[:, 0])
        return self.out_proj(self.dropout(torch.tanh(self.dense(x))))


class RobertaMLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.roberta = Encoder(cfg)
        self.lm_head = LMHead(cfg.hidden, cfg.vocab_size, cfg.layer_norm_eps)
        self.nsp_head = ClassificationHead(cfg.hidden, 2, cfg.dropout) if cfg.nsp_head else None

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Dense MLM logits over every position: (B, T, V)."""
        h = self.roberta(input_ids, attention_mask, document_ids)
        return self.lm_head(h, self.roberta.embeddings.word_embeddings.weight)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor,
                attention_mask: torch.Tensor | None = None, nsp_labels: torch.Tensor | None = None,
                masked_positions: torch.Tensor | None = None, document_ids: torch.Tensor | None = None) -> dict:
        """Summed (not averaged) losses, so the caller can normalise over a whole global batch.

        Returns {"mlm_loss_sum", "mlm_count", "nsp_loss_sum"?, "nsp_count"?}. The sparse head
        gathers the labelled positions first, so the vocabulary projection runs only there.
        masked_positions: the flat indices (into B * T) of labels != IGNORE, in order, when the
        caller knows them (the trainer computes them with the masks, on the host); without them
        they are found here, a host sync on a GPU (a data-dependent shape). document_ids: see Encoder.
        """
        h = self.roberta(input_ids, attention_mask, document_ids)  # (B, T, C)
        out = mlm_losses(self.lm_head, h, self.roberta.embeddings.word_embeddings.weight, labels,
                         self.cfg.sparse_head, masked_positions)
        if self.nsp_head is not None and nsp_labels is not None:
            out.update(nsp_losses(self.nsp_head(h), nsp_labels))
        return out


class RobertaClassifier(nn.Module):
    """Encoder + RoBERTa's sentence head, for fine-tuning: (B, T) ids -> (B, n_out) logits
    (n_out = 1 for regression). Encoder parameter names match RobertaMLM's `roberta.*`."""

    def __init__(self, cfg: ModelConfig, n_out: int):
        super().__init__()
        self.cfg = cfg
        self.roberta = Encoder(cfg)
        self.classifier = ClassificationHead(cfg.hidden, n_out, cfg.dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """document_ids (see Encoder): packed examples, one row of logits per document, row-major."""
        h = self.roberta(input_ids, attention_mask, document_ids)
        if document_ids is not None:
            h, _ = unpack_documents(h, document_ids)
        return self.classifier(h)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu",
                seed: int | None = None) -> RobertaMLM | ModernMLM:
    """The MLM of cfg.family, built on the meta device (no memory, no init cost), then
    materialised on `device` and initialised."""
    with torch.device("meta"):
        model = MLM[cfg.family](cfg)
    return materialise(model, device, seed)


def build_classifier(cfg: ModelConfig, n_out: int, device: str | torch.device = "cpu",
                     seed: int | None = None) -> RobertaClassifier | ModernClassifier:
    """A randomly initialised classifier; fine-tuning then loads pretrained `roberta.*` weights."""
    with torch.device("meta"):
        model = CLASSIFIER[cfg.family](cfg, n_out)
    return materialise(model, device, seed)


MLM = {"roberta": RobertaMLM, "modern": ModernMLM}  # model.family -> its masked-LM
CLASSIFIER = {"roberta": RobertaClassifier, "modern": ModernClassifier}  # model.family -> its sentence classifier


def matmul_params(cfg: ModelConfig) -> tuple[int, int]:
    """(weights every token multiplies through, weights of the LM head: dense + decoder)."""
    d = cfg.hidden
    per_layer = 4 * d * d + d * cfg.ffn * (2 if cfg.glu else 1) + cfg.ffn * d
    return cfg.layers * per_layer, d * d + d * cfg.vocab_size


def attended_keys(cfg: ModelConfig, seq_len: int) -> int:
    """Keys a token attends to, summed over the layers: seq_len in a global layer, at most
    local_window + 1 (itself and local_window/2 on each side) in a local one."""
    local = cfg.family == "modern" and cfg.local_window > 0
    n_global = -(-cfg.layers // cfg.global_every) if local else cfg.layers
    return n_global * seq_len + (cfg.layers - n_global) * min(seq_len, cfg.local_window + 1)


def training_flops(cfg: ModelConfig, tokens: int, predicted: int, seq_len: int) -> float:
    """Training FLOPs (forward + backward = 6 per multiply-add weight) for `tokens` real tokens of
    sequences of length seq_len, `predicted` of them through the LM head. Attention adds
    12 * d * (keys attended) per token and layer (PaLM's accounting: 12 * L * d * s without local
    layers). The sparse head runs only at `predicted` positions; a dense head at every token."""
    body, head = matmul_params(cfg)
    head_tokens = predicted if cfg.sparse_head else tokens
    return 6.0 * (body * tokens + head * head_tokens) + 12.0 * cfg.hidden * attended_keys(cfg, seq_len) * tokens


__all__ = ["RobertaMLM", "RobertaClassifier", "ModernMLM", "ModernClassifier", "Encoder", "ClassificationHead",
           "build_model", "build_classifier", "attended_keys",
           "init_weights", "max_seq_len", "padded_vocab_size", "positions_for",
           "count_parameters", "training_flops", "matmul_params"]
