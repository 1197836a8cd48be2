"""train.threads on a shared CPU: the automatic count (0, the default) against all cores (the old
default), on an idle machine and with another process keeping one core busy.

Each case is a fresh `python -m roberta pretrain` of the `tiny` preset at seq 128 (the quickstart's
run: batch 16, the quickstart's 8K tokenizer on the embedded corpus), --steps steps. The competitor
is a Python busy loop, started before the run (so the automatic count sees it: it measures at the
start and keeps the count, see roberta.training.threads) and killed after it. tokens/s counts the
steps after --warmup (the records' tokens and elapsed seconds: training only, no evaluation or
checkpoint between them). Cases are interleaved in rounds and the median reported, because the
machine is shared: what else ran is printed first (load average, and the cores other processes
used over a second, measured as the trainer measures them).

    python benchmarks/threads_bench.py                       # 4 cases x 1 round, 40 steps: ~10 min on 2 vCPUs
    python benchmarks/threads_bench.py --steps 3 --warmup 1 --docs 300   # a dry run: does it work
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from roberta.data.corpus import stdlib_documents
from roberta.data.prepare import prepare
from roberta.tokenizer import save_tokenizer, train_tokenizer
from roberta.training.threads import CpuMeter, others_cores

SEQ_LEN = 128
BUSY_LOOP = "while True: pass"


def prepare_data(work: Path, docs: int) -> Path:
    """The quickstart's corpus, tokenizer (8K) and token shards at seq 128, in `work` (kept: a
    second run with the same --work skips this)."""
    data = work / "data"
    if (data / "meta.json").is_file():
        return data
    texts = list(stdlib_documents())[:docs or None]
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    save_tokenizer(train_tokenizer(iter(texts), vocab_size=8000), work / "tokenizer", model_max_length=SEQ_LEN)
    prepare([str(corpus)], str(work / "tokenizer"), str(data), seq_len=SEQ_LEN, valid_fraction=0.05,
            workers=1, progress=False)
    return data


def others_now(seconds: float = 1.0) -> float | None:
    """Cores other processes use, over `seconds` (None without /proc)."""
    meter = CpuMeter()
    a = meter.read()
    time.sleep(seconds)
    b = meter.read()
    return None if a is None or b is None else others_cores(a, b)


def train(data: Path, out: Path, threads: int, steps: int) -> tuple[dict, list[dict], str]:
    """One pretraining in a fresh interpreter -> (summary, metrics records, its 'threads:' line)."""
    sets = [f"train.max_steps={steps}", "train.log_interval=1", f"train.eval_interval={10 * steps}",
            f"train.checkpoint_interval={10 * steps}", "train.eval_sequences=16", "train.peak_flops=1e11",
            f"train.threads={threads}", f"data.seq_len={SEQ_LEN}"]
    cmd = [sys.executable, "-m", "roberta", "pretrain", "--data", str(data), "--out", str(out), "--preset", "tiny",
           "--quiet", *[x for s in sets for x in ("--set", s)]]
    # torch's own default is what train.threads=2 stood for; OMP_NUM_THREADS would override both
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    p = subprocess.run(cmd, env=dict(env, TOKENIZERS_PARALLELISM="false"), capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    line = next((x for x in p.stdout.splitlines() if x.startswith("threads:")), "")
    return json.loads((out / "summary.json").read_text()), records, line


def tokens_per_s(records: list[dict], warmup: int) -> float:
    """Over the steps after `warmup`: (tokens, elapsed) of the last record minus those at `warmup`."""
    train_recs = [r for r in records if "loss" in r]
    first = next(r for r in train_recs if r["step"] >= warmup)
    last = train_recs[-1]
    return (last["tokens"] - first["tokens"]) / (last["elapsed"] - first["elapsed"])


def run_case(data: Path, work: Path, threads: int, competitor: bool, steps: int, warmup: int) -> dict:
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if competitor else None
    try:
        if busy:
            time.sleep(1.0)  # it is running before the run starts, as the other job was
        out = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
        summary, records, line = train(data, out, threads, steps)
    finally:
        if busy:
            busy.kill()
            busy.wait()
    return {"machine": "+ a busy loop" if competitor else "as found", "train.threads": threads,
            "threads_used": summary.get("threads"), "tokens_per_s": tokens_per_s(records, warmup),
            "startup_line": line}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of tokens/s")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--all-cores", type=int, default=os.cpu_count(), help="the fixed count compared (old default)")
    p.add_argument("--docs", type=int, default=0, help="documents of the embedded corpus (0 = all)")
    p.add_argument("--work", default="", help="where data and runs go (default: a temporary directory)")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="threads_bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load, others = os.getloadavg(), others_now()
    print(f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), torch {torch.__version__}; "
          f"before the start: load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, other processes "
          f"using {'?' if others is None else f'{others:.2f}'} cores")
    data = prepare_data(work, args.docs)
    cases = [(t, c) for c in (False, True) for t in (0, args.all_cores)]
    results: dict[tuple, list[dict]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for threads, competitor in cases:
            results[(threads, competitor)].append(run_case(data, work, threads, competitor, args.steps, args.warmup))
    rows = []
    for case, runs in results.items():
        row = dict(runs[0], tokens_per_s=statistics.median(r["tokens_per_s"] for r in runs),
                   all_tokens_per_s=[r["tokens_per_s"] for r in runs], threads_used=[r["threads_used"] for r in runs])
        rows.append(row)
    print(f"{'machine':<16}{'train.threads':>14}{'used':>8}{'tokens/s':>10}{'vs all cores':>14}  start-up line")
    for r in rows:
        fixed = next(x for x in rows if x["machine"] == r["machine"] and x["train.threads"] == args.all_cores)
        r["vs_all_cores"] = r["tokens_per_s"] / fixed["tokens_per_s"]
        used = ",".join(map(str, r["threads_used"]))
        print(f"{r['machine']:<16}{r['train.threads']:>14}{used:>8}{r['tokens_per_s']:>10,.0f}"
              f"{r['vs_all_cores']:>13.2f}x  {r['startup_line']}")
    print(json.dumps({"benchmark": "threads", "cores": os.cpu_count(), "torch": torch.__version__,
                      "loadavg_before": load, "others_cores_before": others, "steps": args.steps,
                      "warmup": args.warmup, "rounds": args.rounds, "rows": rows}))


if __name__ == "__main__":
    main()
