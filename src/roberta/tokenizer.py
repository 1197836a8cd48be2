"""Byte-level BPE (GPT-2 / RoBERTa style) with the `tokenizers` library.

Special tokens sit at ids 0-4 exactly as in RoBERTa: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4. The
ids are what the code relies on, not the names: an imported tokenizer with other names for the same
five roles (ModernBERT's [CLS] [PAD] [SEP] [UNK] [MASK], moved to 0-4 by import-hf) works alike.
A saved tokenizer directory holds tokenizer.json (ours and HF fast), vocab.json + merges.txt
(the GPT-2 format) and tokenizer_config.json, so `AutoTokenizer.from_pretrained(DIR)` loads it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from roberta.errors import UserError

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
BOS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = range(5)
SPECIAL_IDS = (BOS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID)
WORD_START = "\u0120"  # 'Ġ': byte-level BPE's marker for a leading space
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def _frame(tok: Tokenizer) -> Tokenizer:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("</s>", EOS_ID), ("<s>", BOS_ID),
                                                      trim_offsets=True, add_prefix_space=False)
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int = 50265, min_frequency: int = 2) -> Tokenizer:
    """Train from an iterator of documents (streamed: the corpus is never held in memory; the
    trainer keeps word counts, which grow with the vocabulary of the corpus, not its size).
    All 256 bytes are in the initial alphabet, so any text encodes without <unk>."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(f"--vocab-size {vocab_size}: must be at least {MIN_VOCAB_SIZE} "
                        f"(256 byte tokens + {len(SPECIAL_TOKENS)} special tokens)")
    if min_frequency < 1:
        raise UserError(f"--min-frequency {min_frequency}: must be at least 1")
    tok = _frame(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[AddedToken(t, special=True, normalized=False,
                                                             lstrip=(t == "<mask>"))  # " <mask>" as RoBERTa
                                                  for t in SPECIAL_TOKENS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def special_names(tok: Tokenizer) -> list[str]:
    """The names of the special tokens at ids 0-4, in the order of SPECIAL_TOKENS' roles (<s> <pad>
    </s> <unk> <mask>): SPECIAL_TOKENS for ours, e.g. [CLS] [PAD] [SEP] [UNK] [MASK] for an
    imported ModernBERT tokenizer."""
    return [tok.id_to_token(i) for i in SPECIAL_IDS]


def save_tokenizer(tok: Tokenizer, out: str | Path, model_max_length: int = 512) -> None:
    """tokenizer.json (ours and HF fast), vocab.json + merges.txt (GPT-2 format) and the HF configs.
    `added_tokens_decoder` carries <mask>'s lstrip, so that HF built from vocab.json + merges.txt
    alone also encodes " <mask>" as one token, as RoBERTa does."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt
    # RoBERTa's names wherever they are (a released RoBERTa's <mask> is last), else the tokens at 0-4
    named = all(tok.token_to_id(t) is not None for t in SPECIAL_TOKENS)
    names = SPECIAL_TOKENS if named else special_names(tok)
    bos, pad, eos, unk, mask = names
    special = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "sep_token": eos,
               "pad_token": pad, "cls_token": bos, "mask_token": mask}
    config = {
        "tokenizer_class": "RobertaTokenizer", "model_max_length": model_max_length,
        "add_prefix_space": False, "trim_offsets": True, "errors": "replace", **special,
        "added_tokens_decoder": {str(tok.token_to_id(t)): {"content": t, "lstrip": t == mask, "rstrip": False,
                                                           "normalized": False, "single_word": False,
                                                           "special": True}
                                 for t in names},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def load_tokenizer(directory: str | Path) -> Tokenizer:
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{directory}: not a tokenizer directory (no tokenizer.json); "
                        "make one with `roberta train-tokenizer`")
    tok = Tokenizer.from_file(str(path))
    if special_names(tok) == SPECIAL_TOKENS:
        return tok
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    if not set(SPECIAL_IDS) <= special:  # other names are fine (an imported tokenizer's), other ids are not
        wrong = next(t for i, t in enumerate(SPECIAL_TOKENS) if tok.token_to_id(t) != i)
        raise UserError(f"{path}: special token {wrong} is not at id {SPECIAL_TOKENS.index(wrong)}; "
                        "RoBERTa tokenizers need <s> <pad> </s> <unk> <mask> at ids 0-4")
    return tok


def tokenizer_hash(directory: str | Path) -> str:
    """Byte hash of tokenizer.json, as meta.json's `tokenizer_hash` has always held it. It changes
    when a tool rewrites the file without changing a single id (import-hf writes `""` for `null`),
    so compatibility is decided by `tokenizer_fingerprint`; this stays for meta.json's older readers."""
    return hashlib.sha256((Path(directory) / "tokenizer.json").read_bytes()).hexdigest()[:16]


# the parts of tokenizer.json that decide which ids a text becomes (prepare encodes without the
# post-processor, and the decoder only maps ids back to text)
_ID_DEFINING = ("added_tokens", "normalizer", "pre_tokenizer", "model")


def _canonical(x):
    """`""` and `null` mean the same to `tokenizers` (no prefix / suffix); merges are written as
    "a b" strings by older versions and as ["a", "b"] pairs by newer ones."""
    if x == "":
        return None
    if isinstance(x, dict):
        return {k: _canonical(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_canonical(v) for v in x]
    return x


def tokenizer_fingerprint(directory: str | Path) -> str:
    """Hash of what determines the ids (vocabulary, merges, special tokens, normalizer and
    pre-tokenizer), canonicalised: two tokenizers with the same fingerprint turn every text into
    the same ids, whatever tool wrote their files."""
    path = Path(directory) / "tokenizer.json"
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable tokenizer.json ({e})") from None
    if not isinstance(spec, dict):
        raise UserError(f"{path}: not a tokenizer.json (expected a JSON object)")
    model = dict(spec.get("model") or {})
    if isinstance(model.get("merges"), list):
        model["merges"] = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]
    ids = _canonical({**{k: spec.get(k) for k in _ID_DEFINING}, "model": model})
    return hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()[:16]


def data_tokenizer_fingerprint(data_dir: str | Path, meta: dict) -> str:
    """The fingerprint of the tokenizer prepared data was made with. meta.json from before
    fingerprints holds only the byte hash: then the data's own tokenizer/ copy, checked against
    that hash, is fingerprinted."""
    if "tokenizer_fingerprint" in meta:
        return meta["tokenizer_fingerprint"]
    tok_dir = Path(data_dir) / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        raise UserError(f"{data_dir}: prepared data has no tokenizer/ copy; run `roberta prepare` again")
    if tokenizer_hash(tok_dir) != meta.get("tokenizer_hash"):
        raise UserError(f"{tok_dir}: tokenizer differs from the one the data was prepared with "
                        f"(hash {meta.get('tokenizer_hash')}); run `roberta prepare` again with the intended tokenizer")
    return tokenizer_fingerprint(tok_dir)


def same_tokenizer(tokenizer_dir: str | Path, data_dir: str | Path, meta: dict) -> bool:
    """Whether a tokenizer gives the ids the prepared data was made with (its fingerprint: what
    determines the ids, not the bytes of tokenizer.json)."""
    return tokenizer_fingerprint(tokenizer_dir) == data_tokenizer_fingerprint(data_dir, meta)


def check_same_tokenizer(tokenizer_dir: str | Path, data_dir: str | Path, meta: dict, what: str) -> None:
    """The one compatibility check between a tokenizer (a checkpoint's, data's own copy) and
    prepared data: the same ids for every text, or a UserError naming both."""
    if not same_tokenizer(tokenizer_dir, data_dir, meta):
        raise UserError(f"{data_dir}: prepared with a different tokenizer ({meta.get('vocab_size')} tokens) than "
                        f"{what} {tokenizer_dir}; prepare the data with `roberta prepare --tokenizer {tokenizer_dir}`")
