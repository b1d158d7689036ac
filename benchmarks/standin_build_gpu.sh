#!/bin/bash
# The policy stand-in on a GPU machine, and RL variants from it. Run from the repository root with the wheels of
# docs/benchmarks.md ("Commands") in .gpu/bench_wheels and OUT set to a folder. On GPU 0: the committed recipe,
# `python -m grto_lib.tinyworld.standins --only policy --force` (-> OUT/standins.tgz), then the runs listed in $SWEEP (a file
# of "name: flags" lines) from it. On the last GPU at the same time: (FAST_PATH=1) the fast path's supervised step,
# stock vs fast (-> OUT/fast_path_step.json), then `python -m grto_lib.tinyworld.policy_standin` with the overrides in
# $VARIANT (-> OUT/variant.tgz) and the runs of $SWEEP_VARIANT from it. Every run is cut at DEADLINE seconds after
# the start; OUT/sweep.json holds every run's learning curve, training log and test scores.
start=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/bench_wheels/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
last=$(( $(nvidia-smi -L | wc -l) - 1 )); mkdir -p /tmp/runs
sweep() {  # GPU, policy folder, sweep file: one run per line, one CPU thread each, all at once
  left=$(( ${DEADLINE:-540} - (SECONDS - start) ))
  while IFS=: read -r name flags; do
    [ -z "$name" ] && continue
    CUDA_VISIBLE_DEVICES=$1 OMP_NUM_THREADS=1 timeout $left python3 -m grto_lib.train --policy-path $2 \
      --curve-every 10 --curve-size 64 --save-steps 1000 --logging-steps 1 --output-dir /tmp/runs/$name $flags \
      > /tmp/runs/$name.log 2>&1 &
  done < $3
  wait
}
(
  [ -n "$FAST_PATH" ] && CUDA_VISIBLE_DEVICES=$last python3 benchmarks/fast_path_speed.py supervised --device cuda \
    --out $OUT/fast_path_step.json > $OUT/fast_path.log 2>&1
  if [ -n "$VARIANT" ]; then
    CUDA_VISIBLE_DEVICES=$last timeout $(( ${DEADLINE:-540} - 60 )) python3 -m grto_lib.tinyworld.policy_standin \
      --out /tmp/variant --workers 14 --report $OUT/variant.json $VARIANT > $OUT/variant.log 2>&1 \
      && tar czf $OUT/variant.tgz -C /tmp variant && [ -n "$SWEEP_VARIANT" ] && sweep $last /tmp/variant $SWEEP_VARIANT
  fi
) &
python3 -m grto_lib.tinyworld.standins --only policy --force > $OUT/build.log 2>&1
tar czf $OUT/standins.tgz data/standins
[ -n "$SWEEP" ] && sweep 0 data/standins/policy $SWEEP
wait
python3 benchmarks/collect_runs.py /tmp/runs $OUT/sweep.json > $OUT/collect.txt
