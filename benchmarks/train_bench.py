"""Training-step throughput: ours vs the standard Hugging Face path, same model size, same batch.

    ours: roberta.training.loop's step as its loop runs it (hash masking on the host, one batch ahead; sparse
          LM head; AdamW from roberta.training.optim; one host sync per step)
    HF:   transformers RobertaForMaskedLM + DataCollatorForLanguageModeling + torch.optim.AdamW

The modern family (--family modern, or presets named modern-*: ModernBERT's architecture) runs
against transformers' ModernBertForMaskedLM (attn_implementation "sdpa") on the same shape -- the
config roberta.hf_modern exports for it: hidden, layers, heads, GeGLU width, sliding window,
global-layer spacing, rotary bases, vocabulary -- with the same collator at the preset's 30%
masking (ModernBERT's) and torch AdamW.

Both see the same random token sequences (full length, no padding) with dropout 0.1 (--dropout),
the paper's AdamW settings, at each precision of --precisions (default: fp32 and, on a CPU with
native bf16 GEMMs, bf16 autocast too; bf16 autocast on a GPU). Each row is compared with HF at
fp32 (what a Trainer user gets by default on a CPU) and with HF at the same precision. Steps are interleaved in rounds
and the median step time is reported, because the machine is shared. MFU counts the same model
FLOPs for both (roberta.model.training_flops: 6 N per token, attention 12 L d s, the LM head at
the masked positions it needs) against the peak: on CPU the best of the warmed-up 2048^2 fp32
matmul probes taken in this run in the row's precision, on GPU the datasheet's dense bf16 rate. "@load" divides instead
by the probe of the same round: on a machine others are using, the share of what was available.

On CPU the default is one thread (--threads): this machine's two vCPUs share one core's FMA units
(one thread reaches the same matmul peak as two), and with other work on the machine OpenMP's
second thread makes every op wait for a descheduled peer.

    python benchmarks/train_bench.py                                   # roberta-tiny, small at 128 on CPU
    python benchmarks/train_bench.py --family modern --dropout 0                 # modern-tiny, -small vs HF ModernBERT
    python benchmarks/train_bench.py --device cuda --presets base --seq-lens 128,512 --precisions bf16 \
        --batch 256,64 --impls ours,ours+compile,HF
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import torch

from roberta.config import Config
from roberta.data.loader import Batch
from roberta.training.distributed import Dist
from roberta.model import build_model, padded_vocab_size, training_flops
from roberta.training.optim import build_optimizer
from roberta.training.perf import datasheet_peak, enable_float8, matmul_peak, sync
from roberta.training.precision import cpu_native_bf16
from roberta.presets import get_preset
from roberta.tokenizer import BOS_ID, EOS_ID, PAD_ID
from roberta.masking import Masker
from roberta.training.parallelize import compile_model
from roberta.training.loop import MaskedStep, launch_step, mask_step

# The sizes the issue names: vocabulary per preset (base: RoBERTa's own 50,265).
VOCAB = {"roberta-tiny": 8000, "small": 32000, "base": 50265, "large": 50265}
# the same sizes with ModernBERT's architecture; tiny (the CPU recipe) is ModernBERT-family too
VOCAB.update({f"modern-{name.removeprefix('roberta-')}": size for name, size in VOCAB.items()}, tiny=8000)


def make_config(preset: str, seq_len: int, batch: int, micro: int, compile_: bool, dropout: float,
                precision: str = "auto") -> Config:
    """What `roberta pretrain` builds for this preset and a VOCAB[preset]-token tokenizer (the
    vocabulary padded to model.vocab_multiple: base's 50,265 -> 50,304)."""
    cfg = get_preset(preset)
    vocab = padded_vocab_size(VOCAB[preset], cfg.model.vocab_multiple)
    model = dataclasses.replace(cfg.model, vocab_size=vocab, max_positions=seq_len + 2,
                                dropout=dropout, attention_dropout=dropout)
    train = dataclasses.replace(cfg.train, batch_size=batch, micro_batch_size=micro, compile=compile_,
                                precision=precision)
    return dataclasses.replace(cfg, model=model, data=dataclasses.replace(cfg.data, seq_len=seq_len), train=train)


def random_batches(n: int, batch: int, seq_len: int, vocab: int, seed: int = 0) -> list[torch.Tensor]:
    """(batch, seq_len) sequences framed <s> ... </s> with ids drawn from the real vocabulary."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (batch, seq_len), generator=g)
        ids[:, 0], ids[:, -1] = BOS_ID, EOS_ID
        out.append(ids)
    return out


class Ours:
    """The trainer's step as its loop runs it: launch this batch, prepare (collate-free here: mask
    on the host) the next one while the device works, then the step's one host sync."""

    def __init__(self, cfg: Config, device: torch.device, vocab: int, compile_mode: str | None = None,
                 liger: bool = False):
        self.name = ("ours+compile" if cfg.train.compile else "ours") + ("+float8" if cfg.train.float8 else "") \
            + ("+liger" if liger else "") + f" {cfg.train.precision}"
        self.precision = cfg.train.precision
        self.cfg, self.dist = cfg, Dist(device=device)
        self.model = build_model(cfg.model, device, seed=0)
        if cfg.train.float8:  # the trainer's order: float8, then compile
            enable_float8(self.model, device)
        if liger:
            use_liger(self.model)
        if cfg.train.compile:
            compile_model(self.model, compile_mode)
        self.opt = build_optimizer(self.model, cfg.optim, cfg.train.lr)
        self.masker = Masker.for_run(cfg, {f"t{i}": i for i in range(vocab)})  # random tokens: the tokenizer's ids
        self.step_i = 0
        self.upcoming: tuple[torch.Tensor, MaskedStep] | None = None

    def prepare(self, ids: torch.Tensor) -> MaskedStep:
        B, micro = ids.shape[0], self.cfg.train.micro_batch_size
        mbs = [Batch(ids[a:a + micro], torch.ones_like(ids[a:a + micro]), torch.full((micro,), self.step_i),
                     torch.arange(a, a + micro), None) for a in range(0, B, micro)]
        self.step_i += 1
        return mask_step(mbs, self.masker, self.cfg)

    def step(self, ids: torch.Tensor, next_ids: torch.Tensor | None = None) -> int:
        """One optimizer step on (B, T) host ids (prepared during the last step if it was told);
        -> masked tokens."""
        prep = self.upcoming[1] if self.upcoming and self.upcoming[0] is ids else self.prepare(ids)
        pending = launch_step(self.model, self.opt, prep, self.dist, self.cfg)
        self.upcoming = None if next_ids is None else (next_ids, self.prepare(next_ids))
        return pending.result()["masked"]


def hf_model(m, vocab: int) -> torch.nn.Module:
    """transformers' masked LM of our model config's family and shape, with exactly `vocab` rows:
    RobertaForMaskedLM, or ModernBertForMaskedLM with SDPA attention (no compile, as HF runs it)."""
    if m.family == "modern":
        from transformers import ModernBertConfig, ModernBertForMaskedLM
        from roberta.hf_modern import hf_modern_config

        spec = {k: v for k, v in hf_modern_config(dataclasses.replace(m, vocab_size=vocab)).items()
                if k not in ("architectures", "model_type")}
        return ModernBertForMaskedLM(ModernBertConfig(**spec, attn_implementation="sdpa"))
    from transformers import RobertaConfig, RobertaForMaskedLM

    hf_cfg = RobertaConfig(vocab_size=vocab, hidden_size=m.hidden, num_hidden_layers=m.layers,
                           num_attention_heads=m.heads, intermediate_size=m.ffn,
                           max_position_embeddings=m.max_positions, type_vocab_size=1,
                           hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.attention_dropout,
                           pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    return RobertaForMaskedLM(hf_cfg)


class HF:
    def __init__(self, cfg: Config, device: torch.device, vocab: int):
        self.precision = cfg.train.precision
        self.name = f"HF {self.precision}"
        from transformers import DataCollatorForLanguageModeling
        from transformers import PreTrainedTokenizerFast
        from tokenizers import Tokenizer, models

        m, o = cfg.model, cfg.optim
        torch.manual_seed(0)
        self.model = hf_model(m, vocab).to(device).train()
        # The collator needs a tokenizer for its special-token ids and vocabulary size only.
        words = {f"t{i}": i for i in range(vocab)}
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="t3")),
                                      bos_token="t0", pad_token="t1", eos_token="t2", unk_token="t3", mask_token="t4")
        self.collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=cfg.masking.mask_prob)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.train.lr, betas=(o.beta1, o.beta2),
                                     eps=o.eps, weight_decay=o.weight_decay)
        self.device, self.micro = device, cfg.train.micro_batch_size

    def step(self, ids: torch.Tensor, next_ids: torch.Tensor | None = None) -> int:
        """The usual HF loop: collator -> model(**batch).loss (mean per micro-batch) -> AdamW."""
        masked = torch.zeros((), dtype=torch.long, device=self.device)
        n_mb = ids.shape[0] // self.micro
        for a in range(0, ids.shape[0], self.micro):
            b = self.collator([{"input_ids": row} for row in ids[a:a + self.micro].tolist()])
            b = {k: v.to(self.device, non_blocking=True) for k, v in b.items()}
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                loss = self.model(**b).loss / n_mb
            loss.backward()
            masked += b["labels"].ne(-100).sum()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return int(masked)


def use_liger(model: torch.nn.Module) -> None:
    """Liger-Kernel's Triton LayerNorm in every LayerNorm, and its fused linear + cross-entropy for
    the sparse head's decoder (no logits materialised). Benchmark-only: measured before adopting."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss, LigerLayerNorm

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.LayerNorm):
                ln = LigerLayerNorm(child.normalized_shape[0], eps=child.eps, bias=True).to(child.weight.device)
                ln.load_state_dict(child.state_dict())
                setattr(parent, name, ln)
    head, flce = model.lm_head, LigerFusedLinearCrossEntropyLoss(reduction="sum")

    def loss_sum(h, targets, decoder_weight):  # (n, C) masked positions -> summed loss
        x = head.layer_norm(torch.nn.functional.gelu(head.dense(h)))
        return flce(decoder_weight, x, targets, head.bias)

    head.loss_sum = loss_sum


def _variant(**train):
    return lambda cfg, dev, vocab: Ours(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train)), dev,
                                        vocab)


IMPLS = {"ours": lambda cfg, dev, vocab: Ours(cfg, dev, vocab), "HF": lambda cfg, dev, vocab: HF(cfg, dev, vocab),
         "ours+compile": _variant(compile=True), "ours+compile+float8": _variant(compile=True, float8=True),
         "ours+compile+liger": lambda cfg, dev, vocab: Ours(dataclasses.replace(cfg, train=dataclasses.replace(
             cfg.train, compile=True)), dev, vocab, liger=True)}


def bench(args) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    precisions = args.precisions
    peaks = {p: [matmul_peak(device, bf16=p == "bf16")] for p in precisions}
    seq_lens = [int(s) for s in args.seq_lens.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    if len(batches) not in (1, len(seq_lens)):
        raise SystemExit("--batch: one size, or one per --seq-lens entry")
    for preset in presets_of(args):
        for seq_len, batch in zip(seq_lens, batches * len(seq_lens) if len(batches) == 1 else batches):
            micro = args.micro_batch or batch
            vocab = VOCAB[preset]  # the tokenizer's: HF's model has exactly these rows, ours pads past them
            data = random_batches(4, batch, seq_len, vocab)  # on the host, as the data loader gives them
            runners = []
            for name, precision in [(n, p) for p in precisions for n in args.impls.split(",")]:
                t0 = time.perf_counter()
                cfg = make_config(preset, seq_len, batch, micro, False, args.dropout, precision)
                r = IMPLS[name](cfg, device, vocab)
                for i in range(args.warmup):  # warm-up (and compilation)
                    r.step(data[i % len(data)], data[(i + 1) % len(data)])
                sync(device)
                print(f"# {preset}@{seq_len} {name}: built and warmed up in {time.perf_counter() - t0:.1f}s",
                      file=sys.stderr, flush=True)
                runners.append(r)
            times = {r.name: [] for r in runners}
            masked = {r.name: [] for r in runners}
            at_load = {r.name: [] for r in runners}  # step FLOP/s / the probe of the same round
            for rnd in range(args.rounds):  # interleaved: the machine's load hits every runner alike
                round_peak = {p: matmul_peak(device, bf16=p == "bf16") for p in precisions}
                for p in precisions:
                    peaks[p].append(round_peak[p])
                for r in runners:
                    for i in range(args.steps):
                        t0 = time.perf_counter()
                        masked[r.name].append(r.step(data[(rnd + i) % len(data)], data[(rnd + i + 1) % len(data)]))
                        sync(device)
                        times[r.name].append(time.perf_counter() - t0)
                        at_load[r.name].append((times[r.name][-1], round_peak[r.precision]))
            tokens = batch * seq_len
            model_cfg = dataclasses.replace(cfg.model, sparse_head=True)
            for r in runners:
                peak = datasheet_peak(device) or max(peaks[r.precision])
                t = statistics.median(times[r.name])
                flops = training_flops(model_cfg, tokens, statistics.mean(masked[r.name]), seq_len)
                rows.append({"preset": preset, "seq_len": seq_len, "batch": batch, "impl": r.name.split()[0],
                             "precision": r.precision,
                             "dropout": args.dropout, "step_s": t, "tokens_per_s": tokens / t,
                             "tflops": flops / t / 1e12, "mfu": flops / t / peak,
                             "mfu_at_load": statistics.median(flops / s / p for s, p in at_load[r.name]),
                             "peak_tflops": peak / 1e12, "measured_peak_tflops": max(peaks[r.precision]) / 1e12})
            del runners, data
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def presets_of(args) -> list[str]:
    """--presets, each as its --family twin (roberta-tiny -> modern-tiny under --family modern)."""
    names = args.presets.split(",")
    if args.family == "modern":
        names = [n if n.startswith("modern-") or n == "tiny" else f"modern-{n.removeprefix('roberta-')}"
                 for n in names]
    unknown = [n for n in names if n not in VOCAB]
    if unknown:
        raise SystemExit(f"--presets {','.join(unknown)}: choose from {', '.join(VOCAB)}")
    return names


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--presets", default="roberta-tiny,small", help=f"comma-separated, from {', '.join(VOCAB)}")
    p.add_argument("--family", default="roberta", choices=["roberta", "modern"],
                   help="modern: each preset's modern-* twin (ModernBERT's architecture) vs HF's ModernBertForMaskedLM")
    p.add_argument("--seq-lens", default="128")
    p.add_argument("--batch", default="32", help="sequences per optimizer step; or one per --seq-lens")
    p.add_argument("--micro-batch", type=int, default=0, help="sequences per forward (default: --batch)")
    p.add_argument("--precisions", default="auto",
                   help="comma-separated fp32,bf16; auto: fp32 (+ bf16 where the CPU has it) on CPU, bf16 on GPU")
    p.add_argument("--impls", default="ours,HF", help=f"comma-separated, from {', '.join(IMPLS)}")
    p.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout, both impls")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (0: torch's default)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="timed steps per implementation per round")
    args = p.parse_args(argv)
    if args.precisions == "auto":
        args.precisions = ["bf16"] if args.device.startswith("cuda") else ["fp32"] + ["bf16"] * cpu_native_bf16()[0]
    else:
        args.precisions = args.precisions.split(",")
    if args.threads and args.device == "cpu":
        torch.set_num_threads(args.threads)
    rows = bench(args)
    if not args.device.startswith("cuda"):  # one peak per precision for every row: the best probe of the run
        for r in rows:
            r["peak_tflops"] = max(x["measured_peak_tflops"] for x in rows if x["precision"] == r["precision"])
            r["mfu"] = r["tflops"] / r["peak_tflops"]
    w = max(7, *(len(r["preset"]) + 1 for r in rows))  # modern-* names are wider than the RoBERTa presets'
    print(f"{'preset':<{w}}{'seq':>5}{'batch':>6}  {'impl':<20}{'prec':<6}{'step s':>8}{'tokens/s':>11}{'TFLOP/s':>9}"
          f"{'MFU':>7}{'@load':>7}{'vs HF fp32':>11}{'vs HF same':>11}")
    speedups = {}

    def hf(r: dict, precision: str) -> dict | None:
        return next((h for h in rows if h["impl"] == "HF" and h["preset"] == r["preset"]
                     and h["seq_len"] == r["seq_len"] and h["precision"] == precision), None)

    for r in rows:
        h32, same = hf(r, "fp32"), hf(r, r["precision"])
        vs32 = r["tokens_per_s"] / h32["tokens_per_s"] if h32 else float("nan")
        vs_same = r["tokens_per_s"] / same["tokens_per_s"] if same else float("nan")
        r["vs_hf_fp32"], r["vs_hf_same_precision"] = vs32, vs_same
        if r["impl"] != "HF":
            speedups[f"{r['preset']}@{r['seq_len']} {r['impl']} {r['precision']}"] = {"vs_hf_fp32": vs32,
                                                                                     "vs_hf_same": vs_same}
        print(f"{r['preset']:<{w}}{r['seq_len']:>5}{r['batch']:>6}  {r['impl']:<20}{r['precision']:<6}{r['step_s']:>8.3f}"
              f"{r['tokens_per_s']:>11,.0f}{r['tflops']:>9.2f}{r['mfu']:>7.1%}{r['mfu_at_load']:>7.1%}"
              f"{vs32:>10.2f}x{vs_same:>10.2f}x")
    if args.device.startswith("cuda"):
        dev = torch.cuda.get_device_name()
    else:
        dev = f"cpu, {torch.get_num_threads()} threads"
    peaks = ", ".join(f"{p} {max(r['peak_tflops'] for r in rows if r['precision'] == p):.3g}" for p in args.precisions)
    print(f"device: {dev}; dropout {args.dropout}; MFU against TFLOP/s {peaks} "
          f"({'datasheet bf16' if args.device.startswith('cuda') else 'best 2048^2 matmul of the run in that precision'}); "
          f"@load: against the matmul probe taken in the same round (a shared machine's momentary peak)")
    print(json.dumps({"benchmark": "train", "device": dev, "precisions": args.precisions, "dropout": args.dropout,
                      "torch": torch.__version__, "rows": rows, "speedup_vs_hf": speedups}))


if __name__ == "__main__":
    main()
