"""Who attends to whom, for both model families: the padding mask, packed documents (a dense
block-diagonal mask on a CPU, varlen attention on a GPU), and the one call that runs attention.

A packed batch holds several documents per row, each a contiguous run of one document id
(0 = padding, 1..k = the row's k-th document). Every token attends, and counts its position,
within its own document only. `unpack_documents` turns a packed batch's states back into one
right-padded row per document, so a sentence head pools exactly what it would see had each
document run alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F


@cache
def varlen_kernel():
    """torch's varlen attention (FlashAttention over cumulative lengths: CUDA only, bf16/fp16, no
    dropout), or None on a torch without it (packed documents then take the dense mask everywhere).
    Imported only when a GPU run asks for it: importing it loads torch._inductor (~800 modules,
    seconds of start-up) that a CPU run has no use for. (Loaded, it also exposed a hang on a dead
    peer in the CLI's exit path, fixed there: roberta.cli._failed.)"""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def key_padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) attention mask (1 = real token) -> SDPA's boolean (B, 1, 1, T) keys to attend to, or
    None when there is no padding. Without padding SDPA runs mask-free (CPU flash kernel). The
    check is a host sync: free on a CPU, but on a GPU it would stall the queue (the trainer drops
    all-ones masks itself) and under torch.compile it is a graph break; there the mask is always passed."""
    if attention_mask is not None and (torch.compiler.is_compiling() or attention_mask.device.type != "cpu"
                                       or not bool(attention_mask.all())):
        return attention_mask.bool()[:, None, None, :]
    return None


def document_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> SDPA's boolean (B, 1, T, T) block-diagonal mask: query i attends to
    key j iff both lie in the same document. Padding attends only to padding (never an empty row,
    so no NaN), and no real token sees it. The CPU path of packed documents."""
    return (document_ids[:, :, None] == document_ids[:, None, :])[:, None]


def document_positions(document_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> (B, T) int64 position of each token within its document, 0-based:
    positions restart where the id changes (documents are contiguous runs of one id)."""
    idx = torch.arange(document_ids.shape[1], device=document_ids.device).expand_as(document_ids)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return idx - torch.where(starts, idx, 0).cummax(dim=1).values


@dataclass(frozen=True)
class Segments:
    """Packed documents for varlen attention: the batch's B * T tokens flattened and cut at every
    document boundary and row start (a row's padding is one more segment, attending to itself)."""
    cu: torch.Tensor  # (n + 1,) int32 cumulative segment lengths over the flattened batch
    max_len: int  # a bound on a segment's length: the row length T (no host sync to find the true one)
    window: int = 0  # a local layer's model.local_window: attend within +-window/2; 0 = the whole segment


def document_segments(document_ids: torch.Tensor) -> Segments:
    B, T = document_ids.shape
    flat = document_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::T] = True  # a row's first document starts there even if the row before ended in its id
    cu = torch.cat([starts.nonzero().squeeze(1), flat.new_tensor([B * T])]).to(torch.int32)
    return Segments(cu, T)


def varlen_runs(device: torch.device, dtype: torch.dtype, attention_dropout: float, training: bool) -> bool:
    """Whether packed documents run through varlen attention: a GPU, half precision (FlashAttention's),
    and no attention dropout while training (the kernel has none); else the dense block mask."""
    return (device.type == "cuda" and dtype in (torch.bfloat16, torch.float16)
            and not (training and attention_dropout > 0) and varlen_kernel() is not None)


def use_varlen(x: torch.Tensor, attention_dropout: float, training: bool) -> bool:
    return varlen_runs(x.device, x.dtype, attention_dropout, training)


def documents(document_ids: torch.Tensor, x: torch.Tensor, attention_dropout: float,
              training: bool) -> torch.Tensor | Segments:
    """The attention of a packed batch: Segments for varlen attention, or the dense block mask."""
    if use_varlen(x, attention_dropout, training):
        return document_segments(document_ids)
    return document_mask(document_ids)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | Segments | None,
           dropout_p: float = 0.0) -> torch.Tensor:
    """(B, nh, T, hs) queries, keys, values -> (B, nh, T, hs): SDPA under a boolean mask (or none),
    or varlen attention over Segments (the flattened batch, each segment on its own)."""
    if not isinstance(mask, Segments):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    B, nh, T, hs = q.shape
    q, k, v = (t.transpose(1, 2).reshape(B * T, nh, hs) for t in (q, k, v))
    half = mask.window // 2
    y = varlen_kernel()(q, k, v, mask.cu, mask.cu, mask.max_len, mask.max_len,
                        window_size=(half, half) if mask.window else (-1, -1))
    return y.view(B, T, nh, hs).transpose(1, 2)


def unpack_documents(h: torch.Tensor, document_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, T, C) states of packed rows -> (n, L, C): one right-padded row per document, in row-major
    order (row 0's documents first), and its (n, L) attention mask (1 = real token); L is the
    longest document. Padding states are zeros: a head reads the first token or the masked mean."""
    real = document_ids > 0
    per_row = document_ids.amax(1)  # documents per row (ids are 1..k)
    first = torch.cumsum(per_row, 0) - per_row  # each row's first document's index
    doc = (first[:, None] + document_ids - 1)[real]
    pos = document_positions(document_ids)[real]
    n, longest = torch.stack([per_row.sum(), pos.max()]).tolist()  # one host sync for both sizes
    L = longest + 1
    out = h.new_zeros(n, L, h.shape[-1])
    out[doc, pos] = h[real]
    mask = torch.zeros(n, L, dtype=torch.long, device=h.device)
    mask[doc, pos] = 1
    return out, mask
