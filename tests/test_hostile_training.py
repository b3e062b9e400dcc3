"""Hostile input to training and its workdirs: each attack → the one-line error or the outcome it must get.

Part of the hostile-input suite (docs/reliability.md): test_hostile_data.py attacks prepared
data and corpora, test_hostile_weights.py released weights; this module attacks checkpoints,
workdirs and training settings. Every attack starts from a copy of one tiny pretraining run
(6 steps, checkpoints at 3 and 6), so none trains more than a few steps.
"""
import dataclasses
import errno
import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import pytest

from corpus_fixtures import prepare_tiny, tiny_pretrain_config
from finetune_fixtures import tiny_finetune_config, write_pretrained, write_squad, write_sst2
from flaxbert import atomic, cli
from flaxbert.errors import InputError
from flaxbert.finetune import job as finetune_job
from flaxbert.interop.pretrained import load
from flaxbert.models import config as model_config
from flaxbert.pretrain import job as pretrain_job
from flaxbert.training import checkpoint, integrity, loop, workdir_lock


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(dataset, workdir, final params) of a finished 6-step run."""
  tmp = tmp_path_factory.mktemp("hostile_training")
  dataset = prepare_tiny(tmp)
  run = tmp / "run"
  pretrain_job.train_and_evaluate(tiny_pretrain_config(dataset), run)
  return dataset, run, load(run).params


@dataclasses.dataclass
class Case:
  """What an attack can reach: a copy of the finished run (`run`), its dataset, and tmp_path."""
  dataset: Path
  run: Path
  tmp: Path
  final: dict

  def train(self, **overrides):
    return pretrain_job.train_and_evaluate(tiny_pretrain_config(self.dataset, **overrides), self.run)

  def flip_bytes(self, item: str, step: int = 6, count: int = 20):
    """XORs `count` bytes in the middle of the step's largest file of `item`."""
    files = [p for p in (self.run / "checkpoints" / str(step) / item).rglob("*") if p.is_file()]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
      data[i] ^= 0xFF
    target.write_bytes(bytes(data))

  def drop_step(self, step: int = 6):
    shutil.rmtree(self.run / "checkpoints" / str(step))


def equal_params(a, b) -> bool:
  from flaxbert.models import weights  # pylint: disable=import-outside-toplevel
  fa, fb = weights.flat(a), weights.flat(b)
  return fa.keys() == fb.keys() and all(np.array_equal(np.asarray(fa[k]), np.asarray(fb[k])) for k in fa)


# --- the attacks ---------------------------------------------------------------------------------
# Each returns nothing and asserts its outcome; an attack expected to be refused raises, and its
# table row gives the regex the one-line message must match.


def bit_flips_in_newest_params(c: Case, caplog):
  c.flip_bytes("params")
  loaded = load(c.run)  # what from_pretrained / convert / init read
  assert loaded.step == 3 and "failed its integrity check" in caplog.text
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree_util.tree_leaves(loaded.params))


def bit_flips_in_newest_optimizer_state(c: Case, caplog):
  c.flip_bytes("train")
  summary = c.train()  # resumes from step 3, moves 6 aside, trains 6 again: the run's own result
  assert summary["step"] == 6 and "failed its integrity check" in caplog.text
  assert equal_params(load(c.run).params, c.final)
  assert [p.name.split("-")[0] for p in (c.run / integrity.CORRUPT).iterdir()] == ["6"]


def corrupt_final_checkpoint_rerun_twice(c: Case, caplog):
  c.flip_bytes("params")
  for _ in range(2):  # the rerun after the repair restores step 6 normally
    assert c.train()["step"] == 6
  assert equal_params(load(c.run).params, c.final)


def keep_zero_checkpoints(c: Case, caplog):
  pretrain_job.train_and_evaluate(tiny_pretrain_config(c.dataset, **{"checkpoint.keep": 0}), c.tmp / "new")


def checkpoint_every_zero_steps(c: Case, caplog):
  pretrain_job.train_and_evaluate(tiny_pretrain_config(c.dataset, **{"checkpoint.every_steps": 0}), c.tmp / "new")


def global_batch_not_divisible_by_devices(c: Case, caplog):
  pretrain_job.train_and_evaluate(tiny_pretrain_config(c.dataset, global_batch_size=12), c.tmp / "new")


def second_writer_on_one_workdir(c: Case, caplog):
  with workdir_lock.hold(c.run):  # another run writing there (flock is per open file: this process counts)
    c.train(num_train_steps=9)


def stale_lock_of_a_dead_run(c: Case, caplog):
  (c.run / workdir_lock.LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": 2 ** 22 + 7,
                                                          "since": "2026-01-01T00:00:00Z"}))
  assert c.train()["step"] == 6  # a finished run, rerun: evaluates
  assert "took over the lock of a run that has ended" in caplog.text and "pid 4194311" in caplog.text


def resume_with_another_seed_and_batch(c: Case, caplog):
  c.train(seed=1, global_batch_size=8)


def resume_with_another_dataset(c: Case, caplog):
  other = c.tmp / "other_data"
  shutil.copytree(c.dataset, other)
  c.train(dataset_dir=str(other))


def resume_with_an_accepted_change(c: Case, caplog):
  c.drop_step()
  summary = c.train(seed=1, **{"checkpoint.resume_changes": "seed"})
  assert summary["step"] == 6 and "resuming with changed settings" in caplog.text
  assert json.loads((c.run / "run_config.json").read_text())["changes"] == [{"seed": [0, 1]}]


def metrics_after_a_resume(c: Case, caplog):
  c.drop_step()  # as if killed after logging step 6, before saving it
  c.train()
  steps = [r["step"] for r in map(json.loads, (c.run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
  assert steps == [2, 4, 6]


def sigterm_exit_code(c: Case, caplog, monkeypatch):
  c.drop_step()

  class Stop(loop.StopRequest):
    signal = "SIGTERM"  # as if the signal arrived during the first step
    def __init__(self):  # pylint: disable=super-init-not-called
      pass
    def restore(self):
      pass
  monkeypatch.setattr(loop, "StopRequest", Stop)
  assert cli.main(["pretrain", "--workdir", str(c.run), *flags(c)]) == 143  # 128 + SIGTERM: schedulers requeue
  assert checkpoint.manager(c.run, asynchronous=False).all_steps() == [3, 4]


def disk_full_while_checkpointing(c: Case, caplog, monkeypatch, capsys):
  c.drop_step()

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(c.run / "checkpoints"))
  monkeypatch.setattr(checkpoint, "save", full)
  assert cli.main(["pretrain", "--workdir", str(c.run), *flags(c)]) == 1
  errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("flaxbert pretrain: error:")]
  assert len(errors) == 1 and "No space left on device" in errors[0] and "checkpoints" in errors[0], errors
  assert load(c.run).step == 3  # nothing already saved was lost


def final_evaluation_fails(c: Case, caplog, monkeypatch):
  c.drop_step()
  monkeypatch.setattr(pretrain_job, "evaluate", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("eval broke")))
  with pytest.raises(RuntimeError, match="eval broke"):
    c.train()
  assert load(c.run).step == 6 and equal_params(load(c.run).params, c.final)  # saved before the evaluation


def killed_while_writing_the_model_config(c: Case, caplog, monkeypatch):
  path = c.run / "flaxbert_config.json"
  before = path.read_bytes()
  monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))  # dies mid-write
  with pytest.raises(KeyboardInterrupt):
    model_config.write_json(path, {"half": "written"})
  assert path.read_bytes() == before and not [p for p in c.run.iterdir() if ".partial-" in p.name]
  # Written through temporary files, yet with a new file's usual mode (not mkstemp's 0600).
  for name in ("flaxbert_config.json", "run_config.json", "vocab.txt", "summary.json"):
    assert (c.run / name).stat().st_mode & 0o777 == 0o666 & ~atomic.umask(), name


def squad_with_an_empty_eval_file(c: Case, caplog):
  bert = write_pretrained(c.tmp / "bert", "hf")
  train, dev = write_squad(c.tmp / "train.json", 8, 0), c.tmp / "dev.json"
  dev.write_text(json.dumps({"version": "1.1", "data": []}))
  finetune_job.train_and_evaluate(tiny_finetune_config("squad_v1", bert, train, dev), c.tmp / "squad")


def evaluate_two_files_with_one_name(c: Case, caplog):
  bert = write_pretrained(c.tmp / "bert", "hf")
  train = write_sst2(c.tmp / "train.tsv", 16, 0)
  (c.tmp / "a").mkdir()
  (c.tmp / "b").mkdir()
  first, second = write_sst2(c.tmp / "a" / "dev.tsv", 8, 1), write_sst2(c.tmp / "b" / "dev.tsv", 8, 2)
  work = c.tmp / "sst2"
  finetune_job.train_and_evaluate(tiny_finetune_config("glue_sst2", bert, train, first, num_epochs=1.0), work)
  for dev in (first, second):
    finetune_job.evaluate(tiny_finetune_config("glue_sst2", bert, train, dev), work)
  sources = sorted(json.loads(p.read_text())["eval_path"] for p in (work / "evaluations").glob("*/source.json"))
  assert sources == [[str(first)], [str(second)]]  # two folders, each naming its file


def flags(c: Case) -> list[str]:
  """The CLI flags of tiny_pretrain_config (what `flaxbert pretrain` would be given)."""
  return ["--config", "pretrain:tiny", f"--config.dataset_dir={c.dataset}", "--config.global_batch_size=16",
          "--config.num_train_steps=6", "--config.log_every_steps=2", "--config.checkpoint.every_steps=3",
          "--config.eval_every_steps=0", "--config.eval_max_batches=2", "--config.optim.warmup_steps=2",
          "--config.optim.learning_rate=0.001"]


# name → (attack, the regex of the one-line InputError it gets, or None: it must succeed as asserted)
ATTACKS: dict[str, tuple[Callable, str | None]] = {
    "bit flips in the newest params": (bit_flips_in_newest_params, None),
    "bit flips in the newest optimizer state": (bit_flips_in_newest_optimizer_state, None),
    "corrupt final checkpoint, rerun twice": (corrupt_final_checkpoint_rerun_twice, None),
    "checkpoint.keep=0": (keep_zero_checkpoints, r"^checkpoint.keep: expected a whole number ≥ 1, got 0; keeping"),
    "checkpoint.every_steps=0": (checkpoint_every_zero_steps, r"^checkpoint.every_steps: expected a whole number ≥ 1"),
    "global batch 12 on 8 devices": (global_batch_not_divisible_by_devices,
                                     r"^global_batch_size: 12 must be a positive multiple of the data-parallel"),
    "two runs on one workdir": (second_writer_on_one_workdir,
                                r": another run is writing here \(host .+, pid \d+, since .+\); wait for it"),
    "stale lock of a dead run": (stale_lock_of_a_dead_run, None),
    "resume with another seed and batch": (resume_with_another_seed_and_batch,
                                           r"run_config.json: .*global_batch_size 16 → 8, seed 0 → 1; .*"
                                           r"resume_changes=global_batch_size,seed$"),
    "resume with another dataset_dir": (resume_with_another_dataset, r"settings differ .*: dataset_dir '.*data' → "),
    "resume with an accepted change": (resume_with_an_accepted_change, None),
    "metrics.jsonl after a resume": (metrics_after_a_resume, None),
    "SIGTERM exit status": (sigterm_exit_code, None),
    "disk full while checkpointing": (disk_full_while_checkpointing, None),
    "final evaluation fails": (final_evaluation_fails, None),
    "killed while writing flaxbert_config.json": (killed_while_writing_the_model_config, None),
    "SQuAD with an empty eval file": (squad_with_an_empty_eval_file, r"^eval_path .*dev.json: holds no examples"),
    "evaluate two files named dev.tsv": (evaluate_two_files_with_one_name, None),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack(name, trained, tmp_path, caplog, monkeypatch, capsys):
  dataset, run, final = trained
  c = Case(dataset, tmp_path / "run", tmp_path, final)
  shutil.copytree(run, c.run)
  attack, refused = ATTACKS[name]
  extra = {k: v for k, v in (("monkeypatch", monkeypatch), ("capsys", capsys))
           if k in attack.__code__.co_varnames[:attack.__code__.co_argcount]}
  with caplog.at_level("INFO", logger="flaxbert"):
    if refused is None:
      attack(c, caplog, **extra)
      return
    with pytest.raises(InputError) as error:
      attack(c, caplog, **extra)
  message = str(error.value)
  assert len(message.splitlines()) == 1 and re.search(refused, message), message
  assert not (tmp_path / "new").exists()  # refused before anything was written
