"""Training metrics: sums and denominators on device, event files, console.

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
once, at a log step. `MetricWriter` writes TensorBoard event files plus `metrics.jsonl`;
`ProgressBar` prints one line per log step; `check_finite` stops a diverged run. Model FLOPs and
MFU: flaxbert.training.flops.
"""
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

import jax
import numpy as np

from flaxbert import atomic, storage

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
  `write_scalars` returns. The JSONL file is appended to: a resumed run (`resumed_step`) first drops
  the records past the step it resumed from (logged after its last checkpoint, and about to be
  logged again), so each step appears once; a half-written last line (a kill mid-write) is
  dropped too. In an object store (flaxbert.storage) both files are written in a local copy that is
  uploaded at every write. Each writer starts a new event file, which
  TensorBoard reads together. Events are encoded with tensorboardX's synchronous `EventsWriter`:
  TF 2.21's `tf.summary` needs the tensorboard package, which TF no longer installs, and
  tensorboardX's `SummaryWriter` queues events to a thread that its `flush()` does not wait for.
  """

  _files = itertools.count()  # distinct event file names within a process

  def __init__(self, directory: str | Path, resumed_step: int | None = None):
    self.directory = storage.path(directory)
    self.active = jax.process_index() == 0
    self._events = self._jsonl = self._mirror = None
    if self.active:
      from tensorboardX.event_file_writer import EventsWriter  # pylint: disable=import-outside-toplevel
      self._mirror = storage.LocalMirror(self.directory, fetch=("metrics.jsonl",))
      local = self._mirror.local
      self._events = EventsWriter(str(local / "events"), f".{os.getpid()}.{next(self._files)}")
      if resumed_step is not None:
        _drop_records_after(local / "metrics.jsonl", resumed_step)
      # Kept open for the writer's life (closed by close()).
      self._jsonl = open(local / "metrics.jsonl", "a", encoding="utf-8")  # pylint: disable=R1732

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
    self._mirror.sync()

  def flush(self) -> None:
    if self._events is not None:
      self._events.flush()
      self._jsonl.flush()
      self._mirror.sync()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._jsonl.close()
      self._mirror.close()
      self._events = self._jsonl = self._mirror = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _drop_records_after(path: Path, step: int) -> None:
  """Rewrites metrics.jsonl (atomically) without the records past `step` and any partial line."""
  if not path.is_file():
    return
  lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      record = json.loads(line) if line.endswith("\n") else None
    except ValueError:
      record = None
    if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
      kept.append(line)
  if len(kept) != len(lines):
    atomic.write_text(path, "".join(kept))


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
