#!/usr/bin/env bash
# Does pretraining help at GPU compute? One GPU, about 10 minutes of pretraining:
#   1. a 16K byte-level BPE tokenizer and seq-128 data from IMDB unsup (50K reviews, ~15M tokens)
#   2. pretrain `small` (6 x 512) with a small-compute recipe (40% masking, lr 1e-3, dropout 0;
#      the CPU screen is docs/ablations/cpu-recipe.md) for PT_TOKENS tokens (default 3e8: ~20 epochs of
#      the corpus; dynamic masking makes every repeat a new task), capped at PT_LIMIT seconds
#   3. fine-tune SST-2 on its full training set, FT_SEEDS seeds, against the same architecture
#      from random init (`finetune --baseline scratch`: same examples and seeds, each arm its own
#      lr grid, delta of medians with a 95% paired-bootstrap interval)
#   4. frozen probes on SST-2 (pretrained vs random init)
# Run from the repository root:
#   bash benchmarks/downstream_gpu.sh                 # the real thing, on a GPU
#   bash benchmarks/downstream_gpu.sh --dry-run       # tiny sizes on a CPU, a minute (tests/test_downstream_gpu_script.py)
# Env: SHARED (data root, default ../shared/data), OUT (default runs/downstream_gpu), PY (python).
set -euo pipefail
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
SHARED=${SHARED:-../shared/data}
IMDB=${IMDB:-$SHARED/imdb/unsup.jsonl.gz}
GLUE=${GLUE:-$SHARED/glue}
OUT=${OUT:-runs/downstream_gpu}
if [ $DRY = 1 ]; then
  # every step at toy size, on the CPU: the same commands and flags, so a typo fails here first
  VOCAB=${VOCAB:-600}; PRESET=${PRESET:-tiny}; PT_TOKENS=${PT_TOKENS:-20000}; PT_BATCH=${PT_BATCH:-8}
  PT_LIMIT=${PT_LIMIT:-300}; DEVICE=cpu; FT_SEEDS=${FT_SEEDS:-2}; FT_EPOCHS=1; FT_MAX_TRAIN=64; FT_MAX_DEV=48
  FT_LRS=${FT_LRS:-3e-4}; FT_BASELINE_LRS=${FT_BASELINE_LRS:-1e-3}; PROBE_TRAIN=64; EXTRA="--set train.eval_interval=10 --set train.threads=1"
else
  VOCAB=${VOCAB:-16000}; PRESET=${PRESET:-small}; PT_TOKENS=${PT_TOKENS:-3e8}; PT_BATCH=${PT_BATCH:-256}
  PT_LIMIT=${PT_LIMIT:-600}; DEVICE=cuda; FT_SEEDS=${FT_SEEDS:-5}; FT_EPOCHS=${FT_EPOCHS:-3}; FT_MAX_TRAIN=0; FT_MAX_DEV=0
  # per-arm grids: a random init wants a higher lr than a pretrained encoder
  FT_LRS=${FT_LRS:-1e-4,3e-4}; FT_BASELINE_LRS=${FT_BASELINE_LRS:-3e-4,1e-3}; PROBE_TRAIN=2000
  EXTRA="--set train.eval_interval=500 --set train.compile=true"
fi
mkdir -p "$OUT"
for f in "$IMDB" "$GLUE/SST-2/train.tsv" "$GLUE/SST-2/dev.tsv"; do
  [ -f "$f" ] || { echo "error: $f not found; set SHARED (or IMDB / GLUE)" >&2; exit 2; }
done
t0=$(date +%s)
step() { echo "== $* ($(( $(date +%s) - t0 ))s)"; }

step "tokenizer + prepare"
[ -f "$OUT/tok/tokenizer.json" ] || $PY -m roberta train-tokenizer "$IMDB" --out "$OUT/tok" --vocab-size $VOCAB
[ -f "$OUT/data/meta.json" ] || $PY -m roberta prepare "$IMDB" --tokenizer "$OUT/tok" --out "$OUT/data" --seq-len 128 --quiet

step "pretrain $PRESET, $PT_TOKENS tokens (at most ${PT_LIMIT}s)"
# the lr schedule decays to zero at train.max_tokens or train.max_time, whichever comes first: a run
# slower than planned still ends its schedule (and saves) inside the time budget
timeout $(( PT_LIMIT + 300 )) $PY -m roberta pretrain --data "$OUT/data" --out "$OUT/pt" --preset $PRESET \
  --set train.max_tokens=$PT_TOKENS --set train.max_time=${PT_LIMIT}s --set train.batch_size=$PT_BATCH --set train.lr=1e-3 \
  --set masking.mask_prob=0.4 --set model.dropout=0 --set model.attention_dropout=0 \
  --set train.device=$DEVICE --set train.checkpoint_interval=1000 --set train.eval_sequences=256 $EXTRA --quiet \
  2>&1 | tail -n 3

step "fine-tune SST-2: pretrained vs scratch, $FT_SEEDS seeds"
$PY -m roberta finetune --checkpoint "$OUT/pt" --glue sst2 --glue-dir "$GLUE" --out "$OUT/sst2" \
  --lr-grid $FT_LRS --baseline scratch --baseline-lr-grid $FT_BASELINE_LRS --seeds $FT_SEEDS \
  --epochs $FT_EPOCHS --patience 1 --max-train $FT_MAX_TRAIN --max-dev $FT_MAX_DEV --device $DEVICE \
  2>&1 | grep -v "epoch [0-9]*/" | tail -n 6

step "probe SST-2 ($PROBE_TRAIN train sentences): pretrained vs random init"
$PY -m roberta probe --checkpoint "$OUT/pt" --glue sst2 --glue-dir "$GLUE" --max-train $PROBE_TRAIN \
  --max-dev $FT_MAX_DEV --baseline random --out "$OUT/probe_sst2" | tail -n 2

step "done"
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
ft, pr = (json.loads((out / d / "metrics.json").read_text()) for d in ("sst2", "probe_sst2"))
row = lambda name, m: (f"{name:<26}{100 * m['value']:>8.2f}{100 * m['baseline_value']:>9.2f}{100 * m['delta']:>+8.2f}"
                       f"   [{100 * m['interval'][0]:+.2f}, {100 * m['interval'][1]:+.2f}]")
print(f"{'SST-2 dev accuracy':<26}{'ours':>8}{'scratch':>9}{'delta':>8}   95% interval")
print(row(f"fine-tuned ({len(ft['per_seed'])} seeds)", ft))
print(row("frozen probe", pr))
print(json.dumps({"finetune": {k: ft[k] for k in ("value", "baseline_value", "delta", "interval", "lr", "baseline_lr")},
                  "probe": {k: pr[k] for k in ("value", "baseline_value", "delta", "interval")}}))
EOF
