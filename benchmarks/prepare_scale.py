"""The data stages at scale: `prepare` time and memory from ~66 MB to ~1 GB of text, and
`train-tokenizer` on 1 GB in full vs from a `--sample-bytes` document sample, one run.

    nice -n 10 python benchmarks/prepare_scale.py [--copies 1,4,16] [--tokenizer-copies 4,16] [--workers 1] [--sample 64M]

The corpus is IMDB unsup (50K reviews, ~66 MB of text) written 16 times, copy k with every 5th
word (offset k) Caesar-shifted by k letters: documents are not identical and the word
vocabulary grows with the corpus, as it does in a real one. Each copy is its own file.
1. tokenizer from a --sample-bytes sample of all copies (50,265 tokens, as the paper): time, peak RSS;
2. `roberta prepare` with it on 1, 4 and 16 copies: wall and CPU seconds, peak RSS of the process
   tree (polled from /proc, workers included); the per-CPU-second rate projects the paper's 160 GB;
3. at --tokenizer-copies sizes, a sampled and a full tokenizer (time, peak RSS), and their token counts on held-out
   text (IMDB test reviews, never in either training set).
Prints one JSON line per stage as it ends, smallest corpora first.
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
    ap.add_argument("--copies", default="1,4,16", help="corpus sizes for prepare, in copies of IMDB unsup")
    ap.add_argument("--tokenizer-copies", default="4,16",
                    help="corpus sizes at which a sampled and a full tokenizer are compared")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--sample", default="64M")
    ap.add_argument("--vocab-size", type=int, default=50265)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "roberta_prepare_scale"))
    ap.add_argument("--reuse-tokenizer", action="store_true",
                    help="keep the sampled tokenizer of an earlier run in --work (its stage is not measured again)")
    ap.add_argument("--held-out", type=int, default=10000, help="IMDB test reviews to tokenise")
    a = ap.parse_args()
    sizes = [int(x) for x in a.copies.split(",")]
    tok_sizes = [int(x) for x in a.tokenizer_copies.split(",")]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    files = write_copies(DATA / "imdb" / "unsup.jsonl.gz", work, max(sizes + tok_sizes))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    mb = {n: sum(p.stat().st_size for p in files[:n]) / 1e6 for n in set(sizes + tok_sizes)}  # jsonl bytes
    with gzip.open(DATA / "imdb" / "test.jsonl.gz", "rt") as f:
        held = [json.loads(line)["text"] for _, line in zip(range(a.held_out), f)]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores; prepare --workers {a.workers}; "
          f"held-out: {len(held):,} IMDB test reviews", flush=True)

    def report(stage: str, n: int, r: dict, **extra) -> None:
        """One line per stage as it ends (a long run interrupted keeps what it measured)."""
        row = {"stage": stage, "copies": n, "mb": round(mb[n], 1), "wall_s": round(r["wall_s"], 1),
               "cpu_s": round(r["cpu_s"], 1), "peak_rss_mb": round(r["peak_rss_mb"]),
               "mb_per_cpu_s": round(mb[n] / r["cpu_s"], 3), **extra}
        if stage == "prepare":
            row["paper_160GB_core_hours"] = round(PAPER_BYTES / 1e6 / row["mb_per_cpu_s"] / 3600)
        print(json.dumps(row), flush=True)

    def tokenizer(n: int, sample: str = "") -> tuple[Path, dict]:
        out = work / (f"tok_{n}_sample{sample}" if sample else f"tok_{n}_full")
        extra = ["--sample-bytes", sample] if sample else []
        return out, run_measured(roberta("train-tokenizer", *map(str, files[:n]), "--out", str(out), "--vocab-size",
                                         str(a.vocab_size), *extra), env=env)

    sampled_all = work / f"tok_{max(sizes)}_sample{a.sample}"  # the tokenizer every prepare uses
    if not (a.reuse_tokenizer and (sampled_all / "tokenizer.json").is_file()):
        sampled_all, r = tokenizer(max(sizes), a.sample)
        report("train-tokenizer --sample-bytes " + a.sample, max(sizes), r,
               held_out_tokens=held_out_tokens(sampled_all, held))
    todo = [("prepare", n) for n in sizes] + [("tokenizers", n) for n in tok_sizes]
    todo.sort(key=lambda x: (mb[x[1]], x[0] == "prepare"))  # small first: an interruption costs the big ones
    for stage, n in todo:
        if stage == "prepare":
            r = run_measured(roberta("prepare", *map(str, files[:n]), "--tokenizer", str(sampled_all), "--out",
                                     str(work / f"prepared_{n}"), "--workers", str(a.workers), "--quiet"), env=env)
            report("prepare", n, r)
        else:
            sampled, rs = tokenizer(n, a.sample)
            full, rf = tokenizer(n)
            ns, nf = held_out_tokens(sampled, held), held_out_tokens(full, held)
            report("train-tokenizer --sample-bytes " + a.sample, n, rs, held_out_tokens=ns)
            report("train-tokenizer (all)", n, rf, held_out_tokens=nf, sample_vs_full=round(ns / nf - 1, 5))


if __name__ == "__main__":
    main()
