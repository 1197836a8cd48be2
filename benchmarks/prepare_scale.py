"""The data stages at scale: `prepare` time and memory from ~66 MB to ~1 GB of text, and
`train-tokenizer` on 1 GB in full vs from a `--sample-bytes` document sample, one run.

    nice -n 10 python benchmarks/prepare_scale.py [--copies 1,4,16] [--workers 2] [--sample 64M]

The corpus is IMDB unsup (50K reviews, ~66 MB of text) written 16 times, copy k with every 5th
word (offset k) Caesar-shifted by k letters: documents are not identical and the word
vocabulary grows with the corpus, as it does in a real one. Each copy is its own file.
1. tokenizer from a --sample-bytes sample of all copies (50,265 tokens, as the paper);
2. `roberta prepare` with it on 1, 4 and 16 copies: wall and CPU seconds, peak RSS of the process
   tree (polled from /proc, workers included); the per-CPU-second rate projects the paper's 160 GB;
3. tokenizer from all 16 copies (time, peak RSS), and both tokenizers' token counts on held-out
   text (IMDB test reviews, never in either training set).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import string
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_bench import run_measured  # noqa: E402  (the same /proc-polled measurement)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ROBERTA_SHARED_DATA", REPO.parent / "shared" / "data"))
PAPER_BYTES = 160e9


def write_copies(src: Path, out: Path, n: int) -> list[Path]:
    """n jsonl files; copy k shifts every 5th word (offset k) by k letters (copy 0 is the original)."""
    paths = []
    with gzip.open(src, "rt") as f:
        texts = [json.loads(line)["text"] for line in f]
    for k in range(n):
        path = out / f"copy{k:02d}.jsonl"
        paths.append(path)
        if path.exists():
            continue
        lo, up = string.ascii_lowercase, string.ascii_uppercase
        table = str.maketrans(lo + up, lo[k % 26:] + lo[:k % 26] + up[k % 26:] + up[:k % 26])
        with open(path.with_suffix(".tmp"), "w") as w:
            for t in texts:
                if k:
                    words = t.split(" ")
                    words[k % 5::5] = [x.translate(table) for x in words[k % 5::5]]
                    t = " ".join(words)
                w.write(json.dumps({"text": t}) + "\n")
        path.with_suffix(".tmp").rename(path)
    return paths


def roberta(*args: str) -> list[str]:
    return [sys.executable, "-m", "roberta", *args]


def held_out_tokens(tok_dir: Path, texts: list[str]) -> int:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    return sum(len(e.ids) for e in tok.encode_batch(texts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", default="1,4,16")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sample", default="64M")
    ap.add_argument("--vocab-size", type=int, default=50265)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "roberta_prepare_scale"))
    ap.add_argument("--held-out", type=int, default=10000, help="IMDB test reviews to tokenise")
    a = ap.parse_args()
    sizes = [int(x) for x in a.copies.split(",")]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    files = write_copies(DATA / "imdb" / "unsup.jsonl.gz", work, max(sizes))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    rows, result = [], {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "workers": a.workers}

    sampled = work / "tok_sample"
    r = run_measured(roberta("train-tokenizer", *map(str, files), "--out", str(sampled), "--vocab-size",
                             str(a.vocab_size), "--sample-bytes", a.sample), env=env)
    mb_all = sum(p.stat().st_size for p in files) / 1e6
    result["tokenizer_sample"] = {k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")} | {"sample": a.sample}
    rows.append((f"train-tokenizer --sample-bytes {a.sample} of {mb_all:.0f} MB", r))

    result["prepare"] = []
    for n in sizes:
        out = work / f"prepared_{n}"
        r = run_measured(roberta("prepare", *map(str, files[:n]), "--tokenizer", str(sampled), "--out", str(out),
                                 "--workers", str(a.workers), "--quiet"), env=env)
        mb = sum(p.stat().st_size for p in files[:n]) / 1e6  # jsonl bytes (text + ~20 B/doc of JSON)
        rate = mb / r["cpu_s"]
        result["prepare"].append({"copies": n, "mb": mb, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                                  "peak_rss_mb": r["peak_rss_mb"], "mb_per_cpu_s": rate})
        rows.append((f"prepare {n} cop{'y' if n == 1 else 'ies'} ({mb:.0f} MB)", r))
    last = result["prepare"][-1]
    core_hours = PAPER_BYTES / 1e6 / last["mb_per_cpu_s"] / 3600
    result["paper_160GB_core_hours"] = core_hours

    full = work / "tok_full"
    r = run_measured(roberta("train-tokenizer", *map(str, files), "--out", str(full), "--vocab-size",
                             str(a.vocab_size)), env=env)
    result["tokenizer_full"] = {k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_mb")}
    rows.append((f"train-tokenizer, all {mb_all:.0f} MB", r))

    with gzip.open(DATA / "imdb" / "test.jsonl.gz", "rt") as f:
        held = [json.loads(line)["text"] for _, line in zip(range(a.held_out), f)]
    n_sample, n_full = held_out_tokens(sampled, held), held_out_tokens(full, held)
    result["held_out_tokens"] = {"sample": n_sample, "full": n_full, "ratio": n_sample / n_full}

    print(f"{'stage':<48} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12} {'MB/CPU-s':>9}")
    for name, r in rows:
        mb = float(name.split("(")[1].split()[0]) if name.startswith("prepare") else mb_all
        print(f"{name:<48} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {r['peak_rss_mb']:>12.0f} {mb / r['cpu_s']:>9.2f}")
    print(f"held-out tokens ({len(held):,} IMDB test reviews): sample tokenizer {n_sample:,}, "
          f"full {n_full:,} ({100 * (n_sample / n_full - 1):+.2f}%)")
    print(f"paper's 160 GB at {last['mb_per_cpu_s']:.2f} MB per CPU-second: {core_hours:,.0f} core-hours "
          f"({core_hours / 64:,.1f} h on 64 cores)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
