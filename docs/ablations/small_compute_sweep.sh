#!/usr/bin/env bash
# The small-compute recipe screen of small-compute-recipe.md, run from the repository root on one GPU:
# several `tiny` pretraining recipes at once (each at the step count that fits 30 minutes of one CPU
# thread), then SST-2 fine-tuning (20K sentences) of each and of the from-scratch baseline.
#   DATA=runs/imdb128 GLUE=../shared/data/glue OUT=runs/sweep bash docs/ablations/small_compute_sweep.sh
# DATA: `roberta prepare` output of imdb/unsup.jsonl.gz at a 16K vocabulary, seq 128 (README).
# Round 1 (4,000 steps each, 3 seeds): model.norm post|pre x train.lr 5e-4|1e-3|2e-3 x masking.mask_prob 0.15|0.3.
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}; OUT=${OUT:-/tmp/sweep}; W=${W:-$OUT/runs}; mkdir -p $OUT $W
DATA=${DATA:?set DATA to the prepared IMDB directory}; GLUE=${GLUE:-../shared/data/glue}
STEPS=${STEPS:-4000}; FT_EPOCHS=${FT_EPOCHS:-3}; FT_SEEDS=${FT_SEEDS:-3}; DEV=${DEV:-auto}
COMMON="--preset tiny --set train.max_steps=$STEPS --set model.dropout=0 --set model.attention_dropout=0 --set train.eval_interval=1000 --set train.eval_sequences=${EVALSEQ:-512} --set train.checkpoint_interval=100000 --set train.device=$DEV --quiet"
declare -A R
R[G_post_1e3_m40]="--set train.lr=1e-3 --set masking.mask_prob=0.4 --set train.max_steps=3250"
R[H_post_2e3_m30]="--set train.lr=2e-3 --set masking.mask_prob=0.3 --set train.max_steps=3600"
R[I_post_2e3_m40]="--set train.lr=2e-3 --set masking.mask_prob=0.4 --set train.max_steps=3250"
R[J_post_1e3_m50]="--set train.lr=1e-3 --set masking.mask_prob=0.5 --set train.max_steps=3000"
R[K_post_1e3_m30_w02]="--set train.lr=1e-3 --set masking.mask_prob=0.3 --set train.warmup_fraction=0.02 --set train.max_steps=3600"
R[L_post_1e3_m30_b32]="--set train.lr=1e-3 --set masking.mask_prob=0.3 --set train.batch_size=32 --set train.max_steps=1800"
t0=$(date +%s)
for k in "${!R[@]}"; do
  timeout ${PT_LIMIT:-200} $PY -m roberta pretrain --data $DATA --out $W/$k $COMMON ${R[$k]} > $OUT/pt_$k.log 2>&1 &
done
wait; echo "pretrain done in $(( $(date +%s) - t0 ))s"
for k in "${!R[@]}"; do echo "$k: $(tail -n 1 $OUT/pt_$k.log)"; grep eval_perplexity $W/$k/metrics.jsonl | tail -n 4 | cut -c1-160 > $OUT/evals_$k.txt; done
t0=$(date +%s)
FT="--glue sst2 --glue-dir $GLUE --max-train ${MAXTRAIN:-20000} --epochs $FT_EPOCHS --seeds $FT_SEEDS --lr-grid 1e-4,3e-4 --device $DEV"
for k in "${!R[@]}"; do
  timeout ${FT_LIMIT:-240} $PY -m roberta finetune --checkpoint $W/$k $FT --out $OUT/ft_$k > $OUT/ft_$k.log 2>&1 &
done
timeout ${FT_LIMIT:-240} $PY -m roberta finetune --checkpoint $W/G_post_1e3_m40 $FT --from-scratch --out $OUT/ft_scratch_post > $OUT/ft_scratch_post.log 2>&1 &
wait; echo "finetune done in $(( $(date +%s) - t0 ))s"
for f in $OUT/ft_*.log; do echo "$f: $(tail -n 1 $f | cut -c1-200)"; done
