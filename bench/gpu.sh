#!/usr/bin/env bash
# flaxbert vs transformers (PyTorch) pretraining step on one NVIDIA GPU (H100/H200), in one command:
#
#   bash bench/gpu.sh
#
# Runs bench/compare_train_step.py (both frameworks in one process, alternating rounds) for BERT
# base and large at seq 128 and 512, bfloat16 compute, torch on cuda, and prints each run's table
# (seq/s per side, their ratio, MFU against the card's vendor bf16 peak and against the bf16
# matmul peak measured in the same run, compile time), after bench/gpu_attention.py (flaxbert's
# attention without dropout, cuDNN flash attention, against a float32 reference and timed
# against XLA's: a correctness check, so it goes first). Large runs with --scan_layers (one
# layer's program: on an H100 the unrolled base took 43-47 s to compile, 2026-11-27), and a
# compilation cache shares programs between runs. Each run is capped; the caps add up to 8 minutes.
# PY names the Python (default .venv/bin/python; `make install` runs only when that is missing):
# one whose jax sees the GPU (jax's CUDA plugin) and whose torch is a CUDA build, e.g. a GPU
# image's python3 with flaxbert's other dependencies on PYTHONPATH; it says so otherwise.
# JSON goes to $OUT (when set, e.g. on a lent device machine) or bench/out/; copy the figures, the
# date and the card into bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PY:-.venv/bin/python}"
OUT_DIR="${OUT:-bench/out}"
ROUNDS="${ROUNDS:-4}"
STEPS="${STEPS:-8}"
mkdir -p "$OUT_DIR"

if [ "$PY" = .venv/bin/python ] && [ ! -x "$PY" ]; then
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
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/flaxbert_gpu_sh_jax_cache}"
status=0
echo "== attention: cuDNN flash attention (no dropout) against float32 XLA, and timed against XLA"
timeout 100 "$PY" bench/gpu_attention.py --out "$OUT_DIR/gpu_attention.json" \
  || { status=$?; echo "gpu.sh: gpu_attention.py failed or hit its 100 s cap (exit $status)" >&2; }
# seq, SIZE:BATCH, extra flags (- for none), JSON name, cap in seconds. Base takes 32k tokens a step
# at seq 128 (NVIDIA's phase-1 batch per GPU is 256 too) and 16k at seq 512; large half as many.
# Caps: on an H100 (2026-11-27) gpu_attention.py took 85 s and the whole script 6.5 minutes.
for run in "128 base:256 - seq128_base 110" "128 large:128 --scan_layers seq128_large 100" \
           "512 base:32 - seq512_base 85" "512 large:16 --scan_layers seq512_large 85"; do
  set -- $run
  extra=(); [ "$3" = - ] || extra=("$3")
  echo "== seq $1: $2 (bfloat16, $ROUNDS rounds x $STEPS steps per side${extra[*]:+, ${extra[*]}})"
  timeout "$5" "$PY" bench/compare_train_step.py --configs "$2" --seq "$1" --dtype bfloat16 \
      --device cuda --rounds "$ROUNDS" --steps "$STEPS" "${extra[@]}" \
      --out "$OUT_DIR/compare_train_step_gpu_$4.json" \
    || { status=$?; echo "gpu.sh: seq $1 $2 run failed or hit its ${5}s cap (exit $status)" >&2; }
done
date -u +"measured %Y-%m-%d %H:%M UTC"
exit "$status"
