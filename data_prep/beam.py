"""Stage 2 of a dataset build as an Apache Beam pipeline (the `beam` extra): which runner, and the run.

    flaxbert prepare … --config.beam_runner=FlinkRunner --config.beam_options="--flink_master=HOST:8081"
    tfds build bert_pretraining --imports data_prep.builder … --beam_pipeline_options=runner=DirectRunner,…

The runner: `beam_runner` when set (a `--runner` in `beam_options` is then ignored, with a
warning); else the `--runner=…` in `beam_options`; else, when `beam_options` is set at all,
DirectRunner; neither set: no Beam, the builder's own worker processes. A name Beam does not know,
a runner that cannot be loaded (DataflowRunner without apache-beam[gcp]) or an option Beam cannot
parse (`--direct_num_workers=two`) is an InputError before any work is done.

DirectRunner here is Beam's in-Python local runner (FnApiRunner), which honours
--direct_num_workers and --direct_running_mode. Beam 2.77's own DirectRunner first tries
PrismRunner, a Go binary it downloads from GitHub at the first run, and only falls back to
FnApiRunner when that fails: on a machine with network access the options above would then be
ignored (Prism runs the Python code in the launching process). Name PrismRunner to get Prism.

The pipeline is the builder's work units (one per text chunk: tokenize it, write its shard of each
dupe pass) spread over the workers by a Reshuffle, each running the same `_write_chunk` as the local
path, so the shards are identical to the local path's. A unit's result (examples per shard, their
lengths, tokens) is written beside the chunk files, and once the pipeline is done the builder reads
them back and finishes as after a local run: empty passes left out, a split without examples an
error, lengths files and token counts in metadata.json. The runner's workers therefore read and
write inside the build folder, which must be on a filesystem they share with this machine.

TFDS's own Beam writer (`ShardBasedBuilder` with `DownloadConfig(beam_runner=…)`) is not used: in
TFDS 4.9.10 it builds no pipeline at all from `beam_options` alone (what `tfds build
--beam_pipeline_options` passes); given a runner, it runs its one cached Pipeline again for every
split, so the train split is written twice; and it orders shard lengths by the shard index as text
("10" before "2"), so a split of more than ten shards gets wrong metadata.
"""
import contextlib
import dataclasses
import io
import logging
import os
import pickle
import shlex
import socket
from pathlib import Path
from typing import Any, Callable, Sequence

from flaxbert import storage
from flaxbert.errors import InputError

NAMESPACE = "flaxbert.prepare"  # of the Beam metrics counters "work_units" and "examples"


@dataclasses.dataclass(frozen=True)
class Pipeline:
  """What a Beam build runs on: the runner as named (recorded in metadata.json), its object, and the options."""
  name: str
  runner: Any  # apache_beam PipelineRunner
  options: Any  # apache_beam PipelineOptions


def resolve(runner: Any = None, options: Any = None, output_dir: str | None = None) -> Pipeline | None:
  """The Beam runner and options of a build, or None for no Beam (neither given).

  `runner`: a runner name (the `beam_runner` setting; "" for none) or a PipelineRunner;
  `options`: pipeline flags as one string (`beam_options`) or PipelineOptions (from `tfds build`).
  `output_dir`, when given, is checked to be somewhere a distributed runner's workers can write.
  """
  if not runner and not options:
    return None
  try:
    # pylint: disable-next=import-outside-toplevel
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
  except ImportError:
    field = "beam_runner" if runner else "beam_options"
    raise InputError(f"{field} is set but Apache Beam is not installed: pip install 'flaxbert[beam]'") from None
  if not isinstance(options, PipelineOptions):
    try:
      flags = shlex.split(options or "")
    except ValueError as e:
      raise InputError(f"beam_options: {e} in {options!r}; expected pipeline flags, e.g. '--runner=DirectRunner "
                       "--direct_num_workers=2 --direct_running_mode=multi_processing'") from None
    options = PipelineOptions(flags)
  _check_options(options)
  named = options.view_as(StandardOptions).runner
  if runner is not None and not isinstance(runner, str):
    name = type(runner).__name__
  else:
    if runner and named and named.lower() != runner.lower():
      logging.warning("beam_runner=%s overrides --runner=%s in beam_options", runner, named)
    name = runner or named or "DirectRunner"
    runner = _create_runner(name, "beam_runner" if runner else "beam_options --runner")
    options.view_as(StandardOptions).runner = name
  if _is_direct(runner):
    runner = _direct_runner(options)
  if output_dir and storage.is_remote(output_dir) and type(runner).__name__ not in StandardOptions.LOCAL_RUNNERS:
    raise InputError(f"output_dir: {output_dir} is an object store, and a dataset for one is built in a local "
                     f"folder first, which {name} workers cannot reach; give a folder on a filesystem that this "
                     "machine and the workers share, or a local runner (DirectRunner)")
  return Pipeline(name, runner, options)


def _check_options(options) -> None:
  """Beam parses options with argparse, which prints its whole usage and exits on a bad value: here a one-line error."""
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      options.get_all_options()
  except SystemExit:
    lines = err.getvalue().strip().splitlines() or ["cannot parse the options"]
    raise InputError(f"beam_options: {lines[-1].split('error: ', 1)[-1]}") from None


def _create_runner(name: str, field: str):
  from apache_beam.options.pipeline_options import StandardOptions  # pylint: disable=import-outside-toplevel
  from apache_beam.runners.runner import PipelineRunner, create_runner  # pylint: disable=import-outside-toplevel
  expected = (f"expected a Beam runner: {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)}, or a PipelineRunner "
              "class as module.ClassName")
  try:
    runner = create_runner(name)
  except ValueError:
    raise InputError(f"{field}: unknown runner {name!r}; {expected}") from None
  except (ImportError, AttributeError, TypeError) as e:  # a runner that needs an extra, or no such class
    raise InputError(f"{field}: cannot load the runner {name!r} ({e}); {expected}") from None
  if not isinstance(runner, PipelineRunner):
    raise InputError(f"{field}: {name!r} is not a PipelineRunner; {expected}")
  return runner


def _is_direct(runner) -> bool:
  from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner  # pylint: disable=import-outside-toplevel
  return type(runner) is SwitchingDirectRunner  # pylint: disable=unidiomatic-typecheck


def _direct_runner(options):
  """FnApiRunner as Beam's DirectRunner builds it when Prism is not used, the options passed on to its workers."""
  # pylint: disable=import-outside-toplevel
  from apache_beam.portability.api import beam_provision_api_pb2
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  from apache_beam.runners.portability.portable_runner import JobServiceHandle
  encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
  return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def run(pipeline: Pipeline, write: Callable[[Any], dict], jobs: Sequence, results: Path) -> tuple[list[dict], dict]:
  """Runs `write(job)` for every job as one Beam pipeline; returns their results in job order, and
  what metadata.json records of the run: the runner, the work units and examples counted by Beam
  (its metrics, read from the finished pipeline) and how many worker processes ran them."""
  # pylint: disable=import-outside-toplevel
  import apache_beam as beam
  from apache_beam.metrics.metric import MetricsFilter
  from apache_beam.runners.runner import PipelineState
  results.mkdir(parents=True, exist_ok=True)
  p = beam.Pipeline(runner=pipeline.runner, options=pipeline.options)
  _ = (p | "WorkUnits" >> beam.Create(list(enumerate(jobs)), reshuffle=False)
       | "Spread" >> beam.Reshuffle()  # one unit per element, so that any worker may take any unit
       | "Write" >> beam.Map(_run_unit, write=write, results=os.fspath(results)))
  logging.info("stage 2: %d work units through Beam's %s", len(jobs), pipeline.name)
  outcome = p.run()
  state = outcome.wait_until_finish()
  if state != PipelineState.DONE:
    raise RuntimeError(f"the Beam pipeline on {pipeline.name} ended {state}, not DONE")
  done = [_load(results, i, pipeline.name) for i in range(len(jobs))]
  counters = {c.key.metric.name: c for c in outcome.metrics().query(
      MetricsFilter().with_namespace(NAMESPACE))["counters"]}
  count = lambda name: (counters[name].committed if counters[name].committed is not None
                        else counters[name].attempted) if name in counters else 0
  return done, {"runner": pipeline.name, "work_units": count("work_units"), "examples": count("examples"),
                "worker_processes": len({r.pop("worker") for r in done})}


def _run_unit(unit: tuple[int, Any], write: Callable[[Any], dict], results: str) -> None:
  """In a Beam worker: one work unit, its result saved for the launching process (replaced whole,
  so that a retried unit never leaves half a file)."""
  from apache_beam.metrics import Metrics  # pylint: disable=import-outside-toplevel
  index, job = unit
  result = dict(write(job), worker=f"{socket.gethostname()}:{os.getpid()}")
  path = os.path.join(results, f"{index:06d}.pkl")
  with open(f"{path}.{os.getpid()}.tmp", "wb") as f:
    pickle.dump(result, f)
  os.replace(f"{path}.{os.getpid()}.tmp", path)
  Metrics.counter(NAMESPACE, "work_units").inc()
  Metrics.counter(NAMESPACE, "examples").inc(sum(result["counts"]))


def _load(results: Path, index: int, runner: str) -> dict:
  try:
    with open(results / f"{index:06d}.pkl", "rb") as f:
      return pickle.load(f)
  except FileNotFoundError:
    raise RuntimeError(f"work unit {index}: the Beam pipeline on {runner} finished but its result is not in "
                       f"{results}; the workers must write to the same filesystem as this machine (a folder they "
                       "share, at the same path)") from None
