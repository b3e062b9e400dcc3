"""Optimizers and learning-rate schedules for pretraining and fine-tuning.

From a config section (configs/pretrain.py's `optim`):
  optimizer        adamw      optax AdamW: bias-corrected moments, decoupled weight decay × lr;
                   bert_adam  the original BERT AdamWeightDecayOptimizer: no bias correction
                              (update = m / (sqrt(v) + eps) + decay · param), times lr;
                   lamb       LAMB (layer-wise trust ratio), for large batches (MLPerf phase 2).
  schedule         linear (warmup to the peak, then linear decay to 0 at num_train_steps) | constant
  max_grad_norm    global-norm clipping, applied first, as the original (0 disables)
Weight decay skips LayerNorm parameters and every bias, as the original's exclusion of
"LayerNorm", "layer_norm" and "bias". Parameters are float32 master weights (bf16 is a compute
dtype only), so the optimizer state is float32 too. Gradient accumulation is done by the train
step (exact large-batch normalisation), not here.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from flaxbert.errors import InputError

OPTIMIZERS = ("adamw", "bert_adam", "lamb")
SCHEDULES = ("linear", "constant")


def _check(config: ml_collections.ConfigDict) -> None:
  if config.optimizer not in OPTIMIZERS:
    raise InputError(f"optim.optimizer: expected one of {OPTIMIZERS}, got {config.optimizer!r}")
  if config.schedule not in SCHEDULES:
    raise InputError(f"optim.schedule: expected one of {SCHEDULES}, got {config.schedule!r}")
  if not config.learning_rate > 0:
    raise InputError(f"optim.learning_rate: expected a positive number, got {config.learning_rate!r}")
  if config.num_train_steps < 1:
    raise InputError(f"optim.num_train_steps: expected at least 1, got {config.num_train_steps!r}")
  if not 0 <= config.warmup_steps <= config.num_train_steps:
    raise InputError(f"optim.warmup_steps: expected 0…num_train_steps ({config.num_train_steps}), "
                     f"got {config.warmup_steps!r}")
  if config.weight_decay < 0 or config.max_grad_norm < 0:
    raise InputError("optim.weight_decay and optim.max_grad_norm must be >= 0")
  if config.grad_accum_steps < 1:
    raise InputError(f"optim.grad_accum_steps: expected at least 1, got {config.grad_accum_steps!r}")


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  _check(config)
  peak, warmup = config.learning_rate, config.warmup_steps
  after = (optax.constant_schedule(peak) if config.schedule == "constant" else
           optax.linear_schedule(peak, 0.0, max(1, config.num_train_steps - warmup)))
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def weight_decay_mask(params) -> dict:
  """True where weight decay applies: not under a LayerNorm module, and not a bias."""
  def decays(path, _):
    names = [getattr(k, "key", str(k)) for k in path]
    return not (names[-1] == "bias" or any("LayerNorm" in n or "layer_norm" in n for n in names))
  return jax.tree_util.tree_map_with_path(decays, params)


class _BertAdamState(NamedTuple):
  mu: optax.Updates
  nu: optax.Updates


def _bert_adam_moments(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """m/(sqrt(v)+eps) with plain EMAs: the original AdamWeightDecayOptimizer has no bias correction."""
  def init(params):
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return _BertAdamState(mu=zeros, nu=zeros)

  def update(grads, state, params=None):
    del params
    mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
    updates = jax.tree_util.tree_map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, _BertAdamState(mu=mu, nu=nu)
  return optax.GradientTransformation(init, update)


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clipping, then the chosen optimizer with the decay mask and the schedule."""
  schedule = learning_rate_schedule(config)
  if config.optimizer == "adamw":
    core = optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                       weight_decay=config.weight_decay, mask=weight_decay_mask)
  elif config.optimizer == "lamb":
    core = optax.lamb(schedule, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                      weight_decay=config.weight_decay, mask=weight_decay_mask)
  else:
    core = optax.chain(_bert_adam_moments(config.adam_b1, config.adam_b2, config.adam_eps),
                       optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask),
                       optax.scale_by_learning_rate(schedule))
  if config.max_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), core)
  return core


def describe(config: ml_collections.ConfigDict) -> str:
  return (f"{config.optimizer} lr {config.learning_rate:g} ({config.schedule}, {config.warmup_steps} warmup of "
          f"{config.num_train_steps} steps), weight decay {config.weight_decay:g}, clip {config.max_grad_norm:g}")
