"""Typed configuration: one dataclass per concern, `section.field=value` overrides.

Everything a run depends on lives in `Config`; presets (presets.py) are Python functions that
return one, and the command line only ever edits it through `apply_overrides`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Literal

from roberta.errors import UserError

Format = Literal["full-sentences", "doc-sentences", "segment-pair+nsp", "sentence-pair+nsp", "packed-documents"]
FORMATS: tuple[str, ...] = typing.get_args(Format)
NSP_FORMATS = ("segment-pair+nsp", "sentence-pair+nsp")  # the formats that train next-sentence prediction
Precision = Literal["auto", "fp32", "bf16"]  # train.precision; roberta.training.precision says what each means
REPORTERS = ("tensorboard", "wandb")  # train.report_to: where metrics.jsonl's records also go


Family = Literal["roberta", "modern"]  # model.family: roberta.model and roberta.modern, one file each


@dataclass
class ModelConfig:
    family: Family = "roberta"  # roberta (the paper's encoder; norm/bias/glu switch parts) or modern (ModernBERT's)
    vocab_size: int | None = None  # embedding rows; None = the tokenizer's size rounded up to vocab_multiple
    vocab_multiple: int = 64  # pad the vocabulary to a multiple of this (tensor-core GEMM shapes); 1 = exact
    layers: int = 4  # transformer blocks
    hidden: int = 256  # width of the residual stream
    heads: int = 4  # attention heads; hidden must divide by it
    ffn: int = 1024  # inner width of each block's feed-forward network (gated: the width of the product)
    max_positions: int | None = None  # position rows (modern: no table, same bound); None = seq_len + padding_idx + 1
    dropout: float = 0.1  # dropout on embeddings, attention output and FFN output
    attention_dropout: float = 0.1  # dropout on the attention probabilities
    layer_norm_eps: float = 1e-5  # LayerNorm epsilon
    pad_token_id: int = 1  # the tokenizer's <pad> id; also RoBERTa's padding_idx for positions
    norm: Literal["post", "pre"] = "post"  # LayerNorm after each residual add (the paper) or before each sublayer
    bias: bool = True  # biases in the linear layers (modern family: also its norms' and heads'; the decoder keeps one)
    glu: bool = False  # gated FFN (GEGLU) instead of dense-GELU-dense
    nsp_head: bool | None = None  # next-sentence-prediction head; None = when data.format is a +nsp format
    sparse_head: bool = True  # project onto the vocabulary only at masked positions
    position: Literal["learned", "rope"] | None = None  # learned table or rotary (base rope_theta); None = the family's (roberta: learned, modern: rope)
    rope_theta: float = 160000.0  # rotary base of the global-attention layers (ModernBERT's; roberta family with position=rope: every layer)
    local_rope_theta: float = 10000.0  # modern family: rotary base of the local (sliding-window) layers
    local_window: int = 0  # modern family: a local layer's token sees +-local_window/2 tokens; 0 = all layers global
    global_every: int = 1  # modern family: every n-th layer is global (layer 0 included); the others local
    init: Literal["normal", "modernbert"] = "normal"  # normal: N(0, 0.02) everywhere (BERT/RoBERTa); modernbert: truncated at 2 sigma, output projections 0.02 / sqrt(2 layers), classifier hidden^-0.5


@dataclass
class DataConfig:
    seq_len: int | None = None  # tokens per training sequence; None = the length the data was prepared with
    format: Format = "full-sentences"  # how documents become sequences (the paper's Section 4.2 inputs)


@dataclass
class MaskingConfig:
    kind: Literal["dynamic", "static"] = "dynamic"  # fresh masks every epoch, or dupe_factor fixed ones
    mask_prob: float = 0.15  # share of (non-special) tokens selected for prediction
    mask_token_prob: float = 0.8  # of the selected: replaced by <mask>
    random_token_prob: float = 0.1  # of the selected: replaced by a random real token
    exact_count: bool = False  # exactly round(p * n) per sequence instead of Bernoulli(p)
    whole_word: bool = False  # select whole words (every sub-token of a word together)
    dupe_factor: int = 10  # static masking: distinct masks per sequence


@dataclass
class OptimConfig:
    name: Literal["adamw", "stableadamw"] = "adamw"  # adamw (the paper's) | stableadamw (ModernBERT's: AdamW whose per-tensor step shrinks when a gradient outruns its second moment)
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.98  # AdamW second-moment decay (the paper: 0.98 for stability at large batches)
    eps: float = 1e-6  # AdamW epsilon
    weight_decay: float = 0.01  # decoupled weight decay
    decay_norm_and_bias: bool = True  # fairseq decays every parameter; HF excludes bias/LayerNorm
    grad_clip: float = 0.0  # 0 = off (the paper's default)


@dataclass
class TrainConfig:
    batch_size: int = 16  # global, in sequences
    micro_batch_size: int = 0  # 0 = batch_size / world size (no accumulation)
    lr: float = 5e-4  # peak learning rate (before lr_scaling), reached after warmup, then linear decay to 0
    lr_scaling: Literal["none", "sqrt", "linear"] = "none"  # scale lr with batch_size / base_batch_size
    base_batch_size: int = 256  # the batch size lr is given for when lr_scaling scales it
    warmup_steps: int = 0  # linear warmup steps; 0 = use warmup_fraction
    warmup_fraction: float = 0.06  # used when warmup_steps == 0
    schedule: Literal["linear", "one-cycle", "wsd"] = "linear"  # after warmup: linear decay to 0 | one-cycle (triangle, peak at half the budget) | wsd (warmup-stable-decay)
    decay_fraction: float = 0.2  # wsd: the final fraction of the budget over which the lr decays to 0
    max_steps: int = 1000  # optimizer steps; 0 = unset (max_tokens or max_time then ends the run)
    max_tokens: int = 0  # 0 = unset; otherwise overrides max_steps
    max_time: str = ""  # a duration with its unit: "30s", "90m", "2h", "1d"; empty = unset
    seed: int = 0  # seeds the init, the batch order, the masks and dropout
    eval_interval: int = 200  # steps between held-out evaluations
    eval_sequences: int = 512  # held-out sequences each evaluation scores (fixed masks)
    log_interval: int = 10  # steps between metrics.jsonl records
    checkpoint_interval: int = 500  # steps between checkpoints (one is also written at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept; 0 = keep all
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = cuda when available
    compile: bool = False  # torch.compile the blocks and the LM head
    peak_flops: float = 0.0  # 0 = measure (CPU) or look up (GPU)
    max_bad_steps: int = 5  # consecutive non-finite losses before the run stops
    threads: int = 0  # torch CPU threads; 0 = automatic: the cores other processes leave idle at the start
    fsdp: bool = False  # shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    dist_timeout: str = "10m"  # a collective waiting longer (a rank died) stops every rank with an error
    report_to: str = "none"  # "none" | comma-separated "tensorboard", "wandb" (metrics.jsonl is always written)
    precision: Precision = "auto"  # bf16 autocast on a GPU and on a CPU with native bf16, else fp32
    activation_checkpointing: bool = False  # recompute each block's activations in backward (less memory)
    float8: bool = False  # float8 matmuls via torchao on Hopper-class GPUs (bf16 elsewhere in the model)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)  # the network
    data: DataConfig = field(default_factory=DataConfig)  # how prepared data becomes sequences
    masking: MaskingConfig = field(default_factory=MaskingConfig)  # which tokens are predicted
    optim: OptimConfig = field(default_factory=OptimConfig)  # AdamW
    train: TrainConfig = field(default_factory=TrainConfig)  # batch, schedule, budget, logging, hardware

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        sections = {}
        for f in dataclasses.fields(cls):
            sub = f.default_factory()  # type: ignore[misc]
            known = {g.name for g in dataclasses.fields(sub)}
            values = {k: v for k, v in d.get(f.name, {}).items() if k in known}
            sections[f.name] = dataclasses.replace(sub, **values)
        return cls(**sections)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def all_keys(cfg: Config) -> list[str]:
    return [f"{s.name}.{f.name}" for s in dataclasses.fields(cfg) for f in dataclasses.fields(getattr(cfg, s.name))]


def _parse_value(key: str, raw: str, typ) -> object:
    args = typing.get_args(typ)
    if type(None) in args:  # `int | None`: "none" (or nothing) = derive it at run time
        if raw.strip().lower() in ("", "none", "null", "auto"):
            return None
        typ = next(a for a in args if a is not type(None))
    if typing.get_origin(typ) is Literal:
        return raw.strip()  # validate() names the choices
    if typ is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UserError(f"--set {key}={raw}: expected true or false")
    try:
        if typ is int:
            return int(float(raw)) if re.fullmatch(r"[0-9.]+e[0-9]+", raw.strip().lower()) else int(raw)
        if typ is float:
            return float(raw)
    except ValueError:
        raise UserError(f"--set {key}={raw}: expected {typ.__name__}") from None
    return raw


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.field=value` strings; unknown keys and wrong types are UserErrors."""
    keys = all_keys(cfg)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item}: expected KEY=VALUE, e.g. train.max_steps=100")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.0)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UserError(f"--set {key}: unknown key{hint}")
        section, name = key.split(".")
        sub = getattr(cfg, section)
        hints = typing.get_type_hints(type(sub))
        value = _parse_value(key, raw, hints[name])
        if key in DURATIONS and value.strip():
            parse_duration(value, key, need_unit=True)
        setattr(cfg, section, dataclasses.replace(sub, **{name: value}))
    validate(cfg)
    return cfg


# sizes, intervals and budgets: each named key must be at least its bound (0 = unset / off / default)
AT_LEAST = {1: ("model.layers", "model.hidden", "model.heads", "model.ffn", "model.vocab_size",
                "model.max_positions", "train.batch_size", "train.eval_sequences", "train.log_interval",
                "train.eval_interval", "train.checkpoint_interval", "train.max_bad_steps", "train.base_batch_size"),
            0: ("model.pad_token_id", "train.max_steps", "train.max_tokens", "train.warmup_steps",
                "train.keep_checkpoints", "train.threads", "train.peak_flops", "optim.weight_decay",
                "optim.grad_clip")}


def check_bounds(cfg: Config) -> None:
    """A negative budget, interval or size is refused naming its key (before the checks that
    combine keys, whose messages would otherwise blame the wrong one)."""
    for bound, keys in AT_LEAST.items():
        for key in keys:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            if value is not None and value < bound:
                unset = " (0 = unset)" if bound == 0 and key in ("train.max_steps", "train.max_tokens") else ""
                raise UserError(f"{key}={value}: must be >= {bound}{unset}")
    for key in ("model.dropout", "model.attention_dropout", "optim.beta1", "optim.beta2"):
        section, name = key.split(".")
        if not 0.0 <= getattr(getattr(cfg, section), name) < 1.0:
            raise UserError(f"{key}={getattr(getattr(cfg, section), name)}: must be in [0, 1)")


def check_choices(cfg: Config) -> None:
    """Every `Literal[...]` field holds one of its choices."""
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for name, typ in typing.get_type_hints(type(sub)).items():
            optional = type(None) in typing.get_args(typ)  # `Literal[...] | None`: None = derived
            if optional:
                typ = next(a for a in typing.get_args(typ) if a is not type(None))
            choices = typing.get_args(typ) if typing.get_origin(typ) is Literal else ()
            if choices and getattr(sub, name) not in choices and not (optional and getattr(sub, name) is None):
                raise UserError(f"{section.name}.{name}={getattr(sub, name)}: choose "
                                f"{', '.join(choices[:-1])} or {choices[-1]}")


def validate(cfg: Config) -> None:
    """Reject impossible combinations before any work starts."""
    check_bounds(cfg)
    check_choices(cfg)
    if not 0.0 < cfg.masking.mask_prob < 1.0:
        raise UserError(f"masking.mask_prob={cfg.masking.mask_prob}: must be in (0, 1)")
    if cfg.masking.mask_token_prob + cfg.masking.random_token_prob > 1.0 + 1e-9:
        raise UserError("masking.mask_token_prob + masking.random_token_prob must be <= 1")
    if cfg.masking.dupe_factor < 1:
        raise UserError("masking.dupe_factor must be >= 1")
    if cfg.model.hidden % cfg.model.heads:
        raise UserError(f"model.hidden={cfg.model.hidden} is not divisible by model.heads={cfg.model.heads}")
    check_family(cfg.model)
    if cfg.model.vocab_multiple < 1:
        raise UserError(f"model.vocab_multiple={cfg.model.vocab_multiple}: must be >= 1 (1 = no padding)")
    if cfg.data.seq_len is not None and cfg.data.seq_len < 8:
        raise UserError(f"data.seq_len={cfg.data.seq_len}: must be at least 8")
    t = cfg.train
    if t.max_time:
        parse_duration(t.max_time, "train.max_time")
    parse_duration(t.dist_timeout, "train.dist_timeout")
    if t.micro_batch_size < 0 or t.micro_batch_size > t.batch_size:
        raise UserError(f"train.micro_batch_size={t.micro_batch_size}: must be between 0 (= batch_size / ranks) "
                        f"and train.batch_size={t.batch_size}")
    if not (t.max_steps > 0 or t.max_tokens > 0 or t.max_time):
        raise UserError("no budget: set train.max_steps, train.max_tokens or train.max_time")
    if not 0.0 <= t.warmup_fraction < 1.0:
        raise UserError(f"train.warmup_fraction={t.warmup_fraction}: must be in [0, 1)")
    if not 0.0 < t.decay_fraction <= 1.0:
        raise UserError(f"train.decay_fraction={t.decay_fraction}: must be in (0, 1] (the final fraction of the "
                        "budget over which train.schedule=wsd decays the lr to 0)")
    if t.schedule == "wsd" and t.decay_fraction > 1.0 - t.warmup_fraction and not t.warmup_steps:
        raise UserError(f"train.decay_fraction={t.decay_fraction} + train.warmup_fraction={t.warmup_fraction} "
                        "exceed 1: train.schedule=wsd would have no stable phase; lower one of them")
    if not t.lr > 0:
        raise UserError(f"train.lr={t.lr}: must be > 0")
    report_targets(t.report_to)


def uses_rope(m: ModelConfig) -> bool:
    """Rotary positions: model.position=rope, or the modern family's own (position unset)."""
    return m.position == "rope" or (m.position is None and m.family == "modern")


def check_family(m: ModelConfig) -> None:
    """The switches a family has: ModernBERT is pre-norm with a gated FFN and rotary positions;
    windows are the modern family's alone. The roberta family has learned absolute positions, or
    rotary ones (model.position=rope, every layer at model.rope_theta)."""
    if m.family == "modern" and m.position == "learned":
        raise UserError("model.position=learned: the modern family has rotary positions (no position table); "
                        "use model.family=roberta for a learned table")
    if m.rope_theta <= 0 and uses_rope(m):
        raise UserError(f"model.rope_theta={m.rope_theta}: must be > 0")
    if m.family == "modern":
        if m.norm != "pre" or not m.glu:
            bad = "model.norm=post" if m.norm != "pre" else "model.glu=false"
            raise UserError(f"{bad}: the modern family is pre-norm with a gated FFN; set model.norm=pre and "
                            "model.glu=true, or start from --preset modern-tiny")
        if m.local_window < 0 or m.local_window % 2:
            raise UserError(f"model.local_window={m.local_window}: must be an even number >= 0 "
                            "(a token sees local_window/2 tokens on each side; 0 = all layers global)")
        if m.global_every < 1:
            raise UserError(f"model.global_every={m.global_every}: must be >= 1 (1 = every layer global)")
        if not (m.rope_theta > 0 and m.local_rope_theta > 0):
            raise UserError("model.rope_theta and model.local_rope_theta must be > 0")
    elif m.local_window:
        raise UserError(f"model.local_window={m.local_window}: local attention is the modern family's "
                        "(set model.family=modern, or model.local_window=0)")


def max_seq_len(cfg: ModelConfig) -> int:
    """The longest input the position table holds (positions start at padding_idx + 1)."""
    return cfg.max_positions - cfg.pad_token_id - 1


def padded_vocab_size(tokenizer_size: int, multiple: int) -> int:
    """The model's vocabulary rows for a tokenizer: rounded up to model.vocab_multiple, so the
    vocabulary GEMMs get tensor-core-friendly shapes (50,265 -> 50,304). The extra rows are never
    an input or a target; the softmax learns to give them nothing."""
    return -(-tokenizer_size // multiple) * multiple


def positions_for(seq_len: int, pad_token_id: int = 1) -> int:
    """Position rows a seq_len input needs: RoBERTa's offset makes 512 tokens need 514."""
    return seq_len + pad_token_id + 1


# what a checkpoint fixes about the network; dropout, the sparse head and NSP stay the recipe's
ARCHITECTURE = ("family", "vocab_size", "layers", "hidden", "heads", "ffn", "max_positions", "layer_norm_eps",
                "pad_token_id", "norm", "bias", "glu", "position", "rope_theta", "local_rope_theta", "local_window",
                "global_every")


def with_position(m: ModelConfig | None) -> ModelConfig | None:
    """model.position stated: None (a config from before the key, or "the family's") becomes the
    family's own, rope for modern and learned for roberta."""
    if m is None or m.position is not None:
        return m
    return dataclasses.replace(m, position="rope" if uses_rope(m) else "learned")


def scaled_lr(lr: float, batch_size: int, base_batch_size: int, rule: str) -> float:
    """lr for `batch_size` when `lr` was tuned at `base_batch_size`: none | sqrt | linear."""
    ratio = batch_size / base_batch_size
    return {"none": lr, "sqrt": lr * math.sqrt(ratio), "linear": lr * ratio}[rule]


def resolve_run(cfg: Config, meta: dict, world: int = 1, resumed: ModelConfig | None = None,
                init_from: ModelConfig | None = None) -> Config:
    """The config a run trains with: every None ("derive it") filled in, every impossible
    combination refused. All the rules are here (tests/test_config.py::RESOLVE_CASES lists them):
      meta       -- the prepared data's meta.json: its vocabulary size and sequence length
      world      -- ranks (torchrun); micro_batch_size 0 means batch_size / world
      resumed    -- the model config of the checkpoint being resumed (--resume), if any
      init_from  -- the model config of the pretrain --checkpoint (continued pretraining), if any
    The result has no None left and lr already scaled (lr_scaling none), so its config.json
    re-runs the same run."""
    m, d, t = with_position(cfg.model), cfg.data, cfg.train
    resumed, init_from = with_position(resumed), with_position(init_from)
    if d.seq_len is None:
        if not meta.get("seq_len"):
            raise UserError("data.seq_len: the prepared data does not record its length; set data.seq_len")
        d = dataclasses.replace(d, seq_len=int(meta["seq_len"]))
    if init_from is not None:  # continued pretraining: the checkpoint fixes the architecture
        m = dataclasses.replace(m, **{k: getattr(init_from, k) for k in ARCHITECTURE})
        if d.seq_len > max_seq_len(m):
            raise UserError(f"--checkpoint: its position table holds sequences of up to {max_seq_len(m)} tokens "
                            f"but data.seq_len is {d.seq_len}; prepare with --seq-len {max_seq_len(m)} or less")
    if m.vocab_size is None:  # rows past the tokenizer's are never an input or a target
        rows = padded_vocab_size(meta["vocab_size"], m.vocab_multiple)
        if resumed is not None and dataclasses.replace(m, vocab_size=resumed.vocab_size,
                                                       vocab_multiple=resumed.vocab_multiple,
                                                       max_positions=resumed.max_positions,
                                                       nsp_head=resumed.nsp_head) == resumed:
            # a run started with another model.vocab_multiple (or before it existed) keeps its rows
            rows, m = resumed.vocab_size, dataclasses.replace(m, vocab_multiple=resumed.vocab_multiple)
        m = dataclasses.replace(m, vocab_size=rows)
    elif m.vocab_size < meta["vocab_size"]:
        raise UserError(f"model.vocab_size={m.vocab_size} is smaller than the data's vocabulary "
                        f"({meta['vocab_size']}); leave it unset to take the tokenizer's size")
    need = positions_for(d.seq_len, m.pad_token_id)
    if m.max_positions is None:
        m = dataclasses.replace(m, max_positions=need)
    elif m.max_positions < need:
        raise UserError(f"data.seq_len={d.seq_len} needs model.max_positions >= {need} "
                        f"(seq_len + padding_idx + 1); it is {m.max_positions}")
    nsp = d.format in NSP_FORMATS
    if m.nsp_head is None:
        m = dataclasses.replace(m, nsp_head=nsp)
    elif nsp and not m.nsp_head:
        raise UserError(f"data.format={d.format} trains next-sentence prediction; it needs model.nsp_head=true")
    if resumed is not None and m != resumed:
        key = next(f.name for f in dataclasses.fields(m) if getattr(m, f.name) != getattr(resumed, f.name))
        raise UserError(f"--resume: model.{key} is {getattr(resumed, key)} in the checkpoint, not {getattr(m, key)}: "
                        "its weights were trained with a different model config; drop the --preset/--set that "
                        "changes it (--resume alone continues the run as saved), or start a new --out")
    micro = t.micro_batch_size or max(1, t.batch_size // world)
    if t.batch_size % (micro * world):
        raise UserError(f"train.batch_size={t.batch_size} is not divisible by train.micro_batch_size={micro} "
                        f"x {world} rank(s); choose sizes that divide")
    lr = scaled_lr(t.lr, t.batch_size, t.base_batch_size, t.lr_scaling)
    t = dataclasses.replace(t, micro_batch_size=micro, lr=lr, lr_scaling="none")
    return dataclasses.replace(cfg, model=m, data=d, train=t)


# Continued pretraining (`pretrain --checkpoint`: Gururangan et al. 2020's domain-adaptive
# pretraining) starts from trained weights, so a preset's from-scratch lr and warmup are not its
# defaults. lr: Gururangan et al. (appendix) continued RoBERTa-base (trained at a 6e-4 peak) at 1e-4
# for task-adaptive pretraining (batch 256) and at 5e-4 for domain-adaptive pretraining, but with a
# batch of 2048 for 12.5K steps; at the small batches of a first run, their lower lr, a sixth of the
# from-scratch peak, is the safe default, since a from-scratch peak can undo much of what the
# checkpoint learned. warmup: AdamW's moments start at zero again (the optimizer state does not
# come with the weights) and need a short ramp; the weights do not. (key, value, why) each:
CONTINUED_PRETRAINING = (
    ("train.lr", 1e-4, "Gururangan et al. 2020's lr for continuing RoBERTa-base at batch 256 (5e-4 at batch "
                       "2048), a sixth of its from-scratch peak: trained weights need no large steps"),
    ("train.warmup_fraction", 0.01, "the weights are trained; only AdamW's fresh moment estimates need a ramp"),
)


def continued_pretraining(cfg: Config) -> tuple[Config, list[tuple[str, str]]]:
    """A preset's recipe fitted to continued pretraining (CONTINUED_PRETRAINING): -> (config,
    (key, "lr 0.0001 (why)") for each key it changed). Applied before --set, so a --set still wins;
    a preset whose lr is already lower keeps it; warmup_steps gives way to the fraction."""
    t, chosen = cfg.train, []
    for key, value, why in CONTINUED_PRETRAINING:
        name = key.split(".")[1]
        if name == "lr" and t.lr <= value:
            continue
        if name == "warmup_fraction":  # a preset's warmup_steps (base: 24K) would take precedence
            t = dataclasses.replace(t, warmup_fraction=value, warmup_steps=0)
            chosen.append((key, f"warmup {value:.0%} ({why})"))
        else:
            t = dataclasses.replace(t, lr=value)
            chosen.append((key, f"lr {value:g} ({why})"))
    return dataclasses.replace(cfg, train=t), chosen


def report_targets(report_to: str) -> tuple[str, ...]:
    """train.report_to -> the integrations it names: "tensorboard,wandb" -> ("tensorboard", "wandb");
    "none" or "" -> ()."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in report_to.split(",") if n.strip()))
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in REPORTERS]
    if unknown:
        raise UserError(f"train.report_to={report_to}: unknown '{unknown[0]}'; choose none or a comma-separated "
                        f"list of {', '.join(REPORTERS)}")
    return names


# the keys that hold a duration: from --set they need a unit (train.max_time=6 read as 6 seconds)
DURATIONS = ("train.max_time", "train.dist_timeout")


def parse_duration(text: str, key: str = "train.max_time", need_unit: bool = False) -> float:
    """'2h' -> 7200.0, '90m' -> 5400.0, '45s' -> 45.0. A bare number is seconds where a saved
    config.json holds one (runs written before units were required); from --set (need_unit) it
    is refused."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", text)
    if not m:
        raise UserError(f"{key}={text}: expected a duration like 90s, 30m or 2h")
    if need_unit and not m.group(2):
        raise UserError(f"--set {key}={text}: give the duration a unit, s, m, h or d (e.g. {key}={m.group(1)}m); "
                        "a bare number would be read as seconds")
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return float(m.group(1)) * scale


# --- resume: what a resumed run may change (docs/guarantees.md, "A resumed run keeps its config") ---

RESUME_BUDGETS = ("train.max_steps", "train.max_tokens", "train.max_time")  # may be raised, never lowered
# how the same computation is laid out on the hardware, and what is recorded of it: free on resume.
# Splitting the global batch (micro-batches, ranks, FSDP2), recomputing activations and the thread
# count give the same steps up to float rounding (tests/test_train.py, test_performance.py; on a CPU
# LayerNorm's weight gradients are summed per thread, so only an unchanged layout resumes bit for bit);
# evaluation runs without dropout and saving only reads the RNG, so the intervals change what is
# written, not what is trained
RESUME_RUNTIME = ("train.micro_batch_size", "train.fsdp", "train.activation_checkpointing", "train.threads",
                  "train.log_interval", "train.eval_interval", "train.checkpoint_interval",
                  "train.keep_checkpoints", "train.report_to", "train.peak_flops", "train.dist_timeout",
                  "train.max_bad_steps")


def _flat(cfg: Config) -> dict[str, object]:
    return {f"{section}.{k}": v for section, values in cfg.to_dict().items() for k, v in values.items()}


def _budget_size(key: str, value) -> float:
    """A budget as a number to compare; 0 = unset."""
    return parse_duration(value, key) if key == "train.max_time" and value else float(value or 0)


def _shown(key: str, value) -> str:
    return "unset" if key in RESUME_BUDGETS and not value else str(value)


def resume_changes(saved: Config, asked: Config, where: str) -> list[tuple[str, object, object]]:
    """The budgets `asked` raises over the run saved in `where` (a config.json): [(key, saved,
    asked)]. Runtime settings (RESUME_RUNTIME) may differ; any other difference, a lowered budget,
    or a budget added or removed is refused in one line naming the key and both values. An unset
    model.position is the family's (a config.json from before the key, or not yet resolved)."""
    old, new = (_flat(dataclasses.replace(c, model=with_position(c.model))) for c in (saved, asked))
    raised = []
    for key, was in old.items():
        now = new[key]
        if now == was or key in RESUME_RUNTIME:
            continue
        if key not in RESUME_BUDGETS:
            raise UserError(f"--resume: {key} is {was} in {where}, not {now}; a resumed run keeps its config (only "
                            f"{', '.join(RESUME_BUDGETS[:-1])} and {RESUME_BUDGETS[-1]} may be raised); start a "
                            "new --out to change it")
        before, after = _budget_size(key, was), _budget_size(key, now)
        if before == after:  # the same duration written another way (90m, 1.5h)
            continue
        if not (0 < before < after):
            why = ("a budget may be raised on resume, not lowered" if after < before and after else
                   "a resume may raise a budget the run has, not add or remove one (that changes which budget "
                   "the lr schedule follows)")
            raise UserError(f"--resume: {key} is {_shown(key, was)} in {where}, not {_shown(key, now)}; {why}; "
                            "start a new --out to change it")
        raised.append((key, was, now))
    return raised
