#!/usr/bin/env bash
# The notebooks on a simulated Colab runtime: a fresh Python 3.12 virtualenv with what Colab
# preinstalls (the full `tensorflow`, plain `jax`, numpy, matplotlib, scikit-learn, pillow), then
# notebooks/colab_check.py runs each notebook with SMOKE = True: the setup cell clones this
# repository's committed HEAD and installs what is missing, as it does on Colab. Not part of the
# test suite (it downloads about 1 GB and takes about 10 minutes on 2 cores). From the repository
# root:
#
#   bash notebooks/colab_check.sh
#
# Environment: COLAB_PYTHON (the interpreter for the venv, default python3.12; with pyenv, set
# PYENV_VERSION=3.12.1), COLAB_VENV (default /tmp/colab312; reused when it exists: delete it for a
# fresh runtime), COLAB_WORK (scratch, default a new temporary directory), COLAB_TF / COLAB_JAX /
# COLAB_NUMPY (the preinstalled versions, default 2.20.0 / 0.7.2 / 2.0.2: a TensorFlow and a jax
# older than incres requires, so the setup cell's upgrade path runs; set COLAB_TF=2.21.0 and a
# newer COLAB_JAX for a runtime that already satisfies them).
set -euo pipefail

[[ -f setup.cfg && -d notebooks ]] || {
  echo "run from the repository root" >&2
  exit 2
}
ROOT=$PWD
VENV=${COLAB_VENV:-/tmp/colab312}
WORK=${COLAB_WORK:-$(mktemp -d /tmp/colab_check.XXXXXX)}
if [[ ! -x $VENV/bin/python ]]; then
  "${COLAB_PYTHON:-python3.12}" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "tensorflow==${COLAB_TF:-2.20.0}" \
    "jax==${COLAB_JAX:-0.7.2}" "numpy==${COLAB_NUMPY:-2.0.2}" matplotlib scikit-learn pillow \
    requests pyyaml ipykernel nbclient nbformat
fi
if [[ -n $(git status --porcelain --untracked-files=no) ]]; then
  echo "note: uncommitted changes are not in the clone the notebooks install from" >&2
fi
echo "venv $VENV, scratch $WORK, cloning $ROOT at $(git rev-parse --short HEAD)"
"$VENV/bin/python" notebooks/colab_check.py --repo="file://$ROOT" --work="$WORK"
