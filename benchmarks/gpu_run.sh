#!/usr/bin/env bash
# The project's GPU checks as one prepared run (a lent GPU is held for minutes, not hours).
#
#   bash benchmarks/gpu_run.sh            # MNIST in .data/mnist (git-ignored), results in $OUT
#
# Stages, most important first, each under its own time limit and all under DEADLINE seconds
# (a stage that would not fit is skipped and says so):
#   smoke        versions, the shipped checkpoint's GradCAM, a tiny train -> checkpoint -> reload
#   bench_xai    every method on 10,000 test digits beside Captum / pytorch-grad-cam on the GPU
#   bench_train  training seconds after compilation to 99.0% / 99.5% (several configs, reference)
#   cold_train   `python train_mnist.py` from a cold process until its test accuracy is >= 99.0%
#   evaluate     `python evaluate_xai.py` with its defaults
#   chunks       our methods at other call sizes
#   full_train   the default 15-epoch run
#   overhead     compiled work alone against the whole explanation call (bench_xai_overhead.py)
#   cold_variants  where a cold train_mnist.py's seconds go: compile log, autotuning off,
#                steps a call, a persistent compilation cache (cold, then warm)
#   evaluate_cache evaluate_xai.py twice with a persistent compilation cache
# STAGES picks and orders them (default: the first seven); CAPTUM_ARGS adds bench_xai options.
# Captum, pytorch-grad-cam and ttach are not in the GPU image: they come as wheels in .whl/
# (see README_MNIST_XAI.md, "Benchmarks"); the image's flax/optax/orbax are used unless the
# smoke stage fails with them, then the pinned wheels in .whl/ are tried.
set -u
OUT=${OUT:-outputs/gpu}
DATA=${DATA:-.data/mnist}
DEADLINE=${DEADLINE:-560}
STAGES=${STAGES:-"smoke bench_xai bench_train cold_train evaluate chunks full_train"}
CAPTUM_ARGS=${CAPTUM_ARGS:-"--batch-size 1000"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg TF_CPP_MIN_LOG_LEVEL=2
exec > >(tee -a "$OUT/gpu.log") 2>&1
T0=$(date +%s)
PY=${PY:-python3}
export OUT DATA PY CAPTUM_ARGS

stage() {  # stage NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 left; shift 2
  left=$(( DEADLINE - ($(date +%s) - T0) - 5 ))
  (( limit > left )) && limit=$left
  if (( limit < 15 )); then echo "=== $name: skipped, ${left}s left"; return 1; fi
  echo "=== $name (t=$(( $(date +%s) - T0 ))s, limit ${limit}s): $*"
  local s=$(date +%s%N)
  timeout "$limit" bash -c '"$@"' _ "$@"; local rc=$?  # bash -c: stages may be functions (export -f)
  echo "=== $name: rc=$rc, $(( ($(date +%s%N) - s) / 1000000 )) ms"
  return $rc
}

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
mkdir -p /tmp/site && $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
  .whl/captum-*.whl .whl/grad_cam-*.whl .whl/ttach-*.whl && export PYTHONPATH=/tmp/site
$PY -c "import importlib.metadata as md, jax; print('jax', jax.__version__, jax.devices(), '|', ', '.join(
  f'{p} {md.version(p)}' for p in ('flax', 'optax', 'orbax-checkpoint', 'torch', 'captum', 'grad-cam')))"

smoke() {
  $PY - <<'EOF'
import tempfile, time
import jax, numpy as np
from mnist_checkpoint import load_checkpoint
from mnist_data import MNIST, load_sample_digits
from mnist_xai_visualizations import GradCAM
import train_mnist as T
params, batch_stats, model, meta = load_checkpoint(None)
digits = load_sample_digits()
heatmap, pred, score = GradCAM(model).compute_gradcam(params, batch_stats, digits.images[0] / 255.0)
print("GradCAM", heatmap.shape, float(heatmap.min()), float(heatmap.max()), "pred", pred, "label",
      int(digits.labels[0]), "score", round(score, 3))
small = MNIST(digits, digits, digits, "sample")
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    r = T.train_and_evaluate(T.TrainConfig(epochs=2, batch_size=32), d, small, progress=False, log=print)
    p2, b2, m2, _ = load_checkpoint(d)
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(p2),
                                                   jax.tree_util.tree_leaves(r["state"]["params"])))
    print(f"tiny train {time.perf_counter() - t:.1f} s, accuracy {r['test_accuracy']:.3f}, reload equal: {same}")
EOF
}

bench_xai() {
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.4 $PY benchmarks/bench_xai.py --data-dir "$DATA" --num-images 10000 \
    --captum-max-images 2000 $CAPTUM_ARGS --json "$OUT/bench_xai.json"
}

bench_train() {
  $PY benchmarks/bench_train.py --data-dir "$DATA" --json "$OUT/bench_train.json" --after-compile \
    "batch=128;batch=128,epochs=1,augment=0;batch=256,epochs=1,augment=0;batch=512,epochs=2,augment=0,lr=0.01;batch=256,epochs=1,augment=0,dtype=bfloat16;ref=1,lr=0.001"
}

cold() {  # cold LABEL [ENV=VALUE...] -- TRAIN_ARGS...: wall time of a fresh train_mnist.py process
  local label=$1 envs=() s; shift
  while [[ $# -gt 0 && $1 != -- ]]; do envs+=("$1"); shift; done; shift
  s=$(date +%s%N)
  env "${envs[@]}" $PY train_mnist.py --data-dir "$DATA" --workdir "/tmp/cold_$label" --no-progress "$@" 2>&1 \
    | grep -E "epoch|test_accuracy|Finished XLA compilation of .* in ([1-9]|0\.[1-9])"
  echo "cold [$label] train_mnist.py $*: $(( ($(date +%s%N) - s) / 1000000 )) ms wall"
}

cold_train() {
  cold e1 -- --epochs 1
  grep -q '"test_accuracy": 0.99[0-9]' /tmp/cold_e1/metrics.json 2>/dev/null || cold e2 -- --epochs 2
}

cold_variants() {
  $PY -c "import time; t = time.perf_counter(); import train_mnist; print(f'import train_mnist: {time.perf_counter() - t:.2f} s')"
  cold plain JAX_LOG_COMPILES=1 -- --epochs 1 --no-augment
  cold autotune0 XLA_FLAGS=--xla_gpu_autotune_level=0 -- --epochs 1 --no-augment
  cold spc1 -- --epochs 1 --no-augment --steps-per-call 1
  cold cache_first JAX_COMPILATION_CACHE_DIR=/tmp/jcache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 -- --epochs 1 --no-augment
  cold cache_warm JAX_COMPILATION_CACHE_DIR=/tmp/jcache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 -- --epochs 1 --no-augment
}

evaluate() {
  local s=$(date +%s%N)
  $PY evaluate_xai.py --data-dir "$DATA" --out /tmp/eval "$@"
  echo "evaluate_xai.py $*: $(( ($(date +%s%N) - s) / 1000000 )) ms wall"
  cp /tmp/eval/results.md "$OUT/evaluate_results.md"
}

evaluate_cache() {
  export JAX_COMPILATION_CACHE_DIR=/tmp/jcache_eval JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
  evaluate | grep -vE "^\|"
  evaluate | grep -vE "^\|"
}

overhead() {
  $PY benchmarks/bench_xai_overhead.py --data-dir "$DATA" --num-images 10000 \
    --methods gradcam,saliency,integrated_gradients,occlusion
  $PY benchmarks/bench_xai_overhead.py --data-dir "$DATA" --num-images 10000 --methods saliency \
    --chunk-sizes 1024,10000 | grep "^| saliency"
}

chunks() {  # call sizes in digits: IG/SmoothGrad x50/x25 images each, Occlusion x~169, Score-CAM x128
  for spec in "integrated_gradients 80" "integrated_gradients 400" "smoothgrad 160" "smoothgrad 800" \
              "occlusion 16" "occlusion 256" "scorecam 256"; do
    set -- $spec
    $PY benchmarks/bench_xai.py --data-dir "$DATA" --num-images 10000 --skip-captum --methods "$1" \
      --chunk-size "$2" 2>&1 | grep -E '^\| [a-z_+]+ \|' | sed "s/^/chunk $2 /"
  done
}

full_train() {
  $PY train_mnist.py --data-dir "$DATA" --workdir /tmp/full --no-progress | tail -4
  cp /tmp/full/metrics.json "$OUT/full_train_metrics.json"
}

export -f smoke bench_xai bench_train cold cold_train cold_variants evaluate evaluate_cache overhead chunks full_train
declare -A LIMIT=([smoke]=90 [bench_xai]=170 [bench_train]=130 [cold_train]=90 [evaluate]=75 [chunks]=90
                  [full_train]=60 [overhead]=90 [cold_variants]=110 [evaluate_cache]=120)
for name in $STAGES; do
  stage "$name" "${LIMIT[$name]}" "$name"
  rc=$?
  if [[ $name == smoke && $rc -ne 0 && -z ${PINNED:-} ]]; then
    echo "smoke failed with the image's packages; trying the pinned flax/optax/orbax wheels"
    mkdir -p /tmp/pinned && $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/pinned \
      .whl/flax-*.whl .whl/optax-*.whl .whl/orbax_checkpoint-*.whl && export PYTHONPATH=/tmp/pinned:/tmp/site PINNED=1
    stage smoke_pinned 90 smoke || { echo "smoke failed twice; stopping"; exit 1; }
  fi
done
echo "=== done at t=$(( $(date +%s) - T0 ))s"
