"""Typed config: overrides, validation, presets."""

from __future__ import annotations

import pytest

from roberta.config import Config, ModelConfig, all_keys, apply_overrides, parse_duration, resolve_run, validate
from roberta.errors import UserError
from roberta.presets import PRESETS, get_preset, roberta_tiny, tiny

CONTRACT_KEYS = ["train.max_steps", "train.max_tokens", "train.batch_size", "train.micro_batch_size", "train.lr",
                 "train.warmup_steps", "train.seed", "train.eval_interval", "train.checkpoint_interval",
                 "data.seq_len", "data.format", "masking.kind", "masking.mask_prob", "model.layers",
                 "model.hidden", "model.heads", "model.ffn", "model.vocab_size"]


def test_contract_keys_exist():
    assert set(CONTRACT_KEYS) <= set(all_keys(Config()))


def test_overrides_are_typed():
    cfg = apply_overrides(tiny(), ["train.max_steps=7", "train.lr=1e-3", "masking.whole_word=true",
                                   "data.format=doc-sentences", "train.max_tokens=2e6"])
    assert cfg.train.max_steps == 7 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.lr == 1e-3 and cfg.masking.whole_word is True
    assert cfg.data.format == "doc-sentences" and cfg.train.max_tokens == 2_000_000


@pytest.mark.parametrize("item,needle", [
    ("train.lrr=1", "did you mean train.lr"),
    ("masking.kind=sometimes", "dynamic or static"),
    ("data.format=pairs", "full-sentences"),
    ("train.max_steps=ten", "expected int"),
    ("masking.whole_word=maybe", "true or false"),
    ("model.heads=5", "divisible"),
    ("train.max_time=soon", "duration"),
    ("noequals", "KEY=VALUE"),
    ("model.family=bert", "roberta or modern"),
    ("model.local_window=64", "local attention is the modern family's"),
    ("model.family=modern", "model.norm=post: the modern family is pre-norm"),
])
def test_bad_overrides(item, needle):
    with pytest.raises(UserError, match=needle):
        apply_overrides(roberta_tiny(), [item])


def test_round_trip_through_dict():
    cfg = apply_overrides(tiny(), ["model.norm=pre", "train.seed=3"])
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_durations():
    assert parse_duration("2h") == 7200 and parse_duration("90m") == 5400 and parse_duration("45") == 45


def test_presets():
    assert set(PRESETS) == {"tiny", "roberta-tiny", "small", "base", "large", "modern-tiny", "modern-small",
                            "modern-base", "modern-large"}
    # tiny is the CPU recipe (docs/ablations/cpu-recipe.md): ModernBERT-family, no dropout, warmup-stable-decay;
    # roberta-tiny the same size in the 2019 architecture
    t, r = get_preset("tiny"), get_preset("roberta-tiny")
    validate(t)
    assert (t.model.family, t.model.dropout, t.train.schedule) == ("modern", 0.0, "wsd")
    assert (r.model.family, r.model.norm, r.model.hidden, r.masking.mask_prob) == ("roberta", "post", t.model.hidden, 0.15)
    base = get_preset("base")
    assert (base.model.layers, base.model.hidden, base.model.heads, base.model.ffn) == (12, 768, 12, 3072)
    assert resolve_run(base, {"vocab_size": 50265, "seq_len": 512}).model.max_positions == 514
    large = get_preset("large")
    assert (large.model.layers, large.model.hidden, large.model.heads, large.model.ffn) == (24, 1024, 16, 4096)
    with pytest.raises(UserError, match="unknown preset"):
        get_preset("huge")


def test_modern_presets_are_modernberts():
    """modern-base / modern-large are ModernBERT-base / -large (their config.json), 30% masking."""
    m = get_preset("modern-base").model
    assert (m.family, m.layers, m.hidden, m.heads, m.ffn, m.local_window, m.global_every) == \
        ("modern", 22, 768, 12, 1152, 128, 3)
    assert (m.norm, m.bias, m.glu, m.rope_theta, m.local_rope_theta) == ("pre", False, True, 160000.0, 10000.0)
    m = get_preset("modern-large").model
    assert (m.layers, m.hidden, m.heads, m.ffn) == (28, 1024, 16, 2624)
    for name in ("modern-tiny", "modern-small", "modern-base", "modern-large"):
        cfg = get_preset(name)
        validate(cfg)
        assert cfg.model.family == "modern" and cfg.masking.mask_prob == 0.3 and cfg.model.dropout == 0.0
        assert cfg.train.schedule == "wsd"  # ModernBERT's warmup-stable-decay


@pytest.mark.parametrize("sets,needle", [
    (["model.local_window=63"], "even number"),
    (["model.global_every=0"], "global_every=0: must be >= 1"),
    (["model.glu=false"], "model.glu=false: the modern family"),
    (["model.rope_theta=0"], "must be > 0"),
])
def test_modern_family_refuses_impossible_switches(sets, needle):
    with pytest.raises(UserError, match=needle):
        apply_overrides(get_preset("modern-tiny"), sets)


# resolve_run's rules, one row each: (--set items on the roberta-tiny preset, data meta, world size,
# resumed checkpoint's model fields, --init-from checkpoint's model fields) -> expected resolved values
# (dotted keys), or the UserError it raises. META: a 1,000-token tokenizer, data prepared at 64.
META = {"vocab_size": 1000, "seq_len": 64}
RESOLVED = ModelConfig(**{**roberta_tiny().model.__dict__, "vocab_size": 1024, "max_positions": 66, "nsp_head": False})
RESOLVE_CASES = [
    # derived: data.seq_len from the data, vocabulary padded to vocab_multiple, positions, NSP head from the format
    ([], META, 1, None, None, {"data.seq_len": 64, "model.vocab_size": 1024, "model.max_positions": 66,
                               "model.nsp_head": False, "train.micro_batch_size": 16}),
    (["data.format=segment-pair+nsp"], META, 1, None, None, {"model.nsp_head": True}),
    (["model.vocab_multiple=1"], META, 1, None, None, {"model.vocab_size": 1000}),
    # given: taken as it is, or refused when it cannot work
    (["data.seq_len=32"], META, 1, None, None, {"data.seq_len": 32, "model.max_positions": 34}),
    (["model.vocab_size=1100", "model.max_positions=200"], META, 1, None, None,
     {"model.vocab_size": 1100, "model.max_positions": 200}),
    (["model.vocab_size=100"], META, 1, None, None, "smaller than the data's vocabulary"),
    (["model.max_positions=20"], META, 1, None, None, "needs model.max_positions >= 66"),
    (["data.format=segment-pair+nsp", "model.nsp_head=false"], META, 1, None, None, "needs model.nsp_head=true"),
    (["model.nsp_head=true"], META, 1, None, None, {"model.nsp_head": True}),  # an unused head is allowed
    (["model.family=modern", "model.norm=pre", "model.glu=true", "data.format=segment-pair+nsp"], META, 1, None,
     None, {"model.nsp_head": True}),  # ModernBERT's sentence head, for the paper's Table 2 at the CPU recipe
    ([], {"vocab_size": 1000}, 1, None, None, "does not record its length"),
    # hardware: micro-batches and lr scaling are resolved, so config.json re-runs as it ran
    ([], META, 4, None, None, {"train.micro_batch_size": 4}),
    (["train.micro_batch_size=3"], META, 2, None, None, "not divisible"),
    (["train.lr_scaling=linear", "train.batch_size=512", "train.lr=1e-4"], META, 1, None, None,
     {"train.lr": 2e-4, "train.lr_scaling": "none"}),
    # --resume: the checkpoint's vocabulary rows are kept when only the multiple differs; else refused
    ([], META, 1, {"vocab_size": 1000, "vocab_multiple": 1}, None, {"model.vocab_size": 1000,
                                                                    "model.vocab_multiple": 1}),
    ([], META, 1, {"layers": 8}, None, "different model config"),
    (["model.vocab_size=1024"], META, 1, {"vocab_size": 1000, "vocab_multiple": 1}, None, "different model config"),
    # --init-from: the checkpoint fixes the architecture, the preset keeps the recipe
    ([], META, 1, None, {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64, "vocab_size": 1024, "max_positions": 130},
     {"model.layers": 1, "model.hidden": 32, "model.max_positions": 130, "model.dropout": 0.1}),
    (["data.seq_len=200"], META, 1, None, {"max_positions": 130, "vocab_size": 1024}, "holds sequences of up to 128"),
]


@pytest.mark.parametrize("sets,meta,world,resumed,init_from,expected", RESOLVE_CASES)
def test_resolve_run(sets, meta, world, resumed, init_from, expected):
    import dataclasses

    cfg = apply_overrides(roberta_tiny(), sets)
    resumed = dataclasses.replace(RESOLVED, **resumed) if resumed is not None else None
    init_from = dataclasses.replace(RESOLVED, **init_from) if init_from is not None else None
    if isinstance(expected, str):
        with pytest.raises(UserError, match=expected):
            resolve_run(cfg, meta, world, resumed, init_from)
        return
    run = resolve_run(cfg, meta, world, resumed, init_from)
    for key, value in expected.items():
        section, name = key.split(".")
        assert getattr(getattr(run, section), name) == pytest.approx(value), key
    assert None not in [getattr(getattr(run, s), f) for s in ("model", "data") for f in getattr(run, s).__dict__]
    assert resolve_run(Config.from_dict(run.to_dict()), meta, world) == run  # config.json re-runs the same run


# continued pretraining (`pretrain --checkpoint` on a preset): (preset, --set, lr, warmup_steps,
# warmup_fraction, the keys the note names); a --set wins and is left out of the note
CONTINUED_CASES = [
    ("tiny", [], 1e-4, 0, 0.01, ["train.lr", "train.warmup_fraction"]),
    ("base", [], 1e-4, 0, 0.01, ["train.lr", "train.warmup_fraction"]),  # base's 24K warmup steps give way
    ("modern-large", [], 1e-4, 0, 0.01, ["train.lr", "train.warmup_fraction"]),
    ("tiny", ["train.lr=3e-4"], 3e-4, 0, 0.01, ["train.warmup_fraction"]),
    ("base", ["train.warmup_steps=500"], 1e-4, 500, 0.01, ["train.lr"]),
    ("tiny", ["train.lr=3e-4", "train.warmup_fraction=0.06"], 3e-4, 0, 0.06, []),
    ("tiny", ["train.lr=5e-5"], 5e-5, 0, 0.01, ["train.warmup_fraction"]),
]


@pytest.mark.parametrize("preset,sets,lr,warmup_steps,warmup_fraction,named", CONTINUED_CASES)
def test_continued_pretraining_fits_the_presets_lr_and_warmup(preset, sets, lr, warmup_steps, warmup_fraction,
                                                              named):
    import argparse

    from roberta.cli.pretrain import run_config

    a = argparse.Namespace(out="unused", resume=False, preset=preset, config=None, set=sets, checkpoint="ck")
    notes = []
    t = run_config(a, notes).train
    assert (t.lr, t.warmup_steps, t.warmup_fraction) == (pytest.approx(lr), warmup_steps, warmup_fraction)
    if not named:
        assert notes == []
        return
    assert len(notes) == 1 and notes[0].startswith("continued pretraining from ck: ")
    assert notes[0].endswith(f"set {' / '.join(named)} to override")
    assert ("lr 0.0001 (" in notes[0]) == ("train.lr" in named) and ("warmup 1% (" in notes[0]) == (
        "train.warmup_fraction" in named)
    assert run_config(argparse.Namespace(**{**vars(a), "checkpoint": None})).train == apply_overrides(
        get_preset(preset), sets).train  # from scratch: the preset as it is


def test_a_lower_preset_lr_and_a_saved_config_are_kept(tmp_path):
    import argparse
    import dataclasses

    from roberta.cli.pretrain import run_config
    from roberta.config import continued_pretraining

    low = dataclasses.replace(tiny(), train=dataclasses.replace(tiny().train, lr=2e-5))
    cfg, chosen = continued_pretraining(low)
    assert cfg.train.lr == 2e-5 and [key for key, _ in chosen] == ["train.warmup_fraction"]
    (tmp_path / "config.json").write_text(tiny().to_json())  # a saved --config is taken as it is
    a = argparse.Namespace(out="unused", resume=False, preset=None, config=str(tmp_path / "config.json"), set=[],
                           checkpoint="ck")
    notes = []
    assert run_config(a, notes).train == tiny().train and notes == []


def test_old_config_json_still_loads():
    """A config.json written before "derive it" was None (and with keys since removed) loads as it ran."""
    old = {"model": {"vocab_size": 1024, "max_positions": 66, "nsp_head": False, "retired_key": 1},
           "data": {"seq_len": 64, "format": "full-sentences"}, "train": {"lr_scaling": "sqrt"}}
    cfg = Config.from_dict(old)
    assert (cfg.model.vocab_size, cfg.model.max_positions, cfg.model.nsp_head, cfg.data.seq_len) == (1024, 66, False, 64)
    assert isinstance(cfg.model, ModelConfig)


def test_derive_is_a_value_on_the_command_line():
    cfg = apply_overrides(apply_overrides(tiny(), ["data.seq_len=32"]), ["data.seq_len=none"])
    assert cfg.data.seq_len is None
