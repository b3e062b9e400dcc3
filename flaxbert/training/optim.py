"""The pretraining / fine-tuning optimizer and learning-rate schedule, built from a config section.

Fields of the section (configs/common.py's `optim`, made concrete by `resolve`), read as attributes:
  optimizer        adamw      optax AdamW: bias-corrected moments, decoupled weight decay × lr;
                   bert_adam  the original BERT AdamWeightDecayOptimizer (google-research/bert
                              optimization.py): m and v are plain EMAs (no bias correction),
                              update = m / (sqrt(v) + eps) + decay · param, then × lr;
                   lamb       optax.lamb (bias-corrected Adam direction + decay, scaled per
                              tensor by the trust ratio ‖param‖ / ‖update‖), MLPerf phase-2 style.
  learning_rate    the peak learning rate (> 0)
  warmup_steps     linear warmup from 0 over this many steps (0 … num_train_steps)
  num_train_steps  the step at which the "linear" schedule reaches 0
  schedule         linear    the original's: lr·step/warmup during warmup, then
                             lr·(1 − step/num_train_steps) (create_optimizer's polynomial_decay of
                             power 1 over the whole run, overridden during warmup; so it resumes at
                             lr·(1 − warmup/num_train_steps), not at lr, and is 0 from the end on)
                   constant  lr after the warmup
  weight_decay     decoupled decay rate (0.01 in BERT); never on LayerNorm parameters or biases
  adam_b1, adam_b2, adam_eps   moment decays and epsilon (BERT: 0.9, 0.999, 1e-6)
  max_grad_norm    global-norm clipping of the gradient, applied first, before the moments, as the
                   original's tf.clip_by_global_norm(grads, 1.0); 0 disables it
  grad_accum_steps micro-batches per optimizer step (validated here, accumulated by the train step)

Weight decay is masked as the original's `exclude_from_weight_decay=["LayerNorm", "layer_norm",
"bias"]`: a parameter whose "/"-joined path contains any of them gets none (so LayerNorm `scale`
and `bias` and every bias are excluded; kernels and embedding tables decay). In LAMB the mask
applies to the decay only; the trust ratio scales every tensor, as optax.lamb and NVIDIA's LAMB do
(the TF LAMB of ALBERT / the MLPerf reference also skips the trust ratio where decay is skipped).

Gradient accumulation is not optax.MultiSteps: flaxbert's train step (flaxbert/training/step.py) scans
over `grad_accum_steps` micro-batches inside one jitted step, adds their loss *sums* and divides
by the whole batch's denominators. That equals the large batch exactly for the masked-LM loss,
whose denominator (masked positions) differs between micro-batches, where MultiSteps' mean of
micro-batch means does not; and one call stays one optimizer step, so the schedule, the
step → batch map of the input pipeline, checkpoints and metrics need no micro-step bookkeeping, and
no accumulator is carried in the checkpointed optimizer state. The optimizer built here therefore
sees one (already accumulated) gradient per step; wrapping it in optax.MultiSteps is also correct
where micro-batch means are what is wanted (tests/test_optim.py checks both).

Dtypes: flaxbert's parameters are float32 master weights (bfloat16 is a compute dtype only), so
the optimizer state simply follows the parameters' dtype; nothing is cast here.
"""
import math
import numbers
import re
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from flaxbert.errors import InputError
from flaxbert.models import weights

OPTIMIZERS = ("adamw", "bert_adam", "lamb")
SCHEDULES = ("linear", "constant")
# google-research/bert optimization.py: exclude_from_weight_decay=["LayerNorm", "layer_norm", "bias"]
NO_DECAY_PATTERNS = ("LayerNorm", "layer_norm", "bias")


# --- validation --------------------------------------------------------------------------------


def _number(config: ml_collections.ConfigDict, field: str, *, integer: bool = False) -> float:
  value = getattr(config, field)
  kinds = numbers.Integral if integer else numbers.Real
  if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
    raise InputError(f"optim.{field}: expected {'an integer' if integer else 'a number'}, got {value!r}")
  return value


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises InputError naming the first bad field of an optimizer config section."""
  if config.optimizer not in OPTIMIZERS:
    raise InputError(f"optim.optimizer: expected one of {OPTIMIZERS}, got {config.optimizer!r}")
  if config.schedule not in SCHEDULES:
    raise InputError(f"optim.schedule: expected one of {SCHEDULES}, got {config.schedule!r}")
  if not _number(config, "learning_rate") > 0:
    raise InputError(f"optim.learning_rate: expected a positive number, got {config.learning_rate!r}")
  if _number(config, "num_train_steps", integer=True) < 1:
    raise InputError(f"optim.num_train_steps: expected at least 1, got {config.num_train_steps!r}")
  if not 0 <= _number(config, "warmup_steps", integer=True) <= config.num_train_steps:
    raise InputError(f"optim.warmup_steps: expected 0…num_train_steps ({config.num_train_steps}), "
                     f"got {config.warmup_steps!r}")
  for field in ("weight_decay", "max_grad_norm"):
    if _number(config, field) < 0:
      raise InputError(f"optim.{field}: expected a number >= 0, got {getattr(config, field)!r}")
  for field in ("adam_b1", "adam_b2"):
    if not 0 <= _number(config, field) < 1:
      raise InputError(f"optim.{field}: expected a number in [0, 1), got {getattr(config, field)!r}")
  if not _number(config, "adam_eps") > 0:
    raise InputError(f"optim.adam_eps: expected a positive number, got {config.adam_eps!r}")
  if _number(config, "grad_accum_steps", integer=True) < 1:
    raise InputError(f"optim.grad_accum_steps: expected at least 1, got {config.grad_accum_steps!r}")


def resolve(section: ml_collections.ConfigDict, run_steps: int) -> ml_collections.ConfigDict:
  """A config's `optim` section (configs/common.py) with the schedule in steps: num_train_steps
  none → the run's `run_steps`; the warmup from warmup_steps or, when that is none,
  warmup_proportion × num_train_steps (exactly one of them is set)."""
  fields = section.to_dict()
  proportion = fields.pop("warmup_proportion", None)
  if fields.get("num_train_steps") is None:
    fields["num_train_steps"] = run_steps
  if (fields.get("warmup_steps") is None) == (proportion is None):
    raise InputError(f"optim.warmup_steps, optim.warmup_proportion: set exactly one (the other to none), got "
                     f"{fields.get('warmup_steps')!r} and {proportion!r}")
  if proportion is not None:
    if isinstance(proportion, bool) or not isinstance(proportion, numbers.Real) or not 0 <= proportion <= 1:
      raise InputError(f"optim.warmup_proportion: expected a number in [0, 1], got {proportion!r}")
    steps = fields["num_train_steps"]
    fields["warmup_steps"] = int(round(proportion * steps)) if isinstance(steps, int) else steps
  return ml_collections.ConfigDict(fields)


# --- schedule ----------------------------------------------------------------------------------


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """step → learning rate: linear warmup from 0, then the original's linear decay (or constant)."""
  check_config(config)
  peak, warmup, total = float(config.learning_rate), int(config.warmup_steps), int(config.num_train_steps)
  constant = config.schedule == "constant"

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    after = (jnp.full_like(step, peak) if constant else
             peak * (1.0 - jnp.minimum(step, total) / total))  # tf.train.polynomial_decay, power 1
    if warmup == 0:
      return after
    return jnp.where(step < warmup, peak * step / warmup, after)
  return schedule


# --- weight-decay mask -------------------------------------------------------------------------


def weight_decay_mask(params: Any) -> Any:
  """The params tree (arrays or shapes) as bools: True where weight decay applies.

  False where the "/"-joined path contains "LayerNorm", "layer_norm" or "bias" (the original's
  regex search), e.g. `bert/embeddings/LayerNorm/scale` and `cls/predictions/bias`.
  """
  def decays(path, _) -> bool:
    name = weights.key(path)
    return not any(re.search(pattern, name) for pattern in NO_DECAY_PATTERNS)
  return jax.tree_util.tree_map_with_path(decays, params)


# --- the original BERT Adam --------------------------------------------------------------------


class BertAdamState(NamedTuple):
  """First and second moments, trees like the params (the original's `adam_m`, `adam_v`)."""
  mu: optax.Updates
  nu: optax.Updates


def scale_by_bert_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """m / (sqrt(v) + eps) with m, v plain EMAs: AdamWeightDecayOptimizer has no bias correction."""
  def init(params):
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return BertAdamState(mu=zeros, nu=zeros)

  def update(grads, state, params=None):
    del params
    mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, grads)
    updates = jax.tree_util.tree_map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, BertAdamState(mu=mu, nu=nu)
  return optax.GradientTransformation(init, update)


# --- the optimizer -----------------------------------------------------------------------------


def build_optimizer(config: ml_collections.ConfigDict, params: Optional[Any] = None) -> optax.GradientTransformation:
  """Clipping by global norm, then the chosen optimizer with the decay mask and the schedule.

  `params` is the parameter tree or its shapes (jax.ShapeDtypeStruct leaves); given, the decay mask
  is computed from it once (and updates of another tree structure fail); omitted, it is computed
  from the params passed to each `update`. The result expects `update(grads, state, params)`.
  """
  schedule = learning_rate_schedule(config)  # validates the whole section
  mask = weight_decay_mask if params is None else weight_decay_mask(params)
  b1, b2, eps, decay = config.adam_b1, config.adam_b2, config.adam_eps, config.weight_decay
  if config.optimizer == "adamw":
    core = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=decay, mask=mask)
  elif config.optimizer == "lamb":
    core = optax.lamb(schedule, b1=b1, b2=b2, eps=eps, weight_decay=decay, mask=mask)
  else:  # bert_adam: decay · param joins the update before the learning rate multiplies it
    core = optax.chain(scale_by_bert_adam(b1, b2, eps),
                       optax.add_decayed_weights(decay, mask=mask),
                       optax.scale_by_learning_rate(schedule))
  if config.max_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), core)
  return core


def describe(config: ml_collections.ConfigDict) -> str:
  """One line for logs."""
  check_config(config)
  if config.schedule == "linear":
    schedule = f"{config.warmup_steps} warmup steps, linear decay to 0 at step {config.num_train_steps}"
  else:
    schedule = f"{config.warmup_steps} warmup steps, then constant"
  clip = f"clip at global norm {config.max_grad_norm:g}" if config.max_grad_norm > 0 else "no clipping"
  return (f"{config.optimizer}: peak lr {config.learning_rate:g} ({schedule}), weight decay "
          f"{config.weight_decay:g} (not LayerNorm/bias), b1 {config.adam_b1:g} b2 {config.adam_b2:g} "
          f"eps {config.adam_eps:g}, {clip}, {config.grad_accum_steps} micro-batch(es) per step")
