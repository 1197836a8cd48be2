"""The encoder itself: sizes, positions, heads, init, and the Python API (fill_mask / embed)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import roberta
from conftest import randomise
from roberta.training import checkpoint as ckpt
from roberta.config import ModelConfig
from roberta.model import RobertaMLM, build_model, count_parameters
from roberta.config import resolve_run
from roberta.presets import base, roberta_tiny
from roberta.tokenizer import MASK_ID, PAD_ID, load_tokenizer


def small_model(**kw) -> ModelConfig:
    """A 2 x 64 model without dropout: seconds on a CPU, deterministic."""
    values = dict(vocab_size=1000, max_positions=130, layers=2, hidden=64, heads=2, ffn=128, dropout=0.0,
                  attention_dropout=0.0)
    values.update(kw)
    return dataclasses.replace(roberta_tiny().model, **values)


def padded_batch(lengths: list[int], vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids framed by <s> ... </s>, right-padded: (B, T) ids and attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), PAD_ID)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, vocab, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 0, 2
    return ids, ids.ne(PAD_ID).long()


def test_base_preset_has_roberta_base_parameter_count():
    cfg = resolve_run(base(), {"vocab_size": 50265, "seq_len": 512}).model
    cfg = dataclasses.replace(cfg, vocab_size=50265)  # HF's count: the tokenizer's rows, unpadded
    with torch.device("meta"):  # no memory, no init: counting 125M parameters takes milliseconds
        model = RobertaMLM(cfg)
    assert count_parameters(model) == 124_697_433  # HF RobertaForMaskedLM, decoder tied
    pooler = cfg.hidden * cfg.hidden + cfg.hidden  # HF RobertaModel has one, the MLM does not
    assert count_parameters(model.roberta) + pooler == 124_645_632
    assert model.roberta.embeddings.position_embeddings.num_embeddings == 514
    assert model.roberta.embeddings.token_type_embeddings.num_embeddings == 1
    assert all(p.is_meta for p in model.parameters())


def test_init_statistics():
    model = build_model(small_model(hidden=256, heads=4, ffn=1024), seed=0)
    assert not any(p.is_meta for p in model.parameters())
    emb = model.roberta.embeddings
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.dim() == 2:  # Linear and Embedding weights
            w = p.detach()
            if name.startswith("roberta.embeddings.") and w.shape[0] > 1:
                w = torch.cat([w[:PAD_ID], w[PAD_ID + 1:]])  # the padding row is zero, see below
            n = w.numel()  # 5 standard errors of the sample std and mean
            assert abs(float(w.std()) - 0.02) < 5 * 0.02 / (2 * n) ** 0.5, name
            assert abs(float(w.mean())) < 5 * 0.02 / n**0.5, name
        elif "norm" in name.lower() and name.endswith("weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        else:  # every bias, the LM head's output bias included
            assert torch.equal(p, torch.zeros_like(p)), name
    assert torch.equal(emb.word_embeddings.weight[PAD_ID], torch.zeros(256))
    assert torch.equal(emb.position_embeddings.weight[PAD_ID], torch.zeros(256))


@pytest.mark.parametrize("family", ["modern", "roberta"])
def test_modernbert_init_statistics(family):
    """model.init=modernbert (transformers' ModernBertPreTrainedModel._init_weights): truncated normal
    at +-2 sigma; sigma 0.02 for embeddings and input projections, 0.02 / sqrt(2 layers) for the
    output projections and the heads' dense layer, hidden^-0.5 for the classifier's projection.
    A truncated normal at 2 sigma has std 0.880 sigma."""
    from roberta.model import build_classifier
    from roberta.presets import modern_tiny

    base_cfg = modern_tiny().model if family == "modern" else small_model()
    cfg = dataclasses.replace(base_cfg, vocab_size=4096, max_positions=130, layers=4, hidden=256, heads=4, ffn=384,
                              init="modernbert")
    out_sigma = 0.02 / (2 * 4) ** 0.5
    for model in (build_model(cfg, seed=0), build_classifier(cfg, 3, seed=0)):
        seen = set()
        for name, p in model.named_parameters():
            if not (name.endswith("weight") and p.dim() == 2) or "position" in name or "token_type" in name:
                continue
            w = p.detach()
            if "word_embeddings" in name:
                w = torch.cat([w[:PAD_ID], w[PAD_ID + 1:]])
            sigma = 0.02
            if name.endswith(("attention.out.weight", "ffn.down.weight", "lm_head.dense.weight",
                              "classifier.dense.weight")):
                sigma, kind = out_sigma, "out"
            elif name.endswith("out_proj.weight"):
                sigma, kind = 256 ** -0.5, "final"
            else:
                kind = "in"
            seen.add(kind)
            assert float(w.abs().max()) <= 2 * sigma + 1e-7, name  # truncated at 2 sigma
            n = w.numel()
            tol = 5 * 0.88 * sigma / (2 * n) ** 0.5 + (0.01 * sigma if n < 5000 else 0)
            assert abs(float(w.std()) - 0.880 * sigma) < tol, (name, float(w.std()), 0.88 * sigma)
        assert seen == ({"in", "out", "final"} if hasattr(model, "classifier") else {"in", "out"})
    default = build_model(dataclasses.replace(cfg, init="normal"), seed=0)
    assert float(default.roberta.layers[1].attention.out.weight.detach().std()) == pytest.approx(0.02, rel=0.02)


def test_init_is_reproducible_from_the_seed():
    a, b = build_model(small_model(), seed=3), build_model(small_model(), seed=3)
    c = build_model(small_model(), seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.dense.weight, c.lm_head.dense.weight)


def test_rotary_positions_in_the_2019_family_replace_the_table():
    """model.position=rope on the roberta family: no position table (hidden x max_positions fewer
    parameters), every layer rotates queries and keys, so token order still matters; the modern
    family refuses a learned table."""
    from roberta.config import apply_overrides
    from roberta.errors import UserError

    learned = build_model(small_model(), seed=0).eval()
    rope = build_model(small_model(position="rope"), seed=0).eval()
    assert rope.roberta.embeddings.position_embeddings is None
    assert count_parameters(learned) - count_parameters(rope) == 130 * 64
    ids, attn = padded_batch([12, 12], 1000)
    for model in (learned, rope):  # weights far from init's near-uniform attention
        randomise(model)
    with torch.no_grad():
        h = rope.roberta(ids, attn)
        flipped = ids.clone()
        flipped[:, 1:11] = ids[:, 1:11].flip(1)  # the same tokens between <s> and </s>, in reverse order
        h_flipped = rope.roberta(flipped, attn)
        # without positions the encoder would be permutation-equivariant: token i's state would move with it
        assert (h[:, 1:11] - h_flipped[:, 1:11].flip(1)).abs().max() > 1e-2
        # the check can fail: the learned family with its table zeroed is order-blind
        learned.roberta.embeddings.position_embeddings.weight.zero_()
        hb, hb_flipped = learned.roberta(ids, attn), learned.roberta(flipped, attn)
        assert (hb[:, 1:11] - hb_flipped[:, 1:11].flip(1)).abs().max() < 1e-5
    with pytest.raises(UserError, match="model.position=learned: the modern family has rotary positions"):
        apply_overrides(roberta_tiny(), ["model.family=modern", "model.norm=pre", "model.glu=true",
                                         "model.position=learned"])
    with pytest.raises(UserError, match="model.position=table: choose learned or rope"):
        apply_overrides(roberta_tiny(), ["model.position=table"])


def test_nsp_head_only_when_configured():
    plain = build_model(small_model(), seed=0)
    assert plain.nsp_head is None
    assert not any(n.startswith("nsp_head.") for n, _ in plain.named_parameters())
    nsp = build_model(small_model(nsp_head=True), seed=0)
    ids, attn = padded_batch([12, 9], 1000)
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    out = nsp(ids, labels, attn, nsp_labels=torch.tensor([0, 1]))
    assert out["nsp_count"] == 2 and out["nsp_loss_sum"] > 0
    assert "nsp_loss_sum" not in plain(ids, labels, attn)


def test_sparse_and_dense_heads_give_equal_loss_and_gradients():
    ids, attn = padded_batch([40, 33, 17], 1000)
    g = torch.Generator().manual_seed(1)
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.15) & attn.bool(), ids, -100)
    assert labels.ne(-100).sum() > 5

    def loss_and_grads(sparse: bool):  # the same weights (seed 0) with either head
        import dataclasses
        model = build_model(dataclasses.replace(small_model(), sparse_head=sparse), seed=0)
        out = model(ids, labels, attn)
        out["mlm_loss_sum"].backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}

    sparse, g_sparse = loss_and_grads(True)
    dense, g_dense = loss_and_grads(False)
    assert sparse["mlm_count"] == dense["mlm_count"] == labels.ne(-100).sum()
    torch.testing.assert_close(sparse["mlm_loss_sum"], dense["mlm_loss_sum"], rtol=1e-5, atol=1e-5)
    for name in g_dense:
        torch.testing.assert_close(g_sparse[name], g_dense[name], rtol=1e-4, atol=1e-6, msg=name)
    assert g_dense["lm_head.dense.weight"].abs().sum() > 0


def test_host_known_masked_positions_give_the_same_loss_and_gradients():
    """The trainer passes the masked positions it computed on the host (no device sync); the
    result must be bit-identical to the model finding them itself."""
    model = build_model(small_model(), seed=0)
    ids, attn = padded_batch([40, 33, 17], 1000)
    labels = torch.where((torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.15) & attn.bool(),
                         ids, -100)
    positions = labels.view(-1).ne(-100).nonzero().squeeze(1)

    def run(**kw):
        model.zero_grad()
        loss = model(ids, labels, attn, **kw)["mlm_loss_sum"]
        loss.backward()
        return loss, [p.grad.clone() for p in model.parameters()]

    (a, ga), (b, gb) = run(), run(masked_positions=positions)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ga, gb))
    # and they are used: a position left out changes the loss
    assert not torch.equal(a, run(masked_positions=positions[1:])[0])


def test_bf16_autocast_keeps_the_residual_stream_in_bf16_and_the_loss_close():
    """Under autocast, LayerNorm computes in fp32 but hands bf16 on (half the elementwise
    traffic on a GPU); in fp32 nothing changes. The loss stays within bf16's precision."""
    model = build_model(small_model(), seed=0)
    ids, attn = padded_batch([40, 33, 17], 1000)
    labels = torch.where(attn.bool(), ids, -100)
    with torch.no_grad():
        assert model.roberta(ids, attn).dtype == torch.float32
        ref = model(ids, labels, attn)["mlm_loss_sum"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model.roberta(ids, attn)
            low = model(ids, labels, attn)["mlm_loss_sum"]
    assert hidden.dtype == torch.bfloat16
    assert low.dtype == torch.float32  # the softmax and the loss stay fp32
    torch.testing.assert_close(low, ref, rtol=2e-2, atol=0.0)


def test_padding_does_not_change_real_positions():
    model = build_model(small_model(), seed=0).eval()
    ids, attn = padded_batch([30, 11], 1000)
    with torch.no_grad():
        batched = model.logits(ids, attn)
        alone = model.logits(ids[1:, :11], attn[1:, :11])
        no_mask = model.logits(ids[:1], None)
    torch.testing.assert_close(batched[1, :11], alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched[0], no_mask[0], rtol=1e-4, atol=1e-5)


def test_512_tokens_fit_the_base_position_table():
    cfg = resolve_run(base(), {"vocab_size": 100, "seq_len": 512}).model
    cfg = dataclasses.replace(cfg, layers=1, hidden=32, heads=2, ffn=64)
    assert cfg.max_positions == 514  # 512 tokens + padding_idx + 1
    model = build_model(cfg, seed=0)
    ids, attn = padded_batch([512, 300], 100)
    labels = torch.where(attn.bool(), ids, -100)
    model(ids, labels, attn)["mlm_loss_sum"].backward()
    used = model.roberta.embeddings.position_embeddings.weight.grad.abs().sum(1).ne(0)
    assert used[2:].all()  # real tokens take rows pad + 1 .. pad + 512 = 2 .. 513
    assert not used[0] and not used[PAD_ID]  # row 0 is never used; the padding row takes no gradient
    with pytest.raises(ValueError, match="position"):
        model.logits(torch.full((1, 513), 5))


@pytest.fixture(scope="module")
def memorised(tmp_path_factory, tokenizer_dir):
    """A tiny model overfit on one sentence with one masked word, saved as a checkpoint."""
    tok = load_tokenizer(tokenizer_dir)
    text = "The value is returned by the <mask> when called."
    target = tok.encode(" function", add_special_tokens=False).ids
    assert len(target) == 1  # a single token in this vocabulary, so fill_mask can name it
    ids = torch.tensor([tok.encode(text).ids])
    labels = torch.where(ids == MASK_ID, target[0], -100)
    cfg = dataclasses.replace(roberta_tiny(), model=small_model(vocab_size=tok.get_vocab_size()))
    model = build_model(cfg.model, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        out = model(ids, labels)
        out["mlm_loss_sum"].backward()
        opt.step()
        opt.zero_grad()
    path = ckpt.save_checkpoint(tmp_path_factory.mktemp("memorised"), 40, model, cfg, tokenizer_dir)
    return path, text, target[0]


def test_fill_mask_ranks_the_memorised_token_first(memorised):
    path, text, target = memorised
    m = roberta.load(path)
    top = m.fill_mask(text, top_k=3)
    assert len(top) == 3 and top[0]["token_id"] == target
    assert top[0]["token"] == " function" and top[0]["score"] > 0.5
    assert top[0]["sequence"] == "The value is returned by the function when called."
    assert top[0]["score"] >= top[1]["score"] >= top[2]["score"]


def test_fill_mask_needs_a_mask(memorised):
    with pytest.raises(roberta.errors.UserError, match="<mask>"):
        roberta.load(memorised[0]).fill_mask("no mask here")


def test_embed_shapes_and_padding_invariance(memorised):
    m = roberta.load(memorised[0])
    texts = ["short", "a considerably longer sentence, so the first one is padded in the batch"]
    both = m.embed(texts)
    assert both.shape == (2, m.model.cfg.hidden)
    torch.testing.assert_close(both[0], m.embed(texts[:1])[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(both[0], both[1])
    assert m.embed(texts * 3, batch_size=4).shape == (6, m.model.cfg.hidden)


def test_long_text_is_truncated_keeping_its_end_token(memorised):
    m = roberta.load(memorised[0])
    ids, attn = m._encode(["word " * 1000])
    assert ids.shape == (1, m.max_len) and ids[0, -1] == 2 and attn.all()
    assert m.embed(["word " * 1000]).isfinite().all()
