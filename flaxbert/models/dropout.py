"""Dropout masks: which elements an inverted dropout keeps, drawn from the "dropout" RNG stream.

A mask element is a 16-bit draw compared with rate·2¹⁶, two draws per 32 random bits (the low and
high halves of word w feed elements w and w + ⌈L/2⌉ of a last axis of length L), half the PRNG
work of `jax.random.bernoulli`. The 32-bit words are exactly `jax.random.bits(key, [..., ⌈L/2⌉])`
(partitionable threefry, jax's default), so a mask depends only on (key, element index): the same
on any device layout.

For threefry keys the words are not drawn with `jax.random.bits`, which on CPU lowers threefry to a
rolled loop whose state goes through memory on each of its five iterations, and then needs a
concatenate to lay the halves out. Here each mask element hashes its own word's counter with the
20 Threefry-2x32 rounds written out (`threefry2x32`), so the iota → hash → compare chain is one
elementwise computation that XLA fuses into the dropout itself (into the softmax and matmul
consumers of the attention probabilities too). The hash runs twice per word (once per half) and
buys that with no bits written to memory. Other key implementations (rbg, unsafe_rbg: XLA's
RngBitGenerator, not a per-element hash) draw the words with `jax.random.bits`.
"""
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Threefry-2x32 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"): the rotation
# constants of its two alternating groups of four rounds, and the key-schedule parity constant.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(k1, k2, x1, x2) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 with 20 rounds of the uint32 key (k1, k2) over counters (x1, x2), elementwise;
  the same function as jax's threefry2x32 primitive, written out so that XLA can fuse it."""
  ks = (k1, k2, k1 ^ k2 ^ _PARITY)
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x1 = x1 + x2
      x2 = ((x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r))) ^ x1
    x1 = x1 + ks[(i + 1) % 3]
    x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x1, x2


def _typed(key: jax.Array) -> jax.Array:
  """A typed PRNG key; raw uint32 key data (jax.random.PRNGKey) is read with jax's default impl."""
  return key if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(key)


def dropout_keep(rng: jax.Array, rate: float, shape: Sequence[int]) -> tuple[jax.Array, float]:
  """(keep mask, keep probability): a bool mask of `shape` with P(keep) = 1 - rate, rate rounded to
  a multiple of 2⁻¹⁶ (0.1 → 0.1000061), and that exact probability for rescaling."""
  threshold = min(max(round(rate * 65536), 0), 65536)
  keep_prob = 1.0 - threshold / 65536
  rng = _typed(rng)
  *lead, last = shape
  words_shape = (*lead, (last + 1) // 2)
  if str(jax.random.key_impl(rng)) != "threefry2x32":
    words = jax.random.bits(rng, words_shape, jnp.uint32)
    halves = jnp.concatenate([words & 0xFFFF, words >> 16], axis=-1)[..., :last]
    return halves >= jnp.uint32(threshold), keep_prob
  if math.prod(words_shape) >= 2 ** 32:
    raise ValueError(f"dropout mask of shape {tuple(shape)}: more than 2^33 elements")
  half = words_shape[-1]
  column = lax.broadcasted_iota(jnp.uint32, tuple(shape), len(shape) - 1)
  high = column >= half
  # The row-major index in words_shape of the word each element takes its half from.
  counter, stride = jnp.where(high, column - np.uint32(half), column), half
  for axis in range(len(shape) - 2, -1, -1):
    counter = counter + lax.broadcasted_iota(jnp.uint32, tuple(shape), axis) * np.uint32(stride)
    stride *= shape[axis]
  k1, k2 = jax.random.key_data(rng)
  bits1, bits2 = threefry2x32(k1, k2, jnp.zeros_like(counter), counter)
  words = bits1 ^ bits2  # jax.random.bits' 32-bit words of partitionable threefry
  halves = jnp.where(high, words >> 16, words & 0xFFFF)
  return halves >= jnp.uint32(threshold), keep_prob


class Dropout(nn.Module):
  """Inverted dropout drawing its mask with `dropout_keep` from the "dropout" RNG stream."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    keep, keep_prob = dropout_keep(self.make_rng("dropout"), self.rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))
