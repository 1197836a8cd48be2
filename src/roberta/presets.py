"""Presets are plain functions returning a Config; derive new ones with dataclasses.replace.

`tiny` is the CPU recipe, screened on a 2-vCPU machine at the budgets people first try
(docs/ablations/cpu-recipe.md): it is ModernBERT-family, because at minutes of CPU the 2019
architecture does not leave the unigram plateau. `roberta-tiny`, `small`, `base` and `large` are
the 2019 architecture (`base` and `large` the paper's, Liu et al. 2019, Table 9). The `modern-*`
presets are those sizes with ModernBERT's architecture (model.family=modern); `modern-base` /
`modern-large` are ModernBERT-base / -large.

A preset leaves what the data decides as None: the vocabulary (the tokenizer's), the position
table and data.seq_len (the length `roberta prepare --seq-len` packed), the NSP head (the
format's). SEQ_LEN is the length each preset is sized for; `roberta pretrain` warns when the
prepared data's differs.
"""

from __future__ import annotations

from dataclasses import replace

from roberta.config import Config, DataConfig, ModelConfig, TrainConfig
from roberta.errors import UserError


def tiny() -> Config:
    """The CPU recipe: what a laptop user gets (roberta quickstart, the README's 5-minute run).
    Screened on a 2-vCPU CPU at fixed wall-clock budgets on IMDB (docs/ablations/cpu-recipe.md),
    where the 2019 architecture stays on the unigram plateau for minutes:
    - ModernBERT's architecture: rotary positions need no position table learned before attention
      can use context; pre-norm trains at a high lr; no dropout (one epoch at most). 1,065 -> 384
      held-out perplexity at 150 s.
    - warmup-stable-decay at lr 1e-3 (the peak held, the last 20% decayed): 384 -> 271. lr 2e-3
      held that long leaves the plateau late or not at all at 4 layers.
    - 2 layers, not 4: at a few minutes a smaller model's extra steps win (219 at 150 s; 158 vs
      4 layers' 203 at 3 min, 2 seeds each). 30% masking (15%: 617; 40%: no better); batch 16.
    Held out on a corpus it was not screened on: the quickstart's standard-library docstrings."""
    cfg = modern(roberta_tiny(), layers=2, ffn=384, local_window=64)
    return replace(cfg, train=replace(cfg.train, lr=1e-3, decay_fraction=0.2))  # modern() set wsd


def roberta_tiny() -> Config:
    """4 x 256 with the 2019 architecture (post-LN, learned positions, dropout 0.1, 15% masking)
    for CPUs and tests: batch 16 x 128, lr 5e-4, 6% warmup. Exports as RobertaForMaskedLM; the
    paper's tables (masking, formats with NSP) run on it."""
    return Config(
        model=ModelConfig(layers=4, hidden=256, heads=4, ffn=1024),
        data=DataConfig(),
        train=TrainConfig(batch_size=16, lr=5e-4, max_steps=1000, warmup_fraction=0.06),
    )


def small() -> Config:
    """6 x 512, 8 heads, the 2019 architecture: a laptop-sized model that still learns something in an hour."""
    cfg = roberta_tiny()
    return replace(cfg, model=replace(cfg.model, layers=6, hidden=512, heads=8, ffn=2048),
                   train=replace(cfg.train, batch_size=32, lr=5e-4))


def base() -> Config:
    """RoBERTa-base: 12 x 768, 12 heads, FFN 3072; 8K batch, lr 6e-4, 24K warmup, 500K steps."""
    return Config(
        model=ModelConfig(layers=12, hidden=768, heads=12, ffn=3072),
        data=DataConfig(),
        train=TrainConfig(batch_size=8192, lr=6e-4, warmup_steps=24000, max_steps=500000,
                          eval_interval=2000, checkpoint_interval=5000),
    )


def large() -> Config:
    """RoBERTa-large: 24 x 1024, 16 heads, FFN 4096; 8K batch, lr 4e-4, 30K warmup, 500K steps."""
    cfg = base()
    return replace(cfg, model=replace(cfg.model, layers=24, hidden=1024, heads=16, ffn=4096),
                   train=replace(cfg.train, lr=4e-4, warmup_steps=30000))


def modern(cfg: Config, **model) -> Config:
    """cfg with ModernBERT's architecture (Warner et al. 2024): pre-norm, GeGLU, no biases, rotary
    positions (global base 160K, local 10K), no dropout, and its recipe where our switches have it:
    30% masking and a warmup-stable-decay schedule (the peak held, the last 20% decayed linearly)."""
    arch = dict(family="modern", norm="pre", bias=False, glu=True, dropout=0.0, attention_dropout=0.0,
                rope_theta=160000.0, local_rope_theta=10000.0, global_every=3)
    return replace(cfg, model=replace(cfg.model, **{**arch, **model}),
                   masking=replace(cfg.masking, mask_prob=0.3), train=replace(cfg.train, schedule="wsd"))


def modern_tiny() -> Config:
    """roberta-tiny's size and recipe with ModernBERT's architecture and masking: 4 x 256, GeGLU 384
    (ModernBERT's 1.5 x hidden), window 64 on 128 tokens, a global layer every 3rd, 30% masking."""
    return modern(roberta_tiny(), ffn=384, local_window=64)


def modern_small() -> Config:
    """small's size and recipe with ModernBERT's architecture: 6 x 512, GeGLU 768, window 64."""
    return modern(small(), ffn=768, local_window=64)


def modern_base() -> Config:
    """ModernBERT-base: 22 x 768, 12 heads, GeGLU 1152, window 128, a global layer every 3rd
    (its config.json) and its init (model.init=modernbert); base's batch and schedule, sized for
    1024 tokens (ModernBERT's first phase). ModernBERT's optimizer is optim.name=stableadamw, not
    set here: its cost on a GPU is not measured yet."""
    return modern(base(), layers=22, hidden=768, heads=12, ffn=1152, local_window=128, init="modernbert")


def modern_large() -> Config:
    """ModernBERT-large: 28 x 1024, 16 heads, GeGLU 2624, window 128, a global layer every 3rd, its
    init; large's batch and schedule."""
    return modern(large(), layers=28, hidden=1024, heads=16, ffn=2624, local_window=128, init="modernbert")


PRESETS = {"tiny": tiny, "roberta-tiny": roberta_tiny, "small": small, "base": base, "large": large, "modern-tiny": modern_tiny,
           "modern-small": modern_small, "modern-base": modern_base, "modern-large": modern_large}
# the sequence length each preset is sized for
SEQ_LEN = {"tiny": 128, "roberta-tiny": 128, "small": 128, "base": 512, "large": 512,
           "modern-tiny": 128, "modern-small": 128, "modern-base": 1024, "modern-large": 1024}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise UserError(f"--preset {name}: unknown preset; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
