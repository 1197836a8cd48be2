"""Byte-level BPE (GPT-2 / RoBERTa style) with the `tokenizers` library.

Special tokens sit at ids 0-4 exactly as in RoBERTa: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4.
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


def save_tokenizer(tok: Tokenizer, out: str | Path, model_max_length: int = 512) -> None:
    """tokenizer.json (ours and HF fast), vocab.json + merges.txt (GPT-2 format) and the HF configs.
    `added_tokens_decoder` carries <mask>'s lstrip, so that HF built from vocab.json + merges.txt
    alone also encodes " <mask>" as one token, as RoBERTa does."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
               "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
    config = {
        "tokenizer_class": "RobertaTokenizer", "model_max_length": model_max_length,
        "add_prefix_space": False, "trim_offsets": True, "errors": "replace", **special,
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": t == "<mask>", "rstrip": False,
                                          "normalized": False, "single_word": False, "special": True}
                                 for i, t in enumerate(SPECIAL_TOKENS)},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def load_tokenizer(directory: str | Path) -> Tokenizer:
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{directory}: not a tokenizer directory (no tokenizer.json); "
                        "make one with `roberta train-tokenizer`")
    tok = Tokenizer.from_file(str(path))
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise UserError(f"{path}: special token {t} is not at id {i}; "
                            "RoBERTa tokenizers need <s> <pad> </s> <unk> <mask> at ids 0-4")
    return tok


def tokenizer_hash(directory: str | Path) -> str:
    """Content hash of tokenizer.json: prepared data records it to detect a swapped tokenizer."""
    return hashlib.sha256((Path(directory) / "tokenizer.json").read_bytes()).hexdigest()[:16]
