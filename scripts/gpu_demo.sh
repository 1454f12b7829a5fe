#!/usr/bin/env bash
# Issue 9's demonstration on a GPU machine: a short training run on the built-in synthetic set (carried
# in pre-rendered, small: data=synthetic_small), then evaluation on its held-out objects against
# both baselines (nearest template, untrained). Everything lands in OUT_DIR: train.log, eval.log, the
# run folder (checkpoints, metrics.jsonl, tensorboard/) and the report (report.md, metrics.json, plots).
#
#   bash scripts/gpu_demo.sh OUT_DIR [training overrides, e.g. model=vpog_vitb optim.max_steps=4000]
#   VPOG_DEMO_EVAL="eval.max_queries_per_object=5 inference.num_candidates=42" bash scripts/gpu_demo.sh ...
#                                          (extra evaluation overrides; VPOG_DEMO_RUN names the run)
#
# Needs data_cache/synthetic_small and, where hydra-core/omegaconf are missing (the lent H100/H200),
# .carry/whl: `bash scripts/gpu_demo_bundle.sh` makes both on a machine that can render. Builds
# vpog._C in place when it is not there (the fast paths; without it the reference paths run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_demo.sh OUT_DIR [training overrides]}
shift || true
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if ! python -c "import hydra, omegaconf" 2>/dev/null; then
  if ! ls .carry/whl/*.whl >/dev/null 2>&1; then
    echo "hydra-core/omegaconf are missing and .carry/whl has no wheels: run scripts/gpu_demo_bundle.sh first" >&2
    exit 2
  fi
  python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/vpog_site .carry/whl/*.whl || exit 2
  export PYTHONPATH="$PYTHONPATH:/tmp/vpog_site"
fi
if [ ! -f data_cache/synthetic_small/synthesis.json ]; then
  echo "data_cache/synthetic_small is missing: run scripts/gpu_demo_bundle.sh and carry it" >&2
  exit 2
fi
if ! ls vpog/_C*.so >/dev/null 2>&1; then
  echo "== build vpog._C in place"
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0+PTX} python setup.py build_ext --inplace >"$OUT/build.log" 2>&1 \
    || echo "build failed (see $OUT/build.log): the reference paths run instead"
fi
RUN=${VPOG_DEMO_RUN:-gpu_demo}
{ date -u +%Y-%m-%dT%H:%M:%SZ; git rev-parse --short HEAD 2>/dev/null; nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null
  python -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])"; } | tee "$OUT/env.txt"

echo "== train"
start=$(date +%s)
python -m vpog.train data=synthetic_small output_dir="$OUT/runs" run_name="$RUN" machine.num_workers=8 \
  data.batch_size=16 optim.max_steps=2000 optim.warmup_steps=100 checkpoint.every_steps=500 \
  log.every_steps=50 log.image_every_steps=500 log.val_every_steps=500 log.val_batches=4 log.progress_bar=false \
  "$@" 2>&1 | tee "$OUT/train.log"
train_rc=${PIPESTATUS[0]}
echo "training: rc=$train_rc in $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
[ "$train_rc" -eq 0 ] || exit "$train_rc"

echo "== evaluate"
python -m vpog.evaluate checkpoint="$OUT/runs/$RUN" output_dir="$OUT/eval" name="$RUN" \
  eval.max_queries_per_object=50 eval.num_workers=8 eval.progress=false ${VPOG_DEMO_EVAL:-} 2>&1 | tee "$OUT/eval.log"
exit "${PIPESTATUS[0]}"
