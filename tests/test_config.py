"""Typed config: overrides, validation, presets."""

from __future__ import annotations

import pytest

from roberta.config import Config, all_keys, apply_overrides, parse_duration
from roberta.errors import UserError
from roberta.presets import PRESETS, get_preset, tiny

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
])
def test_bad_overrides(item, needle):
    with pytest.raises(UserError, match=needle):
        apply_overrides(tiny(), [item])


def test_round_trip_through_dict():
    cfg = apply_overrides(tiny(), ["model.norm=pre", "train.seed=3"])
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_durations():
    assert parse_duration("2h") == 7200 and parse_duration("90m") == 5400 and parse_duration("45") == 45


def test_presets():
    assert set(PRESETS) == {"tiny", "small", "base", "large"}
    base = get_preset("base")
    assert (base.model.layers, base.model.hidden, base.model.heads, base.model.ffn) == (12, 768, 12, 3072)
    assert base.model.max_positions == 514 and base.data.seq_len == 512
    large = get_preset("large")
    assert (large.model.layers, large.model.hidden, large.model.heads, large.model.ffn) == (24, 1024, 16, 4096)
    with pytest.raises(UserError, match="unknown preset"):
        get_preset("huge")
