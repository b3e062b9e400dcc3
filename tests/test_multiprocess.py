"""Real multi-process pretraining: 2 processes × 4 CPU devices joined by jax.distributed (gloo
collectives), launched the documented way (JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES +
JAX_PROCESS_ID), against the same run on 1 process × 8 devices."""
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

from corpus_fixtures import prepare_tiny, tiny_pretrain_config
from flaxbert.pretrain.input_pipeline import PretrainingData
from flaxbert.pretrain.job import train_and_evaluate

FLAGS = ["--config", "pretrain:tiny", "--config.global_batch_size=16", "--config.log_every_steps=1",
         "--config.checkpoint.every_steps=3", "--config.eval_every_steps=0", "--config.eval_max_batches=2",
         "--config.optim.warmup_steps=2", "--config.optim.learning_rate=0.001"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return prepare_tiny(tmp_path_factory.mktemp("multiprocess_data"))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(workdir: Path, dataset: Path, steps: int) -> list[subprocess.Popen]:
  port = free_port()
  procs = []
  for index in range(2):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(index))
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "flaxbert.cli", "pretrain", "--workdir", str(workdir), *FLAGS,
         f"--config.dataset_dir={dataset}", f"--config.num_train_steps={steps}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  return procs


def losses(workdir: Path) -> dict[int, float]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_two_processes_train_as_one_and_stop_together(dataset, tmp_path):
  two = tmp_path / "two"
  procs = launch(two, dataset, 6)
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  one = tmp_path / "one"
  train_and_evaluate(tiny_pretrain_config(dataset, **{"log_every_steps": 1, "checkpoint.every_steps": 3}), one)
  a, b = losses(two), losses(one)
  assert sorted(a) == sorted(b) == list(range(1, 7))
  np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)], rtol=1e-6)

  # A preemption notice that reaches one process only: both save the same step and exit 143.
  stopped = tmp_path / "stopped"
  procs = launch(stopped, dataset, 100_000)
  deadline = time.time() + 300
  while time.time() < deadline and len(losses(stopped) if (stopped / "metrics.jsonl").is_file() else {}) < 2:
    time.sleep(0.2)
  sent = time.time()
  procs[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [143, 143], outputs
  assert time.time() - sent < 60
  saved = sorted(int(p.name) for p in (stopped / "checkpoints").iterdir() if p.name.isdigit())
  final = json.loads((stopped / "summary.json").read_text())["step"]
  assert saved[-1] == final and all(f"at step {final} of 100000" in out for out in outputs), outputs


def test_processes_read_disjoint_halves_of_each_global_batch(dataset):
  halves = [PretrainingData(dataset, "train", global_batch_size=16, seed=0, process_index=p, process_count=2)
            for p in range(2)]
  whole = PretrainingData(dataset, "train", global_batch_size=16, seed=0)
  for step in (0, 1, 7):
    rows = [h._rows(step)[1] for h in halves]  # pylint: disable=protected-access
    assert not set(rows[0]) & set(rows[1])
    np.testing.assert_array_equal(np.concatenate(rows), whole._rows(step)[1])  # pylint: disable=protected-access
