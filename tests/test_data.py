"""Corpus preparation: sentence splitting, readers (bad input included), prepared shards."""

from __future__ import annotations

import gzip
import json
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import SHARED_DATA, run_cli
from roberta.data import readers
from roberta.data.prepare import (bounded_map, chunk_documents, encode_chunk, encoder, load_split, prepare, read_meta,
                                  _hash_fraction)
from roberta.data.readers import MAX_DOC_CHARS, ReadStats, iter_documents, normalize
from roberta.data.sentences import split_sentences
from roberta.errors import UserError
from roberta.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def texts(corpus_docs) -> list[str]:
    """Real documents plus adversarial strings for the splitter."""
    out = [normalize(d) for d in corpus_docs[:300]]
    path = SHARED_DATA / "imdb" / "test.jsonl.gz"
    if path.is_file():
        with gzip.open(path, "rt", encoding="utf-8") as f:
            out += [normalize(json.loads(line)["text"]) for line, _ in zip(f, range(300))]
    rng = np.random.default_rng(0)
    alphabet = list("ab AZ.!?\"')]\n\t\r1,;-") + ["\x1c", "\x1f", "\x85", "\xa0", "\u2009", "\u3000", "\u2026", "中", "🤗"]
    out += ["".join(rng.choice(alphabet, int(rng.integers(1, 300)))) for _ in range(300)]
    out += ["Dr. Who met Mr. J. R. R. Tolkien, e.g. at 5 p.m. on the U.S. coast. Then? Yes!\n\n  Next line.  \n"]
    return out


# ---------------------------------------------------------------------------------- sentences

def test_sentences_concatenate_to_the_input(texts):
    for text in texts:
        pieces = split_sentences(text)
        assert "".join(pieces) == text
        assert all(pieces)


def test_encoding_sentence_by_sentence_equals_encoding_the_document(texts, tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    for text in texts:
        whole = tok.encode(text, add_special_tokens=False).ids
        pieces = split_sentences(text)
        assert [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids] == whole


def test_prepare_finds_each_sentences_tokens_from_its_offset(texts, tokenizer_dir):
    """What encode_chunk does (whole documents, char_to_token at each cut) equals encoding the
    sentences one by one."""
    chunk = encode_chunk(texts, encoder(str(tokenizer_dir)), 0.0, np.uint32)
    tok = load_tokenizer(tokenizer_dir)
    expected = [len(tok.encode(s, add_special_tokens=False).ids) for t in texts for s in split_sentences(t)]
    assert chunk.sent_tokens.tolist() == expected
    assert chunk.doc_sents.tolist() == [len(split_sentences(t)) for t in texts]
    assert chunk.tokens.tolist() == [i for t in texts for i in tok.encode(t, add_special_tokens=False).ids]


def test_splitter_cuts_at_sentence_ends_but_not_abbreviations():
    text = 'Dr. Smith met J. R. R. Tolkien, e.g. in St. Ives. "Really?" she asked. Yes!\nNew line\n\nPara 2.'
    assert split_sentences(text) == ['Dr. Smith met J. R. R. Tolkien, e.g. in St. Ives.', ' "Really?"',
                                     " she asked.", " Yes!", "\nNew line", "\n\nPara 2."]
    assert split_sentences("3.14 is pi. I came 1st. ok") == ["3.14 is pi.", " I came 1st.", " ok"]
    assert split_sentences("no split\x1cthere. \x1cnor here") == ["no split\x1cthere.", " \x1cnor here"]
    assert split_sentences("Wait... what?! Fine.\t(Really.) End") == ["Wait...", " what?!", " Fine.", "\t(Really.)", " End"]


# ---------------------------------------------------------------------------------- prepared data

def split_key(text: str) -> float:
    """A document's place in [0, 1): prepare splits train/valid by this hash of the text."""
    return _hash_fraction(text.encode("utf-8", "surrogatepass"))


def test_decoding_the_prepared_tokens_reproduces_every_document(data_dir, corpus_docs, tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    meta = read_meta(data_dir)
    splits = {name: load_split(data_dir, name, verify=True) for name in ("train", "valid")}
    seen = {"train": 0, "valid": 0}
    for doc in corpus_docs:
        doc = normalize(doc)
        if not doc:
            continue
        name = "valid" if split_key(doc) < meta["valid_fraction"] else "train"
        s, i = splits[name], seen[name]
        a, b = int(s.docs[i]), int(s.docs[i + 1])
        assert tok.decode(np.asarray(s.tokens[a:b]).tolist()) == doc
        sents = np.asarray(s.sents)[(s.sents >= a) & (s.sents <= b)]
        assert [tok.decode(np.asarray(s.tokens[x:y]).tolist()) for x, y in zip(sents[:-1], sents[1:])] == \
            split_sentences(doc)
        seen[name] += 1
    assert seen == {name: splits[name].n_docs for name in seen} and seen["valid"] > 0


def test_meta_counts_what_went_in_and_came_out(data_dir, corpus_docs):
    meta = read_meta(data_dir)
    n_docs = sum(1 for d in corpus_docs if normalize(d))
    assert meta["read"]["documents"] == meta["out"]["documents"] == n_docs
    assert meta["read"]["skipped"] == {} and meta["read"]["invalid_utf8_bytes"] == 0
    assert meta["dtype"] == "uint16" and len(meta["tokenizer_hash"]) == 16
    for name, info in meta["splits"].items():
        assert info["files"]["tokens"]["bytes"] == 2 * info["tokens"]
        assert info["files"]["docs"]["bytes"] == 8 * (info["documents"] + 1)
        assert info["files"]["sents"]["bytes"] == 8 * (info["sentences"] + 1)
    assert meta["out"]["tokens"] == sum(s["tokens"] for s in meta["splits"].values())


def test_worker_processes_give_byte_identical_output(data_dir, corpus_file, tokenizer_dir, tmp_path):
    r = prepare([str(corpus_file)], str(tokenizer_dir), str(tmp_path), seq_len=64, valid_fraction=0.05,
                workers=2, progress=False)
    ref = read_meta(data_dir)
    for name in ("train", "valid"):
        assert r.meta["splits"][name] == ref["splits"][name]  # counts and sha256 of every file
    line = r.summary()
    assert "documents" in line and "tokens" in line and "MB/s" in line and "\n" not in line


def test_the_pool_never_reads_more_than_in_flight_chunks_ahead():
    pulled, lock = [0], threading.Lock()

    def items():
        for i in range(200):
            with lock:
                pulled[0] += 1
            yield i

    with ThreadPoolExecutor(2) as pool:
        for n, result in enumerate(bounded_map(pool, lambda x: x * x, items(), in_flight=4), 1):
            assert result == (n - 1) ** 2  # in order
            assert pulled[0] - n <= 4  # submitted but not yet returned: at most in_flight


def test_chunks_are_bounded_by_documents_and_characters():
    docs = ["a" * 300] * 50 + ["b" * 5000] + ["c"] * 10
    chunks = list(chunk_documents(iter(docs), max_docs=8, max_chars=1000))
    assert sum(chunks, []) == docs
    assert all(len(c) <= 8 and (sum(map(len, c[:-1])) < 1000) for c in chunks)


# ---------------------------------------------------------------------------------- bad input

def _read(paths, **kw):
    stats = ReadStats()
    return list(iter_documents([str(p) for p in paths], stats=stats, **kw)), stats


def test_invalid_utf8_bytes_are_dropped_counted_and_located(tmp_path, capsys):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"caf\xc3\xa9 ok\nbad \xff\xfe bytes\n\nsecond \xc3( doc\n")
    docs, stats = _read([f])
    assert docs == ["café ok\nbad  bytes", "second ( doc"]
    assert stats.invalid_bytes == 3
    err = capsys.readouterr().err
    assert f"{f}:2: 2 invalid UTF-8 byte(s) dropped" in err and f"{f}:4: 1 invalid" in err
    assert "3 invalid UTF-8 bytes dropped" in stats.summary()


def test_a_file_of_blank_lines_is_reported_not_silently_empty(tmp_path, capsys):
    blank, good = tmp_path / "blank.txt", tmp_path / "good.txt"
    blank.write_text("\n  \n\t\n\n")
    good.write_text("one doc\n")
    docs, stats = _read([blank, good])
    assert docs == ["one doc"] and stats.skipped == {"file with no text": 1}
    assert f"{blank}: file with no text (4 lines, all blank); skipped" in capsys.readouterr().err


def test_jsonl_lines_that_are_not_json_or_lack_the_field_are_counted(tmp_path, capsys):
    f = tmp_path / "mixed.jsonl"
    f.write_text('{"text": "kept one"}\nnot json\n{"review": "x", "label": 1}\n{"text": 5}\n[1]\n'
                 '{"text": "lone \\ud800 surrogate"}\n{"text": "  "}\n\n{"text": "kept two"}\n')
    docs, stats = _read([f])
    assert docs == ["kept one", "lone  surrogate", "kept two"]
    assert stats.skipped == {"line is not valid JSON": 1, "no field 'text'": 1, "field 'text' is not a string": 1,
                             "line is not a JSON object": 1, "empty text": 1}
    assert stats.invalid_bytes == 1
    err = capsys.readouterr().err
    assert f"{f}:2: line is not valid JSON" in err
    assert f"{f}:3: no field 'text' (fields: review, label; choose one with --text-column)" in err


def test_gzipped_jsonl_and_a_too_long_json_line(tmp_path, monkeypatch):
    f = tmp_path / "docs.jsonl.gz"
    with gzip.open(f, "wt") as g:
        g.write(json.dumps({"text": "short"}) + "\n" + json.dumps({"text": "y" * 5000}) + "\n" +
                json.dumps({"text": "after"}) + "\n")
    monkeypatch.setattr(readers, "MAX_JSONL_LINE_BYTES", 1024)
    docs, stats = _read([f])
    assert docs == ["short", "after"] and stats.skipped == {"line over 1.0 KB": 1}


@pytest.mark.slow
def test_a_50mb_line_without_newline_streams_in_bounded_memory(tmp_path):
    f = tmp_path / "one_line.txt"
    unit = b"lorem ipsum dolor sit amet. " * 1000
    with open(f, "wb") as out:
        for _ in range(50_000_000 // len(unit) + 1):
            out.write(unit)
    size = f.stat().st_size
    tracemalloc.start()
    n_docs, chars, longest = 0, 0, 0
    try:
        stats = ReadStats()
        for doc in iter_documents([str(f)], stats=stats):
            n_docs, chars, longest = n_docs + 1, chars + len(doc.replace(" ", "")), max(longest, len(doc))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size >= 50_000_000
    assert peak < 16_000_000, f"peak {peak / 1e6:.0f} MB for a {size / 1e6:.0f} MB line"
    assert longest <= MAX_DOC_CHARS and n_docs >= size // MAX_DOC_CHARS
    assert chars == size // len(unit) * len(unit.replace(b" ", b""))  # every character kept
    assert stats.cut == 1 and stats.cut_into == n_docs and stats.documents == n_docs


def test_a_long_line_without_any_space_is_cut_hard(tmp_path, capsys):
    f = tmp_path / "blob.txt"
    f.write_text("é" * (MAX_DOC_CHARS * 2 + 10))  # 2-byte characters across read boundaries
    docs, stats = _read([f])
    assert [len(d) for d in docs] == [MAX_DOC_CHARS, MAX_DOC_CHARS, 10] and stats.invalid_bytes == 0
    assert f"{f}:1: document longer than" in capsys.readouterr().err


def test_parquet_is_read_by_batches_and_a_missing_column_is_named(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    f = tmp_path / "docs.parquet"
    texts = [f"document number {i}." for i in range(3000)] + [None]
    pq.write_table(pa.table({"body": texts, "n": list(range(3001))}), f, row_group_size=700)
    docs, stats = _read([f], text_field="body")
    assert docs == texts[:-1] and stats.skipped == {"null text": 1}
    with pytest.raises(UserError, match=r"no column 'text' \(columns: body, n\)"):
        _read([f])
    with pytest.raises(UserError, match="holds int64, not text"):
        _read([f], text_field="n")


def test_inputs_are_checked_before_anything_is_read(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.csv").write_text("a,b\n")
    for bad, message in ((tmp_path / "empty", "directory has no"), (tmp_path / "nope.txt", "no such file"),
                         (tmp_path / "notes.csv", "unsupported file type")):
        with pytest.raises(UserError, match=message):
            iter_documents([str(bad)])


# ---------------------------------------------------------------------------------- the CLI

def test_cli_prepare_skips_bad_lines_and_says_how_much_went_in_and_out(tmp_path, tokenizer_dir):
    (tmp_path / "nonutf.txt").write_bytes(b"good text \xff here.\n")
    (tmp_path / "blank.txt").write_text("\n\n\n")
    (tmp_path / "mixed.jsonl").write_text('{"text": "a fine line."}\nnot json\n{"body": "x"}\n')
    (tmp_path / "long.txt").write_text("word " * (MAX_DOC_CHARS // 5 + 1000))
    out = tmp_path / "out"
    r = run_cli("prepare", tmp_path / "nonutf.txt", tmp_path / "blank.txt", tmp_path / "mixed.jsonl",
                tmp_path / "long.txt", "--tokenizer", tokenizer_dir, "--out", out, "--threads", 1)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1
    line = r.stdout
    for part in ("in 4 file(s) -> 4 documents", "1 invalid UTF-8 bytes dropped", "1 skipped (file with no text)",
                 "1 skipped (line is not valid JSON)", "1 skipped (no field 'text')",
                 "1 over-long document(s) cut into 2", "tokens in", "MB/s"):
        assert part in line, part
    for where in ("nonutf.txt:1", "blank.txt", "mixed.jsonl:2", "mixed.jsonl:3", "long.txt:1"):
        assert where in r.stderr
    assert read_meta(out)["read"]["skipped"]["line is not valid JSON"] == 1


@pytest.mark.parametrize("case", ["empty-dir", "parquet-without-column", "blank-file", "missing-file",
                                  "no-field-anywhere", "bad-valid-fraction", "not-a-tokenizer"])
def test_cli_prepare_refuses_bad_input_with_one_line(case, tmp_path, tokenizer_dir):
    tok = tokenizer_dir
    extra = []
    if case == "empty-dir":
        (tmp_path / "corpus").mkdir()
        inp, expect = tmp_path / "corpus", "directory has no"
    elif case == "parquet-without-column":
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")
        inp, expect = tmp_path / "d.parquet", "no column 'text' (columns: body)"
        pq.write_table(pa.table({"body": ["x"]}), inp)
    elif case == "blank-file":
        inp, expect = tmp_path / "blank.txt", "no documents found"
        inp.write_text("\n \n")
    elif case == "missing-file":
        inp, expect = tmp_path / "absent.jsonl", "no such file"
    elif case == "no-field-anywhere":
        inp, expect = tmp_path / "d.jsonl", "no documents found"
        inp.write_text('{"review": "x"}\n' * 10)
    elif case == "bad-valid-fraction":
        inp, expect, extra = tmp_path / "ok.txt", "--valid-fraction", ["--valid-fraction", "1.5"]
        inp.write_text("fine\n")
    else:
        inp, expect, tok = tmp_path / "ok.txt", "not a tokenizer directory", tmp_path
        inp.write_text("fine\n")
    r = run_cli("prepare", inp, "--tokenizer", tok, "--out", tmp_path / "out", "--threads", 1, *extra)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expect in last and "Traceback" not in r.stderr
    if case != "no-field-anywhere" and case != "blank-file":
        assert r.stderr.count("\n") == 1  # exactly one line
    else:  # the warnings name file:line, the error line counts them
        assert "skipped" in last and str(inp) in r.stderr
    assert not (tmp_path / "out" / "meta.json").exists()


# ---- issue 15, item 4: a file that is not text is refused, a text file with a few bad bytes is not

@pytest.mark.parametrize("kind", ["executable", "gzip", "zip", "bzip2", "xz", "zstd", "nul", "random"])
def test_binary_or_compressed_input_under_a_text_name_is_refused(tmp_path, tokenizer_dir, kind):
    import bz2
    import io
    import lzma
    import zipfile

    text = b'{"text": "a line of perfectly good text"}\n' * 500
    rng = np.random.default_rng(0)
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("a.jsonl", text)
        payload = buf.getvalue()
    else:
        payload = {"executable": lambda: open("/bin/ls", "rb").read() if __import__("os").path.exists("/bin/ls")
                   else b"\x7fELF" + bytes(5000),
                   "gzip": lambda: gzip.compress(text), "bzip2": lambda: bz2.compress(text),
                   "xz": lambda: lzma.compress(text), "zstd": lambda: b"\x28\xb5\x2f\xfd" + bytes(rng.integers(0, 256, 4000)),
                   "nul": lambda: b"text\x00with\x00nul\x00bytes\n" * 100,
                   "random": lambda: bytes(rng.integers(128, 256, 8000).astype(np.uint8))}[kind]()
    for name in ("x.txt", "x.jsonl"):
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(UserError, match=rf"{name}: is .*not a \.(txt|jsonl) text file"):
            prepare([str(path)], str(tokenizer_dir), str(tmp_path / "out"), workers=1, progress=False)
        assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_few_invalid_bytes_in_real_text_stay_a_counted_warning(tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes(("Caf\xe9 au lait, na\xefve r\xe9sum\xe9. " * 20 + "\n\n").encode("latin-1") * 50)
    stats = ReadStats()
    docs = list(iter_documents([str(path)], stats=stats))
    assert len(docs) == 50 and stats.invalid_bytes == 50 * 20 * 4
    assert "invalid UTF-8 byte(s) dropped" in capsys.readouterr().err


def test_another_commands_output_is_not_a_corpus(data_dir, tokenizer_dir):
    with pytest.raises(UserError, match="prepared data"):
        iter_documents([str(data_dir)])  # its tokenizer/merges.txt would otherwise be read as text
    with pytest.raises(UserError, match="not a corpus"):
        iter_documents([str(tokenizer_dir)])


def test_a_directory_names_the_files_it_does_not_read(tmp_path, tokenizer_dir):
    """Issue 23: a corpus directory's other files (notes, a CSV, code, a blob, a man page .gz) read
    as "2 file(s)" with 5 ignored without a word. They are still not read, but one line names them
    and why, the summary counts them, and meta.json lists them."""
    corpus = tmp_path / "corpus"
    (corpus / "man").mkdir(parents=True)
    (corpus / "a.txt").write_text("The first document is here.\n\nThe second one follows it.\n")
    (corpus / "man" / "b.jsonl").write_text(json.dumps({"text": "A third document, in JSON."}) + "\n")
    (corpus / "README.md").write_text("# notes about the corpus\n")
    (corpus / "labels.csv").write_text("text,label\nx,1\n")
    (corpus / "clean.py").write_text("print('cleaning')\n")
    (corpus / "weights.bin").write_bytes(bytes(range(256)))
    (corpus / "man" / "ls.1.gz").write_bytes(gzip.compress(b".TH LS 1\n"))
    (corpus / ".DS_Store").write_bytes(b"\x00\x01")  # hidden files stay out of it, unnamed
    skipped = ["README.md", "clean.py", "labels.csv", "man/ls.1.gz", "weights.bin"]
    r = run_cli("train-tokenizer", corpus, "--out", tmp_path / "tok", "--vocab-size", "300", "--min-frequency", "1")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if "not a corpus format" in line]
    assert len(lines) == 1 and f"skipped 5 file(s) in {corpus}/" in lines[0], r.stderr
    assert lines[0].endswith(f"{', '.join(skipped)} (read are .txt, .jsonl, .jsonl.gz, .parquet, .arrow and "
                             "Hugging Face dataset directories)")
    assert "in 2 file(s)" in r.stdout and "5 skipped (file not a corpus format)" in r.stdout
    r = run_cli("prepare", corpus, "--tokenizer", tokenizer_dir, "--out", tmp_path / "data", "--seq-len", "16")
    assert r.returncode == 0, r.stderr
    assert "5 skipped (file not a corpus format)" in r.stdout
    read = read_meta(tmp_path / "data")["read"]
    assert read["files"] == 2 and read["skipped"] == {"file not a corpus format": 5}
    assert read["skipped_files"] == {"file not a corpus format": [str(corpus / name) for name in skipped]}
    # compressed or binary content under a corpus name is still refused, not skipped
    (corpus / "packed.txt").write_bytes(gzip.compress(b"hello\n" * 100))
    with pytest.raises(UserError, match="packed.txt: is gzip-compressed"):
        iter_documents([str(corpus)])
