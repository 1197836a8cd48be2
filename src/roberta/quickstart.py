"""`roberta quickstart`: the whole recipe end to end on the embedded corpus, in minutes on a CPU.

embedded corpus -> byte-level BPE (8K) -> FULL-SENTENCES packing at 128 -> `tiny` pretraining (the
CPU recipe: docs/ablations/cpu-recipe.md) with dynamic masking and the paper's AdamW -> held-out
perplexity of the untrained network, the unigram baseline and the trained model on the same masked
tokens -> a fill-mask example.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from roberta.api import load
from roberta.data.corpus import stdlib_documents
from roberta.data.prepare import load_split, prepare
from roberta.errors import UserError
from roberta.training.evaluate import compare_with_baselines, eval_batches, format_comparison
from roberta.model import build_model
from roberta.outdir import claim_out
from roberta.presets import tiny
from roberta.tokenizer import save_tokenizer, train_tokenizer
from roberta.training.loop import pretrain

QUICKSTART_STEPS = 1000
SEQ_LEN = 128


OWN_ENTRIES = {"corpus.jsonl", "tokenizer", "data", "run"}


def quickstart(out: str | Path, steps: int = 0, progress: bool = True, threads: int = 0) -> dict:
    """threads: the pretraining's torch threads (0 = train.threads=0: the cores other processes
    leave idle, measured as the pretraining starts; roberta.training.threads)."""
    out = Path(out)
    if steps < 0:
        raise UserError(f"--max-steps {steps}: must be >= 0 (0 = {QUICKSTART_STEPS})")
    if threads < 0:
        raise UserError(f"--threads {threads}: must be >= 0 (0 = chosen for this machine)")
    # a previous quickstart's directory is rewritten (it always starts afresh); anything else is not ours
    claim_out(out, False, "quickstart", own=lambda p: {c.name for c in p.iterdir()} <= OWN_ENTRIES)
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.jsonl"
    docs = list(stdlib_documents())
    with open(corpus, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    print(f"[1/5] corpus: {len(docs):,} documents ({corpus.stat().st_size / 1e6:.1f} MB) from pydoc_data.topics "
          f"and the standard library's docstrings -> {corpus}")

    tok = train_tokenizer(iter(docs), vocab_size=8000)
    save_tokenizer(tok, out / "tokenizer", model_max_length=SEQ_LEN)
    print(f"[2/5] tokenizer: byte-level BPE, {tok.get_vocab_size():,} tokens -> {out / 'tokenizer'}")

    data = out / "data"
    r = prepare([str(corpus)], str(out / "tokenizer"), str(data), seq_len=SEQ_LEN, valid_fraction=0.05,
                workers=1, progress=False)
    sp = r.meta["splits"]
    print(f"[3/5] prepared: {sp['train']['tokens']:,} training / {sp['valid']['tokens']:,} held-out tokens "
          f"(documents split 95/5) -> {data}")

    cfg = tiny()
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, max_steps=steps or QUICKSTART_STEPS, eval_interval=250, checkpoint_interval=250,
        threads=threads))
    run = out / "run"
    print(f"[4/5] pretraining tiny ({cfg.model.layers} x {cfg.model.hidden}) for {cfg.train.max_steps} steps "
          f"of {cfg.train.batch_size} x {SEQ_LEN} tokens -> {run}")
    shutil.rmtree(run, ignore_errors=True)  # the quickstart always starts afresh
    summary = pretrain(str(data), str(run), cfg, progress=progress)

    # the three models, scored on the same held-out masked tokens
    valid = load_split(data, "valid")
    batches = eval_batches(valid, SEQ_LEN, tok.get_vocab_size(), n_sequences=10_000)
    trained = load(run)
    untrained = build_model(trained.model.cfg, seed=cfg.train.seed)  # the same network at its initialisation
    c = compare_with_baselines(trained.model, untrained, load_split(data, "train").tokens, tok.get_vocab_size(),
                               batches)
    lines = format_comparison(c)
    print(f"[5/5] {lines[0]}", *lines[1:], sep="\n")
    example = "Return the <mask> of the list."
    print(f"fill-mask: {example}")
    for p in trained.fill_mask(example, top_k=5):
        print(f"  {p['score']:.3f}  {p['sequence']}")
    print(f"done in {time.time() - t0:.0f}s. checkpoint: {summary['checkpoint']}; metrics: {run / 'metrics.jsonl'}; "
          f"try: roberta fill-mask --checkpoint {run} \"Open the <mask> for reading.\"")
    return {"results": {k: c[k] for k in ("untrained", "unigram", "trained")}, "ratio": c["ratio"],
            "interval": c["interval"], "summary": summary}
