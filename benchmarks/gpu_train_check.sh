#!/usr/bin/env bash
# One GPU session, one script (about 6 minutes on an H100): the GPU-only tests; train_bench.py for
# `base` at seq 128 and 512 in bf16, ours (eager and compiled) against HF; the trainer's CUDA path end
# to end; then gpu_profile.py's kernel breakdown of the compiled step.
#   OUT=/tmp/out bash benchmarks/gpu_train_check.sh
# Each stage has its own time limit and writes its log to $OUT, so a slow stage costs only itself.
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
W=$(mktemp -d)
# a dry run of the same code paths on a CPU, in a minute:
#   DEVICE=cpu DTYPE=fp32 PRESET=tiny SEQS=32,64 BATCH=4,2 E2E="--set model.layers=1 --set model.hidden=64
#   --set model.heads=2 --set model.ffn=128 --set train.batch_size=8" bash benchmarks/gpu_train_check.sh
DEVICE=${DEVICE:-cuda} DTYPE=${DTYPE:-bf16} PRESET=${PRESET:-base} SEQS=${SEQS:-128,512} BATCH=${BATCH:-256,64}
E2E=${E2E:-"--set train.batch_size=64"}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
torch.cuda.is_available() and torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

echo "== 1. the GPU-only tests (a training step queued without a host sync; masks equal CPU's)"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_masking.py -k "gpu or queued" \
  2>&1 | tee "$OUT/gpu_tests.log" | tail -n 5

echo "== 2. benchmark: ours eager, ours compiled, HF, one run"
timeout 240 $PY benchmarks/train_bench.py --device $DEVICE --precisions $DTYPE --presets $PRESET --seq-lens $SEQS \
  --batch $BATCH --impls ours,ours+compile,HF --warmup 3 --rounds 3 --steps 3 2>&1 | tee "$OUT/bench.log" | tail -n 12

echo "== 3. the trainer on the GPU: prepare, 20 steps eager, resume to 30 compiled" | tee "$OUT/e2e.log"
timeout 80 bash -c "
$PY -c \"
import json
from roberta.data.corpus import stdlib_documents
with open('$W/docs.jsonl', 'w') as f:
    for d in stdlib_documents():
        f.write(json.dumps({'text': d}) + '\n')
\" &&
$PY -m roberta train-tokenizer $W/docs.jsonl --out $W/tok --vocab-size 8000 &&
$PY -m roberta prepare $W/docs.jsonl --tokenizer $W/tok --out $W/data --seq-len 128 --quiet &&
$PY -m roberta pretrain --data $W/data --out $W/run --quiet --set train.max_steps=30 \
  --set train.checkpoint_interval=10 --set train.log_interval=5 $E2E
" >>"$OUT/e2e.log" 2>&1
# resume a copy of checkpoint 20 to step 30 with train.compile=true: the losses should match the run's
timeout 70 bash -c "
rm -rf $W/run2 && mkdir -p $W/run2 && cp -r $W/run/checkpoint-000020 $W/run/config.json $W/run2/ &&
$PY -m roberta pretrain --data $W/data --out $W/run2 --quiet --resume --set train.max_steps=30 \
  --set train.checkpoint_interval=10 --set train.log_interval=5 $E2E --set train.compile=true &&
$PY - <<EOF
import json
a = {r['step']: r for r in map(json.loads, open('$W/run/metrics.jsonl')) if 'loss' in r}
b = {r['step']: r for r in map(json.loads, open('$W/run2/metrics.jsonl')) if 'loss' in r}
print('eager run   ', {s: round(a[s]['loss'], 4) for s in sorted(a)})
print('resumed+compiled', {s: round(b[s]['loss'], 4) for s in sorted(b)})
print('summary', json.load(open('$W/run/summary.json')))
EOF
" >>"$OUT/e2e.log" 2>&1
tail -n 25 "$OUT/e2e.log"

echo "== 4. where the compiled step's time goes (first size only)"
timeout 120 $PY benchmarks/gpu_profile.py --device $DEVICE --preset $PRESET --seq-len ${SEQS%%,*} \
  --batch ${BATCH%%,*} --runs compiled 2>&1 | tee "$OUT/profile.log" | tail -n 16

echo "== done"
