"""The one training loop: pretraining, encoder fine-tuning and seq2seq fine-tuning all run it.

`train(...)` resumes from the workdir's newest restorable checkpoint (or, in a fresh workdir, lets
the job start the state: `start`, e.g. a phase-1 run's weights), then trains to
`cadence.total_steps`. Jobs pass what differs: the jitted step, the batches from a step on, the
evaluation, the cadence, and optional throughput metrics. On the way:

  log    every log_every_steps and at the end: the metric sums on device (no host sync between log
         steps) pulled to the host once, checked for NaN/Inf (a diverged run stops before it can be
         saved), written to TensorBoard + metrics.jsonl, one console line;
  save   every checkpoint_every_steps, at each epoch's end (`epoch_steps`) and at the end, before
         that step's evaluation (a failing evaluation never loses the training); a state whose
         loss is not finite is never saved, so the last good checkpoint stays the newest;
  eval   every eval_every_steps (0: only at the end): `evaluate(params, final)`, written as eval_*;
  stop   SIGTERM/SIGINT (a preemption): the step in flight finishes, a checkpoint is saved, and the
         loop returns without evaluating (the command then exits 128 + the signal's number, so
         that a scheduler requeues it); rerunning the same command resumes exactly, since a
         batch is a function of (seed, step) and the dropout masks of (seed, step). metrics.jsonl
         records past the resumed step (logged after the last checkpoint) are dropped. With
         several processes, a signal that reaches any of them stops all of them at the same
         step, one step later (StopAgreement); one that arrived while the job was starting
         (flaxbert.training.stop_signals.deferred: the training commands) counts from the first
         step.

A finished run, rerun, trains nothing and evaluates the state it restored.
"""
import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Iterator

import jax
import numpy as np

from flaxbert import storage
from flaxbert.errors import InputError
from flaxbert.training import checkpoint, metrics
from flaxbert.training.state import TrainState
from flaxbert.training.stop_signals import StopRequest

log = logging.getLogger("flaxbert")


class StopAgreement:
  """Makes every process stop at the same step when a signal reaches only some of them (as on
  real clusters, where a preemption notice reaches hosts at different moments).

  Each step, every process contributes its own flag to an on-device max over all devices
  (dispatched after the step, never waited for then); the result of the previous step's
  agreement is read at the next step, by which time it is computed: all processes read the same
  value at the same step, so they save the same step and exit together, one step after the
  first signal. One process: its own flag, nothing to agree.
  """

  def __init__(self):
    self.processes = jax.process_count()
    if self.processes > 1:
      mesh = jax.sharding.Mesh(np.array(jax.devices()), ("all",))
      self._sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("all"))
      self._max = jax.jit(jax.numpy.max, out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
      self._pending = None

  def __call__(self, local: str | None) -> str | None:
    """The signal to stop on at this step: `local` for one process; else the agreed one (the
    name of this process's signal, or SIGTERM for one seen only elsewhere), one step late."""
    if self.processes == 1:
      return local
    flag = np.full((jax.local_device_count(),), 0 if local is None else 1, np.int32)
    agreed, self._pending = self._pending, self._max(jax.make_array_from_process_local_data(
        self._sharding, flag, (jax.device_count(),)))
    if agreed is None or not int(agreed):
      return None
    return local or "SIGTERM"


@dataclasses.dataclass(frozen=True)
class Cadence:
  """When the loop logs, evaluates and saves (in optimizer steps)."""
  total_steps: int  # train until the state's step reaches this
  log_every_steps: int
  checkpoint_every_steps: int
  keep_checkpoints: int  # newest kept
  eval_every_steps: int = 0  # 0: evaluate only at the end
  epoch_steps: int = 0  # > 0: also save (forced) at the end of every epoch of this many steps

  def __post_init__(self):
    check_cadence(log_every_steps=self.log_every_steps, **{"checkpoint.every_steps": self.checkpoint_every_steps,
                                                          "checkpoint.keep": self.keep_checkpoints},
                  eval_every_steps=self.eval_every_steps)


def check_cadence(**fields) -> None:
  """InputError naming the config field, for a cadence that is not a whole number (≥ 1; ≥ 0 for
  eval_every_steps, where 0 means only at the end). checkpoint.keep ≥ 1: keeping no checkpoint
  would delete the final one too."""
  for name, value in fields.items():
    low = 0 if name == "eval_every_steps" else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise InputError(f"{name}: expected a whole number ≥ {low}, got {value!r}"
                       + ("; keeping no checkpoint would delete the final one" if name == "checkpoint.keep" else ""))


@dataclasses.dataclass
class Outcome:
  state: TrainState
  train_metrics: dict  # the last log step's summary ({} when nothing was trained)
  eval_metrics: dict  # the last evaluation's scores, unprefixed ({} when stopped before one)
  stopped_by: str | None  # the signal that stopped the run, or None


def train(workdir: str | Path, state: TrainState, train_step, batches: Callable[[int], Iterator[dict]],
          cadence: Cadence, evaluate: Callable[[object, bool], dict], *, batch_size: int, meta: dict | None = None,
          start: Callable[[TrainState], TrainState] | None = None,
          throughput: Callable[[float], dict] | None = None, started: Callable[[], None] | None = None) -> Outcome:
  """Runs `train_step(state, batch)` from the resumed step to cadence.total_steps.

  batches(step): the global batches from `step` on (a batch is a pure function of its step, so
  resuming needs no data state). evaluate(params, final): scores ({} without eval data); final is
  True at the last step (the job writes its predictions then). start(state): the state of a run
  that has no checkpoint yet. throughput(steps_per_second): extra metrics for each log step
  (examples/s, MFU), from the steady state after the compiling step. meta: JSON saved with each
  checkpoint (the step is added). started(): called once the state is restored or started (the
  job records the run's settings then: flaxbert.training.run_record).
  """
  workdir = storage.path(workdir)
  mngr = checkpoint.manager(workdir, every_steps=cadence.checkpoint_every_steps, keep=cadence.keep_checkpoints)
  try:
    found = checkpoint.resume(mngr, state.params, state.train_items())
    if found is not None:
      log.info("resuming %s from step %d", workdir, found[0])
      state = state.replace(params=found[1], **found[2])
    elif start is not None:
      state = start(state)
    if started is not None:
      started()
    return _run(workdir, mngr, state, train_step, batches, cadence, evaluate, batch_size, meta or {}, throughput)
  finally:
    checkpoint.finish(mngr)


def _run(workdir, mngr, state, train_step, batches, cadence, evaluate, batch_size, meta, throughput) -> Outcome:
  first = int(state.step)
  writer = metrics.MetricWriter(workdir, resumed_step=first)
  progress = metrics.ProgressBar(cadence.total_steps, first, batch_size)
  acc, stop, agree = metrics.MetricsAccumulator(), StopRequest(), StopAgreement()
  last, evals, stopped_by, t0, timed_from = {}, {}, None, None, first
  if stop.signal is not None and first < cadence.total_steps:
    log.warning("%s received while the run was starting: it stops at its first step all processes agree on",
                stop.signal)
  try:
    stream = batches(first)
    for step in range(first, cadence.total_steps):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, step_metrics = train_step(state, next(stream))
      acc.add(step_metrics)
      done = step + 1
      if t0 is None:  # the one host sync outside log steps: steady-state timing starts after compiling
        jax.block_until_ready(step_metrics)
        t0, timed_from = time.perf_counter(), done
        progress.mark_compiled(done)
      stopped_by = agree(stop.signal)  # read once: a signal arriving later is handled at the next step
      final = done == cadence.total_steps or stopped_by is not None
      if done % cadence.log_every_steps == 0 or final:
        last = acc.summary()
        metrics.check_finite(last, done)
        if throughput is not None and done > timed_from:
          last.update(throughput((done - timed_from) / (time.perf_counter() - t0)))
        writer.write_scalars(done, last)
        progress.update(done, last)
        acc = metrics.MetricsAccumulator()
      epoch_end = cadence.epoch_steps > 0 and done % cadence.epoch_steps == 0
      if done % cadence.checkpoint_every_steps == 0 or epoch_end or final:
        metrics.check_finite({"loss": float(step_metrics["loss"])}, done)  # never save a diverged state
        checkpoint.save(mngr, done, state.params, state.train_items(), dict(meta, step=done), force=epoch_end or final)
      if stopped_by is None and (done == cadence.total_steps
                                 or (cadence.eval_every_steps and done % cadence.eval_every_steps == 0)):
        evals = evaluate(state.params, done == cadence.total_steps)
        if evals:
          scalars = {f"eval_{k}": v for k, v in evals.items()}
          writer.write_scalars(done, scalars)
          progress.note(done, scalars)
      if stopped_by is not None:
        log.warning("%s received: saved step %d; rerun the same command to resume", stopped_by, done)
        break
    if not evals and stopped_by is None:  # a finished run, rerun: score the state it restored
      evals = evaluate(state.params, True)
  finally:
    stop.restore()
    writer.close()
  return Outcome(state, last, evals, stopped_by)
