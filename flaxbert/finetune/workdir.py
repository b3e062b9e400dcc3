"""A fine-tuning workdir's record of itself: task.json, and where results go.

task.json holds what every later command needs to rebuild the model and dispatch on it:
  kind      the task family (flaxbert.finetune.tasks.registry.FAMILIES): every command dispatches
            on it, never on which fields happen to be present
  task      the TASK name the run was configured with
  state     what the family learnt from the training data (label sets)
  model     the BertConfig of the (encoder's) model
  settings  the family's settings the model depends on (lengths, pooling, warm start, input layout);
            a rerun with other values is refused (a new workdir is needed)
  defaults  settings later commands default to (generation's beam size, …); a rerun updates them
A task.json written before `kind` existed is upgraded when read (`read_record`).

The workdir also holds the tokenizer (vocab.txt or spm.model), checkpoints/, metrics.jsonl and
events, eval_results.json with the task's predictions, and evaluations/STEM/ for `flaxbert evaluate`
(with source.json naming the evaluated files).
"""
import hashlib
import json
import os
from pathlib import Path

import jax

from flaxbert import atomic, storage
from flaxbert.errors import InputError
from flaxbert.finetune.tasks.registry import FAMILIES, family_of
from flaxbert.training.checkpoint import CHECKPOINTS

TASK_FILE = "task.json"
RESULTS_FILE = "eval_results.json"
EVALUATIONS = "evaluations"
SOURCE_FILE = "source.json"  # in evaluations/NAME/: the absolute paths of the evaluated files

# What flaxbert 0.1.0 recorded at the top level of an encoder family's task.json that the family uses.
_LEGACY_ENCODER_SETTINGS = {"similarity": ("max_seq_length", "pooling"),
                            "extractive_summarization": ("max_seq_length", "pooling", "inter_sentence_layers")}
# State a family records that older versions did not (flaxbert 0.3.0: multi-label classification).
_STATE_ADDED = {"classification": {"multi_label": False}}
# What flaxbert 0.1.0's configs/finetune.py gave generation for a seq2seq task (task.json did not record it).
_LEGACY_GENERATION = {
    "translation": {"beam_size": 4, "length_penalty": 0.6, "eval_batch_size": 64, "length_bucket": 16},
    "summarization_abstractive": {"beam_size": 4, "length_penalty": 0.6, "eval_batch_size": 16, "length_bucket": 16},
}


def write_json(path: Path, value: dict) -> None:
  """A JSON file written atomically, by process 0 only."""
  if jax.process_index() == 0:
    atomic.write_json(path, value, sort_keys=True)


def evaluation_dir(workdir: Path, name: str, source: str) -> Path:
  """WORKDIR/evaluations/NAME/: where `evaluate` on eval file(s) `source` (first file's name NAME)
  writes its scores and predictions, beside (never over) the fine-tuning run's own dev results.
  The folder records its source (SOURCE_FILE); another file of the same name gets NAME-HASH/
  (a hash of its absolute path), so two evaluations never share a folder."""
  paths = [os.path.abspath(p) for p in source.split(",") if p]
  directory = workdir / EVALUATIONS / name
  if directory.is_dir() and _recorded_source(directory) != paths:
    directory = directory.with_name(f"{name}-{hashlib.sha1(','.join(paths).encode()).hexdigest()[:8]}")
  write_json(directory / SOURCE_FILE, {"eval_path": paths})
  return directory


def _recorded_source(directory: Path) -> list | None:
  """The eval_path an evaluation folder records; None when it records none readable."""
  try:
    value = json.loads((directory / SOURCE_FILE).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None
  return value.get("eval_path") if isinstance(value, dict) else None


def check_new_or_finetune(workdir: Path) -> None:
  """Refuses, before anything is written there, a workdir with checkpoints of another kind of run."""
  if (workdir / CHECKPOINTS).is_dir() and not (workdir / TASK_FILE).is_file():
    raise InputError(f"{workdir}: holds checkpoints but no {TASK_FILE}: not a fine-tuning workdir (a pretraining "
                     "one?); fine-tune into a new workdir, with this one as --config.init")


def check_task(workdir: Path, task: str) -> None:
  """Refuses a workdir fine-tuned for another task (before its settings are compared: no
  resume_changes can make one task's checkpoints another's)."""
  if (workdir / TASK_FILE).is_file() and (old := read_record(workdir)["task"]) != task:
    raise InputError(f"{workdir / TASK_FILE}: this workdir was fine-tuned for another task ({old}, not {task}); "
                     "use a new workdir")


def kind_of(path: str | Path) -> str | None:
  """The task family of a fine-tuning workdir, or None for any other path (a model folder…)."""
  if not (storage.path(path) / TASK_FILE).is_file():
    return None
  return read_record(path)["kind"]


def read_record(workdir: str | Path) -> dict:
  """The workdir's task.json, upgraded to the current layout; a clear error when there is none."""
  path = storage.path(workdir) / TASK_FILE
  if not path.is_file():
    raise InputError(f"{workdir}: no {TASK_FILE}; not a fine-tuning workdir (run `flaxbert finetune` first)")
  try:
    record = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputError(f"{path}: not readable JSON ({e})") from None
  if not isinstance(record, dict) or not isinstance(record.get("task"), str):
    raise InputError(f"{path}: expected a JSON object with a 'task', got {str(record)[:80]}")
  if "kind" not in record:
    try:
      record = _upgrade(record)
    except (KeyError, TypeError, InputError) as e:
      raise InputError(f"{path}: a task.json of flaxbert 0.1.0 that cannot be read ({type(e).__name__}: {e}); "
                       "fine-tune into a new workdir") from None
  if record["kind"] not in FAMILIES:
    raise InputError(f"{path}: kind {record['kind']!r} is not a task family of this flaxbert "
                     f"({', '.join(FAMILIES)}); the workdir was written by another version")
  if isinstance(record.get("state"), dict):  # state fields added since, at the value older runs had
    record["state"] = {**_STATE_ADDED.get(record["kind"], {}), **record["state"]}
  return record


def _upgrade(old: dict) -> dict:
  """A task.json of flaxbert 0.1.0 (no "kind") in the current layout; its kind is its task's family."""
  kind = family_of(old["task"])
  record = {"kind": kind, "task": old["task"], "model": old["model"], "defaults": {}}
  if kind == "seq2seq":
    record["state"] = {}
    record["settings"] = {**old["state"], "max_source_length": old["max_source_length"],
                          "max_target_length": old["max_target_length"]}
    record["defaults"] = dict(_LEGACY_GENERATION[old["task"]])
  else:
    record["state"] = old["state"]
    keys = _LEGACY_ENCODER_SETTINGS.get(kind, ("max_seq_length",))
    record["settings"] = {"inputs": old["inputs"], **{k: old[k] for k in keys}}
  return record


def check_record(workdir: Path, record: dict) -> None:
  """Writes task.json; an existing one for another task, labels, model or settings is an error (a
  new workdir is needed). `defaults` may change between runs."""
  path = workdir / TASK_FILE
  if path.exists():
    old = read_record(workdir)
    new = json.loads(json.dumps(record))
    identity = [k for k in new if k != "defaults"]
    differ = [k for k in identity if old.get(k) != new[k]]
    if differ:
      raise InputError(f"{path}: this workdir was fine-tuned with another {'/'.join(differ)} "
                       f"({old['task']}, {old['state']}); use a new workdir")
    if old.get("defaults") == new.get("defaults") and "kind" in json.loads(path.read_text()):
      return
  write_json(path, record)
