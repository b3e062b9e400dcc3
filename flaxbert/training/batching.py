"""Feature arrays → global batches: a seeded order per epoch for training, padded exact evaluation,
length-sorted batches for inference.

Training batch `step` is a pure function of (seed, step): epoch e = step // steps_per_epoch reads
a permutation seeded by (seed, e), so resuming at a step needs no iterator state. The last batch
of an epoch is padded to full size with rows whose `example_mask` is 0, as evaluation's is; every
example counts exactly once per epoch and the loss divides by real rows only.
"""
import math
from typing import Iterator, Sequence

import numpy as np


def steps_per_epoch(num_features: int, batch_size: int) -> int:
  return max(1, math.ceil(num_features / batch_size))


def take(arrays: dict[str, np.ndarray], indices: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
  """Rows `indices` of every array, padded to `batch_size` rows, plus `example_mask`."""
  n = len(indices)
  if n > batch_size:
    raise ValueError(f"take: {n} indices for a batch of {batch_size}")
  padded = np.concatenate([indices, np.full(batch_size - n, indices[0] if n else 0, indices.dtype)])
  out = {k: v[padded] for k, v in arrays.items()}
  out["example_mask"] = (np.arange(batch_size) < n).astype(np.int32)
  return out


def train_batch(arrays: dict[str, np.ndarray], step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
  """Global training batch `step` (each process takes its part with `local_slice`)."""
  n = len(next(iter(arrays.values())))
  per_epoch = steps_per_epoch(n, batch_size)
  epoch, within = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(n)
  return take(arrays, order[within * batch_size:(within + 1) * batch_size], batch_size)


def grouped_batch(arrays: dict[str, np.ndarray], step: int, batch_size: int, seed: int, keys: np.ndarray,
                  window: int = 100) -> dict[str, np.ndarray]:
  """The global training batch `step` (`train_batch`'s, before `local_slice`) with rows of similar
  `keys` (lengths) batched together, fairseq/Tensor2Tensor style.

  Each epoch's permutation (seeded by (seed, epoch), as train_batch's) is cut into windows of
  `window` batches; a window is sorted by key and cut into batches, and the epoch's batches are
  shuffled (same seed). Every example still comes once per epoch and only the epoch's last batch
  in window order can be partial; a batch is a pure function of (seed, step), so resuming needs no
  state. The plan of the newest epoch is cached.
  """
  n = len(keys)
  per_epoch = steps_per_epoch(n, batch_size)
  epoch, within = divmod(step, per_epoch)
  cached = _PLANS.get(id(keys))
  if cached is None or cached[0] is not keys or cached[1] != (seed, epoch, batch_size, window):
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    span = batch_size * window
    order = np.concatenate([chunk[np.argsort(keys[chunk], kind="stable")]
                            for chunk in np.split(order, range(span, n, span))])
    batches = np.split(order, range(batch_size, n, batch_size))
    plan = [batches[i] for i in rng.permutation(len(batches))]
    _PLANS.clear()
    _PLANS[id(keys)] = cached = (keys, (seed, epoch, batch_size, window), plan)
  return take(arrays, cached[2][within], batch_size)


_PLANS: dict = {}


def trim(batch: dict[str, np.ndarray], groups: dict[str, tuple[str, ...]],
         multiple: int | Sequence[int]) -> dict[str, np.ndarray]:
  """Cuts each group's arrays (axis 1) to the group's longest real row, rounded up to `multiple`,
  or to the first of the widths it lists that holds the row (so that few shapes compile; 0: no
  cut); groups: mask name → the arrays padded along it. Trim the global batch, then `local_slice`
  it: every process must see the same shapes."""
  out = dict(batch)
  for mask, names in groups.items():
    full = batch[mask].shape[1]
    longest = int(batch[mask].sum(axis=1).max(initial=1))
    if isinstance(multiple, int):
      length = min(full, -(-longest // multiple) * multiple) if multiple > 0 else full
    else:
      length = min(full, next((w for w in multiple if w >= longest), full))
    for name in names:
      out[name] = batch[name][:, :length]
  return out


def by_length(arrays: dict[str, np.ndarray], lengths: np.ndarray, batch_size: int,
              groups: dict[str, tuple[str, ...]],
              multiple: int | Sequence[int]) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
  """(indices, batch) over every row once, longest first (inference: generation, embedding), each
  batch `trim`med to its longest row rounded up (`multiple`: see trim), so a large input compiles few
  shapes and computes little padding; the last batch is padded (example_mask 0). The caller puts
  each batch's outputs back at `indices`."""
  order = np.argsort(-np.asarray(lengths), kind="stable")
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    yield rows, trim(take(arrays, rows, batch_size), groups, multiple)


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every feature once, in order, in padded batches (this process's slice of each)."""
  n = len(next(iter(arrays.values())))
  for start in range(0, n, batch_size):
    batch = take(arrays, np.arange(start, min(start + batch_size, n)), batch_size)
    yield local_slice(batch, process_index, process_count)


def local_slice(batch: dict[str, np.ndarray], process_index: int, process_count: int) -> dict[str, np.ndarray]:
  if process_count == 1:
    return batch
  size = len(batch["example_mask"]) // process_count
  return {k: v[process_index * size:(process_index + 1) * size] for k, v in batch.items()}
