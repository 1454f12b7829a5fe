#!/usr/bin/env bash
# Install vpog and everything it needs on a fresh Debian/Ubuntu machine with Python >= 3.10 and pip.
#   - system libraries for headless rendering (Mesa EGL) used by the synthetic-data renderer;
#   - torch (CPU build 2.13.0 by default; set VPOG_TORCH="torch==X" to choose another build);
#   - vpog itself, editable, with the C++ extension compiled against that torch.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
if command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends libegl1 libgl1 libegl-mesa0 libgles2 libglvnd0 \
    libopengl0 libglx0 >/dev/null
else
  echo "install.sh: no apt-get; install Mesa EGL (libEGL, libGL) with your package manager" >&2
fi

PY=${PYTHON:-python3}
$PY -m pip install -q --upgrade "setuptools>=69" wheel
$PY -m pip install -q "${VPOG_TORCH:-torch==2.13.0}"
$PY -m pip install -q --no-build-isolation -e ".[dev]"
$PY -m vpog.info
