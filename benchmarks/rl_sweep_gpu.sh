#!/bin/bash
# RL variants from a stand-in policy, side by side on a GPU machine: 12 runs per GPU, one CPU thread each.
# Run from the repository root with the wheels of docs/benchmarks.md ("Commands") in .gpu/bench_wheels, OUT set
# to a folder, POLICY set to the stand-in's folder and SWEEP to a file of lines "name: flags" (one run each).
# Writes OUT/sweep.json (every run's curve, training log and test scores) and OUT/tails.txt.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/bench_wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
gpus=$(nvidia-smi -L | wc -l); k=0; mkdir -p /tmp/runs
while IFS=: read -r name flags; do
  [ -z "$name" ] && continue
  CUDA_VISIBLE_DEVICES=$(( k % gpus )) timeout ${LIMIT:-500} python3 -m grto_lib.train --policy-path $POLICY \
    --curve-every 10 --curve-size 64 --save-steps 1000 --logging-steps 1 --output-dir /tmp/runs/$name $flags \
    > /tmp/runs/$name.log 2>&1 &
  k=$((k + 1))
done < $SWEEP
wait
python3 benchmarks/collect_runs.py /tmp/runs $OUT/sweep.json > $OUT/collect.txt
tail -n 2 /tmp/runs/*.log | cut -c1-300 > $OUT/tails.txt
