"""The modern family (roberta.modern): transformers' ModernBertForMaskedLM gives the same logits
both ways, local and global layers and padding included; it trains and resumes like RoBERTa.

Models are random (no hub access); every parameter is drawn at random so that a weight mapped to
the wrong place cannot hide behind a zero or a one.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import randomise
from roberta.config import resolve_run
from roberta.hf_modern import from_hf_modern_state, hf_modern_config, model_config_from_modern, to_hf_modern_state
from roberta.model import attended_keys, build_model, count_parameters, training_flops
from roberta.modern import ModernMLM, local_mask
from roberta.presets import get_preset

transformers = pytest.importorskip("transformers")

# 3 layers: global, local, local (ModernBERT's pattern); a window of 6 (+-3) on 20-token inputs
MODERN = dataclasses.replace(resolve_run(get_preset("modern-tiny"), {"vocab_size": 100, "seq_len": 20}).model,
                             layers=3, hidden=32, heads=4, ffn=48, local_window=6, global_every=3)


def padded_batch(vocab: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Three right-padded sequences of 20, 13 and 4 tokens: (B, T) ids and attention mask."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    for row, n in ((1, 13), (2, 4)):
        ids[row, n:], mask[row, n:] = 1, 0
    return ids, mask


def hf_model(cfg=MODERN, attn="sdpa"):
    config = transformers.ModernBertConfig(**{k: v for k, v in hf_modern_config(cfg).items() if k != "architectures"})
    config._attn_implementation = attn
    return transformers.ModernBertForMaskedLM(config).eval()


def test_hf_config_has_local_and_global_layers():
    c = hf_model().config
    assert c.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert c.sliding_window == 3 and c.rope_parameters["full_attention"]["rope_theta"] == 160000.0


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_transformers_modernbert_gives_our_logits(attn):
    """HF's random ModernBertForMaskedLM -> our state dict -> the same logits at every real token."""
    hf = hf_model(attn=attn)
    randomise(hf, scale=0.3)
    ours = ModernMLM(model_config_from_modern(hf.config, "test")).eval()
    ours.load_state_dict(from_hf_modern_state(hf.state_dict()))
    ids, mask = padded_batch()
    with torch.no_grad():
        theirs, mine = hf(input_ids=ids, attention_mask=mask).logits, ours.logits(ids, mask)
    real = mask.bool()
    diff = (theirs[real] - mine[real]).abs().max().item()
    print(f"max abs logit diff, HF ({attn}) -> ours: {diff:.2e}")
    assert diff < 1e-4 and theirs.abs().max() > 1  # logits of a size where a wrong weight would show


def test_our_modern_model_gives_transformers_our_logits():
    """Our random model -> HF's state dict -> ModernBertForMaskedLM's logits equal ours; round trip exact."""
    ours = build_model(MODERN, seed=0).eval()
    randomise(ours, scale=0.3, seed=3)
    hf = hf_model()
    missing, unexpected = hf.load_state_dict(to_hf_modern_state(ours.state_dict()), strict=False)
    assert missing == ["decoder.weight"] and unexpected == []  # the tied decoder, stored once
    hf.tie_weights()
    ids, mask = padded_batch()
    with torch.no_grad():
        theirs, mine = hf(input_ids=ids, attention_mask=mask).logits, ours.logits(ids, mask)
    real = mask.bool()
    diff = (theirs[real] - mine[real]).abs().max().item()
    print(f"max abs logit diff, ours -> HF: {diff:.2e}")
    assert diff < 1e-4
    back = from_hf_modern_state(hf.state_dict())
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())
    assert count_parameters(ours) == count_parameters(hf)
    assert model_config_from_modern(hf.config, "test") == dataclasses.replace(MODERN, dropout=0.0,
                                                                             attention_dropout=0.0)


def test_sliding_window_sees_half_the_window_each_side():
    m = local_mask(8, 4, None, torch.device("cpu"))
    assert m[4].tolist() == [False, False, True, True, True, True, True, False]
    keys = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]]).bool()[:, None, None, :]
    padded = local_mask(8, 4, keys, torch.device("cpu"))
    assert padded[0, 0, 2].tolist() == [True, True, True] + [False] * 5
    assert padded[0, 0, 7].tolist() == [False] * 7 + [True]  # a far padding query sees itself, no NaN row


def test_padding_changes_no_real_token():
    """A sequence alone and padded beside a longer one gives the same logits at its tokens."""
    model = build_model(MODERN, seed=0).eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        batch, alone = model.logits(ids, mask), model.logits(ids[1:2, :13])
    assert torch.isfinite(batch).all()
    torch.testing.assert_close(batch[1, :13], alone[0], atol=1e-5, rtol=1e-5)


def test_local_layers_count_their_window_in_the_flops():
    assert attended_keys(MODERN, 20) == 20 + 2 * 7  # layer 0 global, layers 1-2 see 7 keys
    assert attended_keys(dataclasses.replace(MODERN, local_window=0), 20) == 3 * 20
    base = dataclasses.replace(get_preset("modern-base").model, vocab_size=50368)
    full = dataclasses.replace(base, local_window=0)
    assert training_flops(base, 1024, 300, 1024) < training_flops(full, 1024, 300, 1024)


# 2 x 64 modern model: a global layer, then a local one (window 16 on 64-token data); dropout on, so
# that resume must restore the RNG as well
MODERN_SETS = ["model.layers=2", "model.hidden=64", "model.heads=2", "model.ffn=96", "model.local_window=16",
               "model.global_every=2", "model.dropout=0.1", "train.batch_size=8", "train.max_steps=6",
               "train.checkpoint_interval=3", "train.eval_interval=1000", "train.log_interval=1",
               "train.eval_sequences=16", "train.peak_flops=1e11", "train.threads=1", "train.precision=fp32"]


def test_pretrain_modern_tiny_trains_and_resumes_bit_exactly(data_dir, tmp_path):
    """`roberta pretrain --preset modern-tiny` trains; a copy cut back to its step-3 checkpoint
    and resumed ends with the same loss at every step and the same weights, bit for bit."""
    import json
    import shutil

    from safetensors.torch import load_file

    from conftest import run_cli
    from roberta.config import apply_overrides
    from roberta.training.loop import pretrain

    whole = tmp_path / "whole"
    sets = [a for s in MODERN_SETS for a in ("--set", s)]
    r = run_cli("pretrain", "--preset", "modern-tiny", "--data", data_dir, "--out", whole, "--quiet", *sets)
    assert r.returncode == 0, r.stderr
    saved = json.loads((whole / "config.json").read_text())
    assert saved["model"]["family"] == "modern" and saved["masking"]["mask_prob"] == 0.3
    again = tmp_path / "again"
    shutil.copytree(whole, again)
    for name in ("checkpoint-000006", "summary.json"):  # as if it stopped after the checkpoint at step 3
        shutil.rmtree(again / name) if (again / name).is_dir() else (again / name).unlink()
    pretrain(str(data_dir), str(again), apply_overrides(get_preset("modern-tiny"), MODERN_SETS), resume=True)

    def losses(run):
        return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if "loss" in r}

    assert losses(again) == losses(whole) and sorted(losses(whole)) == list(range(1, 7))
    assert losses(whole)[6] < losses(whole)[1]  # it learns
    a, b = (load_file(str(run / "checkpoint-000006" / "model.safetensors")) for run in (whole, again))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "roberta.layers.1.attention_norm.weight" in a and "roberta.layers.0.attention_norm.weight" not in a


def test_the_nsp_formats_train_the_modern_family_with_a_sentence_head(data_dir, tmp_path):
    """data.format=segment-pair+nsp on a modern preset (the paper's Table 2 at the CPU recipe): the
    NSP head is ModernBERT's sentence head, its loss is logged at every step, and export-hf leaves it
    out, saying so, with the masked-LM logits unchanged."""
    import json

    from conftest import run_cli
    from roberta.training.checkpoint import load_model

    run = tmp_path / "nsp"
    sets = [a for s in [*MODERN_SETS, "data.format=segment-pair+nsp", "train.max_steps=12", "train.lr=2e-3",
                        "train.checkpoint_interval=100"] for a in ("--set", s)]
    r = run_cli("pretrain", "--preset", "modern-tiny", "--data", data_dir, "--out", run, "--quiet", *sets)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    nsp = [x["nsp_loss"] for x in recs if "nsp_loss" in x]
    assert len(nsp) == 12 and all(0 < v < 5 for v in nsp)
    model, _ = load_model(run)
    assert model.cfg.family == "modern" and model.nsp_head is not None
    assert {n.split(".")[1] for n, _ in model.nsp_head.named_parameters(prefix="nsp_head")} == {"dense", "norm", "out_proj"}
    r = run_cli("export-hf", "--checkpoint", run, "--out", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    assert "NSP head is not exported (ModernBertForMaskedLM has none)" in r.stdout + r.stderr
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(5, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - model.eval().logits(ids)).abs().max() < 1e-4


def test_export_hf_then_import_hf_round_trips_a_modern_checkpoint(tmp_path, tokenizer_dir):
    """`roberta export-hf` of a modern checkpoint: ModernBertForMaskedLM + config + tokenizer that
    transformers loads and that gives our logits; `roberta import-hf` of it gives back every weight."""
    from conftest import run_cli
    from roberta.training import checkpoint as ckpt
    from roberta.training.checkpoint import load_model

    cfg = get_preset("modern-tiny")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(MODERN, vocab_size=1024))
    model = build_model(cfg.model, seed=0).eval()
    randomise(model, scale=0.3)
    ckpt.save_checkpoint(tmp_path / "run", 1, model, cfg, tokenizer_dir)
    r = run_cli("export-hf", "--checkpoint", tmp_path / "run", "--out", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == "ModernBertForMaskedLM" and (tok.pad_token_id, tok.mask_token_id) == (1, 4)
    assert hf.config.pad_token_id == 1 and hf.config.cls_token_id == 0 and hf.config.sep_token_id == 2
    enc = tok(["a short one", "def f(x):\n    return x + 1  # a longer line of text"], padding=True, truncation=True,
              return_tensors="pt")
    with torch.no_grad():
        theirs, mine = hf(**enc).logits, model.logits(enc["input_ids"], enc["attention_mask"])
    real = enc["attention_mask"].bool()
    assert (theirs[real] - mine[real]).abs().max() < 1e-4

    r = run_cli("import-hf", "--checkpoint", tmp_path / "hf", "--out", tmp_path / "back")
    assert r.returncode == 0, r.stderr
    back, _ = load_model(tmp_path / "back")
    assert back.cfg.family == "modern" and (back.cfg.local_window, back.cfg.global_every) == (6, 3)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


def test_import_hf_refuses_a_layout_global_every_cannot_express(tmp_path):
    layers = ["sliding_attention", "full_attention", "sliding_attention"]  # global in the middle
    config = transformers.ModernBertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                           intermediate_size=24, layer_types=layers, pad_token_id=1, bos_token_id=0,
                                           eos_token_id=2, cls_token_id=0, sep_token_id=2)
    transformers.ModernBertForMaskedLM(config).save_pretrained(tmp_path / "hf")
    from conftest import run_cli
    r = run_cli("import-hf", "--checkpoint", tmp_path / "hf", "--out", tmp_path / "out")
    assert r.returncode == 2 and "model.global_every cannot express it" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("preset,hf_sizes", [
    ("modern-base", {}),  # transformers' ModernBertConfig defaults are ModernBERT-base's
    ("modern-large", dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, intermediate_size=2624)),
])
def test_modern_presets_have_modernberts_parameter_count(preset, hf_sizes):
    cfg = resolve_run(get_preset(preset), {"vocab_size": 50368, "seq_len": 1024}).model
    with torch.device("meta"):
        ours = ModernMLM(cfg)
        hf = transformers.ModernBertForMaskedLM(transformers.ModernBertConfig(**hf_sizes))
    assert cfg.vocab_size == hf.config.vocab_size == 50368
    assert count_parameters(ours) == count_parameters(hf)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_our_classifier_is_transformers_modernbert_classifier(pooling):
    """ModernClassifier = ModernBertForSequenceClassification (pooling, dense -> GELU -> norm ->
    projection) on a padded batch, under a one-to-one renaming of the head."""
    from roberta.modern import ModernClassifier

    values = {k: v for k, v in hf_modern_config(MODERN).items() if k != "architectures"}
    config = transformers.ModernBertConfig(**values, num_labels=3, classifier_pooling=pooling)
    config._attn_implementation = "sdpa"
    hf = transformers.ModernBertForSequenceClassification(config).eval()
    randomise(hf, scale=0.3)
    head = {"head.dense.weight": "classifier.dense.weight", "head.norm.weight": "classifier.norm.weight",
            "classifier.weight": "classifier.out_proj.weight", "classifier.bias": "classifier.out_proj.bias"}
    hf_state = hf.state_dict()
    encoder = from_hf_modern_state({k: v for k, v in hf_state.items() if k.startswith("model.")})
    ours = ModernClassifier(MODERN, 3, pooling).eval()
    ours.load_state_dict({**encoder, **{ours_key: hf_state[k] for k, ours_key in head.items()}})
    ids, mask = padded_batch()
    with torch.no_grad():
        diff = (hf(input_ids=ids, attention_mask=mask).logits - ours(ids, mask)).abs().max().item()
    assert diff < 1e-4


def test_finetune_a_modern_checkpoint(tmp_path, tokenizer_dir):
    """`roberta finetune` takes a modern checkpoint: its encoder under ModernBERT's sentence head;
    `roberta export-hf` of the result is a ModernBertForSequenceClassification whose pipeline gives
    the labels and probabilities `predict` does, a text longer than the model truncated included."""
    import json

    from safetensors.torch import load_file

    from conftest import run_cli
    from roberta.training import checkpoint as ckpt

    cfg = get_preset("modern-tiny")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(MODERN, vocab_size=1024, max_positions=66))
    ckpt.save_checkpoint(tmp_path / "run", 1, build_model(cfg.model, seed=0), cfg, tokenizer_dir)
    rows = "".join(f"{w} is here,{'pos' if w == 'good' else 'neg'}\n" for w in ["good", "bad"] * 20)
    (tmp_path / "t.csv").write_text("text,label\n" + rows)
    r = run_cli("finetune", "--checkpoint", tmp_path / "run", "--train", tmp_path / "t.csv",
                "--dev", tmp_path / "t.csv", "--out", tmp_path / "ft", "--epochs", "1", "--seeds", "1", "--lr", "1e-3",
                "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["metric"] == "accuracy"
    w = load_file(str(next((tmp_path / "ft").rglob("model.safetensors"))))
    assert w["classifier.out_proj.weight"].shape == (2, 32) and "classifier.norm.weight" in w
    assert "roberta.layers.1.attention.qkv.weight" in w
    r = run_cli("export-hf", "--checkpoint", tmp_path / "ft", "--out", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    assert "truncation=True" in r.stdout
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "pos"} and config["label2id"] == {"neg": 0, "pos": 1}
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == "ModernBertForSequenceClassification" and hf.config.classifier_pooling == "cls"

    from roberta.downstream.predict import Finetuned

    texts = ["good is here", "bad is here", "a good long day " * 40]  # the last one over 64 tokens
    pipe = transformers.pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu", truncation=True,
                                 top_k=None)
    theirs = [{p["label"]: p["score"] for p in per_text} for per_text in pipe(texts)]
    # fp32 as the pipeline runs: "auto" picks bf16 on a CPU with native bf16 (differences of ~1e-4)
    ours = Finetuned(tmp_path / "ft", device="cpu", precision="fp32").predict(texts)
    assert len(pipe.tokenizer(texts[2])["input_ids"]) > 66
    diff = max(abs(t[label] - o["probabilities"][label]) for t, o in zip(theirs, ours) for label in ("neg", "pos"))
    print(f"max abs probability diff, pipeline vs predict: {diff:.2e}")
    assert diff <= 1e-4 and [o["label"] for o in ours] == [max(t, key=t.get) for t in theirs]
