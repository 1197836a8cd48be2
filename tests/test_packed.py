"""PACKED-DOCUMENTS: FULL-SENTENCES' rows, but each document attended to (and positioned) on its own.

The equivalence that defines it: a packed batch gives every token the logits it gets when its
document runs alone, in both families (a modern local window narrower than a document and padded
rows included); and the tokens, hence the masks, are FULL-SENTENCES' own.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import randomise
from roberta.config import resolve_run
from roberta.data.formats import SEP_DOC, build_sequences, document_ids
from roberta.data.loader import collate
from roberta.downstream.batches import forward, pack_rows, packed_batch
from roberta.attention import document_mask, document_positions
from roberta.model import build_model
from roberta.presets import get_preset
from roberta.tokenizer import BOS_ID, EOS_ID, PAD_ID
from test_formats import SEQ_LEN, synthetic_split

TOL = 1e-5  # fp32


def _model_cfg(family: str):
    """family: "roberta", "modern", or "roberta+rope" (the 2019 family with model.position=rope)."""
    preset = "modern-tiny" if family == "modern" else "roberta-tiny"
    cfg = resolve_run(get_preset(preset), {"vocab_size": 1000, "seq_len": SEQ_LEN}).model
    small = dict(layers=3, hidden=32, heads=4, ffn=48, dropout=0.0, attention_dropout=0.0)
    if family == "roberta+rope":  # rotary positions must restart in each document as the table's do
        small.update(position="rope", rope_theta=10000.0)
    if family == "modern":  # global, local, local; a window of +-3, narrower than most documents
        small.update(local_window=6, global_every=3)
    return dataclasses.replace(cfg, **small)


@pytest.fixture(scope="module")
def split():
    return synthetic_split(60, seed=3)


def _packed_batch(split, n: int = 8):
    plan = build_sequences(split, "packed-documents", SEQ_LEN)
    return plan, collate(split, plan, [(0, i) for i in range(n)])


def test_packed_rows_are_full_sentences_rows_with_document_ids(split):
    plan, batch = _packed_batch(split)
    full = build_sequences(split, "full-sentences", SEQ_LEN)
    ref = collate(split, full, [(0, i) for i in range(8)])
    assert batch.input_ids.equal(ref.input_ids) and batch.attention_mask.equal(ref.attention_mask)
    assert ref.document_ids is None  # the other formats: no document ids, their code paths unchanged
    docs = batch.document_ids
    assert docs.shape == batch.input_ids.shape and docs.ne(0).equal(batch.attention_mask.bool())
    for row, i in enumerate(range(8)):
        d, ids = docs[row], batch.input_ids[row]
        n = int(batch.attention_mask[row].sum())
        assert ids[0] == BOS_ID and d[0] == 1 and (d[:n].diff() >= 0).all() and (d[:n].diff() <= 1).all()
        # a new document starts right after each </s> that separates two documents, nowhere else
        starts = (d[1:n].diff() == 1).nonzero().squeeze(1) + 2
        assert (ids[starts - 1] == EOS_ID).all()
        n_seps = int((plan.piece_start[plan.seq_ptr[i]:plan.seq_ptr[i + 1]] == SEP_DOC).sum())
        assert int(d[n - 1]) == n_seps + 1 and len(document_ids(plan, i)) == n
    assert (docs.amax(1) > 1).any() and (batch.attention_mask == 0).any()  # packed rows, padded rows


def test_document_mask_and_positions():
    d = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0]])
    assert document_positions(d).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]
    m = document_mask(d)[0, 0]
    assert m.shape == (8, 8) and m.any(-1).all()  # every row sees something: no NaN at padding
    assert m[0, :3].all() and not m[0, 3:].any() and m[3, 3:5].all() and not m[3, :3].any()
    assert not m[:6, 6:].any()  # no real token sees padding


@pytest.mark.parametrize("family", ["roberta", "modern", "roberta+rope"])
def test_a_packed_batch_gives_each_document_its_logits_alone(split, family):
    """THE equivalence: every real token's logits in the packed batch equal those of its document
    (its span of the row: `<s> A </s>`, then `B ... </s>`) run alone, unpadded, in fp32."""
    cfg = _model_cfg(family)
    model = build_model(cfg, "cpu", seed=0).eval()
    randomise(model)
    _, batch = _packed_batch(split)
    with torch.no_grad():
        packed = model.logits(batch.input_ids, batch.attention_mask, batch.document_ids)
        crossing = model.logits(batch.input_ids, batch.attention_mask)  # FULL-SENTENCES' attention
        worst, pieces, longer_than_window = 0.0, 0, 0
        for row in range(len(batch.input_ids)):
            d = batch.document_ids[row]
            for k in range(1, int(d.max()) + 1):
                span = d.eq(k).nonzero().squeeze(1)
                a, b = int(span[0]), int(span[-1]) + 1
                alone = model.logits(batch.input_ids[row:row + 1, a:b])[0]
                worst = max(worst, float((packed[row, a:b] - alone).abs().max()))
                pieces += 1
                longer_than_window += b - a > cfg.local_window + 1
    print(f"{family}: max |packed - alone| over {pieces} documents = {worst:.2e}")
    assert worst <= TOL
    assert pieces > len(batch.input_ids) and (family != "modern" or longer_than_window > 0)
    real = batch.attention_mask.bool()
    assert (packed - crossing)[real].abs().max() > 1e-3  # and attending across documents is different


@pytest.mark.parametrize("family", ["roberta", "modern"])
def test_packed_loss_is_the_sum_of_the_documents_losses(split, family):
    """Through forward (the trainer's call, sparse head): the summed MLM loss of a packed batch is
    the sum of its documents' losses alone."""
    model = build_model(_model_cfg(family), "cpu", seed=0).eval()
    _, batch = _packed_batch(split, n=4)
    labels = torch.where(torch.rand(batch.input_ids.shape, generator=torch.Generator().manual_seed(0)) < 0.3,
                         batch.input_ids, torch.full_like(batch.input_ids, -100))
    labels[batch.input_ids.eq(PAD_ID)] = -100
    with torch.no_grad():
        out = model(batch.input_ids, labels, batch.attention_mask, document_ids=batch.document_ids)
        total, count = 0.0, 0
        for row in range(len(batch.input_ids)):
            d = batch.document_ids[row]
            for k in range(1, int(d.max()) + 1):
                span = d.eq(k).nonzero().squeeze(1)
                a, b = int(span[0]), int(span[-1]) + 1
                o = model(batch.input_ids[row:row + 1, a:b], labels[row:row + 1, a:b])
                total, count = total + float(o["mlm_loss_sum"]), count + int(o["mlm_count"])
    assert int(out["mlm_count"]) == count
    assert abs(float(out["mlm_loss_sum"]) - total) <= 1e-4 * max(1.0, abs(total))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["roberta", "modern"])
def test_compiled_model_takes_document_ids(split, family):
    """train.compile=true: the compiled embeddings, blocks and head give eager's packed loss."""
    from roberta.training.parallelize import compile_model

    model = build_model(_model_cfg(family), "cpu", seed=0).eval()
    _, batch = _packed_batch(split)
    labels = torch.where(batch.input_ids.ne(PAD_ID), batch.input_ids, torch.full_like(batch.input_ids, -100))
    with torch.no_grad():
        eager = float(model(batch.input_ids, labels, batch.attention_mask,
                            document_ids=batch.document_ids)["mlm_loss_sum"])
        compile_model(model)
        compiled = float(model(batch.input_ids, labels, batch.attention_mask,
                               document_ids=batch.document_ids)["mlm_loss_sum"])
    assert compiled == pytest.approx(eager, rel=1e-5)


@pytest.mark.parametrize("family", ["roberta", "modern"])
def test_pretrain_trains_with_packed_documents(data_dir, tmp_path, family):
    """`roberta pretrain --set data.format=packed-documents` trains; the documents reach the model
    (a step whose rows cross a document boundary has another loss than FULL-SENTENCES' on the same
    tokens and masks; one in about seven of this corpus's rows does)."""
    from roberta.cli import main
    from test_train import BASE_SETS, NO_DROPOUT, metrics, train_records

    sets = BASE_SETS + NO_DROPOUT + ["train.max_steps=4", "train.seed=0"]
    if family == "modern":  # a global layer, then a local one (window 16 on 64-token rows)
        sets += ["model.ffn=96", "model.local_window=16", "model.global_every=2"]
    for fmt in ("packed-documents", "full-sentences"):
        args = ["pretrain", "--preset", "modern-tiny" if family == "modern" else "roberta-tiny", "--data", str(data_dir),
                "--out", str(tmp_path / fmt), "--quiet"]
        assert main(args + [a for s in sets + [f"data.format={fmt}"] for a in ("--set", s)]) == 0
    packed, full = train_records(tmp_path / "packed-documents"), train_records(tmp_path / "full-sentences")
    assert sorted(packed) == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(r["loss"])) for r in packed.values())
    assert all(packed[s]["tokens"] == full[s]["tokens"] and packed[s]["masked_tokens"] == full[s]["masked_tokens"]
               for s in packed)
    assert any(packed[s]["loss"] != full[s]["loss"] for s in packed)
    # evaluation is FULL-SENTENCES' for every format (the same scored tokens), attention across documents
    assert [r["eval_loss"] for r in metrics(tmp_path / "packed-documents") if "eval_loss" in r]


def test_pack_rows_first_fit_decreasing_keeps_every_input_once():
    rng = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 60, (200,), generator=rng).tolist() + [130]  # one longer than a row
    rows = pack_rows(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    sizes = [sum(lengths[i] for i in row) for row in rows]
    assert all(s <= 128 for s, row in zip(sizes, rows) if len(row) > 1) and [200] in rows
    assert len(rows) <= -(-sum(lengths) // 128) + 2  # first-fit decreasing: within a row or two of the bound


@pytest.mark.parametrize("family", ["roberta", "modern", "modern-mean"])
def test_a_packed_classifier_batch_gives_the_padded_batchs_logits(family):
    """Fine-tuning and predict without padding: examples packed into rows (each attending to
    itself, positions restarting, pooled from its own tokens) get the logits of the padded,
    length-bucketed batch, in the caller's order; and training through them has the same gradient."""
    from roberta.model import build_classifier

    cfg = _model_cfg(family.split("-")[0])
    model = build_classifier(cfg, 3, "cpu", seed=0).eval()
    if family == "modern-mean":
        model.classifier.pooling = "mean"
    randomise(model)
    g = torch.Generator().manual_seed(1)
    ids = [[BOS_ID, *torch.randint(5, 1000, (int(n),), generator=g).tolist(), EOS_ID]
           for n in torch.randint(1, 30, (24,), generator=g)]
    idx = np.random.default_rng(0).permutation(24)[:20]
    padded = forward(model, ids, idx, "fp32")
    packed = forward(model, ids, idx, "fp32", pack=SEQ_LEN)
    input_ids, docs, order = packed_batch([ids[i] for i in idx], SEQ_LEN)
    assert len(input_ids) < len(idx) and docs.amax(1).max() > 2  # several examples per row
    assert packed.shape == padded.shape and (packed - padded).abs().max() <= TOL
    model.train()
    model.classifier.dropout.p = 0.0
    grads = []
    for pack in (0, SEQ_LEN):
        model.zero_grad()
        forward(model, ids, idx, "fp32", pack=pack).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert (grads[0] - grads[1]).abs().max() <= 1e-4 * grads[0].abs().max()


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, window_size=(-1, -1), **_):
    """FlashAttention's varlen contract on a CPU: each segment attends within itself, within
    (left, right) of each query when a window is given."""
    out = torch.empty_like(q)
    left, right = window_size
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        assert b - a <= max_q
        i = torch.arange(b - a)
        near = torch.ones(b - a, b - a, dtype=torch.bool)
        if left >= 0:
            near = ((i[:, None] - i[None, :]) <= left) & ((i[None, :] - i[:, None]) <= right)
        out[a:b] = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), attn_mask=near).transpose(0, 1)
    return out


@pytest.mark.parametrize("family", ["roberta+rope", "modern"])
def test_varlen_path_gives_the_block_masks_logits(split, family, monkeypatch):
    """The GPU path of packed documents (varlen attention over cumulative lengths; local layers a
    (w/2, w/2) window) has the dense block mask's logits. The kernel is CUDA-only, so here
    FlashAttention's documented contract stands in for it: what is tested is our cut of the batch
    into segments, the flattening and the window's translation."""
    import roberta.attention as attention

    model = build_model(_model_cfg(family), "cpu", seed=0).eval()
    randomise(model)
    _, batch = _packed_batch(split)
    with torch.no_grad():
        dense = model.logits(batch.input_ids, batch.attention_mask, batch.document_ids)
        monkeypatch.setattr(attention, "varlen_kernel", lambda: _reference_varlen)
        monkeypatch.setattr(attention, "use_varlen", lambda *a: True)
        varlen = model.logits(batch.input_ids, batch.attention_mask, batch.document_ids)
    real = batch.attention_mask.bool()
    assert (dense - varlen)[real].abs().max() <= TOL
    seg = attention.document_segments(batch.document_ids)
    B, T = batch.input_ids.shape
    assert seg.cu[0] == 0 and seg.cu[-1] == B * T and (seg.cu.diff() > 0).all()
    assert len(seg.cu) - 1 == int(batch.document_ids.amax(1).sum()) + int((~real).any(1).sum())  # + padded tails


def test_document_segments_cut_at_every_document_and_row_start():
    from roberta.attention import document_segments

    d = torch.tensor([[1, 1, 1, 1], [1, 1, 2, 0], [1, 2, 2, 2]])  # row 1 starts with row 0's id
    seg = document_segments(d)
    assert seg.cu.tolist() == [0, 4, 6, 7, 8, 9, 12] and seg.cu.dtype == torch.int32 and seg.max_len == 4


def test_a_cpu_run_never_imports_the_varlen_kernel():
    """torch.nn.attention.varlen is imported only when a GPU run asks for it: it loads
    torch._inductor, seconds of start-up a CPU run has no use for."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "import roberta.model, roberta.training.loop, roberta.downstream.finetune\n"
            "from roberta.downstream.batches import pack_length\n"
            "from roberta.attention import use_varlen\n"
            "assert pack_length('auto', torch.device('cpu'), 'bf16', 0.0, True, 128) == 0\n"
            "assert not use_varlen(torch.zeros(1, dtype=torch.bfloat16), 0.0, True)\n"
            "print('torch.nn.attention.varlen' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
