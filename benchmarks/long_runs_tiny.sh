#!/bin/bash
# Tiny-world GRPO / GRTO / B-GRTO on reasonseg for 200 RL steps: 8 runs at once on one GPU machine (16 cores).
# Run from the repository root with the wheels of docs/benchmarks.md ("Commands") in .gpu/bench_wheels and
# OUT set to a folder; writes OUT/explore.json (committed: benchmarks/results/h100_tiny_long_runs.json).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/bench_wheels/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=2
C="--dataset reasonseg --steps 200 --curve-every 25 --curve-size 64 --save-steps 1000 --logging-steps 25"
run() { name=$1; shift; timeout 520 python3 -m grto_lib.train $C --output-dir /tmp/runs/$name "$@" > /tmp/runs/$name.log 2>&1; echo "$name rc=$?"; }
mkdir -p /tmp/runs
run grpo_lr5e-5 --method grpo &
run grpo_lr1e-4_kl --method grpo --policy-lr 1e-4 --beta 0.04 &
run grpo_lr2e-5 --method grpo --policy-lr 2e-5 &
run grpo_nomask --method grpo --reward-weights '{"mask": 0.0}' &
run grpo_p16 --method grpo --prompts-per-step 16 &
run grto --method grto &
run bgrto --method b-grto &
run grto_ontarget --method grto --tool-weighting on_target &
wait
python3 benchmarks/collect_runs.py /tmp/runs $OUT/explore.json
tail -n 3 /tmp/runs/*.log | cut -c1-300 > $OUT/tails.txt
