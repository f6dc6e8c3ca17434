#!/usr/bin/env bash
# Set up fewlabels in ./.venv (idempotent), then run the demo or the tests.
#   bash scripts/bootstrap.sh demo [demo options]
#   bash scripts/bootstrap.sh test [pytest options]
# Works on a fresh machine with Python 3.11+ and no torch, and again where it already ran.
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-}"
case "$what" in
  demo|test) shift ;;
  *) echo "usage: bash scripts/bootstrap.sh demo|test [options]" >&2; exit 2 ;;
esac

python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python="$candidate"; break
    fi
  done
fi
if [ -z "$python" ]; then
  echo "bootstrap: Python 3.11 or newer is needed; install it or set PYTHON" >&2; exit 2
fi

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $python"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

# torch first, pinned: an unpinned install (or one asked for by a dependency) would fetch a
# CUDA build of several GB; this pin takes the CPU build where one is provided locally.
if ! .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
  echo "bootstrap: installing torch ${FEWLABELS_TORCH:-torch==2.13.0}"
  "${pip[@]}" install "${FEWLABELS_TORCH:-torch==2.13.0}"
fi

stamp=.venv/.fewlabels-installed
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ] ||
   ! .venv/bin/python -c 'import fewlabels' >/dev/null 2>&1; then
  echo "bootstrap: installing fewlabels and its dependencies into .venv"
  "${pip[@]}" install -e ".[dev]"
  echo "$wanted" > "$stamp"
fi

if [ "$what" = demo ]; then
  # The full Fashion-MNIST from Debian's package when we can have it; the demo falls back to
  # the sample inside the package otherwise.
  if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] &&
     command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Debian's dataset-fashion-mnist"
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 ||
      echo "bootstrap: could not install dataset-fashion-mnist; the demo uses the sample"
  fi
  exec .venv/bin/fewlabels demo "$@"
fi
exec .venv/bin/python -m pytest "$@"
