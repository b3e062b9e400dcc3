"""Optimizers: schedule values, the decay mask, the original BERT Adam, clipping order, bad config."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from flaxbert.errors import InputError
from flaxbert.optim import build_optimizer, learning_rate_schedule, weight_decay_mask


def optim_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(optimizer="adamw", learning_rate=1e-3, warmup_steps=10, num_train_steps=110,
                                     schedule="linear", weight_decay=0.01, adam_b1=0.9, adam_b2=0.999,
                                     adam_eps=1e-6, max_grad_norm=0.0, grad_accum_steps=1))
  c.update(overrides)
  return c


def tree():
  rng = np.random.RandomState(0)
  return {"bert": {"embeddings": {"word_embeddings": {"embedding": rng.randn(5, 4).astype(np.float32)},
                                  "LayerNorm": {"scale": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)}},
                   "encoder": {"layer_0": {"attention": {"query": {"kernel": rng.randn(4, 2, 2).astype(np.float32),
                                                                   "bias": rng.randn(2, 2).astype(np.float32)}}}}},
          "cls": {"predictions": {"bias": rng.randn(5).astype(np.float32)}}}


def test_schedule_values():
  s = learning_rate_schedule(optim_config())
  assert [float(s(i)) for i in (0, 5, 10, 60, 110)] == pytest.approx([0.0, 5e-4, 1e-3, 5e-4, 0.0], abs=1e-9)
  c = learning_rate_schedule(optim_config(schedule="constant"))
  assert float(c(10)) == pytest.approx(1e-3) and float(c(100)) == pytest.approx(1e-3)


def test_decay_mask_skips_layer_norm_and_biases():
  mask = weight_decay_mask(tree())
  assert mask["bert"]["embeddings"]["word_embeddings"]["embedding"] is True
  assert mask["bert"]["encoder"]["layer_0"]["attention"]["query"]["kernel"] is True
  assert mask["bert"]["embeddings"]["LayerNorm"]["scale"] is False
  assert mask["bert"]["embeddings"]["LayerNorm"]["bias"] is False
  assert mask["bert"]["encoder"]["layer_0"]["attention"]["query"]["bias"] is False
  assert mask["cls"]["predictions"]["bias"] is False


def test_bert_adam_is_the_original_formula():
  """AdamWeightDecayOptimizer: m, v plain EMAs (no bias correction), update m/(sqrt(v)+eps) + wd·p, × lr."""
  config = optim_config(optimizer="bert_adam", warmup_steps=0, schedule="constant")
  params = tree()
  tx = build_optimizer(config)
  state = tx.init(params)
  rng = np.random.RandomState(1)
  ref_p = jax.tree_util.tree_map(np.array, params)
  m = jax.tree_util.tree_map(np.zeros_like, params)
  v = jax.tree_util.tree_map(np.zeros_like, params)
  mask = weight_decay_mask(params)
  for _ in range(5):
    grads = jax.tree_util.tree_map(lambda p: rng.randn(*p.shape).astype(np.float32), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    m = jax.tree_util.tree_map(lambda a, g: 0.9 * a + 0.1 * g, m, grads)
    v = jax.tree_util.tree_map(lambda a, g: 0.999 * a + 0.001 * g * g, v, grads)
    ref_p = jax.tree_util.tree_map(
        lambda p, a, b, d: p - 1e-3 * (a / (np.sqrt(b) + 1e-6) + (0.01 * p if d else 0.0)), ref_p, m, v, mask)
  for x, y in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_p)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  # AdamW's bias correction makes its first steps different.
  adamw = build_optimizer(optim_config(warmup_steps=0, schedule="constant"))
  g = jax.tree_util.tree_map(jnp.ones_like, tree())
  first_bert, _ = tx.update(g, tx.init(tree()), tree())
  first_adamw, _ = adamw.update(g, adamw.init(tree()), tree())
  assert not np.allclose(first_bert["cls"]["predictions"]["bias"], first_adamw["cls"]["predictions"]["bias"])


def test_adamw_matches_optax_with_the_mask():
  config = optim_config(warmup_steps=0, schedule="constant")
  ours, ref = build_optimizer(config), optax.adamw(1e-3, eps=1e-6, weight_decay=0.01, mask=weight_decay_mask)
  params, g = tree(), jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.3), tree())
  a, _ = ours.update(g, ours.init(params), params)
  b, _ = ref.update(g, ref.init(params), params)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6)


def test_clipping_comes_before_the_moments():
  params = tree()
  grads = jax.tree_util.tree_map(lambda p: jnp.ones_like(p), params)
  norm = float(optax.tree.norm(grads))
  clipped = build_optimizer(optim_config(optimizer="bert_adam", max_grad_norm=1.0, weight_decay=0.0))
  unclipped = build_optimizer(optim_config(optimizer="bert_adam", max_grad_norm=0.0, weight_decay=0.0))
  a, _ = clipped.update(grads, clipped.init(params), params)
  b, _ = unclipped.update(jax.tree_util.tree_map(lambda g: g / norm, grads), unclipped.init(params), params)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-6)
  assert norm > 1


def test_lamb_scales_updates_by_the_parameter_norm():
  tx = build_optimizer(optim_config(optimizer="lamb", warmup_steps=0, schedule="constant", weight_decay=0.0))
  params = {"a": {"kernel": jnp.full((4,), 1.0)}, "b": {"kernel": jnp.full((4,), 10.0)}}
  grads = {"a": {"kernel": jnp.full((4,), 0.5)}, "b": {"kernel": jnp.full((4,), 0.5)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  ratio = float(jnp.linalg.norm(updates["b"]["kernel"]) / jnp.linalg.norm(updates["a"]["kernel"]))
  assert ratio == pytest.approx(10.0, rel=1e-4)


@pytest.mark.parametrize("field,value,message", [
    ("optimizer", "sgd", "optim.optimizer: expected one of"),
    ("schedule", "cosine", "optim.schedule: expected one of"),
    ("learning_rate", -1.0, "optim.learning_rate: expected a positive number"),
    ("warmup_steps", 500, "optim.warmup_steps: expected 0…num_train_steps"),
    ("grad_accum_steps", 0, "optim.grad_accum_steps: expected at least 1"),
])
def test_bad_config(field, value, message):
  with pytest.raises(InputError, match=message):
    build_optimizer(optim_config(**{field: value}))
