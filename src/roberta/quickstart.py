"""`roberta quickstart`: the whole recipe end to end on the embedded corpus, in minutes on a CPU.

embedded corpus -> byte-level BPE (8K) -> FULL-SENTENCES packing at 128 -> `tiny` pretraining with
dynamic masking and the paper's AdamW -> held-out perplexity of the untrained network, the unigram
baseline and the trained model on the same masked tokens -> a fill-mask example.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

from roberta.api import load
from roberta.data.corpus import stdlib_documents
from roberta.data.prepare import load_split, prepare
from roberta.errors import UserError
from roberta.training.evaluate import eval_batches, mlm_loss, unigram_loss
from roberta.model import build_model
from roberta.outdir import claim_out
from roberta.presets import tiny
from roberta.tokenizer import save_tokenizer, train_tokenizer
from roberta.training.loop import pretrain

QUICKSTART_STEPS = 1000
SEQ_LEN = 128


def quickstart_threads() -> int:
    """torch's default (all cores) on an idle machine; one thread on a busy one, where two threads
    on two vCPUs wait on each other and a step can get 10x slower (measured here)."""
    busy = os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1)
    return 1 if busy else 0


OWN_ENTRIES = {"corpus.jsonl", "tokenizer", "data", "run"}


def quickstart(out: str | Path, steps: int = 0, progress: bool = True) -> dict:
    out = Path(out)
    if steps < 0:
        raise UserError(f"--max-steps {steps}: must be >= 0 (0 = {QUICKSTART_STEPS})")
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
        threads=quickstart_threads()))
    run = out / "run"
    print(f"[4/5] pretraining tiny ({cfg.model.layers} x {cfg.model.hidden}) for {cfg.train.max_steps} steps "
          f"of {cfg.train.batch_size} x {SEQ_LEN} tokens -> {run}")
    shutil.rmtree(run, ignore_errors=True)  # the quickstart always starts afresh
    summary = pretrain(str(data), str(run), cfg, progress=progress)

    # the three models, scored on the same held-out masked tokens
    valid = load_split(data, "valid")
    vocab = tok.get_vocab_size()
    batches = eval_batches(valid, SEQ_LEN, vocab, n_sequences=10_000)
    trained = load(run)
    untrained = build_model(trained.model.cfg, seed=cfg.train.seed)  # the same network at its initialisation
    results = {
        "untrained": mlm_loss(untrained, batches),
        "unigram": unigram_loss(load_split(data, "train").tokens, vocab, batches),
        "trained": mlm_loss(trained.model, batches),
    }
    print(f"[5/5] held-out masked-token loss on {results['trained']['tokens']:,} masked tokens:")
    for name, res in results.items():
        print(f"  {name:>9} model: loss {res['mlm_loss']:.3f} nats, perplexity {res['perplexity']:.1f}")
    ratio = results["trained"]["perplexity"] / results["unigram"]["perplexity"]
    verdict = "learned to use context" if ratio < 0.9 else "has NOT clearly left the unigram plateau"
    print(f"  trained / unigram perplexity = {ratio:.2f}: the model {verdict}")
    example = "Return the <mask> of the list."
    print(f"fill-mask: {example}")
    for p in trained.fill_mask(example, top_k=5):
        print(f"  {p['score']:.3f}  {p['sequence']}")
    print(f"done in {time.time() - t0:.0f}s. checkpoint: {summary['checkpoint']}; metrics: {run / 'metrics.jsonl'}; "
          f"try: roberta fill-mask --checkpoint {run} \"Open the <mask> for reading.\"")
    return {"results": results, "ratio": ratio, "summary": summary}
