"""Interop with Hugging Face transformers: export-hf / import-hf give the same logits both ways.

Models are random (no hub access); every parameter, biases and LayerNorms included, is drawn
at random so that a weight mapped to the wrong place cannot hide behind a zero or a one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import roberta
from roberta.training import checkpoint as ckpt
from roberta.errors import UserError
from roberta.hf import export_hf, import_hf, renumber_tokenizer
from roberta.model import RobertaMLM, build_model, count_parameters, max_seq_len, padded_vocab_size
from roberta.config import resolve_run
from roberta.presets import base, large, roberta_tiny
from roberta.tokenizer import load_tokenizer, save_tokenizer
from roberta.training.loop import pretrain

from conftest import run_cli, tiny_config

transformers = pytest.importorskip("transformers")

# the paper's tiny preset, and two layers of roberta-base's width with its 514 position rows
TINY = resolve_run(roberta_tiny(), {"vocab_size": 1000, "seq_len": 128}).model  # 130 position rows
SHAPES = {"tiny": dict(TINY.__dict__, layers=4),
          "base-width": dict(resolve_run(base(), {"vocab_size": 1000, "seq_len": 512}).model.__dict__, layers=2)}


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if "norm" in name.lower() and name.endswith("weight") else 0.05 * noise)


def hf_config(shape: str, vocab: int, **kw):
    m = SHAPES[shape]
    values = dict(vocab_size=vocab, hidden_size=m["hidden"], num_hidden_layers=m["layers"],
                  num_attention_heads=m["heads"], intermediate_size=m["ffn"],
                  max_position_embeddings=m["max_positions"], type_vocab_size=1, layer_norm_eps=1e-5,
                  pad_token_id=1, bos_token_id=0, eos_token_id=2)
    values.update(kw)
    return transformers.RobertaConfig(**values)


def hf_batch(hf_tokenizer_dir: Path, texts: list[str], max_length: int) -> dict:
    tok = transformers.AutoTokenizer.from_pretrained(hf_tokenizer_dir)
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    assert enc["attention_mask"].eq(0).any()  # padding in the batch
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@pytest.fixture(scope="module")
def texts(corpus_docs) -> list[str]:
    """Real text of different lengths: one past 128 tokens (truncated by tiny), one short."""
    docs = [d for d in corpus_docs if 400 < len(d) < 3000]
    return [docs[0][:900], docs[1][:200], docs[2][:60], "The <mask> is returned."]


@pytest.mark.parametrize("shape", SHAPES)
def test_export_gives_transformers_the_same_logits(tmp_path, tokenizer_dir, texts, shape):
    # the vocabulary padded as `roberta pretrain` pads it: 1,000 tokens, 1,024 rows
    rows = padded_vocab_size(load_tokenizer(tokenizer_dir).get_vocab_size(), roberta_tiny().model.vocab_multiple)
    assert rows == 1024
    cfg = dataclasses.replace(roberta_tiny(), model=dataclasses.replace(roberta_tiny().model, **dict(SHAPES[shape], vocab_size=rows)))
    model = build_model(cfg.model, seed=0)
    randomise(model)
    ck = ckpt.save_checkpoint(tmp_path / "run", 1, model, cfg, tokenizer_dir)
    if shape == "tiny":
        r = run_cli("export-hf", "--checkpoint", tmp_path / "run", "--out", tmp_path / "hf")
        assert r.returncode == 0, r.stderr
    else:
        assert export_hf(ck, tmp_path / "hf") == []
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "RobertaForMaskedLM"
    assert count_parameters(hf) == count_parameters(model)
    batch = hf_batch(tmp_path / "hf", texts, None)  # None: the exported tokenizer knows the model's limit
    ours_tok = load_tokenizer(tokenizer_dir)
    longest = max(len(ours_tok.encode(t).ids) for t in texts)
    assert 128 < longest < 512 and batch["input_ids"].shape[1] == min(longest, max_seq_len(cfg.model))
    for row, text in zip(batch["input_ids"], texts):  # those not truncated: identical tokenization
        ids = ours_tok.encode(text).ids
        if len(ids) <= max_seq_len(cfg.model):
            assert row[: len(ids)].tolist() == ids
    model.eval()
    with torch.no_grad():
        theirs = hf(**batch).logits
        ours = model.logits(batch["input_ids"], batch["attention_mask"])
    assert (theirs - ours).abs().max() <= 1e-4
    assert ours.std() > 0.1  # a real comparison, not two near-constant outputs


@pytest.mark.parametrize("shape", SHAPES)
def test_import_gives_us_the_same_logits(tmp_path, tokenizer_dir, texts, shape):
    vocab = load_tokenizer(tokenizer_dir).get_vocab_size()
    torch.manual_seed(0)
    hf = transformers.RobertaForMaskedLM(hf_config(shape, vocab)).eval()
    randomise(hf)
    hf.save_pretrained(tmp_path / "hf")
    for f in tokenizer_dir.iterdir():
        shutil.copy2(f, tmp_path / "hf" / f.name)
    if shape == "tiny":
        r = run_cli("import-hf", "--checkpoint", tmp_path / "hf", "--out", tmp_path / "ours")
        assert r.returncode == 0, r.stderr
    else:
        assert import_hf(tmp_path / "hf", tmp_path / "ours") == []
    m = roberta.load(tmp_path / "ours")
    assert count_parameters(m.model) == count_parameters(hf)
    batch = hf_batch(tmp_path / "hf", texts, m.max_len)
    with torch.no_grad():
        theirs = hf(**batch).logits
        ours = m.model.logits(batch["input_ids"], batch["attention_mask"])
    assert (theirs - ours).abs().max() <= 1e-4
    assert ours.std() > 0.1
    # and back again: our export of the import is the original, bit for bit
    export_hf(tmp_path / "ours", tmp_path / "again")
    a, b = load_file(str(tmp_path / "hf" / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_import_moves_a_released_roberta_vocabulary_into_place(tmp_path, tokenizer_dir, texts):
    """RoBERTa's released tokenizer has <mask> last (50264), ours at 4: import renumbers rows."""
    ours = load_tokenizer(tokenizer_dir)
    vocab = ours.get_vocab_size()
    mask_last = [0, 1, 2, 3, *range(5, vocab), 4]  # new id j = our id mask_last[j]
    hf_dir = tmp_path / "hf"
    save_tokenizer(renumber_tokenizer(ours, mask_last), hf_dir)
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert hf_tok.mask_token_id == vocab - 1
    hf = transformers.RobertaForMaskedLM(hf_config("tiny", vocab)).eval()
    randomise(hf)
    hf.save_pretrained(hf_dir)
    notes = import_hf(hf_dir, tmp_path / "ours")
    assert any("renumbered" in n for n in notes)
    m = roberta.load(tmp_path / "ours")
    text = texts[3]
    hf_enc = hf_tok([text], return_tensors="pt")
    ours_ids = torch.tensor([m.tokenizer.encode(text).ids])
    assert 4 in ours_ids and vocab - 1 in hf_enc["input_ids"]
    with torch.no_grad():
        theirs = hf(**hf_enc).logits[0]
        mine = m.model.logits(ours_ids)[0]
    # the same prediction for every token string, under its id in each vocabulary
    hf_vocab, our_vocab = hf_tok.get_vocab(), m.tokenizer.get_vocab()
    tokens = sorted(our_vocab)
    assert set(tokens) == set(hf_vocab)
    torch.testing.assert_close(mine[:, [our_vocab[t] for t in tokens]], theirs[:, [hf_vocab[t] for t in tokens]],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("option,message", [({"norm": "pre"}, "post-LN"), ({"bias": False}, "biases"),
                                            ({"glu": True}, "gated"),
                                            ({"position": "rope"}, "model.position=rope")])
def test_export_refuses_what_transformers_cannot_express(tmp_path, tokenizer_dir, option, message):
    cfg = dataclasses.replace(roberta_tiny(), model=dataclasses.replace(
        TINY, layers=1, hidden=32, heads=2, ffn=64, vocab_size=1000, **option))
    ckpt.save_checkpoint(tmp_path / "run", 1, build_model(cfg.model, seed=0), cfg, tokenizer_dir)
    with pytest.raises(UserError, match=message):
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf" / "model.safetensors").exists()


def test_export_leaves_out_the_nsp_head_and_says_so(tmp_path, tokenizer_dir):
    cfg = dataclasses.replace(roberta_tiny(), model=dataclasses.replace(
        TINY, layers=1, hidden=32, heads=2, ffn=64, vocab_size=1000, nsp_head=True))
    ckpt.save_checkpoint(tmp_path / "run", 1, build_model(cfg.model, seed=0), cfg, tokenizer_dir)
    notes = export_hf(tmp_path / "run", tmp_path / "hf")
    assert any("NSP" in n for n in notes)
    assert not any(k.startswith("nsp") for k in load_file(str(tmp_path / "hf" / "model.safetensors")))


@pytest.mark.parametrize("change,message", [({"position_embedding_type": "relative_key"}, "position_embedding_type"),
                                            ({"hidden_act": "relu"}, "hidden_act"),
                                            ({"model_type": "bert"}, "model_type")])
def test_import_refuses_what_our_encoder_cannot_express(tmp_path, change, message):
    (tmp_path / "hf").mkdir()
    config = hf_config("tiny", 100).to_dict()
    config.update(change)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    r = run_cli("import-hf", "--checkpoint", tmp_path / "hf", "--out", tmp_path / "ours") if message == "model_type" else None
    if r is not None:
        assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    with pytest.raises(UserError, match=message):
        import_hf(tmp_path / "hf", tmp_path / "ours")


def test_import_without_transformers_says_how_to_install(tmp_path, monkeypatch, tokenizer_dir):
    hf = transformers.RobertaForMaskedLM(hf_config("tiny", 100))
    hf.save_pretrained(tmp_path / "hf")
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # import now fails
    with pytest.raises(UserError, match=r"roberta\[hf\]"):
        import_hf(tmp_path / "hf", tmp_path / "ours")


@pytest.mark.parametrize("preset", [base, large])
def test_parameter_counts_equal_transformers(preset):
    cfg = dataclasses.replace(resolve_run(preset(), {"vocab_size": 50265, "seq_len": 512}).model, vocab_size=50265)
    with torch.device("meta"):
        ours = RobertaMLM(cfg)
        theirs = transformers.RobertaForMaskedLM(transformers.RobertaConfig(
            vocab_size=50265, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads, intermediate_size=cfg.ffn,
            max_position_embeddings=cfg.max_positions, type_vocab_size=1))
    assert count_parameters(ours) == count_parameters(theirs)


def _hf_dir_with_tokenizer(path: Path, tok, vocab: int) -> Path:
    """A random 1 x 32 RobertaForMaskedLM -- deliberately unlike the tiny preset -- plus `tok`."""
    hf = transformers.RobertaForMaskedLM(transformers.RobertaConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=130, type_vocab_size=1, layer_norm_eps=1e-5))
    randomise(hf)
    hf.save_pretrained(path)
    save_tokenizer(tok, path)
    return path


def test_continue_pretraining_an_imported_model(tmp_path, tokenizer_dir, data_dir):
    tok = load_tokenizer(tokenizer_dir)
    import_hf(_hf_dir_with_tokenizer(tmp_path / "hf", tok, tok.get_vocab_size()), tmp_path / "imported")
    cfg = tiny_config("roberta-tiny", max_steps=2, lr=1e-9)  # the preset's 2 x 64: the checkpoint's 1 x 32 must win
    summary = pretrain(str(data_dir), str(tmp_path / "run"), cfg, progress=False,
                       init_from=str(tmp_path / "imported"))
    assert summary["step"] == 2
    run_cfg = ckpt.load_config(Path(summary["checkpoint"]))
    assert (run_cfg.model.layers, run_cfg.model.hidden, run_cfg.model.max_positions) == (1, 32, 130)
    before, after = ckpt.load_weights(tmp_path / "imported"), ckpt.load_weights(Path(summary["checkpoint"]))
    assert before.keys() == after.keys()
    for k in before:  # lr 1e-9: training started from the imported weights and barely moved them
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=1e-6, msg=k)


def test_continue_pretraining_refuses_another_vocabulary(tmp_path, tokenizer_dir, data_dir):
    tok = load_tokenizer(tokenizer_dir)
    vocab = tok.get_vocab_size()
    swapped = [*range(10), 11, 10, *range(12, vocab)]  # two ordinary tokens trade ids
    import_hf(_hf_dir_with_tokenizer(tmp_path / "hf", renumber_tokenizer(tok, swapped), vocab), tmp_path / "imported")
    with pytest.raises(UserError, match="vocabulary"):
        pretrain(str(data_dir), str(tmp_path / "run"), tiny_config("roberta-tiny", max_steps=1),
                 progress=False, init_from=str(tmp_path / "imported"))


# ---- issue 15, item 7: one tokenizer check, on what decides the ids

def test_export_then_import_then_evaluate_on_the_original_data(tmp_path, tokenizer_dir, data_dir):
    """import-hf rewrites tokenizer.json (null -> "") without changing an id: still the same tokenizer."""
    from roberta.tokenizer import tokenizer_fingerprint, tokenizer_hash

    run = tmp_path / "run"
    pretrain(str(data_dir), str(run), tiny_config("roberta-tiny", max_steps=1), progress=False)
    export_hf(run, tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "imported")
    assert tokenizer_hash(tmp_path / "imported") != tokenizer_hash(tokenizer_dir)  # the bytes differ...
    assert tokenizer_fingerprint(tmp_path / "imported") == tokenizer_fingerprint(tokenizer_dir)  # ...the ids do not
    r = run_cli("evaluate", "--checkpoint", tmp_path / "imported", "--data", data_dir, "--max-sequences", "8")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["tokens"] > 0


def test_a_genuinely_different_tokenizer_is_still_refused(tmp_path, tokenizer_dir, data_dir, corpus_docs):
    from roberta.cli import main
    from roberta.tokenizer import tokenizer_fingerprint, train_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    vocab = tok.get_vocab_size()
    swapped = [*range(10), 11, 10, *range(12, vocab)]  # the same tokens, two of them under each other's id
    import_hf(_hf_dir_with_tokenizer(tmp_path / "hf", renumber_tokenizer(tok, swapped), vocab), tmp_path / "imported")
    assert tokenizer_fingerprint(tmp_path / "imported") != tokenizer_fingerprint(tokenizer_dir)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "imported"), "--data", str(data_dir)]) == 2
    other = tmp_path / "other"
    save_tokenizer(train_tokenizer(iter(corpus_docs[:200]), vocab_size=vocab), other)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tokenizer_dir)


def test_prepared_data_from_before_fingerprints_still_loads(tmp_path, tokenizer_dir, data_dir):
    """An old meta.json holds only the byte hash of tokenizer.json: it is still understood."""
    import shutil

    from roberta.tokenizer import check_same_tokenizer

    old = tmp_path / "old"
    shutil.copytree(data_dir, old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["tokenizer_fingerprint"]
    (old / "meta.json").write_text(json.dumps(meta))
    summary = pretrain(str(old), str(tmp_path / "run"), tiny_config("roberta-tiny", max_steps=1), progress=False)
    export_hf(tmp_path / "run", tmp_path / "hf")
    import_hf(tmp_path / "hf", tmp_path / "imported")
    check_same_tokenizer(tmp_path / "imported", old, meta, "the checkpoint")  # no error
    assert summary["step"] == 1
    meta["tokenizer_hash"] = "0" * 16  # the copy no longer matches what the data was made with
    with pytest.raises(UserError, match="tokenizer differs"):
        check_same_tokenizer(tmp_path / "imported", old, meta, "the checkpoint")


def test_exported_mlm_fills_masks_in_long_texts_with_truncation(tmp_path, tokenizer_dir):
    """Issue 23: pipeline('fill-mask') on a text longer than the model fails in transformers
    ('index out of bounds') unless asked to truncate; no setting of the export can make it truncate
    by default, so the export says how, at the model's real length, and then agrees with fill_mask."""
    cfg = dataclasses.replace(roberta_tiny(), model=dataclasses.replace(
        TINY, layers=1, hidden=32, heads=2, ffn=64, vocab_size=1000, max_positions=66))
    model = build_model(cfg.model, seed=0)
    randomise(model)
    ckpt.save_checkpoint(tmp_path / "run", 1, model, cfg, tokenizer_dir)
    out = tmp_path / "hf"
    r = run_cli("export-hf", "--checkpoint", tmp_path / "run", "--out", out)
    assert r.returncode == 0, r.stderr
    assert (f"for texts over 64 tokens, use pipeline('fill-mask', model='{out}', "
            "tokenizer_kwargs={'truncation': True})") in r.stdout
    text = "The <mask> is returned. " + "Return the value of the list. " * 40
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok.model_max_length == 64 < len(tok(text)["input_ids"])
    pipe = transformers.pipeline("fill-mask", model=str(out), device="cpu", tokenizer_kwargs={"truncation": True})
    theirs = pipe(text, top_k=3)
    ours = roberta.load(tmp_path / "run").fill_mask(text, top_k=3)
    assert [p["token"] for p in theirs] == [p["token_id"] for p in ours]
    assert [p["score"] for p in theirs] == pytest.approx([p["score"] for p in ours], abs=1e-4)
