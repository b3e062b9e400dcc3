"""BERT's masked-LM rule, vectorised: which tokens to predict and what they become.

Used at build time (static masking, data_prep/instances.py) and in the training input pipeline
(dynamic masking, flaxbert/pretrain/input_pipeline.py). The rule, as google-research/bert's
create_pretraining_data.py: candidates are all real tokens but [CLS]/[SEP]; with whole-word
masking a continuation piece joins the previous candidate; candidate groups are shuffled;
num_to_predict = min(max_predictions, max(1, round(len × prob))) (Python 3 round, half to even);
groups are taken in order while the count stays <= that (a group that would exceed it is
skipped); each picked token becomes [MASK] with p 0.8, stays with p 0.1, or becomes an id
uniform over the whole vocabulary with p 0.1; positions are sorted, outputs padded.

Randomness comes in as a numpy Generator, or one Generator per row: then each row's mask is a
function of its own generator alone, whatever else is in the batch.
"""
import dataclasses
from typing import Sequence

import numpy as np

from flaxbert.errors import InputError


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclasses.dataclass
class MaskedLm:
  """What `mask_tokens` returns (leading shape as given; P = max_predictions_per_seq)."""
  input_ids: np.ndarray  # [..., S] with replacements
  masked_lm_positions: np.ndarray  # [..., P] int32
  masked_lm_ids: np.ndarray  # [..., P] int32
  masked_lm_weights: np.ndarray  # [..., P] float32


def num_to_predict(length, masked_lm_prob: float, max_predictions_per_seq: int):
  """min(max_predictions, max(1, round(length × prob))), Python 3 round (half to even)."""
  raw = np.rint(np.asarray(length, np.int64) * float(masked_lm_prob)).astype(np.int64)
  return np.minimum(max_predictions_per_seq, np.maximum(1, raw))


def _draw_noise(rng: np.random.Generator | Sequence[np.random.Generator], n: int, s: int, p: int,
                vocab_size: int) -> tuple:
  """Per row: candidate-shuffle keys [n, s], a uniform and a random id per prediction slot [n, p].

  With one generator per row, row i's noise comes from rng[i] alone.
  """
  if isinstance(rng, np.random.Generator):
    return rng.random((n, s)), rng.random((n, p)), rng.integers(0, vocab_size, (n, p), np.int32)
  if len(rng) != n:
    raise InputError(f"rng: expected one generator per row ({n}), got {len(rng)}")
  rows = [_draw_noise(g, 1, s, p, vocab_size) for g in rng]
  return tuple(np.concatenate(parts) for parts in zip(*rows))


def _mask(ids, real, candidate, continuation, noise, *, masked_lm_prob: float,
          max_predictions_per_seq: int, mask_id: int, whole_word_mask: bool) -> MaskedLm:
  """The masking rule on [N, S] rows with pre-drawn noise (each row uses only its own noise)."""
  keys, uniform, random_ids = noise
  n, s = ids.shape
  capacity = num_to_predict(real.sum(1), masked_lm_prob, max_predictions_per_seq)
  if not whole_word_mask:  # groups of one: the `capacity` candidates with the smallest keys
    keys = np.where(candidate, keys, 2.0)
    kth = np.take_along_axis(np.sort(keys, axis=1), (capacity - 1)[:, None], 1)
    chosen = candidate & (keys <= kth)
  else:  # a continuation joins the previous candidate, if any; a group is named by its start
    start = candidate & ~(continuation & (np.cumsum(candidate, 1, dtype=np.int16) > candidate))
    owner = np.maximum.accumulate(np.where(start, np.arange(s, dtype=np.int16), np.int16(-1)), 1).clip(0)
    size = np.bincount((np.arange(n)[:, None] * s + owner)[candidate], minlength=n * s)
    order = np.argsort(keys, axis=1)  # groups in shuffled order
    remaining = np.take_along_axis(size.reshape(n, s).astype(np.int16), order, 1)
    capacity = capacity.astype(np.int16)
    taken = np.zeros((n, s), bool)
    active = np.arange(n)
    while active.size:  # greedy: take the prefix that fits, drop groups that no longer can
      rem, cap = remaining[active], capacity[active]
      fit = (rem > 0) & (np.cumsum(rem, 1, dtype=np.int16) <= cap[:, None])
      cap -= np.where(fit, rem, 0).sum(1, dtype=np.int16)
      taken[active] |= fit
      rem[fit | (rem > cap[:, None])] = 0
      remaining[active], capacity[active] = rem, cap
      active = active[rem.any(1)]
    chosen_start = np.zeros((n, s), bool)
    np.put_along_axis(chosen_start, order, taken, 1)
    chosen = candidate & np.take_along_axis(chosen_start, owner, 1)
  p = max_predictions_per_seq
  positions = np.sort(np.where(chosen, np.arange(s, dtype=np.int32), s), axis=1)[:, :p]
  if positions.shape[1] < p:
    positions = np.pad(positions, ((0, 0), (0, p - positions.shape[1])), constant_values=s)
  valid = positions < s
  positions[~valid] = 0
  labels = np.where(valid, np.take_along_axis(ids, positions, 1), 0).astype(np.int32)
  new = np.where(uniform < 0.8, mask_id, np.where(uniform < 0.9, labels, random_ids))
  out = ids.astype(np.int32, copy=True)
  rows, slots = np.nonzero(valid)
  out[rows, positions[rows, slots]] = new[rows, slots]
  return MaskedLm(out, positions, labels, valid.astype(np.float32))


def mask_tokens(tokens: np.ndarray, is_continuation: np.ndarray | None,
                rng: np.random.Generator | Sequence[np.random.Generator], *,
                masked_lm_prob: float, max_predictions_per_seq: int, vocab_size: int, mask_id: int,
                special_mask: np.ndarray, whole_word_mask: bool,
                input_mask: np.ndarray | None = None) -> MaskedLm:
  """BERT's masked-LM rule on one sequence [S] or a batch [N, S] (e.g. dynamic masking per epoch).

  special_mask: True where a token may never be masked ([CLS], [SEP], padding). input_mask: 1 for
  real tokens (their count, specials included, is the `len(tokens)` of num_to_predict); default all.
  is_continuation: per token, True for a word's continuation piece (only read with whole_word_mask).
  rng: one generator, or one per row of a [N, S] batch (each row then depends on its own only).
  """
  ids = np.asarray(tokens)
  if ids.ndim not in (1, 2) or ids.dtype.kind not in "iu":
    raise InputError(f"tokens: expected a [S] or [N, S] integer array, got {ids.shape} {ids.dtype}")
  real = np.ones(ids.shape, bool) if input_mask is None else np.asarray(input_mask).astype(bool)
  special = np.asarray(special_mask, bool)
  cont = np.zeros(ids.shape, bool) if is_continuation is None else np.asarray(is_continuation, bool)
  for name, value in (("special_mask", special), ("input_mask", real), ("is_continuation", cont)):
    if value.shape != ids.shape:
      raise InputError(f"{name}: expected shape {ids.shape} like tokens, got {value.shape}")
  if whole_word_mask and is_continuation is None:
    raise InputError("is_continuation: expected per-token flags when whole_word_mask is set")
  _check_ids(vocab_size, mask_id=mask_id)
  if not (_is_int(max_predictions_per_seq) and max_predictions_per_seq >= 1 and 0 <= masked_lm_prob <= 1):
    raise InputError(f"max_predictions_per_seq, masked_lm_prob: expected an integer >= 1 and a number in "
                     f"[0, 1], got {max_predictions_per_seq!r}, {masked_lm_prob!r}")
  rows = ids.reshape(-1, ids.shape[-1])
  noise = _draw_noise(rng, rows.shape[0], rows.shape[1], max_predictions_per_seq, vocab_size)
  out = _mask(rows, real.reshape(rows.shape), (real & ~special).reshape(rows.shape),
              cont.reshape(rows.shape), noise, masked_lm_prob=masked_lm_prob,
              max_predictions_per_seq=max_predictions_per_seq, mask_id=mask_id,
              whole_word_mask=whole_word_mask)
  lead = ids.shape[:-1]
  return MaskedLm(*(a.reshape(lead + a.shape[1:]) for a in _fields(out).values()))


def _fields(obj) -> dict[str, np.ndarray]:
  """A dataclass's fields, not copied (dataclasses.asdict would deep-copy the arrays)."""
  return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _check_ids(vocab_size: int, **ids: int) -> None:
  if not _is_int(vocab_size) or vocab_size < 1:
    raise InputError(f"vocab_size: expected a positive integer, got {vocab_size!r}")
  for name, value in ids.items():
    if not _is_int(value) or not 0 <= value < vocab_size:
      raise InputError(f"{name}: expected a token id in [0, {vocab_size}), got {value!r}")
