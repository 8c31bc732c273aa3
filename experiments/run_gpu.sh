#!/usr/bin/env bash
# The GPU-scale runs of experiments/{baseline,ablation,needle,mqar}: every job of the three sweeps at once,
# spread round-robin over the visible GPUs, each job a one-job Hydra multirun in its own sweep directory.
# Hydra's basic launcher runs a sweep's jobs one after another; these models are far too small to fill a
# GPU (a step is bound by kernel launches), so several jobs share each card and all finish together.
# The jobs are exactly those of `python -m halo_lab.train +experiment=NAME -m` (same overrides), plus the
# settings in COMMON and STEPS below; halo_lab.report then reads each experiment's folder as one sweep:
#   bash experiments/run_gpu.sh [OUT_ROOT]   then   python -m halo_lab.report OUT_ROOT/baseline  (etc.)
# Throughput and memory in such reports are measured while other jobs share the GPU: not benchmarks
# (those are in experiments/bench/).
set -u -f  # -f: no globbing, so list overrides like data.distances=[16,64] pass as written
ROOT=${1:-outputs/gpu}
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$NGPU" -ge 1 ] || { echo "run_gpu.sh: no GPU visible (nvidia-smi -L); set NGPU to run anyway"; exit 2; }
# Per-job wall-clock guard (seconds) and Lightning's own stop (max_time) a little before it, so a slow
# job still ends cleanly and writes metrics.json with the steps it reached.
JOB_TIMEOUT=${JOB_TIMEOUT:-560}
MAX_TIME=${MAX_TIME:-00:00:07:30}
DEVICE=${DEVICE:-h100}
COMMON="device=$DEVICE device.compile=false logger=csv ~hydra.callbacks.report +trainer.max_time=$MAX_TIME"
STEPS=${STEPS:-2000}
NEEDLE_STEPS=${NEEDLE_STEPS:-2500}
EXTRA=${EXTRA:-}
PYTHON=${PYTHON:-python3}
# Only the jobs whose overrides match this regex, e.g. ONLY=experiment=needle. DRY_RUN=1 lists the jobs.
ONLY=${ONLY:-.}

# SEEDS for baseline / ablation, NEEDLE_SEEDS for needle and mqar (an empty list skips them); TAG prefixes the job folders so a second
# call (other seeds) can write next to the first.
SEEDS=${SEEDS-0}
NEEDLE_SEEDS=${NEEDLE_SEEDS-0}
TAG=${TAG:-}
JOBS=()
for s in $SEEDS; do
  for arch in halo dense; do
    for n in 256 1024 4096; do
      JOBS+=("baseline|+experiment=baseline variant=$arch data.seq_len=$n trainer.max_steps=$STEPS seed=$s")
    done
    # The reference's "medium" point, about 20M parameters at 1024 tokens: halo_medium (30.7M) at 5 layers.
    JOBS+=("baseline|+experiment=baseline model=halo_medium model.num_layers=5 variant=$arch data.seq_len=1024 trainer.max_steps=$STEPS seed=$s")
  done
  for ab in full no_globals no_dilated no_random local_only; do
    for n in 256 4096; do
      JOBS+=("ablation|+experiment=ablation ablation=$ab data.seq_len=$n trainer.max_steps=$STEPS seed=$s")
    done
  done
done
for s in $NEEDLE_SEEDS; do
  for v in halo dense local_only; do
    JOBS+=("mqar|+experiment=mqar variant=$v trainer.max_steps=$NEEDLE_STEPS data.num_workers=2 seed=$s")
    JOBS+=("mqar|+experiment=mqar variant=$v data.seq_len=1024 data.batch_size=32 data.distance_buckets=[1,64,256,512,768] trainer.max_steps=$NEEDLE_STEPS data.num_workers=2 seed=$s")
    JOBS+=("needle|+experiment=needle variant=$v trainer.max_steps=$NEEDLE_STEPS data.num_workers=2 seed=$s")
    # The same task at 1024 tokens: where the sweep at 4096 is too hard to learn in these steps.
    JOBS+=("needle|+experiment=needle variant=$v data.seq_len=1024 data.batch_size=32 data.distances=[16,64,256,512,768,1000] trainer.max_steps=$NEEDLE_STEPS data.num_workers=2 seed=$s")
  done
done

SELECTED=()
for j in "${JOBS[@]}"; do [[ $j =~ $ONLY ]] && SELECTED+=("$j"); done
JOBS=("${SELECTED[@]}")
if [ -n "${DRY_RUN:-}" ]; then  # print the jobs (experiment|overrides), run nothing
  printf '%s\n' "${JOBS[@]}"
  exit 0
fi
mkdir -p "$ROOT/logs"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} WANDB_MODE=${WANDB_MODE:-disabled} PYTHONUNBUFFERED=1
pids=()
for i in "${!JOBS[@]}"; do
  exp=${JOBS[$i]%%|*}
  args=${JOBS[$i]#*|}
  gpu=$((i % NGPU))
  echo "job $i gpu $gpu: $PYTHON -m halo_lab.train -m $args $COMMON $EXTRA"
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=$gpu timeout -k 15 "$JOB_TIMEOUT" "$PYTHON" -m halo_lab.train -m $args $COMMON $EXTRA \
    "hydra.sweep.dir=$ROOT/$exp/${TAG}job$(printf %02d "$i")" >"$ROOT/logs/${TAG}job$(printf %02d "$i").log" 2>&1 &
  pids+=($!)
done
fail=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "job $i failed (exit $?): ${JOBS[$i]#*|}"; fail=$((fail + 1)); }
done
echo "run_gpu.sh: ${#JOBS[@]} jobs, $fail failed; logs in $ROOT/logs"
