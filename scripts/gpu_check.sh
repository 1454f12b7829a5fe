#!/usr/bin/env bash
# One call on a CUDA machine: build the extension in place (CUDA part forced), report backends,
# run the whole test suite (GPU cases included) and the benchmarks, and write everything to OUT.
#
#   bash scripts/gpu_check.sh OUT_DIR [extra pytest args for the benchmarks]
#
# Works offline with a preinstalled torch/triton (the lent H100: Python 3.12, torch 2.11, triton 3.6):
# nothing is downloaded; tests needing packages that machine lacks (hydra, trimesh, pyrender, ...)
# skip themselves.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: gpu_check.sh OUT_DIR}
shift || true
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0+PTX}
export VPOG_BUILD_CUDA=${VPOG_BUILD_CUDA:-1}
export MAX_JOBS=${MAX_JOBS:-16}
# The lent machine has no hydra-core/omegaconf: with .carry/whl (scripts/gpu_demo_bundle.sh) carried
# along, install them aside so the config tests run too.
if ! python -c "import hydra, omegaconf" 2>/dev/null && ls .carry/whl/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/vpog_site .carry/whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/vpog_site"
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo +dirty)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
} | tee "$OUT/env.txt"

echo "== build vpog._C in place" | tee "$OUT/build.log"
t0=$(date +%s)
python setup.py build_ext --inplace >>"$OUT/build.log" 2>&1
build_rc=$?
echo "build rc=$build_rc in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/build.log"
tail -5 "$OUT/build.log"

python -m vpog.info | tee "$OUT/info.txt"
python -m vpog.info --json > "$OUT/info.json"

echo "== tests"
python -m pytest tests -q -rfE --junitxml="$OUT/tests.xml" -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -30
tests_rc=${PIPESTATUS[0]}

echo "== benchmarks"
python -m pytest benchmarks -q -p no:cacheprovider --benchmark-json="$OUT/benchmarks.json" \
  --benchmark-columns=mean,stddev,min,rounds --benchmark-sort=name "$@" 2>&1 | tee "$OUT/benchmarks.log" | tail -80
bench_rc=${PIPESTATUS[0]}

echo "build_rc=$build_rc tests_rc=$tests_rc bench_rc=$bench_rc" | tee "$OUT/summary.txt"
[ "$build_rc" -eq 0 ] && [ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
