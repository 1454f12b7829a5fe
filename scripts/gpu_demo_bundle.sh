#!/usr/bin/env bash
# Prepare, on a machine with the rendering stack (this CPU one), what scripts/gpu_demo.sh needs on the
# lent GPU machine, which has no renderer and no hydra-core/omegaconf and takes at most 64 MiB along:
#   .carry/whl/                 pure-Python wheels of the config stack (hydra-core, omegaconf, antlr4 4.9.3)
#   data_cache/synthetic_small/   the built-in synthetic set rendered small (data=synthetic_small: 320 x 240 images, 224 x 168 templates)
# Then, with the device tool: run "bash scripts/gpu_demo.sh \$OUT" carrying [".carry", "data_cache/synthetic_small"].
#
#   bash scripts/gpu_demo_bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .carry/whl
rm -f .carry/whl/*.whl
python -m pip wheel -q --no-deps -w .carry/whl "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)" \
  "antlr4-python3-runtime==$(version antlr4-python3-runtime)"

# The trainer's own settings for data=synthetic_small, so the set matches what training expects. A file,
# not stdin: the renderer's worker processes (spawn) re-import the main module.
script=$(mktemp --suffix=.py)
trap 'rm -f "$script"' EXIT
cat >"$script" <<'PY'
import logging

from vpog.cli import load_config
from vpog.data.synthesize import ensure_synthetic_dataset

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config("train", ["data=synthetic_small"])
    print("synthetic set:", ensure_synthetic_dataset(cfg.data.synthesize))
PY
python "$script"
du -sh .carry data_cache/synthetic_small
