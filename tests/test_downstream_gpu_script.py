"""benchmarks/downstream_gpu.sh's CPU dry run: every step of the GPU script (tokenizer, prepare,
pretrain, finetune --baseline scratch, probe --baseline random, the summary) at toy sizes, on toy
IMDB / SST-2 files, so that the script works the first time it meets a GPU."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_finetune import _separable

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_downstream_gpu_script_dry_run(tmp_path, corpus_docs):
    shared = tmp_path / "shared"
    (shared / "imdb").mkdir(parents=True)
    with gzip.open(shared / "imdb" / "unsup.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in corpus_docs[:400])
    for split, n, seed in (("train", 120, 0), ("dev", 60, 1)):
        rows = _separable(n, seed)
        path = shared / "glue" / "SST-2" / f"{split}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("sentence\tlabel\n" + "".join(f"{r['review']}\t{int(r['sentiment'] == 'pos')}\n" for r in rows))
    env = {**os.environ, "SHARED": str(shared), "OUT": str(tmp_path / "out"), "PY": sys.executable}
    r = subprocess.run(["bash", "benchmarks/downstream_gpu.sh", "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    ft = json.loads((tmp_path / "out" / "sst2" / "metrics.json").read_text())
    assert result["finetune"]["delta"] == pytest.approx(ft["delta"])
    assert len(ft["per_seed"]) == 2 and len(ft["baseline_per_seed"]) == 2  # FT_SEEDS seeds per arm
    assert ft["lr"] == 3e-4 and ft["baseline_lr"] == 1e-3  # each arm its own grid
    assert (tmp_path / "out" / "sst2" / "model" / "model.safetensors").is_file()
    assert set(result["probe"]) == {"value", "baseline_value", "delta", "interval"}
    # missing data is one clear line, exit code 2
    r = subprocess.run(["bash", "benchmarks/downstream_gpu.sh", "--dry-run"], cwd=ROOT,
                       env={**env, "SHARED": str(tmp_path / "nowhere")}, capture_output=True, text=True)
    assert r.returncode == 2 and "not found; set SHARED" in r.stderr
