"""Hugging Face interop: our checkpoint <-> a `transformers` RobertaForMaskedLM directory, or a
ModernBertForMaskedLM one for the modern family (its names and config: roberta.hf_modern).

    export_hf(CKPT, OUT)   OUT loads with AutoModelForMaskedLM / AutoTokenizer.from_pretrained
    import_hf(HF_DIR, OUT) OUT is our checkpoint dir: roberta.load, `pretrain --checkpoint`

Our parameter names already are HF's for the embeddings and the LM head; a block differs only in
its short names and in the fused q/k/v projection, which is split or concatenated here. Export
needs nothing beyond safetensors; import reads through `transformers` (any format it can load:
safetensors, .bin, shards) and so needs the optional extra `pip install 'roberta[hf]'`.

Token ids: our code keeps <s> <pad> </s> <unk> <mask> at ids 0-4; RoBERTa's released tokenizer
has <mask> at 50264, ModernBERT's [CLS] [SEP] [PAD] [MASK] at 50281-50284. Import renumbers such a
vocabulary (tokenizer and embedding rows together), the tokens of the five roles (found by the
tokenizer's cls/bos, pad, sep/eos, unk and mask tokens, whatever their names) first, so the
imported model predicts exactly what the original does, only under other ids.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, processors

from roberta.training import checkpoint as ckpt
from roberta.config import ModelConfig, positions_for, uses_rope
from roberta.errors import UserError
from roberta.data.hubcache import hub_snapshot, is_hub_repo
from roberta.hf_modern import from_hf_modern_state, hf_modern_config, model_config_from_modern, to_hf_modern_state
from roberta.model import build_model, max_seq_len
from roberta.presets import base, modern_base
from roberta.tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, load_tokenizer, save_tokenizer

# ours (under roberta.layers.{i}.) -> HF's (under roberta.encoder.layer.{i}.); q/k/v handled apart
_BLOCK_NAMES = {
    "attention.out": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "ffn.up": "intermediate.dense",
    "ffn.down": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
_FROM_HF = {v: k for k, v in _BLOCK_NAMES.items()}
_QKV = ("query", "key", "value")
_OURS_BLOCK = re.compile(r"^roberta\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_HF_BLOCK = re.compile(r"^roberta\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
# HF keys with no counterpart here: buffers, the pooler RobertaForMaskedLM never uses, tied copies
_HF_SKIP = re.compile(r"(position_ids|token_type_ids)$|^roberta\.pooler\.|^lm_head\.decoder\.")


# ---- weights -------------------------------------------------------------------------------

def to_hf_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> RobertaForMaskedLM's (decoder tied, so stored once as word embeddings)."""
    out = {}
    for key, value in state.items():
        m = _OURS_BLOCK.match(key)
        if key.startswith("nsp_head."):
            continue  # RobertaForMaskedLM has no NSP head; export_hf says so
        if m is None:
            out[key] = value  # embeddings and lm_head: the same names
        elif m.group(2) == "attention.qkv":
            i, kind = m.group(1), m.group(3)
            for name, part in zip(_QKV, value.chunk(3, dim=0)):  # (3C, C) -> 3 x (C, C)
                out[f"roberta.encoder.layer.{i}.attention.self.{name}.{kind}"] = part.clone()
        else:
            i, name, kind = m.groups()
            out[f"roberta.encoder.layer.{i}.{_BLOCK_NAMES[name]}.{kind}"] = value
    return out


def from_hf_state(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RobertaForMaskedLM's state dict -> ours. Unknown keys are a UserError."""
    out, qkv = {}, {}
    for key, value in hf_state.items():
        if _HF_SKIP.search(key):
            continue
        m = _HF_BLOCK.match(key)
        if m is None:
            out[key] = value
            continue
        i, name, kind = m.groups()
        if name.startswith("attention.self."):
            qkv[(i, kind, name.rsplit(".", 1)[1])] = value
        elif name in _FROM_HF:
            out[f"roberta.layers.{i}.{_FROM_HF[name]}.{kind}"] = value
        else:
            raise UserError(f"{key}: a weight this RoBERTa does not have (relative attention? adapters?); "
                            "only plain RobertaForMaskedLM checkpoints can be imported")
    for i, kind in sorted({(i, kind) for i, kind, _ in qkv}):
        out[f"roberta.layers.{i}.attention.qkv.{kind}"] = torch.cat([qkv[(i, kind, n)] for n in _QKV])
    return out


# ---- configs -------------------------------------------------------------------------------

def hf_config(m: ModelConfig) -> dict:
    """The RobertaConfig (as config.json) for our model config; refuses what HF cannot express."""
    unsupported = [why for bad, why in ((m.norm != "post", "model.norm=pre (HF RoBERTa is post-LN)"),
                                        (not m.bias, "model.bias=false (HF RoBERTa has biases)"),
                                        (m.glu, "model.glu=true (HF RoBERTa has no gated FFN)"),
                                        (uses_rope(m), "model.position=rope (HF RoBERTa has a learned position "
                                                       "table)")) if bad]
    if unsupported:
        raise UserError(f"cannot export to Hugging Face RoBERTa: {'; '.join(unsupported)}; "
                        "only the paper's architecture has a transformers equivalent")
    return {
        "architectures": ["RobertaForMaskedLM"], "model_type": "roberta",
        "vocab_size": m.vocab_size, "hidden_size": m.hidden, "num_hidden_layers": m.layers,
        "num_attention_heads": m.heads, "intermediate_size": m.ffn, "hidden_act": "gelu",
        "hidden_dropout_prob": m.dropout, "attention_probs_dropout_prob": m.attention_dropout,
        "max_position_embeddings": m.max_positions, "type_vocab_size": 1, "initializer_range": 0.02,
        "layer_norm_eps": m.layer_norm_eps, "position_embedding_type": "absolute",
        "pad_token_id": m.pad_token_id, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
        "tie_word_embeddings": True, "is_decoder": False,
    }


def model_config_from_hf(c: dict, source: Path) -> ModelConfig:
    """Our ModelConfig for an HF RobertaConfig dict; refuses what our encoder cannot express."""
    where = source / "config.json"
    if c.get("model_type") != "roberta":
        raise UserError(f"{where}: model_type is {c.get('model_type')!r}; only 'roberta' models can be imported")
    checks = [
        (c.get("hidden_act", "gelu") == "gelu", f"hidden_act={c.get('hidden_act')!r} (only 'gelu')"),
        (c.get("position_embedding_type", "absolute") == "absolute",
         f"position_embedding_type={c.get('position_embedding_type')!r} (only 'absolute')"),
        (not c.get("is_decoder") and not c.get("add_cross_attention"), "a decoder / cross-attention model"),
        (c.get("pad_token_id", PAD_ID) == PAD_ID, f"pad_token_id={c.get('pad_token_id')} (RoBERTa's is {PAD_ID}; "
                                                  "it also sets the position offset)"),
    ]
    bad = [why for ok, why in checks if not ok]
    if bad:
        raise UserError(f"{where}: cannot import {'; '.join(bad)}")
    return ModelConfig(
        vocab_size=c["vocab_size"], layers=c["num_hidden_layers"], hidden=c["hidden_size"],
        heads=c["num_attention_heads"], ffn=c["intermediate_size"], max_positions=c["max_position_embeddings"],
        dropout=c.get("hidden_dropout_prob", 0.1), attention_dropout=c.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=c.get("layer_norm_eps", 1e-12), pad_token_id=PAD_ID, position="learned")


# ---- tokenizers ----------------------------------------------------------------------------

def special_first_order(tok: Tokenizer, vocab_size: int, source: Path, names: list[str | None] | None = None,
                        pad_may_move: bool = False) -> list[int] | None:
    """None if the special tokens of the roles <s> <pad> </s> <unk> <mask> (`names`, by default
    those; [CLS] [PAD] [SEP] [UNK] [MASK] for ModernBERT) already are ids 0-4; else `order` with
    new id j = old id order[j]: the special tokens first, every other id after them in its old order."""
    names = names or SPECIAL_TOKENS
    ids = [None if t is None else tok.token_to_id(t) for t in names]
    if None in ids:
        missing = [role for role, t, i in zip(SPECIAL_TOKENS, names, ids) if t is None or i is None]
        raise UserError(f"{source}: the tokenizer has no token for the role(s) {' '.join(missing)}; "
                        f"an encoder here needs all of {' '.join(SPECIAL_TOKENS)} (or [CLS] [PAD] [SEP] [UNK] [MASK])")
    if tok.get_vocab_size() > vocab_size:
        raise UserError(f"{source}: the tokenizer has {tok.get_vocab_size()} tokens but the model only "
                        f"{vocab_size} embedding rows; they do not belong together")
    if ids == list(range(len(ids))):
        return None
    if ids[PAD_ID] != PAD_ID and not pad_may_move:
        raise UserError(f"{source}: <pad> is id {ids[PAD_ID]}, not {PAD_ID}; RoBERTa's position offset needs it there")
    specials = set(ids)
    return ids + [i for i in range(vocab_size) if i not in specials]


def renumber_tokenizer(tok: Tokenizer, order: list[int]) -> Tokenizer:
    """The same tokenizer with token old id order[j] moved to id j."""
    new_id = {old: new for new, old in enumerate(order)}
    spec = json.loads(tok.to_str())
    spec["model"]["vocab"] = {t: new_id[i] for t, i in spec["model"]["vocab"].items()}
    for added in spec["added_tokens"]:
        added["id"] = new_id[added["id"]]
    post = spec.get("post_processor")
    spec["post_processor"] = None
    out = Tokenizer.from_str(json.dumps(spec))
    # the post-processor names ids too: a [CLS] A [SEP] template keeps its form under the new ids
    # (ModernBERT's); anything else gets RoBERTa's <s> A </s> with the specials now at 0-4
    if post is not None and post.get("type") == "TemplateProcessing":
        for special in post["special_tokens"].values():
            special["ids"] = [new_id[i] for i in special["ids"]]
        out.post_processor = _template(post)
    else:
        out.post_processor = processors.RobertaProcessing((out.id_to_token(EOS_ID), EOS_ID),
                                                          (out.id_to_token(BOS_ID), BOS_ID),
                                                          trim_offsets=True, add_prefix_space=False)
    return out


def _template(post: dict) -> processors.TemplateProcessing:
    """tokenizers' TemplateProcessing from its JSON form (single / pair templates, special tokens)."""
    def piece(p: dict) -> str:
        if "SpecialToken" in p:
            return f"{p['SpecialToken']['id']}:{p['SpecialToken']['type_id']}"
        return f"${p['Sequence']['id']}:{p['Sequence']['type_id']}"

    return processors.TemplateProcessing(
        single=" ".join(map(piece, post["single"])), pair=" ".join(map(piece, post["pair"])),
        special_tokens=[(name, t["ids"][0]) for name, t in post["special_tokens"].items()])


# ---- the two directions --------------------------------------------------------------------

def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("import-hf needs the `transformers` package: pip install 'roberta[hf]'") from None
    return transformers


def _check_out(src: Path, out: Path) -> None:
    if out.resolve() == src.resolve():
        raise UserError(f"--out {out}: is the input directory; choose another so the input stays intact")
    out.mkdir(parents=True, exist_ok=True)


def export_hf(checkpoint: str | Path, out: str | Path) -> list[str]:
    """Write OUT as a transformers RobertaForMaskedLM dir (config, safetensors, tokenizer), or a
    ModernBertForMaskedLM one for a modern-family checkpoint. -> notes."""
    from roberta.training.checkpoint import load_model  # validates weights against config.json

    model, ck = load_model(checkpoint)
    modern = model.cfg.family == "modern"
    config = hf_modern_config(model.cfg) if modern else hf_config(model.cfg)
    out = Path(out)
    _check_out(ck, out)
    notes = []
    if model.nsp_head is not None:
        notes.append(f"the NSP head is not exported ({'ModernBert' if modern else 'Roberta'}ForMaskedLM has none); "
                     "masked-LM logits are unaffected")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    state = ckpt.model_state(model)
    state = to_hf_modern_state(state) if modern else to_hf_state(state)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    if (ck / "tokenizer.json").is_file():
        save_tokenizer(load_tokenizer(ck), out, model_max_length=max_seq_len(model.cfg))
    else:
        notes.append(f"{ck} has no tokenizer.json; {out} has no tokenizer")
    return notes


def _import_tokenizer(src: Path, state: dict[str, torch.Tensor], vocab_size: int, notes: list[str],
                      pad_may_move: bool = False) -> Tokenizer | None:
    """The HF directory's tokenizer (fast, converted if need be) with its special tokens for the
    roles <s> <pad> </s> <unk> <mask> (by name: cls/bos, pad, sep/eos, unk, mask) at ids 0-4; the
    vocabulary rows of `state` are permuted to match, in place."""
    if not any((src / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        notes.append(f"{src} has no tokenizer; prepare data with the tokenizer this model was trained with")
        return None
    hf_tok = _transformers().AutoTokenizer.from_pretrained(src)
    tok = hf_tok.backend_tokenizer
    names = [hf_tok.cls_token or hf_tok.bos_token, hf_tok.pad_token, hf_tok.sep_token or hf_tok.eos_token,
             hf_tok.unk_token, hf_tok.mask_token]
    order = special_first_order(tok, vocab_size, src, [str(t) if t is not None else None for t in names],
                                pad_may_move)
    if order is None:
        return tok
    rows = torch.tensor(order)
    for key in ("roberta.embeddings.word_embeddings.weight", "lm_head.bias"):  # the decoder is tied (both families)
        state[key] = state[key][rows]
    notes.append("special tokens moved to ids 0-4 (tokenizer and embedding rows renumbered together)")
    return renumber_tokenizer(tok, order)


def _model_dir(path: Path) -> tuple[Path, list[str]]:
    """A hub cache directory (models--org--name) -> its snapshot, and a note saying which."""
    if not is_hub_repo(path):
        return path, []
    snapshot, note = hub_snapshot(path)
    return snapshot, [note]


def import_hf(model_dir: str | Path, out: str | Path) -> list[str]:
    """Write OUT as our checkpoint dir from a local HF RobertaForMaskedLM or ModernBertForMaskedLM
    dir (or a hub cache directory models--org--name: its snapshot). -> notes."""
    src, notes = _model_dir(Path(model_dir))
    if not (src / "config.json").is_file():
        raise UserError(f"{src}: not a Hugging Face model directory (no config.json)")
    try:
        hf_cfg = json.loads((src / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{src / 'config.json'}: unreadable ({e})") from None
    read = _read_modernbert if hf_cfg.get("model_type") == "modernbert" else _read_roberta
    model_cfg, state, tok = read(src, hf_cfg, notes)
    model = build_model(model_cfg)
    ckpt.load_state(model, state, src)
    out = Path(out)
    _check_out(src, out)
    max_len = max_seq_len(model_cfg)
    recipe = modern_base() if model_cfg.family == "modern" else base()  # the preset of its size and family
    cfg = dataclasses.replace(recipe, model=model_cfg)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=max_len))
    (out / "config.json").write_text(cfg.to_json())
    if tok is not None:
        save_tokenizer(tok, out, model_max_length=max_len)
    save_file(ckpt.model_state(model), str(out / "model.safetensors"), metadata=ckpt.weights_metadata(out))
    return notes


def _load_hf(cls, src: Path):
    """transformers' model class `cls` from src in fp32, and its loading info."""
    try:
        return cls.from_pretrained(src, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise UserError(f"{src}: transformers could not load it ({e})") from None


def _read_roberta(src: Path, hf_cfg: dict, notes: list[str]) -> tuple[ModelConfig, dict, Tokenizer | None]:
    """A RobertaForMaskedLM directory -> (our config, our state dict, tokenizer or None)."""
    model_cfg = model_config_from_hf(hf_cfg, src)
    hf_model, info = _load_hf(_transformers().RobertaForMaskedLM, src)
    if any(k.startswith("lm_head.") for k in info.get("missing_keys", ())):
        notes.append("the checkpoint has no masked-LM head; it starts freshly initialised (continue pretraining first)")
    hf_state = hf_model.state_dict()
    if not torch.equal(hf_state["lm_head.decoder.weight"], hf_state["roberta.embeddings.word_embeddings.weight"]):
        raise UserError(f"{src}: its LM decoder is not tied to the input embeddings; this RoBERTa always ties them")
    types = hf_state["roberta.embeddings.token_type_embeddings.weight"]
    if types.shape[0] > 1:
        notes.append(f"{types.shape[0] - 1} unused token-type row(s) dropped: RoBERTa only ever uses type 0")
        hf_state["roberta.embeddings.token_type_embeddings.weight"] = types[:1]
    state = from_hf_state(hf_state)
    return model_cfg, state, _import_tokenizer(src, state, model_cfg.vocab_size, notes)


def _read_modernbert(src: Path, hf_cfg: dict, notes: list[str]) -> tuple[ModelConfig, dict, Tokenizer | None]:
    """A ModernBertForMaskedLM directory -> (our modern-family config, state dict, tokenizer or None).
    Its tokenizer comes along with [CLS] [PAD] [SEP] [UNK] [MASK] moved to ids 0-4 (rows renumbered)."""
    hf_model, info = _load_hf(_transformers().ModernBertForMaskedLM, src)
    model_cfg = model_config_from_modern(hf_model.config, str(src / "config.json"))
    if any(k.startswith(("head.", "decoder.")) for k in info.get("missing_keys", ())):
        notes.append("the checkpoint has no masked-LM head; it starts freshly initialised (continue pretraining first)")
    try:
        state = from_hf_modern_state(hf_model.state_dict())
    except UserError as e:
        raise UserError(f"{src}: {e}") from None
    # ModernBERT's rotary positions do not depend on the pad id, so its [PAD] may move to id 1 with the rest
    tok = _import_tokenizer(src, state, model_cfg.vocab_size, notes, pad_may_move=True)
    if tok is not None and model_cfg.pad_token_id != PAD_ID:
        model_cfg = dataclasses.replace(model_cfg, pad_token_id=PAD_ID,
                                        max_positions=positions_for(max_seq_len(model_cfg), PAD_ID))
    return model_cfg, state, tok


__all__ = ["export_hf", "import_hf", "to_hf_state", "from_hf_state", "hf_config", "model_config_from_hf"]
