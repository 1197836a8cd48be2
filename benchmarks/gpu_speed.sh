#!/usr/bin/env bash
# GPU speed levers, one script (about 5 minutes on an H100/H200): `base` at seq 128, bf16, batch 256 --
# ours compiled; + float8 (torchao, Hopper/Ada only); + Liger-Kernel's LayerNorm and fused linear
# cross-entropy (when liger-kernel is installed) -- side by side in one train_bench run (MFU against
# the bf16 datasheet peak for every row, float8 included); `modern-base` (ModernBERT-base) against
# transformers' ModernBertForMaskedLM the same way; then float8's loss parity with bf16: 150 trainer
# steps of each on the embedded corpus, final held-out losses side by side; then unpadded vs padded:
# the modern family pretraining on packed documents (varlen attention, no padding) vs DOC-SENTENCES
# (the same per-document attention paid for with padding), real tokens/s of each.
#   OUT=/tmp/out bash benchmarks/gpu_speed.sh
# A CPU dry run of the same code paths (float8 and Liger skipped with a note), in a minute or two:
#   DEVICE=cpu PRESET=tiny MODERN=tiny BATCH=4 SEQ=32 IMPLS=ours STEPS=4 SMALL=1 bash benchmarks/gpu_speed.sh
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/gpu_speed}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda} PRESET=${PRESET:-base} BATCH=${BATCH:-256} SEQ=${SEQ:-128} IMPLS=${IMPLS:-ours+compile}
STEPS=${STEPS:-150} SMALL=${SMALL:-0} MODERN=${MODERN:-modern-base}
mkdir -p "$OUT"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

$PY - <<'PY' | tee "$OUT/env.txt"
import importlib.util, torch
print("torch", torch.__version__, "| GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
      "| torchao:", importlib.util.find_spec("torchao") is not None,
      "| liger_kernel:", importlib.util.find_spec("liger_kernel") is not None)
PY
FLOAT8=$($PY -c "
import importlib.util, torch
ok = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9) and importlib.util.find_spec('torchao')
print(1 if ok else 0)")
LIGER=$($PY -c "import importlib.util, torch; print(int(bool(torch.cuda.is_available() and importlib.util.find_spec('liger_kernel'))))")
[ "$FLOAT8" = 1 ] && IMPLS="$IMPLS,ours+compile+float8" || echo "float8: skipped (needs torchao and a GPU with compute capability >= 8.9)" | tee -a "$OUT/env.txt"
[ "$LIGER" = 1 ] && IMPLS="$IMPLS,ours+compile+liger" || echo "liger: skipped (needs liger-kernel and a GPU)" | tee -a "$OUT/env.txt"
PREC=$([ "$DEVICE" = cpu ] && echo fp32 || echo bf16)

echo "== 1. speed: $IMPLS, $PRESET seq $SEQ batch $BATCH, $PREC"
timeout 360 $PY benchmarks/train_bench.py --device $DEVICE --precisions $PREC --presets $PRESET --seq-lens $SEQ \
  --batch $BATCH --impls $IMPLS --warmup 3 --rounds 3 --steps 3 2>&1 | tee "$OUT/speed.log" | tail -n 8
[ "${PIPESTATUS[0]}" = 0 ] || { echo "speed: failed (see $OUT/speed.log)"; exit 1; }

echo "== 1b. speed: $MODERN, ours vs HF ModernBertForMaskedLM, seq $SEQ batch $BATCH, $PREC, no dropout"
timeout 300 $PY benchmarks/train_bench.py --device $DEVICE --precisions $PREC --presets $MODERN --seq-lens $SEQ \
  --batch $BATCH --impls ${IMPLS%%,*},HF --dropout 0 --warmup 3 --rounds 3 --steps 3 2>&1 | tee "$OUT/speed_modern.log" | tail -n 6
[ "${PIPESTATUS[0]}" = 0 ] || echo "speed $MODERN: failed (see $OUT/speed_modern.log)"

echo "== 2. float8 loss parity: $STEPS steps bf16 vs float8 on the embedded corpus"
MODEL=""
[ "$SMALL" = 1 ] && MODEL="--set model.layers=1 --set model.hidden=64 --set model.heads=2 --set model.ffn=128"
$PY -c "
import json
from roberta.data.corpus import stdlib_documents
with open('$W/docs.jsonl', 'w') as f:
    for d in stdlib_documents():
        f.write(json.dumps({'text': d}) + '\n')
" && $PY -m roberta train-tokenizer $W/docs.jsonl --out $W/tok --vocab-size 8000 >/dev/null &&
$PY -m roberta prepare $W/docs.jsonl --tokenizer $W/tok --out $W/data --seq-len $SEQ --quiet >/dev/null || exit 1
ARMS="plain"
[ "$FLOAT8" = 1 ] && ARMS="plain float8"
for arm in $ARMS; do
  F8=$([ $arm = float8 ] && echo true || echo false)
  timeout 300 $PY -m roberta pretrain --data $W/data --out $W/run_$arm --preset tiny --quiet $MODEL \
    --set train.device=$DEVICE --set train.max_steps=$STEPS --set train.batch_size=32 --set train.eval_interval=$STEPS \
    --set train.compile=$([ "$DEVICE" = cpu ] && echo false || echo true) --set train.float8=$F8 \
    > "$OUT/parity_$arm.log" 2>&1 || { echo "$arm: failed"; tail -n 3 "$OUT/parity_$arm.log"; exit 1; }
  echo "$arm: $(grep eval_loss $W/run_$arm/metrics.jsonl | tail -n 1)" | tee -a "$OUT/parity.txt"
done

echo "== 3. unpadded vs padded: $MODERN pretraining, packed-documents (varlen) vs doc-sentences (padded), 40 steps"
for fmt in packed-documents doc-sentences; do
  timeout 240 $PY -m roberta pretrain --data $W/data --out $W/fmt_$fmt --preset $MODERN --quiet $MODEL \
    --set data.format=$fmt --set train.device=$DEVICE --set train.max_steps=40 --set train.batch_size=64 \
    --set train.eval_interval=1000 --set train.checkpoint_interval=1000 > "$OUT/format_$fmt.log" 2>&1 \
    || { echo "$fmt: failed"; tail -n 3 "$OUT/format_$fmt.log"; continue; }
  $PY -c "
import json
r = [json.loads(l) for l in open('$W/fmt_$fmt/metrics.jsonl') if '\"tokens_per_s\"' in l]
print('$fmt: real tokens/s %.0f (median of the last half of the logged steps), MFU %.3f' % (
    sorted(x['tokens_per_s'] for x in r[len(r) // 2:])[len(r[len(r) // 2:]) // 2], r[-1]['mfu']))" | tee -a "$OUT/formats.txt"
done
echo "done: $OUT"
