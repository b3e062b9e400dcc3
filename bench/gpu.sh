#!/usr/bin/env bash
# flaxbert vs transformers (PyTorch) pretraining step on one NVIDIA GPU (H100/H200), in one command:
#
#   bash bench/gpu.sh
#
# Runs bench/compare_train_step.py (both frameworks in one process, alternating rounds) for BERT
# base and large at seq 128 and 512, bfloat16 compute, torch on cuda, and prints each run's table
# (seq/s per side, their ratio, MFU against the card's vendor bf16 peak, compile time). About
# 5-7 minutes on an H100 once .venv exists; each run is capped so the whole stays under 8.
# Installs nothing beyond `make install` (run only when .venv is missing); it needs a .venv whose
# jax sees the GPU (jax's CUDA plugin) and whose torch is a CUDA build, and says so otherwise.
# JSON goes to $OUT (when set, e.g. on a lent device machine) or bench/out/; copy the figures, the
# date and the card into bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
OUT_DIR="${OUT:-bench/out}"
ROUNDS="${ROUNDS:-4}"
STEPS="${STEPS:-8}"
CAP_S="${CAP_S:-225}"  # per run (seq 128, seq 512)
mkdir -p "$OUT_DIR"

if [ ! -x "$PY" ]; then
  echo "== .venv missing: make install"
  make install
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if ! "$PY" - <<'EOF'
import sys
import jax
import torch
problems = []
if jax.default_backend() != "gpu":
  problems.append(f"jax {jax.__version__} runs on {jax.default_backend()!r}, not the GPU: the .venv needs jax's "
                  f"CUDA plugin (pip install 'jax[cuda12]=={jax.__version__}'), which setup.py does not install")
if not torch.cuda.is_available():
  problems.append(f"torch {torch.__version__} sees no CUDA device (a CPU-only build?)")
for p in problems:
  print("gpu.sh:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
then
  exit 2
fi

export XLA_PYTHON_CLIENT_PREALLOCATE=false  # jax and torch share the card
status=0
for run in "128 base:64,large:32" "512 base:16,large:8"; do
  set -- $run
  echo "== seq $1: $2 (bfloat16, $ROUNDS rounds x $STEPS steps per side)"
  timeout "$CAP_S" "$PY" bench/compare_train_step.py --configs "$2" --seq "$1" --dtype bfloat16 \
      --device cuda --rounds "$ROUNDS" --steps "$STEPS" --out "$OUT_DIR/compare_train_step_gpu_seq$1.json" \
    || { status=$?; echo "gpu.sh: seq $1 run failed or hit the ${CAP_S}s cap (exit $status)" >&2; }
done
date -u +"measured %Y-%m-%d %H:%M UTC"
exit "$status"
