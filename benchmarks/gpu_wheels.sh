#!/usr/bin/env bash
# Downloads into .whl/ (at the repository root) the wheels benchmarks/gpu_check.sh installs on a
# GPU machine without network: what incres needs and the device image lacks. Run it from the
# repository root on a machine with PyPI access (any OS: the wheels are chosen for the device's
# CPython 3.12 on manylinux x86_64):
#
#   bash benchmarks/gpu_wheels.sh            # ml-collections, importlib-resources (~0.1 MiB)
#   GPU_WHEELS_TF=1 bash benchmarks/gpu_wheels.sh   # + tensorflow-cpu, tensorflow-datasets
#
# The device image has jax (CUDA 13), flax, optax, orbax-checkpoint, numpy, torch, absl-py,
# tensorboard, requests, pyyaml, scikit-learn, matplotlib and pillow; it lacks tensorflow-cpu,
# tensorflow-datasets and ml-collections. tensorflow-cpu 2.21.0's wheel alone is 261 MiB
# (274,000,871 bytes; its libtensorflow_cc.so.2 is 164 MiB compressed), four times the 64 MiB a
# device run may carry, so by default it is left out and gpu_check.sh skips the steps that need
# TensorFlow (the README quickstart and benchmarks/end_to_end.py: incres' input pipeline is
# tf.data). GPU_WHEELS_TF=1 adds it and tfds for a machine where that limit does not apply.
#
# .whl/ is ignored by git (.gitignore); pass it to the device run as a carried path.
set -euo pipefail

PY=${PYTHON:-python3}
DEST=${GPU_WHEELS_DIR:-.whl}
WHEELS=(ml-collections==1.1.0 importlib-resources==7.1.0)
if [[ ${GPU_WHEELS_TF:-0} == 1 ]]; then
  WHEELS+=(tensorflow-cpu==2.21.0 tensorflow-datasets==4.9.10)
fi

mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$DEST" "${WHEELS[@]}"
ls -l "$DEST"
du -sh "$DEST"
total=$(du -sb "$DEST" | cut -f1)
if ((total > 60 * 1024 * 1024)); then
  echo "WARNING: $DEST holds $((total / 1024 / 1024)) MiB: more than a 64 MiB carry allows" \
    "(with the rest of the working tree)." >&2
fi
