"""Device mesh and placement: the mesh from config, logical-axis rules, shardings for state and batch.

The model names its parameter axes (`flaxbert.models.encoder.AXES`); a short rules list maps those names
to mesh axes. Changing the rules, not the model, switches between
  data parallel  (default)   params replicated, batch split over ("data", "fsdp");
  FSDP                       rules map "embed" (and "vocab") to "fsdp": params and optimizer
                             state are split across the fsdp axis, gathered per layer by XLA;
  tensor parallel            rules map "heads", "mlp", "vocab" to "model".
Multi-host: `initialize_distributed()` calls `jax.distributed.initialize()` when launched with
more than one process (explicit JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, or
what jax detects itself: Slurm, Open MPI, Cloud TPU), and every process then feeds its slice of
the global batch.
"""
import os
import signal
import threading
from typing import Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flaxbert.errors import InputError

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both

# Rules presets (logical axis → mesh axis or None). Config files pick or edit one.
DATA_PARALLEL = (("batch", BATCH_AXES),)
FSDP = (("batch", BATCH_AXES), ("embed", "fsdp"), ("vocab", None))
TENSOR_PARALLEL = (("batch", BATCH_AXES), ("heads", "model"), ("mlp", "model"), ("vocab", "model"))
# By name, for `--config.mesh.sharding_rules=fsdp` on the command line.
PRESETS = {"data_parallel": DATA_PARALLEL, "fsdp": FSDP, "tensor_parallel": TENSOR_PARALLEL}


# Launches jax's own cluster detection handles (jax.distributed.initialize() with no arguments).
_DETECTED = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
_EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def distributed_arguments(environ=os.environ) -> dict | None:
  """The jax.distributed.initialize keyword arguments a launch's environment asks for: {} for
  jax's own detection (Slurm, Open MPI, Cloud TPU), the explicit three for JAX_COORDINATOR_ADDRESS
  + JAX_NUM_PROCESSES + JAX_PROCESS_ID (jax itself reads only the address), None for a single
  process. A partial or inconsistent set is an InputError naming the variables."""
  given = {k: environ[k] for k in _EXPLICIT if environ.get(k, "") != ""}
  if given:
    missing = [k for k in _EXPLICIT if k not in given]
    if missing:
      raise InputError(f"{', '.join(missing)}: required with {', '.join(given)} (a multi-process launch "
                       f"names the coordinator host:port, the number of processes and this process's id)")
    try:
      count, index = int(given["JAX_NUM_PROCESSES"]), int(given["JAX_PROCESS_ID"])
    except ValueError:
      raise InputError(f"JAX_NUM_PROCESSES={given['JAX_NUM_PROCESSES']!r}, JAX_PROCESS_ID={given['JAX_PROCESS_ID']!r}: "
                       "expected integers") from None
    if count < 1 or not 0 <= index < count:
      raise InputError(f"JAX_PROCESS_ID={index}: expected 0 ≤ id < JAX_NUM_PROCESSES={count}")
    if ":" not in given["JAX_COORDINATOR_ADDRESS"]:
      raise InputError(f"JAX_COORDINATOR_ADDRESS={given['JAX_COORDINATOR_ADDRESS']!r}: expected host:port")
    return {"coordinator_address": given["JAX_COORDINATOR_ADDRESS"], "num_processes": count, "process_id": index}
  if environ.get("SLURM_NTASKS") == "1" and not any(environ.get(k) for k in _DETECTED[1:]):
    return None  # a one-task Slurm job is one process
  if any(environ.get(k) for k in _DETECTED):
    return {}
  return None


def initialize_distributed(enabled: bool = True) -> None:
  """jax.distributed.initialize(...) for multi-process launches (distributed_arguments); a no-op
  for a single process, when already initialised, or when `enabled` is False
  (`--config.distributed=false`: stay one process whatever the environment says).

  JAX's preemption service installs its own SIGTERM handler there, whose notice only
  `multihost_utils.reached_preemption_sync_point` reads: the SIGTERM handler in place before
  (flaxbert.training.stop_signals) is put back, or a SIGTERM that arrived before the training loop
  would be taken from it and never stop the run."""
  if not isinstance(enabled, bool):
    raise InputError(f"distributed: expected true or false, got {enabled!r}")
  arguments = distributed_arguments() if enabled else None
  if arguments is not None and not jax.distributed.is_initialized():
    sigterm = signal.getsignal(signal.SIGTERM)
    jax.distributed.initialize(**arguments)
    if sigterm is not None and threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, sigterm)


def make_mesh(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, model) mesh; a size of -1 takes the devices the other axes leave."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [config.data, config.fsdp, config.model]
  for name, size in zip(MESH_AXES, sizes):
    if not isinstance(size, int) or size == 0 or size < -1:
      raise InputError(f"mesh.{name}: expected a positive integer or -1, got {size!r}")
  if sizes.count(-1) > 1:
    raise InputError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise InputError(f"mesh: {len(devices)} devices do not divide by the fixed axes' product {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise InputError(f"mesh: {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"there are {len(devices)}")
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def rules_from_config(rules) -> tuple[tuple[str, object], ...]:
  """Config rules (pairs of logical name and mesh axis / tuple of axes / None), validated."""
  out = []
  for item in rules:
    if len(item) != 2 or not isinstance(item[0], str):
      raise InputError(f"sharding rules: expected (logical_axis, mesh_axes) pairs, got {item!r}")
    logical, mesh_axes = item
    for axis in (mesh_axes if isinstance(mesh_axes, (tuple, list)) else [mesh_axes]):
      if axis is not None and axis not in MESH_AXES:
        raise InputError(f"sharding rules: {logical!r} maps to unknown mesh axis {axis!r}; "
                         f"expected one of {MESH_AXES} or None")
    out.append((logical, tuple(mesh_axes) if isinstance(mesh_axes, list) else mesh_axes))
  return tuple(out)


def param_shardings(boxed_params, mesh: Mesh, rules) -> dict:
  """NamedShardings for a params tree whose leaves are nn.LogicallyPartitioned (shapes suffice)."""
  specs = nn.get_partition_spec(boxed_params)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def opt_state_shardings(tx: optax.GradientTransformation, abstract_opt_state, params_sharding, mesh: Mesh):
  """The optimizer state laid out like the parameters it tracks; counters replicated."""
  replicated = NamedSharding(mesh, P())
  return optax.tree_map_params(tx, lambda _, sharding: sharding, abstract_opt_state, params_sharding,
                               transform_non_params=lambda _: replicated)


def data_parallel(mesh: Mesh) -> int:
  """How many ways a batch is split: the mesh's data and fsdp axes."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def check_batch_size(field: str, size, mesh: Mesh, accum_steps: int = 1) -> int:
  """`size` if it splits over the data-parallel devices and into `accum_steps` micro-batches, else
  an InputError naming `field`."""
  parallel = data_parallel(mesh)
  if isinstance(accum_steps, bool) or not isinstance(accum_steps, int) or accum_steps < 1:
    raise InputError(f"optim.grad_accum_steps: expected an integer >= 1, got {accum_steps!r}")
  if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % parallel or size % accum_steps:
    also = f" and of optim.grad_accum_steps ({accum_steps})" if accum_steps > 1 else ""
    raise InputError(f"{field}: {size} must be a positive multiple of the data-parallel devices ({parallel}){also}")
  return size


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows → global arrays split over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
