"""Sequence packing for fine-tuning: several short examples side by side in one row, no padding
between them, so that the padding a fixed max_seq_length would add is not computed at all.

GLUE-style inputs are short (SST-2 averages about 13 words against a max_seq_length of 128), so a
padded row is mostly padding. `plan` bins the examples into rows of `length` tokens by best-fit
decreasing (each example, longest first, goes into the open row it fills best), at most
`max_per_row` examples a row; `pack` lays the rows out:

  input_ids, segment_ids   the examples' tokens one after another, then padding
  input_mask               1, 1, …, 2, 2, …, 0: the example each token belongs to (0 = padding);
                           flaxbert.models.encoder.attention_segments keeps the examples apart, so each is
                           computed exactly as if it were alone in its row
  position_ids             restarting at 0 at each example's [CLS]
  cls_positions            [R, K] where each example's [CLS] is (the pooler reads them)
  label, …                 every per-example array, as [R, K, …]
  labels, …                `token_arrays` (a token task's per-wordpiece labels): laid out as
                           input_ids are, their padding value between rows' ends
  label_mask               [R, K] 1 where a slot holds an example
  example_index            [R, K] which example (-1: an empty slot), to put the outputs back

The plan depends only on the lengths (ties broken by a seeded permutation), so it is made once;
training shuffles the rows per epoch (flaxbert.training.batching). `rows_per_batch` turns an
examples-per-batch size into rows, so that a batch still holds about `batch_size` examples (the
loss divides by the real examples: `label_mask` weighted sums, or for a token task the labelled
wordpieces). `unpack` puts outputs back in example order: per-slot outputs [R, K, …] → [N, …],
per-token outputs [R, L, …] → [N, L, …] (each example's span back at position 0, a fill
after it).
"""
import math
from typing import Sequence

import numpy as np

TOKEN_ARRAYS = ("input_ids", "segment_ids", "input_mask")


def plan(lengths: np.ndarray, length: int, max_per_row: int, seed: int = 0) -> list[np.ndarray]:
  """Rows of example indices: best-fit decreasing bin packing into `length` tokens, at most
  `max_per_row` examples a row; every example in exactly one row, rows in creation order."""
  lengths = np.asarray(lengths, np.int64)
  if max_per_row < 1:
    raise ValueError(f"max_per_row: expected >= 1, got {max_per_row}")
  if len(lengths) and (lengths.min() < 1 or lengths.max() > length):
    raise ValueError(f"plan: example lengths must be 1…{length}, got {lengths.min()}…{lengths.max()}")
  tie = np.random.default_rng(seed).permutation(len(lengths))
  order = np.lexsort((tie, -lengths))  # longest first; equal lengths in a seeded order
  rows: list[list[int]] = []
  free: list[int] = []
  open_by_space: list[list[int]] = [[] for _ in range(length + 1)]  # free tokens → open rows
  for i in order:
    need = int(lengths[i])
    space = next((s for s in range(need, length + 1) if open_by_space[s]), None)
    if space is None:
      rows.append([]), free.append(length)
      r = len(rows) - 1
    else:
      r = open_by_space[space].pop()
    rows[r].append(int(i))
    free[r] -= need
    if len(rows[r]) < max_per_row and free[r] > 0:
      open_by_space[free[r]].append(r)
  return [np.asarray(r, np.int64) for r in rows]


def pack(arrays: dict[str, np.ndarray], rows: Sequence[np.ndarray], max_per_row: int,
         token_arrays: dict[str, int] | None = None) -> dict[str, np.ndarray]:
  """Per-example arrays (input_ids/segment_ids/input_mask [N, L] with a 0/1 mask, `token_arrays`
  [N, L] (name → padding value), anything else [N, …]) → packed [R, L] / [R, K, …] arrays as the
  module docstring lists."""
  token_arrays = dict(token_arrays or {})
  ids = arrays["input_ids"]
  n, length = ids.shape
  lengths = arrays["input_mask"].sum(axis=1)
  r = len(rows)
  out = {k: np.zeros((r, length), arrays[k].dtype) for k in TOKEN_ARRAYS}
  out["input_mask"] = np.zeros((r, length), np.int32)
  out["position_ids"] = np.zeros((r, length), np.int32)
  out["cls_positions"] = np.zeros((r, max_per_row), np.int32)
  out["label_mask"] = np.zeros((r, max_per_row), np.int32)
  out["example_index"] = np.full((r, max_per_row), -1, np.int32)
  for k, pad in token_arrays.items():
    out[k] = np.full((r, length), pad, arrays[k].dtype)
  extra = [k for k in arrays if k not in TOKEN_ARRAYS and k not in token_arrays]
  for k in extra:
    out[k] = np.zeros((r, max_per_row, *arrays[k].shape[1:]), arrays[k].dtype)
  for row, members in enumerate(rows):
    if len(members) > max_per_row:
      raise ValueError(f"pack: row {row} has {len(members)} examples, more than max_per_row {max_per_row}")
    total = int(lengths[np.asarray(members, np.int64)].sum())
    if total > length:  # before any is laid out: lengths the plan was made from that are not the examples'
      raise ValueError(f"pack: row {row} holds {total} tokens, more than {length}")
    start = 0
    for slot, i in enumerate(members):
      size = int(lengths[i])
      span = slice(start, start + size)
      out["input_ids"][row, span] = ids[i, :size]
      out["segment_ids"][row, span] = arrays["segment_ids"][i, :size]
      for k in token_arrays:
        out[k][row, span] = arrays[k][i, :size]
      out["input_mask"][row, span] = slot + 1
      out["position_ids"][row, span] = np.arange(size)
      out["cls_positions"][row, slot] = start
      out["label_mask"][row, slot] = 1
      out["example_index"][row, slot] = i
      for k in extra:
        out[k][row, slot] = arrays[k][i]
      start += size
  if sorted(np.concatenate(rows).tolist() if rows else []) != list(range(n)):
    raise ValueError("pack: the rows must hold every example exactly once")
  return out


def rows_per_batch(batch_size: int, num_examples: int, num_rows: int, multiple: int) -> int:
  """Rows that hold about `batch_size` examples on average, rounded up to a multiple of
  `multiple` (the data-parallel devices)."""
  per_row = num_examples / max(num_rows, 1)
  rows = max(1, math.ceil(batch_size / max(per_row, 1.0)))
  return math.ceil(rows / multiple) * multiple


def unpack(outputs: dict[str, np.ndarray], packed: dict[str, np.ndarray], lengths: np.ndarray,
           token_outputs: dict[str, float] | None = None) -> dict[str, np.ndarray]:
  """Outputs for the rows of `packed` → [N, …] in example order (N = len(lengths), the examples'
  token counts): per-slot outputs [R, K, …] pick the slot of each example (slots with index -1
  dropped); `token_outputs` (name → fill) [R, L, …] copy each example's span to [i, :length],
  the fill after it."""
  token_outputs = dict(token_outputs or {})
  index = packed["example_index"]
  num_examples = len(lengths)
  keep = index >= 0
  got = index[keep]
  if np.bincount(got, minlength=num_examples).tolist() != [1] * num_examples:
    raise ValueError(f"unpack: the rows must hold each of the {num_examples} examples exactly once")
  result = {}
  for k, v in outputs.items():
    if k in token_outputs:
      out = np.full((num_examples, *v.shape[1:]), token_outputs[k], v.dtype)
      for row, slot in zip(*np.nonzero(keep)):
        i, start = index[row, slot], packed["cls_positions"][row, slot]
        out[i, :lengths[i]] = v[row, start:start + lengths[i]]
    else:
      out = np.zeros((num_examples, *v.shape[2:]), v.dtype)
      out[got] = v[keep]
    result[k] = out
  return result
