"""The ecosystem around a run: train.report_to (TensorBoard, W&B offline), Hugging Face corpora
as INPUTs, import-hf from the hub cache, loss.png and `roberta report RUN`. All offline: the
Hugging Face fixtures are written here with `datasets`, the hub cache is laid out by hand."""

from __future__ import annotations

import glob
import json
import os
import shutil
import struct
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch

from roberta.training import checkpoint as ckpt
from roberta.cli import main
from roberta.config import apply_overrides
from roberta.data.readers import ReadStats, iter_documents
from roberta.errors import UserError
from roberta.presets import tiny
from roberta.training.runlog import read_metrics
from roberta.training.loop import pretrain

from conftest import tiny_config

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # fixtures only: nothing here may reach the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RUN = dict(max_steps=6, eval_interval=2, log_interval=1, threads=1)
PNG = b"\x89PNG\r\n\x1a\n"


def scalars_by_step(records: list[dict]) -> dict[int, dict]:
    """metrics.jsonl as the integrations should see it: numbers only, a step's records merged."""
    rows: dict[int, dict] = {}
    for r in records:
        rows.setdefault(r["step"], {}).update(
            {k: v for k, v in r.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})
    return rows


def wandb_records(path: Path):
    """The records of a W&B transaction log (run-ID.wandb): a LevelDB-style log of 32 KiB blocks
    after a 7-byte header, each chunk `crc32 | length | type` then protobuf bytes."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of FIRST/MIDDLE/LAST
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


# ------------------------------------------------------------------------- report_to, loss.png

@pytest.fixture(scope="module")
def default_run(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("default") / "run"
    pretrain(str(data_dir), str(out), tiny_config(**RUN), progress=False)
    return out


@pytest.fixture(scope="module")
def reported_run(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A run with train.report_to=tensorboard,wandb, W&B offline in a temporary directory."""
    pytest.importorskip("tensorboard")
    wandb = pytest.importorskip("wandb")
    tmp = tmp_path_factory.mktemp("reported")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": tmp / "wandb", "WANDB_CONFIG_DIR": tmp / "cfg",
                           "WANDB_CACHE_DIR": tmp / "cache", "WANDB_DATA_DIR": tmp / "data", "WANDB_SILENT": "true",
                           "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true", "WANDB_PROJECT": "t17"}.items():
            mp.setenv(key, str(value))
        (tmp / "wandb").mkdir()
        cfg = apply_overrides(tiny_config(**RUN), ["train.report_to=tensorboard,wandb"])
        pretrain(str(data_dir), str(tmp / "run"), cfg, progress=False)
        wandb.teardown()
    return tmp / "run", tmp / "wandb"


def test_report_to_is_off_by_default(default_run):
    # TensorBoard used to be written whenever it was importable; now only when asked for
    assert tiny().train.report_to == "none"
    assert not (default_run / "tensorboard").exists() and not (default_run / "wandb").exists()


def test_tensorboard_gets_the_records_of_metrics_jsonl(reported_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = reported_run
    expected = scalars_by_step(read_metrics(run))
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    got: dict[int, dict] = {}
    for tag in events.Tags()["scalars"]:
        for e in events.Scalars(tag):
            got.setdefault(e.step, {})[tag] = e.value
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    for step, values in expected.items():
        assert set(got[step]) == set(values), step
        assert got[step] == pytest.approx(values, rel=1e-6), step  # TensorBoard stores float32
    assert {"loss", "lr", "tokens_per_s", "eval_loss", "eval_perplexity"} <= set(got[6])


def test_wandb_offline_run_holds_the_records_of_metrics_jsonl(reported_run):
    run, wandb_dir = reported_run
    expected = scalars_by_step(read_metrics(run))
    logs = glob.glob(str(wandb_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(logs) == 1, logs
    history, run_record = {}, None
    for record in wandb_records(Path(logs[0])):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[row["_step"]] = {k: v for k, v in row.items() if not k.startswith("_")}
        elif kind == "run":
            run_record = record.run
    assert history == expected  # every record, every number, exactly
    assert run_record is not None and run_record.display_name == "run" and run_record.project == "t17"
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert config["model"]["layers"] == 2 and config["train"]["report_to"] == "tensorboard,wandb"


@pytest.mark.parametrize("name, module", [("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")])
def test_report_to_without_the_package_is_one_line_naming_the_extra(name, module, data_dir, tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.setitem(sys.modules, module, None)  # its import now fails, as when not installed
    rc = main(["pretrain", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--quiet",
               "--set", "model.layers=1", "--set", "model.hidden=32", "--set", "model.heads=2",
               "--set", "model.ffn=64", "--set", "train.max_steps=1", "--set", f"train.report_to={name}"])
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
    assert rc == 2 and errors == [f"error: train.report_to={name} needs the {name} package: pip install 'roberta[{name}]'"]


def test_wandb_online_without_a_login_is_one_line(data_dir, tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for key in ("HOME", "WANDB_CONFIG_DIR", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "home"))  # no ~/.netrc, no saved key
    rc = main(["pretrain", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--quiet",
               "--set", "model.layers=1", "--set", "model.hidden=32", "--set", "model.heads=2",
               "--set", "model.ffn=64", "--set", "train.max_steps=1", "--set", "train.report_to=wandb"])
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:"))
    assert rc == 2 and err.startswith("error: train.report_to=wandb: W&B did not start (") and err.count("\n") == 0
    assert "`wandb login`, or set WANDB_MODE=offline" in err


def test_an_unknown_integration_is_refused():
    with pytest.raises(UserError, match="train.report_to=tensorboard,mlflow: unknown 'mlflow'; choose none or"):
        apply_overrides(tiny(), ["train.report_to=tensorboard,mlflow"])
    assert apply_overrides(tiny(), ["train.report_to=none"]).train.report_to == "none"


def test_a_finished_run_draws_loss_png(default_run):
    from matplotlib.image import imread

    png = default_run / "loss.png"
    assert png.read_bytes()[:8] == PNG
    pixels = imread(png)
    assert pixels.shape == (540, 840, 4)  # 7 x 4.5 inches at 120 dpi
    assert pixels[..., :3].std() > 0.05  # axes, curves and labels, not a blank canvas


def test_report_on_one_run_prints_its_numbers_and_redraws_the_plot(default_run, capsys):
    (default_run / "loss.png").unlink()
    assert main(["report", str(default_run)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    records = read_metrics(default_run)
    last_train = [r for r in records if "loss" in r][-1]
    last_eval = [r for r in records if "eval_loss" in r][-1]
    summary = json.loads(lines[-1])
    assert summary["finished"] and summary["step"] == 6 and summary["tokens"] == last_train["tokens"]
    assert summary["train_loss"] == last_train["loss"]
    assert (summary["eval_loss"], summary["eval_perplexity"]) == (last_eval["eval_loss"], last_eval["eval_perplexity"])
    assert summary["tokens_per_s"] == pytest.approx(last_train["tokens"] / last_train["elapsed"])
    text = "\n".join(lines)
    assert f"steps: 6; tokens: {last_train['tokens']:,}" in text
    assert f"train loss: {last_train['loss']:.4f}" in text
    assert f"held-out loss: {last_eval['eval_loss']:.4f} (perplexity {last_eval['eval_perplexity']:.2f})" in text
    assert (default_run / "loss.png").read_bytes()[:8] == PNG


def test_report_on_a_run_still_in_progress_and_on_a_damaged_log(default_run, tmp_path, capsys):
    records = (default_run / "metrics.jsonl").read_text().splitlines()
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "metrics.jsonl").write_text("\n".join(records[:4]) + "\n")  # no summary.json: still running
    assert main(["report", str(partial)]) == 0
    out = capsys.readouterr().out
    assert "not finished" in out and json.loads(out.splitlines()[-1])["step"] == json.loads(records[3])["step"]
    (partial / "metrics.jsonl").write_text("\n".join(records[:4]) + "\n" + records[4][:20])  # cut mid-line
    assert main(["report", str(partial)]) == 2
    assert capsys.readouterr().err == (f"error: {partial / 'metrics.jsonl'}:5: not a JSON record "
                                       "(Unterminated string starting at); was the file cut short?\n")
    assert main(["report", str(default_run), str(partial)]) == 2  # a comparison needs --out
    assert "--out DIR" in capsys.readouterr().err


# ------------------------------------------------------------------------- Hugging Face corpora

@pytest.fixture(scope="module")
def datasets():
    return pytest.importorskip("datasets")


def _read(inputs, **kw):
    stats = ReadStats()
    return list(iter_documents([str(i) for i in inputs], stats=stats, **kw)), stats


def test_a_saved_dataset_is_read_in_order_from_its_shards(datasets, tmp_path):
    texts = [f"review {i}: fine." for i in range(250)]
    body = list(texts)
    body[7] = None
    ds = datasets.Dataset.from_dict({"body": body, "label": list(range(250))})
    ds.save_to_disk(str(tmp_path / "ds"), num_shards=3)
    docs, stats = _read([tmp_path / "ds"], text_field="body")
    assert docs == texts[:7] + texts[8:]  # in the dataset's order, across 3 Arrow shards
    assert stats.files == 3 and stats.skipped == {"null text": 1} and stats.documents == 249
    with pytest.raises(UserError, match=r"no column 'text' \(columns: body, label\); choose one with --text-column"):
        _read([tmp_path / "ds"])
    with pytest.raises(UserError, match="column 'label' holds int64, not text"):
        _read([tmp_path / "ds"], text_field="label")


def test_a_saved_dataset_dict_gives_its_train_split(datasets, tmp_path, capsys):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["train a", "train b"]}),
                               "test": datasets.Dataset.from_dict({"text": ["test a"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert _read([tmp_path / "dd"])[0] == ["train a", "train b"]
    assert f"reading its 'train' split only (not test; pass {tmp_path / 'dd' / 'test'}" in capsys.readouterr().err
    assert _read([tmp_path / "dd" / "test"])[0] == ["test a"]  # a split's own directory
    datasets.DatasetDict({"test": dd["test"]}).save_to_disk(str(tmp_path / "no_train"))
    with pytest.raises(UserError, match=r"no 'train' split \(splits: test\); pass the directory of the split"):
        _read([tmp_path / "no_train"])


def test_load_datasets_cache_gives_the_train_split_and_not_its_map_cache(datasets, tmp_path, capsys):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": f"train {i}"}) + "\n" for i in range(5)))
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "test 0"}) + "\n")
    dd = datasets.load_dataset("json", data_files={"train": str(tmp_path / "train.jsonl"),
                                                   "test": str(tmp_path / "test.jsonl")},
                               cache_dir=str(tmp_path / "cache"))
    dd["train"].map(lambda row: {"text": row["text"].upper()})  # leaves a cache-*.arrow beside the data
    [built] = {Path(f).parent for f in glob.glob(str(tmp_path / "cache" / "**" / "*.arrow"), recursive=True)}
    assert any(f.name.startswith("cache-") for f in built.iterdir())
    expected = [f"train {i}" for i in range(5)]
    assert _read([built])[0] == expected  # the dataset's directory
    assert _read([tmp_path / "cache"])[0] == expected  # or the whole cache: found inside it
    assert "left out test: 1 file(s)" in capsys.readouterr().err
    assert _read([next(built.glob("*-test.arrow"))])[0] == ["test 0"]  # one .arrow file


def _hub_layout(root: Path, repo: str, revisions: dict[str, dict[str, bytes]], main: str | None) -> Path:
    """A hub cache repository as `huggingface_hub` lays it out: contents in blobs/, each
    revision's tree in snapshots/<rev>/ as relative symlinks, refs/main naming one revision."""
    repo_dir = root / repo
    for rev, files in revisions.items():
        for name, data in files.items():
            blob = repo_dir / "blobs" / f"{abs(hash((rev, name))):x}"
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = repo_dir / "snapshots" / rev / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    if main:
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(main)
    return repo_dir


def _parquet(tmp_path: Path, texts: list[str]) -> bytes:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    f = tmp_path / "one.parquet"
    pq.write_table(pa.table({"text": texts}), f)
    return f.read_bytes()


def test_hub_dataset_cache_gives_refs_main_snapshot_and_its_train_split(tmp_path, capsys):
    new, old = "a1" * 20, "b2" * 20
    files = {"README.md": b"---\nconfigs: []\n---\n",
             "plain_text/train-00000-of-00002.parquet": _parquet(tmp_path, ["train one", "train two"]),
             "plain_text/train-00001-of-00002.parquet": _parquet(tmp_path, ["train three"]),
             "plain_text/test-00000-of-00001.parquet": _parquet(tmp_path, ["test one"]),
             "plain_text/unsupervised-00000-of-00001.parquet": _parquet(tmp_path, ["unlabelled"])}
    repo = _hub_layout(tmp_path / "hub", "datasets--org--reviews",
                       {new: files, old: {"plain_text/train-00000-of-00001.parquet": _parquet(tmp_path, ["stale"])}},
                       main=new)
    os.utime(repo / "snapshots" / new, (1, 1))  # refs/main wins over the newer directory
    docs, stats = _read([repo])
    assert docs == ["train one", "train two", "train three"] and stats.files == 2
    err = capsys.readouterr().err
    assert f"reading snapshot {new[:12]} (refs/main)" in err
    assert "left out test: 1 file(s), unsupervised: 1 file(s)" in err
    assert _read([repo / "snapshots" / new / "plain_text" / "unsupervised-00000-of-00001.parquet"])[0] == ["unlabelled"]
    (repo / "refs" / "main").unlink()  # a cache without refs/main: the latest snapshot
    assert _read([repo])[0] == ["stale"]
    assert f"reading snapshot {old[:12]}, the latest of 2 (no refs/main)" in capsys.readouterr().err


def test_hf_inputs_stream_in_bounded_memory(datasets, tmp_path):
    pa = pytest.importorskip("pyarrow")
    texts = [f"document {i} " + "lorem ipsum dolor sit amet " * 10 for i in range(40_000)]
    # from_dict writes one record batch per shard: 6 MB each, which must not be copied whole
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "ds"), num_shards=2)
    size = sum(f.stat().st_size for f in (tmp_path / "ds").glob("*.arrow"))
    arrow_peak, n, chars = 0, 0, 0
    tracemalloc.start()
    try:
        for doc in iter_documents([str(tmp_path / "ds")]):
            n, chars = n + 1, chars + len(doc)
            if n % 1000 == 0:
                arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size > 10_000_000 and n == 40_000 and chars == sum(len(t.strip()) for t in texts)
    assert arrow_peak < 1_000_000, f"{arrow_peak / 1e6:.1f} MB of Arrow buffers for a {size / 1e6:.0f} MB dataset"
    assert python_peak < 2_000_000, f"{python_peak / 1e6:.1f} MB of Python objects for a {size / 1e6:.0f} MB dataset"


@pytest.mark.parametrize("case", ["truncated", "not-arrow", "state-lists-missing-file", "no-snapshots"])
def test_broken_hf_inputs_are_one_line_errors(case, datasets, tmp_path):
    ds = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": ["word " * 50] * 2000}).save_to_disk(str(ds))
    shard = ds / "data-00000-of-00001.arrow"
    if case == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        inp, expect = ds, f"{shard}: cannot read further"
    elif case == "not-arrow":
        inp, expect = tmp_path / "x.arrow", f"{tmp_path / 'x.arrow'}: not a readable Arrow file"
        inp.write_text("plain text, not Arrow\n" * 20)
    elif case == "state-lists-missing-file":
        shard.unlink()
        inp, expect = ds, f"{ds}: state.json lists data-00000-of-00001.arrow, which is missing"
    else:
        inp, expect = tmp_path / "datasets--org--empty", "a hub cache directory with no snapshots/"
        (inp / "refs").mkdir(parents=True)
    with pytest.raises(UserError) as e:
        _read([inp])
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_cli_train_tokenizer_and_prepare_take_hf_datasets(datasets, tmp_path, corpus_docs, tokenizer_dir, capsys):
    docs = corpus_docs[:300]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": docs}),
                          "test": datasets.Dataset.from_dict({"content": ["held back"]})}).save_to_disk(
        str(tmp_path / "dd"))
    assert main(["train-tokenizer", str(tmp_path / "dd"), "--text-column", "content", "--vocab-size", "400",
                 "--out", str(tmp_path / "tok")]) == 0
    assert f"-> {len(docs):,} documents" in capsys.readouterr().out
    repo = _hub_layout(tmp_path / "hub", "datasets--org--docs",
                       {"c" * 40: {"data/train-00000-of-00001.parquet": _parquet(tmp_path, docs)}}, main="c" * 40)
    assert main(["prepare", str(repo), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "data"),
                 "--seq-len", "64", "--threads", "1", "--quiet"]) == 0
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["read"]["documents"] == len(docs) and meta["read"]["files"] == 1


# ------------------------------------------------------------------------- import-hf from the hub cache

def _exported(tmp_path: Path, tokenizer_dir: Path, seed: int) -> tuple[dict[str, torch.Tensor], dict[str, bytes]]:
    """A tiny random checkpoint exported to a HF directory: (our weights, the directory's files)."""
    from roberta.hf import export_hf
    from roberta.model import build_model

    from roberta.config import resolve_run

    cfg = resolve_run(tiny_config(), {"vocab_size": 1000, "seq_len": 128})  # 1,024 rows, 130 positions
    model = build_model(cfg.model, seed=seed)
    ck = ckpt.save_checkpoint(tmp_path / f"run{seed}", 1, model, cfg, tokenizer_dir)
    export_hf(ck, tmp_path / f"hf{seed}")
    files = {f.name: f.read_bytes() for f in (tmp_path / f"hf{seed}").iterdir()}
    return ckpt.load_weights(ck), files


def test_import_hf_reads_a_hub_cache_directory(tmp_path, tokenizer_dir):
    pytest.importorskip("transformers")
    from roberta.hf import import_hf

    wanted, wanted_files = _exported(tmp_path, tokenizer_dir, seed=0)
    other, other_files = _exported(tmp_path, tokenizer_dir, seed=1)
    assert not torch.equal(wanted["lm_head.bias"], other["lm_head.bias"]) or not all(
        torch.equal(wanted[k], other[k]) for k in wanted)
    main_rev, old_rev = "d" * 40, "e" * 40
    repo = _hub_layout(tmp_path / "hub", "models--org--tiny", {main_rev: wanted_files, old_rev: other_files},
                       main=main_rev)
    os.utime(repo / "snapshots" / main_rev, (1, 1))  # older on disk: refs/main must still win
    notes = import_hf(repo, tmp_path / "ours")
    assert notes == [f"{repo}: reading snapshot {main_rev[:12]} (refs/main)"]
    got = ckpt.load_weights(tmp_path / "ours")
    assert got.keys() == wanted.keys() and all(torch.equal(got[k], wanted[k]) for k in wanted)
    shutil.rmtree(repo / "refs")
    notes = import_hf(repo, tmp_path / "latest")
    assert notes == [f"{repo}: reading snapshot {old_rev[:12]}, the latest of 2 (no refs/main)"]
    got = ckpt.load_weights(tmp_path / "latest")
    assert all(torch.equal(got[k], other[k]) for k in other)


def test_tensorboard_after_resume_holds_one_value_per_step(data_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = apply_overrides(tiny_config(**dict(RUN, checkpoint_interval=3)), ["train.report_to=tensorboard"])
    run = tmp_path / "run"
    pretrain(str(data_dir), str(run), cfg, progress=False)
    shutil.rmtree(run / "checkpoint-000006")  # as if interrupted after logging steps 4-6, before saving them
    pretrain(str(data_dir), str(run), cfg, resume=True, progress=False)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    expected = scalars_by_step(read_metrics(run))
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    for tag in ("loss", "elapsed", "eval_loss"):
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == sorted(s for s, v in expected.items() if tag in v), tag  # no step twice
        assert [v for _, v in got] == pytest.approx([v[tag] for s, v in sorted(expected.items()) if tag in v])
