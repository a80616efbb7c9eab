#!/usr/bin/env bash
# Set up a fresh Debian machine for napari-instseg: the system libraries that
# napari's Qt window needs (and Xvfb for machines without a screen), then a
# virtual environment in .venv with the plugin, torch and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES="xvfb xauth libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3
  libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0
  libxcb-image0 libxcb-render-util0 libxcb-randr0 libxcb-shape0 libxcb-xfixes0 libxcb-xkb1
  libx11-xcb1"
if command -v apt-get >/dev/null; then
  missing=$(for p in $DEBIAN_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision pinned to the pair this project is tested with; a plain
# CUDA-enabled install including triton, as users get it.
# scripts/constraints.txt: upper bounds where the registry lacks a release's companion.
.venv/bin/python -m pip install -q -c scripts/constraints.txt \
  "torch==2.14.1" "torchvision==0.29.1" -e ".[test]"
echo "napari-instseg is installed in .venv"
