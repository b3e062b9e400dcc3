"""Training checkpoints: an Orbax CheckpointManager under WORKDIR/checkpoints.

Each step holds three items:
  params   the model parameters (what `flaxbert.from_pretrained(WORKDIR)` and phase 2 read);
  train    the rest of the train state: step, optimizer state, RNG key;
  meta     JSON: step and seed (the input pipeline's position is the step).
Saves are asynchronous; Orbax writes each step into a temporary folder and renames it when
complete, so a step folder that exists is whole. Restoring picks the newest step that restores;
a corrupt or unreadable one is reported and skipped, never deleted. Any device layout can
restore any checkpoint: arrays are read straight into the shardings of the current mesh.
"""
import logging
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from flaxbert.errors import InputError
from flaxbert.models import weights

log = logging.getLogger("flaxbert")
CHECKPOINTS = "checkpoints"


def manager(workdir: str | Path, *, every_steps: int = 1, keep: int | None = None,
            asynchronous: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(1, every_steps),
                                         enable_async_checkpointing=asynchronous, create=True)
  handlers = {"params": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
              "meta": ocp.JsonCheckpointHandler()}  # known up front, so a step's metadata reads before a restore
  return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINTS, options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, step: int, params, train: dict, meta: dict, force: bool = False) -> bool:
  return mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params), train=ocp.args.StandardSave(train), meta=ocp.args.JsonSave(meta)),
      force=force)


def _abstract(tree):
  """Targets for restoring into the given arrays' shapes, dtypes and shardings."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def _layout_mismatch(saved, target) -> str | None:
  """The first leaf whose saved shape differs from the target's, or that only one side has."""
  have = {k: tuple(leaf.shape) for k, leaf in weights.flat(saved).items()}
  want = {k: tuple(leaf.shape) for k, leaf in weights.flat(target).items()}
  for k in sorted(have.keys() | want.keys()):
    if have.get(k) != want.get(k):
      return f"{k} saved with shape {have.get(k, '(absent)')}, expected {want.get(k, '(absent)')}"
  return None


def restore_latest(mngr: ocp.CheckpointManager, params_target, train_target=None
                   ) -> tuple[int, Any, Any, dict] | None:
  """(step, params, train, meta) of the newest checkpoint that restores; None when there is none.

  Targets are trees of arrays or jax.ShapeDtypeStruct (with shardings) giving the layout wanted;
  train_target None restores params (and meta) only; params_target None restores the params as
  saved (numpy, no sharding). Unreadable steps are logged and skipped.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      targets = {"params": params_target, "train": train_target}
      # Checked against the step's metadata first: a restore that fails on one array leaves the
      # reads of the others in flight, which then flood the console with TensorStore errors.
      saved = mngr.item_metadata(step)
      for name, target in targets.items():
        problem = None if target is None else _layout_mismatch(saved[name], target)
        if problem:
          raise ValueError(f"{name} does not match this run's layout: {problem}")
      items = dict(params=ocp.args.StandardRestore(None if params_target is None else _abstract(params_target)),
                   meta=ocp.args.JsonRestore())
      if train_target is not None:
        items["train"] = ocp.args.StandardRestore(_abstract(train_target))
      restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except  # Orbax/TensorStore raise many types
      log.warning("checkpoint step %d in %s cannot be restored (%s: %s); trying the previous one",
                  step, mngr.directory, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
      continue
    return step, restored["params"], restored.get("train") if train_target is not None else None, restored["meta"]
  return None


def resume(mngr: ocp.CheckpointManager, params_target, train_target) -> tuple[int, Any, Any, dict] | None:
  """restore_latest for continuing a run in its own workdir: None when it holds no checkpoint yet,
  InputError when it holds some but none restores into this run's layout (a changed optimizer,
  model or rng_impl): starting afresh there would later save over, and so lose, the old run."""
  found = restore_latest(mngr, params_target, train_target)
  if found is None and mngr.all_steps():
    raise InputError(f"{mngr.directory}: holds checkpoints (steps {sorted(mngr.all_steps())}) but none restores "
                     "with this configuration (see the warnings above); rerun with the run's own settings, "
                     "or use a new workdir")
  return found


def _newest(workdir: str | Path, params_target) -> tuple[int, Any, Any, dict]:
  directory = Path(workdir) / CHECKPOINTS
  if not directory.is_dir():
    raise InputError(f"{workdir}: no {CHECKPOINTS}/ folder; not a flaxbert training workdir")
  mngr = manager(workdir, asynchronous=False)
  try:
    found = restore_latest(mngr, params_target)
  finally:
    mngr.close()
  if found is None:
    raise InputError(f"{directory}: holds no restorable checkpoint (steps found: {list(mngr.all_steps())})")
  log.info("restored %s step %d", workdir, found[0])
  return found


def restore_params(workdir: str | Path, params_target) -> tuple[int, Any]:
  """The newest restorable step's parameters from a workdir (numpy when targets carry no sharding)."""
  step, params, _, _ = _newest(workdir, params_target)
  return step, jax.tree_util.tree_map(np.asarray, params)


def restore_sharded(workdir: str | Path, boxed_params, mesh, rules) -> tuple[int, Any, Any]:
  """(step, params, shardings): the newest restorable step's parameters read straight into the
  layout `rules` give `boxed_params` (model.init's boxed shapes) on `mesh`."""
  from flaxbert.training import sharding  # pylint: disable=import-outside-toplevel
  params_sh = sharding.param_shardings(boxed_params, mesh, rules)
  target = jax.tree_util.tree_map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                                  nn.unbox(boxed_params), params_sh)
  step, params, _, _ = _newest(workdir, target)
  return step, params, params_sh
