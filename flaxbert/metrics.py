"""Training metrics: sums and denominators on device, model FLOPs and MFU, TensorBoard, console.

Naming convention of the metric dicts a step returns (all scalars):
  NAME_sum   a sum to divide by NAME's count: mlm_loss_sum / mlm_count → mlm_loss
  NAME_correct  likewise → NAME_accuracy (mlm_correct / mlm_count → mlm_accuracy)
  NAME_count  the denominator of NAME_sum and NAME_correct
  anything else  a per-step value (loss, grad_norm, learning_rate…), averaged over the steps
`MetricsAccumulator` adds step dicts on device (no host sync); `summarize` pulls once.

FLOPs (`bert_flops_per_sequence`) count multiply-adds as 2 FLOPs over the matmuls that dominate
BERT: per layer 2·T·(4H² + 2HI) for the projections and 2·2·T²·H for attention scores and the
weighted sum; the MLM head 2·(H² + HV) per predicted position; the pooler and NSP 2·(H² + 2H);
training = 3 × forward (the backward pass costs two forwards). MFU = achieved model FLOP/s over
the devices' peak, from `PEAK_FLOPS` (vendor dense peaks) or a measured matmul peak on CPU.
"""
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

from flaxbert.config import BertConfig

# Dense peak FLOP/s per chip (vendor figures, no sparsity).
PEAK_FLOPS = {
    "h100": {"bfloat16": 989e12, "float32": 67e12},  # SXM
    "h200": {"bfloat16": 989e12, "float32": 67e12},
    "a100": {"bfloat16": 312e12, "float32": 19.5e12},
    "tpu v4": {"bfloat16": 275e12}, "tpu v5 lite": {"bfloat16": 197e12}, "tpu v5e": {"bfloat16": 197e12},
    "tpu v5p": {"bfloat16": 459e12}, "tpu v6": {"bfloat16": 918e12},
}


class MetricsAccumulator:
  """Adds step metric dicts on device."""

  def __init__(self):
    self.sums: dict = {}
    self.steps = 0

  def add(self, step_metrics: dict) -> None:
    self.sums = step_metrics if not self.sums else jax.tree_util.tree_map(jnp.add, self.sums, step_metrics)
    self.steps += 1


def summarize(sums: dict, steps: int) -> dict[str, float]:
  """Host floats: NAME_sum/NAME_count → NAME, NAME_correct/NAME_count → NAME_accuracy, others / steps."""
  host = {k: float(v) for k, v in jax.device_get(sums).items()}
  out = {}
  for key, value in host.items():
    if key.endswith("_count"):
      continue
    if key.endswith("_sum") or key.endswith("_correct"):
      base = key[:-len("_sum")] if key.endswith("_sum") else key[:-len("_correct")]
      count = host.get(f"{base.removesuffix('_loss')}_count", host.get(f"{base}_count", 0.0))
      if count:
        out[base if key.endswith("_sum") else f"{base}_accuracy"] = value / count
    else:
      out[key] = value / max(steps, 1)
  return out


def bert_flops_per_sequence(config: BertConfig, seq_len: int, num_masked: int | None,
                            with_nsp: bool = True, training: bool = True) -> float:
  h, i, v, t = config.hidden_size, config.intermediate_size, config.vocab_size, seq_len
  layer = 2 * t * (4 * h * h + 2 * h * i) + 2 * 2 * t * t * h
  positions = t if num_masked is None else num_masked
  flops = config.num_hidden_layers * layer + positions * 2 * (h * h + h * v)
  if with_nsp:
    flops += 2 * (h * h + 2 * h)
  return float(flops * (3 if training else 1))


def peak_flops(device_kind: str, dtype: str) -> float | None:
  kind = device_kind.lower()
  for name, peaks in PEAK_FLOPS.items():
    if name in kind:
      return peaks.get(dtype)
  return None


@functools.lru_cache(maxsize=None)
def measure_matmul_peak(dtype: str = "float32", size: int = 1024, seconds: float = 1.0) -> float:
  """FLOP/s of a jitted square matmul on the default device (where no vendor figure exists);
  measured once per process and setting."""
  x = jnp.ones((size, size), dtype)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  runs, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    f(x).block_until_ready()
    runs += 1
  return 2 * size ** 3 * runs / (time.perf_counter() - start)


def mfu(flops_per_second: float, peak: float, num_devices: int) -> float:
  return flops_per_second / (peak * num_devices)


def check_finite(summary: dict, step: int) -> None:
  for key in ("loss", "mlm_loss", "nsp_loss"):
    if key in summary and not math.isfinite(summary[key]):
      raise FloatingPointError(f"{key} is {summary[key]} at step {step}: training diverged; the last "
                               "good checkpoint is kept (lower the learning rate or check the data)")


class MetricWriter:
  """TensorBoard scalars and WORKDIR/metrics.jsonl; only process 0 writes."""

  def __init__(self, directory: str | Path):
    self._active = jax.process_index() == 0
    self._dir = Path(directory)
    self._tb = None
    if self._active:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(str(self._dir), flush_secs=30)
      self._jsonl = open(self._dir / "metrics.jsonl", "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self._active:
      return
    for key, value in scalars.items():
      self._tb.add_scalar(key, value, step)
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self._active:
      self._tb.flush()
      self._tb.close()
      self._jsonl.close()


class ProgressBar:
  """One console line per log step: progress, key metrics, throughput, ETA from the steady rate."""

  def __init__(self, total: int, start: int, batch_size: int, clock: Callable[[], float] = time.perf_counter,
               stream=sys.stdout):
    self.total, self.start, self.batch_size, self._clock, self._stream = total, start, batch_size, clock, stream
    self._t0, self._s0 = None, start

  def mark_compiled(self, step: int) -> None:
    self._t0, self._s0 = self._clock(), step

  def update(self, step: int, summary: dict) -> str:
    parts = [f"step {step}/{self.total} [{100 * step / self.total:3.0f}%]"]
    for key, label in (("loss", "loss"), ("mlm_accuracy", "mlm_acc"), ("nsp_accuracy", "nsp_acc")):
      if key in summary:
        parts.append(f"{label} {summary[key]:.4g}")
    if self._t0 is not None and step > self._s0:
      rate = (step - self._s0) / (self._clock() - self._t0)
      eta = (self.total - step) / rate
      parts.append(f"| {rate * self.batch_size:.1f} seq/s | ETA {int(eta // 60)}m{int(eta % 60):02d}s")
    line = " ".join(parts)
    print(line, file=self._stream, flush=True)
    return line

  def note(self, step: int, summary: dict) -> None:
    shown = " ".join(f"{k} {v:.4g}" for k, v in summary.items())
    print(f"step {step}: {shown}", file=self._stream, flush=True)
