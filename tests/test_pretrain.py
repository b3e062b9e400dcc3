"""Pretraining end to end: a short run, exact resume, 1 vs 8 devices (DP and FSDP), checkpoints."""
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import prepare as prepare_config
from corpus_fixtures import (assert_params_equal, final_params, prepare_tiny, tiny_pretrain_config, write_corpus,
                             write_vocab)
from data_prep.builder import prepare
from flaxbert.errors import InputError
from flaxbert.pretrain.job import train_and_evaluate
from flaxbert.training import checkpoint
from flaxbert.training.sharding import FSDP
from flaxbert.training.loop import StopRequest
from flaxbert.training.state import threefry_kernels


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return prepare_tiny(tmp_path_factory.mktemp("pretrain_data"))


tiny_config = tiny_pretrain_config


def stopped_at(config, step):
  """`config`'s run, stopped at `step` as a preempted run would be: the schedule still ends at its end."""
  config.optim.num_train_steps = config.num_train_steps
  config.num_train_steps = step
  return config


def losses(workdir):
  return [r["loss"] for r in map(json.loads, (Path(workdir) / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_short_run_end_to_end(dataset, tmp_path):
  summary = train_and_evaluate(tiny_config(dataset, **{"checkpoint.every_steps": 2, "checkpoint.keep": 2}), tmp_path / "run")
  run = tmp_path / "run"
  assert summary["step"] == 6 and json.loads((run / "summary.json").read_text())["step"] == 6
  assert sorted(checkpoint.manager(run, asynchronous=False).all_steps()) == [4, 6]  # saved 2, 4, 6; keep 2
  assert list(run.glob("events.out.tfevents*")) and len(losses(run)) == 3
  train, evals = summary["final_train_metrics"], summary["final_eval_metrics"]
  for key in ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy", "learning_rate", "grad_norm",
              "param_norm", "examples_per_second", "tokens_per_second", "mfu"):
    assert np.isfinite(train[key]), key
  assert 0 <= evals["eval_mlm_accuracy"] <= 1 and evals["eval_mlm_loss"] > 0
  assert (run / "vocab.txt").is_file() and (run / "flaxbert_config.json").is_file()


def test_resume_is_exact(dataset, tmp_path):
  straight = tmp_path / "straight"
  train_and_evaluate(tiny_config(dataset), straight)
  split = tmp_path / "split"
  train_and_evaluate(stopped_at(tiny_config(dataset), 3), split)
  summary = train_and_evaluate(tiny_config(dataset), split)  # the same command again: resumes at 3
  assert summary["step"] == 6
  assert_params_equal(final_params(split), final_params(straight))


def test_packed_dynamic_masking_trains_and_resumes_exactly(tmp_path):
  tmp = tmp_path / "data"
  c = prepare_config.get_config("tiny")
  c.input = (str(write_corpus(tmp / "corpus", num_files=4)),)
  c.vocab, c.output_dir = str(write_vocab(tmp / "vocab.txt")), str(tmp / "packed")
  c.validation_fraction, c.masking, c.dupe_factor, c.random_next_sentence, c.short_seq_prob = 0.2, "dynamic", 1, False, 0.5
  dataset = prepare(c)[0]
  config = functools.partial(tiny_config, dataset, max_examples_per_row=4)
  summary = train_and_evaluate(config(), tmp_path / "straight")
  assert "nsp_loss" not in summary["final_train_metrics"] and np.isfinite(summary["final_eval_metrics"]["eval_mlm_loss"])
  train_and_evaluate(stopped_at(config(), 3), tmp_path / "split")
  train_and_evaluate(config(), tmp_path / "split")
  assert_params_equal(final_params(tmp_path / "split"), final_params(tmp_path / "straight"))


@pytest.mark.parametrize("rules", ["data_parallel", "fsdp"])
def test_eight_devices_match_one(dataset, tmp_path, rules):
  from flaxbert.training import sharding  # pylint: disable=import-outside-toplevel
  steps = {"num_train_steps": 20, "log_every_steps": 1, "checkpoint.every_steps": 20}
  one = tiny_config(dataset, **steps)
  train_and_evaluate(one, tmp_path / "one", devices=jax.devices()[:1])
  eight = tiny_config(dataset, **steps)
  if rules == "fsdp":
    eight.mesh.data, eight.mesh.fsdp = 2, 4
    eight.mesh.sharding_rules = sharding.FSDP
  train_and_evaluate(eight, tmp_path / "eight")
  a, b = np.array(losses(tmp_path / "one")), np.array(losses(tmp_path / "eight"))
  assert len(a) == len(b) == 20
  np.testing.assert_allclose(b, a, rtol=1e-5)
  assert a[-1] < a[0]


def test_checkpoints_move_between_eight_devices_and_one(dataset, tmp_path):
  run = tmp_path / "run"
  train_and_evaluate(stopped_at(tiny_config(dataset), 3), run)  # 8 devices
  train_and_evaluate(tiny_config(dataset), run, devices=jax.devices()[:1])  # resumes on 1
  reference = tmp_path / "reference"
  train_and_evaluate(tiny_config(dataset), reference, devices=jax.devices()[:1])
  back = tmp_path / "back"
  train_and_evaluate(stopped_at(tiny_config(dataset), 3), back, devices=jax.devices()[:1])  # 1 device
  train_and_evaluate(tiny_config(dataset), back)  # resumes on 8
  for other in (run, back):
    for x, y in zip(jax.tree_util.tree_leaves(final_params(other)), jax.tree_util.tree_leaves(final_params(reference))):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


ONE_DEVICE_SIDE = """
import json, sys
import numpy as np
from corpus_fixtures import tiny_pretrain_config
from flaxbert.interop.pretrained import convert, load
from flaxbert.models import weights
from flaxbert.pretrain.job import train_and_evaluate
import jax
assert jax.device_count() == 1
eight, out, dataset, one = sys.argv[1:]
loaded = load(eight)  # saved FSDP-sharded over 8 devices, read on 1
np.savez(out + ".npz", **weights.flat(loaded.params))
convert(eight, out, "hf")
train_and_evaluate(tiny_pretrain_config(dataset, num_train_steps=3), one)  # saved on 1 device
"""


def test_any_checkpoint_exports_on_any_device_count(dataset, tmp_path):
  """8 → 1 and 1 → 8 in separate processes: load, convert and init read a workdir saved on another topology."""
  from flaxbert.interop.pretrained import convert, load  # pylint: disable=import-outside-toplevel
  from flaxbert.models import weights  # pylint: disable=import-outside-toplevel
  eight, one = tmp_path / "eight", tmp_path / "one"
  train_and_evaluate(tiny_config(dataset, num_train_steps=3, **{"mesh.fsdp": 8, "mesh.data": 1,
                                                                  "mesh.sharding_rules": FSDP}), eight)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(Path(__file__).parent),
                                                              str(Path(__file__).parent.parent)]))
  subprocess.run([sys.executable, "-c", ONE_DEVICE_SIDE, str(eight), str(tmp_path / "hf"), str(dataset), str(one)],
                 env=env, check=True, timeout=600, capture_output=True)
  here = weights.flat(load(eight).params)
  there = np.load(tmp_path / "hf.npz")
  assert set(here) == set(there.files) and all(np.array_equal(np.asarray(here[k]), there[k]) for k in here)
  assert (tmp_path / "hf" / "model.safetensors").is_file()
  assert load(one).step == 3 and jax.device_count() == 8  # 1 → 8
  convert(one, tmp_path / "from_one", "hf")
  summary = train_and_evaluate(tiny_config(dataset, num_train_steps=1, init_from=str(one),
                                                  **{"optim.warmup_steps": 0}), tmp_path / "init")
  assert summary["step"] == 1


def test_corrupt_latest_checkpoint_falls_back_without_deleting(dataset, tmp_path, caplog):
  run = tmp_path / "run"
  train_and_evaluate(tiny_config(dataset), run)
  params = final_params(run)
  for f in (run / "checkpoints" / "6" / "params").rglob("*"):
    if f.is_file() and f.stat().st_size > 100:
      f.write_bytes(b"\0" * f.stat().st_size)
  from flaxbert.interop.pretrained import load  # pylint: disable=import-outside-toplevel
  assert load(run).step == 3  # what an export of the workdir reads, and `convert` prints
  assert (run / "checkpoints" / "6").is_dir()  # readers only skip it
  with caplog.at_level("WARNING", logger="flaxbert"):
    summary = train_and_evaluate(tiny_config(dataset), run)  # the same command again: step 6 is written anew
  assert "checkpoint step 6" in caplog.text and "failed its integrity check" in caplog.text
  assert summary["step"] == 6
  aside = list((run / "checkpoints-corrupt").iterdir())  # reported and moved aside, never deleted
  assert [p.name.split("-")[0] for p in aside] == ["6"] and (aside[0] / "params").is_dir()
  assert_params_equal(final_params(run), params)


def test_phase2_from_phase1_params_or_full_state(dataset, tmp_path):
  phase1 = tmp_path / "phase1"
  train_and_evaluate(tiny_config(dataset), phase1)
  p1 = final_params(phase1)
  params_only = train_and_evaluate(tiny_config(dataset, num_train_steps=2, init_from=str(phase1)), tmp_path / "a")
  assert params_only["step"] == 2  # a new schedule from step 0
  full = train_and_evaluate(tiny_config(dataset, num_train_steps=8, init_from=str(phase1), init_mode="full_state"),
                            tmp_path / "b")
  assert full["step"] == 8  # continued from step 6
  assert not np.array_equal(final_params(tmp_path / "b")["cls"]["predictions"]["bias"], p1["cls"]["predictions"]["bias"])
  with pytest.raises(InputError, match="no restorable checkpoint"):
    train_and_evaluate(tiny_config(dataset, init_from=str(tmp_path / "nowhere")), tmp_path / "c")


def test_divergence_stops_and_keeps_the_last_good_checkpoint(dataset, tmp_path, caplog):
  run = tmp_path / "run"
  unclipped = {"optim.max_grad_norm": 0.0, "optim.warmup_steps": 0}
  train_and_evaluate(tiny_config(dataset, num_train_steps=3, **unclipped), run)
  accept = "optim.learning_rate,optim.num_train_steps"
  with pytest.raises(FloatingPointError, match="diverged"):
    train_and_evaluate(tiny_config(dataset, **{"num_train_steps": 30, "optim.learning_rate": 1e12,
                                               "log_every_steps": 1, "checkpoint.resume_changes": accept},
                                   **unclipped), run)
  assert sorted(checkpoint.manager(run, asynchronous=False).all_steps()) == [3]
  # A rerun with other settings is refused, naming them; accepted, a state that no longer fits the
  # checkpoints (clipping adds optimizer state; another dropout PRNG has other key data) is still
  # refused rather than started afresh over the old run, from the checkpoint's metadata, naming
  # the first leaf that differs, before any read.
  for changed, leaf in (({"optim.max_grad_norm": 1.0}, "opt_state/"), ({"rng_impl": "rbg"}, "rng saved with shape (2,)")):
    name, value = next(iter(changed.items()))
    with pytest.raises(InputError, match=f"settings differ .* {name} \\S+ → {value!r}.*resume_changes=.*{name}"):
      train_and_evaluate(tiny_config(dataset, **dict(unclipped, num_train_steps=3, **changed)), run)
    caplog.clear()
    with pytest.raises(InputError, match="none restores with this configuration"):
      train_and_evaluate(tiny_config(dataset, **dict(unclipped, num_train_steps=3, **changed,
                                                     **{"checkpoint.resume_changes": f"{accept},{name}"})), run)
    assert f"train does not match this run's layout: {leaf}" in caplog.text
  assert sorted(checkpoint.manager(run, asynchronous=False).all_steps()) == [3]


def test_gradient_accumulation_equals_the_large_batch(dataset, tmp_path):
  big = train_and_evaluate(tiny_config(dataset, num_train_steps=3, **{"model.hidden_dropout_prob": 0.0,
                                                                       "model.attention_probs_dropout_prob": 0.0}),
                           tmp_path / "big")
  accumulated = train_and_evaluate(tiny_config(dataset, num_train_steps=3, **{"optim.grad_accum_steps": 4,
                                                                               "model.hidden_dropout_prob": 0.0,
                                                                               "model.attention_probs_dropout_prob": 0.0}),
                                   tmp_path / "acc")
  for x, y in zip(jax.tree_util.tree_leaves(final_params(tmp_path / "big")),
                  jax.tree_util.tree_leaves(final_params(tmp_path / "acc"))):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  assert big["final_train_metrics"]["loss"] == pytest.approx(accumulated["final_train_metrics"]["loss"], rel=1e-5)


def test_kill_9_and_rerun_gives_the_uninterrupted_params(dataset, tmp_path):
  """A real `flaxbert pretrain` process, SIGKILLed after its first checkpoint, then rerun."""
  args = ["--config", "pretrain:tiny", f"--config.dataset_dir={dataset}",
          "--config.num_train_steps=60", "--config.global_batch_size=16", "--config.checkpoint.every_steps=4",
          "--config.log_every_steps=4", "--config.eval_every_steps=0", "--config.eval_max_batches=1",
          "--config.optim.warmup_steps=2"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "flaxbert.cli", "pretrain"]
  # the uninterrupted run goes on beside the one to be killed (start-up and compiling are mostly
  # single-threaded, so the two overlap)
  with (tmp_path / "straight.log").open("w") as log:
    straight = subprocess.Popen([*cmd, "--workdir", str(tmp_path / "straight"), *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)
    victim = subprocess.Popen([*cmd, "--workdir", str(tmp_path / "killed"), *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "checkpoints" / "4").is_dir() and time.time() < deadline and victim.poll() is None:
      time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert straight.wait(timeout=600) == 0, (tmp_path / "straight.log").read_text()[-2000:]
  steps = checkpoint.manager(tmp_path / "killed", asynchronous=False).all_steps()
  assert steps and max(steps) < 60, steps  # killed mid-run, after at least one checkpoint
  subprocess.run([*cmd, "--workdir", str(tmp_path / "killed"), *args], env=env, check=True, timeout=600,
                 capture_output=True)
  assert_params_equal(final_params(tmp_path / "killed"), final_params(tmp_path / "straight"))
  shutil.rmtree(tmp_path / "straight")


def test_sigterm_saves_before_exiting(dataset, tmp_path):
  args = ["--config", "pretrain:tiny", f"--config.dataset_dir={dataset}",
          "--config.num_train_steps=100000", "--config.global_batch_size=16", "--config.checkpoint.every_steps=100000",
          "--config.log_every_steps=1", "--config.eval_every_steps=0", "--config.eval_max_batches=1"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-m", "flaxbert.cli", "pretrain", "--workdir", str(tmp_path / "run"), *args],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  jsonl = tmp_path / "run" / "metrics.jsonl"
  while (not jsonl.exists() or len(jsonl.read_text().splitlines()) < 3) and time.time() < deadline:
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 128 + signal.SIGTERM  # stopped early: a scheduler requeues it
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["stopped_by"] == "SIGTERM" and 3 <= summary["step"] < 100000
  assert checkpoint.manager(tmp_path / "run", asynchronous=False).all_steps() == [summary["step"]]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_request_takes_both_signals_and_restores_the_handlers(signum):
  before = signal.getsignal(signum)
  stop = StopRequest()
  try:
    assert stop.signal is None
    os.kill(os.getpid(), signum)
    assert stop.signal == signum.name  # the run's loop saves and exits at the next step boundary
  finally:
    stop.restore()
  assert signal.getsignal(signum) is before


def test_bfloat16_compute_keeps_float32_weights(dataset, tmp_path):
  summary = train_and_evaluate(tiny_config(dataset, num_train_steps=2, **{"model.dtype": "bfloat16"}), tmp_path / "run")
  assert np.isfinite(summary["final_train_metrics"]["loss"])
  assert all(np.asarray(x).dtype == np.float32 for x in jax.tree_util.tree_leaves(final_params(tmp_path / "run")))


def test_rerunning_a_finished_run_evaluates_without_training(dataset, tmp_path):
  first = train_and_evaluate(tiny_config(dataset, num_train_steps=2), tmp_path / "run")
  again = train_and_evaluate(tiny_config(dataset, num_train_steps=2), tmp_path / "run")
  assert again["step"] == 2 and again["final_train_metrics"] == {}
  assert again["final_eval_metrics"]["eval_mlm_loss"] == pytest.approx(first["final_eval_metrics"]["eval_mlm_loss"])


def test_rbg_dropout_prng_trains_and_bad_names_are_refused(dataset, tmp_path):
  summary = train_and_evaluate(tiny_config(dataset, num_train_steps=2, rng_impl="unsafe_rbg"), tmp_path / "rbg")
  assert summary["step"] == 2 and np.isfinite(summary["final_train_metrics"]["loss"])
  with pytest.raises(InputError, match="rng_impl: expected one of"):
    train_and_evaluate(tiny_config(dataset, num_train_steps=2, rng_impl="mt19937"), tmp_path / "bad")
  with pytest.raises(InputError, match="num_train_steps: expected a positive integer, got -5"):
    train_and_evaluate(tiny_config(dataset, num_train_steps=-5), tmp_path / "bad")
  # A refused configuration leaves nothing in the workdir that looks like a started run.
  with pytest.raises(InputError, match=r"optim.warmup_steps: expected 0…num_train_steps \(2\)"):
    train_and_evaluate(tiny_config(dataset, **{"num_train_steps": 2, "optim.warmup_steps": 10}), tmp_path / "warm")
  assert not (tmp_path / "warm").exists()  # refused before the workdir was created


def test_threefry_kernels_restores_the_flag_even_on_error():
  """The init's CUDA-threefry lowering stays inside create_train_state: the train step traced after
  it keeps XLA's fusible threefry."""
  before = jax.config.jax_threefry_gpu_kernel_lowering
  with pytest.raises(RuntimeError, match="inside"):
    with threefry_kernels():
      assert jax.config.jax_threefry_gpu_kernel_lowering
      raise RuntimeError("inside")
  assert jax.config.jax_threefry_gpu_kernel_lowering == before
