"""Adapt an encoder to your domain (docs/adapt.md): `import-hf` -> `prepare --tokenizer` ->
`pretrain --checkpoint` continues from the imported weights, with continued pretraining's lr and
warmup unless a --set says otherwise, for a RoBERTa and a ModernBERT directory alike.

The Hugging Face models are random and tiny, made here (no hub); their tokenizer is ours.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import randomise, run_cli
from roberta.tokenizer import load_tokenizer, save_tokenizer
from roberta.training import checkpoint as ckpt

transformers = pytest.importorskip("transformers")

# a short run on CPU: a step-3 checkpoint, no evaluation on the way
SHORT = ["train.max_steps=3", "train.batch_size=8", "train.eval_interval=1000", "train.checkpoint_interval=1000",
         "train.log_interval=1", "train.eval_sequences=8", "train.peak_flops=1e11", "train.threads=1",
         "train.precision=fp32"]


def hf_dir(family: str, path: Path, tokenizer_dir: Path) -> Path:
    """A random 1 x 32 RobertaForMaskedLM, or a 3 x 32 ModernBertForMaskedLM (a global layer, then
    two local ones), saved with save_pretrained beside our tokenizer's files."""
    tok = load_tokenizer(tokenizer_dir)
    ids = dict(vocab_size=tok.get_vocab_size(), pad_token_id=1, bos_token_id=0, eos_token_id=2)
    if family == "roberta":
        model = transformers.RobertaForMaskedLM(transformers.RobertaConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=130, type_vocab_size=1, layer_norm_eps=1e-5, **ids))
    else:
        model = transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(
            hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
            max_position_embeddings=128, local_attention=16, global_attn_every_n_layers=3,
            cls_token_id=0, sep_token_id=2, **ids))
    randomise(model, scale=0.05)
    model.save_pretrained(path)
    save_tokenizer(tok, path, model_max_length=128)
    return path


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, corpus_docs) -> Path:
    path = tmp_path_factory.mktemp("domain") / "domain.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in corpus_docs[:300]))
    return path


@pytest.mark.parametrize("family", ["roberta", "modern"])
def test_continued_pretraining_starts_from_the_imported_weights_at_a_lower_lr(tmp_path, tokenizer_dir, small_corpus,
                                                                              family):
    src = hf_dir(family, tmp_path / "hf", tokenizer_dir)
    r = run_cli("import-hf", "--checkpoint", src, "--out", tmp_path / "ck")
    assert r.returncode == 0, r.stderr
    r = run_cli("prepare", small_corpus, "--tokenizer", tmp_path / "ck", "--out", tmp_path / "data", "--seq-len", "64")
    assert r.returncode == 0, r.stderr
    sets = [a for s in SHORT for a in ("--set", s)]
    r = run_cli("pretrain", "--checkpoint", tmp_path / "ck", "--data", tmp_path / "data", "--out", tmp_path / "run",
                "--quiet", *sets)
    assert r.returncode == 0, r.stderr
    assert f"continued pretraining from {tmp_path / 'ck'}: lr 0.0001 (" in r.stdout
    assert "warmup 1% (" in r.stdout and "set train.lr / train.warmup_fraction to override" in r.stdout

    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["train"]["lr"], saved["train"]["warmup_fraction"], saved["train"]["warmup_steps"]) == (1e-4, 0.01, 0)
    assert saved["model"]["family"] == family and saved["model"]["hidden"] == 32
    before = ckpt.load_weights(tmp_path / "ck")
    after = ckpt.load_weights(tmp_path / "run" / "checkpoint-000003")
    assert before.keys() == after.keys()
    # 3 AdamW steps at a 1e-4 peak move no weight by more than a few lr; a fresh init would differ by ~0.05
    moved = max((after[k] - before[k]).abs().max().item() for k in before)
    print(f"{family}: largest weight change over 3 steps: {moved:.2e}")
    assert 0 < moved < 1e-3

    # a --set wins, and the note leaves out what it set
    r = run_cli("pretrain", "--checkpoint", tmp_path / "ck", "--data", tmp_path / "data", "--out", tmp_path / "run2",
                "--quiet", *sets, "--set", "train.lr=3e-4")
    assert r.returncode == 0, r.stderr
    assert "lr 0.0001" not in r.stdout and "set train.warmup_fraction to override" in r.stdout
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["train"]["lr"] == 3e-4


# what makes docs/adapt.md's commands take seconds here; each must occur in the page
TINY = {"path/to/hf-model": "{hf}", "my_domain.jsonl": "{corpus}", "--seq-len 512": "--seq-len 64",
        "train.batch_size=256": "train.batch_size=8", "train.max_steps=2000": "train.max_steps=3"}


def test_the_adapt_pages_commands_run_as_written(tmp_path, tokenizer_dir, small_corpus):
    """docs/adapt.md's block marked runnable, on a random RoBERTa made here, at a tiny scale (the
    substitutions above, nothing else); the adapted model's held-out loss is the one evaluate reports."""
    import re
    import subprocess

    from test_docs import ROOT, roberta_on_path, runnable_blocks

    page = (ROOT / "docs" / "adapt.md").read_text()
    blocks = runnable_blocks(page)
    assert [lang for lang, _ in blocks] == ["bash"]
    code = blocks[0][1]
    hf = hf_dir("roberta", tmp_path / "hf", tokenizer_dir)
    for old, new in TINY.items():
        assert old in code, f"tests/test_adapt.py shrinks {old!r}, which docs/adapt.md no longer says"
        code = code.replace(old, new.format(hf=hf, corpus=small_corpus))
    env = roberta_on_path(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=work, env=env, capture_output=True, text=True,
                       timeout=600)
    print(r.stdout, r.stderr[-3000:])
    assert r.returncode == 0, f"docs/adapt.md block failed:\n{code}\n--- stderr:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr and not re.search(r"^error:", r.stderr, flags=re.M), r.stderr
    assert "continued pretraining from ck: lr 0.0001 (" in r.stdout
    assert "not preset tiny's" not in r.stderr  # the checkpoint's length, not the preset's, is the model's
    before, after = (json.loads(line) for line in r.stdout.splitlines() if line.startswith("{"))
    # the same held-out tokens, scored before and after (3 steps of a random model: too few to assert a gain)
    assert before["tokens"] == after["tokens"] > 0 and before["mlm_loss"] != after["mlm_loss"]


# ---- a tokenizer with other names: ModernBERT's [CLS] [PAD] [SEP] [UNK] [MASK] after its vocabulary

MODERNBERT_NAMES = {"<unk>": "[UNK]", "<s>": "[CLS]", "</s>": "[SEP]", "<pad>": "[PAD]", "<mask>": "[MASK]"}


def modernbert_style_tokenizer(tokenizer_dir: Path):
    """Our BPE dressed as ModernBERT's tokenizer: the specials renamed and moved after the vocabulary
    in ModernBERT's order ([UNK] [CLS] [SEP] [PAD] [MASK], as at 50280-50284), [CLS] A [SEP] framing."""
    from tokenizers import Tokenizer, processors

    spec = json.loads(load_tokenizer(tokenizer_dir).to_str())
    n = len(spec["model"]["vocab"])
    last = {old: n - 5 + k for k, old in enumerate(MODERNBERT_NAMES)}  # old name -> new id

    def new_id(token: str, i: int) -> int:
        return last[token] if token in last else i - 5

    spec["model"]["vocab"] = {MODERNBERT_NAMES.get(t, t): new_id(t, i) for t, i in spec["model"]["vocab"].items()}
    for added in spec["added_tokens"]:
        added["id"], added["content"] = new_id(added["content"], added["id"]), MODERNBERT_NAMES[added["content"]]
    spec["post_processor"] = None
    tok = Tokenizer.from_str(json.dumps(spec))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def test_a_modernbert_tokenizer_comes_along_with_its_specials_at_ids_0_to_4(tmp_path, tokenizer_dir, small_corpus):
    """import-hf of a ModernBERT whose tokenizer has [CLS] [PAD] [SEP] [UNK] [MASK] at the end of its
    vocabulary: they move to ids 0-4 with the embedding rows, the model predicts what it did, and
    prepare -> pretrain -> export-hf work with it (transformers sees [MASK] as the mask token)."""
    tok = modernbert_style_tokenizer(tokenizer_dir)
    ids = {t: tok.token_to_id(t) for t in MODERNBERT_NAMES.values()}
    n = tok.get_vocab_size()
    assert ids == {"[UNK]": n - 5, "[CLS]": n - 4, "[SEP]": n - 3, "[PAD]": n - 2, "[MASK]": n - 1}
    src = tmp_path / "hf"
    hf = transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(
        vocab_size=n + 3, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
        max_position_embeddings=128, local_attention=16, pad_token_id=ids["[PAD]"], cls_token_id=ids["[CLS]"],
        sep_token_id=ids["[SEP]"], bos_token_id=None, eos_token_id=None)).eval()
    randomise(hf, scale=0.05)
    hf.save_pretrained(src)
    tok.save(str(src / "tokenizer.json"))
    (src / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 128, "cls_token": "[CLS]",
        "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"}))

    r = run_cli("import-hf", "--checkpoint", src, "--out", tmp_path / "ck")
    assert r.returncode == 0, r.stderr
    assert "special tokens moved to ids 0-4" in r.stdout
    ck_tok = load_tokenizer(tmp_path / "ck")
    assert [ck_tok.id_to_token(i) for i in range(5)] == ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]
    text = "def f(x):\n    return x + 1  # a line of code"
    theirs_ids, ours_ids = tok.encode(text).ids, ck_tok.encode(text).ids
    assert ours_ids[0] == 0 and ours_ids[-1] == 2 and theirs_ids[0] == ids["[CLS]"]  # [CLS] A [SEP], renumbered
    import roberta

    model = roberta.load(tmp_path / "ck").model.eval()
    assert model.cfg.pad_token_id == 1
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor([theirs_ids])).logits[0]
        ours = model.logits(torch.tensor([ours_ids]))[0]
    order = [ids["[CLS]"], ids["[PAD]"], ids["[SEP]"], ids["[UNK]"], ids["[MASK]"], *range(n - 5), n, n + 1, n + 2]
    diff = (theirs[:, order] - ours).abs().max().item()
    print(f"max abs logit diff, ModernBERT-style tokenizer renumbered: {diff:.2e}")
    assert diff < 1e-4 and (theirs - ours).abs().max() > 1  # under the old ids the logits are another model's
    # fill-mask on it: [MASK] (its own name) and <mask> (ours, accepted everywhere) give the same answer
    loaded = roberta.load(tmp_path / "ck")
    a, b = loaded.fill_mask("x = [MASK] + 1", top_k=3), loaded.fill_mask("x = <mask> + 1", top_k=3)
    assert [p["token_id"] for p in a] == [p["token_id"] for p in b] and len(a) == 3
    assert a[0]["score"] == pytest.approx(b[0]["score"]) and "[MASK]" not in a[0]["sequence"]
    from roberta.errors import UserError
    with pytest.raises(UserError, match=r"must contain <mask> \(or \[MASK\], this tokenizer's\)"):
        loaded.fill_mask("no mask here")

    r = run_cli("prepare", small_corpus, "--tokenizer", tmp_path / "ck", "--out", tmp_path / "data", "--seq-len", "64")
    assert r.returncode == 0, r.stderr
    sets = [a for s in SHORT for a in ("--set", s)]
    r = run_cli("pretrain", "--checkpoint", tmp_path / "ck", "--data", tmp_path / "data", "--out", tmp_path / "run",
                "--quiet", "--set", "masking.whole_word=true", *sets)
    assert r.returncode == 0, r.stderr
    r = run_cli("export-hf", "--checkpoint", tmp_path / "run", "--out", tmp_path / "back")
    assert r.returncode == 0, r.stderr
    back_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert (back_tok.mask_token, back_tok.mask_token_id, back_tok.pad_token, back_tok.pad_token_id) == ("[MASK]", 4,
                                                                                                         "[PAD]", 1)
    enc = back_tok(["a [MASK] here", text], padding=True, return_tensors="pt")
    assert enc["input_ids"][0].tolist().count(4) == 1
    back = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "back").eval()
    trained = roberta.load(tmp_path / "run").model.eval()
    with torch.no_grad():
        a, b = back(**enc).logits, trained.logits(enc["input_ids"], enc["attention_mask"])
    real = enc["attention_mask"].bool()
    assert (a[real] - b[real]).abs().max() < 1e-4


def test_a_config_json_as_modernbert_ships_it_imports_with_its_layers_and_rotary_bases(tmp_path, tokenizer_dir):
    """The config.json on the hub (answerdotai/ModernBERT-base, written by transformers 4.48): the
    layout and rotary bases as global_attn_every_n_layers / global_rope_theta / local_rope_theta,
    no layer_types, no rope_parameters. Here at 4 x 32 with other bases than the defaults (as
    IBM's granite-embedding-r2 has: 80K global), so a value read as the default would show; a
    180-token input is longer than the 128-token window. Logits equal transformers' on it."""
    tok = load_tokenizer(tokenizer_dir)
    legacy = {
        "architectures": ["ModernBertForMaskedLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 0, "classifier_activation": "gelu", "classifier_bias": False, "classifier_dropout": 0.0,
        "classifier_pooling": "mean", "cls_token_id": 0, "decoder_bias": True, "deterministic_flash_attn": False,
        "embedding_dropout": 0.0, "eos_token_id": 2, "global_attn_every_n_layers": 3, "global_rope_theta": 80000.0,
        "gradient_checkpointing": False, "hidden_activation": "gelu", "hidden_size": 32,
        "initializer_cutoff_factor": 2.0, "initializer_range": 0.02, "intermediate_size": 48,
        "layer_norm_eps": 1e-05, "local_attention": 128, "local_rope_theta": 20000.0,
        "max_position_embeddings": 8192, "mlp_bias": False, "mlp_dropout": 0.0, "model_type": "modernbert",
        "norm_bias": False, "norm_eps": 1e-05, "num_attention_heads": 2, "num_hidden_layers": 4, "pad_token_id": 1,
        "position_embedding_type": "absolute", "reference_compile": True, "sep_token_id": 2,
        "sparse_pred_ignore_index": -100, "sparse_prediction": False, "torch_dtype": "float32",
        "transformers_version": "4.48.0.dev0", "vocab_size": tok.get_vocab_size()}
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(legacy))
    hf = transformers.ModernBertForMaskedLM(transformers.ModernBertConfig.from_pretrained(src)).eval()
    randomise(hf, scale=0.05)
    hf.save_pretrained(src)
    (src / "config.json").write_text(json.dumps(legacy))  # as shipped, not as transformers 5 rewrites it
    save_tokenizer(tok, src, model_max_length=512)
    r = run_cli("import-hf", "--checkpoint", src, "--out", tmp_path / "ck")
    assert r.returncode == 0, r.stderr
    import roberta

    model = roberta.load(tmp_path / "ck").model.eval()
    c = model.cfg
    assert (c.layers, c.global_every, c.local_window, c.rope_theta, c.local_rope_theta) == (4, 3, 128, 80000.0, 20000.0)
    assert [layer.is_global for layer in model.roberta.layers] == [True, False, False, True]
    assert (c.bias, c.dropout, c.layer_norm_eps) == (False, 0.0, 1e-5)
    ids = torch.randint(5, tok.get_vocab_size(), (2, 180), generator=torch.Generator().manual_seed(0))
    hf = transformers.ModernBertForMaskedLM.from_pretrained(src).eval()
    with torch.no_grad():
        diff = (hf(input_ids=ids).logits - model.logits(ids)).abs().max().item()
    assert diff < 1e-4
