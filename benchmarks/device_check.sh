#!/usr/bin/env bash
# One prepared GPU session: CUDA smoke runs of `dgraph train` for every family, the
# CUDA-graph choice (train.compile: auto / reduce-overhead), and the step-overhead benchmark
# eager and with CUDA graphs. Sized for the ~15 minutes a lent device gives a session.
# Usage (on a CUDA machine with torch installed): bash benchmarks/device_check.sh OUT_DIR
set -uo pipefail
out=${1:-device-out}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 \
  || { echo "install failed"; tail -20 "$out/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
step() { echo "== $*"; local t0=$SECONDS; "$@" 2>&1 | tail -12; echo "   wall $((SECONDS - t0))s"; }
# A run of a zoo spec on the GPU, a few steps (teacher runs a spec needs are trained first).
run() {
  local name=$1; shift
  step dgraph train "$name" --out "$out/runs/$name${TAG:-}" --quiet --overwrite \
    --set train.device=cuda "$@"
}
short=(--set train.steps=40 --set train.eval.every=40 --set train.checkpoint_every=40)

# classic KD, precision and the compile choice (the log line says what auto picked and why)
run teacher_digits
run kd
TAG=_bf16 run kd --set train.precision=bf16
TAG=_auto run kd --set train.compile=auto
TAG=_graphs run adversarial_toy --set train.compile=reduce-overhead "${short[@]}"
run fitnet "${short[@]}"
grep -h '"compile"' "$out"/runs/kd_auto/summary.json "$out"/runs/adversarial_toy_graphs/summary.json

# the families, a few steps each
for name in progressive_toy consistency_toy dmd2_toy sds_toy vsd_toy flowmap_toy \
    dd_dm dd_gm dd_sre2l rl_distill_cartpole rl_rnd llm_kd llm_gkd; do
  run "$name" "${short[@]}"
done

# per-step overhead against the hand loop: eager, then the dgraph side as CUDA graphs
step python3 benchmarks/overhead.py --device cuda --configs tiny,adversarial_toy
step python3 benchmarks/overhead.py --device cuda --configs tiny,adversarial_toy \
  --compile reduce-overhead
step python3 benchmarks/overhead.py --device cuda --configs realistic --rounds 10
# the optimizer kernels and gradient clearing on the device (fused is dgraph's choice there too)
step python3 benchmarks/optimizer_kernels.py --device cuda --rounds 10
