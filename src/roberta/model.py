"""The RoBERTa encoder and its heads: a plain nn.Module, no I/O, no distribution.

Faithful to fairseq/HF RoBERTa: learned absolute positions offset by padding_idx + 1 (position
ids are `cumsum(non-pad) + pad`, so seq_len 512 needs 514 rows), a single token type, post-LN
blocks, GELU, LM head dense -> GELU -> LayerNorm -> decoder tied to the word embeddings + bias.
Parameter names follow Hugging Face's where a module exists there, which keeps interop a rename.
"""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from roberta.config import ModelConfig, max_seq_len, padded_vocab_size, positions_for  # noqa: F401 (re-exported)
from roberta.masking import IGNORE  # the label of a position the MLM loss skips


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm that returns its input's dtype. Under bf16 autocast LayerNorm computes in
    fp32 and would return fp32, which makes the whole residual stream fp32 and doubles the bytes
    every fused elementwise kernel moves; cast back, the stream stays bf16 (Megatron's default).
    In fp32 both casts are no-ops. Same parameters and names as nn.LayerNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 on every device by construction: CUDA autocast upcasts layer_norm, CPU autocast passes
        # bf16 through (today's CPU kernel accumulates in fp32 anyway; this does not depend on it)
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden, bias=cfg.bias)  # fused q, k, v
        self.out = nn.Linear(cfg.hidden, cfg.hidden, bias=cfg.bias)
        self.attention_dropout = cfg.attention_dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attention_dropout if self.training else 0.0)
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

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.attention(self.attention_norm(x), attn_mask))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attention_norm(x + self.dropout(self.attention(x, attn_mask)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pad = cfg.pad_token_id
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden, padding_idx=cfg.pad_token_id)
        self.token_type_embeddings = nn.Embedding(1, cfg.hidden)
        self.LayerNorm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T, rows = input_ids.shape[1], self.position_embeddings.num_embeddings
        if T > rows - self.pad - 1:  # a shape check: no device sync, and a clearer error than an IndexError
            raise ValueError(f"input of {T} tokens is longer than the {rows - self.pad - 1} "
                             f"the position table holds ({rows} rows; positions start at padding_idx + 1)")
        # RoBERTa's positions: pad + 1, pad + 2, ... over real tokens, `pad` at padding. (B, T) ints,
        # computed from the ids (as fairseq/HF do) so left- or right-padding give the same states.
        not_pad = input_ids.ne(self.pad).int()
        positions = torch.cumsum(not_pad, dim=1) * not_pad + self.pad
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.dropout(self.LayerNorm(x))


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None or cfg.max_positions is None:
            raise ValueError("ModelConfig.vocab_size / max_positions are None (derive them): resolve the config "
                             "first (roberta.config.resolve_run), or give them")
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.final_norm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps) if cfg.norm == "pre" else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, C) hidden states. attention_mask: (B, T), 1 = real token."""
        # Without padding, SDPA runs mask-free (CPU flash kernel). The check is a host sync: free
        # on a CPU, but on a GPU it would stall the queue (the trainer drops all-ones masks itself)
        # and under torch.compile it is a graph break; there the mask is always passed.
        attn_mask = None
        if attention_mask is not None and (torch.compiler.is_compiling() or attention_mask.device.type != "cpu"
                                           or not bool(attention_mask.all())):
            attn_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): keys to attend to
        x = self.embeddings(input_ids)
        if torch.is_autocast_enabled(x.device.type):  # the residual stream in autocast's dtype (see LayerNorm)
            x = x.to(torch.get_autocast_dtype(x.device.type))
        for layer in self.layers:
            x = layer(x, attn_mask)
        return self.final_norm(x) if self.final_norm is not None else x


class LMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder (weights tied to word embeddings) + bias."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.layer_norm = LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.layer_norm(F.gelu(self.dense(h))), decoder_weight, self.bias)

    def loss_sum(self, h: torch.Tensor, targets: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of the logits at h (n, C) against targets (n,), IGNORE skipped.
        The softmax is fp32 (.float() is a no-op in fp32, autocast's own choice under bf16).
        A method of its own so that roberta.training.parallelize.compile_model compiles the whole head with its
        loss: the fp32 cast, log-softmax and loss then run as fused kernels, not eager ones."""
        return F.cross_entropy(self(h, decoder_weight).float(), targets, ignore_index=IGNORE, reduction="sum")


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
        self.lm_head = LMHead(cfg)
        self.nsp_head = ClassificationHead(cfg.hidden, 2, cfg.dropout) if cfg.nsp_head else None

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Dense MLM logits over every position: (B, T, V)."""
        h = self.roberta(input_ids, attention_mask)
        return self.lm_head(h, self.roberta.embeddings.word_embeddings.weight)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor,
                attention_mask: torch.Tensor | None = None, nsp_labels: torch.Tensor | None = None,
                masked_positions: torch.Tensor | None = None) -> dict:
        """Summed (not averaged) losses, so the caller can normalise over a whole global batch.

        Returns {"mlm_loss_sum", "mlm_count", "nsp_loss_sum"?, "nsp_count"?}. The sparse head
        gathers the labelled positions first, so the vocabulary projection runs only there.
        masked_positions: the flat indices (into B * T) of labels != IGNORE, in order, when the
        caller knows them (the trainer computes them with the masks, on the host); without them
        they are found here, a host sync on a GPU (a data-dependent shape).
        """
        h = self.roberta(input_ids, attention_mask)  # (B, T, C)
        decoder = self.roberta.embeddings.word_embeddings.weight
        flat_labels = labels.reshape(-1)
        if self.cfg.sparse_head:
            if masked_positions is None:
                masked_positions = flat_labels.ne(IGNORE).nonzero().squeeze(1)
            loss = self.lm_head.loss_sum(h.flatten(0, 1).index_select(0, masked_positions),
                                         flat_labels.index_select(0, masked_positions), decoder)  # (n_masked, V) logits
        else:
            loss = self.lm_head.loss_sum(h.flatten(0, 1), flat_labels, decoder)
        out = {"mlm_loss_sum": loss, "mlm_count": labels.ne(IGNORE).sum()}
        if self.nsp_head is not None and nsp_labels is not None:
            nsp_logits = self.nsp_head(h)
            out["nsp_loss_sum"] = F.cross_entropy(nsp_logits.float(), nsp_labels, reduction="sum")
            out["nsp_count"] = torch.tensor(nsp_labels.numel(), device=h.device)
        return out


class RobertaClassifier(nn.Module):
    """Encoder + RoBERTa's sentence head, for fine-tuning: (B, T) ids -> (B, n_out) logits
    (n_out = 1 for regression). Encoder parameter names match RobertaMLM's `roberta.*`."""

    def __init__(self, cfg: ModelConfig, n_out: int):
        super().__init__()
        self.cfg = cfg
        self.roberta = Encoder(cfg)
        self.classifier = ClassificationHead(cfg.hidden, n_out, cfg.dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.roberta(input_ids, attention_mask))


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """RoBERTa's init: normal(0, 0.02) weights, zero biases, LayerNorm 1/0, zero padding rows."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, LMHead):
            nn.init.zeros_(m.bias)


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", seed: int | None = None) -> RobertaMLM:
    """Build on the meta device (no memory, no init cost), then materialise on `device` and init."""
    with torch.device("meta"):
        model = RobertaMLM(cfg)
    return _materialise(model, device, seed)


def build_classifier(cfg: ModelConfig, n_out: int, device: str | torch.device = "cpu",
                     seed: int | None = None) -> RobertaClassifier:
    """A randomly initialised classifier; fine-tuning then loads pretrained `roberta.*` weights."""
    with torch.device("meta"):
        model = RobertaClassifier(cfg, n_out)
    return _materialise(model, device, seed)


def _materialise(model: nn.Module, device: str | torch.device, seed: int | None) -> nn.Module:
    model = model.to_empty(device=device)
    if seed is not None:
        torch.manual_seed(seed)
    init_weights(model)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matmul_params(cfg: ModelConfig) -> tuple[int, int]:
    """(weights every token multiplies through, weights of the LM head: dense + decoder)."""
    d = cfg.hidden
    per_layer = 4 * d * d + d * cfg.ffn * (2 if cfg.glu else 1) + cfg.ffn * d
    return cfg.layers * per_layer, d * d + d * cfg.vocab_size


def training_flops(cfg: ModelConfig, tokens: int, predicted: int, seq_len: int) -> float:
    """Training FLOPs (forward + backward = 6 per multiply-add weight) for `tokens` real tokens of
    sequences of length seq_len, `predicted` of them through the LM head. Attention adds
    12 * L * d * s per token (PaLM's accounting). The sparse head runs only at `predicted`
    positions; a dense head at every token."""
    body, head = matmul_params(cfg)
    head_tokens = predicted if cfg.sparse_head else tokens
    return 6.0 * (body * tokens + head * head_tokens) + 12.0 * cfg.layers * cfg.hidden * seq_len * tokens


__all__ = ["RobertaMLM", "RobertaClassifier", "Encoder", "ClassificationHead", "build_model", "build_classifier",
           "init_weights", "max_seq_len", "padded_vocab_size", "positions_for",
           "count_parameters", "training_flops", "matmul_params"]
