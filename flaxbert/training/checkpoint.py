"""Training checkpoints: an Orbax CheckpointManager under WORKDIR/checkpoints.

Each step holds three items:
  params   the model parameters (what `flaxbert.from_pretrained(WORKDIR)` and phase 2 read);
  train    the rest of the train state: step, optimizer state, RNG key;
  meta     JSON: step and seed (the input pipeline's position is the step).
Saves are asynchronous; Orbax writes each step into a temporary folder and renames it when
complete, so a step folder that exists is whole; once it is, its files' digests are recorded
(flaxbert.training.integrity), at the next save or at `finish`. Restoring picks the newest step
that passes its integrity check and restores; a corrupt or unreadable one is reported and skipped,
never deleted (a resuming run moves it, and any newer step it skipped, aside). Any device layout
can restore any checkpoint: arrays are read straight into the shardings of the current mesh.
"""
import logging
import weakref
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from flaxbert import storage
from flaxbert.errors import InputError
from flaxbert.models import weights
from flaxbert.training import integrity

log = logging.getLogger("flaxbert")
CHECKPOINTS = "checkpoints"


def manager(workdir: str | Path, *, every_steps: int = 1, keep: int | None = None,
            asynchronous: bool = True) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(1, every_steps),
                                         enable_async_checkpointing=asynchronous, create=True)
  handlers = {"params": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
              "meta": ocp.JsonCheckpointHandler()}  # known up front, so a step's metadata reads before a restore
  folder = storage.path(workdir) if storage.is_remote(workdir) else Path(workdir).absolute()
  return ocp.CheckpointManager(folder / CHECKPOINTS, options=options, item_handlers=handlers)


_UNSEALED: "weakref.WeakKeyDictionary[ocp.CheckpointManager, set]" = weakref.WeakKeyDictionary()


def has_steps(workdir: str | Path) -> bool:
  """Whether WORKDIR/checkpoints holds any committed step (a folder named by its step number)."""
  directory = storage.path(workdir) / CHECKPOINTS
  return directory.is_dir() and any(p.name.isdigit() and p.is_dir() for p in directory.iterdir())


def _step_dir(mngr: ocp.CheckpointManager, step: int) -> Path:
  return storage.path(mngr.directory) / str(step)


def _seal_finished(mngr: ocp.CheckpointManager) -> None:
  """Records the digests of the steps this manager saved, once Orbax has committed them."""
  mngr.wait_until_finished()
  pending = _UNSEALED.setdefault(mngr, set())
  if jax.process_index() == 0:
    for step in sorted(pending):
      integrity.seal(_step_dir(mngr, step))
  pending.clear()


def save(mngr: ocp.CheckpointManager, step: int, params, train: dict, meta: dict, force: bool = False) -> bool:
  """Saves a step (asynchronously); the previous save is finished and sealed first (Orbax waits
  for it anyway before starting another)."""
  _seal_finished(mngr)
  saved = mngr.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params), train=ocp.args.StandardSave(train), meta=ocp.args.JsonSave(meta)),
      force=force)
  if saved:
    _UNSEALED.setdefault(mngr, set()).add(step)
  return saved


def finish(mngr: ocp.CheckpointManager) -> None:
  """Waits for the last save, seals it and closes the manager."""
  try:
    _seal_finished(mngr)
  finally:
    mngr.close()


def _abstract(tree):
  """Targets for restoring into the given arrays' shapes, dtypes and shardings; a leaf without a
  sharding (numpy, a plain ShapeDtypeStruct, a saved array's metadata) is read whole onto this
  process's first device, whatever mesh and number of processes saved it (Orbax otherwise
  restores the saved layout, which exists only on the saving topology)."""
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def target(x):
    sharding = getattr(x, "sharding", None)  # a saved array's metadata has a description, not a Sharding
    return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                sharding=sharding if isinstance(sharding, jax.sharding.Sharding) else local)
  return jax.tree_util.tree_map(target, tree)


def _layout_mismatch(saved, target) -> str | None:
  """The first leaf whose saved shape differs from the target's, or that only one side has."""
  have = {k: tuple(leaf.shape) for k, leaf in weights.flat(saved).items()}
  want = {k: tuple(leaf.shape) for k, leaf in weights.flat(target).items()}
  for k in sorted(have.keys() | want.keys()):
    if have.get(k) != want.get(k):
      return f"{k} saved with shape {have.get(k, '(absent)')}, expected {want.get(k, '(absent)')}"
  return None


class _LayoutMismatch(ValueError):
  """A whole checkpoint that does not fit this run (another model or optimizer), not a corrupt one."""


def restore_latest(mngr: ocp.CheckpointManager, params_target, train_target=None, corrupt: list | None = None
                   ) -> tuple[int, Any, Any, dict] | None:
  """(step, params, train, meta) of the newest checkpoint that restores; None when there is none.

  Targets are trees of arrays or jax.ShapeDtypeStruct (with shardings) giving the layout wanted;
  train_target None restores params (and meta) only; params_target None restores the params in
  their saved shapes and dtypes. Targets without shardings are read onto this process's first
  device, so any checkpoint restores on any topology. Steps that fail their integrity check or cannot be read are logged
  and skipped (and appended to `corrupt`); steps of another layout are logged and skipped.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    items = ("params", "meta") if train_target is None else ("params", "train", "meta")
    damage = integrity.verify(_step_dir(mngr, step), items)
    if damage:
      log.warning("checkpoint step %d in %s failed its integrity check (%s); trying the previous one",
                  step, mngr.directory, damage)
      if corrupt is not None:
        corrupt.append(step)
      continue
    try:
      targets = {"params": params_target, "train": train_target}
      # Checked against the step's metadata first: a restore that fails on one array leaves the
      # reads of the others in flight, which then flood the console with TensorStore errors.
      saved = mngr.item_metadata(step)
      for name, target in targets.items():
        problem = None if target is None else _layout_mismatch(saved[name], target)
        if problem:
          raise _LayoutMismatch(f"{name} does not match this run's layout: {problem}")
      items = dict(params=ocp.args.StandardRestore(_abstract(saved["params"] if params_target is None
                                                             else params_target)),
                   meta=ocp.args.JsonRestore())
      if train_target is not None:
        items["train"] = ocp.args.StandardRestore(_abstract(train_target))
      restored = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except  # Orbax/TensorStore raise many types
      log.warning("checkpoint step %d in %s cannot be restored (%s: %s); trying the previous one",
                  step, mngr.directory, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
      if corrupt is not None and not isinstance(e, _LayoutMismatch):
        corrupt.append(step)
      continue
    return step, restored["params"], restored.get("train") if train_target is not None else None, restored["meta"]
  return None


def resume(mngr: ocp.CheckpointManager, params_target, train_target) -> tuple[int, Any, Any, dict] | None:
  """restore_latest for continuing a run in its own workdir: None when it holds no checkpoint yet,
  InputError when it holds some but none restores into this run's layout (a changed optimizer,
  model or rng_impl): starting afresh there would later save over, and so lose, the old run.
  Corrupt steps, and any step newer than the one restored, are moved aside (integrity.move_aside)
  so that training can write those steps again."""
  corrupt: list[int] = []
  found = restore_latest(mngr, params_target, train_target, corrupt)
  if found is None and set(mngr.all_steps()) - set(corrupt):
    raise InputError(f"{mngr.directory}: holds checkpoints (steps {sorted(mngr.all_steps())}) but none restores "
                     "with this configuration (see the warnings above); rerun with the run's own settings, "
                     "or use a new workdir")
  newer = [s for s in mngr.all_steps() if found is None or s > found[0]]
  if newer and jax.process_index() == 0:
    for step in sorted(newer):
      integrity.move_aside(_step_dir(mngr, step))
  if newer:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices("flaxbert: corrupt checkpoints moved aside")
    mngr.reload()
    if found is None:
      log.warning("%s: every checkpoint was corrupt (moved aside); training starts again from step 0",
                  mngr.directory)
  return found


def _newest(workdir: str | Path, params_target) -> tuple[int, Any, Any, dict]:
  directory = storage.path(workdir) / CHECKPOINTS
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
