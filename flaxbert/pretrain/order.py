"""The training order: which example row sits at each position of an epoch, without the epoch.

A shuffled epoch of N rows is a permutation of [0, N). Drawing it whole costs O(N) time and
memory at every step that asks for a batch (seconds and gigabytes at 10^9 rows); here each
position is mapped on its own by a keyed Feistel network over the smallest even-bit domain that
holds N (at most 4N), with cycle-walking to stay inside [0, N): a bijection of [0, N), evaluated
for a batch's positions in O(batch) time, a pure function of (seed, epoch, position), so a batch
stays a function of (seed, step) and resuming stays exact. The round function is SplitMix64's
finaliser (a full-avalanche mix of 64-bit words); 6 rounds, keys drawn from (seed, epoch).
"""
import numpy as np

ROUNDS = 6
_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
  z = z * _GOLDEN
  z ^= z >> np.uint64(30)
  z *= _MIX1
  z ^= z >> np.uint64(27)
  z *= _MIX2
  return z ^ (z >> np.uint64(31))


def _feistel(x: np.ndarray, keys: np.ndarray, half_bits: int) -> np.ndarray:
  shift, mask = np.uint64(half_bits), np.uint64((1 << half_bits) - 1)
  left, right = x >> shift, x & mask
  for key in keys:
    left, right = right, left ^ (_mix(right ^ key) & mask)
  return (left << shift) | right


def epoch_rows(positions: np.ndarray, num_rows: int, seed: int, epoch: int) -> np.ndarray:
  """The rows at `positions` of epoch `epoch`'s order of [0, num_rows) (int64)."""
  if num_rows < 1:
    raise ValueError(f"num_rows: expected at least 1, got {num_rows}")
  positions = np.asarray(positions, np.int64)
  if positions.size and (positions.min() < 0 or positions.max() >= num_rows):
    raise ValueError(f"positions must lie in [0, {num_rows})")
  half_bits = max(1, ((num_rows - 1).bit_length() + 1) // 2)
  keys = np.random.default_rng([seed, epoch, 0xFE15]).integers(0, 2 ** 63, size=ROUNDS, dtype=np.uint64)
  rows = positions.astype(np.uint64)
  outside = np.ones(rows.shape, bool)
  with np.errstate(over="ignore"):
    while outside.any():  # cycle-walking: each cycle of the big permutation returns into [0, num_rows)
      rows[outside] = _feistel(rows[outside], keys, half_bits)
      outside = rows >= num_rows
  return rows.astype(np.int64)
