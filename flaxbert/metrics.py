"""Training metrics: sums and denominators on device, model FLOPs and MFU, event files, console.

Metric dicts (what a train or eval step returns: a flat dict of scalars) follow one naming
convention, which `summarize` applies to any key, so fine-tuning tasks reuse it unchanged:

  G_count        the denominator of group G (masked tokens for `mlm`, sequences for `nsp`…);
                 summed over steps, not reported itself.
  NAME_sum       a sum over G's items → NAME = NAME_sum / G_count, where G is the longest
                 `_`-separated prefix of NAME that has a G_count (mlm_loss_sum / mlm_count →
                 mlm_loss; a NAME_count of its own would take precedence).
  NAME_correct   a count of correct predictions → NAME_accuracy = NAME_correct / G_count, G found
                 the same way (mlm_correct / mlm_count → mlm_accuracy).
  anything else  a per-step ("point") value — loss, grad_norm, param_norm, learning_rate — reported
                 as its mean over the accumulated steps.
A group whose count is 0 over the window (NSP switched off, an eval split without it) is left out
of the summary; a NAME_sum or NAME_correct with no matching count is an error.

`MetricsAccumulator` adds step dicts on device (no host sync); `summarize` pulls them to the host
once, at a log step. `bert_flops_per_sequence`, `peak_flops` / `measure_matmul_peak` and `mfu`
give model FLOPs utilisation; `MetricWriter` writes TensorBoard event files plus `metrics.jsonl`;
`ProgressBar` prints one line per log step; `check_finite` stops a diverged run.
"""
import functools
import itertools
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.config import BertConfig

# --- sums and denominators -----------------------------------------------------------------------

_COUNT, _SUM, _CORRECT = "_count", "_sum", "_correct"


@jax.jit
def _add(sums: dict, step_metrics: dict) -> dict:
  return {k: sums[k] + step_metrics[k] for k in sums}


class MetricsAccumulator:
  """Sums step metric dicts on device: `sums` stays a dict of jax arrays, `steps` counts the adds.

  Nothing is transferred to the host; each `add` is one asynchronous jitted dispatch.
  """

  def __init__(self):
    self.sums: dict[str, jax.Array] = {}
    self.steps = 0

  def add(self, step_metrics: Mapping[str, jax.Array]) -> None:
    if not self.sums:
      self.sums = dict(step_metrics)
    else:
      if set(step_metrics) != set(self.sums):
        raise ValueError(
            f"metric keys changed between steps: missing {sorted(set(self.sums) - set(step_metrics))}, "
            f"new {sorted(set(step_metrics) - set(self.sums))}")
      self.sums = _add(self.sums, dict(step_metrics))
    self.steps += 1

  def summary(self) -> dict[str, float]:
    """`summarize(self.sums, self.steps)`."""
    return summarize(self.sums, self.steps)


def _group_count(name: str, counts: Mapping[str, float]) -> str | None:
  """The longest `_`-separated prefix of `name` (itself included) that has a count."""
  return next((group for group in _prefixes(name) if group in counts), None)


def summarize(sums: Mapping[str, Any], steps: int) -> dict[str, float]:
  """Host floats from accumulated sums, by the module's naming convention (see its docstring).

  One `jax.device_get` for the whole dict. steps: how many step dicts were summed (the divisor of
  point metrics).
  """
  host = {k: float(np.asarray(v)) for k, v in jax.device_get(dict(sums)).items()}
  counts = {k[:-len(_COUNT)]: v for k, v in host.items() if k.endswith(_COUNT)}
  out: dict[str, float] = {}
  for key, value in host.items():
    if key.endswith(_COUNT):
      continue
    if key.endswith(_SUM) or key.endswith(_CORRECT):
      suffix = _SUM if key.endswith(_SUM) else _CORRECT
      name = key[:-len(suffix)]
      group = _group_count(name, counts)
      if group is None:
        raise ValueError(f"metric {key!r} has no denominator: expected one of "
                         f"{[p + _COUNT for p in _prefixes(name)]}")
      if counts[group] == 0:
        continue
      out_key, out_value = (name if suffix == _SUM else f"{name}_accuracy"), value / counts[group]
    else:
      if steps < 1:
        raise ValueError(f"summarize: steps must be at least 1 to average {key!r}, got {steps}")
      out_key, out_value = key, value / steps
    if out_key in out:
      raise ValueError(f"metrics {key!r} and another key both summarize to {out_key!r}")
    out[out_key] = out_value
  return out


def _prefixes(name: str) -> list[str]:
  """mlm_loss → [mlm_loss, mlm]: longest first."""
  parts = name.split("_")
  return ["_".join(parts[:end]) for end in range(len(parts), 0, -1)]


# --- model FLOPs and utilisation -----------------------------------------------------------------


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


# --- divergence --------------------------------------------------------------------------------


def _watched(key: str) -> bool:
  return key == "loss" or key.endswith("_loss") or key in ("grad_norm", "param_norm")


def check_finite(summary: Mapping[str, Any], step: int) -> None:
  """Raises FloatingPointError if a loss (`loss`, `*_loss`), `grad_norm` or `param_norm` is NaN/Inf.

  The message names every such metric, its value and the step; the training loop stops without
  saving, so the last good checkpoint stays the newest.
  """
  bad = []
  for key, value in summary.items():
    if _watched(key):
      value = float(np.asarray(value))
      if not math.isfinite(value):
        bad.append(f"{key} is {value}")
  if bad:
    raise FloatingPointError(
        f"{', '.join(bad)} at step {step}: training diverged; stopping without saving, so the last good "
        "checkpoint is kept (lower the learning rate, raise warmup, or check the data)")


# --- writers -----------------------------------------------------------------------------------


class MetricWriter:
  """Scalars to a TensorBoard event file (`events.out.tfevents.*`) and to `metrics.jsonl`, one JSON
  object per `write_scalars` call (`{"step": N, "name": value, …}`), both in `directory`.

  Only process 0 writes; elsewhere every method is a no-op. Both files are written synchronously
  (a few scalars per log step) and flushed at every write, so what a step logged is on disk when
  `write_scalars` returns. The JSONL file is appended to: a resumed run continues it (steps replayed
  after a crash appear twice; the later row wins); each writer starts a new event file, which
  TensorBoard reads together. Events are encoded with tensorboardX's synchronous `EventsWriter`:
  TF 2.21's `tf.summary` needs the tensorboard package, which TF no longer installs, and
  tensorboardX's `SummaryWriter` queues events to a thread that its `flush()` does not wait for.
  """

  _files = itertools.count()  # distinct event file names within a process

  def __init__(self, directory: str | Path):
    self.directory = Path(directory)
    self.active = jax.process_index() == 0
    self._events = self._jsonl = None
    if self.active:
      from tensorboardX.event_file_writer import EventsWriter  # pylint: disable=import-outside-toplevel
      self.directory.mkdir(parents=True, exist_ok=True)
      self._events = EventsWriter(str(self.directory / "events"), f".{os.getpid()}.{next(self._files)}")
      # Kept open for the writer's life (closed by close()).
      self._jsonl = open(self.directory / "metrics.jsonl", "a", encoding="utf-8")  # pylint: disable=R1732

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if self._events is None:
      return
    from tensorboardX.proto import event_pb2, summary_pb2  # pylint: disable=import-outside-toplevel
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v)
                                         for k, v in values.items()])
    self._events.write_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
    self._events.flush()
    self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
    self._jsonl.flush()

  def flush(self) -> None:
    if self._events is not None:
      self._events.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._jsonl.close()
      self._events = self._jsonl = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# --- console -----------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
  """4m10s, 1h02m05s (rounded to the second)."""
  total = int(round(max(seconds, 0.0)))
  hours, rest = divmod(total, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class ProgressBar:
  """One console line per log step, e.g.
  `step 120/1000 [12%] loss 6.21 mlm_acc 0.132 | 35.2 seq/s | ETA 4m10s`.

  Shows `loss` and every `X_accuracy` (as `X_acc`). Throughput and ETA come from the steady state:
  wall time and steps since `mark_compiled(step)`, which the loop calls once the first (compiling)
  step has finished; before that they are left out. `clock` and `stream` are injectable for tests
  (stream None: sys.stdout at print time).
  """

  def __init__(self, total: int, start: int, batch_size: int, clock: Callable[[], float] = time.perf_counter,
               stream: TextIO | None = None):
    self.total, self.start, self.batch_size = total, start, batch_size
    self._clock, self._stream = clock, stream
    self._t0: float | None = None
    self._s0 = start

  def mark_compiled(self, step: int) -> None:
    """Steady-state timing starts now, at `step` (steps done so far, the compiling one included)."""
    self._t0, self._s0 = self._clock(), step

  def update(self, step: int, summary: Mapping[str, float]) -> str:
    """Prints and returns the line for `step` (steps done) with `summary`'s metrics."""
    percent = int(100 * step / self.total) if self.total else 100
    parts = [f"step {step}/{self.total} [{percent}%]"]
    if "loss" in summary:
      parts.append(f"loss {summary['loss']:.4g}")
    parts += [f"{k[:-len('_accuracy')]}_acc {v:.3f}" for k, v in summary.items() if k.endswith("_accuracy")]
    line = " ".join(parts)
    if self._t0 is not None and step > self._s0:
      elapsed = self._clock() - self._t0
      if elapsed > 0:
        steps_per_second = (step - self._s0) / elapsed
        line += (f" | {steps_per_second * self.batch_size:.1f} seq/s"
                 f" | ETA {format_duration((self.total - step) / steps_per_second)}")
    self._print(line)
    return line

  def note(self, step: int, summary: Mapping[str, float]) -> str:
    """Prints and returns `step N: k v …` (e.g. evaluation results)."""
    line = f"step {step}: " + " ".join(f"{k} {v:.4g}" for k, v in summary.items())
    self._print(line)
    return line

  def _print(self, line: str) -> None:
    print(line, file=self._stream or sys.stdout, flush=True)
