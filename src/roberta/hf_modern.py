"""Hugging Face interop for the modern family: our ModernMLM <-> transformers' ModernBertForMaskedLM.

roberta.hf holds the two directions (export_hf, import_hf) for both families; this module holds
what is the modern family's own: the weight names, mapped one to one (the fused q/k/v and the
gated FFN are laid out as HF lays them, so nothing is split or permuted), and the configs.

Token ids: our modern checkpoints use our tokenizer's ids (<s>=0 <pad>=1 </s>=2 <unk>=3
<mask>=4) and the exported config.json says so. A released ModernBERT's tokenizer ([CLS] [SEP]
[PAD] [MASK] at 50281-50284) is imported with those moved to ids 0-4 and the embedding rows with
them (roberta.hf); one without a tokenizer keeps its ids and pad id as they are.
"""

from __future__ import annotations

import re

import torch

from roberta.config import ModelConfig, max_seq_len, positions_for
from roberta.errors import UserError
from roberta.tokenizer import BOS_ID, EOS_ID, PAD_ID

# (ours, HF's): {i} is the layer index, {w} weight or bias; the same table read both ways
_NAMES = [
    ("roberta.embeddings.word_embeddings.weight", "model.embeddings.tok_embeddings.weight"),
    ("roberta.embeddings.norm.{w}", "model.embeddings.norm.{w}"),
    ("roberta.layers.{i}.attention_norm.{w}", "model.layers.{i}.attn_norm.{w}"),
    ("roberta.layers.{i}.attention.qkv.{w}", "model.layers.{i}.attn.Wqkv.{w}"),  # (3C, C): q, k, v, as HF's
    ("roberta.layers.{i}.attention.out.{w}", "model.layers.{i}.attn.Wo.{w}"),
    ("roberta.layers.{i}.ffn_norm.{w}", "model.layers.{i}.mlp_norm.{w}"),
    ("roberta.layers.{i}.ffn.up.{w}", "model.layers.{i}.mlp.Wi.{w}"),  # (2 ffn, C): x then gate, as HF's
    ("roberta.layers.{i}.ffn.down.{w}", "model.layers.{i}.mlp.Wo.{w}"),
    ("roberta.final_norm.{w}", "model.final_norm.{w}"),
    ("lm_head.dense.{w}", "head.dense.{w}"),
    ("lm_head.layer_norm.{w}", "head.norm.{w}"),
    ("lm_head.bias", "decoder.bias"),
]


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{w\}", r"(?P<w>weight|bias)"))


_TO_HF = [(_pattern(ours), hf) for ours, hf in _NAMES]
_FROM_HF = [(_pattern(hf), ours) for ours, hf in _NAMES]
_HF_TIED = "decoder.weight"  # ModernBertForMaskedLM's decoder is the embedding matrix (tied)


def _rename(key: str, table, what: str) -> str:
    for pattern, template in table:
        if m := pattern.fullmatch(key):
            return template.format(**m.groupdict())
    raise UserError(f"{key}: a weight the {what} does not have; only plain ModernBERT masked-LM checkpoints map")


def to_hf_modern_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ModernMLM's state dict -> ModernBertForMaskedLM's (the tied decoder stored once, as the embeddings)."""
    return {_rename(k, _TO_HF, "ModernBertForMaskedLM"): v for k, v in state.items()
            if not k.startswith("nsp_head.")}  # ModernBertForMaskedLM has no NSP head; export_hf says so


# ModernClassifier's sentence head (ours) -> ModernBertForSequenceClassification's: the same parts in
# the same order (dense -> GELU -> norm -> dropout -> projection), only the names differ
_CLASSIFIER_HEAD = {"classifier.dense": "head.dense", "classifier.norm": "head.norm",
                    "classifier.out_proj": "classifier"}


def to_hf_modern_classifier_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ModernClassifier's state dict -> ModernBertForSequenceClassification's (encoder as the masked
    LM's, under model.*; the sentence head renamed)."""
    head = {k: v for k, v in state.items() if k.startswith("classifier.")}
    encoder = {k: v for k, v in state.items() if k not in head}
    out = to_hf_modern_state(encoder)
    for key, value in head.items():
        part, w = key.rsplit(".", 1)
        if part not in _CLASSIFIER_HEAD:
            raise UserError(f"{key}: a weight ModernBertForSequenceClassification does not have")
        out[f"{_CLASSIFIER_HEAD[part]}.{w}"] = value
    return out


def from_hf_modern_state(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ModernBertForMaskedLM's state dict -> ModernMLM's. An untied decoder is refused."""
    decoder = hf_state.get(_HF_TIED)
    if decoder is not None and not torch.equal(decoder, hf_state["model.embeddings.tok_embeddings.weight"]):
        raise UserError("its decoder is not tied to the input embeddings; this ModernBERT always ties them")
    return {_rename(k, _FROM_HF, "modern family"): v for k, v in hf_state.items() if k != _HF_TIED}


def layer_types(m: ModelConfig) -> list[str]:
    """HF's per-layer attention kinds for our model.local_window / model.global_every."""
    return ["full_attention" if m.local_window == 0 or i % m.global_every == 0 else "sliding_attention"
            for i in range(m.layers)]


def hf_modern_config(m: ModelConfig) -> dict:
    """The ModernBertConfig (as config.json) for our modern-family model config."""
    return {
        "architectures": ["ModernBertForMaskedLM"], "model_type": "modernbert",
        "vocab_size": m.vocab_size, "hidden_size": m.hidden, "num_hidden_layers": m.layers,
        "num_attention_heads": m.heads, "intermediate_size": m.ffn, "hidden_activation": "gelu",
        "classifier_activation": "gelu", "max_position_embeddings": max_seq_len(m), "norm_eps": m.layer_norm_eps,
        # one switch, model.bias, is all four of HF's; the decoder always has its bias
        "norm_bias": m.bias, "attention_bias": m.bias, "mlp_bias": m.bias, "classifier_bias": m.bias,
        "decoder_bias": True, "embedding_dropout": m.dropout, "mlp_dropout": m.dropout,
        "attention_dropout": m.attention_dropout, "local_attention": m.local_window or 128,
        "layer_types": layer_types(m),
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": m.rope_theta},
                            "sliding_attention": {"rope_type": "default", "rope_theta": m.local_rope_theta}},
        "pad_token_id": m.pad_token_id, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
        "cls_token_id": BOS_ID, "sep_token_id": EOS_ID, "tie_word_embeddings": True, "initializer_range": 0.02,
    }


def global_every_of(types: list[str], where: str) -> tuple[int, bool]:
    """HF's layer_types -> (model.global_every, any local layer). Our layout is every n-th layer
    global, layer 0 included; any other layout is refused."""
    if "sliding_attention" not in types:
        return 1, False
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    n = full[1] if len(full) > 1 else len(types)
    if [i for i in range(len(types)) if i % n == 0] != full:
        raise UserError(f"{where}: layer_types {types} is not a global layer every n-th layer from layer 0; "
                        "model.global_every cannot express it")
    return n, True


def model_config_from_modern(c, where: str) -> ModelConfig:
    """Our ModelConfig for a transformers ModernBertConfig `c`; refuses what our modern family cannot express."""
    rope = c.rope_parameters
    checks = [
        (c.hidden_activation == "gelu" and c.classifier_activation == "gelu",
         f"hidden_activation={c.hidden_activation!r} / classifier_activation={c.classifier_activation!r} "
         "(only 'gelu')"),
        (c.norm_bias == c.attention_bias == c.mlp_bias == c.classifier_bias,
         "norm_bias, attention_bias, mlp_bias and classifier_bias differ (model.bias is one switch)"),
        (c.decoder_bias, "decoder_bias=false (the decoder always has its bias here)"),
        (all(rope[t].get("rope_type", "default") == "default" for t in rope), "a rope_type other than 'default'"),
        (c.local_attention % 2 == 0, f"local_attention={c.local_attention} (odd)"),
    ]
    bad = [why for ok, why in checks if not ok]
    if bad:
        raise UserError(f"{where}: cannot import {'; '.join(bad)}")
    every, local = global_every_of(list(c.layer_types), where)
    pad = PAD_ID if c.pad_token_id is None else c.pad_token_id
    return ModelConfig(
        family="modern", norm="pre", glu=True, bias=c.norm_bias, vocab_size=c.vocab_size, layers=c.num_hidden_layers,
        hidden=c.hidden_size, heads=c.num_attention_heads, ffn=c.intermediate_size,
        max_positions=positions_for(c.max_position_embeddings, pad), layer_norm_eps=c.norm_eps, pad_token_id=pad,
        dropout=c.mlp_dropout, attention_dropout=c.attention_dropout, nsp_head=False, position="rope",
        rope_theta=rope["full_attention"]["rope_theta"], local_rope_theta=rope["sliding_attention"]["rope_theta"],
        local_window=c.local_attention if local else 0, global_every=every)


__all__ = ["to_hf_modern_state", "to_hf_modern_classifier_state", "from_hf_modern_state", "hf_modern_config",
           "model_config_from_modern", "layer_types", "global_every_of"]
