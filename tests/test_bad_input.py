"""Every subcommand, fed what a careless user or an attacker would: flags at 0, negative, huge and of
the wrong type; input paths missing, a directory, a file of the wrong kind, another command's output.

Each case must end the same way: exit code 2, exactly one line starting with `error:` on stderr
(naming the bad flag, file or key), no traceback, and nothing written or changed on disk. Most
cases run `roberta.cli.main` in-process (seconds for the whole table); SUBPROCESS ones run as a
user would, in a fresh interpreter.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from roberta.cli import build_parser, main


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer_dir, data_dir, corpus_docs, corpus_file) -> dict[str, Path]:
    """The files the cases point at: real outputs of each command, and wrong things."""
    from roberta.training.checkpoint import save_checkpoint
    from roberta.data.prepare import prepare
    from roberta.hf import export_hf
    from roberta.model import build_model
    from roberta.presets import tiny
    from roberta.tokenizer import save_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("world")
    cfg = tiny()
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, layers=1, hidden=32, heads=2, ffn=64,
                                                             vocab_size=1024, max_positions=66,
                                                             nsp_head=False),  # resolved, as a run saves it
                              data=dataclasses.replace(cfg.data, seq_len=64))
    run = root / "run"
    save_checkpoint(run, 1, build_model(cfg.model), cfg, tokenizer_dir)
    export_hf(run, root / "hf")
    other_tok = root / "other_tok"
    save_tokenizer(train_tokenizer(iter(corpus_docs[:300]), vocab_size=600), other_tok)
    (root / "corpus.txt").write_text("\n\n".join(corpus_docs[:40]))
    prepare([str(root / "corpus.txt")], str(other_tok), str(root / "other_data"), seq_len=64,
            valid_fraction=0.1, workers=1, progress=False)
    swapped = root / "swapped" / "checkpoint-000001"  # a checkpoint whose tokenizer was written over
    shutil.copytree(run / "checkpoint-000001", swapped)
    save_tokenizer(train_tokenizer(iter(corpus_docs), vocab_size=1500), swapped)
    (root / "binary.txt").write_bytes(b"\x7fELF\x02\x01" + bytes(range(256)) * 40)
    (root / "packed.txt").write_bytes(gzip.compress(b'{"text": "hello"}\n' * 100))
    (root / "empty_dir").mkdir()
    (root / "a_file.txt").write_text("just some text\n")
    (root / "bad.json").write_text("[1, 2")
    (root / "arms.json").write_text(json.dumps({"a": {"train.lr": 0.001}}))
    (root / "train.tsv").write_text("text\tlabel\ngood\t1\nbad\t0\n")
    (root / "headerless.csv").write_text("a first review that reads as data and runs on,pos\nanother one,neg\n")
    from roberta.downstream.finetune import FinetuneConfig, finetune
    from roberta.downstream.tasks import file_task
    finetune(file_task(root / "train.tsv", root / "train.tsv"), run, root / "ft",
             FinetuneConfig(lrs=(1e-3,), epochs=1, device="cpu", progress=False), log=lambda _: None)
    return {"ck": run, "hf": root / "hf", "tok": tokenizer_dir, "data": data_dir, "other_data": root / "other_data",
            "swapped": swapped, "bin": root / "binary.txt", "gz": root / "packed.txt", "empty": root / "empty_dir",
            "file": root / "a_file.txt", "bad_json": root / "bad.json", "arms": root / "arms.json",
            "tsv": root / "train.tsv", "headerless": root / "headerless.csv", "ft": root / "ft",
            "corpus": root / "corpus.txt", "jsonl": corpus_file, "root": root}


# (command line with {placeholders}, a piece the error line must contain). {new} is a path that must
# stay absent; {nonempty} a directory that already holds something. SUBPROCESS marks a real process.
SUBPROCESS = "subprocess"
CASES: list[tuple[str, str] | tuple[str, str, str]] = [
    # no command / unknown command
    ("", "required: COMMAND"),
    ("no-such-command", "invalid choice", SUBPROCESS),
    # train-tokenizer
    ("train-tokenizer {missing} --out {new}", "no such file"),
    ("train-tokenizer {empty} --out {new}", "has no"),
    ("train-tokenizer {bin} --out {new}", "binary.txt", SUBPROCESS),
    ("train-tokenizer {gz} --out {new}", "gzip"),
    ("train-tokenizer {data} --out {new}", "prepared data"),
    ("train-tokenizer {ck} --out {new}", "not a corpus"),
    ("train-tokenizer {corpus} --out {new} --vocab-size 0", "--vocab-size 0"),
    ("train-tokenizer {corpus} --out {new} --vocab-size -5", "--vocab-size -5"),
    ("train-tokenizer {corpus} --out {new} --vocab-size lots", "--vocab-size"),
    ("train-tokenizer {corpus} --out {new} --min-frequency 0", "--min-frequency 0"),
    ("train-tokenizer {corpus} --out {ck}/checkpoint-000001", "not empty"),
    ("train-tokenizer {corpus} --out {file}", "is a file"),
    ("train-tokenizer {corpus} --out {new} --threads -1", "--threads -1"),
    # prepare
    ("prepare {missing} --tokenizer {tok} --out {new}", "no such file"),
    ("prepare {bin} --tokenizer {tok} --out {new}", "binary.txt"),
    ("prepare {gz} --tokenizer {tok} --out {new}", "gzip-compressed", SUBPROCESS),
    ("prepare {corpus} --tokenizer {missing} --out {new}", "not a tokenizer directory"),
    ("prepare {corpus} --tokenizer {data} --out {new}", "not a tokenizer directory"),
    ("prepare {corpus} --tokenizer {file} --out {new}", "not a tokenizer directory"),
    ("prepare {corpus} --tokenizer {tok} --out {new} --seq-len 0", "--seq-len 0"),
    ("prepare {corpus} --tokenizer {tok} --out {new} --seq-len -1", "--seq-len -1"),
    ("prepare {corpus} --tokenizer {tok} --out {new} --seq-len 1e3", "--seq-len"),
    ("prepare {corpus} --tokenizer {tok} --out {new} --valid-fraction 1", "--valid-fraction"),
    ("prepare {corpus} --tokenizer {tok} --out {new} --valid-fraction -0.1", "--valid-fraction"),
    ("prepare {corpus} --tokenizer {tok} --out {new} --valid-fraction nan", "--valid-fraction"),
    ("prepare {corpus} --tokenizer {tok} --out {new} --threads -1", "--threads -1"),
    ("prepare {corpus} --tokenizer {tok} --out {new} --workers -1", "--threads -1"),
    ("prepare {jsonl} --tokenizer {tok} --out {new} --text-column nope", "no documents"),
    ("prepare {corpus} --tokenizer {tok} --out {data}", "not empty"),
    ("prepare {corpus} --tokenizer {tok} --out {file}", "is a file"),
    # pretrain
    ("pretrain --data {missing} --out {new}", "not a prepared data directory"),
    ("pretrain --data {tok} --out {new}", "not a prepared data directory"),
    ("pretrain --data {ck} --out {new}", "not a prepared data directory"),
    ("pretrain --data {data} --out {new} --preset huge", "huge"),
    ("pretrain --data {data} --out {new} --set train.max_steps=abc", "train.max_steps"),
    ("pretrain --data {data} --out {new} --set train.max_step=5", "train.max_step"),
    ("pretrain --data {data} --out {new} --set nonsense", "nonsense"),
    ("pretrain --data {data} --out {new} --checkpoint {missing}", "no such checkpoint"),
    ("pretrain --data {data} --out {new} --checkpoint {data}", "prepared data, not a checkpoint"),
    ("pretrain --data {data} --out {new} --checkpoint {hf}", "import-hf"),
    ("pretrain --data {other_data} --out {new} --checkpoint {ck}", "vocabulary differs"),
    ("pretrain --data {data} --out {ck}", "already holds checkpoints"),
    ("pretrain --data {data} --out {new} --config {missing}", "--config"),
    ("pretrain --data {data} --out {new} --config {bad_json}", "--config"),
    ("pretrain --data {data} --out {new} --config {data}/meta.json", "not the config's sections"),
    ("pretrain --data {data} --out {new} --config {ck} --preset base", "not both"),
    ("pretrain --data {data} --out {new} --config {ck} --set train.max_step=5", "train.max_step"),
    ("pretrain --data {data} --out {new} --threads -1", "train.threads=-1"),
    ("pretrain --data {data} --out {new} --device tpu", "--device"),
    ("pretrain --data {data} --out {new} --set train.max_time=6", "train.max_time=6: give the duration a unit"),
    ("pretrain --data {data} --out {new} --set train.dist_timeout=30", "give the duration a unit"),
    # pretrain --resume: the run continues as saved; only a budget may be raised (a runtime setting changed)
    ("pretrain --data {data} --out {ck} --resume --set train.lr=0.0123", "config.json, not 0.0123"),
    ("pretrain --data {data} --out {ck} --resume --set masking.kind=static", "masking.kind is dynamic in"),
    ("pretrain --data {data} --out {ck} --resume --set train.max_steps=10", "not lowered"),
    ("pretrain --data {data} --out {ck} --resume --set train.max_tokens=5000", "train.max_tokens is unset in"),
    ("pretrain --data {data} --out {ck} --resume --precision fp32", "train.precision is auto in"),
    ("pretrain --data {data} --out {ck} --resume --preset small", "model.family is modern in the checkpoint, not roberta"),
    ("pretrain --data {data} --out {ck} --resume --config {data}/meta.json", "not the config's sections"),
    # evaluate
    ("evaluate --checkpoint {ck}", "--data"),
    ("evaluate --checkpoint {missing} --data {data}", "no such checkpoint"),
    ("evaluate --checkpoint {data} --data {data}", "prepared data, not a checkpoint"),
    ("evaluate --checkpoint {hf} --data {data}", "import-hf"),
    ("evaluate --checkpoint {tok} --data {data}", "not a checkpoint"),
    ("evaluate --checkpoint {file} --data {data}", "not a checkpoint"),
    ("evaluate --checkpoint {ck} --data {ck}", "not a prepared data directory"),
    ("evaluate --checkpoint {ck} --data {other_data}", "different tokenizer"),
    ("evaluate --checkpoint {swapped} --data {data}", "do not belong together"),
    ("evaluate --checkpoint {ck} --data {data} --max-sequences 0", "--max-sequences"),
    ("evaluate --checkpoint {ck} --data {data} --seq-len -1", "--seq-len"),
    ("evaluate --checkpoint {ck} --data {data} --split test", "invalid choice"),
    ("evaluate --checkpoint {ck} --data {data} --threads -1", "--threads -1"),
    ("evaluate --checkpoint {ck} --data {data} --precision fp8", "invalid choice"),
    ("pretrain --data {data} --out {new} --precision fp16", "invalid choice"),
    # finetune
    ("finetune --checkpoint {ck} --out {new} --train {tsv} --dev {tsv} --max-train -3", "--max-train -3", SUBPROCESS),
    ("finetune --checkpoint {ck} --out {new} --train {tsv} --dev {tsv} --lr -1", "--lr -1"),
    ("finetune --checkpoint {ck} --out {new} --train {tsv} --dev {tsv} --lr 0", "--lr 0"),
    ("finetune --checkpoint {ck} --out {new} --train {tsv} --dev {tsv} --lr-grid a,b", "--lr-grid"),
    ("finetune --checkpoint {ck} --out {new} --train {tsv} --dev {tsv} --batch-size 0", "--batch-size"),
    ("finetune --checkpoint {ck} --out {new} --train {tsv} --dev {tsv} --epochs -1", "--epochs"),
    ("finetune --checkpoint {ck} --out {new} --train {tsv} --dev {tsv} --warmup 2", "--warmup 2"),
    ("finetune --checkpoint {ck} --out {new} --train {tsv} --dev {tsv} --dropout 1.5", "--dropout 1.5"),
    ("finetune --checkpoint {ck} --out {new} --train {tsv} --dev {tsv} --seq-len 100000", "--seq-len 100000"),
    ("finetune --checkpoint {ck} --out {new} --train {tsv} --dev {tsv} --seq-len 1", "--seq-len 1"),
    ("finetune --checkpoint {ck} --out {new} --train {tsv} --dev {tsv} --threads -2", "--threads -2"),
    ("finetune --checkpoint {ck} --out {new} --train {missing} --dev {tsv}", "missing"),
    ("finetune --checkpoint {ck} --out {new} --train {headerless} --dev {tsv}", "headerless.csv:1: the first row looks like data"),
    ("finetune --checkpoint {ck} --out {new} --train {empty} --dev {tsv}", "empty_dir"),
    ("finetune --checkpoint {ck} --out {new} --train {bin} --dev {tsv}", "binary.txt"),
    ("finetune --checkpoint {ck} --out {new}", "--train"),
    ("finetune --checkpoint {ck} --out {new} --glue sst2", "--glue-dir"),
    ("finetune --checkpoint {ck} --out {new} --glue sst2 --glue-dir {empty}", "empty_dir"),
    ("finetune --checkpoint {data} --out {new} --train {tsv} --dev {tsv}", "prepared data, not a checkpoint"),
    ("finetune --checkpoint {hf} --out {new} --train {tsv} --dev {tsv}", "import-hf"),
    ("finetune --checkpoint {swapped} --out {new} --train {tsv} --dev {tsv}", "do not belong together"),
    ("finetune --checkpoint {ck} --out {nonempty} --train {tsv} --dev {tsv}", "not empty"),
    ("finetune --checkpoint {ck} --out {new} --dev {tsv}", "--train FILE"),
    ("finetune --checkpoint {ck} --out {new} --train {tsv} --test {missing}", "missing.txt: no such file"),
    ("finetune --checkpoint {ck} --out {ft} --train {tsv} --dev {tsv} --lr 1e-3 --epochs 2 --device cpu",
     "other settings (epochs 1 -> 2)"),
    # glue (and its old spelling, evaluate --glue-dir)
    ("glue --checkpoint {ck} --glue-dir {empty}", "empty_dir"),
    ("glue --checkpoint {ck} --glue-dir {missing}", "missing"),
    ("glue --checkpoint {missing} --glue-dir {empty}", "empty_dir"),
    ("glue --checkpoint {ck}", "--glue-dir"),
    ("glue --checkpoint {ck} --glue-dir {empty} --epochs 0", "--epochs"),
    ("evaluate --checkpoint {ck} --glue-dir {empty}", "empty_dir"),
    # old flag spellings still reach the same checks (after a note on stderr)
    ("prepare {jsonl} --tokenizer {tok} --out {new} --text-field nope", "no documents"),
    ("pretrain --data {data} --out {new} --init-from {missing}", "no such checkpoint"),
    ("finetune --checkpoint {ck} --out {new} --train {tsv} --dev {tsv} --max-len 1", "--seq-len 1"),
    ("import-hf --model {missing} --out {new}", "not a Hugging Face model directory"),
    ("quickstart --out {new} --steps -1", "--max-steps -1"),
    ("plan --batch-size 8 --steps -1", "--max-steps"),
    ("ablate masking --data {data} --budget-tokens abc --out {new}", "--max-tokens abc"),
    ("import-hf --out {new}", "--checkpoint"),
    ("ablate masking --data {data} --out {new}", "--max-tokens"),
    # predict
    ("predict --checkpoint {ck} {tsv} --out {new}", "not a fine-tuned model"),
    ("predict --checkpoint {missing} {tsv} --out {new}", "not a fine-tuned model"),
    ("predict --checkpoint {data} {tsv} --out {new}", "not a fine-tuned model"),
    ("predict --checkpoint {ck} {tsv} --out {new} --batch-size many", "--batch-size"),
    ("predict --checkpoint {ck} {tsv} --out {new} --threads -1", "--threads -1"),
    # probe
    ("probe --checkpoint {missing} --out {new} --train {tsv} --dev {tsv}", "no such checkpoint"),
    ("probe --checkpoint {ck} --out {new}", "--train"),
    ("probe --checkpoint {ck} --out {new} --glue sst2", "--glue-dir"),
    ("probe --checkpoint {ck} --out {new} --glue sst9 --glue-dir {empty}", "invalid choice"),
    ("probe --checkpoint {data} --out {new} --train {tsv} --dev {tsv}", "prepared data, not a checkpoint"),
    ("probe --checkpoint {ck} --out {new} --train {tsv} --test {missing}", "missing.txt: no such file"),
    # fill-mask
    ("fill-mask --checkpoint {ck} --top-k 0 'a <mask> b'", "--top-k 0", SUBPROCESS),
    ("fill-mask --checkpoint {ck} --top-k -1 'a <mask> b'", "--top-k -1"),
    ("fill-mask --checkpoint {ck} --top-k many 'a <mask> b'", "--top-k"),
    ("fill-mask --checkpoint {ck} 'no mask here'", "<mask>"),
    ("fill-mask --checkpoint {ck} --threads -1 'a <mask> b'", "--threads -1"),
    ("fill-mask --checkpoint {missing} 'a <mask> b'", "no such checkpoint"),
    ("fill-mask --checkpoint {data} 'a <mask> b'", "prepared data, not a checkpoint"),
    ("fill-mask --checkpoint {hf} 'a <mask> b'", "import-hf"),
    ("fill-mask --checkpoint {swapped} 'a <mask> b'", "do not belong together"),
    ("fill-mask --checkpoint {empty} 'a <mask> b'", "not a checkpoint"),
    ("fill-mask --checkpoint {ft} 'a <mask> b'", "is a fine-tuned classifier"),
    # export-hf
    ("export-hf --checkpoint {missing} --out {new}", "no such checkpoint"),
    ("export-hf --checkpoint {data} --out {new}", "prepared data, not a checkpoint"),
    ("export-hf --checkpoint {hf} --out {new}", "import-hf"),
    ("export-hf --checkpoint {swapped} --out {new}", "do not belong together"),
    ("export-hf --checkpoint {ck} --out {nonempty}", "not empty"),
    ("export-hf --checkpoint {ck} --out {file}", "is a file"),
    # import-hf
    ("import-hf --checkpoint {missing} --out {new}", "not a Hugging Face model directory"),
    ("import-hf --checkpoint {data} --out {new}", "not a Hugging Face model directory"),
    ("import-hf --checkpoint {ck}/checkpoint-000001 --out {new}", "model_type"),
    ("import-hf --checkpoint {file} --out {new}", "not a Hugging Face model directory"),
    ("import-hf --checkpoint {hf} --out {nonempty}", "not empty"),
    ("import-hf --checkpoint {hf} --out {hf}", "not empty"),
    # quickstart
    ("quickstart --out {new} --max-steps -1", "--max-steps -1"),
    ("quickstart --out {nonempty}", "not empty"),
    ("quickstart --out {file}", "is a file"),
    ("quickstart --out {new} --threads -1", "--threads -1"),
    # plan
    ("plan --batch-size 0 --max-steps 10", "--batch-size"),
    ("plan --batch-size 8 --max-steps -1", "--max-steps"),
    ("plan --batch-size 8 --max-steps 10 --seq-len 2", "--seq-len"),
    ("plan --batch-size 8 --max-steps 10 --mfu 0", "--mfu"),
    ("plan --batch-size 8 --max-steps 10 --mfu 2", "--mfu"),
    ("plan --batch-size 8 --max-steps 10 --gpu tpu", "--gpu tpu"),
    ("plan --batch-size 8 --max-steps 10 --gpus 0", "--gpus"),
    ("plan --batch-size 8 --max-steps 10 --vocab-size 0", "--vocab-size"),
    ("plan --batch-size 8 --max-steps 10 --peak-tflops -1", "--peak-tflops"),
    ("plan --batch-size 8 --max-steps 10 --memory-gb -1", "--memory-gb"),
    ("plan --batch-size 8 --max-steps 10 --preset huge", "huge"),
    ("plan --batch-size eight --max-steps 10", "--batch-size"),
    # ablate
    ("ablate masking --data {data} --max-tokens abc --out {new}", "--max-tokens abc"),
    ("ablate custom --data {data} --max-tokens 2e6 --out {new} --arms {arms} --threads -1", "--threads -1"),
    ("ablate masking --data {data} --max-tokens 0 --out {new}", "--max-tokens"),
    ("ablate masking --data {data} --max-tokens -5 --out {new}", "--max-tokens"),
    ("ablate masking --data {data} --max-tokens inf --out {new}", "--max-tokens inf"),
    ("ablate masking --data {missing} --max-tokens 1e4 --out {new}", "not a prepared data directory"),
    ("ablate masking --data {ck} --max-tokens 1e4 --out {new}", "not a prepared data directory"),
    ("ablate masking --data {data} --max-tokens 1e4 --out {new} --seeds 0", "--seeds 0"),
    ("ablate masking --data {data} --max-tokens 1e4 --out {new} --preset huge", "huge"),
    ("ablate masking --data {data} --max-tokens 1e4 --out {new} --set train.nope=1", "train.nope"),
    ("ablate custom --data {data} --max-tokens 1e4 --out {new}", "--arms"),
    ("ablate custom --data {data} --max-tokens 1e4 --out {new} --arms {missing}", "no such arms file"),
    ("ablate custom --data {data} --max-tokens 1e4 --out {new} --arms {bad_json}", "bad.json"),
    ("ablate masking --data {data} --max-tokens 1e4 --out {file}", "is a file"),
    ("ablate masking --data {data} --max-tokens 1e4 --out {nonempty_arm}", "no record of its config"),
    ("ablate masking --data {data} --max-tokens 1e4 --out {new}", "the two arms would be the same run"),
    ("ablate masking --data {data} --max-tokens 1e4 --out {new} --set masking.dupe_factor=1", "dupe_factor=1"),
    ("ablate custom --data {data} --max-tokens 1e4 --out {new} --arms {arms} --glue-tasks sst2", "--glue-dir"),
    ("ablate custom --data {data} --max-tokens 1e4 --out {new} --arms {arms} --glue-tasks sst2 --glue-dir {empty}",
     "empty_dir"),
    ("ablate custom --data {data} --max-tokens 1e4 --out {new} --arms {arms} --task-dev {tsv}",
     "--task-dev needs --task-train"),
    ("ablate custom --data {data} --max-tokens 1e4 --out {new} --arms {arms} --task-train {missing}", "no such file"),
    ("ablate custom --data {data} --max-tokens 1e4 --out {new} --arms {arms} --task-train {tsv} --task-eval tune",
     "--task-eval tune"),
    ("ablate custom --data {data} --max-tokens 1e4 --out {new} --arms {arms} --task-train {tsv} --label-column y",
     "no column 'y'"),
    # report
    ("report {missing} --out {new}", "no summary.json"),
    ("report {empty} --out {new}", "no summary.json"),
    ("report {data} --out {new}", "no summary.json"),
    ("report {ck} --out {new}", "no summary.json"),
]


def test_the_table_covers_every_subcommand():
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    covered = {c[0].split()[0] for c in CASES if c[0]}
    assert commands <= covered, commands - covered


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for root in roots for p in [root, *root.rglob("*")]}


def _argv(line: str, paths: dict[str, Path]) -> list[str]:
    import shlex

    return [a.format(**{k: str(v) for k, v in paths.items()}) for a in shlex.split(line)]


@pytest.mark.parametrize("case", CASES, ids=[c[0] or "(none)" for c in CASES])
def test_bad_input_is_one_error_line_and_changes_nothing(case, world, tmp_path, capsys, monkeypatch):
    line, needle, *how = case
    nonempty = tmp_path / "nonempty"
    nonempty.mkdir()
    (nonempty / "keep.txt").write_text("the user's file\n")
    arm = tmp_path / "ablation" / "static" / "seed0"  # an arm directory from an older version: no arm.json
    arm.mkdir(parents=True)
    (arm / "summary.json").write_text("{}")
    paths = {**world, "new": tmp_path / "new", "missing": tmp_path / "missing.txt", "nonempty": nonempty,
             "nonempty_arm": tmp_path / "ablation"}
    argv = _argv(line, paths)
    roots = (tmp_path, world["root"], world["tok"], world["data"])
    before = _snapshot(*roots)
    if how == [SUBPROCESS]:
        r = run_cli(*argv)  # (cwd stays: PYTHONPATH may be relative to it)
        code, err = r.returncode, r.stderr
    else:
        monkeypatch.chdir(tmp_path)  # anything written to a relative default path would show up here
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
        err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    assert needle in errors[0], errors[0]
    assert _snapshot(*roots) == before, "a refused command wrote or changed files"
    assert not (tmp_path / "new").exists()


def test_case_count_is_reported():
    """The docs (docs/guarantees.md, "Inputs, outputs and errors") quote this number."""
    assert len(CASES) >= 100
