"""The settings that define a training run, recorded in its workdir, and resumes checked against them.

A run that resumes must be the run that was started: the same data, seed, batch, schedule and
model, or its steps no longer follow from its settings. The first run in a workdir writes
WORKDIR/run_config.json (the whole config, paths made absolute); a rerun whose workdir already
holds checkpoints compares its config with it, and a difference in any field that defines the run
is refused, naming each field with its old and new value:

    W/run_config.json: this run's settings differ from the run that wrote W's checkpoints:
    seed 0 → 1, global_batch_size 8 → 16; rerun with the recorded settings, use a new workdir, or
    accept the change with --config.checkpoint.resume_changes=seed,global_batch_size

Fields that only say where the run stops (num_train_steps: the learning-rate schedule is compared
in its resolved form, so stopping early or going on along the same schedule is allowed) or how it
is observed or stored (logging, evaluation and checkpoint cadence, the mesh's layout,
rematerialisation) may change freely; an accepted change is recorded.
"""
import json
import logging
import os
from pathlib import Path
from typing import Callable

import jax

from flaxbert import atomic, storage
from flaxbert.errors import InputError

log = logging.getLogger("flaxbert")
RUN_CONFIG = "run_config.json"
# Flattened keys (and key prefixes, ending in ".") that do not change what a step computes.
FREE_FIELDS = ("num_train_steps", "log_every_steps", "eval_every_steps", "eval_every_epoch", "eval_max_batches",
                      "eval_batch_size", "eval_path", "checkpoint.", "mesh.", "model.remat_policy",
                      "profile", "recipe", "distributed")
# Flattened keys holding local paths: compared as absolute paths (the same folder named two ways).
_PATH_SUFFIXES = ("_dir", "_path", "init", "init_from")


def flatten(config) -> dict:
  """{"a.b": value} for every leaf of a ConfigDict (or nested dict); tuples as lists."""
  out = {}

  def walk(prefix: str, value):
    if hasattr(value, "items") and not isinstance(value, (str, bytes)):
      for k, v in value.items():
        walk(f"{prefix}{k}.", v)
    else:
      out[prefix[:-1]] = list(value) if isinstance(value, tuple) else value
  walk("", config.to_dict() if hasattr(config, "to_dict") else config)
  return json.loads(json.dumps(out, default=str))


def _normalise(key: str, value):
  if isinstance(value, str) and value and key.split(".")[-1].endswith(_PATH_SUFFIXES) and "://" not in value \
      and os.path.exists(value):
    return os.path.abspath(value)
  return value


def _defining(settings: dict) -> dict:
  return {k: v for k, v in settings.items()
          if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in FREE_FIELDS)}


def _accepted(config) -> set[str]:
  value = config.checkpoint.get("resume_changes", "") or ""
  names = value if isinstance(value, (list, tuple)) else str(value).split(",")
  return {n.strip() for n in names if n.strip()}


def check(workdir: str | Path, config, has_checkpoints: bool, resolved: dict | None = None) -> Callable[[], None]:
  """Refuses (when the workdir holds checkpoints of a run it recorded) a config whose defining
  fields differ from WORKDIR/run_config.json's, unless they are listed in
  config.checkpoint.resume_changes; returns the function that records `config` there, to call
  once the run has restored (or started) its state. resolved: sections recorded in their
  resolved form instead (e.g. {"optim": the schedule in steps})."""
  path = storage.path(workdir) / RUN_CONFIG
  new = {k: _normalise(k, v) for k, v in flatten({**config.to_dict(), **(resolved or {})}).items()}
  new_defining = _defining(new)
  if has_checkpoints and path.is_file():
    try:
      old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
      raise InputError(f"{path}: not readable JSON ({e}); restore it, or use a new workdir") from None
    old_defining = _defining(old.get("settings", {}))
    # Fields only one side knows come from another flaxbert version's config, not from the user.
    differ = sorted(k for k in old_defining.keys() & new_defining.keys() if old_defining[k] != new_defining[k])
    refused = [k for k in differ if k not in _accepted(config)]
    if refused:
      listed = ", ".join(f"{k} {old_defining[k]!r} → {new_defining[k]!r}" for k in refused)
      raise InputError(f"{path}: this run's settings differ from the run that wrote {storage.path(workdir).name}'s "
                       f"checkpoints: {listed}; rerun with the recorded settings, use a new workdir, or accept "
                       f"the change with --config.checkpoint.resume_changes={','.join(refused)}")
    if not differ:
      return lambda: None
    log.warning("%s: resuming with changed settings (accepted by checkpoint.resume_changes): %s", path, ", ".join(differ))
    changes = old.get("changes", []) + [{k: [old_defining[k], new_defining[k]] for k in differ}]
  elif has_checkpoints:
    log.warning("%s: the workdir holds checkpoints but no record of their settings (an older flaxbert); "
                "recording this run's", path)
    changes = []
  else:
    changes = []

  def record() -> None:
    if jax.process_index() == 0:
      atomic.write_json(path, {"settings": new, "changes": changes}, sort_keys=True)
  return record
