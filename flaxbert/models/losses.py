"""Token-level softmax cross-entropy over a vocabulary, with a backward pass written out.

The MLM head (20 masked positions × batch rows × 30,522 logits) and the BERT2BERT decoder (every
target token × the vocabulary) end in the largest activations of their steps. Autodiff of
`log_softmax` + `take_along_axis` keeps the log-probabilities (or the probabilities) as well as
the logits, and builds the gradient of the gather as a zero-filled [..., V] buffer plus a scatter.
`token_cross_entropy` keeps the logits and one log-sum-exp per token instead, and computes the
gradient in one elementwise pass, softmax(x) − onehot(label) with the one-hot drawn from an iota
comparison: the same values and gradients (tests/test_losses.py), fewer full-size passes.
"""
from functools import partial

import jax
import jax.numpy as jnp


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def token_cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0):
  """(nll, loss, correct), each shaped as `labels` ([..., ] from [..., V] logits), in float32.

  nll = −log softmax(logits)[label]; loss = (1 − ε)·nll + ε·(mean over the vocabulary of
  −log softmax), ε = label_smoothing (loss is nll when ε = 0); correct = 1.0 where the label's
  logit is the largest (ties count as correct), else 0.0, and carries no gradient.
  """
  return _forward(logits, labels, label_smoothing)[0]


def _forward(logits, labels, label_smoothing):
  x = logits.astype(jnp.float32)
  top = jnp.max(x, axis=-1)
  lse = top + jnp.log(jnp.sum(jnp.exp(x - top[..., None]), axis=-1))
  label_logit = jnp.take_along_axis(x, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  nll = lse - label_logit
  loss = nll if label_smoothing == 0.0 else (1.0 - label_smoothing) * nll + label_smoothing * (lse - jnp.mean(x, -1))
  correct = (label_logit >= top).astype(jnp.float32)
  return (nll, loss, correct), (logits, labels, lse)


def _backward(label_smoothing, residuals, cotangents):
  logits, labels, lse = residuals
  g_nll, g_loss, _ = cotangents  # `correct` is a count: no gradient
  # d nll / dx = p − onehot; d loss / dx = p − (1 − ε)·onehot − ε / V.
  g_label = (g_nll + (1.0 - label_smoothing) * g_loss)[..., None]
  g_all = (g_nll + g_loss)[..., None]
  x = logits.astype(jnp.float32)
  onehot = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1) == labels[..., None]
  grad = jnp.exp(x - lse[..., None]) * g_all - jnp.where(onehot, g_label, 0.0)
  if label_smoothing:
    grad = grad - (label_smoothing / x.shape[-1]) * g_loss[..., None]
  return grad.astype(logits.dtype), None


token_cross_entropy.defvjp(_forward, _backward)
