#!/usr/bin/env bash
# One prepared GPU session: CUDA smoke runs of `dgraph train` and the benchmark scripts.
# Usage (on a CUDA machine with torch installed): bash benchmarks/device_check.sh OUT_DIR
set -uo pipefail
out=${1:-device-out}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 \
  || { echo "install failed"; tail -20 "$out/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
step() { echo "== $*"; local t0=$SECONDS; "$@" 2>&1 | tail -25; echo "   wall $((SECONDS - t0))s"; }
step dgraph train teacher_digits --out "$out/runs/teacher_digits" --quiet --set train.device=cuda
step dgraph train kd --out "$out/runs/kd" --quiet --set train.device=cuda
step dgraph train kd --out "$out/runs/kd_bf16" --quiet --set train.device=cuda \
  --set train.precision=bf16
step dgraph train adversarial_toy --out "$out/runs/adversarial_toy" --quiet \
  --set train.device=cuda
step dgraph train fitnet --out "$out/runs/fitnet" --quiet --set train.device=cuda
for script in benchmarks/overhead.py benchmarks/teacher_cache.py; do
  [ -f "$script" ] && step python3 "$script" --device cuda
done
