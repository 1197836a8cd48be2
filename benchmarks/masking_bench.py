"""MLM masking speed: ours vs Hugging Face's collator vs a per-token Python loop, one run.

The same (256 x 512) batch over a 50,265-token vocabulary goes through
  - ours, hash-keyed: `sequence_keys` + `mask_tokens(seq_keys=...)` -- every sequence's mask a
    pure function of (seed, epoch, index), what the trainer runs; also with exact counts and
    whole-word masking (a synthetic word-start table);
  - ours, generator path: `mask_tokens(generator=...)`, one running stream like HF's;
  - HF `DataCollatorForLanguageModeling(mlm_probability=0.15).torch_mask_tokens` on the same
    tensor: as called by the collator when the batch carries no special-tokens mask (it then
    asks the tokenizer, per sequence, in Python), and with a precomputed special_tokens_mask
    (its fastest path);
  - the paper's pseudo-code as a per-token Python loop (timed on a subset, extrapolated).
Then a `tiny` training step (4 x 256, 8K vocabulary, batch 16 x 128: forward + backward + AdamW,
roberta.model.build_model) and the masking of its batch, to show what masking costs in training.

Methods are timed in interleaved rounds (robust to a noisy shared machine); each figure is the
median. Usage: python benchmarks/masking_bench.py [--rounds 15] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time

import torch

from roberta.masking import mask_tokens, sequence_keys
from roberta.model import build_model
from roberta.training.optim import build_optimizer
from roberta.presets import tiny
from roberta.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID, SPECIAL_IDS, SPECIAL_TOKENS

VOCAB = 50265  # RoBERTa's
B, T = 256, 512
P = 0.15


def make_batch(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """<s> tokens </s>, with a document break (</s>) inside and padding at the end of 1 row in 8."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL_IDS), vocab, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = BOS_ID, EOS_ID
    ids[:, length // 2] = EOS_ID
    for row in range(0, batch, 8):
        end = int(torch.randint(length // 4, length - 1, (1,), generator=g))
        ids[row, end], ids[row, end + 1:] = EOS_ID, PAD_ID
    return ids


def hf_tokenizer(vocab: int):
    """A RobertaTokenizerFast with RoBERTa's special ids 0-4 and `vocab` entries, built locally
    (no hub): the collator only needs the mask id, the special-tokens mask and len()."""
    from tokenizers import Tokenizer, models
    from transformers import RobertaTokenizerFast

    table = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    table.update({f"t{i}": i for i in range(len(SPECIAL_TOKENS), vocab)})
    tok = Tokenizer(models.BPE(vocab=table, merges=[], unk_token="<unk>"))
    return RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def python_loop(ids: torch.Tensor, vocab: int, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's recipe token by token: select 15% of the non-special tokens; of those, 80%
    <mask>, 10% a random token, 10% unchanged. Tensor in, tensors out, like the others."""
    special = set(SPECIAL_IDS)
    inputs, labels = [], []
    for row in ids.tolist():
        inp, lab = list(row), [-100] * len(row)
        for t, tok in enumerate(row):
            if tok in special or rng.random() >= P:
                continue
            lab[t] = tok
            r = rng.random()
            if r < 0.8:
                inp[t] = MASK_ID
            elif r < 0.9:
                inp[t] = rng.randrange(len(special), vocab)
        inputs.append(inp)
        labels.append(lab)
    return torch.tensor(inputs), torch.tensor(labels)


def tiny_step_fn(device: str = "cpu"):
    """One `tiny` training step (batch 16 x 128, 8K vocabulary) on `device`, and the masking of
    its batch on the CPU, where the trainer masks."""
    cfg = tiny()
    m = cfg.model
    batch = cfg.train.batch_size
    model = build_model(m, device, seed=0)
    model.train()
    opt = build_optimizer(model, cfg.optim, cfg.train.lr)
    ids = make_batch(batch, cfg.data.seq_len, m.vocab_size, seed=1)
    epochs, indices = torch.zeros(batch, dtype=torch.int64), torch.arange(batch)

    def mask():
        keys = sequence_keys(0, epochs, indices)
        return mask_tokens(ids, vocab_size=m.vocab_size, mask_token_id=MASK_ID,
                           special_token_ids=SPECIAL_IDS, mask_prob=P, seq_keys=keys)

    inputs, labels = (t.to(device) for t in mask())
    attention = ids.ne(PAD_ID).long().to(device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):  # as the trainer
            out = model(inputs, labels, attention)
        (out["mlm_loss_sum"] / out["mlm_count"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return mask, step


def timed(fn, device: str = "cpu") -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def median_times(fns: dict, rounds: int, device: str = "cpu") -> dict[str, float]:
    """Median seconds per call, timing the functions in interleaved rounds after one warm-up; the
    order rotates each round, so no function always runs after the same neighbour."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(timed(fns[name], device))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--loop-rows", type=int, default=8, help="rows the Python loop masks (extrapolated)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    ids = make_batch(B, T, VOCAB)
    epochs, indices = torch.full((B,), 3, dtype=torch.int64), torch.arange(1000, 1000 + B)
    common = dict(vocab_size=VOCAB, mask_token_id=MASK_ID, special_token_ids=SPECIAL_IDS, mask_prob=P)
    word_start = torch.rand(VOCAB, generator=torch.Generator().manual_seed(2)) < 0.6  # synthetic
    gen = torch.Generator().manual_seed(0)

    from transformers import DataCollatorForLanguageModeling

    tok = hf_tokenizer(VOCAB)
    collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=P, return_tensors="pt")
    special_mask = torch.tensor([tok.get_special_tokens_mask(r, already_has_special_tokens=True)
                                 for r in ids.tolist()])  # as the tokenizer returns it with the batch
    assert torch.equal(special_mask.bool(), torch.isin(ids, torch.tensor(SPECIAL_IDS)))

    def ours(batch=ids, **kw):
        return lambda: mask_tokens(batch, **common, seq_keys=sequence_keys(0, epochs, indices), **kw)

    rng = random.Random(0)
    loop = "Python loop (paper pseudo-code)"
    mask_tiny, step_tiny = tiny_step_fn()
    med = median_times({
        "ours: hash-keyed (trainer)": ours(),
        "ours: hash-keyed, exact count": ours(exact_count=True),
        "ours: hash-keyed, whole word": ours(word_start=word_start),
        "ours: generator stream": lambda: mask_tokens(ids, **common, generator=gen),
        "HF collator, special mask given": lambda: collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special_mask),
        "HF collator, as called (no mask)": lambda: collator.torch_mask_tokens(ids.clone()),
        loop: lambda: python_loop(ids[: args.loop_rows], VOCAB, rng),
    }, args.rounds)
    med[loop] *= B / args.loop_rows  # extrapolated from loop_rows rows to the batch
    tiny_med = median_times({"mask": mask_tiny, "step": step_tiny}, max(3, args.rounds // 3))
    mask_ms, step_ms = tiny_med["mask"] * 1e3, tiny_med["step"] * 1e3
    hf, loop_t = med["HF collator, special mask given"], med[loop]
    print(f"masking a {B} x {T} batch, vocabulary {VOCAB:,}, p = {P}; median of {args.rounds} interleaved rounds; "
          f"{torch.get_num_threads()} torch thread(s); {platform.processor() or platform.machine()}")
    print(f"{'method':36s} {'ms/batch':>10s} {'sequences/s':>12s} {'vs HF (mask given)':>19s} {'vs loop':>8s}")
    for name, t in med.items():
        print(f"{name:36s} {t * 1e3:10.2f} {B / t:12,.0f} {hf / t:18.2f}x {loop_t / t:7.1f}x")
    print(f"tiny training step on the CPU (4x256, vocab 8K, batch 16x128, fwd+bwd+AdamW): {step_ms:.1f} ms; "
          f"masking its batch (hash-keyed): {mask_ms:.3f} ms = {100 * mask_ms / step_ms:.2f}% of the step")
    ours_t = med["ours: hash-keyed (trainer)"]
    result = {
        "benchmark": "masking", "batch": [B, T], "vocab": VOCAB, "threads": torch.get_num_threads(),
        "sequences_per_s": {k: round(B / t, 1) for k, t in med.items()},
        "ours_vs_hf_mask_given": round(hf / ours_t, 2),
        "ours_vs_hf_as_called": round(med["HF collator, as called (no mask)"] / ours_t, 2),
        "generator_vs_hf_mask_given": round(hf / med["ours: generator stream"], 2),
        "ours_vs_python_loop": round(loop_t / ours_t, 1),
        "tiny_step_ms": round(step_ms, 2), "tiny_mask_ms": round(mask_ms, 4),
        "tiny_mask_share_of_step": round(mask_ms / step_ms, 5),
    }
    if torch.cuda.is_available():
        result.update(gpu_section(ids, ours, args.rounds, mask_tiny))
    print(json.dumps(result))


def gpu_section(ids: torch.Tensor, ours, rounds: int, mask_tiny) -> dict:
    """The same masking on the GPU (bit-identical to the CPU's?) and a tiny step on the GPU."""
    gpu_ids = ids.cuda()
    identical = all(torch.equal(c, g.cpu()) for c, g in zip(ours()(), ours(gpu_ids)()))
    _, step_gpu = tiny_step_fn("cuda")
    med = median_times({"mask": ours(gpu_ids), "step": step_gpu}, rounds, "cuda")
    mask_ms, step_ms, cpu_mask_ms = med["mask"] * 1e3, med["step"] * 1e3, timed(mask_tiny) * 1e3
    print(f"GPU ({torch.cuda.get_device_name()}): {B} x {T} batch masked in {mask_ms:.3f} ms "
          f"({B / med['mask']:,.0f} sequences/s), bit-identical to the CPU: {identical}; tiny step (bf16) "
          f"{step_ms:.2f} ms; its batch masked on the CPU as the trainer does: {cpu_mask_ms:.3f} ms "
          f"= {100 * cpu_mask_ms / step_ms:.1f}% of the step")
    return {"gpu": torch.cuda.get_device_name(), "gpu_sequences_per_s": round(B / med["mask"], 1),
            "gpu_bit_identical": identical, "gpu_tiny_step_ms": round(step_ms, 3),
            "gpu_tiny_cpu_mask_share": round(cpu_mask_ms / step_ms, 4)}


if __name__ == "__main__":
    main()
