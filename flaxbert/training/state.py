"""The train state every job trains: built from shapes, initialised straight into its sharded layout.

`create_train_state` evaluates the model's init abstractly (`jax.eval_shape`), derives the
parameter and optimizer-state shardings from the logical axis names and the rules
(flaxbert.training.sharding), and runs one jitted init whose outputs land in that layout: nothing
is materialised on one device first. Loaded weights (a fine-tuning encoder, a BERT2BERT warm
start) are merged inside that jitted init, so they too go straight to their shards.
"""
import contextlib
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from flaxbert.errors import InputError
from flaxbert.training import sharding

# Dropout's PRNG (jax.random key implementations), the `rng_impl` config field:
#   threefry2x32  JAX's default: the same bits on any device count (partitionable threefry), which
#                 makes 1-vs-8-device equality and bit-exact resume across meshes possible
#   rbg           XLA's RngBitGenerator for bits, threefry for splitting: cheaper dropout masks;
#                 the bits depend on how the step is partitioned
#   unsafe_rbg    RngBitGenerator for splitting too: cheapest; same caveat
RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


def check_rng_impl(impl: str, field: str = "rng_impl") -> str:
  if impl not in RNG_IMPLS:
    raise InputError(f"{field}: expected one of {list(RNG_IMPLS)}, got {impl!r}")
  return impl


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer steps taken
  params: Any
  opt_state: Any
  rng: jax.Array  # base key data of `rng_impl`; dropout uses fold_in(rng, step)
  rng_impl: str = flax.struct.field(pytree_node=False, default="threefry2x32")  # RNG_IMPLS

  def train_items(self) -> dict:
    """What the checkpoint's `train` item holds (params are an item of their own)."""
    return {"step": self.step, "opt_state": self.opt_state, "rng": self.rng}


def boxed_param_shapes(model: nn.Module, inputs: tuple):
  """model.init's params as shapes (jax.ShapeDtypeStruct leaves, still boxed with their logical
  axis names) for `inputs`, model.init's positional arguments as jax.ShapeDtypeStruct trees."""
  return jax.eval_shape(lambda key: model.init(key, *_zeros(inputs)), jax.random.key(0))["params"]


def _zeros(inputs: tuple) -> tuple:
  """Zero arrays shaped as the jax.ShapeDtypeStruct leaves of `inputs`."""
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), inputs)


def create_train_state(model: nn.Module, tx, mesh, rules, seed: int, inputs: tuple, pretrained=None, merge=None,
                       rng_impl: str = "threefry2x32"):
  """(state, shardings): initialised by one jitted call straight into the sharded layout.

  inputs: model.init's positional arguments as jax.ShapeDtypeStruct trees (zeros are fed).
  rng_impl: dropout's PRNG (RNG_IMPLS); parameters are initialised with threefry whatever it is.
  pretrained, merge: `merge(fresh_params, pretrained) -> params` runs inside the jitted init, so
  loaded weights go straight to their shards (fine-tuning's encoder from a checkpoint).
  """
  boxed = boxed_param_shapes(model, inputs)
  params_sh = sharding.param_shardings(boxed, mesh, rules)
  abstract_params = nn.unbox(boxed)
  opt_sh = sharding.opt_state_shardings(tx, jax.eval_shape(tx.init, abstract_params), params_sh, mesh)
  replicated = NamedSharding(mesh, P())
  check_rng_impl(rng_impl)
  shardings = TrainState(step=replicated, params=params_sh, opt_state=opt_sh, rng=replicated, rng_impl=rng_impl)

  def init(key, pretrained):
    params = nn.unbox(model.init(key, *_zeros(inputs))["params"])
    if merge is not None:
      params = merge(params, pretrained)
    dropout_key = key if rng_impl == "threefry2x32" else jax.random.key(seed, impl=rng_impl)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.fold_in(dropout_key, 1)), rng_impl=rng_impl)
  with threefry_kernels():
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(seed), pretrained)
  return state, shardings


@contextlib.contextmanager
def threefry_kernels():
  """Programs traced inside draw threefry bits with jax's CUDA threefry kernel on a GPU (the same
  bits), not XLA's inlined rounds: the parameter init, one random draw per parameter shape, took
  53 s to compile on an H100 (BERT base, jax 0.11.2) that way. Elsewhere this changes nothing."""
  previous = jax.config.jax_threefry_gpu_kernel_lowering
  jax.config.update("jax_threefry_gpu_kernel_lowering", True)
  try:
    yield
  finally:
    jax.config.update("jax_threefry_gpu_kernel_lowering", previous)
