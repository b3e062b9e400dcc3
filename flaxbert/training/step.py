"""The one train step every job runs: loss sums over denominators, exact gradient accumulation.

A job says what its loss is with three functions: `sums_fn(params, batch, rng)` returns sums
(loss and metric sums, counts: the naming convention of flaxbert.training.metrics), `counts_fn(batch)`
the whole batch's denominators, and `objective(sums, counts)` the scalar loss. Each micro-batch of
an accumulated step is normalised by the whole batch's counts, so the summed gradient equals the
large batch's exactly (for the masked-LM loss, whose denominator differs between micro-batches,
a mean of micro-batch means would not). `compile_train_step` jits it the way every job runs it:
the state donated and laid out by its shardings, the batch split over the mesh's data axes, the
metrics replicated; dropout draws from fold_in(state.rng, step), so the step's masks depend only on
the seed and the step, never on the device layout.
"""
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from flaxbert.training import sharding
from flaxbert.training.state import TrainState


def make_train_step(sums_fn, counts_fn, objective, tx: optax.GradientTransformation, schedule, accum_steps: int):
  """train_step(state, batch) -> (state, metric sums); the batch splits into accum_steps micro-batches.

  sums_fn(params, batch, rng) -> loss/metric sums; counts_fn(batch) -> the whole batch's
  denominators; objective(sums, counts) -> the scalar loss. Normalising every micro-batch by the
  whole batch's counts makes the accumulated gradient equal the large batch's.
  """

  def micro_grads(params, micro, rng, totals):
    def loss(p):
      sums = sums_fn(p, micro, rng)
      return objective(sums, totals), sums
    (_, sums), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return grads, sums

  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=state.rng_impl), state.step)
    totals = counts_fn(batch)
    if accum_steps == 1:
      grads, sums = micro_grads(state.params, batch, rng, totals)
    else:
      micro = jax.tree_util.tree_map(lambda x: x.reshape((accum_steps, -1) + x.shape[1:]), batch)

      def body(carry, xs):
        i, micro_batch = xs
        grads, sums = micro_grads(state.params, micro_batch, jax.random.fold_in(rng, i), totals)
        return jax.tree_util.tree_map(jnp.add, carry, (grads, sums)), None
      zero = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(
          lambda: micro_grads(state.params, jax.tree_util.tree_map(lambda x: x[0], micro), rng, totals)))
      (grads, sums), _ = jax.lax.scan(body, zero, (jnp.arange(accum_steps), micro))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    sums = dict(sums, loss=objective(sums, totals), grad_norm=optax.tree.norm(grads),
                param_norm=optax.tree.norm(params), learning_rate=schedule(state.step))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), sums

  return train_step


def compile_train_step(sums_fn, counts_fn, objective, tx: optax.GradientTransformation, schedule,
                       accum_steps: int, shardings: TrainState, mesh):
  """`make_train_step` jitted as every job runs it: donated state laid out as `shardings`, the
  batch split over `mesh`'s data axes, the metric sums replicated."""
  return jax.jit(make_train_step(sums_fn, counts_fn, objective, tx, schedule, accum_steps), donate_argnums=0,
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, NamedSharding(mesh, P())))
