"""Typed configuration: one dataclass per concern, `section.field=value` overrides.

Everything a run depends on lives in `Config`; presets (presets.py) are Python functions that
return one, and the command line only ever edits it through `apply_overrides`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import typing
from dataclasses import dataclass, field

from roberta.errors import UserError

Precision = typing.Literal["auto", "fp32", "bf16"]  # roberta.precision says what each means
FORMATS = ("full-sentences", "doc-sentences", "segment-pair+nsp", "sentence-pair+nsp")
REPORTERS = ("tensorboard", "wandb")  # train.report_to: where metrics.jsonl's records also go


@dataclass
class ModelConfig:
    vocab_size: int = 8000  # taken from the tokenizer at pretraining time, rounded up to vocab_multiple
    vocab_multiple: int = 64  # pad the vocabulary to a multiple of this (tensor-core GEMM shapes); 1 = exact
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    ffn: int = 1024
    max_positions: int = 130  # seq_len + padding_idx + 1 (RoBERTa's position offset)
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    norm: str = "post"  # "post" (the paper) | "pre"
    bias: bool = True
    glu: bool = False  # gated FFN (GEGLU) instead of dense-GELU-dense
    nsp_head: bool = False  # only for the +nsp input formats
    sparse_head: bool = True  # project onto the vocabulary only at masked positions


@dataclass
class DataConfig:
    seq_len: int = 128
    format: str = "full-sentences"


@dataclass
class MaskingConfig:
    kind: str = "dynamic"  # "dynamic" | "static"
    mask_prob: float = 0.15
    mask_token_prob: float = 0.8  # of the selected: replaced by <mask>
    random_token_prob: float = 0.1  # of the selected: replaced by a random real token
    exact_count: bool = False  # exactly round(p * n) per sequence instead of Bernoulli(p)
    whole_word: bool = False
    dupe_factor: int = 10  # static masking: distinct masks per sequence


@dataclass
class OptimConfig:
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.01
    decay_norm_and_bias: bool = True  # fairseq decays every parameter; HF excludes bias/LayerNorm
    grad_clip: float = 0.0  # 0 = off (the paper's default)


@dataclass
class TrainConfig:
    batch_size: int = 16  # global, in sequences
    micro_batch_size: int = 0  # 0 = batch_size / world size (no accumulation)
    lr: float = 5e-4
    lr_scaling: str = "none"  # "none" | "sqrt" | "linear", relative to base_batch_size
    base_batch_size: int = 256
    warmup_steps: int = 0
    warmup_fraction: float = 0.06  # used when warmup_steps == 0
    max_steps: int = 1000
    max_tokens: int = 0  # 0 = unset; otherwise overrides max_steps
    max_time: str = ""  # e.g. "2h", "90m", "30s"; empty = unset
    seed: int = 0
    eval_interval: int = 200
    eval_sequences: int = 512
    log_interval: int = 10
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    compile: bool = False
    peak_flops: float = 0.0  # 0 = measure (CPU) or look up (GPU)
    max_bad_steps: int = 5  # consecutive non-finite losses before the run stops
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    fsdp: bool = False  # shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    dist_timeout: str = "10m"  # a collective waiting longer (a rank died) stops every rank with an error
    report_to: str = "none"  # "none" | comma-separated "tensorboard", "wandb" (metrics.jsonl is always written)
    precision: Precision = "auto"  # bf16 autocast on a GPU and on a CPU with native bf16, else fp32
    activation_checkpointing: bool = False  # recompute each block's activations in backward (less memory)
    float8: bool = False  # float8 matmuls via torchao on Hopper-class GPUs (bf16 elsewhere in the model)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

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
    if typing.get_origin(typ) is typing.Literal:
        choices = typing.get_args(typ)
        if raw.strip() not in choices:
            raise UserError(f"--set {key}={raw}: choose one of {', '.join(choices)}")
        return raw.strip()
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
            if value < bound:
                unset = " (0 = unset)" if bound == 0 and key in ("train.max_steps", "train.max_tokens") else ""
                raise UserError(f"{key}={value}: must be >= {bound}{unset}")
    for key in ("model.dropout", "model.attention_dropout", "optim.beta1", "optim.beta2"):
        section, name = key.split(".")
        if not 0.0 <= getattr(getattr(cfg, section), name) < 1.0:
            raise UserError(f"{key}={getattr(getattr(cfg, section), name)}: must be in [0, 1)")


def validate(cfg: Config) -> None:
    """Reject impossible combinations before any work starts."""
    check_bounds(cfg)
    if cfg.data.format not in FORMATS:
        raise UserError(f"data.format={cfg.data.format}: choose one of {', '.join(FORMATS)}")
    if cfg.masking.kind not in ("dynamic", "static"):
        raise UserError(f"masking.kind={cfg.masking.kind}: choose dynamic or static")
    if not 0.0 < cfg.masking.mask_prob < 1.0:
        raise UserError(f"masking.mask_prob={cfg.masking.mask_prob}: must be in (0, 1)")
    if cfg.masking.mask_token_prob + cfg.masking.random_token_prob > 1.0 + 1e-9:
        raise UserError("masking.mask_token_prob + masking.random_token_prob must be <= 1")
    if cfg.masking.dupe_factor < 1:
        raise UserError("masking.dupe_factor must be >= 1")
    if cfg.model.norm not in ("post", "pre"):
        raise UserError(f"model.norm={cfg.model.norm}: choose post or pre")
    if cfg.model.hidden % cfg.model.heads:
        raise UserError(f"model.hidden={cfg.model.hidden} is not divisible by model.heads={cfg.model.heads}")
    if cfg.model.vocab_multiple < 1:
        raise UserError(f"model.vocab_multiple={cfg.model.vocab_multiple}: must be >= 1 (1 = no padding)")
    if cfg.data.seq_len < 8:
        raise UserError(f"data.seq_len={cfg.data.seq_len}: must be at least 8")
    if cfg.train.lr_scaling not in ("none", "sqrt", "linear"):
        raise UserError(f"train.lr_scaling={cfg.train.lr_scaling}: choose none, sqrt or linear")
    t = cfg.train
    if t.max_time:
        parse_duration(t.max_time)
    parse_duration(t.dist_timeout)
    if t.micro_batch_size < 0 or t.micro_batch_size > t.batch_size:
        raise UserError(f"train.micro_batch_size={t.micro_batch_size}: must be between 0 (= batch_size / ranks) "
                        f"and train.batch_size={t.batch_size}")
    if not (t.max_steps > 0 or t.max_tokens > 0 or t.max_time):
        raise UserError("no budget: set train.max_steps, train.max_tokens or train.max_time")
    if not 0.0 <= t.warmup_fraction < 1.0:
        raise UserError(f"train.warmup_fraction={t.warmup_fraction}: must be in [0, 1)")
    if not t.lr > 0:
        raise UserError(f"train.lr={t.lr}: must be > 0")
    if t.precision not in typing.get_args(Precision):
        raise UserError(f"train.precision={t.precision}: choose one of {', '.join(typing.get_args(Precision))}")
    if t.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"train.device={t.device}: choose auto, cpu or cuda")
    report_targets(t.report_to)


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


def parse_duration(text: str) -> float:
    """'2h' -> 7200.0, '90m' -> 5400.0, '45s' / '45' -> 45.0."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhd]?)\s*", text)
    if not m:
        raise UserError(f"train.max_time={text}: expected a duration like 90s, 30m or 2h")
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return float(m.group(1)) * scale
