"""Model FLOPs of a BERT training step, chip peaks, and model FLOPs utilisation (MFU)."""
import functools
import re
import time

import jax
import jax.numpy as jnp

from flaxbert.models.config import BertConfig


def bert_flops_per_sequence(config: BertConfig, seq_len: int, num_masked: int | None,
                            with_nsp: bool = True, training: bool = True) -> float:
  """Model FLOPs to process one sequence of `seq_len` tokens (a multiply-add counts as 2 FLOPs).

  With H = hidden_size, I = intermediate_size, V = vocab_size, L layers, T = seq_len and P the
  positions the MLM head runs at (num_masked, or T when None):

    per layer   2·T·(4·H² + 2·H·I)   Q, K, V and output projections; the two feed-forward matmuls
              + 2·2·T²·H             attention scores Q·Kᵀ and the weighted sum of V (all heads)
    MLM head    P·2·(H² + H·V)       transform dense + tied decoder, at the predicted positions only
    NSP         2·(H² + 2·H)         pooler dense + the 2-way classifier (with_nsp)
    training    3 × forward          the backward pass costs two forwards (inputs' and weights' grads)

  This is the standard "6·N·T" accounting (Kaplan et al. 2020, "Scaling Laws for Neural Language
  Models", §2.1: C ≈ 6·N per token) with attention included as in PaLM's MFU (Chowdhery et al.
  2022, App. B: 6·N + 12·L·H·T per token): the projections give 2·N_layer·T forward with N_layer =
  4H² + 2HI the layer's matmul weights. Embedding lookups (gathers), LayerNorms, softmax,
  activations, biases and dropout are not counted; nor is recomputation. MFU against these FLOPs
  is therefore comparable across implementations: an implementation that computes the MLM logits
  at all T positions does more work for the same model FLOPs at P = num_masked.
  """
  if seq_len < 1:
    raise ValueError(f"seq_len must be positive, got {seq_len}")
  if num_masked is not None and not 0 <= num_masked <= seq_len:
    raise ValueError(f"num_masked must be in [0, seq_len={seq_len}], got {num_masked}")
  h, i, v, t = config.hidden_size, config.intermediate_size, config.vocab_size, seq_len
  layer = 2 * t * (4 * h * h + 2 * h * i) + 2 * 2 * t * t * h
  positions = t if num_masked is None else num_masked
  forward = config.num_hidden_layers * layer + positions * 2 * (h * h + h * v)
  if with_nsp:
    forward += 2 * (h * h + 2 * h)
  return float(3 * forward if training else forward)


# Dense (no structured sparsity) peak FLOP/s per chip, from the vendors' datasheets. Keys of the
# inner dicts name the matmul arithmetic: "float32" is IEEE fp32 (CUDA cores), "tensorfloat32"
# NVIDIA's TF32 tensor-core mode. A missing entry (TPU float32, any CPU) means "measure it".
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bfloat16": 989e12, "float16": 989e12, "tensorfloat32": 494.5e12, "float32": 67e12},
    "H100 PCIe": {"bfloat16": 756e12, "float16": 756e12, "tensorfloat32": 378e12, "float32": 51e12},
    "H100 NVL": {"bfloat16": 835e12, "float16": 835e12, "tensorfloat32": 417.5e12, "float32": 60e12},
    "H200": {"bfloat16": 989e12, "float16": 989e12, "tensorfloat32": 494.5e12, "float32": 67e12},  # SXM
    "H200 NVL": {"bfloat16": 835e12, "float16": 835e12, "tensorfloat32": 417.5e12, "float32": 60e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "tensorfloat32": 156e12, "float32": 19.5e12},
    "TPU v4": {"bfloat16": 275e12},
    "TPU v5e": {"bfloat16": 197e12},
    "TPU v5p": {"bfloat16": 459e12},
    "TPU v6e": {"bfloat16": 918e12},
}

# jax's `device.device_kind` (lower-cased) → PEAK_FLOPS key; the first match wins, so the more
# specific patterns come first. E.g. "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe",
# "NVIDIA A100-SXM4-80GB", "TPU v4", "TPU v5 lite" (v5e), "TPU v5" (v5p), "TPU v6 lite" (v6e).
_DEVICE_KINDS: tuple[tuple[str, str], ...] = (
    (r"h100.*pcie", "H100 PCIe"),
    (r"h100.*nvl", "H100 NVL"),
    (r"h100|gh200", "H100 SXM"),  # GH200's GPU is an H100 SXM
    (r"\bh200.*nvl", "H200 NVL"),
    (r"\bh200", "H200"),
    (r"a100", "A100"),
    (r"^tpu v4$", "TPU v4"),
    (r"^tpu v5 ?(lite|e)$", "TPU v5e"),
    (r"^tpu v5p?$", "TPU v5p"),
    (r"^tpu v6 ?(lite|e)$", "TPU v6e"),
)

_DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
                  "f32": "float32", "tf32": "tensorfloat32"}
_DTYPES = ("bfloat16", "float16", "tensorfloat32", "float32")


def chip_name(device_kind: str) -> str | None:
  """The PEAK_FLOPS key for a jax `device.device_kind` string, or None for an unknown chip."""
  kind = device_kind.strip().lower()
  for pattern, name in _DEVICE_KINDS:
    if re.search(pattern, kind):
      return name
  return None


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Dense peak FLOP/s of one chip for matmuls in `dtype`; None when unknown (CPUs, other chips).

  device_kind: jax's `device.device_kind`, e.g. "NVIDIA H100 80GB HBM3" or "TPU v4".
  dtype: "bfloat16", "float16", "float32" (IEEE fp32) or "tensorfloat32" ("bf16", "fp32", "tf32"…
  also accepted). Under JAX's default matmul precision, float32 matmuls run as TF32 on Ampere and
  later GPUs and as bfloat16 passes on TPUs; for a float32 model under that default, ask for
  "tensorfloat32" on such GPUs (the fp32 figure would overstate MFU) or measure the peak with
  `measure_matmul_peak`, which times what the default precision actually does.
  """
  name = _DTYPE_ALIASES.get(dtype, dtype)
  if name not in _DTYPES:
    raise ValueError(f"peak_flops: unknown dtype {dtype!r}; expected one of {_DTYPES}")
  chip = chip_name(device_kind)
  return None if chip is None else PEAK_FLOPS[chip].get(name)


@functools.lru_cache(maxsize=None)
def measure_matmul_peak(dtype: str = "float32", size: int = 2048, seconds: float = 2.0) -> float:
  """FLOP/s of a jitted `size`×`size` matmul in `dtype` on the default device, timed for about
  `seconds` after a warm-up (the peak where no vendor figure exists, e.g. CPUs). Dispatches are
  pipelined in groups of 8 so that per-call overhead does not count; cached per process and
  arguments.
  """
  if size < 1 or seconds <= 0:
    raise ValueError(f"measure_matmul_peak: size and seconds must be positive, got {size}, {seconds}")
  x = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)
  matmul = jax.jit(lambda a: a @ a)
  jax.block_until_ready(matmul(x))  # compile and warm up
  group, runs = 8, 0
  start = time.perf_counter()
  while True:
    jax.block_until_ready([matmul(x) for _ in range(group)])
    runs += group
    elapsed = time.perf_counter() - start
    if elapsed >= seconds:
      return 2.0 * size ** 3 * runs / elapsed


def mfu(flops_per_step: float, step_seconds: float, peak: float, num_devices: int) -> float:
  """Model FLOPs utilisation: (flops_per_step / step_seconds) / (peak × num_devices).

  flops_per_step: model FLOPs of one global step (`bert_flops_per_sequence` × global batch).
  peak: one device's peak FLOP/s (`peak_flops`, or `measure_matmul_peak` where that is None).
  """
  if step_seconds <= 0 or num_devices < 1 or not peak or peak <= 0:
    raise ValueError(f"mfu: need step_seconds > 0, peak > 0 and num_devices >= 1; got "
                     f"{step_seconds}, {peak}, {num_devices}")
  return flops_per_step / step_seconds / (peak * num_devices)


