"""token_cross_entropy: values and gradients equal autodiff of log_softmax + take_along_axis."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxbert.models.losses import token_cross_entropy


def _reference(logits, labels, smoothing):
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  label_logp = jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  loss = -(1.0 - smoothing) * label_logp - smoothing * jnp.mean(logp, axis=-1)
  correct = (label_logp >= jnp.max(logp, axis=-1)).astype(jnp.float32)
  return -label_logp, loss, correct


def _inputs(dtype, shape=(3, 5, 37)):
  rng = np.random.RandomState(0)
  logits = jnp.asarray(rng.standard_normal(shape) * 4, dtype)
  labels = jnp.asarray(rng.randint(0, shape[-1], shape[:-1]), jnp.int32)
  weights = (jnp.asarray(rng.standard_normal(shape[:-1]), jnp.float32),
             jnp.asarray(rng.standard_normal(shape[:-1]), jnp.float32))
  return logits, labels, weights


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_values_and_gradients_match_autodiff(smoothing):
  logits, labels, (a, b) = _inputs(jnp.float32)
  for ours, ref in zip(token_cross_entropy(logits, labels, smoothing), _reference(logits, labels, smoothing)):
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)

  def objective(fn):  # both outputs that carry gradients, weighted differently
    return lambda x: jnp.sum(fn(x, labels, smoothing)[0] * a) + jnp.sum(fn(x, labels, smoothing)[1] * b)
  ours = jax.jit(jax.grad(objective(token_cross_entropy)))(logits)
  ref = jax.jit(jax.grad(objective(_reference)))(logits)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_bfloat16_logits_get_bfloat16_gradients_close_to_float32():
  logits, labels, (a, _) = _inputs(jnp.bfloat16)
  grad = jax.grad(lambda x: jnp.sum(token_cross_entropy(x, labels)[0] * a))(logits)
  ref = jax.grad(lambda x: jnp.sum(_reference(x, labels, 0.0)[0] * a))(logits.astype(jnp.float32))
  assert grad.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(grad, np.float32), ref, atol=2e-2)


def test_correct_counts_ties_and_carries_no_gradient():
  logits = jnp.asarray([[1.0, 3.0, 3.0], [5.0, 0.0, 1.0]])
  labels = jnp.asarray([2, 1])
  nll, loss, correct = token_cross_entropy(logits, labels)
  np.testing.assert_array_equal(correct, [1.0, 0.0])
  np.testing.assert_allclose(loss, nll)
  assert not jax.grad(lambda x: jnp.sum(token_cross_entropy(x, labels)[2]))(logits).any()
