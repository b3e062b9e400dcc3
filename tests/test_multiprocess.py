"""Real multi-process runs: 2 processes × 4 CPU devices joined by jax.distributed (gloo
collectives), launched the documented way (JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES +
JAX_PROCESS_ID), against the same runs on 1 process × 8 devices; killed with SIGKILL and rerun;
stopped by a SIGTERM that reaches one process only; exported on 1 device."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from corpus_fixtures import assert_params_equal, final_params, prepare_tiny, tiny_pretrain_config
from finetune_fixtures import tiny_finetune_config, write_pretrained, write_sst2
from flaxbert.finetune.job import train_and_evaluate as finetune
from flaxbert.interop.pretrained import load
from flaxbert.models import weights
from flaxbert.pretrain.input_pipeline import PretrainingData
from flaxbert.pretrain.job import train_and_evaluate
from flaxbert.training import stop_signals
from flaxbert.training.workdir_lock import LOCK_FILE

PRETRAIN = ["--config", "pretrain:tiny", "--config.global_batch_size=16", "--config.log_every_steps=1",
            "--config.checkpoint.every_steps=3", "--config.eval_every_steps=0", "--config.eval_max_batches=2",
            "--config.optim.warmup_steps=2", "--config.optim.learning_rate=0.001"]
# tiny_finetune_config's settings (lr 3e-3, no warmup, no dropout, scores at the end) for 1 epoch.
FINETUNE = ["--config", "finetune:glue_sst2,tiny", "--config.optim.learning_rate=0.003", "--config.num_epochs=1.0",
            "--config.optim.warmup_proportion=0.0", "--config.eval_every_epoch=false",
            "--config.model.hidden_dropout_prob=0.0", "--config.model.attention_probs_dropout_prob=0.0"]
TIMING = ("examples_per_second", "tokens_per_second", "mfu")  # measured, so never equal between runs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return prepare_tiny(tmp_path_factory.mktemp("multiprocess_data"))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(command: str, workdir: Path, *args: str) -> list[subprocess.Popen]:
  """`python -m flaxbert.cli COMMAND --workdir WORKDIR ARGS` as processes 0 and 1 of one run, each
  with 4 CPU devices, their output in WORKDIR.0.log and WORKDIR.1.log (files: a full pipe would block
  a process, and the other with it)."""
  port = free_port()
  procs = []
  for index in range(2):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(index))
    with open(f"{workdir}.{index}.log", "w", encoding="utf-8") as out:
      procs.append(subprocess.Popen([sys.executable, "-m", "flaxbert.cli", command, "--workdir", str(workdir), *args],
                                    env=env, stdout=out, stderr=subprocess.STDOUT))
  return procs


def pretrain(workdir: Path, dataset: Path, steps: int) -> list[subprocess.Popen]:
  return launch("pretrain", workdir, *PRETRAIN, f"--config.dataset_dir={dataset}", f"--config.num_train_steps={steps}")


def finish(procs: list[subprocess.Popen], workdir: Path, codes=(0, 0), timeout: float = 600) -> list[str]:
  """Both processes' output, once both have ended (within `timeout` seconds, else both are killed)
  with exit status `codes`."""
  deadline = time.time() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(0.0, deadline - time.time()))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  outputs = [Path(f"{workdir}.{i}.log").read_text(encoding="utf-8") for i in range(2)]
  assert [p.returncode for p in procs] == list(codes), [out[-3000:] for out in outputs]
  return outputs


def metrics(workdir: Path) -> dict[int, dict]:
  """metrics.jsonl by step, each step's rows merged, timings left out."""
  steps = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    steps.setdefault(row.pop("step"), {}).update({k: v for k, v in row.items() if k not in TIMING})
  return steps


def saved_steps(workdir: Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


class Launched:
  """A 2-process run going on while a test does other work (a run is mostly start-up, much of it
  serial: the two cores have room for more); `ended()` waits for it to end well."""

  def __init__(self, workdir: Path, procs: list[subprocess.Popen]):
    self.workdir, self.procs = workdir, procs

  def ended(self) -> Path:
    finish(self.procs, self.workdir)
    return self.workdir


@pytest.fixture(scope="module")
def two(dataset, tmp_path_factory):
  """The uninterrupted 2-process run of 6 steps (checkpoints at 3 and 6) that the tests compare
  with, started once for the module."""
  workdir = tmp_path_factory.mktemp("two") / "run"
  run = Launched(workdir, pretrain(workdir, dataset, 6))
  yield run
  for p in run.procs:
    p.kill()  # if no test waited for it
    p.wait()


def test_two_processes_train_as_one(dataset, two, tmp_path):
  one = tmp_path / "one"  # trained while the 2-process run goes on
  train_and_evaluate(tiny_pretrain_config(dataset, **{"log_every_steps": 1, "checkpoint.every_steps": 3}), one)
  a, b = metrics(two.ended()), metrics(one)
  assert sorted(a) == sorted(b) == list(range(1, 7))
  np.testing.assert_allclose([a[s]["loss"] for s in a], [b[s]["loss"] for s in b], rtol=1e-6)


def test_kill_9_of_both_processes_and_a_rerun_end_bit_exactly(dataset, two, tmp_path):
  """SIGKILL to both processes once step 3 is committed, then the same command again: the
  parameters and every logged metric (the killed run's, the rerun's) are the uninterrupted run's."""
  victim = tmp_path / "victim"
  procs = pretrain(victim, dataset, 6)
  deadline = time.time() + 300
  while not (victim / "checkpoints" / "3").is_dir() and time.time() < deadline and procs[0].poll() is None:
    time.sleep(0.02)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  finish(procs, victim, (-signal.SIGKILL, -signal.SIGKILL))
  assert saved_steps(victim)[-1] == 3  # killed mid-run, with step 3 committed and step 6 not
  finish(pretrain(victim, dataset, 6), victim)
  reference = two.ended()
  assert_params_equal(final_params(victim), final_params(reference))
  assert metrics(victim) == metrics(reference)


def test_a_two_process_checkpoint_exports_on_one_device(two, tmp_path):
  """`flaxbert convert` in a process with 1 device exports the 2 × 4-device run's step 6 exactly."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  workdir = two.ended()
  done = subprocess.run([sys.executable, "-m", "flaxbert.cli", "convert", str(workdir), str(tmp_path / "hf"),
                         "--to", "hf"], env=env, capture_output=True, text=True, timeout=600, check=True)
  assert "step 6" in done.stdout, done.stdout
  exported, saved = load(tmp_path / "hf").params, final_params(workdir)
  assert sorted(weights.flat(exported)) == sorted(weights.flat(saved))
  assert_params_equal(exported, saved)


def test_fine_tuning_on_two_processes_scores_as_on_one(tmp_path):
  """Training batches split per process, evaluation gathered from both (every dev example once,
  the last batch padded and masked), one writer of the workdir's files."""
  bert = write_pretrained(tmp_path / "bert", "hf")
  train, dev = write_sst2(tmp_path / "train.tsv", 96, 0), write_sst2(tmp_path / "dev.tsv", 43, 1)
  paths = [f"--config.init={bert}", f"--config.train_path={train}", f"--config.eval_path={dev}"]
  two_dir, one_dir = tmp_path / "two", tmp_path / "one"
  procs = launch("finetune", two_dir, *FINETUNE, *paths)
  try:
    one = finetune(tiny_finetune_config("glue_sst2", bert, train, dev, num_epochs=1.0), one_dir)  # meanwhile
  finally:
    finish(procs, two_dir)
  for name in ("run_config.json", "task.json"):  # the same run, the same model
    assert json.loads((two_dir / name).read_text()) == json.loads((one_dir / name).read_text()), name
  assert json.loads((two_dir / "eval_results.json").read_text()) == one
  a, b = ([json.loads(line) for line in (w / "predictions.jsonl").read_text().splitlines()] for w in (two_dir, one_dir))
  assert [(r["id"], r["label"]) for r in a] == [(r["id"], r["label"]) for r in b]
  assert [r["id"] for r in a] == [f"dev-{line}" for line in range(2, 45)]  # every dev example once, in order
  np.testing.assert_allclose([r["probabilities"]["1"] for r in a], [r["probabilities"]["1"] for r in b], rtol=1e-6)
  a, b = metrics(two_dir), metrics(one_dir)
  assert sorted(a) == sorted(b) and len(a) == 6  # 96 examples, batch 8: 12 steps, logged every 2
  np.testing.assert_allclose([a[s]["loss"] for s in a], [b[s]["loss"] for s in b], rtol=1e-6)


def test_sigterm_to_one_process_while_starting_stops_both_at_the_same_step(dataset, tmp_path):
  """A preemption notice that reaches process 1 after the processes have joined, before training
  starts: it neither ends that process (the other would wait for it in a collective) nor is lost
  (JAX's preemption service would take it); both train to the first step they agree on (2), save
  it and exit 143."""
  stopped = tmp_path / "stopped"
  procs = pretrain(stopped, dataset, 6)  # the command of `two`: process 0 finds its train step compiled
  deadline = time.time() + 300
  while not (stopped / LOCK_FILE).exists() and time.time() < deadline:  # process 0 holds it once joined
    time.sleep(0.02)
  sent = time.time()
  procs[1].send_signal(signal.SIGTERM)
  outputs = finish(procs, stopped, (143, 143), timeout=120)
  assert time.time() - sent < 90
  assert "SIGTERM received while the run was starting" in outputs[1]
  assert saved_steps(stopped) == [2] and json.loads((stopped / "summary.json").read_text())["step"] == 2
  assert all("at step 2 of 6" in out for out in outputs), outputs


def test_a_signal_while_starting_is_kept_for_the_next_loop_and_ctrl_c_twice_quits():
  before = {s: signal.getsignal(s) for s in stop_signals.SIGNALS}
  with stop_signals.deferred():
    os.kill(os.getpid(), signal.SIGTERM)  # the process goes on
    taken = stop_signals.StopRequest()
    taken.restore()
    later = stop_signals.StopRequest()
    later.restore()
    assert (taken.signal, later.signal) == ("SIGTERM", None)  # the loop that starts next takes it, once
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert {s: signal.getsignal(s) for s in stop_signals.SIGNALS} == before


def test_processes_read_disjoint_halves_of_each_global_batch(dataset):
  halves = [PretrainingData(dataset, "train", global_batch_size=16, seed=0, process_index=p, process_count=2)
            for p in range(2)]
  whole = PretrainingData(dataset, "train", global_batch_size=16, seed=0)
  for step in (0, 1, 7):
    rows = [h._rows(step)[1] for h in halves]  # pylint: disable=protected-access
    assert not set(rows[0]) & set(rows[1])
    np.testing.assert_array_equal(np.concatenate(rows), whole._rows(step)[1])  # pylint: disable=protected-access
