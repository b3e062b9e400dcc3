"""Dropout masks: jax's threefry words exactly, 16-bit draws at the right rate, any key type, sharded."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flaxbert.models.dropout import Dropout, dropout_keep, threefry2x32


def reference_keep(rng, rate, shape):
  """The mask from `jax.random.bits` words (partitionable threefry): low halves of the ⌈L/2⌉ words
  first along the last axis, then their high halves."""
  *lead, last = shape
  with jax.threefry_partitionable(True):
    words = jax.random.bits(rng, (*lead, (last + 1) // 2), jnp.uint32)
  halves = jnp.concatenate([words & 0xFFFF, words >> 16], axis=-1)[..., :last]
  return halves >= jnp.uint32(round(rate * 65536))


def test_threefry2x32_known_answers():
  """Random123's known-answer vectors for Threefry-2x32 with 20 rounds."""
  cases = [((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
           ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
           ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]
  for key, counter, expected in cases:
    out = threefry2x32(*(jnp.asarray(v, jnp.uint32) for v in (*key, *counter)))
    assert tuple(int(o) for o in out) == expected


@pytest.mark.parametrize("shape", [(7,), (3, 5, 8), (2, 3, 17, 33), (64, 33, 301)])
def test_mask_is_jax_random_bits_threefry(shape):
  """Bit for bit the mask that `jax.random.bits` words give, for typed, folded and raw keys, in and
  out of jit."""
  typed = jax.random.fold_in(jax.random.key(5), 11)
  raw = jax.random.PRNGKey(9)
  for rng in (typed, raw):
    expected = reference_keep(rng, 0.1, shape)
    keep, _ = dropout_keep(rng, 0.1, shape)
    np.testing.assert_array_equal(keep, expected)
    jitted, _ = jax.jit(lambda k: dropout_keep(k, 0.1, shape))(rng)
    np.testing.assert_array_equal(jitted, expected)


def test_rbg_keys_draw_masks_of_the_same_layout():
  rng = jax.random.key(2, impl="rbg")
  keep, keep_prob = dropout_keep(rng, 0.3, (16, 9, 64))
  np.testing.assert_array_equal(keep, reference_keep(rng, 0.3, (16, 9, 64)))
  assert abs(float(keep.mean()) - keep_prob) < 4 * math.sqrt(0.3 * 0.7 / keep.size)


def test_sharded_mask_equals_unsharded():
  """Computed on 8 devices, batch-sharded, the mask is the one-device mask (counters from iotas)."""
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  shape, rng = (16, 4, 24, 24), jax.random.key(3)
  one = jax.jit(lambda k: dropout_keep(k, 0.1, shape)[0])(rng)
  eight = jax.jit(lambda k: dropout_keep(k, 0.1, shape)[0],
                  out_shardings=NamedSharding(mesh, P("data")))(rng)
  assert len(eight.sharding.device_set) == 8
  np.testing.assert_array_equal(eight, one)


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_dropout_mask_statistics_and_scaling(rate):
  """Masks keep 1 - rate of the elements (rate to 2^-16), are unbiased after rescaling, independent
  between the two 16-bit halves of each word, and fit an odd last axis."""
  keep, keep_prob = dropout_keep(jax.random.key(0), rate, (64, 33, 301))
  assert keep.shape == (64, 33, 301) and keep.dtype == jnp.bool_
  assert keep_prob == 1 - round(rate * 65536) / 65536 and abs(keep_prob - (1 - rate)) < 1e-5
  n = keep.size
  assert abs(float(keep.mean()) - keep_prob) < 4 * math.sqrt(rate * (1 - rate) / n)
  lo, hi = keep[..., :150], keep[..., 151:301]  # the words' low and high halves
  both = float((lo & hi).mean())
  assert abs(both - keep_prob ** 2) < 4 * math.sqrt(keep_prob ** 2 * (1 - keep_prob ** 2) / lo.size)
  x = jnp.ones((256, 1024))
  y = Dropout(rate).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert abs(float(y.mean()) - 1.0) < 4 * math.sqrt(rate / (1 - rate) / x.size)
  np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / keep_prob], rtol=1e-6)
  np.testing.assert_array_equal(Dropout(rate).apply({}, x, deterministic=True), x)
  other, _ = dropout_keep(jax.random.key(1), rate, (64, 33, 301))
  assert float((keep != other).mean()) > rate  # another key draws another mask


