#!/bin/bash
# A stronger tiny policy stand-in, and 200-step GRPO / GRTO / B-GRTO runs from it on reasonseg (docs/benchmarks.md
# section 5). Run from the repository root on a GPU machine with the wheels of docs/benchmarks.md ("Commands") in
# .gpu/bench_wheels and OUT set to a folder.
#   bash benchmarks/stronger_standin_tiny.sh build   # ~18 min on one GPU: three more stages from the committed
#                                                    # stand-in -> outputs/standins_try/e0.7 (reports in OUT)
#   bash benchmarks/stronger_standin_tiny.sh runs    # ~9 min, 8 runs at once on the CPU cores -> OUT/explore.json
#   bash benchmarks/stronger_standin_tiny.sh big     # ~8 min, GRPO with 64 prompts a step, on the GPU -> the same
# Committed output: benchmarks/results/h200_stronger_standin_build.json, h200_tiny_long_runs_stronger_standin.json,
# h200_tiny_grpo_64_prompts_stronger_standin.json.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/bench_wheels/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
S=outputs/standins_try
if [ "$1" = build ]; then
  # Each stage: batches of 128 from the weak-label mixture of every world (label_accuracy 0.7), cosine schedule.
  W='{"shapes": 0.4, "reasonseg": 0.2, "cod": 0.2, "earthreason": 0.2}'
  stage() { python3 -m grto_lib.policy_standin --stage 2 --device cuda --workers 12 --batch-size 128 --texture-rate 0 \
              --unknown-word-rate 0.25 --worlds "$W" --label-accuracy 0.7 "$@"; }
  stage --init-from data/standins/policy --out $S/c0.7 --steps 1180 --lr 3e-4 --warmup 50 > $OUT/c0.7.log 2>&1
  stage --init-from $S/c0.7 --out $S/d0.7 --steps 1179 --lr 2e-4 --warmup 20 > $OUT/d0.7.log 2>&1
  stage --init-from $S/d0.7 --out $S/e0.7 --steps 1422 --lr 2e-4 --warmup 20 > $OUT/e0.7.log 2>&1
  exit
fi
mkdir -p /tmp/runs
run() { name=$1; shift; timeout $LIMIT python3 -m grto_lib.train $C --output-dir /tmp/runs/$name "$@" > /tmp/runs/$name.log 2>&1; echo "$name rc=$?"; }
if [ "$1" = big ]; then
  export OMP_NUM_THREADS=4 LIMIT=500
  C="--policy-path $S/e0.7 --dataset reasonseg --method grpo --prompts-per-step 64 --steps 100 --curve-every 20 \
     --curve-size 64 --save-steps 1000 --logging-steps 10"
  run p64_default &
  run p64_thr_nomask --box-threshold 0.5 --reward-weights '{"mask": 0.0}' &
  run p64_thr_nomask_lr1e-4 --box-threshold 0.5 --reward-weights '{"mask": 0.0}' --policy-lr 1e-4 &
  wait
  python3 benchmarks/collect_runs.py /tmp/runs $OUT/explore.json
  exit
fi
export OMP_NUM_THREADS=2 LIMIT=520
C="--policy-path $S/e0.7 --dataset reasonseg --steps 200 --curve-every 25 --curve-size 64 --save-steps 1000 --logging-steps 25"
run grpo --method grpo &
run grpo_lr1e-5 --method grpo --policy-lr 1e-5 &
run grpo_lora1e-4 --method grpo --lora true --policy-lr 1e-4 &
run grpo_thr_nomask --method grpo --box-threshold 0.5 --reward-weights '{"mask": 0.0}' &
run grpo_p16_lr2e-5 --method grpo --prompts-per-step 16 --policy-lr 2e-5 &
run grpo_kl --method grpo --beta 0.04 &
run grto --method grto &
run bgrto --method b-grto &
wait
python3 benchmarks/collect_runs.py /tmp/runs $OUT/explore.json
