"""Byte-level BPE: special ids, no <unk> ever, and Hugging Face loads our directory and agrees."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest

from conftest import SHARED_DATA, run_cli
from roberta.data.readers import normalize
from roberta.errors import UserError
from roberta.tokenizer import (MIN_VOCAB_SIZE, SPECIAL_TOKENS, UNK_ID, load_tokenizer, save_tokenizer,
                               train_tokenizer)


def _real_texts(corpus_docs, n=300) -> list[str]:
    """IMDB reviews when ../shared/data is there (text nobody here wrote), else the stdlib corpus."""
    path = SHARED_DATA / "imdb" / "test.jsonl.gz"
    if path.is_file():
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [normalize(json.loads(line)["text"]) for line, _ in zip(f, range(n))]
    return corpus_docs[-n:]


def test_special_tokens_sit_at_ids_0_to_4(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tok.get_vocab_size() == 1000


def test_any_text_encodes_without_unk_and_decodes_back(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    rng = np.random.default_rng(0)
    # characters the stdlib corpus never showed it: CJK, emoji, control bytes, combining marks
    alphabet = [chr(c) for c in [*range(1, 128), 0x301, 0x4E2D, 0x6587, 0x1F917, 0x1F600, 0x202F, 0xFFFD, 0x10FFFF]]
    texts = ["".join(rng.choice(alphabet, 200)) for _ in range(50)] + ["中文 🤗 \x00\x1c e\u0301"]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert UNK_ID not in ids
        assert tok.decode(ids) == text


def test_hugging_face_loads_our_directory_and_gives_the_same_ids(tokenizer_dir, corpus_docs, tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = load_tokenizer(tokenizer_dir)
    texts = _real_texts(corpus_docs)
    texts += ["Paris is the <mask> of France.", "a <mask>b", "  leading spaces and\ttabs\n\nparagraphs  "]
    # the full directory (tokenizer.json), and vocab.json + merges.txt alone (the GPT-2 format)
    gpt2_format = tmp_path / "gpt2"
    gpt2_format.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_dir / name, gpt2_format / name)
    for directory in (tokenizer_dir, gpt2_format):
        hf = transformers.RobertaTokenizerFast.from_pretrained(str(directory))
        assert hf.mask_token_id == 4 and hf.pad_token_id == 1 and hf.bos_token_id == 0 and hf.eos_token_id == 2
        assert hf(texts)["input_ids"] == [e.ids for e in ours.encode_batch(texts)], directory
        pair_ours = ours.encode(texts[0], texts[1]).ids
        assert hf(texts[0], texts[1])["input_ids"] == pair_ours  # <s> A </s></s> B </s>
        assert hf.decode(hf(texts[5])["input_ids"], skip_special_tokens=True,
                         clean_up_tokenization_spaces=False) == texts[5]


def test_vocab_size_below_the_byte_alphabet_is_refused():
    with pytest.raises(UserError, match="at least 261"):
        train_tokenizer(iter(["some text"]), vocab_size=MIN_VOCAB_SIZE - 1)


def test_cli_trains_a_tokenizer_and_refuses_bad_input(tmp_path, corpus_docs):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in corpus_docs[:300]))
    out = tmp_path / "tok"
    r = run_cli("train-tokenizer", corpus, "--out", out, "--vocab-size", 600, "--min-frequency", 3)
    assert r.returncode == 0, r.stderr
    assert "300 documents" in r.stdout
    assert {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert load_tokenizer(out).get_vocab_size() == 600

    (tmp_path / "empty").mkdir()
    for args in ([tmp_path / "empty", "--out", tmp_path / "t2"],
                 [corpus, "--out", tmp_path / "t3", "--vocab-size", 100]):
        r = run_cli("train-tokenizer", *args)
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_saved_directory_round_trips(tokenizer_dir, tmp_path):
    tok = load_tokenizer(tokenizer_dir)
    save_tokenizer(tok, tmp_path)
    again = load_tokenizer(tmp_path)
    text = "The quick brown fox; <mask> jumps."
    assert again.encode(text).ids == tok.encode(text).ids
    with pytest.raises(UserError, match="not a tokenizer directory"):
        load_tokenizer(tmp_path / "nowhere")
