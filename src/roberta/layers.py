"""Parts both model families share (roberta.model, roberta.modern): the LayerNorm that keeps the
residual stream's dtype, the MLM head with its fused loss, and the init.

A plain nn.Module library: no I/O, no distribution, no config parsing beyond ModelConfig's fields.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from roberta.masking import IGNORE  # the label of a position the MLM loss skips


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm that returns its input's dtype. Under bf16 autocast LayerNorm computes in
    fp32 and would return fp32, which makes the whole residual stream fp32 and doubles the bytes
    every fused elementwise kernel moves; cast back, the stream stays bf16 (Megatron's default).
    In fp32 both casts are no-ops. Same parameters and names as nn.LayerNorm (bias=False: none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 on every device by construction: CUDA autocast upcasts layer_norm, CPU autocast passes
        # bf16 through (today's CPU kernel accumulates in fp32 anyway; this does not depend on it)
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class LMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder (weights tied to word embeddings) + bias.
    RoBERTa's head has biases in dense and LayerNorm; ModernBERT's (bias=False) only the decoder's."""

    def __init__(self, hidden: int, vocab_size: int, eps: float, bias: bool = True):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden, bias=bias)
        self.layer_norm = LayerNorm(hidden, eps=eps, bias=bias)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, h: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.layer_norm(F.gelu(self.dense(h))), decoder_weight, self.bias)

    def loss_sum(self, h: torch.Tensor, targets: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of the logits at h (n, C) against targets (n,), IGNORE skipped.
        The softmax is fp32 (.float() is a no-op in fp32, autocast's own choice under bf16).
        A method of its own so that roberta.training.parallelize.compile_model compiles the whole head with its
        loss: the fp32 cast, log-softmax and loss then run as fused kernels, not eager ones."""
        return F.cross_entropy(self(h, decoder_weight).float(), targets, ignore_index=IGNORE, reduction="sum")


def rotary(seq_len: int, head_dim: int, theta: float, device: torch.device,
           positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of rotary position embeddings at positions 0..T-1: two (T, hs) fp32 tensors; or,
    given (B, T) positions (packed documents restart them), two (B, 1, T, hs) ones.
    Computed per forward (T x hs/2 products): no buffer to shard, save or materialise."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    if positions is None:
        positions = torch.arange(seq_len, dtype=torch.float, device=device)
    else:
        positions = positions.float()[:, None]  # (B, 1, T): one angle table for every head
    freqs = positions[..., None] * inv_freq  # (T, hs/2) or (B, 1, T, hs/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (T, hs): the halves rotate as pairs (i, i + hs/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, nh, T, hs) by its position's angles, in fp32, back in x's dtype."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def nsp_losses(nsp_logits: torch.Tensor, nsp_labels: torch.Tensor) -> dict:
    """{"nsp_loss_sum", "nsp_count"}: next-sentence prediction's summed loss over (B, 2) logits."""
    return {"nsp_loss_sum": F.cross_entropy(nsp_logits.float(), nsp_labels, reduction="sum"),
            "nsp_count": torch.tensor(nsp_labels.numel(), device=nsp_logits.device)}


def mlm_losses(lm_head: LMHead, h: torch.Tensor, decoder: torch.Tensor, labels: torch.Tensor,
               sparse: bool, masked_positions: torch.Tensor | None) -> dict:
    """{"mlm_loss_sum", "mlm_count"} for hidden states h (B, T, C) and labels (B, T). The sparse
    head gathers the labelled positions first, so the vocabulary projection runs only there.
    masked_positions: the flat indices (into B * T) of labels != IGNORE, in order, when the caller
    knows them (the trainer computes them with the masks, on the host); without them they are
    found here, a host sync on a GPU (a data-dependent shape)."""
    flat_labels = labels.reshape(-1)
    if sparse:
        if masked_positions is None:
            masked_positions = flat_labels.ne(IGNORE).nonzero().squeeze(1)
        loss = lm_head.loss_sum(h.flatten(0, 1).index_select(0, masked_positions),
                                flat_labels.index_select(0, masked_positions), decoder)  # (n_masked, V) logits
    else:
        loss = lm_head.loss_sum(h.flatten(0, 1), flat_labels, decoder)
    return {"mlm_loss_sum": loss, "mlm_count": labels.ne(IGNORE).sum()}


# the Linear layers whose output is added to the residual stream (or feeds the next head), by name
OUTPUT_PROJECTIONS = ("attention.out", "ffn.down", "lm_head.dense", "classifier.dense", "nsp_head.dense")


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """model.init (module.cfg.init; "normal" without a cfg):
    - normal: RoBERTa's: normal(0, std) weights, zero biases, LayerNorm 1/0, zero padding rows;
    - modernbert: ModernBERT's (transformers' ModernBertPreTrainedModel): truncated normal at +-2
      sigma, sigma = std for embeddings and input projections, std / sqrt(2 layers) for output
      projections (and the heads' dense layer), hidden^-0.5 for a classifier's last projection."""
    cfg = getattr(module, "cfg", None)
    modernbert = cfg is not None and cfg.init == "modernbert"

    def draw(weight: torch.Tensor, sigma: float) -> None:
        if modernbert:
            nn.init.trunc_normal_(weight, std=sigma, a=-2 * sigma, b=2 * sigma)
        else:
            nn.init.normal_(weight, std=sigma)

    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            sigma = std
            if modernbert and name.endswith(OUTPUT_PROJECTIONS):
                sigma = std / math.sqrt(2 * cfg.layers)
            elif modernbert and name.endswith("out_proj"):
                sigma = cfg.hidden ** -0.5
            draw(m.weight, sigma)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            draw(m.weight, std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, LMHead):
            nn.init.zeros_(m.bias)


def materialise(model: nn.Module, device: str | torch.device, seed: int | None) -> nn.Module:
    """A model built on the meta device -> real memory on `device`, initialised (seeded if asked)."""
    model = model.to_empty(device=device)
    if seed is not None:
        torch.manual_seed(seed)
    init_weights(model)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def require_resolved(cfg) -> None:
    """A model is built from a resolved ModelConfig: its derived sizes filled in."""
    if cfg.vocab_size is None or cfg.max_positions is None:
        raise ValueError("ModelConfig.vocab_size / max_positions are None (derive them): resolve the config "
                         "first (roberta.config.resolve_run), or give them")
